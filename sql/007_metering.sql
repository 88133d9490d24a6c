-- Metering: charging usage to keys, spending caps and credits that never overspend,
-- reservations, rate limits, alerts, the usage log and its views (README, "Metering").
--
-- Exactness: every charge locks its key's meter row (and its tenant's, when the tenant
-- has caps or credits) and updates the running totals stored there, so concurrent
-- charges of one key serialise and the sum admitted never exceeds a cap; the usage log
-- is never summed on the hot path. Lock order everywhere: key meter, then reservation,
-- then tenant meter. Periods are days and months in the tenant's time zone (UTC by
-- default); "now" is api_key_mgmt_internal.meter_now() (the clock override of the tests,
-- or the transaction start).
--
-- Every function is SECURITY DEFINER with search_path fixed to pg_catalog, pg_temp and
-- schema-qualifies every reference. SQLSTATEs: 22004 NULL where a value is required,
-- 22023 a bad value, 42704 no such key, tenant, limit or reservation, 55000 the object's
-- state forbids it.

-- ---------------------------------------------------------------------------------
-- Rust helpers (src/metering_pg.rs).
-- ---------------------------------------------------------------------------------

-- meter_now() -> timestamptz: now for periods (clock override, or the transaction start).
CREATE FUNCTION api_key_mgmt_internal.meter_now() RETURNS timestamptz
    STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'meter_now_wrapper';
-- limiter_now() -> timestamptz: now for rate limits (clock override, or the current time).
CREATE FUNCTION api_key_mgmt_internal.limiter_now() RETURNS timestamptz
    VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'limiter_now_wrapper';
-- gcra(...) -> one GCRA step (src/ratelimit.rs), for the table fallback.
CREATE FUNCTION api_key_mgmt_internal.gcra(tat timestamptz, now timestamptz, period_us bigint,
                                           max_requests integer, burst integer, cost integer)
    RETURNS TABLE (allowed boolean, tat timestamptz, remaining bigint, retry_after interval)
    IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'gcra_wrapper';
-- shmem_consume(...) -> all limits admit and consume in shared memory, or none does.
CREATE FUNCTION api_key_mgmt_internal.shmem_consume(ids uuid[], period_us bigint[],
                                                    max_requests integer[], bursts integer[], cost integer)
    RETURNS TABLE (allowed boolean, remaining bigint, retry_after interval)
    VOLATILE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'shmem_consume_wrapper';
-- rate_limit_capacity() -> bigint: slots of the shared-memory limiter (0: table mode).
CREATE FUNCTION api_key_mgmt_internal.rate_limit_capacity() RETURNS bigint
    STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'rate_limit_capacity_wrapper';

-- check_usage(units, provider, model, metadata, key_source): what a usage row records,
-- checked alike by charge_api_key and settle_reservation (22004 NULL units, 22023).
CREATE FUNCTION api_key_mgmt_internal.check_usage(units bigint, provider text, model text,
                                                  metadata jsonb, key_source text)
    RETURNS void IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_usage_wrapper';
-- tenant_has_meter(tenant_id) -> boolean: whether the tenant has a meter row.
CREATE FUNCTION api_key_mgmt_internal.tenant_has_meter(tenant_id uuid) RETURNS boolean
    STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'tenant_has_meter_wrapper';
-- rate_limit_mode() -> text: 'shared_memory' (library preloaded) or 'table'.
CREATE FUNCTION api_key_mgmt.rate_limit_mode() RETURNS text
    STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'rate_limit_mode_wrapper';

-- ---------------------------------------------------------------------------------
-- Tables.
-- ---------------------------------------------------------------------------------

-- One meter per key and per tenant (subject_id = the key's or the tenant's id): caps,
-- credits, the running totals of the current day and month, alert state, and a mirror
-- of the subject's rate limits for validate_api_key (one index probe reads it all).
CREATE TABLE api_key_mgmt.meters (
    subject_id            uuid PRIMARY KEY,
    tenant_id             uuid NOT NULL REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    -- NULL: the tenant's own meter.
    key_id                uuid UNIQUE REFERENCES api_key_mgmt.api_keys (id) ON DELETE CASCADE,
    -- Tenant meters: the time zone of days and months (key meters use their tenant's).
    time_zone             text NOT NULL DEFAULT 'UTC',
    daily_cap             numeric,
    monthly_cap           numeric,
    day_spent             numeric NOT NULL DEFAULT 0,
    day_ends_at           timestamptz,
    month_spent           numeric NOT NULL DEFAULT 0,
    month_ends_at         timestamptz,
    -- Prepaid balance in the unit of cost; NULL: no credits. May go below zero only by
    -- a settled reservation that cost more than it held.
    credits               numeric,
    credits_refill        numeric,
    credits_refill_period text,
    -- End of the refill period in which the balance was last set.
    credits_until         timestamptz,
    -- The balance last granted (set or refilled): 'credits_low' fires at 20% of it.
    credits_granted       numeric,
    -- Highest alert already sent in the current period: 0, 80, 100.
    day_alerted           smallint NOT NULL DEFAULT 0,
    month_alerted         smallint NOT NULL DEFAULT 0,
    -- 0, 20 (low), 100 (exhausted) since the last grant.
    credits_alerted       smallint NOT NULL DEFAULT 0,
    -- Mirror of rate_limits for this subject (kept by set_rate_limit and its twins).
    limit_ids             uuid[],
    limit_period_us       bigint[],
    limit_max             integer[],
    limit_burst           integer[],
    updated_at            timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE api_key_mgmt.meters IS
    'api_key_mgmt: caps, credits and running totals per key and per tenant';
-- meter_row_valid(meter) -> boolean: the row constraint below. Caps and refill >= 0;
-- refill period 'day' or 'month'; refill and period set together and only with
-- credits; subject_id = COALESCE(key_id, tenant_id). One Rust call on the whole row
-- (src/metering_pg.rs): the executor rebuilds CHECK expressions from their stored text
-- on every statement, and a whole-row reference is the shortest such text.
CREATE FUNCTION api_key_mgmt_internal.meter_row_valid(m api_key_mgmt.meters)
    RETURNS boolean IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'akm_meter_row_valid';
ALTER TABLE api_key_mgmt.meters ADD CONSTRAINT meters_valid
    CHECK (api_key_mgmt_internal.meter_row_valid(meters));
CREATE INDEX meters_tenant_idx ON api_key_mgmt.meters (tenant_id);

-- Named rate limits of a key (key_id set) or of a whole tenant.
CREATE TABLE api_key_mgmt.rate_limits (
    id           uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    key_id       uuid REFERENCES api_key_mgmt.api_keys (id) ON DELETE CASCADE,
    subject_id   uuid NOT NULL,
    name         text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    max_requests integer NOT NULL CHECK (max_requests BETWEEN 1 AND 1000000000),
    per          interval NOT NULL,
    period_us    bigint NOT NULL CHECK (period_us BETWEEN 1000 AND 31622400000000),
    burst        integer CHECK (burst BETWEEN 1 AND 1000000000),
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT rate_limits_subject CHECK (subject_id = COALESCE(key_id, tenant_id)),
    CONSTRAINT rate_limits_one_per_name UNIQUE (subject_id, name)
);
COMMENT ON TABLE api_key_mgmt.rate_limits IS 'api_key_mgmt: named rate limits per key and per tenant';

-- Limiter state of the table fallback (not used when the library is preloaded).
CREATE TABLE api_key_mgmt.rate_limit_state (
    limit_id uuid PRIMARY KEY REFERENCES api_key_mgmt.rate_limits (id) ON DELETE CASCADE,
    tat      timestamptz
);
COMMENT ON TABLE api_key_mgmt.rate_limit_state IS
    'api_key_mgmt: rate limiter state when the library is not preloaded (GCRA theoretical arrival time)';

-- The usage log, partitioned by month of occurred_at. The default partition catches
-- anything no monthly partition covers, so a charge never fails for a missing
-- partition; create_usage_partitions() moves such rows into their month.
CREATE TABLE api_key_mgmt.usage_events (
    id              uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    key_id          uuid,
    scope           text NOT NULL,
    provider        text,
    model           text,
    -- byok (the tenant's own provider key) or platform; NULL: not known.
    key_source      text CHECK (key_source IN ('byok', 'platform')),
    units           bigint NOT NULL CHECK (units >= 0),
    cost            numeric NOT NULL CHECK (cost >= 0),
    idempotency_key text,
    reservation_id  uuid,
    metadata        jsonb,
    occurred_at     timestamptz NOT NULL
) PARTITION BY RANGE (occurred_at);
COMMENT ON TABLE api_key_mgmt.usage_events IS
    'api_key_mgmt: the usage log (one row per admitted charge or settled reservation), by month';
CREATE INDEX usage_events_tenant_idx ON api_key_mgmt.usage_events (tenant_id, occurred_at);
CREATE INDEX usage_events_key_idx ON api_key_mgmt.usage_events (key_id, occurred_at);
CREATE TABLE api_key_mgmt.usage_events_default PARTITION OF api_key_mgmt.usage_events DEFAULT;

-- Outcomes of charges made with an idempotency key: a replay answers 'duplicate' with
-- the original outcome. Kept for 7 days by default (purge_idempotency_keys).
CREATE TABLE api_key_mgmt.usage_idempotency (
    key_id            uuid NOT NULL,
    idempotency_key   text NOT NULL,
    allowed           boolean NOT NULL,
    code              text NOT NULL,
    remaining_daily   numeric,
    remaining_monthly numeric,
    remaining_credits numeric,
    retry_after       interval,
    event_id          uuid,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (key_id, idempotency_key)
);
COMMENT ON TABLE api_key_mgmt.usage_idempotency IS 'api_key_mgmt: outcomes of idempotent charges';

-- Budget held for calls whose cost is known only afterwards.
CREATE TABLE api_key_mgmt.reservations (
    id            uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    key_id        uuid NOT NULL REFERENCES api_key_mgmt.api_keys (id) ON DELETE CASCADE,
    scope         text NOT NULL,
    estimate      numeric NOT NULL CHECK (estimate >= 0),
    -- Whether the tenant's meter holds it too.
    tenant_held   boolean NOT NULL,
    -- The periods the hold belongs to (it counts in the period it was made).
    day_ends_at   timestamptz NOT NULL,
    month_ends_at timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);
COMMENT ON TABLE api_key_mgmt.reservations IS 'api_key_mgmt: budget held until settled, released or expired';
CREATE INDEX reservations_expires_idx ON api_key_mgmt.reservations (expires_at);
CREATE INDEX reservations_key_idx ON api_key_mgmt.reservations (key_id);

-- charge_api_key / reserve_budget / settle_reservation result.
CREATE TYPE api_key_mgmt.charge_result AS (
    allowed           boolean,
    code              text,
    remaining_daily   numeric,
    remaining_monthly numeric,
    remaining_credits numeric,
    retry_after       interval,
    event_id          uuid,
    reservation_id    uuid
);

ALTER TABLE api_key_mgmt.meters ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.meters FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.rate_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.rate_limits FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.rate_limit_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.rate_limit_state FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.usage_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.usage_events FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.usage_events_default ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.usage_events_default FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.usage_idempotency ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.usage_idempotency FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.reservations ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.reservations FORCE ROW LEVEL SECURITY;

-- Platform administrators read everything; writes go through the functions.
CREATE POLICY meters_admin ON api_key_mgmt.meters FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY rate_limits_admin ON api_key_mgmt.rate_limits FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY rate_limit_state_admin ON api_key_mgmt.rate_limit_state FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY usage_events_admin ON api_key_mgmt.usage_events FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY usage_idempotency_admin ON api_key_mgmt.usage_idempotency FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY reservations_admin ON api_key_mgmt.reservations FOR SELECT TO api_key_mgmt_admin USING (true);

SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.meters', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.rate_limits', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.rate_limit_state', '');
-- The parent holds no rows (pg_dump skips it); registered so every table is listed.
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.usage_events', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.usage_events_default', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.usage_idempotency', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.reservations', '');

-- ---------------------------------------------------------------------------------
-- Internal helpers.
-- ---------------------------------------------------------------------------------

-- check_amount(what, value, nullable): money is numeric, 0 <= value < 10^15, at most 9
-- decimal places. 22004 NULL (unless nullable), 22023 otherwise. Rust
-- (src/metering_pg.rs): it runs on every charge.
CREATE FUNCTION api_key_mgmt_internal.check_amount(what text, value numeric, nullable boolean)
    RETURNS void IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_amount_wrapper';

-- period_ends(now, tz) -> the ends of the day and month containing now in tz.
CREATE FUNCTION api_key_mgmt_internal.period_ends(p_now timestamptz, p_tz text,
                                                  OUT day_end timestamptz, OUT month_end timestamptz)
    LANGUAGE sql STABLE AS $$
    SELECT (pg_catalog.date_trunc('day', p_now AT TIME ZONE p_tz) + '1 day'::interval) AT TIME ZONE p_tz,
           (pg_catalog.date_trunc('month', p_now AT TIME ZONE p_tz) + '1 month'::interval) AT TIME ZONE p_tz
$$;

-- meter_roll(meter, now, tz) -> the meter as of now: totals of ended periods reset,
-- alert levels with them, credits refilled when their refill period ended.
CREATE FUNCTION api_key_mgmt_internal.meter_roll(m api_key_mgmt.meters, p_now timestamptz, p_tz text)
    RETURNS api_key_mgmt.meters LANGUAGE plpgsql STABLE AS $$
DECLARE
    e record;
BEGIN
    e := api_key_mgmt_internal.period_ends(p_now, p_tz);
    IF m.day_ends_at IS NULL OR p_now >= m.day_ends_at THEN
        m.day_spent := 0;
        m.day_alerted := 0;
        m.day_ends_at := e.day_end;
    END IF;
    IF m.month_ends_at IS NULL OR p_now >= m.month_ends_at THEN
        m.month_spent := 0;
        m.month_alerted := 0;
        m.month_ends_at := e.month_end;
    END IF;
    IF m.credits_refill_period IS NOT NULL AND (m.credits_until IS NULL OR p_now >= m.credits_until) THEN
        m.credits := m.credits_refill;
        m.credits_granted := m.credits_refill;
        m.credits_alerted := 0;
        m.credits_until := CASE m.credits_refill_period WHEN 'day' THEN e.day_end ELSE e.month_end END;
    END IF;
    RETURN m;
END
$$;

-- needs_roll(meter, now) -> whether meter_roll would change anything.
CREATE FUNCTION api_key_mgmt_internal.needs_roll(m api_key_mgmt.meters, p_now timestamptz)
    RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT m.day_ends_at IS NULL OR p_now >= m.day_ends_at OR p_now >= m.month_ends_at
        OR (m.credits_refill_period IS NOT NULL AND (m.credits_until IS NULL OR p_now >= m.credits_until))
$$;

-- alert_level(cap, spent) -> 0, 80 or 100 (percent of the cap reached).
CREATE FUNCTION api_key_mgmt_internal.alert_level(cap numeric, spent numeric)
    RETURNS smallint LANGUAGE sql IMMUTABLE AS $$
    SELECT (CASE WHEN cap IS NULL THEN 0
                 WHEN spent >= cap THEN 100
                 WHEN spent * 100 >= cap * 80 THEN 80
                 ELSE 0 END)::smallint
$$;

-- notify(kind, threshold, meter, now): one alert on channel api_key_mgmt_alerts (sent
-- at commit; nothing on rollback). Payload: see README, "Alerts".
CREATE FUNCTION api_key_mgmt_internal.notify(p_kind text, p_threshold integer,
                                             m api_key_mgmt.meters, p_now timestamptz)
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('api_key_mgmt_alerts', pg_catalog.jsonb_build_object(
        'kind', p_kind,
        'threshold', p_threshold,
        'subject', CASE WHEN m.key_id IS NULL THEN 'tenant' ELSE 'key' END,
        'tenant_id', m.tenant_id,
        'key_id', m.key_id,
        'cap', CASE p_kind WHEN 'daily_cap' THEN m.daily_cap WHEN 'monthly_cap' THEN m.monthly_cap END,
        'spent', CASE p_kind WHEN 'daily_cap' THEN m.day_spent WHEN 'monthly_cap' THEN m.month_spent END,
        'credits', CASE WHEN p_kind LIKE 'credits%' THEN m.credits END,
        'period_ends_at', CASE p_kind WHEN 'daily_cap' THEN m.day_ends_at WHEN 'monthly_cap' THEN m.month_ends_at
                                      ELSE m.credits_until END,
        'at', p_now)::text);
END
$$;

-- meter_alerts(meter, now, refused) -> the meter with alert levels raised, notifying
-- once per period per threshold. refused: the charge was refused by this meter's
-- daily cap, monthly cap or credits ('daily', 'monthly', 'credits'), which counts as
-- reaching 100%.
CREATE FUNCTION api_key_mgmt_internal.meter_alerts(m api_key_mgmt.meters, p_now timestamptz, p_refused text)
    RETURNS api_key_mgmt.meters LANGUAGE plpgsql AS $$
DECLARE
    v smallint;
BEGIN
    IF m.daily_cap IS NOT NULL THEN
        v := CASE WHEN p_refused = 'daily' THEN 100 ELSE api_key_mgmt_internal.alert_level(m.daily_cap, m.day_spent) END;
        IF v > m.day_alerted THEN
            m.day_alerted := v;
            PERFORM api_key_mgmt_internal.notify('daily_cap', v, m, p_now);
        END IF;
    END IF;
    IF m.monthly_cap IS NOT NULL THEN
        v := CASE WHEN p_refused = 'monthly' THEN 100 ELSE api_key_mgmt_internal.alert_level(m.monthly_cap, m.month_spent) END;
        IF v > m.month_alerted THEN
            m.month_alerted := v;
            PERFORM api_key_mgmt_internal.notify('monthly_cap', v, m, p_now);
        END IF;
    END IF;
    IF m.credits IS NOT NULL THEN
        v := CASE WHEN p_refused = 'credits' OR m.credits <= 0 THEN 100
                  WHEN m.credits_granted > 0 AND m.credits * 5 <= m.credits_granted THEN 20
                  ELSE 0 END;
        IF v > m.credits_alerted THEN
            m.credits_alerted := v;
            PERFORM api_key_mgmt_internal.notify(CASE v WHEN 100 THEN 'credits_exhausted' ELSE 'credits_low' END,
                                                 v, m, p_now);
        END IF;
    END IF;
    RETURN m;
END
$$;

-- meter_save(meter): write back the totals, credits and alert state.
CREATE FUNCTION api_key_mgmt_internal.meter_save(m api_key_mgmt.meters)
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- plpgsql, not SQL: its plan is cached for the session (called on every charge).
    UPDATE api_key_mgmt.meters x SET
        day_spent = m.day_spent, day_ends_at = m.day_ends_at, day_alerted = m.day_alerted,
        month_spent = m.month_spent, month_ends_at = m.month_ends_at, month_alerted = m.month_alerted,
        credits = m.credits, credits_until = m.credits_until, credits_granted = m.credits_granted,
        credits_alerted = m.credits_alerted
     WHERE x.subject_id = m.subject_id;
END
$$;

-- refusal_alert(meter, now, code): a refusal by this meter's cap or credits is the
-- 100% alert, once per period; the meter is written only when an alert was sent.
CREATE FUNCTION api_key_mgmt_internal.refusal_alert(m api_key_mgmt.meters, p_now timestamptz, p_code text)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n api_key_mgmt.meters;
BEGIN
    n := api_key_mgmt_internal.meter_alerts(m, p_now,
             CASE p_code WHEN 'daily_cap_exceeded' THEN 'daily' WHEN 'monthly_cap_exceeded' THEN 'monthly'
                         ELSE 'credits' END);
    IF (n.day_alerted, n.month_alerted, n.credits_alerted) IS DISTINCT FROM
       (m.day_alerted, m.month_alerted, m.credits_alerted) THEN
        PERFORM api_key_mgmt_internal.meter_save(n);
    END IF;
END
$$;

-- key_meter(key_id) -> the key's meter, locked FOR UPDATE, created when missing;
-- 22004 NULL id, 42704 no such key.
CREATE FUNCTION api_key_mgmt_internal.key_meter(p_key_id uuid)
    RETURNS api_key_mgmt.meters LANGUAGE plpgsql AS $$
DECLARE
    m api_key_mgmt.meters;
BEGIN
    IF p_key_id IS NULL THEN
        RAISE EXCEPTION 'key_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO m FROM api_key_mgmt.meters x WHERE x.subject_id = p_key_id FOR UPDATE;
    IF FOUND THEN
        RETURN m;
    END IF;
    INSERT INTO api_key_mgmt.meters (subject_id, tenant_id, key_id)
    SELECT k.id, k.tenant_id, k.id FROM api_key_mgmt.api_keys k WHERE k.id = p_key_id
    ON CONFLICT DO NOTHING;
    -- Validation probes meters only for flagged keys.
    UPDATE api_key_mgmt.api_keys k SET metered = true WHERE k.id = p_key_id AND NOT k.metered;
    SELECT * INTO m FROM api_key_mgmt.meters x WHERE x.subject_id = p_key_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'API key % does not exist', p_key_id USING ERRCODE = '42704';
    END IF;
    RETURN m;
END
$$;

-- tenant_meter(tenant_id, create) -> the tenant's meter locked FOR UPDATE (created
-- when missing if create; otherwise NULL fields when there is none).
CREATE FUNCTION api_key_mgmt_internal.tenant_meter(p_tenant_id uuid, p_create boolean)
    RETURNS api_key_mgmt.meters LANGUAGE plpgsql AS $$
DECLARE
    m api_key_mgmt.meters;
BEGIN
    IF p_tenant_id IS NULL THEN
        RAISE EXCEPTION 'tenant_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO m FROM api_key_mgmt.meters x WHERE x.subject_id = p_tenant_id FOR UPDATE;
    IF FOUND OR NOT p_create THEN
        RETURN m;
    END IF;
    INSERT INTO api_key_mgmt.meters (subject_id, tenant_id)
    SELECT t.id, t.id FROM api_key_mgmt.tenants t WHERE t.id = p_tenant_id
    ON CONFLICT DO NOTHING;
    -- Validation probes meters only for flagged tenants.
    UPDATE api_key_mgmt.tenants t SET metered = true WHERE t.id = p_tenant_id AND NOT t.metered;
    SELECT * INTO m FROM api_key_mgmt.meters x WHERE x.subject_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = '42704';
    END IF;
    RETURN m;
END
$$;

-- meter_spend(meter, amount, now, day_ends, month_ends) -> the meter with amount
-- added to its day's and month's totals and taken from its credits, alerts raised and
-- saved. day_ends / month_ends given: add to that total only while it is still the
-- period the amount was held in (reservations).
CREATE FUNCTION api_key_mgmt_internal.meter_spend(m api_key_mgmt.meters, p_amount numeric, p_now timestamptz,
        p_day_ends timestamptz DEFAULT NULL, p_month_ends timestamptz DEFAULT NULL)
    RETURNS api_key_mgmt.meters LANGUAGE plpgsql AS $$
BEGIN
    IF p_day_ends IS NULL OR m.day_ends_at = p_day_ends THEN
        m.day_spent := m.day_spent + p_amount;
    END IF;
    IF p_month_ends IS NULL OR m.month_ends_at = p_month_ends THEN
        m.month_spent := m.month_spent + p_amount;
    END IF;
    m.credits := m.credits - p_amount;
    m := api_key_mgmt_internal.meter_alerts(m, p_now, NULL);
    PERFORM api_key_mgmt_internal.meter_save(m);
    RETURN m;
END
$$;

-- meters_now(key meter, now) -> (k, t, tz, tenant): the key's meter and, when the
-- tenant has caps or credits, the tenant's (locked FOR UPDATE), both rolled over to now
-- in the tenant's time zone. tenant: whether t counts.
CREATE FUNCTION api_key_mgmt_internal.meters_now(p_k api_key_mgmt.meters, p_now timestamptz,
        OUT k api_key_mgmt.meters, OUT t api_key_mgmt.meters, OUT tz text, OUT tenant boolean)
    LANGUAGE plpgsql AS $$
BEGIN
    -- Most tenants have no meter row (tenants.metered, set when it is created): then
    -- no caps, UTC, and no statement to find that out.
    IF api_key_mgmt_internal.tenant_has_meter(p_k.tenant_id) THEN
        SELECT * INTO t FROM api_key_mgmt.meters x WHERE x.subject_id = p_k.tenant_id;
    END IF;
    tz := COALESCE(t.time_zone, 'UTC');
    tenant := api_key_mgmt_internal.metered(t);
    IF tenant THEN
        t := api_key_mgmt_internal.tenant_meter(p_k.tenant_id, false);
        IF api_key_mgmt_internal.needs_roll(t, p_now) THEN
            t := api_key_mgmt_internal.meter_roll(t, p_now, tz);
        END IF;
    ELSE
        t := NULL;
    END IF;
    k := p_k;
    IF api_key_mgmt_internal.needs_roll(k, p_now) THEN
        k := api_key_mgmt_internal.meter_roll(k, p_now, tz);
    END IF;
END
$$;

-- metered(meter) -> whether a tenant meter has anything to enforce.
CREATE FUNCTION api_key_mgmt_internal.metered(m api_key_mgmt.meters)
    RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT m.subject_id IS NOT NULL
       AND (m.daily_cap IS NOT NULL OR m.monthly_cap IS NOT NULL OR m.credits IS NOT NULL)
$$;

-- check_charge(key_id, scope, what, cost): the common argument checks of charge_api_key
-- and reserve_budget: 22004 NULL key or scope, 22023 a scope that is not one concrete
-- area:action of [a-z0-9_.-] (at most 200 characters), then check_amount. Rust.
CREATE FUNCTION api_key_mgmt_internal.check_charge(p_key_id uuid, p_scope text, p_what text, p_cost numeric)
    RETURNS void IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_charge_wrapper';


-- meter_decide(key meter, tenant meter, cost, now) -> (code, remaining..., retry_after,
-- refused_by: 'key' or 'tenant'). Both meters already rolled to now.
CREATE FUNCTION api_key_mgmt_internal.meter_decide(k api_key_mgmt.meters, t api_key_mgmt.meters,
        p_cost numeric, p_now timestamptz,
        OUT code text, OUT remaining_daily numeric, OUT remaining_monthly numeric,
        OUT remaining_credits numeric, OUT retry_after interval, OUT refused_by text)
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    kd numeric := k.daily_cap - k.day_spent;
    td numeric := t.daily_cap - t.day_spent;
    km numeric := k.monthly_cap - k.month_spent;
    tm numeric := t.monthly_cap - t.month_spent;
BEGIN
    -- LEAST and GREATEST skip NULLs: NULL (no cap) only when neither meter has one.
    remaining_daily := LEAST(kd, td);
    remaining_daily := CASE WHEN remaining_daily < 0 THEN 0 ELSE remaining_daily END;
    remaining_monthly := LEAST(km, tm);
    remaining_monthly := CASE WHEN remaining_monthly < 0 THEN 0 ELSE remaining_monthly END;
    remaining_credits := LEAST(k.credits, t.credits);
    code := 'ok';
    IF p_cost > kd OR p_cost > td THEN
        code := 'daily_cap_exceeded';
        refused_by := CASE WHEN p_cost > kd THEN 'key' ELSE 'tenant' END;
        retry_after := CASE WHEN p_cost > kd THEN k.day_ends_at ELSE t.day_ends_at END - p_now;
    ELSIF p_cost > km OR p_cost > tm THEN
        code := 'monthly_cap_exceeded';
        refused_by := CASE WHEN p_cost > km THEN 'key' ELSE 'tenant' END;
        retry_after := CASE WHEN p_cost > km THEN k.month_ends_at ELSE t.month_ends_at END - p_now;
    ELSIF p_cost > k.credits OR p_cost > t.credits THEN
        code := 'credits_exhausted';
        refused_by := CASE WHEN p_cost > k.credits THEN 'key' ELSE 'tenant' END;
        retry_after := CASE WHEN p_cost > k.credits THEN k.credits_until ELSE t.credits_until END - p_now;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------
-- Caps and credits.
-- ---------------------------------------------------------------------------------

-- set_caps(meter, daily_cap, monthly_cap, credits, credits_refill, period, now): shared
-- by set_key_caps and set_tenant_caps; the meter is locked.
CREATE FUNCTION api_key_mgmt_internal.set_caps(m api_key_mgmt.meters, p_daily numeric, p_monthly numeric,
        p_credits numeric, p_refill numeric, p_period text, p_tz text)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := api_key_mgmt_internal.meter_now();
    e record;
BEGIN
    PERFORM api_key_mgmt_internal.check_amount('daily_cap', p_daily, true);
    PERFORM api_key_mgmt_internal.check_amount('monthly_cap', p_monthly, true);
    PERFORM api_key_mgmt_internal.check_amount('credits', p_credits, true);
    PERFORM api_key_mgmt_internal.check_amount('credits_refill', p_refill, true);
    IF p_refill IS NOT NULL AND p_period IS NULL THEN
        RAISE EXCEPTION 'credits_refill needs credits_refill_period (day or month)' USING ERRCODE = '22004';
    END IF;
    IF p_period IS NOT NULL AND p_period NOT IN ('day', 'month') THEN
        RAISE EXCEPTION 'credits_refill_period must be day or month' USING ERRCODE = '22023';
    END IF;
    IF p_period IS NOT NULL AND p_refill IS NULL THEN
        RAISE EXCEPTION 'credits_refill_period needs credits_refill' USING ERRCODE = '22023';
    END IF;
    IF p_refill IS NOT NULL AND p_credits IS NULL THEN
        RAISE EXCEPTION 'credits_refill needs credits (the starting balance)' USING ERRCODE = '22023';
    END IF;
    m := api_key_mgmt_internal.meter_roll(m, v_now, p_tz);
    e := api_key_mgmt_internal.period_ends(v_now, p_tz);
    UPDATE api_key_mgmt.meters x SET
        daily_cap = p_daily, monthly_cap = p_monthly,
        day_spent = m.day_spent, day_ends_at = m.day_ends_at,
        month_spent = m.month_spent, month_ends_at = m.month_ends_at,
        -- Alerts restart from the new caps (no alert for what is already spent).
        day_alerted = api_key_mgmt_internal.alert_level(p_daily, m.day_spent),
        month_alerted = api_key_mgmt_internal.alert_level(p_monthly, m.month_spent),
        credits = p_credits, credits_granted = p_credits, credits_alerted = 0,
        credits_refill = p_refill, credits_refill_period = p_period,
        credits_until = CASE p_period WHEN 'day' THEN e.day_end WHEN 'month' THEN e.month_end END,
        updated_at = pg_catalog.now()
     WHERE x.subject_id = m.subject_id;
END
$$;

-- key_tenant_admin(key_id) -> uuid: the key's tenant, after checking that the caller
-- administers it (42501; platform admins then get 42704 for a missing key downstream).
CREATE FUNCTION api_key_mgmt_internal.key_tenant_admin(p_key_id uuid) RETURNS uuid
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_tenant uuid;
BEGIN
    SELECT k.tenant_id INTO v_tenant FROM api_key_mgmt.api_keys k WHERE k.id = p_key_id;
    PERFORM api_key_mgmt_internal.authorize(v_tenant, 'admin');
    RETURN v_tenant;
END
$$;

-- set_key_caps(key_id, daily_cap, monthly_cap, credits, credits_refill, credits_refill_period) -> void
-- NULL: no cap / no credits. Replaces all of the key's caps and credits at once.
CREATE FUNCTION api_key_mgmt_impl.set_key_caps(
    key_id uuid,
    daily_cap numeric DEFAULT NULL,
    monthly_cap numeric DEFAULT NULL,
    credits numeric DEFAULT NULL,
    credits_refill numeric DEFAULT NULL,
    credits_refill_period text DEFAULT NULL
) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m api_key_mgmt.meters;
    v_tz text;
BEGIN
    PERFORM api_key_mgmt_internal.key_tenant_admin(set_key_caps.key_id);
    m := api_key_mgmt_internal.key_meter(set_key_caps.key_id);
    SELECT x.time_zone INTO v_tz FROM api_key_mgmt.meters x WHERE x.subject_id = m.tenant_id;
    PERFORM api_key_mgmt_internal.set_caps(m, set_key_caps.daily_cap, set_key_caps.monthly_cap,
        set_key_caps.credits, set_key_caps.credits_refill, set_key_caps.credits_refill_period,
        COALESCE(v_tz, 'UTC'));
    PERFORM api_key_mgmt_internal.audit(m.tenant_id, 'caps.set', 'api_key', set_key_caps.key_id::text,
        pg_catalog.jsonb_build_object('daily_cap', set_key_caps.daily_cap, 'monthly_cap', set_key_caps.monthly_cap,
            'credits', set_key_caps.credits, 'credits_refill', set_key_caps.credits_refill,
            'credits_refill_period', set_key_caps.credits_refill_period));
END
$$;

-- set_tenant_caps(tenant_id, daily_cap, monthly_cap, credits, credits_refill,
-- credits_refill_period, time_zone) -> void. Tenant totals are kept only while the
-- tenant has caps or credits: setting the first one computes the current day's and
-- month's totals from the usage log once (blocking charges for that moment).
CREATE FUNCTION api_key_mgmt_impl.set_tenant_caps(
    tenant_id uuid,
    daily_cap numeric DEFAULT NULL,
    monthly_cap numeric DEFAULT NULL,
    credits numeric DEFAULT NULL,
    credits_refill numeric DEFAULT NULL,
    credits_refill_period text DEFAULT NULL,
    time_zone text DEFAULT 'UTC'
) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m api_key_mgmt.meters;
    v_now timestamptz;
    v_was boolean;
    e record;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(set_tenant_caps.tenant_id, 'admin');
    IF set_tenant_caps.time_zone IS NULL THEN
        RAISE EXCEPTION 'time_zone must not be NULL' USING ERRCODE = '22004';
    END IF;
    BEGIN
        PERFORM pg_catalog.now() AT TIME ZONE set_tenant_caps.time_zone;
    EXCEPTION WHEN others THEN
        RAISE EXCEPTION 'time zone "%" is not known', set_tenant_caps.time_zone USING ERRCODE = '22023';
    END;
    PERFORM api_key_mgmt_internal.tenant_row(set_tenant_caps.tenant_id, false);
    -- No charge may be between reading "uncapped" and committing while we take over.
    LOCK TABLE api_key_mgmt.meters IN EXCLUSIVE MODE;
    m := api_key_mgmt_internal.tenant_meter(set_tenant_caps.tenant_id, true);
    v_was := api_key_mgmt_internal.metered(m);
    UPDATE api_key_mgmt.meters x SET time_zone = set_tenant_caps.time_zone
     WHERE x.subject_id = m.subject_id;
    m.time_zone := set_tenant_caps.time_zone;
    v_now := api_key_mgmt_internal.meter_now();
    IF NOT v_was THEN
        e := api_key_mgmt_internal.period_ends(v_now, m.time_zone);
        m.day_ends_at := e.day_end;
        m.month_ends_at := e.month_end;
        SELECT COALESCE(pg_catalog.sum(u.cost) FILTER (
                   WHERE u.occurred_at >= (pg_catalog.date_trunc('day', v_now AT TIME ZONE m.time_zone) AT TIME ZONE m.time_zone)), 0),
               COALESCE(pg_catalog.sum(u.cost), 0)
          INTO m.day_spent, m.month_spent
          FROM api_key_mgmt.usage_events u
         WHERE u.tenant_id = m.subject_id
           AND u.occurred_at >= (pg_catalog.date_trunc('month', v_now AT TIME ZONE m.time_zone) AT TIME ZONE m.time_zone)
           AND u.occurred_at < e.month_end;
        UPDATE api_key_mgmt.meters x SET
            day_spent = m.day_spent + COALESCE((SELECT pg_catalog.sum(r.estimate) FROM api_key_mgmt.reservations r
                                                 WHERE r.tenant_id = m.subject_id AND r.day_ends_at = e.day_end), 0),
            month_spent = m.month_spent + COALESCE((SELECT pg_catalog.sum(r.estimate) FROM api_key_mgmt.reservations r
                                                     WHERE r.tenant_id = m.subject_id AND r.month_ends_at = e.month_end), 0),
            day_ends_at = e.day_end, month_ends_at = e.month_end
         WHERE x.subject_id = m.subject_id
        RETURNING * INTO m;
        -- Holds made while the tenant was not metered are released from its key meters only.
    END IF;
    PERFORM api_key_mgmt_internal.set_caps(m, set_tenant_caps.daily_cap, set_tenant_caps.monthly_cap,
        set_tenant_caps.credits, set_tenant_caps.credits_refill, set_tenant_caps.credits_refill_period,
        set_tenant_caps.time_zone);
    PERFORM api_key_mgmt_internal.audit(set_tenant_caps.tenant_id, 'caps.set', 'tenant', set_tenant_caps.tenant_id::text,
        pg_catalog.jsonb_build_object('daily_cap', set_tenant_caps.daily_cap, 'monthly_cap', set_tenant_caps.monthly_cap,
            'credits', set_tenant_caps.credits, 'credits_refill', set_tenant_caps.credits_refill,
            'credits_refill_period', set_tenant_caps.credits_refill_period, 'time_zone', set_tenant_caps.time_zone));
END
$$;

-- ---------------------------------------------------------------------------------
-- Charging.
-- ---------------------------------------------------------------------------------

-- charge_api_key(key_id, scope, cost, units, provider, model, idempotency_key, metadata,
-- key_source, rate_cost) -> charge_result. Admits the charge when it fits in every cap
-- and in the credits of the key and of its tenant (and, with rate_cost > 0, when every
-- rate limit of the key and its tenant has rate_cost tokens left: 'rate_limited'
-- otherwise), updating their totals and logging a usage event; all of it commits or
-- rolls back with the caller's transaction (tokens taken in shared memory stay taken).
--
-- Rust (src/charge_pg.rs), with the caller's rights: it checks the arguments and makes
-- the common charge itself (no idempotency key, no rate cost, a tenant without a
-- meter, no period ended, the charge fits and sends no alert): the meter row updated
-- and the usage row inserted through the table access method, no SQL statement. Every other charge goes to charge_api_key_full below. EXECUTE is the gate.
CREATE FUNCTION api_key_mgmt.charge_api_key(
    key_id uuid,
    scope text,
    cost numeric,
    units bigint DEFAULT 1,
    provider text DEFAULT NULL,
    model text DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    metadata jsonb DEFAULT NULL,
    key_source text DEFAULT NULL,
    rate_cost integer DEFAULT 0
) RETURNS api_key_mgmt.charge_result
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'akm_charge_api_key';

-- charge_api_key_full(the arguments of charge_api_key) -> charge_result: every charge
-- charge_api_key does not make itself (idempotency keys, rate costs, tenant meters,
-- rollovers, refusals, alerts).
CREATE FUNCTION api_key_mgmt_internal.charge_api_key_full(
    key_id uuid,
    scope text,
    cost numeric,
    units bigint DEFAULT 1,
    provider text DEFAULT NULL,
    model text DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    metadata jsonb DEFAULT NULL,
    key_source text DEFAULT NULL,
    rate_cost integer DEFAULT 0
) RETURNS api_key_mgmt.charge_result
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k api_key_mgmt.meters;
    t api_key_mgmt.meters;
    d record;
    r api_key_mgmt.charge_result;
    v_now timestamptz;
    m record;
    v_tenant boolean;
    g record;
BEGIN
    -- charge_api_key checked the arguments.
    -- The key's meter lock serialises every charge of the key, replays included.
    k := api_key_mgmt_internal.key_meter(charge_api_key_full.key_id);
    IF charge_api_key_full.idempotency_key IS NOT NULL THEN
        SELECT i.allowed, 'duplicate', i.remaining_daily, i.remaining_monthly, i.remaining_credits,
               i.retry_after, i.event_id, NULL::uuid
          INTO r
          FROM api_key_mgmt.usage_idempotency i
         WHERE i.key_id = charge_api_key_full.key_id AND i.idempotency_key = charge_api_key_full.idempotency_key;
        IF FOUND THEN
            RETURN r;
        END IF;
    END IF;

    v_now := api_key_mgmt_internal.meter_now();
    m := api_key_mgmt_internal.meters_now(k, v_now);
    k := m.k;
    t := m.t;
    v_tenant := m.tenant;

    d := api_key_mgmt_internal.meter_decide(k, t, charge_api_key_full.cost, v_now);
    r.code := d.code;
    r.allowed := d.code = 'ok';
    r.retry_after := d.retry_after;
    IF r.allowed AND charge_api_key_full.rate_cost > 0 THEN
        -- Tokens are taken only for a charge the caps admit. A rate-limited attempt is
        -- not kept under its idempotency key: the client retries it after retry_after.
        SELECT * INTO g FROM api_key_mgmt.consume_rate_limit(charge_api_key_full.key_id, charge_api_key_full.rate_cost) c;
        IF NOT g.allowed THEN
            r.allowed := false;
            r.code := 'rate_limited';
            r.retry_after := g.retry_after;
            r.remaining_daily := d.remaining_daily;
            r.remaining_monthly := d.remaining_monthly;
            r.remaining_credits := d.remaining_credits;
            RETURN r;
        END IF;
    END IF;
    IF r.allowed THEN
        k := api_key_mgmt_internal.meter_spend(k, charge_api_key_full.cost, v_now);
        IF v_tenant THEN
            t := api_key_mgmt_internal.meter_spend(t, charge_api_key_full.cost, v_now);
        END IF;
        INSERT INTO api_key_mgmt.usage_events (tenant_id, key_id, scope, provider, model, key_source,
                                               units, cost, idempotency_key, metadata, occurred_at)
        VALUES (k.tenant_id, k.key_id, charge_api_key_full.scope, charge_api_key_full.provider, charge_api_key_full.model,
                charge_api_key_full.key_source, charge_api_key_full.units, charge_api_key_full.cost,
                charge_api_key_full.idempotency_key, charge_api_key_full.metadata, v_now)
        RETURNING id INTO r.event_id;
        r.remaining_daily := d.remaining_daily - charge_api_key_full.cost;
        r.remaining_monthly := d.remaining_monthly - charge_api_key_full.cost;
        r.remaining_credits := d.remaining_credits - charge_api_key_full.cost;
    ELSE
        -- Hitting the wall is the 100% alert, once per period; other meters unchanged.
        PERFORM api_key_mgmt_internal.refusal_alert(CASE d.refused_by WHEN 'key' THEN k ELSE t END, v_now, d.code);
        r.remaining_daily := d.remaining_daily;
        r.remaining_monthly := d.remaining_monthly;
        r.remaining_credits := d.remaining_credits;
    END IF;
    IF charge_api_key_full.idempotency_key IS NOT NULL THEN
        INSERT INTO api_key_mgmt.usage_idempotency (key_id, idempotency_key, allowed, code, remaining_daily,
                                                    remaining_monthly, remaining_credits, retry_after, event_id, created_at)
        VALUES (charge_api_key_full.key_id, charge_api_key_full.idempotency_key, r.allowed, r.code, r.remaining_daily,
                r.remaining_monthly, r.remaining_credits, r.retry_after, r.event_id, v_now);
    END IF;
    RETURN r;
END
$$;

-- validate_and_charge(api_key, scope, cost, units, provider, model, idempotency_key,
-- metadata, key_source, rate_cost) -> charge_result: validate_api_key and
-- charge_api_key in one call, for callers that hold the plaintext key. A key that does
-- not validate is refused with its validation code (not_found, revoked, scope_denied,
-- daily_cap_exceeded, ...) and nothing is charged; by default the call also takes one
-- rate-limit token (rate_cost; with 0 the limits are not consulted).
CREATE FUNCTION api_key_mgmt_impl.validate_and_charge(
    api_key text,
    scope text,
    cost numeric,
    units bigint DEFAULT 1,
    provider text DEFAULT NULL,
    model text DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    metadata jsonb DEFAULT NULL,
    key_source text DEFAULT NULL,
    rate_cost integer DEFAULT 1
) RETURNS api_key_mgmt.charge_result
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v api_key_mgmt.key_validation;
    r api_key_mgmt.charge_result;
BEGIN
    IF validate_and_charge.scope IS NULL THEN
        RAISE EXCEPTION 'scope must not be NULL' USING ERRCODE = '22004';
    END IF;
    v := api_key_mgmt.validate_api_key(validate_and_charge.api_key, validate_and_charge.scope,
                                       validate_and_charge.provider, validate_and_charge.model, 0);
    -- Rate limits are the charge's to decide (rate_cost tokens, possibly none): a check
    -- of the validation saying no token is left does not refuse here.
    IF NOT v.valid AND v.code <> 'rate_limited' THEN
        r.allowed := false;
        r.code := v.code;
        r.remaining_daily := v.remaining_daily;
        r.remaining_monthly := v.remaining_monthly;
        r.remaining_credits := v.remaining_credits;
        r.retry_after := v.retry_after;
        RETURN r;
    END IF;
    RETURN api_key_mgmt.charge_api_key(v.key_id, validate_and_charge.scope, validate_and_charge.cost,
        validate_and_charge.units, validate_and_charge.provider, validate_and_charge.model,
        validate_and_charge.idempotency_key, validate_and_charge.metadata, validate_and_charge.key_source,
        validate_and_charge.rate_cost);
END
$$;

-- ---------------------------------------------------------------------------------
-- Reservations: hold an estimate, then settle the actual cost or release.
-- ---------------------------------------------------------------------------------

-- reserve_budget(key_id, scope, estimate, timeout) -> charge_result with reservation_id.
CREATE FUNCTION api_key_mgmt_impl.reserve_budget(
    key_id uuid,
    scope text,
    estimate numeric,
    timeout interval DEFAULT '15 minutes'
) RETURNS api_key_mgmt.charge_result
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k api_key_mgmt.meters;
    t api_key_mgmt.meters;
    d record;
    r api_key_mgmt.charge_result;
    v_now timestamptz;
    m record;
    v_tenant boolean;
BEGIN
    PERFORM api_key_mgmt_internal.check_charge(reserve_budget.key_id, reserve_budget.scope, 'estimate', reserve_budget.estimate);
    IF reserve_budget.timeout IS NULL THEN
        RAISE EXCEPTION 'timeout must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF reserve_budget.timeout < '1 second'::interval OR reserve_budget.timeout > '1 day'::interval THEN
        RAISE EXCEPTION 'timeout must be between 1 second and 1 day' USING ERRCODE = '22023';
    END IF;
    k := api_key_mgmt_internal.key_meter(reserve_budget.key_id);
    v_now := api_key_mgmt_internal.meter_now();
    m := api_key_mgmt_internal.meters_now(k, v_now);
    k := m.k;
    t := m.t;
    v_tenant := m.tenant;
    d := api_key_mgmt_internal.meter_decide(k, t, reserve_budget.estimate, v_now);
    r.code := d.code;
    r.allowed := d.code = 'ok';
    r.retry_after := d.retry_after;
    r.remaining_daily := d.remaining_daily;
    r.remaining_monthly := d.remaining_monthly;
    r.remaining_credits := d.remaining_credits;
    IF NOT r.allowed THEN
        PERFORM api_key_mgmt_internal.refusal_alert(CASE d.refused_by WHEN 'key' THEN k ELSE t END, v_now, d.code);
        RETURN r;
    END IF;
    k := api_key_mgmt_internal.meter_spend(k, reserve_budget.estimate, v_now);
    IF v_tenant THEN
        t := api_key_mgmt_internal.meter_spend(t, reserve_budget.estimate, v_now);
    END IF;
    INSERT INTO api_key_mgmt.reservations (tenant_id, key_id, scope, estimate, tenant_held,
                                           day_ends_at, month_ends_at, created_at, expires_at)
    VALUES (k.tenant_id, k.key_id, reserve_budget.scope, reserve_budget.estimate, v_tenant,
            k.day_ends_at, k.month_ends_at, v_now, v_now + reserve_budget.timeout)
    RETURNING id INTO r.reservation_id;
    r.remaining_daily := r.remaining_daily - reserve_budget.estimate;
    r.remaining_monthly := r.remaining_monthly - reserve_budget.estimate;
    r.remaining_credits := r.remaining_credits - reserve_budget.estimate;
    RETURN r;
END
$$;

-- finish_reservation(id, actual or NULL to release, units, provider, model, metadata,
-- key_source, mode) -> charge_result; mode 'settle' (42704 when it does not exist),
-- 'release' (NULL when it does not exist), 'expire' (NULL unless it exists and expired). Adjusts the meters that hold it by
-- actual - estimate when the hold's period is still current (a hold counts in the
-- period it was made), logs the usage (settle), deletes the reservation.
CREATE FUNCTION api_key_mgmt_internal.finish_reservation(p_id uuid, p_actual numeric, p_units bigint,
        p_provider text, p_model text, p_metadata jsonb, p_key_source text, p_mode text)
    RETURNS api_key_mgmt.charge_result LANGUAGE plpgsql AS $$
DECLARE
    res api_key_mgmt.reservations;
    k api_key_mgmt.meters;
    t api_key_mgmt.meters;
    r api_key_mgmt.charge_result;
    v_key uuid;
    v_delta numeric;
    v_now timestamptz := api_key_mgmt_internal.meter_now();
BEGIN
    IF p_id IS NULL THEN
        RAISE EXCEPTION 'reservation must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT x.key_id INTO v_key FROM api_key_mgmt.reservations x WHERE x.id = p_id;
    IF FOUND THEN
        k := api_key_mgmt_internal.key_meter(v_key);
        SELECT * INTO res FROM api_key_mgmt.reservations x WHERE x.id = p_id FOR UPDATE;
    END IF;
    IF res.id IS NULL THEN
        IF p_mode <> 'settle' THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'reservation % does not exist (settled, released or expired)', p_id USING ERRCODE = '42704';
    END IF;
    IF p_mode = 'expire' AND res.expires_at > v_now THEN
        RETURN NULL;
    END IF;
    v_delta := COALESCE(p_actual, 0) - res.estimate;
    IF res.tenant_held THEN
        t := api_key_mgmt_internal.tenant_meter(res.tenant_id, false);
    END IF;
    k := api_key_mgmt_internal.meter_spend(k, v_delta, v_now, res.day_ends_at, res.month_ends_at);
    IF t.subject_id IS NOT NULL THEN
        t := api_key_mgmt_internal.meter_spend(t, v_delta, v_now, res.day_ends_at, res.month_ends_at);
    END IF;
    DELETE FROM api_key_mgmt.reservations x WHERE x.id = p_id;
    r.allowed := true;
    r.code := 'ok';
    r.reservation_id := p_id;
    IF p_actual IS NOT NULL THEN
        INSERT INTO api_key_mgmt.usage_events (tenant_id, key_id, scope, provider, model, key_source,
                                               units, cost, reservation_id, metadata, occurred_at)
        VALUES (res.tenant_id, res.key_id, res.scope, p_provider, p_model, p_key_source, p_units,
                p_actual, p_id, p_metadata, res.created_at)
        RETURNING id INTO r.event_id;
    END IF;
    r.remaining_daily := LEAST(k.daily_cap - k.day_spent, t.daily_cap - t.day_spent);
    r.remaining_daily := CASE WHEN r.remaining_daily < 0 THEN 0 ELSE r.remaining_daily END;
    r.remaining_monthly := LEAST(k.monthly_cap - k.month_spent, t.monthly_cap - t.month_spent);
    r.remaining_monthly := CASE WHEN r.remaining_monthly < 0 THEN 0 ELSE r.remaining_monthly END;
    r.remaining_credits := LEAST(k.credits, t.credits);
    RETURN r;
END
$$;

-- settle_reservation(reservation, actual_cost, units, provider, model, metadata, key_source)
-- -> charge_result. Records the actual cost (even above the estimate: it was spent).
CREATE FUNCTION api_key_mgmt_impl.settle_reservation(
    reservation uuid,
    actual_cost numeric,
    units bigint DEFAULT 1,
    provider text DEFAULT NULL,
    model text DEFAULT NULL,
    metadata jsonb DEFAULT NULL,
    key_source text DEFAULT NULL
) RETURNS api_key_mgmt.charge_result
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM api_key_mgmt_internal.check_amount('actual_cost', settle_reservation.actual_cost, false);
    PERFORM api_key_mgmt_internal.check_usage(settle_reservation.units, settle_reservation.provider,
        settle_reservation.model, settle_reservation.metadata, settle_reservation.key_source);
    RETURN api_key_mgmt_internal.finish_reservation(settle_reservation.reservation, settle_reservation.actual_cost,
        settle_reservation.units, settle_reservation.provider, settle_reservation.model,
        settle_reservation.metadata, settle_reservation.key_source, 'settle');
END
$$;

-- release_reservation(reservation) -> boolean: gives the hold back; false if it was
-- already settled, released or expired.
CREATE FUNCTION api_key_mgmt_impl.release_reservation(reservation uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF release_reservation.reservation IS NULL THEN
        RAISE EXCEPTION 'reservation must not be NULL' USING ERRCODE = '22004';
    END IF;
    RETURN (api_key_mgmt_internal.finish_reservation(release_reservation.reservation, NULL, NULL,
               NULL, NULL, NULL, NULL, 'release')).code IS NOT NULL;
END
$$;

-- expire_reservations(batch_size) -> integer: releases up to batch_size reservations
-- past their timeout; maintenance (run_metering_maintenance calls it).
CREATE FUNCTION api_key_mgmt_impl.expire_reservations(batch_size integer DEFAULT 1000) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
    v_n integer := 0;
BEGIN
    PERFORM api_key_mgmt_internal.check_range('batch_size', expire_reservations.batch_size, 1, 100000);
    FOR v_id IN SELECT x.id FROM api_key_mgmt.reservations x
                 WHERE x.expires_at <= api_key_mgmt_internal.meter_now()
                 ORDER BY x.expires_at LIMIT expire_reservations.batch_size
    LOOP
        IF (api_key_mgmt_internal.finish_reservation(v_id, NULL, NULL, NULL, NULL, NULL, NULL, 'expire')).code IS NOT NULL THEN
            v_n := v_n + 1;
        END IF;
    END LOOP;
    RETURN v_n;
END
$$;

-- ---------------------------------------------------------------------------------
-- Rate limits.
-- ---------------------------------------------------------------------------------

-- sync_limits(subject): mirror the subject's rate limits into its meter (what
-- validate_api_key reads).
CREATE FUNCTION api_key_mgmt_internal.sync_limits(p_subject uuid)
    RETURNS void LANGUAGE sql AS $$
    UPDATE api_key_mgmt.meters m SET
        limit_ids = l.ids, limit_period_us = l.periods, limit_max = l.maxes, limit_burst = l.bursts,
        updated_at = pg_catalog.now()
      FROM (SELECT pg_catalog.array_agg(r.id ORDER BY r.name) AS ids,
                   pg_catalog.array_agg(r.period_us ORDER BY r.name) AS periods,
                   pg_catalog.array_agg(r.max_requests ORDER BY r.name) AS maxes,
                   pg_catalog.array_agg(r.burst ORDER BY r.name) AS bursts
              FROM api_key_mgmt.rate_limits r WHERE r.subject_id = p_subject) l
     WHERE m.subject_id = p_subject
$$;

-- put_limit(meter, name, max_requests, per, burst) -> uuid
CREATE FUNCTION api_key_mgmt_internal.put_limit(m api_key_mgmt.meters, p_name text, p_max integer,
                                                p_per interval, p_burst integer)
    RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_us bigint;
    v_id uuid;
BEGIN
    PERFORM api_key_mgmt_internal.check_text('name', p_name, 64);
    IF p_name !~ '^[a-z0-9][a-z0-9_.-]*$' THEN
        RAISE EXCEPTION 'name must be lower-case letters, digits, _ . - (e.g. per_second)' USING ERRCODE = '22023';
    END IF;
    IF p_max IS NULL THEN
        RAISE EXCEPTION 'max_requests must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF p_max NOT BETWEEN 1 AND 1000000000 THEN
        RAISE EXCEPTION 'max_requests must be 1 to 1000000000' USING ERRCODE = '22023';
    END IF;
    IF p_per IS NULL THEN
        RAISE EXCEPTION 'per must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.date_part('month', p_per) <> 0 OR pg_catalog.date_part('year', p_per) <> 0 THEN
        RAISE EXCEPTION 'per must be given in days or smaller units (a month has no fixed length)' USING ERRCODE = '22023';
    END IF;
    v_us := (pg_catalog.date_part('epoch', p_per) * 1000000)::bigint;
    IF v_us NOT BETWEEN 1000 AND 31622400000000 THEN
        RAISE EXCEPTION 'per must be between 1 millisecond and 366 days' USING ERRCODE = '22023';
    END IF;
    IF p_burst IS NOT NULL AND p_burst NOT BETWEEN 1 AND 1000000000 THEN
        RAISE EXCEPTION 'burst must be 1 to 1000000000 (NULL: max_requests)' USING ERRCODE = '22023';
    END IF;
    IF (SELECT pg_catalog.count(*) FROM api_key_mgmt.rate_limits r
         WHERE r.subject_id = m.subject_id AND r.name <> p_name) >= 16 THEN
        RAISE EXCEPTION 'at most 16 rate limits per key or tenant' USING ERRCODE = '22023';
    END IF;
    INSERT INTO api_key_mgmt.rate_limits (tenant_id, key_id, subject_id, name, max_requests, per, period_us, burst)
    VALUES (m.tenant_id, m.key_id, m.subject_id, p_name, p_max, p_per, v_us, p_burst)
    ON CONFLICT (subject_id, name) DO UPDATE SET
        max_requests = EXCLUDED.max_requests, per = EXCLUDED.per, period_us = EXCLUDED.period_us,
        burst = EXCLUDED.burst, updated_at = pg_catalog.now()
    RETURNING id INTO v_id;
    PERFORM api_key_mgmt_internal.sync_limits(m.subject_id);
    RETURN v_id;
END
$$;

-- drop_limit(subject, name) -> boolean
CREATE FUNCTION api_key_mgmt_internal.drop_limit(p_subject uuid, p_name text)
    RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF p_name IS NULL THEN
        RAISE EXCEPTION 'name must not be NULL' USING ERRCODE = '22004';
    END IF;
    DELETE FROM api_key_mgmt.rate_limits r WHERE r.subject_id = p_subject AND r.name = p_name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM api_key_mgmt_internal.sync_limits(p_subject);
    RETURN true;
END
$$;

-- set_rate_limit(key_id, name, max_requests, per, burst) -> uuid (the limit's id).
-- max_requests per `per`, with up to `burst` at once (NULL: max_requests).
CREATE FUNCTION api_key_mgmt_impl.set_rate_limit(
    key_id uuid,
    name text,
    max_requests integer,
    per interval,
    burst integer DEFAULT NULL
) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
    v_tenant uuid := api_key_mgmt_internal.key_tenant_admin(set_rate_limit.key_id);
BEGIN
    v_id := api_key_mgmt_internal.put_limit(api_key_mgmt_internal.key_meter(set_rate_limit.key_id),
        set_rate_limit.name, set_rate_limit.max_requests, set_rate_limit.per, set_rate_limit.burst);
    PERFORM api_key_mgmt_internal.audit(v_tenant, 'rate_limit.set', 'api_key', set_rate_limit.key_id::text,
        pg_catalog.jsonb_build_object('name', set_rate_limit.name, 'max_requests', set_rate_limit.max_requests,
            'per', set_rate_limit.per, 'burst', set_rate_limit.burst));
    RETURN v_id;
END
$$;

-- set_tenant_rate_limit(tenant_id, name, max_requests, per, burst) -> uuid: shared by
-- every key of the tenant.
CREATE FUNCTION api_key_mgmt_impl.set_tenant_rate_limit(
    tenant_id uuid,
    name text,
    max_requests integer,
    per interval,
    burst integer DEFAULT NULL
) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(set_tenant_rate_limit.tenant_id, 'admin');
    v_id := api_key_mgmt_internal.put_limit(api_key_mgmt_internal.tenant_meter(set_tenant_rate_limit.tenant_id, true),
        set_tenant_rate_limit.name, set_tenant_rate_limit.max_requests, set_tenant_rate_limit.per,
        set_tenant_rate_limit.burst);
    PERFORM api_key_mgmt_internal.audit(set_tenant_rate_limit.tenant_id, 'rate_limit.set', 'tenant',
        set_tenant_rate_limit.tenant_id::text,
        pg_catalog.jsonb_build_object('name', set_tenant_rate_limit.name, 'max_requests', set_tenant_rate_limit.max_requests,
            'per', set_tenant_rate_limit.per, 'burst', set_tenant_rate_limit.burst));
    RETURN v_id;
END
$$;

-- remove_rate_limit(key_id, name) -> boolean
CREATE FUNCTION api_key_mgmt_impl.remove_rate_limit(key_id uuid, name text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tenant uuid := api_key_mgmt_internal.key_tenant_admin(remove_rate_limit.key_id);
BEGIN
    PERFORM api_key_mgmt_internal.key_meter(remove_rate_limit.key_id);
    IF NOT api_key_mgmt_internal.drop_limit(remove_rate_limit.key_id, remove_rate_limit.name) THEN
        RETURN false;
    END IF;
    PERFORM api_key_mgmt_internal.audit(v_tenant, 'rate_limit.removed', 'api_key', remove_rate_limit.key_id::text,
        pg_catalog.jsonb_build_object('name', remove_rate_limit.name));
    RETURN true;
END
$$;

-- remove_tenant_rate_limit(tenant_id, name) -> boolean
CREATE FUNCTION api_key_mgmt_impl.remove_tenant_rate_limit(tenant_id uuid, name text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM api_key_mgmt_internal.authorize(remove_tenant_rate_limit.tenant_id, 'admin');
    PERFORM api_key_mgmt_internal.tenant_meter(remove_tenant_rate_limit.tenant_id, true);
    IF NOT api_key_mgmt_internal.drop_limit(remove_tenant_rate_limit.tenant_id, remove_tenant_rate_limit.name) THEN
        RETURN false;
    END IF;
    PERFORM api_key_mgmt_internal.audit(remove_tenant_rate_limit.tenant_id, 'rate_limit.removed', 'tenant',
        remove_tenant_rate_limit.tenant_id::text, pg_catalog.jsonb_build_object('name', remove_tenant_rate_limit.name));
    RETURN true;
END
$$;

-- consume_rate_limit(key_id, cost) -> (allowed, remaining, retry_after): takes `cost`
-- tokens from every limit of the key and of its tenant, all or none. Shared memory
-- when preloaded (no write); otherwise the table fallback (row locks on the limit
-- states, one UPDATE per limit).
CREATE FUNCTION api_key_mgmt_impl.consume_rate_limit(key_id uuid, cost integer DEFAULT 1)
    RETURNS TABLE (allowed boolean, remaining bigint, retry_after interval)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tenant uuid;
    v_ids uuid[];
    v_periods bigint[];
    v_maxes integer[];
    v_bursts integer[];
    v_now timestamptz;
    l record;
    g record;
    v_new timestamptz[] := '{}';
    v_lids uuid[] := '{}';
BEGIN
    IF consume_rate_limit.key_id IS NULL OR consume_rate_limit.cost IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN consume_rate_limit.key_id IS NULL THEN 'key_id' ELSE 'cost' END
            USING ERRCODE = '22004';
    END IF;
    IF consume_rate_limit.cost NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'cost must be 1 to 1000000' USING ERRCODE = '22023';
    END IF;
    SELECT k.tenant_id INTO v_tenant FROM api_key_mgmt.api_keys k WHERE k.id = consume_rate_limit.key_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'API key % does not exist', consume_rate_limit.key_id USING ERRCODE = '42704';
    END IF;
    allowed := true;
    IF api_key_mgmt_internal.rate_limit_capacity() > 0 THEN
        SELECT pg_catalog.array_agg(u.id), pg_catalog.array_agg(u.p), pg_catalog.array_agg(u.mx), pg_catalog.array_agg(u.b)
          INTO v_ids, v_periods, v_maxes, v_bursts
          FROM api_key_mgmt.meters m
         CROSS JOIN LATERAL ROWS FROM (pg_catalog.unnest(m.limit_ids), pg_catalog.unnest(m.limit_period_us),
                                   pg_catalog.unnest(m.limit_max), pg_catalog.unnest(m.limit_burst)) AS u(id, p, mx, b)
         WHERE m.subject_id IN (consume_rate_limit.key_id, v_tenant);
        IF v_ids IS NOT NULL THEN
            SELECT * INTO g FROM api_key_mgmt_internal.shmem_consume(v_ids, v_periods, v_maxes, v_bursts, consume_rate_limit.cost);
            allowed := g.allowed;
            remaining := g.remaining;
            retry_after := g.retry_after;
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;
    -- Table fallback: lock each limit's state in id order (no deadlocks), decide all,
    -- then write all or nothing.
    v_now := api_key_mgmt_internal.limiter_now();
    FOR l IN SELECT r.id, r.period_us, r.max_requests, r.burst FROM api_key_mgmt.rate_limits r
              WHERE r.subject_id IN (consume_rate_limit.key_id, v_tenant) ORDER BY r.id
    LOOP
        INSERT INTO api_key_mgmt.rate_limit_state (limit_id) VALUES (l.id) ON CONFLICT DO NOTHING;
        SELECT * INTO g FROM api_key_mgmt_internal.gcra(
            (SELECT s.tat FROM api_key_mgmt.rate_limit_state s WHERE s.limit_id = l.id FOR UPDATE),
            v_now, l.period_us, l.max_requests, l.burst, consume_rate_limit.cost);
        remaining := LEAST(remaining, g.remaining);
        IF NOT g.allowed THEN
            allowed := false;
            retry_after := CASE WHEN g.retry_after IS NULL OR retry_after IS NULL AND NOT allowed AND remaining IS NULL
                                THEN g.retry_after
                                ELSE GREATEST(retry_after, g.retry_after) END;
        END IF;
        v_lids := v_lids || l.id;
        v_new := v_new || g.tat;
    END LOOP;
    IF allowed THEN
        UPDATE api_key_mgmt.rate_limit_state s SET tat = n.tat
          FROM ROWS FROM (pg_catalog.unnest(v_lids), pg_catalog.unnest(v_new)) AS n(id, tat) WHERE s.limit_id = n.id;
    ELSE
        remaining := 0;
    END IF;
    RETURN NEXT;
END
$$;

-- ---------------------------------------------------------------------------------
-- Partitions and maintenance.
-- ---------------------------------------------------------------------------------

-- create_usage_partitions(months_ahead) -> integer: makes sure the current month and
-- the next months_ahead months have their own partition of usage_events (moving any
-- of their rows out of the default partition); returns how many it created. Safe to
-- call at any time and concurrently (pg_cron, a background worker).
CREATE FUNCTION api_key_mgmt_impl.create_usage_partitions(months_ahead integer DEFAULT 3) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_start timestamptz;
    v_lo timestamptz;
    v_hi timestamptz;
    v_name text;
    v_n integer := 0;
BEGIN
    PERFORM api_key_mgmt_internal.check_range('months_ahead', create_usage_partitions.months_ahead, 0, 60);
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('api_key_mgmt.create_usage_partitions'));
    v_start := pg_catalog.date_trunc('month', api_key_mgmt_internal.meter_now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    FOR i IN 0 .. create_usage_partitions.months_ahead LOOP
        v_lo := ((v_start AT TIME ZONE 'UTC') + pg_catalog.make_interval(months => i)) AT TIME ZONE 'UTC';
        v_hi := ((v_start AT TIME ZONE 'UTC') + pg_catalog.make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        v_name := 'usage_events_' || pg_catalog.to_char(v_lo AT TIME ZONE 'UTC', '"y"YYYY"m"MM');
        CONTINUE WHEN EXISTS (SELECT FROM pg_catalog.pg_class c
                               WHERE c.relnamespace = 'api_key_mgmt'::regnamespace AND c.relname = v_name);
        EXECUTE pg_catalog.format('CREATE TABLE api_key_mgmt.%I (LIKE api_key_mgmt.usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name);
        EXECUTE pg_catalog.format('ALTER TABLE api_key_mgmt.%I ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', v_name);
        EXECUTE pg_catalog.format(
            'WITH moved AS (DELETE FROM api_key_mgmt.usage_events_default WHERE occurred_at >= %L AND occurred_at < %L RETURNING *) '
            'INSERT INTO api_key_mgmt.%I SELECT * FROM moved', v_lo, v_hi, v_name);
        EXECUTE pg_catalog.format('ALTER TABLE api_key_mgmt.usage_events ATTACH PARTITION api_key_mgmt.%I FOR VALUES FROM (%L) TO (%L)',
                                  v_name, v_lo, v_hi);
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END
$$;

-- purge_idempotency_keys(older_than) -> bigint: forget replay outcomes older than this.
CREATE FUNCTION api_key_mgmt_impl.purge_idempotency_keys(older_than interval DEFAULT '7 days') RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_n bigint;
BEGIN
    IF purge_idempotency_keys.older_than IS NULL THEN
        RAISE EXCEPTION 'older_than must not be NULL' USING ERRCODE = '22004';
    ELSIF purge_idempotency_keys.older_than < '1 hour'::interval THEN
        RAISE EXCEPTION 'older_than must be at least 1 hour' USING ERRCODE = '22023';
    END IF;
    DELETE FROM api_key_mgmt.usage_idempotency i
     WHERE i.created_at < api_key_mgmt_internal.meter_now() - purge_idempotency_keys.older_than;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

-- run_metering_maintenance() -> jsonb: partitions 3 months ahead, expired reservations
-- released, idempotency outcomes older than 7 days purged. Schedule it (pg_cron:
-- every few minutes).
CREATE FUNCTION api_key_mgmt_impl.run_metering_maintenance() RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_parts integer;
    v_expired integer := 0;
    v_batch integer;
BEGIN
    v_parts := api_key_mgmt.create_usage_partitions(3);
    LOOP
        v_batch := api_key_mgmt.expire_reservations(1000);
        v_expired := v_expired + v_batch;
        EXIT WHEN v_batch < 1000;
    END LOOP;
    RETURN pg_catalog.jsonb_build_object('partitions_created', v_parts, 'reservations_expired', v_expired,
                                         'idempotency_keys_purged', api_key_mgmt.purge_idempotency_keys('7 days'));
END
$$;

-- ---------------------------------------------------------------------------------
-- Views (security_invoker: row-level security applies through them).
-- ---------------------------------------------------------------------------------

-- Cost and units per tenant, key, scope, provider, model and key source, by UTC day.
CREATE VIEW api_key_mgmt.usage_daily WITH (security_invoker = true) AS
SELECT u.tenant_id, u.key_id, u.scope, u.provider, u.model, u.key_source,
       (u.occurred_at AT TIME ZONE 'UTC')::date AS day,
       pg_catalog.count(*) AS events, pg_catalog.sum(u.units) AS units, pg_catalog.sum(u.cost) AS cost
  FROM api_key_mgmt.usage_events u
 GROUP BY 1, 2, 3, 4, 5, 6, 7;

-- The same by UTC month.
CREATE VIEW api_key_mgmt.usage_monthly WITH (security_invoker = true) AS
SELECT u.tenant_id, u.key_id, u.scope, u.provider, u.model, u.key_source,
       pg_catalog.date_trunc('month', u.occurred_at AT TIME ZONE 'UTC')::date AS month,
       pg_catalog.count(*) AS events, pg_catalog.sum(u.units) AS units, pg_catalog.sum(u.cost) AS cost
  FROM api_key_mgmt.usage_events u
 GROUP BY 1, 2, 3, 4, 5, 6, 7;

-- BYOK vs platform per tenant and UTC month.
CREATE VIEW api_key_mgmt.usage_by_key_source WITH (security_invoker = true) AS
SELECT u.tenant_id,
       pg_catalog.date_trunc('month', u.occurred_at AT TIME ZONE 'UTC')::date AS month,
       COALESCE(pg_catalog.sum(u.cost) FILTER (WHERE u.key_source = 'byok'), 0) AS byok_cost,
       COALESCE(pg_catalog.sum(u.cost) FILTER (WHERE u.key_source = 'platform'), 0) AS platform_cost,
       COALESCE(pg_catalog.sum(u.cost) FILTER (WHERE u.key_source IS NULL), 0) AS unknown_cost,
       COALESCE(pg_catalog.sum(u.units) FILTER (WHERE u.key_source = 'byok'), 0) AS byok_units,
       COALESCE(pg_catalog.sum(u.units) FILTER (WHERE u.key_source = 'platform'), 0) AS platform_units
  FROM api_key_mgmt.usage_events u
 GROUP BY 1, 2;

-- Every meter as of now: caps, what is spent and left in the current periods, credits.
CREATE VIEW api_key_mgmt.meter_status WITH (security_invoker = true) AS
SELECT m.tenant_id, m.key_id, CASE WHEN m.key_id IS NULL THEN 'tenant' ELSE 'key' END AS subject,
       m.daily_cap, s.day_spent,
       m.daily_cap - s.day_spent AS daily_remaining,
       m.monthly_cap, s.month_spent,
       m.monthly_cap - s.month_spent AS monthly_remaining,
       s.credits, m.credits_refill, m.credits_refill_period,
       s.day_ends_at, s.month_ends_at,
       pg_catalog.cardinality(m.limit_ids) AS rate_limits
  FROM api_key_mgmt.meters m
 CROSS JOIN LATERAL (
       SELECT CASE WHEN n.now < m.day_ends_at THEN m.day_spent ELSE 0 END AS day_spent,
              CASE WHEN n.now < m.month_ends_at THEN m.month_spent ELSE 0 END AS month_spent,
              CASE WHEN m.credits_refill_period IS NOT NULL AND n.now >= m.credits_until THEN m.credits_refill
                   ELSE m.credits END AS credits,
              m.day_ends_at, m.month_ends_at
         FROM (SELECT api_key_mgmt_internal.meter_now() AS now) n) s;
