-- Internal helpers implemented in Rust (src/keys_pg.rs). EXECUTE is revoked from
-- PUBLIC in 099_grants.sql; only the extension's own SECURITY DEFINER functions and
-- constraints call them.

-- scopes_valid(text[]) -> boolean: every element is area:action, area:* or *.
CREATE FUNCTION api_key_mgmt_internal.scopes_valid(scopes text[]) RETURNS boolean
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'scopes_valid_wrapper';

-- providers_valid(text[]) -> boolean: every element is a provider id.
CREATE FUNCTION api_key_mgmt_internal.providers_valid(providers text[]) RETURNS boolean
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'providers_valid_wrapper';

-- models_valid(text[]) -> boolean: every element is a model name or prefix pattern.
CREATE FUNCTION api_key_mgmt_internal.models_valid(models text[]) RETURNS boolean
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'models_valid_wrapper';

-- first_uncovered(allowed text[], wanted text[]) -> text: first wanted scope not covered.
CREATE FUNCTION api_key_mgmt_internal.first_uncovered(allowed text[], wanted text[]) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'first_uncovered_wrapper';

-- new_key(type_prefix text, environment text) -> (api_key, key_hash, display_prefix).
CREATE FUNCTION api_key_mgmt_internal.new_key(type_prefix text, environment text)
    RETURNS TABLE (api_key text, key_hash bytea, display_prefix text)
    VOLATILE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'new_key_wrapper';

-- key_shape(api_key text) -> text: native | bad_checksum | imported | malformed.
CREATE FUNCTION api_key_mgmt_internal.key_shape(api_key text) RETURNS text
    STABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'key_shape_wrapper';

-- key_environment(api_key text) -> text: live | test for a native key, else NULL.
CREATE FUNCTION api_key_mgmt_internal.key_environment(api_key text) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'key_environment_wrapper';

-- hash_key(api_key text) -> bytea: SHA-256 of the key text.
CREATE FUNCTION api_key_mgmt_internal.hash_key(api_key text) RETURNS bytea
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'hash_key_wrapper';

-- display_prefix(api_key text) -> text: the non-secret display form.
CREATE FUNCTION api_key_mgmt_internal.display_prefix(api_key text) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'display_prefix_wrapper';

-- touch_updated_at() trigger: keeps updated_at current on every UPDATE.
CREATE FUNCTION api_key_mgmt_internal.touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;

-- uuid_v7() -> uuid: a time-ordered id (src/audit_pg.rs), the default of audit_log.id.
CREATE FUNCTION api_key_mgmt_internal.uuid_v7() RETURNS uuid
    VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'uuid_v7_wrapper';
