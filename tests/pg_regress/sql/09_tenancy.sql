-- Tenant isolation: membership and roles, the tenant context, RLS, function-level
-- authorization, the PostgREST pre-request hook, and the audit log.
SELECT id AS a FROM api_key_mgmt.tenants WHERE external_id = 'acme' \gset
SELECT id AS b FROM api_key_mgmt.tenants WHERE external_id = 'vito' \gset
CREATE ROLE regress_app;                 -- what PostgREST's authenticated role would be
GRANT api_key_mgmt_user TO regress_app;
GRANT USAGE ON SCHEMA regress TO regress_app;
-- as(sub): act as that user of the JWT, with the tenant claim given.
CREATE FUNCTION regress.claims(sub text, tenant uuid) RETURNS void LANGUAGE sql AS $$
    SELECT set_config('request.jwt.claims', json_build_object('sub', sub, 'tenant_id', tenant)::text, false);
$$;
GRANT EXECUTE ON FUNCTION regress.claims(text, uuid) TO PUBLIC;

-- Members (a superuser is a platform administrator).
SELECT api_key_mgmt.add_tenant_member(:'a', 'alice', 'owner');
SELECT api_key_mgmt.add_tenant_member(:'a', 'bob', 'admin');
SELECT api_key_mgmt.add_tenant_member(:'a', 'carol', 'member');
SELECT api_key_mgmt.add_tenant_member(:'a', 'dave', 'viewer');
SELECT api_key_mgmt.add_tenant_member(:'b', 'erin', 'owner');
SELECT regress.try(format('SELECT api_key_mgmt.add_tenant_member(%L, %L, %L)', :'a', 'zed', 'boss'));
SELECT regress.try(format('SELECT api_key_mgmt.remove_tenant_member(%L, %L)', :'b', 'erin'));
SELECT tenant_id = :'a' AS in_a, user_id, role FROM api_key_mgmt.tenant_members ORDER BY user_id;

-- The tenant context: a claim counts only for a member of that tenant.
SET ROLE regress_app;
SELECT regress.claims('alice', :'a');
SELECT api_key_mgmt.current_tenant_id() = :'a' AS alice_in_a, api_key_mgmt.current_tenant_role() AS role,
       api_key_mgmt.current_user_id() AS user_id;
SELECT regress.claims('alice', :'b');
SELECT api_key_mgmt.current_tenant_id() IS NULL AS forged_claim_gives_nothing, api_key_mgmt.current_tenant_role() AS role;
-- Supabase's app_metadata.tenant_id works too.
SELECT set_config('request.jwt.claims', json_build_object('sub', 'erin', 'app_metadata', json_build_object('tenant_id', :'b'))::text, false) IS NOT NULL AS set;
SELECT api_key_mgmt.current_tenant_id() = :'b' AS erin_in_b;
-- The setting, for app servers: only for members (or the service role).
SELECT set_config('request.jwt.claims', '', false) IS NOT NULL AS cleared;
SELECT set_config('api_key_mgmt.user_id', 'carol', false), set_config('api_key_mgmt.tenant_id', :'b', false) IS NOT NULL AS set;
SELECT api_key_mgmt.current_tenant_id() IS NULL AS not_a_member_of_b;
SELECT set_config('api_key_mgmt.tenant_id', :'a', false) IS NOT NULL AS set;
SELECT api_key_mgmt.current_tenant_id() = :'a' AS carol_in_a, api_key_mgmt.current_tenant_role() AS role;
RESET ROLE;
SET ROLE api_key_mgmt_service;
SELECT set_config('api_key_mgmt.tenant_id', :'b', false) IS NOT NULL AS set;
SELECT api_key_mgmt.current_tenant_id() = :'b' AS service_in_b, api_key_mgmt.current_tenant_role() AS role;
RESET ROLE;
RESET api_key_mgmt.tenant_id;
RESET api_key_mgmt.user_id;

-- Keys of both tenants, issued by the platform administrator.
SELECT key_id AS a_key, api_key AS a_secret_key FROM api_key_mgmt.issue_api_key(:'a', 'a-admin-key', '{agents:*}') \gset
SELECT key_id AS b_key, api_key AS b_secret_key FROM api_key_mgmt.issue_api_key(:'b', 'b-key', '{agents:*}') \gset

-- Row-level security: a member sees its tenant's rows only; secrets and audit need admin.
SELECT regress.use_keys('v2');
SET ROLE regress_app;
SELECT regress.claims('carol', :'a');
SELECT count(*) = (SELECT count(*) FROM api_key_mgmt.api_keys WHERE tenant_id = :'a') AS only_a_keys,
       bool_and(tenant_id = :'a') AS all_a FROM api_key_mgmt.api_keys;
SELECT count(*) AS tenants_visible FROM api_key_mgmt.tenants;
SELECT count(*) AS members_visible FROM api_key_mgmt.tenant_members;
SELECT count(*) AS secrets_visible_to_member FROM api_key_mgmt.tenant_secrets;
SELECT count(*) AS audit_visible_to_member FROM api_key_mgmt.audit_log;
SELECT regress.try('SELECT key_hash FROM api_key_mgmt.api_keys');
SELECT regress.try('SELECT ciphertext FROM api_key_mgmt.tenant_secrets');
SELECT regress.try('UPDATE api_key_mgmt.api_keys SET name = name');
SELECT regress.try('DELETE FROM api_key_mgmt.tenant_members');
SELECT regress.claims('bob', :'a');
SELECT count(*) > 0 AS admin_sees_a_secrets, bool_and(tenant_id = :'a') AS only_a FROM api_key_mgmt.tenant_secrets;
SELECT count(*) > 0 AS admin_sees_a_audit, bool_and(tenant_id = :'a') AS only_a FROM api_key_mgmt.audit_log;
SELECT regress.claims('erin', :'b');
SELECT count(*) AS erin_sees_a_keys FROM api_key_mgmt.api_keys WHERE tenant_id = :'a';
SELECT regress.claims('mallory', :'a');
SELECT count(*) AS stranger_sees FROM api_key_mgmt.api_keys;

-- Functions check the member role: members issue and revoke their own keys, admins
-- manage all keys and secrets, owners manage members.
SELECT regress.claims('carol', :'a');
SELECT key_id AS carol_key FROM api_key_mgmt.issue_api_key(:'a', 'carol key', '{agents:voice}') \gset
SELECT created_by FROM api_key_mgmt.api_keys WHERE id = :'carol_key';
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L)', :'b', 'x', '{agents:x}'));
SELECT regress.try(format('SELECT api_key_mgmt.revoke_api_key(%L)', :'a_key'));
SELECT regress.try(format('SELECT api_key_mgmt.revoke_api_key(%L)', :'b_key'));
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L)', :'a', 'elevenlabs', 'el-carol-0000'));
SELECT regress.try(format('SELECT api_key_mgmt.add_tenant_member(%L, %L, %L)', :'a', 'frank', 'member'));
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'a', 'openai', 'agents:x'));
SELECT regress.try(format('SELECT api_key_mgmt.create_tenant(%L)', 'mine'));
SELECT regress.try(format('SELECT api_key_mgmt.update_tenant(%L, %L)', :'a', '{"allowed_scopes": ["*"]}'));
SELECT api_key_mgmt.revoke_api_key(:'carol_key', 'done') AS own_key_revoked;
SELECT regress.claims('dave', :'a');
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L)', :'a', 'x', '{agents:x}'));
SELECT count(*) > 0 AS viewer_reads_keys FROM api_key_mgmt.api_key_status;
SELECT regress.claims('bob', :'a');
SELECT api_key_mgmt.rotate_api_key(:'a_key', '1 hour') IS NOT NULL AS admin_rotates_any_key;
SELECT api_key_mgmt.put_tenant_secret(:'a', 'cartesia', 'car-bob-0000') IS NOT NULL AS admin_puts_secret;
SELECT count(*) AS bob_lists FROM api_key_mgmt.list_tenant_secrets(:'a') WHERE provider = 'cartesia';
SELECT regress.try(format('SELECT api_key_mgmt.list_tenant_secrets(%L)', :'b'));
SELECT regress.try('SELECT api_key_mgmt.list_tenant_secrets(NULL)');
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(NULL, %L, %L)', 'cartesia', 'car-platform-0000'));
SELECT regress.try(format('SELECT api_key_mgmt.add_tenant_member(%L, %L, %L)', :'a', 'frank', 'member'));
SELECT regress.try('SELECT api_key_mgmt.rotate_master_key()');
SELECT regress.claims('alice', :'a');
SELECT api_key_mgmt.add_tenant_member(:'a', 'frank', 'member');
SELECT regress.try(format('SELECT api_key_mgmt.remove_tenant_member(%L, %L)', :'a', 'alice'));
SELECT api_key_mgmt.remove_tenant_member(:'a', 'frank') AS removed;
RESET ROLE;
SELECT set_config('request.jwt.claims', '', false) IS NOT NULL AS cleared;

-- PostgREST's pre-request hook, replayed as PostgREST runs it: routes, then requests.
SELECT api_key_mgmt.add_route_scope('POST', '/rpc/orchestrate', 'agents:orchestration');
SELECT api_key_mgmt.add_route_scope('*', '/documents*', 'document:ocr');
SELECT api_key_mgmt.add_route_scope('GET', '/health', NULL);
SELECT method, path_pattern, scope FROM api_key_mgmt.route_scopes ORDER BY path_pattern;
SELECT regress.try($$SELECT api_key_mgmt.add_route_scope('FETCH!', '/x', 'a:b')$$);
SELECT regress.try($$SELECT api_key_mgmt.add_route_scope('GET', '/x', 'agents:*')$$);
SELECT key_id AS r_key, api_key AS r_api_key FROM api_key_mgmt.issue_api_key(:'a', 'rest', '{agents:orchestration}') \gset
CREATE TABLE regress.documents (tenant_id uuid NOT NULL, title text NOT NULL);
INSERT INTO regress.documents VALUES (:'a', 'a-1'), (:'a', 'a-2'), (:'b', 'b-1');
ALTER TABLE regress.documents ENABLE ROW LEVEL SECURITY;
CREATE POLICY documents_tenant ON regress.documents USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id()));
GRANT SELECT ON regress.documents TO regress_app;
-- request(method, path, headers): what PostgREST sets before calling the hook.
CREATE FUNCTION regress.request(method text, path text, headers jsonb) RETURNS void LANGUAGE sql AS $$
    SELECT set_config('request.method', method, true), set_config('request.path', path, true),
           set_config('request.headers', headers::text, true);
$$;
GRANT EXECUTE ON FUNCTION regress.request(text, text, jsonb) TO PUBLIC;

BEGIN;
SET LOCAL ROLE regress_app;
SELECT regress.request('POST', '/rpc/orchestrate',
    json_build_object('x-api-key', :'r_api_key', 'user-agent', 'regress/1.0', 'x-forwarded-for', '203.0.113.7, 10.0.0.1')::jsonb);
SELECT api_key_mgmt.authenticate_request();
SELECT api_key_mgmt.current_tenant_id() = :'a' AS tenant_from_key, api_key_mgmt.current_key_id() = :'r_key' AS key_recorded,
       api_key_mgmt.current_tenant_role() IS NULL AS no_member_role;
SELECT title FROM regress.documents ORDER BY title;
COMMIT;
-- The next transaction starts without it.
SET ROLE regress_app;
SELECT api_key_mgmt.current_key_id() IS NULL AS forgotten, count(*) AS documents FROM regress.documents;
RESET ROLE;
BEGIN;
SET LOCAL ROLE regress_app;
SELECT regress.request('POST', '/rpc/orchestrate', json_build_object('authorization', 'Bearer ' || :'r_api_key')::jsonb);
SELECT regress.try('SELECT api_key_mgmt.authenticate_request()') AS bearer;
SELECT regress.request('GET', '/documents/7', json_build_object('x-api-key', :'r_api_key')::jsonb);
SELECT regress.try('SELECT api_key_mgmt.authenticate_request()') AS wrong_scope;
SELECT regress.request('POST', '/rpc/orchestrate', '{}');
SELECT regress.try('SELECT api_key_mgmt.authenticate_request()') AS missing;
SELECT regress.request('POST', '/rpc/orchestrate', '{"x-api-key": "sk_live_not-a-key"}');
SELECT regress.try('SELECT api_key_mgmt.authenticate_request()') AS malformed;
SELECT regress.request('GET', '/elsewhere', json_build_object('x-api-key', :'r_api_key')::jsonb);
SELECT regress.try('SELECT api_key_mgmt.authenticate_request()') AS no_route;
SELECT regress.request('GET', '/health', '{}');
SELECT regress.try('SELECT api_key_mgmt.authenticate_request()') AS public_route;
COMMIT;
SELECT api_key_mgmt.revoke_api_key(:'r_key');
BEGIN;
SET LOCAL ROLE regress_app;
SELECT regress.request('POST', '/rpc/orchestrate', json_build_object('x-api-key', :'r_api_key')::jsonb);
SELECT regress.try('SELECT api_key_mgmt.authenticate_request()') AS revoked;
COMMIT;
-- With any_key, a request no route matches needs only a valid key.
SELECT key_id AS r2_key, api_key AS r2_api_key FROM api_key_mgmt.issue_api_key(:'a', 'rest2', '{agents:orchestration}') \gset
SET api_key_mgmt.unmatched_routes = 'any_key';
BEGIN;
SET LOCAL ROLE regress_app;
SELECT regress.request('GET', '/elsewhere', json_build_object('x-api-key', :'r2_api_key')::jsonb);
SELECT regress.try('SELECT api_key_mgmt.authenticate_request()') AS any_key;
COMMIT;
RESET api_key_mgmt.unmatched_routes;
-- A rate-limited key: 429 with Retry-After (two requests an hour, at a fixed clock).
SELECT api_key_mgmt.set_rate_limit(:'r2_key', 'hourly', 2, '1 hour', 2) IS NOT NULL AS limited;
SET api_key_mgmt.clock_override = '2026-11-22 12:00:00+00';
BEGIN;
SET LOCAL ROLE regress_app;
SELECT regress.request('POST', '/rpc/orchestrate', json_build_object('x-api-key', :'r2_api_key')::jsonb);
SELECT regress.try('SELECT api_key_mgmt.authenticate_request()') AS first,
       regress.try('SELECT api_key_mgmt.authenticate_request()') AS second,
       regress.try('SELECT api_key_mgmt.authenticate_request()') AS third;
COMMIT;
RESET api_key_mgmt.clock_override;
SELECT api_key_mgmt.remove_rate_limit(:'r2_key', 'hourly') AS unlimited;

-- The audit log: who did what, from where; never a key or a secret.
BEGIN;
SET LOCAL ROLE regress_app;
SELECT regress.claims('alice', :'a');
SELECT regress.request('POST', '/rpc/issue_api_key',
    '{"user-agent": "dashboard/2.1", "x-forwarded-for": "198.51.100.23, 10.0.0.1"}');
SELECT key_id AS web_key FROM api_key_mgmt.issue_api_key(:'a', 'from the dashboard', '{agents:voice}') \gset
COMMIT;
SELECT regress.claims(NULL, NULL);
SELECT action, actor, actor_role, client_ip, user_agent FROM api_key_mgmt.audit_log WHERE target_id = :'web_key';
SELECT action, actor, actor_role, target_type, tenant_id = :'a' AS tenant_a
  FROM api_key_mgmt.audit_log WHERE actor IN ('carol', 'bob', 'alice') ORDER BY occurred_at, action;
SELECT action, details ->> 'reason' AS reason FROM api_key_mgmt.audit_log
 WHERE target_id = :'carol_key' ORDER BY occurred_at;
SELECT count(*) AS entries_with_a_key FROM api_key_mgmt.audit_log a
 WHERE a::text ~ '[a-z]{2,10}_(live|test)_[0-9A-Za-z]{49}' OR a::text LIKE '%car-bob-0000%';
SELECT DISTINCT action FROM api_key_mgmt.audit_log ORDER BY action;
-- Append-only, even for a superuser; only the retention function removes entries.
SELECT regress.try('UPDATE api_key_mgmt.audit_log SET actor = actor');
SELECT regress.try('DELETE FROM api_key_mgmt.audit_log');
SELECT regress.try('TRUNCATE api_key_mgmt.audit_log');
-- Not even with triggers off for replication.
SET session_replication_role = replica;
SELECT regress.try('DELETE FROM api_key_mgmt.audit_log');
RESET session_replication_role;
SELECT regress.try($$SELECT api_key_mgmt.purge_audit_log('1 hour')$$);
SELECT regress.try($$SELECT api_key_mgmt.purge_audit_log(NULL)$$);
SELECT api_key_mgmt.purge_audit_log('1 day') AS purged;
SELECT action, details FROM api_key_mgmt.audit_log WHERE action = 'audit.purged';
SET ROLE regress_app;
SELECT regress.try($$SELECT api_key_mgmt.purge_audit_log('1 day')$$);
SELECT regress.try('SELECT api_key_mgmt_internal.set_audit_retention(true)');
SELECT regress.try(format('SELECT api_key_mgmt_internal.set_request_key(%L, %L)', :'b', :'b_key'));
RESET ROLE;

-- Failed validations are counted in shared memory per key (and per code for strings
-- that are not keys): never a row per attempt, and validation stays read-only.
SELECT api_key_mgmt.reset_validation_failures();
SELECT (api_key_mgmt.validate_api_key(:'r_api_key')).code AS revoked_once,
       (api_key_mgmt.validate_api_key(:'r_api_key')).code AS revoked_twice,
       (api_key_mgmt.validate_api_key(:'r2_api_key', 'voice:cloning')).code AS denied,
       (api_key_mgmt.validate_api_key('nonsense')).code AS nonsense,
       (api_key_mgmt.validate_api_key(:'r2_api_key')).code AS fine;
SELECT key_id = :'r_key' AS revoked_key, failures, by_code FROM api_key_mgmt.validation_failures()
 ORDER BY failures DESC;
SELECT code, failures FROM api_key_mgmt.validation_failure_totals() ORDER BY code;
SELECT key_name, failures FROM api_key_mgmt.security_key_failures;
SET ROLE regress_app;
SELECT regress.claims('bob', :'a');
SELECT count(*) AS bob_sees_a_failures FROM api_key_mgmt.validation_failures();
SELECT regress.claims('erin', :'b');
SELECT count(*) AS erin_sees_none_of_a FROM api_key_mgmt.validation_failures();
SELECT regress.claims('carol', :'a');
SELECT regress.try('SELECT * FROM api_key_mgmt.validation_failures()');
SELECT regress.try('SELECT * FROM api_key_mgmt.validation_failure_totals()');
RESET ROLE;
