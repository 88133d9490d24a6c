-- Grants. EXECUTE is revoked from PUBLIC on every function of the extension, and
-- every grant is explicit (listed in the README, "Security model").

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api_key_mgmt FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api_key_mgmt_internal FROM PUBLIC;
REVOKE ALL ON SCHEMA api_key_mgmt_internal FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api_key_mgmt_impl FROM PUBLIC;
REVOKE ALL ON SCHEMA api_key_mgmt_impl FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA api_key_mgmt FROM PUBLIC;

GRANT USAGE ON SCHEMA api_key_mgmt TO api_key_mgmt_admin, api_key_mgmt_service;

-- Backend services: validate keys.
GRANT EXECUTE ON FUNCTION api_key_mgmt.validate_api_key(text, text, text, text, integer)
    TO api_key_mgmt_service, api_key_mgmt_admin;

-- Platform administrators: tenants and the key lifecycle, and read access to the
-- tables and views (never to a key hash).
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.create_tenant(text, text[], text, text, interval, jsonb),
    api_key_mgmt.update_tenant(uuid, jsonb),
    api_key_mgmt.disable_tenant(uuid),
    api_key_mgmt.enable_tenant(uuid),
    api_key_mgmt.issue_api_key(uuid, text, text[], timestamptz, text, text[], text[], jsonb, text, numeric, numeric, numeric),
    api_key_mgmt.import_api_key(uuid, text, text, text[], timestamptz, text, text[], text[], jsonb, text),
    api_key_mgmt.revoke_api_key(uuid, text),
    api_key_mgmt.rotate_api_key(uuid, interval),
    api_key_mgmt.update_api_key(uuid, jsonb)
    TO api_key_mgmt_admin;
GRANT SELECT ON api_key_mgmt.tenants, api_key_mgmt.api_key_status, api_key_mgmt.keys_due_for_rotation
    TO api_key_mgmt_admin;
GRANT SELECT (id, tenant_id, name, environment, display_prefix, scopes, allowed_providers,
              allowed_models, expires_at, revoked_at, revoke_reason, rotated_from, rotated_to,
              grace_until, imported, created_by, metadata, created_at, updated_at)
    ON api_key_mgmt.api_keys TO api_key_mgmt_admin;

-- Tenant secrets. Decryption (get_tenant_secret, resolve_provider_key) is for backend
-- services only; administrators store, list and rotate, but never read plaintext.
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.get_tenant_secret(uuid, text, text, text, text),
    api_key_mgmt.resolve_provider_key(uuid, text, text, text, text),
    api_key_mgmt.record_secret_usage(uuid, bigint, bigint),
    api_key_mgmt.mark_secret_validated(uuid, boolean, text)
    TO api_key_mgmt_service;
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.register_provider(text, text, text),
    api_key_mgmt.put_tenant_secret(uuid, text, text, text, text[], text, text),
    api_key_mgmt.list_tenant_secrets(uuid),
    api_key_mgmt.delete_tenant_secret(uuid, text, text, text),
    api_key_mgmt.mark_secret_validated(uuid, boolean, text),
    api_key_mgmt.rotate_master_key(),
    api_key_mgmt.rewrap_secrets(integer),
    api_key_mgmt.retire_master_key_version(integer)
    TO api_key_mgmt_admin;
GRANT SELECT ON api_key_mgmt.providers TO api_key_mgmt_admin, api_key_mgmt_service;
GRANT SELECT ON api_key_mgmt.master_key_versions, api_key_mgmt.secret_key_versions
    TO api_key_mgmt_admin;
-- Every column but the ciphertext and nonce.
GRANT SELECT (id, tenant_id, provider, model, name, scopes, environment, key_version,
              secret_version, preview, validation_status, validation_message, validated_at,
              request_count, token_count, last_used_at, created_at, updated_at, rotated_at)
    ON api_key_mgmt.tenant_secrets TO api_key_mgmt_admin;
GRANT SELECT ON api_key_mgmt.tenant_secret_list TO api_key_mgmt_admin;

-- Tenancy: the context functions for everyone the extension serves; tenant users
-- (api_key_mgmt_user) manage their own tenant through the functions, which check
-- their member role, and read their tenant's rows under RLS.
GRANT USAGE ON SCHEMA api_key_mgmt TO api_key_mgmt_user;
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.current_tenant_id(),
    api_key_mgmt.current_tenant_role(),
    api_key_mgmt.current_user_id(),
    api_key_mgmt.current_key_id(),
    api_key_mgmt.authenticate_request()
    TO api_key_mgmt_user, api_key_mgmt_service, api_key_mgmt_admin;
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.add_tenant_member(uuid, text, text),
    api_key_mgmt.remove_tenant_member(uuid, text),
    api_key_mgmt.add_route_scope(text, text, text),
    api_key_mgmt.remove_route_scope(text, text),
    api_key_mgmt.purge_audit_log(interval)
    TO api_key_mgmt_admin;
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.add_tenant_member(uuid, text, text),
    api_key_mgmt.remove_tenant_member(uuid, text),
    api_key_mgmt.issue_api_key(uuid, text, text[], timestamptz, text, text[], text[], jsonb, text, numeric, numeric, numeric),
    api_key_mgmt.import_api_key(uuid, text, text, text[], timestamptz, text, text[], text[], jsonb, text),
    api_key_mgmt.revoke_api_key(uuid, text),
    api_key_mgmt.rotate_api_key(uuid, interval),
    api_key_mgmt.update_api_key(uuid, jsonb),
    api_key_mgmt.put_tenant_secret(uuid, text, text, text, text[], text, text),
    api_key_mgmt.list_tenant_secrets(uuid),
    api_key_mgmt.delete_tenant_secret(uuid, text, text, text),
    api_key_mgmt.mark_secret_validated(uuid, boolean, text)
    TO api_key_mgmt_user;
GRANT SELECT ON api_key_mgmt.tenant_members, api_key_mgmt.route_scopes, api_key_mgmt.audit_log
    TO api_key_mgmt_admin;
GRANT SELECT ON api_key_mgmt.tenants, api_key_mgmt.tenant_members, api_key_mgmt.audit_log,
    api_key_mgmt.providers, api_key_mgmt.api_key_status, api_key_mgmt.keys_due_for_rotation,
    api_key_mgmt.tenant_secret_list
    TO api_key_mgmt_user;
GRANT SELECT (id, tenant_id, name, environment, display_prefix, scopes, allowed_providers,
              allowed_models, expires_at, revoked_at, revoke_reason, rotated_from, rotated_to,
              grace_until, imported, created_by, metadata, created_at, updated_at)
    ON api_key_mgmt.api_keys TO api_key_mgmt_user;
GRANT SELECT (id, tenant_id, provider, model, name, scopes, environment, key_version,
              secret_version, preview, validation_status, validation_message, validated_at,
              request_count, token_count, last_used_at, created_at, updated_at, rotated_at)
    ON api_key_mgmt.tenant_secrets TO api_key_mgmt_user;

-- ---------------------------------------------------------------------------------
-- Metering (sql/007_metering.sql, issue 4).
-- Backend services charge, reserve, settle and consume rate-limit tokens;
-- administrators set caps, credits and limits, run maintenance and read the usage.
-- ---------------------------------------------------------------------------------
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.charge_api_key(uuid, text, numeric, bigint, text, text, text, jsonb, text, integer),
    api_key_mgmt.validate_and_charge(text, text, numeric, bigint, text, text, text, jsonb, text, integer),
    api_key_mgmt.reserve_budget(uuid, text, numeric, interval),
    api_key_mgmt.settle_reservation(uuid, numeric, bigint, text, text, jsonb, text),
    api_key_mgmt.release_reservation(uuid),
    api_key_mgmt.consume_rate_limit(uuid, integer),
    api_key_mgmt.rate_limit_mode()
    TO api_key_mgmt_service;
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.set_key_caps(uuid, numeric, numeric, numeric, numeric, text),
    api_key_mgmt.set_tenant_caps(uuid, numeric, numeric, numeric, numeric, text, text),
    api_key_mgmt.set_rate_limit(uuid, text, integer, interval, integer),
    api_key_mgmt.set_tenant_rate_limit(uuid, text, integer, interval, integer),
    api_key_mgmt.remove_rate_limit(uuid, text),
    api_key_mgmt.remove_tenant_rate_limit(uuid, text),
    api_key_mgmt.expire_reservations(integer),
    api_key_mgmt.create_usage_partitions(integer),
    api_key_mgmt.purge_idempotency_keys(interval),
    api_key_mgmt.run_metering_maintenance(),
    api_key_mgmt.rate_limit_mode()
    TO api_key_mgmt_admin;
GRANT SELECT ON api_key_mgmt.meters, api_key_mgmt.rate_limits, api_key_mgmt.usage_events,
    api_key_mgmt.reservations, api_key_mgmt.usage_daily, api_key_mgmt.usage_monthly,
    api_key_mgmt.usage_by_key_source, api_key_mgmt.meter_status
    TO api_key_mgmt_admin;

-- Tenant users: caps and limits of their tenant (the functions require the tenant
-- role admin), and their tenant's usage under RLS.
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.set_key_caps(uuid, numeric, numeric, numeric, numeric, text),
    api_key_mgmt.set_tenant_caps(uuid, numeric, numeric, numeric, numeric, text, text),
    api_key_mgmt.set_rate_limit(uuid, text, integer, interval, integer),
    api_key_mgmt.set_tenant_rate_limit(uuid, text, integer, interval, integer),
    api_key_mgmt.remove_rate_limit(uuid, text),
    api_key_mgmt.remove_tenant_rate_limit(uuid, text)
    TO api_key_mgmt_user;
GRANT SELECT ON api_key_mgmt.meters, api_key_mgmt.rate_limits, api_key_mgmt.usage_events,
    api_key_mgmt.reservations, api_key_mgmt.usage_daily, api_key_mgmt.usage_monthly,
    api_key_mgmt.usage_by_key_source
    TO api_key_mgmt_user;

-- Failed-validation counters (admins of the platform, or of their tenant).
GRANT EXECUTE ON FUNCTION api_key_mgmt.validation_failures() TO api_key_mgmt_admin, api_key_mgmt_user;
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.validation_failure_totals(),
    api_key_mgmt.audit_queue_status(),
    api_key_mgmt.reset_validation_failures()
    TO api_key_mgmt_admin;
GRANT SELECT ON api_key_mgmt.security_key_failures TO api_key_mgmt_admin, api_key_mgmt_user;

-- ---------------------------------------------------------------------------------
-- Agent access (sql/010_agents.sql, issue 6).
-- The backend service (the agent runtime) requests access, issues proxy tokens,
-- ends sessions and is the only role that resolves proxy tokens; it cannot approve.
-- Tenant admins register tools and decide requests (checked by the functions);
-- platform administrators run the maintenance and read everything but token hashes.
-- ---------------------------------------------------------------------------------
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.resolve_proxy_token(text, text),
    api_key_mgmt.request_secret_access(uuid, text, text[], text, text, interval, jsonb),
    api_key_mgmt.issue_proxy_token(uuid, text, integer),
    api_key_mgmt.revoke_session(uuid, text)
    TO api_key_mgmt_service;
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.create_project(uuid, text, text),
    api_key_mgmt.set_secret_labels(uuid, text, text[]),
    api_key_mgmt.register_agent_tool(uuid, text, text, text[], text[], text, interval, integer, text),
    api_key_mgmt.update_agent_tool(uuid, text, jsonb),
    api_key_mgmt.disable_agent_tool(uuid, text),
    api_key_mgmt.request_secret_access(uuid, text, text[], text, text, interval, jsonb),
    api_key_mgmt.approve_access_request(uuid, text),
    api_key_mgmt.deny_access_request(uuid, text),
    api_key_mgmt.issue_proxy_token(uuid, text, integer),
    api_key_mgmt.revoke_session(uuid, text)
    TO api_key_mgmt_admin, api_key_mgmt_user;
GRANT EXECUTE ON FUNCTION api_key_mgmt.run_agent_maintenance() TO api_key_mgmt_admin;
GRANT SELECT ON api_key_mgmt.projects, api_key_mgmt.agent_tools, api_key_mgmt.access_requests,
    api_key_mgmt.agent_sessions, api_key_mgmt.security_events
    TO api_key_mgmt_admin, api_key_mgmt_user;
-- Proxy tokens: every column but the hash.
GRANT SELECT (id, tenant_id, session_id, secret_id, secret_name, environment, display_prefix,
              max_uses, uses, created_at, last_used_at, revoked_at)
    ON api_key_mgmt.proxy_tokens TO api_key_mgmt_admin, api_key_mgmt_user;
GRANT SELECT (project_id, tags) ON api_key_mgmt.tenant_secrets TO api_key_mgmt_admin, api_key_mgmt_user;

-- ---------------------------------------------------------------------------------
-- Monitoring (sql/011_monitoring.sql, issue 17): the metrics view and the health check
-- for the monitoring role, PostgreSQL's pg_monitor and platform administrators. They
-- show counts only.
-- ---------------------------------------------------------------------------------
GRANT USAGE ON SCHEMA api_key_mgmt TO api_key_mgmt_monitor, pg_monitor;
GRANT SELECT ON api_key_mgmt.metrics TO api_key_mgmt_monitor, pg_monitor, api_key_mgmt_admin;
GRANT EXECUTE ON FUNCTION api_key_mgmt.metric_counters(), api_key_mgmt.health()
    TO api_key_mgmt_monitor, pg_monitor, api_key_mgmt_admin;
