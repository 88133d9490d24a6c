-- Grants. EXECUTE is revoked from PUBLIC on every function of the extension, and
-- every grant is explicit (listed in the README, "Security model").

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api_key_mgmt FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api_key_mgmt_internal FROM PUBLIC;
REVOKE ALL ON SCHEMA api_key_mgmt_internal FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA api_key_mgmt FROM PUBLIC;

GRANT USAGE ON SCHEMA api_key_mgmt TO api_key_mgmt_admin, api_key_mgmt_service;

-- Backend services: validate keys.
GRANT EXECUTE ON FUNCTION api_key_mgmt.validate_api_key(text, text, text, text)
    TO api_key_mgmt_service, api_key_mgmt_admin;

-- Platform administrators: tenants and the key lifecycle, and read access to the
-- tables and views (never to a key hash).
GRANT EXECUTE ON FUNCTION
    api_key_mgmt.create_tenant(text, text[], text, text, interval, jsonb),
    api_key_mgmt.update_tenant(uuid, jsonb),
    api_key_mgmt.disable_tenant(uuid),
    api_key_mgmt.enable_tenant(uuid),
    api_key_mgmt.issue_api_key(uuid, text, text[], timestamptz, text, text[], text[], jsonb, text),
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
