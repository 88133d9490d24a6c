-- Metering: charges, caps and credits with exact numeric arithmetic, day and month
-- rollover under a controlled clock, idempotency, reservations, rate limits, alerts,
-- partitions, and what validate_api_key reports. The clock is
-- api_key_mgmt.clock_override (superuser-only): no test sleeps.
SET TimeZone = 'UTC';
SET DateStyle = 'ISO';
SET api_key_mgmt.clock_override = '2030-01-31 23:00:00+00';
SELECT api_key_mgmt.create_tenant('Metered', '{*}', 'metered') AS t \gset
SELECT key_id AS k, api_key AS key FROM api_key_mgmt.issue_api_key(:'t', 'agent', '{agents:*}') \gset
SELECT key_id AS k2, api_key AS key2 FROM api_key_mgmt.issue_api_key(:'t', 'other', '{agents:*}') \gset
-- Without caps every charge is admitted and logged.
SELECT allowed, code, remaining_daily, remaining_monthly, remaining_credits, retry_after,
       event_id IS NOT NULL AS logged
  FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 0.25, 10, 'openai', 'gpt-4o');
SELECT scope, provider, model, units, cost, key_source, occurred_at
  FROM api_key_mgmt.usage_events WHERE key_id = :'k';

-- Arguments are checked before any work, each with its SQLSTATE.
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(NULL, %L, 1)', 'agents:chat'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, NULL, 1)', :'k'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1)', :'k', 'agents:*'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, NULL)', :'k', 'agents:chat'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, -1)', :'k', 'agents:chat'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, %L)', :'k', 'agents:chat', 'NaN'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 0.0000000001)', :'k', 'agents:chat'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1e15)', :'k', 'agents:chat'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1, -1)', :'k', 'agents:chat'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1, provider => %L)', :'k', 'agents:chat', 'Open AI'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1, idempotency_key => %L)', :'k', 'agents:chat', ''));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1, metadata => %L)', :'k', 'agents:chat', '[1]'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1, key_source => %L)', :'k', 'agents:chat', 'mine'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1)', '00000000-0000-0000-0000-000000000000', 'agents:chat'));
SELECT regress.try(format('SELECT api_key_mgmt.set_key_caps(%L, daily_cap => -5)', :'k'));
SELECT regress.try(format('SELECT api_key_mgmt.set_key_caps(%L, credits => 5, credits_refill => 5)', :'k'));
SELECT regress.try(format('SELECT api_key_mgmt.set_key_caps(%L, credits => 5, credits_refill => 5, credits_refill_period => %L)', :'k', 'week'));
SELECT regress.try(format('SELECT api_key_mgmt.set_key_caps(%L, credits_refill => 5, credits_refill_period => %L)', :'k', 'day'));
SELECT regress.try(format('SELECT api_key_mgmt.set_tenant_caps(%L, time_zone => %L)', :'t', 'Mars/Olympus'));
SELECT regress.try(format('SELECT api_key_mgmt.set_tenant_caps(%L, time_zone => NULL)', :'t'));
SELECT regress.try($$SELECT api_key_mgmt.set_tenant_caps('00000000-0000-0000-0000-000000000000', 1)$$);

-- A daily cap of 1.00 (0.25 already spent today): exact decimal arithmetic, never float.
SELECT api_key_mgmt.set_key_caps(:'k', daily_cap => 1.00, monthly_cap => 100);
SELECT allowed, code, remaining_daily, remaining_monthly
  FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 0.1);
SELECT allowed, code, remaining_daily FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 0.2);
-- 0.45 left; 0.450000001 does not fit, 0.45 does exactly.
SELECT allowed, code, remaining_daily, retry_after
  FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 0.450000001);
-- validate reports the state without writing.
SELECT valid, code, remaining_daily, remaining_monthly, remaining_credits, retry_after
  FROM api_key_mgmt.validate_api_key(:'key', 'agents:chat');
SELECT allowed, code, remaining_daily FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 0.45);
SELECT valid, code, remaining_daily, retry_after FROM api_key_mgmt.validate_api_key(:'key', 'agents:chat');
-- Zero-cost charges still fit; anything else waits for tomorrow (UTC), an hour away.
SELECT allowed, code FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 0);
SELECT allowed, code, remaining_daily, retry_after FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 0.01);
SELECT daily_cap, day_spent, daily_remaining, monthly_cap, month_spent FROM api_key_mgmt.meter_status WHERE key_id = :'k';
-- Another key of the tenant is not affected.
SELECT valid, code, remaining_daily FROM api_key_mgmt.validate_api_key(:'key2');

-- The next day (and month): the daily and monthly totals start again.
SET api_key_mgmt.clock_override = '2030-02-01 00:00:00+00';
SELECT valid, code, remaining_daily, remaining_monthly FROM api_key_mgmt.validate_api_key(:'key');
SELECT allowed, code, remaining_daily, remaining_monthly FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 0.5);
SELECT day_spent, month_spent, day_ends_at, month_ends_at FROM api_key_mgmt.meter_status WHERE key_id = :'k';

-- A monthly cap binds across days.
SELECT api_key_mgmt.set_key_caps(:'k', daily_cap => 1, monthly_cap => 1.2);
SET api_key_mgmt.clock_override = '2030-02-02 12:00:00+00';
SELECT allowed, code, remaining_daily, remaining_monthly FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 0.7);
SELECT allowed, code, remaining_daily, remaining_monthly, retry_after FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 0.2);
SELECT code, retry_after FROM api_key_mgmt.validate_api_key(:'key');
SELECT api_key_mgmt.set_key_caps(:'k');
SELECT code, remaining_daily, remaining_monthly FROM api_key_mgmt.validate_api_key(:'key');

-- Rollback leaves no trace: neither the totals nor the log.
SELECT count(*) AS events_before FROM api_key_mgmt.usage_events WHERE key_id = :'k' \gset
BEGIN;
SELECT allowed FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 5);
ROLLBACK;
SELECT count(*) - :events_before AS new_events, (SELECT day_spent FROM api_key_mgmt.meter_status WHERE key_id = :'k') AS day_spent
  FROM api_key_mgmt.usage_events WHERE key_id = :'k';

-- Idempotency: the same key charges once; a replay answers duplicate with the outcome.
SELECT allowed, code, event_id AS first_event FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 2, idempotency_key => 'req-1') \gset
SELECT :'allowed' AS allowed, :'code' AS code;
SELECT allowed, code, event_id = :'first_event' AS same_event
  FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 2, idempotency_key => 'req-1');
SELECT count(*) AS charged_once FROM api_key_mgmt.usage_events WHERE idempotency_key = 'req-1';
-- The same idempotency key on another API key is another charge.
SELECT allowed, code FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 2, idempotency_key => 'req-1');
-- A refused charge replays as refused.
SELECT api_key_mgmt.set_key_caps(:'k2', daily_cap => 3);
SELECT allowed, code FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 2, idempotency_key => 'req-2');
SELECT allowed, code FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 2, idempotency_key => 'req-2');
SELECT api_key_mgmt.set_key_caps(:'k2');

-- Credits: a prepaid balance in the unit of cost, refilled daily.
SELECT api_key_mgmt.set_key_caps(:'k', credits => 10, credits_refill => 10, credits_refill_period => 'day');
SELECT allowed, code, remaining_credits FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 7.5);
SELECT allowed, code, remaining_credits, retry_after FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 3);
SELECT allowed, code, remaining_credits FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 2.5);
SELECT valid, code, remaining_credits, retry_after FROM api_key_mgmt.validate_api_key(:'key');
SET api_key_mgmt.clock_override = '2030-02-03 00:00:01+00';
SELECT valid, code, remaining_credits FROM api_key_mgmt.validate_api_key(:'key');
SELECT allowed, code, remaining_credits FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 1);
-- Without a refill, exhausted credits stay exhausted (no retry_after).
SELECT api_key_mgmt.set_key_caps(:'k', credits => 1);
SELECT allowed, code, remaining_credits, retry_after FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 1.5);
SELECT api_key_mgmt.set_key_caps(:'k');

-- Tenant caps bind every key of the tenant; the first tenant cap takes over the
-- month's totals from the log once. A per-tenant time zone moves the day boundary.
SELECT sum(cost) AS tenant_spent_this_month FROM api_key_mgmt.usage_events
 WHERE tenant_id = :'t' AND occurred_at >= '2030-02-01';
SELECT api_key_mgmt.set_tenant_caps(:'t', daily_cap => 20, monthly_cap => 30, time_zone => 'America/New_York');
SELECT subject, daily_cap, day_spent, monthly_cap, month_spent, day_ends_at, month_ends_at
  FROM api_key_mgmt.meter_status WHERE tenant_id = :'t' AND key_id IS NULL;
SELECT allowed, code, remaining_daily, remaining_monthly FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 4);
SELECT allowed, code, remaining_daily, retry_after FROM api_key_mgmt.charge_api_key(:'k', 'agents:chat', 1);
SELECT code, remaining_monthly FROM api_key_mgmt.validate_api_key(:'key2');
SELECT api_key_mgmt.set_tenant_caps(:'t');

-- Reservations: hold an estimate, settle the actual cost, or release; expiry.
SELECT api_key_mgmt.set_key_caps(:'k', daily_cap => 10);
SELECT allowed, code, remaining_daily, reservation_id AS r1
  FROM api_key_mgmt.reserve_budget(:'k', 'agents:chat', 6) \gset
SELECT :'allowed' AS allowed, :'code' AS code, :'remaining_daily' AS remaining_daily;
SELECT allowed, code, remaining_daily FROM api_key_mgmt.reserve_budget(:'k', 'agents:chat', 5);
SELECT allowed, code, remaining_daily, event_id IS NOT NULL AS logged
  FROM api_key_mgmt.settle_reservation(:'r1', 4.5, units => 1200, provider => 'anthropic', model => 'claude-3-5-sonnet');
SELECT cost, units, reservation_id = :'r1' AS from_reservation FROM api_key_mgmt.usage_events WHERE reservation_id = :'r1';
SELECT regress.try(format('SELECT api_key_mgmt.settle_reservation(%L, 1)', :'r1'));
SELECT regress.try(format('SELECT api_key_mgmt.settle_reservation(%L, -1)', :'r1'));
-- A settlement records the same usage fields as a charge, checked alike.
SELECT regress.try(format('SELECT api_key_mgmt.settle_reservation(%L, 1, model => %L)', :'r1', 'gpt 4o'));
SELECT regress.try(format('SELECT api_key_mgmt.settle_reservation(%L, 1, units => NULL)', :'r1'));
SELECT regress.try(format('SELECT api_key_mgmt.settle_reservation(%L, 1, key_source => %L)', :'r1', 'own'));
SELECT regress.try(format('SELECT api_key_mgmt.reserve_budget(%L, %L, 1, %L)', :'k', 'agents:chat', '2 days'));
SELECT reservation_id AS r2 FROM api_key_mgmt.reserve_budget(:'k', 'agents:chat', 2) \gset
SELECT api_key_mgmt.release_reservation(:'r2') AS released, api_key_mgmt.release_reservation(:'r2') AS again;
SELECT reservation_id AS r3 FROM api_key_mgmt.reserve_budget(:'k', 'agents:chat', 4, '10 minutes') \gset
SELECT day_spent FROM api_key_mgmt.meter_status WHERE key_id = :'k';
SELECT api_key_mgmt.expire_reservations() AS expired_too_early;
SET api_key_mgmt.clock_override = '2030-02-03 00:10:01+00';
SELECT api_key_mgmt.expire_reservations() AS expired;
SELECT day_spent, (SELECT count(*) FROM api_key_mgmt.reservations) AS held FROM api_key_mgmt.meter_status WHERE key_id = :'k';
SELECT api_key_mgmt.set_key_caps(:'k');

-- Rate limits: 3 per second with a burst of 3, consumed by validate_api_key(cost => 1)
-- (shared memory: this cluster preloads the library).
SELECT api_key_mgmt.rate_limit_mode();
SELECT api_key_mgmt.set_rate_limit(:'k2', 'per_second', 3, '1 second') IS NOT NULL AS set;
SELECT code, rate_limit_remaining, retry_after FROM api_key_mgmt.validate_api_key(:'key2', cost => 1);
SELECT code, rate_limit_remaining, retry_after FROM api_key_mgmt.validate_api_key(:'key2', cost => 1);
SELECT code, rate_limit_remaining, retry_after FROM api_key_mgmt.validate_api_key(:'key2', cost => 1);
SELECT code, rate_limit_remaining, retry_after FROM api_key_mgmt.validate_api_key(:'key2', cost => 1);
-- cost 0 checks without consuming.
SELECT code, rate_limit_remaining, retry_after FROM api_key_mgmt.validate_api_key(:'key2');
SET api_key_mgmt.clock_override = '2030-02-03 00:10:01.333334+00';
SELECT code, rate_limit_remaining FROM api_key_mgmt.validate_api_key(:'key2', cost => 1);
SELECT code FROM api_key_mgmt.validate_api_key(:'key2', cost => 1);
-- consume_rate_limit does the same for applications that validate elsewhere.
SET api_key_mgmt.clock_override = '2030-02-03 00:10:05+00';
SELECT * FROM api_key_mgmt.consume_rate_limit(:'k2', 2);
SELECT * FROM api_key_mgmt.consume_rate_limit(:'k2', 2);
SELECT * FROM api_key_mgmt.consume_rate_limit(:'k2', 5);
-- A tenant limit is shared by its keys; limits of one call are all-or-nothing.
SELECT api_key_mgmt.set_tenant_rate_limit(:'t', 'per_minute', 2, '1 minute', 2) IS NOT NULL AS set;
SET api_key_mgmt.clock_override = '2030-02-03 00:11:00+00';
SELECT code, rate_limit_remaining FROM api_key_mgmt.validate_api_key(:'key', cost => 1);
SELECT code, rate_limit_remaining FROM api_key_mgmt.validate_api_key(:'key2', cost => 1);
SELECT code, rate_limit_remaining, retry_after FROM api_key_mgmt.validate_api_key(:'key2', cost => 1);
SELECT api_key_mgmt.remove_tenant_rate_limit(:'t', 'per_minute') AS removed,
       api_key_mgmt.remove_tenant_rate_limit(:'t', 'per_minute') AS again;
SELECT code, rate_limit_remaining FROM api_key_mgmt.validate_api_key(:'key2', cost => 1);
SELECT name, max_requests, per, burst FROM api_key_mgmt.rate_limits ORDER BY name;
SELECT regress.try(format('SELECT api_key_mgmt.set_rate_limit(%L, %L, 0, %L)', :'k2', 'x', '1 second'));
SELECT regress.try(format('SELECT api_key_mgmt.set_rate_limit(%L, %L, 1, %L)', :'k2', 'x', '1 month'));
SELECT regress.try(format('SELECT api_key_mgmt.set_rate_limit(%L, %L, 1, %L)', :'k2', 'x', '0.1 ms'));
SELECT regress.try(format('SELECT api_key_mgmt.set_rate_limit(%L, %L, 1, NULL)', :'k2', 'x'));
SELECT regress.try(format('SELECT api_key_mgmt.set_rate_limit(%L, %L, 1, %L)', :'k2', 'Per Second', '1 second'));
SELECT regress.try(format('SELECT api_key_mgmt.set_rate_limit(%L, %L, 1, %L, 0)', :'k2', 'x', '1 second'));
SELECT regress.try(format('SELECT api_key_mgmt.validate_api_key(%L, cost => -1)', :'key2'));
SELECT api_key_mgmt.remove_rate_limit(:'k2', 'per_second') AS removed;
-- A refused key consumes nothing and reports no metering.
SELECT code, rate_limit_remaining FROM api_key_mgmt.validate_api_key('sk_live_nope', cost => 1);

-- charge_api_key(..., rate_cost) also takes rate-limit tokens, only for charges the
-- caps admit; a rate-limited attempt is neither charged nor kept under its
-- idempotency key, so the client retries it after retry_after.
SELECT api_key_mgmt.set_rate_limit(:'k2', 'per_minute', 2, '1 minute') IS NOT NULL AS set;
SET api_key_mgmt.clock_override = '2030-02-03 00:20:00+00';
SELECT count(*) AS events_before FROM api_key_mgmt.usage_events WHERE key_id = :'k2' \gset
SELECT allowed, code, retry_after FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 1, rate_cost => 1);
SELECT allowed, code, retry_after FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 1, rate_cost => 1);
SELECT allowed, code, retry_after, event_id IS NULL AS not_logged
  FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 1, idempotency_key => 'rl-1', rate_cost => 1);
SELECT count(*) AS kept FROM api_key_mgmt.usage_idempotency WHERE key_id = :'k2' AND idempotency_key = 'rl-1';
-- Without rate_cost (the default, 0) a charge leaves the limits alone.
SELECT allowed, code FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 1);
SELECT count(*) - :events_before AS charged FROM api_key_mgmt.usage_events WHERE key_id = :'k2';
SET api_key_mgmt.clock_override = '2030-02-03 00:20:30+00';
-- One token is back: a charge without rate_cost, and one the cap refuses, take none of it.
SELECT rate_limit_remaining AS one_back FROM api_key_mgmt.validate_api_key(:'key2', cost => 0);
SELECT allowed, code FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 1);
SELECT day_spent + 1 AS cap FROM api_key_mgmt.meters WHERE key_id = :'k2' \gset
SELECT api_key_mgmt.set_key_caps(:'k2', daily_cap => :cap);
SELECT allowed, code FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 2, rate_cost => 1);
SELECT api_key_mgmt.set_key_caps(:'k2');
SELECT allowed, remaining AS still_one FROM api_key_mgmt.consume_rate_limit(:'k2', 1);
SET api_key_mgmt.clock_override = '2030-02-03 00:21:00+00';
SELECT allowed, code FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 1, idempotency_key => 'rl-1', rate_cost => 1);
SELECT allowed, code FROM api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 1, idempotency_key => 'rl-1', rate_cost => 1);
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1, rate_cost => -1)', :'k2', 'agents:chat'));
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1, rate_cost => NULL)', :'k2', 'agents:chat'));

-- validate_and_charge: the plaintext key validated and charged in one call (one
-- rate-limit token by default). A key that does not validate answers its code and
-- nothing is charged.
SELECT count(*) AS events_before FROM api_key_mgmt.usage_events \gset
SELECT allowed, code, retry_after FROM api_key_mgmt.validate_and_charge(:'key2', 'agents:chat', 1);
-- With rate_cost => 0 the same key (no token left) is charged: the limits are not consulted.
SELECT allowed, code FROM api_key_mgmt.validate_and_charge(:'key2', 'agents:chat', 1, rate_cost => 0);
SELECT allowed, code, event_id AS vac_event
  FROM api_key_mgmt.validate_and_charge(:'key', 'agents:chat', 0.5, 3, 'openai', 'gpt-4o') \gset
SELECT :'allowed' AS allowed, :'code' AS code;
SELECT key_id = :'k' AS the_key, scope, units, cost, provider, model
  FROM api_key_mgmt.usage_events WHERE id = :'vac_event';
SELECT allowed, code FROM api_key_mgmt.validate_and_charge('sk_live_nope', 'agents:chat', 0.5);
SELECT allowed, code FROM api_key_mgmt.validate_and_charge(:'key', 'voice:synthesis', 0.5);
SELECT count(*) - :events_before AS charged FROM api_key_mgmt.usage_events;
SELECT regress.try(format('SELECT api_key_mgmt.validate_and_charge(%L, NULL, 1)', :'key'));
SELECT regress.try(format('SELECT api_key_mgmt.validate_and_charge(%L, %L, -1)', :'key', 'agents:chat'));
SELECT api_key_mgmt.remove_rate_limit(:'k2', 'per_minute') AS removed;

-- Alerts: once per period per threshold (the NOTIFY payloads are checked by the
-- integration tests, which LISTEN; here the recorded levels).
SET api_key_mgmt.clock_override = '2030-02-04 08:00:00+00';
SELECT api_key_mgmt.set_key_caps(:'k2', daily_cap => 10);
SELECT (api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 7)).allowed AS at_70 \gset
SELECT :'at_70' AS at_70, day_alerted FROM api_key_mgmt.meters WHERE key_id = :'k2';
SELECT (api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 1)).allowed AS at_80 \gset
SELECT :'at_80' AS at_80, day_alerted FROM api_key_mgmt.meters WHERE key_id = :'k2';
SELECT (api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 2)).allowed AS at_100 \gset
SELECT :'at_100' AS at_100, day_alerted FROM api_key_mgmt.meters WHERE key_id = :'k2';
SELECT (api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 1)).code AS over \gset
SELECT :'over' AS over, day_alerted FROM api_key_mgmt.meters WHERE key_id = :'k2';
SELECT api_key_mgmt.set_key_caps(:'k2', credits => 10);
SELECT (api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 8.5)).allowed AS low \gset
SELECT :'low' AS low, credits, credits_alerted FROM api_key_mgmt.meters WHERE key_id = :'k2';
SELECT (api_key_mgmt.charge_api_key(:'k2', 'agents:chat', 2)).code AS refused \gset
SELECT :'refused' AS refused, credits, credits_alerted FROM api_key_mgmt.meters WHERE key_id = :'k2';
SELECT api_key_mgmt.set_key_caps(:'k2');

-- Partitions: created ahead by maintenance; rows that landed in the default partition
-- move to their month.
SELECT count(*) AS in_default FROM api_key_mgmt.usage_events_default;
SELECT api_key_mgmt.create_usage_partitions(2) AS created;
SELECT api_key_mgmt.create_usage_partitions(2) AS created_again;
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound, c.relrowsecurity, c.relforcerowsecurity
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'api_key_mgmt.usage_events'::regclass ORDER BY 1;
SELECT count(*) AS in_default, (SELECT count(*) FROM api_key_mgmt.usage_events_y2030m02) AS in_february
  FROM api_key_mgmt.usage_events_default;
SELECT regress.try('SELECT api_key_mgmt.create_usage_partitions(61)');
SELECT regress.try('SELECT api_key_mgmt.create_usage_partitions(NULL)');
SELECT regress.try('SELECT api_key_mgmt.expire_reservations(0)');
SELECT regress.try('SELECT api_key_mgmt.purge_idempotency_keys(NULL)');
SELECT api_key_mgmt.run_metering_maintenance();

-- Billing views.
SELECT key_id = :'k' AS first_key, day, events, units, cost FROM api_key_mgmt.usage_daily
 WHERE tenant_id = :'t' AND provider IS NULL ORDER BY 1 DESC, 2;
SELECT month, sum(cost) AS cost FROM api_key_mgmt.usage_monthly WHERE tenant_id = :'t' GROUP BY 1 ORDER BY 1;
SELECT (api_key_mgmt.charge_api_key(:'k', 'agents:chat', 1, key_source => 'byok')).allowed AS byok,
       (api_key_mgmt.charge_api_key(:'k', 'agents:chat', 2, key_source => 'platform')).allowed AS platform;
SELECT month, byok_cost, platform_cost, unknown_cost FROM api_key_mgmt.usage_by_key_source WHERE tenant_id = :'t' ORDER BY 1;

-- The clock override is for superusers only.
CREATE ROLE regress_meter_user;
SET ROLE regress_meter_user;
SELECT regress.try($$SET api_key_mgmt.clock_override = '2000-01-01'$$);
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1)', :'k', 'agents:chat'));
RESET ROLE;
DROP ROLE regress_meter_user;
RESET api_key_mgmt.clock_override;

-- Caps and credits can be set when the key is issued.
SELECT key_id AS capped FROM api_key_mgmt.issue_api_key(:'t', 'capped at issue', '{agents:*}',
    daily_cap => 5, monthly_cap => 50, credits => 100) \gset
SELECT daily_cap, monthly_cap, credits FROM api_key_mgmt.meter_status WHERE key_id = :'capped';
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L, daily_cap => -1)', :'t', 'bad cap', '{agents:*}'));

-- The meters row constraint holds even for direct writes (as a superuser would make).
SELECT regress.try(format('UPDATE api_key_mgmt.meters SET daily_cap = -1 WHERE key_id = %L', :'k'));
SELECT regress.try(format('UPDATE api_key_mgmt.meters SET monthly_cap = -0.5 WHERE key_id = %L', :'k'));
SELECT regress.try(format('UPDATE api_key_mgmt.meters SET credits = 5, credits_refill = -1, credits_refill_period = %L WHERE key_id = %L', 'day', :'k'));
SELECT regress.try(format('UPDATE api_key_mgmt.meters SET credits = 5, credits_refill = 1, credits_refill_period = %L WHERE key_id = %L', 'week', :'k'));
SELECT regress.try(format('UPDATE api_key_mgmt.meters SET credits = 5, credits_refill = 1 WHERE key_id = %L', :'k'));
SELECT regress.try(format('UPDATE api_key_mgmt.meters SET credits = NULL, credits_refill = 1, credits_refill_period = %L WHERE key_id = %L', 'day', :'k'));
SELECT regress.try(format('UPDATE api_key_mgmt.meters SET subject_id = tenant_id WHERE key_id = %L', :'k'));
SELECT regress.try(format('UPDATE api_key_mgmt.meters SET daily_cap = 0, monthly_cap = 1, credits = 5, credits_refill = 1, credits_refill_period = %L WHERE key_id = %L', 'month', :'k'));
SELECT api_key_mgmt.set_key_caps(:'k');

-- The two-statement path of charge_api_key (no idempotency key, no rate cost, a tenant
-- without a meter, no period ended, the charge fits and sends no alert) answers and
-- writes exactly what the full path does. The same charges go to twin keys; an
-- idempotency key sends one twin's through the full path every time. Pair c: caps and
-- credits refilled daily; pair o: credits only.
SET api_key_mgmt.clock_override = '2030-03-10 08:00:00+00';
SELECT api_key_mgmt.create_tenant('Twins', '{*}', 'twins') AS tw \gset
SELECT pg_catalog.set_config('regress.' || pair || '_' || path, k.key_id::text, false) IS NOT NULL AS issued
  FROM (VALUES ('c'), ('o')) p(pair), (VALUES ('fast'), ('full')) q(path),
       LATERAL api_key_mgmt.issue_api_key(:'tw', pair || ' ' || path, '{agents:*}') k;
SELECT api_key_mgmt.set_key_caps(pg_catalog.current_setting('regress.c_' || path)::uuid, daily_cap => 10,
           monthly_cap => 24, credits => 12, credits_refill => 12, credits_refill_period => 'day'),
       api_key_mgmt.set_key_caps(pg_catalog.current_setting('regress.o_' || path)::uuid, credits => 5)
  FROM (VALUES ('fast'), ('full')) q(path);
CREATE TEMP TABLE twin_steps (pair text, n int, at timestamptz, cost numeric);
INSERT INTO twin_steps VALUES
    ('c', 1, '2030-03-10 08:00+00', 1), ('c', 2, '2030-03-10 08:00+00', 2.5),
    ('c', 3, '2030-03-10 09:00+00', 0.5), ('c', 4, '2030-03-10 09:00+00', 3),
    ('c', 5, '2030-03-10 10:00+00', 1.5), ('c', 6, '2030-03-10 10:00+00', 0.5),
    ('c', 7, '2030-03-10 11:00+00', 2), ('c', 8, '2030-03-10 11:00+00', 1),
    ('c', 9, '2030-03-10 12:00+00', 0.1), ('c', 10, '2030-03-11 00:00:01+00', 1),
    ('c', 11, '2030-03-11 01:00+00', 4), ('c', 12, '2030-03-11 02:00+00', 2.5),
    ('c', 13, '2030-03-11 03:00+00', 2), ('c', 14, '2030-03-11 04:00+00', 0.5),
    ('c', 15, '2030-03-12 09:00+00', 3), ('c', 16, '2030-03-12 10:00+00', 1.5),
    ('c', 17, '2030-03-12 11:00+00', 0.01),
    ('o', 1, '2030-03-12 12:00+00', 2), ('o', 2, '2030-03-12 12:00+00', 2),
    ('o', 3, '2030-03-12 12:00+00', 2), ('o', 4, '2030-03-12 12:00+00', 0.5),
    ('o', 5, '2030-03-12 12:00+00', 0.5), ('o', 6, '2030-03-12 12:00+00', 0.01);
CREATE TEMP TABLE twin_out (pair text, n int, path text, allowed boolean, code text,
    remaining_daily numeric, remaining_monthly numeric, remaining_credits numeric, retry_after interval);
SET track_functions = 'pl';
BEGIN;
DO $$
DECLARE
    s record;
BEGIN
    FOR s IN SELECT * FROM twin_steps ORDER BY pair, n LOOP
        PERFORM pg_catalog.set_config('api_key_mgmt.clock_override', s.at::text, true);
        INSERT INTO twin_out
        SELECT s.pair, s.n, 'fast', c.allowed, c.code, c.remaining_daily, c.remaining_monthly,
               c.remaining_credits, c.retry_after
          FROM api_key_mgmt.charge_api_key(pg_catalog.current_setting('regress.' || s.pair || '_fast')::uuid,
                                           'agents:chat', s.cost) c;
        INSERT INTO twin_out
        SELECT s.pair, s.n, 'full', c.allowed, c.code, c.remaining_daily, c.remaining_monthly,
               c.remaining_credits, c.retry_after
          FROM api_key_mgmt.charge_api_key(pg_catalog.current_setting('regress.' || s.pair || '_full')::uuid,
                                           'agents:chat', s.cost, idempotency_key => 'twin-' || s.n) c;
    END LOOP;
END
$$;
-- 23 charges per twin; the full path ran for all 23 of one twin and 13 of the other.
SELECT calls AS full_path_charges FROM pg_catalog.pg_stat_xact_user_functions
 WHERE schemaname = 'api_key_mgmt_internal' AND funcname = 'key_meter';
COMMIT;
RESET track_functions;
SELECT pair, n, allowed, code, remaining_daily, remaining_monthly, remaining_credits, retry_after
  FROM twin_out WHERE path = 'fast' ORDER BY pair, n;
SELECT count(*) AS answers_that_differ
  FROM twin_out f JOIN twin_out u USING (pair, n)
 WHERE f.path = 'fast' AND u.path = 'full'
   AND (f.allowed, f.code, f.remaining_daily, f.remaining_monthly, f.remaining_credits, f.retry_after)
       IS DISTINCT FROM (u.allowed, u.code, u.remaining_daily, u.remaining_monthly, u.remaining_credits, u.retry_after);
SELECT p.pair,
       (SELECT row(m.day_spent, m.day_ends_at, m.month_spent, m.month_ends_at, m.credits, m.credits_until,
                   m.credits_granted, m.day_alerted, m.month_alerted, m.credits_alerted)::text
          FROM api_key_mgmt.meters m WHERE m.key_id = pg_catalog.current_setting('regress.' || p.pair || '_fast')::uuid) AS fast_meter,
       (SELECT row(m.day_spent, m.day_ends_at, m.month_spent, m.month_ends_at, m.credits, m.credits_until,
                   m.credits_granted, m.day_alerted, m.month_alerted, m.credits_alerted)::text
          FROM api_key_mgmt.meters m WHERE m.key_id = pg_catalog.current_setting('regress.' || p.pair || '_full')::uuid)
       = (SELECT row(m.day_spent, m.day_ends_at, m.month_spent, m.month_ends_at, m.credits, m.credits_until,
                   m.credits_granted, m.day_alerted, m.month_alerted, m.credits_alerted)::text
          FROM api_key_mgmt.meters m WHERE m.key_id = pg_catalog.current_setting('regress.' || p.pair || '_fast')::uuid)
         AS full_meter_alike
  FROM (VALUES ('c'), ('o')) p(pair);
SELECT e.key_id = pg_catalog.current_setting('regress.' || p.pair || '_fast')::uuid AS fast, p.pair,
       count(*) AS events, sum(e.cost) AS cost, min(e.occurred_at) AS first, max(e.occurred_at) AS last
  FROM api_key_mgmt.usage_events e, (VALUES ('c'), ('o')) p(pair)
 WHERE e.key_id IN (pg_catalog.current_setting('regress.' || p.pair || '_fast')::uuid,
                    pg_catalog.current_setting('regress.' || p.pair || '_full')::uuid)
 GROUP BY 1, 2 ORDER BY 2, 1;
RESET api_key_mgmt.clock_override;

-- The native charge (src/charge_pg.rs): the meter row locked and updated and the usage
-- row inserted through the table access method, with no SQL statement. Two charges of
-- one key in one statement each see the one before; a savepoint rolls one back; rows
-- land in their month's partition; none of these takes the full path.
SET api_key_mgmt.clock_override = '2030-06-15 12:00:00+00';
SELECT api_key_mgmt.create_usage_partitions(0) >= 0 AS june_partition;
SELECT api_key_mgmt.create_tenant('Native', '{*}', 'native') AS nt \gset
SELECT key_id AS nk FROM api_key_mgmt.issue_api_key(:'nt', 'native', '{agents:*}') \gset
SELECT api_key_mgmt.set_key_caps(:'nk', daily_cap => 1000, monthly_cap => 10000, credits => 500);
SET track_functions = 'pl';
-- Function call counts of the current transaction (exact inside one: statistics are
-- flushed only between transactions).
CREATE FUNCTION regress.full_path_calls() RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(sum(calls), 0) FROM pg_catalog.pg_stat_xact_user_functions
     WHERE schemaname = 'api_key_mgmt_internal' AND funcname = 'charge_api_key_full'
$$;
BEGIN;
SELECT regress.full_path_calls() AS before \gset
SELECT (api_key_mgmt.charge_api_key(:'nk', 'agents:chat', 1.5)).remaining_credits AS first,
       (api_key_mgmt.charge_api_key(:'nk', 'agents:chat', 2, 3, 'openai', 'gpt-4o',
            metadata => '{"run": 7}', key_source => 'byok')).remaining_credits AS second;
SAVEPOINT s;
SELECT code, remaining_daily FROM api_key_mgmt.charge_api_key(:'nk', 'agents:chat', 100);
ROLLBACK TO SAVEPOINT s;
SELECT allowed, code, remaining_daily, remaining_monthly, remaining_credits, retry_after,
       event_id IS NOT NULL AS logged, reservation_id
  FROM api_key_mgmt.charge_api_key(:'nk', 'agents:chat', 0.5);
SELECT regress.full_path_calls() - :before AS full_path_charges;
COMMIT;
SELECT e.tableoid::regclass AS partition, e.scope, e.cost, e.units, e.provider, e.model,
       e.key_source, e.metadata, e.idempotency_key, e.reservation_id, e.occurred_at,
       e.tenant_id = :'nt' AS tenant, pg_catalog.substr(e.id::text, 15, 1) AS uuid_version
  FROM api_key_mgmt.usage_events e WHERE e.key_id = :'nk' ORDER BY e.cost;
SELECT day_spent, month_spent, credits, day_alerted, credits_alerted
  FROM api_key_mgmt.meters WHERE key_id = :'nk';

-- Many updates of one meter in one transaction fill its page (no version can be pruned
-- yet), so the row moves to another page: those updates are not HOT and add index
-- entries. Every index still finds the row, and amcheck finds each heap tuple in every
-- index. (0 * i: a new argument per row, so the function is called 200 times.)
CREATE EXTENSION amcheck;
SELECT (ctid::text::point)[0] AS block_before FROM api_key_mgmt.meters WHERE key_id = :'nk' \gset
BEGIN;
SELECT regress.full_path_calls() AS before \gset
SELECT count(*) AS charged FROM generate_series(1, 200) i,
       LATERAL api_key_mgmt.charge_api_key(:'nk', 'agents:chat', 0.01 + 0 * i) c WHERE c.allowed;
SELECT regress.full_path_calls() - :before AS full_path_charges;
COMMIT;
SELECT (ctid::text::point)[0] <> :block_before AS moved_to_another_page
  FROM api_key_mgmt.meters WHERE key_id = :'nk';
SET enable_seqscan = off;
SELECT day_spent, credits FROM api_key_mgmt.meters WHERE subject_id = :'nk';
SELECT day_spent FROM api_key_mgmt.meters WHERE key_id = :'nk';
SELECT count(*) FROM api_key_mgmt.meters WHERE tenant_id = :'nt';
RESET enable_seqscan;
SELECT count(*) AS indexes_checked
  FROM (SELECT bt_index_check(i.indexrelid, true) FROM pg_index i
         WHERE i.indrelid = 'api_key_mgmt.meters'::regclass) s;
SELECT count(*) AS partition_indexes_checked
  FROM (SELECT bt_index_check(i.indexrelid, true) FROM pg_index i
         WHERE i.indrelid = 'api_key_mgmt.usage_events_y2030m06'::regclass) s;
DROP EXTENSION amcheck;

-- Tables the native charge does not fully know take the full path: a user's trigger on
-- the usage log fires, a column added with a default gets it, a CHECK added to meters
-- holds. Once they are gone the native charge is back.
CREATE TABLE regress.usage_seen (cost numeric);
CREATE FUNCTION regress.usage_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO regress.usage_seen VALUES (NEW.cost);
    RETURN NULL;
END
$$;
BEGIN;
SELECT regress.full_path_calls() AS before \gset
CREATE TRIGGER usage_seen AFTER INSERT ON api_key_mgmt.usage_events
    FOR EACH ROW EXECUTE FUNCTION regress.usage_seen();
SELECT code FROM api_key_mgmt.charge_api_key(:'nk', 'agents:chat', 0.25);
DROP TRIGGER usage_seen ON api_key_mgmt.usage_events;
ALTER TABLE api_key_mgmt.usage_events ADD COLUMN region text NOT NULL DEFAULT 'eu';
SELECT code FROM api_key_mgmt.charge_api_key(:'nk', 'agents:chat', 0.26);
SELECT region, count(*) FROM api_key_mgmt.usage_events WHERE key_id = :'nk' GROUP BY 1;
ALTER TABLE api_key_mgmt.usage_events DROP COLUMN region;
SELECT regress.full_path_calls() - :before AS full_path_charges;
SELECT code FROM api_key_mgmt.charge_api_key(:'nk', 'agents:chat', 0.27);
SELECT regress.full_path_calls() - :before AS full_path_charges;
ALTER TABLE api_key_mgmt.meters ADD CONSTRAINT regress_small
    CHECK (key_id IS DISTINCT FROM :'nk' OR day_spent < 10);
SAVEPOINT s;
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 20)', :'nk', 'agents:chat'));
SELECT code FROM api_key_mgmt.charge_api_key(:'nk', 'agents:chat', 0.28);
SELECT regress.full_path_calls() - :before AS full_path_charges;
ALTER TABLE api_key_mgmt.meters DROP CONSTRAINT regress_small;
SELECT code FROM api_key_mgmt.charge_api_key(:'nk', 'agents:chat', 0.29);
SELECT regress.full_path_calls() - :before AS full_path_charges;
COMMIT;
SELECT cost AS seen_by_trigger FROM regress.usage_seen;
SELECT cost FROM api_key_mgmt.usage_events WHERE key_id = :'nk' AND cost > 0.2 ORDER BY cost;

-- A month without a partition: the full path writes to the default partition (the
-- executor checks that partition's constraint against concurrent attaches).
SELECT key_id AS nk2 FROM api_key_mgmt.issue_api_key(:'nt', 'native 2', '{agents:*}') \gset
SELECT api_key_mgmt.set_key_caps(:'nk2', daily_cap => 1000);
SET api_key_mgmt.clock_override = '2031-06-15 12:00:00+00';
BEGIN;
SELECT regress.full_path_calls() AS before \gset
SELECT code FROM api_key_mgmt.charge_api_key(:'nk2', 'agents:chat', 1);
SELECT code FROM api_key_mgmt.charge_api_key(:'nk2', 'agents:chat', 2);
SELECT regress.full_path_calls() - :before AS full_path_charges;
COMMIT;
SELECT tableoid::regclass AS partition, cost FROM api_key_mgmt.usage_events
 WHERE key_id = :'nk2' ORDER BY cost;
RESET track_functions;

-- Read-only transactions cannot charge.
BEGIN READ ONLY;
SELECT regress.try(format('SELECT api_key_mgmt.charge_api_key(%L, %L, 1)', :'nk', 'agents:chat'));
ROLLBACK;
RESET api_key_mgmt.clock_override;
