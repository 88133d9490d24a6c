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
