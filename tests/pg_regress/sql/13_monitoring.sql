-- Monitoring (issue 17): the counters (cluster-wide, so measured as differences), the
-- gauges, the opt-in per-tenant series, health(), and who may read them. Sets up its
-- own tenant and key (after setup.sql).
CREATE FUNCTION regress.metric(p_metric text, p_label text DEFAULT NULL, p_value text DEFAULT NULL)
    RETURNS double precision LANGUAGE sql AS $$
    SELECT COALESCE(sum(value), 0) FROM api_key_mgmt.metrics
     WHERE metric = p_metric AND (p_label IS NULL OR labels ->> p_label = p_value);
$$;
SELECT regress.use_keys('v12');
SELECT api_key_mgmt.create_tenant('Monitoring', '{*}', 'monitoring') AS t \gset
SELECT key_id AS k, api_key AS key FROM api_key_mgmt.issue_api_key(:'t', 'm', '{*}') \gset
SELECT key_id AS r, api_key AS revoked_key FROM api_key_mgmt.issue_api_key(:'t', 'r', '{*}') \gset
SELECT api_key_mgmt.revoke_api_key(:'r') AS revoked;
CREATE TEMP TABLE before AS SELECT metric, labels, value FROM api_key_mgmt.metrics;
CREATE FUNCTION pg_temp.delta(p_metric text, p_label text, p_value text) RETURNS double precision
    LANGUAGE sql AS $$
    SELECT regress.metric(p_metric, p_label, p_value)
         - COALESCE((SELECT sum(b.value) FROM before b WHERE b.metric = p_metric AND b.labels ->> p_label = p_value), 0);
$$;

-- Validations by code, charges by outcome, rate-limit decisions (one call per row: in
-- the select list, not in FROM, where constant arguments make a single call).
SELECT (api_key_mgmt.validate_api_key(:'key')).code FROM generate_series(1, 3);
SELECT (api_key_mgmt.validate_api_key('sk_live_tooshort')).code FROM generate_series(1, 2);
SELECT code FROM api_key_mgmt.validate_api_key(:'revoked_key');
SELECT api_key_mgmt.set_key_caps(:'k', 10) AS capped;
SELECT code FROM api_key_mgmt.charge_api_key(:'k', 'a:b', 4);
SELECT code FROM api_key_mgmt.charge_api_key(:'k', 'a:b', 4, idempotency_key => 'mon-1');
SELECT code FROM api_key_mgmt.charge_api_key(:'k', 'a:b', 4);
SELECT api_key_mgmt.set_rate_limit(:'k', 'per_minute', 1, '1 minute') IS NOT NULL AS limited;
SELECT (api_key_mgmt.validate_api_key(:'key', NULL, NULL, NULL, 1)).code FROM generate_series(1, 2);
SELECT m.metric, m.label, m.value, pg_temp.delta(m.metric, m.label, m.value) AS delta
  FROM (VALUES ('api_key_mgmt_validations_total', 'code', 'ok'),
               ('api_key_mgmt_validations_total', 'code', 'malformed'),
               ('api_key_mgmt_validations_total', 'code', 'revoked'),
               ('api_key_mgmt_validations_total', 'code', 'rate_limited'),
               ('api_key_mgmt_charges_total', 'code', 'ok'),
               ('api_key_mgmt_charges_total', 'code', 'daily_cap_exceeded'),
               ('api_key_mgmt_rate_limit_decisions_total', 'decision', 'allowed'),
               ('api_key_mgmt_rate_limit_decisions_total', 'decision', 'limited')) AS m(metric, label, value);

-- Gauges of this database.
SELECT regress.metric('api_key_mgmt_preloaded') AS preloaded,
       regress.metric('api_key_mgmt_tenants_by_state', 'state', 'active') >= 1 AS active_tenants,
       regress.metric('api_key_mgmt_secrets_by_key_version') = (SELECT count(*) FROM api_key_mgmt.tenant_secrets) AS secrets_counted;
-- The tenant has spent 8 of a monthly cap of 12 (0.67); a charge of 2 takes it to
-- 0.83: one more tenant past 0.8, none more past 0.9.
SELECT api_key_mgmt.set_tenant_caps(:'t', NULL, 12) AS tenant_capped;
SELECT regress.metric('api_key_mgmt_tenants_near_monthly_cap', 'threshold', '0.8') AS near_before,
       regress.metric('api_key_mgmt_tenants_near_monthly_cap', 'threshold', '0.9') AS near_90_before \gset
SELECT code FROM api_key_mgmt.charge_api_key(:'k', 'a:b', 2);
SELECT regress.metric('api_key_mgmt_tenants_near_monthly_cap', 'threshold', '0.8') - :near_before AS near_80_delta,
       regress.metric('api_key_mgmt_tenants_near_monthly_cap', 'threshold', '0.9') - :near_90_before AS near_90_delta,
       (SELECT month_spent FROM api_key_mgmt.meters WHERE subject_id = :'t') AS tenant_month_spent;
-- Every name follows Prometheus' rules, counters end in _total, and no label carries
-- anything key-like; per-tenant series only when asked for.
SELECT count(*) FILTER (WHERE metric !~ '^[a-zA-Z_:][a-zA-Z0-9_:]*$') AS bad_names,
       count(*) FILTER (WHERE (type = 'counter') <> (metric LIKE '%\_total')) AS misnamed_counters,
       count(*) FILTER (WHERE labels::text ~ '(sk|pk)_(live|test)_') AS key_like_labels,
       count(*) FILTER (WHERE metric = 'api_key_mgmt_tenant_month_spend') AS tenant_series
  FROM api_key_mgmt.metrics;
SET api_key_mgmt.metrics_top_tenants = 1;
SELECT count(*) AS top_tenant_series, bool_and(labels ? 'tenant_id') AS labelled_by_id
  FROM api_key_mgmt.metrics WHERE metric = 'api_key_mgmt_tenant_month_spend';
RESET api_key_mgmt.metrics_top_tenants;

-- health(): one row per check. The regression database is not the maintenance
-- worker's (it serves postgres), and its reads audit in-transaction: a warning.
SELECT api_key_mgmt.create_usage_partitions(2) >= 0 AS partitions;
SELECT check_name, status FROM api_key_mgmt.health();
SELECT detail FROM api_key_mgmt.health() WHERE check_name IN ('maintenance_worker', 'master_key_file') ORDER BY check_name;
SELECT regress.use_keys('wrong');
SELECT status, detail FROM api_key_mgmt.health() WHERE check_name = 'master_key_file';
SELECT regress.use_keys('v12');

-- Readable by the monitoring role (and pg_monitor), not by tenant users or services.
CREATE ROLE regress_monitor IN ROLE api_key_mgmt_monitor;
CREATE ROLE regress_pgmon IN ROLE pg_monitor;
SET ROLE regress_monitor;
SELECT count(*) > 0 AS monitor_reads_metrics FROM api_key_mgmt.metrics;
SELECT count(*) AS monitor_health_checks FROM api_key_mgmt.health();
RESET ROLE;
SET ROLE regress_pgmon;
SELECT count(*) > 0 AS pg_monitor_reads_metrics FROM api_key_mgmt.metrics;
RESET ROLE;
SET ROLE api_key_mgmt_user;
SELECT regress.try('SELECT count(*) FROM api_key_mgmt.metrics');
SELECT regress.try('SELECT * FROM api_key_mgmt.health()');
RESET ROLE;
SET ROLE api_key_mgmt_service;
SELECT regress.try('SELECT count(*) FROM api_key_mgmt.metrics');
RESET ROLE;
