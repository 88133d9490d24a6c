-- Tenant isolation: membership, the tenant context of a request, row-level security
-- for tenant users, the audit log, and the PostgREST pre-request hook
-- (src/tenancy.rs, src/tenancy_pg.rs).

-- Rust: the tenant context.

-- current_tenant_id() -> uuid: the request's tenant (API key validated by
-- authenticate_request in this transaction; the setting api_key_mgmt.tenant_id; a JWT
-- claim), or NULL. Use it in RLS policies of your own tables.
CREATE FUNCTION api_key_mgmt.current_tenant_id() RETURNS uuid
    STABLE PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'current_tenant_id_wrapper';
-- current_tenant_role() -> text: owner | admin | member | viewer in that tenant, or NULL.
CREATE FUNCTION api_key_mgmt.current_tenant_role() RETURNS text
    STABLE PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'current_tenant_role_wrapper';
-- current_user_id() -> text: the JWT sub claim, else the setting api_key_mgmt.user_id.
CREATE FUNCTION api_key_mgmt.current_user_id() RETURNS text
    STABLE PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'current_user_id_wrapper';
-- current_key_id() -> uuid: the API key this transaction authenticated with, or NULL.
CREATE FUNCTION api_key_mgmt.current_key_id() RETURNS uuid
    STABLE PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'current_key_id_wrapper';

-- PARALLEL RESTRICTED: the request's key lives in the leader's memory, which parallel
-- workers cannot see.

-- Internal (owner only).
CREATE FUNCTION api_key_mgmt_internal.set_request_key(tenant_id uuid, key_id uuid) RETURNS void
    VOLATILE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'set_request_key_wrapper';
CREATE FUNCTION api_key_mgmt_internal.authorize(tenant_id uuid, need text) RETURNS text
    STABLE LANGUAGE c AS 'MODULE_PATHNAME', 'authorize_wrapper';
CREATE FUNCTION api_key_mgmt_internal.invoker_name() RETURNS text
    STABLE LANGUAGE c AS 'MODULE_PATHNAME', 'invoker_name_wrapper';
CREATE FUNCTION api_key_mgmt_internal.set_audit_retention(on_ boolean) RETURNS void
    VOLATILE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'set_audit_retention_wrapper';
CREATE FUNCTION api_key_mgmt_internal.audit_retention_active() RETURNS boolean
    STABLE LANGUAGE c AS 'MODULE_PATHNAME', 'audit_retention_active_wrapper';
CREATE FUNCTION api_key_mgmt_internal.route_scope(method text, path text)
    RETURNS TABLE (found boolean, scope text)
    STABLE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'route_scope_wrapper';
CREATE FUNCTION api_key_mgmt_internal.request_api_key(headers jsonb, header text) RETURNS text
    IMMUTABLE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'request_api_key_wrapper';

-- Members of tenants: user ids as your identity provider knows them (the JWT sub).
CREATE TABLE api_key_mgmt.tenant_members (
    tenant_id  uuid NOT NULL REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    user_id    text COLLATE "C" NOT NULL CHECK (pg_catalog.char_length(user_id) BETWEEN 1 AND 200),
    role       text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by text,
    PRIMARY KEY (tenant_id, user_id)
);
COMMENT ON TABLE api_key_mgmt.tenant_members IS 'api_key_mgmt: who belongs to which tenant, with which role';
CREATE INDEX tenant_members_user_idx ON api_key_mgmt.tenant_members (user_id);

-- Routes of the pre-request hook: which scope a request needs. method is an HTTP
-- method or *; path_pattern a path with * wildcards; scope NULL makes a public route.
CREATE TABLE api_key_mgmt.route_scopes (
    id           uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    method       text NOT NULL CHECK (method ~ '^(\*|[A-Z]{3,7})$'),
    path_pattern text NOT NULL CHECK (pg_catalog.char_length(path_pattern) <= 300 AND path_pattern ~ '^[\x21-\x7e]+$'),
    scope        text CHECK (scope IS NULL OR (api_key_mgmt_internal.scopes_valid(ARRAY[scope]) AND scope !~ '\*')),
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT route_scopes_route UNIQUE (method, path_pattern)
);
COMMENT ON TABLE api_key_mgmt.route_scopes IS 'api_key_mgmt: the scope each API route requires';

-- The audit log: append-only (no UPDATE or DELETE but the retention function's).
CREATE TABLE api_key_mgmt.audit_log (
    id          uuid PRIMARY KEY DEFAULT api_key_mgmt_internal.uuid_v7(),  -- time-ordered
    occurred_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    tenant_id   uuid,            -- no foreign key: the trail outlives its tenant
    actor       text NOT NULL,   -- JWT sub / api_key_mgmt.user_id, else the database role
    actor_role  text NOT NULL,   -- the database role
    action      text NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
    target_type text,
    target_id   text,
    details     jsonb NOT NULL DEFAULT '{}',
    client_ip   text,
    user_agent  text
);
COMMENT ON TABLE api_key_mgmt.audit_log IS
    'api_key_mgmt: append-only audit trail (never a key or secret value)';
CREATE INDEX audit_log_tenant_idx ON api_key_mgmt.audit_log (tenant_id, occurred_at);
CREATE INDEX audit_log_time_idx ON api_key_mgmt.audit_log (occurred_at);

CREATE FUNCTION api_key_mgmt_internal.audit_log_append_only() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' AND api_key_mgmt_internal.audit_retention_active() THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = '42501',
        HINT = 'Old entries are removed with api_key_mgmt.purge_audit_log().';
END
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON api_key_mgmt.audit_log
    FOR EACH ROW EXECUTE FUNCTION api_key_mgmt_internal.audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON api_key_mgmt.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_mgmt_internal.audit_log_append_only();
-- Fire even with session_replication_role = replica.
ALTER TABLE api_key_mgmt.audit_log ENABLE ALWAYS TRIGGER audit_log_no_update;
ALTER TABLE api_key_mgmt.audit_log ENABLE ALWAYS TRIGGER audit_log_no_truncate;

-- json_object_or_null(text) -> jsonb: the text as a JSON object, NULL if it is not one.
CREATE FUNCTION api_key_mgmt_internal.json_object_or_null(value text) RETURNS jsonb
    IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'json_object_or_null_wrapper';

-- audit(tenant_id, action, target_type, target_id, details): append one entry, with
-- the actor and, from PostgREST's request.headers, the client IP and user agent.
CREATE FUNCTION api_key_mgmt_internal.audit(
    p_tenant_id uuid, p_action text, p_target_type text, p_target_id text, p_details jsonb DEFAULT '{}'
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_headers jsonb;
    v_role text := api_key_mgmt_internal.invoker_name();
BEGIN
    -- Set by PostgREST as a JSON object; anything else is ignored (no subtransaction:
    -- this runs on every audited operation, secret reads included).
    v_headers := api_key_mgmt_internal.json_object_or_null(pg_catalog.current_setting('request.headers', true));
    INSERT INTO api_key_mgmt.audit_log
        (tenant_id, actor, actor_role, action, target_type, target_id, details, client_ip, user_agent)
    VALUES (p_tenant_id, COALESCE(api_key_mgmt.current_user_id(), v_role), v_role, p_action,
            p_target_type, p_target_id, COALESCE(p_details, '{}'),
            pg_catalog.btrim(pg_catalog.split_part(COALESCE(v_headers ->> 'x-forwarded-for', v_headers ->> 'x-real-ip'), ',', 1)),
            pg_catalog.left(v_headers ->> 'user-agent', 300));
END
$$;

-- Tenant membership.

-- add_tenant_member(tenant_id, user_id, role) -> void: add a member or change its role
-- (tenant owners and platform administrators).
CREATE FUNCTION api_key_mgmt_impl.add_tenant_member(tenant_id uuid, user_id text, role text)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old text;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(add_tenant_member.tenant_id, 'owner');
    PERFORM api_key_mgmt_internal.tenant_row(add_tenant_member.tenant_id, false);
    PERFORM api_key_mgmt_internal.check_text('user_id', add_tenant_member.user_id, 200);
    IF add_tenant_member.role IS NULL OR add_tenant_member.role NOT IN ('owner', 'admin', 'member', 'viewer') THEN
        RAISE EXCEPTION 'role must be owner, admin, member or viewer' USING ERRCODE = '22023';
    END IF;
    SELECT m.role INTO v_old FROM api_key_mgmt.tenant_members m
     WHERE m.tenant_id = add_tenant_member.tenant_id AND m.user_id = add_tenant_member.user_id FOR UPDATE;
    IF v_old IS NOT NULL AND v_old = 'owner' AND add_tenant_member.role <> 'owner'
       AND NOT EXISTS (SELECT FROM api_key_mgmt.tenant_members m WHERE m.tenant_id = add_tenant_member.tenant_id
                          AND m.role = 'owner' AND m.user_id <> add_tenant_member.user_id) THEN
        RAISE EXCEPTION 'a tenant keeps at least one owner' USING ERRCODE = '55000';
    END IF;
    INSERT INTO api_key_mgmt.tenant_members AS m (tenant_id, user_id, role, created_by)
    VALUES (add_tenant_member.tenant_id, add_tenant_member.user_id, add_tenant_member.role,
            api_key_mgmt_internal.actor())
    ON CONFLICT ON CONSTRAINT tenant_members_pkey DO UPDATE SET role = EXCLUDED.role;
    PERFORM api_key_mgmt_internal.audit(add_tenant_member.tenant_id,
        CASE WHEN v_old IS NULL THEN 'member.added' ELSE 'member.role_changed' END,
        'member', add_tenant_member.user_id,
        pg_catalog.jsonb_build_object('role', add_tenant_member.role, 'previous_role', v_old));
END
$$;

-- remove_tenant_member(tenant_id, user_id) -> boolean: false when not a member.
CREATE FUNCTION api_key_mgmt_impl.remove_tenant_member(tenant_id uuid, user_id text)
    RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old text;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(remove_tenant_member.tenant_id, 'owner');
    SELECT m.role INTO v_old FROM api_key_mgmt.tenant_members m
     WHERE m.tenant_id = remove_tenant_member.tenant_id AND m.user_id = remove_tenant_member.user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_old = 'owner' AND NOT EXISTS (SELECT FROM api_key_mgmt.tenant_members m
            WHERE m.tenant_id = remove_tenant_member.tenant_id AND m.role = 'owner'
              AND m.user_id <> remove_tenant_member.user_id) THEN
        RAISE EXCEPTION 'a tenant keeps at least one owner' USING ERRCODE = '55000';
    END IF;
    DELETE FROM api_key_mgmt.tenant_members m
     WHERE m.tenant_id = remove_tenant_member.tenant_id AND m.user_id = remove_tenant_member.user_id;
    PERFORM api_key_mgmt_internal.audit(remove_tenant_member.tenant_id, 'member.removed', 'member',
        remove_tenant_member.user_id, pg_catalog.jsonb_build_object('role', v_old));
    RETURN true;
END
$$;

-- Routes for the pre-request hook (platform administrators).

-- add_route_scope(method, path_pattern, scope) -> void: create or change a route;
-- scope NULL makes the route public (no key needed).
CREATE FUNCTION api_key_mgmt_impl.add_route_scope(method text, path_pattern text, scope text)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    IF add_route_scope.method IS NULL OR pg_catalog.upper(add_route_scope.method) !~ '^(\*|[A-Z]{3,7})$' THEN
        RAISE EXCEPTION 'method must be an HTTP method or *' USING ERRCODE = '22023';
    END IF;
    IF add_route_scope.path_pattern IS NULL OR pg_catalog.char_length(add_route_scope.path_pattern) > 300
       OR add_route_scope.path_pattern !~ '^[\x21-\x7e]+$' THEN
        RAISE EXCEPTION 'path_pattern must be 1 to 300 visible ASCII characters' USING ERRCODE = '22023';
    END IF;
    IF add_route_scope.scope IS NOT NULL AND NOT api_key_mgmt_internal.scopes_valid(ARRAY[add_route_scope.scope])
       OR add_route_scope.scope = '*' OR add_route_scope.scope ~ ':\*$' THEN
        RAISE EXCEPTION 'scope must be one area:action (or NULL for a public route)' USING ERRCODE = '22023';
    END IF;
    INSERT INTO api_key_mgmt.route_scopes AS r (method, path_pattern, scope)
    VALUES (pg_catalog.upper(add_route_scope.method), add_route_scope.path_pattern, add_route_scope.scope)
    ON CONFLICT ON CONSTRAINT route_scopes_route DO UPDATE SET scope = EXCLUDED.scope;
    PERFORM api_key_mgmt_internal.audit(NULL, 'route.set', 'route',
        pg_catalog.upper(add_route_scope.method) || ' ' || add_route_scope.path_pattern,
        pg_catalog.jsonb_build_object('scope', add_route_scope.scope));
END
$$;

-- remove_route_scope(method, path_pattern) -> boolean
CREATE FUNCTION api_key_mgmt_impl.remove_route_scope(method text, path_pattern text)
    RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    DELETE FROM api_key_mgmt.route_scopes r
     WHERE r.method = pg_catalog.upper(remove_route_scope.method) AND r.path_pattern = remove_route_scope.path_pattern;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM api_key_mgmt_internal.audit(NULL, 'route.removed', 'route',
        pg_catalog.upper(remove_route_scope.method) || ' ' || remove_route_scope.path_pattern);
    RETURN true;
END
$$;

-- deny(status, code, message, headers): raise in PostgREST's format, so the client gets
-- the HTTP status (and headers) given. Never carries the key.
CREATE FUNCTION api_key_mgmt_internal.deny(p_status integer, p_code text, p_message text, p_headers jsonb)
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE SQLSTATE 'PGRST' USING
        MESSAGE = pg_catalog.jsonb_build_object('code', p_code, 'message', p_message,
                                                'details', NULL, 'hint', NULL)::text,
        DETAIL = pg_catalog.jsonb_build_object('status', p_status, 'headers', p_headers)::text;
END
$$;

-- authenticate_request() -> void: PostgREST's db-pre-request. Reads the API key from
-- the configured header (or a non-JWT bearer token), finds the route's scope, validates,
-- and records the key's tenant and id for the rest of the transaction (see
-- current_tenant_id()). Refuses with 401 (missing or invalid key), 402 (a spending cap
-- or the credits are exhausted), 403 (scope, or no route with
-- api_key_mgmt.unmatched_routes = 'deny'), 429 (rate limited, with Retry-After).
CREATE FUNCTION api_key_mgmt_impl.authenticate_request() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_headers jsonb;
    v_key text;
    v_route record;
    v_scope text;
    v_result api_key_mgmt.key_validation;
BEGIN
    v_headers := COALESCE(api_key_mgmt_internal.json_object_or_null(
        pg_catalog.current_setting('request.headers', true)), '{}');
    SELECT * INTO v_route FROM api_key_mgmt_internal.route_scope(
        COALESCE(NULLIF(pg_catalog.current_setting('request.method', true), ''), 'GET'),
        COALESCE(NULLIF(pg_catalog.current_setting('request.path', true), ''), '/'));
    IF v_route.found AND v_route.scope IS NULL THEN
        RETURN;  -- a public route
    END IF;
    IF NOT v_route.found AND pg_catalog.current_setting('api_key_mgmt.unmatched_routes') <> 'any_key' THEN
        PERFORM api_key_mgmt_internal.deny(403, 'AKM403', 'no route allows this request', '{}');
    END IF;
    v_scope := v_route.scope;
    v_key := api_key_mgmt_internal.request_api_key(v_headers, pg_catalog.current_setting('api_key_mgmt.api_key_header'));
    IF v_key IS NULL THEN
        PERFORM api_key_mgmt_internal.deny(401, 'AKM401', 'an API key is required',
            pg_catalog.jsonb_build_object('WWW-Authenticate', 'ApiKey'));
    END IF;
    -- Consumes one rate-limit token (shared memory when preloaded; see README, Metering).
    v_result := api_key_mgmt.validate_api_key(v_key, v_scope, cost => 1);
    IF v_result.valid THEN
        PERFORM api_key_mgmt_internal.set_request_key(v_result.tenant_id, v_result.key_id);
        RETURN;
    END IF;
    IF v_result.code = 'rate_limited' THEN
        PERFORM api_key_mgmt_internal.deny(429, 'AKM429', 'too many requests for this API key',
            pg_catalog.jsonb_build_object('Retry-After',
                GREATEST(1, pg_catalog.ceil(EXTRACT(epoch FROM v_result.retry_after)))::bigint::text));
    END IF;
    IF v_result.code IN ('daily_cap_exceeded', 'monthly_cap_exceeded', 'credits_exhausted') THEN
        PERFORM api_key_mgmt_internal.deny(402, 'AKM402', 'the API key''s budget is spent (' || v_result.code || ')', '{}');
    END IF;
    IF v_result.code IN ('scope_denied', 'provider_denied', 'model_denied') THEN
        PERFORM api_key_mgmt_internal.deny(403, 'AKM403', 'the API key does not allow this request (' || v_result.code || ')', '{}');
    END IF;
    PERFORM api_key_mgmt_internal.deny(401, 'AKM401', 'the API key is not valid (' || v_result.code || ')',
        pg_catalog.jsonb_build_object('WWW-Authenticate', 'ApiKey'));
END
$$;

-- purge_audit_log(older_than interval) -> bigint: the retention function, the only way
-- entries leave the audit log (platform administrators; at least 1 day old).
CREATE FUNCTION api_key_mgmt_impl.purge_audit_log(older_than interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count bigint;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    IF purge_audit_log.older_than IS NULL THEN
        RAISE EXCEPTION 'older_than must not be NULL' USING ERRCODE = '22004';
    ELSIF purge_audit_log.older_than < '1 day'::interval THEN
        RAISE EXCEPTION 'older_than must be at least 1 day' USING ERRCODE = '22023';
    END IF;
    PERFORM api_key_mgmt_internal.set_audit_retention(true);
    DELETE FROM api_key_mgmt.audit_log a WHERE a.occurred_at < pg_catalog.now() - purge_audit_log.older_than;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    PERFORM api_key_mgmt_internal.set_audit_retention(false);
    PERFORM api_key_mgmt_internal.audit(NULL, 'audit.purged', NULL, NULL,
        pg_catalog.jsonb_build_object('older_than', purge_audit_log.older_than, 'deleted', v_count));
    RETURN v_count;
END
$$;

-- Failed validations, counted in shared memory (src/failures_pg.rs; needs
-- shared_preload_libraries, 55000 otherwise).

-- validation_failures() -> (key_id, tenant_id, failures, by_code, first_failed_at,
-- last_failed_at): refused validations of known keys since server start; platform
-- admins see all, tenant admins and owners their tenant.
CREATE FUNCTION api_key_mgmt.validation_failures()
    RETURNS TABLE (key_id uuid, tenant_id uuid, failures bigint, by_code jsonb,
                   first_failed_at timestamptz, last_failed_at timestamptz)
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'validation_failures_wrapper';
-- audit_queue_status() -> (mode, capacity, queued, written, synchronous, failed): the
-- shared-memory queue of secret-read audit entries (src/audit_pg.rs). mode 'queue':
-- the queue serves this database; 'synchronous': it does not (no preload,
-- audit_queue_size 0, another database than the maintenance worker's, or the worker
-- not running). synchronous counts queued-mode reads audited in their own
-- transaction instead; failed counts durable-mode reads refused (58000) because their
-- entry was not committed in time.
CREATE FUNCTION api_key_mgmt.audit_queue_status()
    RETURNS TABLE (mode text, capacity bigint, queued bigint, written bigint, synchronous bigint,
                   failed bigint)
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'audit_queue_status_wrapper';

-- validation_failure_totals() -> (code, failures): refusals of strings that are not
-- known keys, per code (and evicted_keys), since server start.
CREATE FUNCTION api_key_mgmt.validation_failure_totals() RETURNS TABLE (code text, failures bigint)
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'validation_failure_totals_wrapper';
-- reset_validation_failures() -> void
CREATE FUNCTION api_key_mgmt.reset_validation_failures() RETURNS void
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'reset_validation_failures_wrapper';

-- security_key_failures: the keys refused most, with their tenant and name.
CREATE VIEW api_key_mgmt.security_key_failures WITH (security_invoker = true) AS
SELECT f.key_id, f.tenant_id, k.name AS key_name, k.display_prefix, f.failures, f.by_code,
       f.first_failed_at, f.last_failed_at
  FROM api_key_mgmt.validation_failures() f
  LEFT JOIN api_key_mgmt.api_keys k ON k.id = f.key_id
 ORDER BY f.failures DESC;

-- RLS for every table, and their dump registration.
ALTER TABLE api_key_mgmt.tenant_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.tenant_members FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.route_scopes ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.route_scopes FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.audit_log FORCE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.tenant_members', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.route_scopes', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.audit_log', '');

CREATE POLICY tenant_members_admin ON api_key_mgmt.tenant_members FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY route_scopes_admin ON api_key_mgmt.route_scopes FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY audit_log_admin ON api_key_mgmt.audit_log FOR SELECT TO api_key_mgmt_admin USING (true);

-- Tenant users (api_key_mgmt_user, e.g. PostgREST's authenticated role) see only their
-- tenant's rows, by member role; writes always go through the functions. The context
-- functions run once per query (initplans), not once per row.
CREATE POLICY tenants_member ON api_key_mgmt.tenants FOR SELECT TO api_key_mgmt_user
    USING (id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);
CREATE POLICY api_keys_member ON api_key_mgmt.api_keys FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);
CREATE POLICY tenant_members_member ON api_key_mgmt.tenant_members FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);
CREATE POLICY tenant_secrets_member ON api_key_mgmt.tenant_secrets FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IN ('admin', 'owner'));
CREATE POLICY audit_log_member ON api_key_mgmt.audit_log FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IN ('admin', 'owner'));
CREATE POLICY providers_member ON api_key_mgmt.providers FOR SELECT TO api_key_mgmt_user USING (true);
-- Metering: members see their tenant's meters, limits, usage and reservations.
CREATE POLICY meters_member ON api_key_mgmt.meters FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);
CREATE POLICY rate_limits_member ON api_key_mgmt.rate_limits FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);
CREATE POLICY usage_events_member ON api_key_mgmt.usage_events FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);
CREATE POLICY reservations_member ON api_key_mgmt.reservations FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);

-- Supabase: its roles get the extension's when they exist.
DO $supabase$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT api_key_mgmt_user TO authenticated;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        GRANT api_key_mgmt_user TO anon;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT api_key_mgmt_service TO service_role;
    END IF;
END
$supabase$;
