-- Monitoring (issue 17): the metrics view for Prometheus (through postgres_exporter,
-- monitoring/queries.yaml), the health check, and the role a monitoring system logs in
-- with. Nothing here shows a key, a hash, a secret or a tenant's data other than counts
-- (and, only when api_key_mgmt.metrics_top_tenants is set, the month's spend of the
-- top tenants by id).

-- The monitoring role (cluster-wide, created when missing, as in 001_schema.sql).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'api_key_mgmt_monitor') THEN
        BEGIN
            CREATE ROLE api_key_mgmt_monitor NOLOGIN;
            COMMENT ON ROLE api_key_mgmt_monitor IS
                'api_key_mgmt: monitoring (the metrics view and the health check; no keys, secrets or tenant rows)';
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$roles$;

-- metric_counters() -> (name, label, label_value, value): (src/metrics_pg.rs)
-- the shared-memory counters and gauges since server start, cluster-wide.
CREATE FUNCTION api_key_mgmt.metric_counters()
    RETURNS TABLE (name text, label text, label_value text, value bigint)
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'metric_counters_wrapper';

-- metrics: one row per metric and label set, in Prometheus' naming. Counters
-- (*_total) are cluster-wide since server start (shared memory, with the library
-- preloaded); gauges are read from this database's tables at each query. Bounded
-- cardinality: no per-key series; per-tenant series only for the top
-- api_key_mgmt.metrics_top_tenants tenants (0, the default: none).
CREATE VIEW api_key_mgmt.metrics AS
SELECT c.name AS metric,
       CASE WHEN c.label = '' THEN '{}'::jsonb
            ELSE pg_catalog.jsonb_build_object(c.label, c.label_value) END AS labels,
       c.value::double precision AS value,
       CASE WHEN c.name LIKE '%\_total' THEN 'counter' ELSE 'gauge' END AS type
  FROM api_key_mgmt.metric_counters() c
UNION ALL
SELECT 'api_key_mgmt_partitions_ahead_months', '{}'::jsonb, pg_catalog.count(*)::double precision, 'gauge'
  FROM pg_catalog.pg_inherits i
  JOIN pg_catalog.pg_class p ON p.oid = i.inhrelid
 WHERE i.inhparent = 'api_key_mgmt.usage_events'::pg_catalog.regclass
   AND p.relname ~ '^usage_events_y[0-9]{4}m[0-9]{2}$'
   AND pg_catalog.make_date(pg_catalog.substr(p.relname, 15, 4)::integer, pg_catalog.substr(p.relname, 20, 2)::integer, 1)
       > pg_catalog.date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC')::date
UNION ALL
SELECT 'api_key_mgmt_keys_due_for_rotation', '{}'::jsonb, pg_catalog.count(*)::double precision, 'gauge'
  FROM api_key_mgmt.api_keys k
  JOIN api_key_mgmt.tenants t ON t.id = k.tenant_id
 WHERE t.max_key_age IS NOT NULL AND k.revoked_at IS NULL AND k.rotated_to IS NULL
   AND (k.expires_at IS NULL OR k.expires_at > pg_catalog.now())
   AND k.created_at + t.max_key_age <= pg_catalog.now() + '7 days'::interval
UNION ALL
SELECT 'api_key_mgmt_secrets_by_key_version', pg_catalog.jsonb_build_object('version', s.key_version::text),
       pg_catalog.count(*)::double precision, 'gauge'
  FROM api_key_mgmt.tenant_secrets s GROUP BY s.key_version
UNION ALL
SELECT 'api_key_mgmt_tenants_by_state', pg_catalog.jsonb_build_object('state', st.state),
       (SELECT pg_catalog.count(*) FROM api_key_mgmt.tenants t
         WHERE (t.disabled_at IS NULL) = (st.state = 'active'))::double precision, 'gauge'
  FROM (VALUES ('active'), ('disabled')) AS st(state)
UNION ALL
SELECT 'api_key_mgmt_tenants_near_monthly_cap', pg_catalog.jsonb_build_object('threshold', th.t::text),
       (SELECT pg_catalog.count(*) FROM api_key_mgmt.meters m
         WHERE m.key_id IS NULL AND m.monthly_cap > 0 AND m.month_spent >= th.t * m.monthly_cap
           AND (m.month_ends_at IS NULL OR m.month_ends_at > pg_catalog.now()))::double precision, 'gauge'
  FROM (VALUES (0.8), (0.9), (1.0)) AS th(t)
UNION ALL
(SELECT 'api_key_mgmt_tenant_month_spend', pg_catalog.jsonb_build_object('tenant_id', m.tenant_id::text),
        m.month_spent::double precision, 'gauge'
   FROM api_key_mgmt.meters m
  WHERE m.key_id IS NULL AND (m.month_ends_at IS NULL OR m.month_ends_at > pg_catalog.now())
  ORDER BY m.month_spent DESC, m.tenant_id
  LIMIT pg_catalog.current_setting('api_key_mgmt.metrics_top_tenants')::integer);
COMMENT ON VIEW api_key_mgmt.metrics IS
    'api_key_mgmt: metrics for Prometheus (see monitoring/queries.yaml); counts only';

-- health() -> (check_name, status, detail): one row per check, status ok | warning |
-- critical, for a load balancer or Kubernetes probe:
--   psql -XAtc "SELECT count(*) = 0 FROM api_key_mgmt.health() WHERE status = 'critical'"
-- No detail ever holds a key, a secret or a key file's content.
CREATE FUNCTION api_key_mgmt_impl.health()
    RETURNS TABLE (check_name text, status text, detail text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_preloaded bigint;
    v_worker bigint;
    v_durable boolean := pg_catalog.current_setting('api_key_mgmt.audit_secret_reads')::boolean
        AND NOT pg_catalog.current_setting('api_key_mgmt.audit_reads_in_transaction')::boolean
        AND pg_catalog.current_setting('api_key_mgmt.audit_read_mode') = 'durable';
    v_n bigint;
    v_m bigint;
    v_depth bigint;
    v_capacity bigint;
    v_failed bigint;
BEGIN
    SELECT c.value INTO v_preloaded FROM api_key_mgmt.metric_counters() c
     WHERE c.name = 'api_key_mgmt_preloaded';
    check_name := 'library_preloaded';
    IF v_preloaded = 1 THEN
        status := 'ok'; detail := 'shared_preload_libraries includes api_key_mgmt';
    ELSE
        status := CASE WHEN v_durable THEN 'critical' ELSE 'warning' END;
        detail := 'not preloaded: no shared-memory rate limits, counters or audit queue'
            || CASE WHEN v_durable THEN '; durable secret reads fail (58000)' ELSE '' END;
    END IF;
    RETURN NEXT;

    SELECT c.value INTO v_worker FROM api_key_mgmt.metric_counters() c
     WHERE c.name = 'api_key_mgmt_maintenance_worker_database_oid';
    check_name := 'maintenance_worker';
    IF v_worker IS NULL OR v_worker = 0 THEN
        status := CASE WHEN v_durable THEN 'critical' ELSE 'warning' END;
        detail := 'not running' || CASE WHEN v_durable THEN '; durable secret reads fail (58000)' ELSE '' END;
    ELSIF v_worker <> (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()) THEN
        status := CASE WHEN v_durable THEN 'critical' ELSE 'warning' END;
        detail := 'running in database ' || COALESCE((SELECT pg_catalog.quote_ident(d.datname) FROM pg_catalog.pg_database d
                                                      WHERE d.oid = v_worker::oid), v_worker::text)
            || ', not this one (api_key_mgmt.agent_maintenance_database)'
            || CASE WHEN v_durable THEN '; durable secret reads here fail (58000)' ELSE '' END;
    ELSE
        status := 'ok'; detail := 'running in this database';
    END IF;
    RETURN NEXT;

    check_name := 'master_key_file';
    BEGIN
        SELECT pg_catalog.count(*) INTO v_n FROM api_key_mgmt_internal.master_keys() k
          JOIN api_key_mgmt.master_key_versions v ON v.version = k.version
         WHERE v.key_check <> k.key_check;
        SELECT pg_catalog.count(*) INTO v_m FROM (SELECT DISTINCT s.key_version FROM api_key_mgmt.tenant_secrets s) u
         WHERE NOT EXISTS (SELECT FROM api_key_mgmt_internal.master_keys() k WHERE k.version = u.key_version);
        IF v_n > 0 THEN
            status := 'critical'; detail := v_n || ' version(s) in the key file do not match the recorded key';
        ELSIF v_m > 0 THEN
            status := 'critical'; detail := v_m || ' version(s) used by stored secrets are missing from the key file';
        ELSE
            status := 'ok';
            detail := 'readable; active version ' || COALESCE((SELECT k.version::text FROM api_key_mgmt_internal.master_keys() k
                                                               WHERE k.active), 'none');
        END IF;
    EXCEPTION WHEN OTHERS THEN
        -- The extension's key-file errors name the file and line, never a key.
        status := CASE WHEN EXISTS (SELECT FROM api_key_mgmt.tenant_secrets) THEN 'critical' ELSE 'warning' END;
        detail := SQLSTATE || ': ' || SQLERRM;
    END;
    RETURN NEXT;

    check_name := 'usage_partitions';
    SELECT m.value INTO v_n FROM api_key_mgmt.metrics m WHERE m.metric = 'api_key_mgmt_partitions_ahead_months';
    IF v_n >= 1 THEN
        status := 'ok'; detail := v_n || ' month(s) ahead';
    ELSE
        status := 'warning';
        detail := 'no partition for next month: usage rows go to usage_events_default (run api_key_mgmt.create_usage_partitions() or the maintenance)';
    END IF;
    RETURN NEXT;

    check_name := 'audit_queue';
    SELECT pg_catalog.max(c.value) FILTER (WHERE c.name = 'api_key_mgmt_audit_queue_depth'),
           pg_catalog.max(c.value) FILTER (WHERE c.name = 'api_key_mgmt_audit_queue_capacity'),
           pg_catalog.max(c.value) FILTER (WHERE c.name = 'api_key_mgmt_audit_entries_total' AND c.label_value = 'failed')
      INTO v_depth, v_capacity, v_failed
      FROM api_key_mgmt.metric_counters() c;
    IF v_capacity IS NULL THEN
        status := CASE WHEN v_durable THEN 'critical' ELSE 'ok' END;
        detail := 'no audit queue (not preloaded, or api_key_mgmt.audit_queue_size = 0)';
    ELSIF v_depth * 10 >= v_capacity * 8 THEN
        status := 'warning'; detail := v_depth || ' of ' || v_capacity || ' entries queued: the worker is not keeping up';
    ELSE
        status := 'ok'; detail := v_depth || ' of ' || v_capacity || ' entries queued, ' || v_failed || ' durable reads failed since start';
    END IF;
    RETURN NEXT;

    check_name := 'reservations';
    SELECT pg_catalog.count(*) INTO v_n FROM api_key_mgmt.reservations r
     WHERE r.expires_at < pg_catalog.now() - '1 hour'::interval;
    IF v_n = 0 THEN
        status := 'ok'; detail := 'none stuck past expiry';
    ELSE
        status := 'warning';
        detail := v_n || ' reservation(s) expired over an hour ago still hold budget (run api_key_mgmt.expire_reservations())';
    END IF;
    RETURN NEXT;
END
$$;
