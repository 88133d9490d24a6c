-- Tables. Every table: RLS enabled and forced, registered with
-- pg_extension_config_dump so pg_dump carries its rows.

CREATE TABLE api_key_mgmt.tenants (
    id              uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    name            text NOT NULL CHECK (pg_catalog.char_length(name) BETWEEN 1 AND 200),
    -- The application's own id for the tenant.
    external_id     text UNIQUE CHECK (pg_catalog.char_length(external_id) BETWEEN 1 AND 200),
    -- The tenant's plan: a key can never hold or use a scope outside it.
    allowed_scopes  text[] NOT NULL DEFAULT '{*}'
                    CHECK (pg_catalog.cardinality(allowed_scopes) <= 256
                           AND api_key_mgmt_internal.scopes_valid(allowed_scopes)),
    -- Type prefix of the tenant's keys: <type>_<env>_<body><checksum>.
    key_type_prefix text NOT NULL DEFAULT 'sk' CHECK (key_type_prefix ~ '^[a-z][a-z0-9]{1,9}$'),
    -- Keys older than this are listed in keys_due_for_rotation (NULL: no maximum).
    max_key_age     interval DEFAULT '90 days' CHECK (max_key_age > '0'::interval),
    -- Set: every key of the tenant answers tenant_disabled.
    disabled_at     timestamptz,
    -- Has a row in meters (caps, credits or rate limits): validation then checks it.
    metered         boolean NOT NULL DEFAULT false,
    settings        jsonb NOT NULL DEFAULT '{}' CHECK (pg_catalog.jsonb_typeof(settings) = 'object'),
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE api_key_mgmt.tenants IS 'api_key_mgmt: tenants and their plans';

CREATE TABLE api_key_mgmt.api_keys (
    id                uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    tenant_id         uuid NOT NULL REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    name              text NOT NULL CHECK (pg_catalog.char_length(name) BETWEEN 1 AND 200),
    environment       text NOT NULL DEFAULT 'live' CHECK (environment IN ('live', 'test')),
    -- Non-secret: the type, environment, 4 characters of the body and the last 4.
    display_prefix    text NOT NULL CHECK (pg_catalog.char_length(display_prefix) BETWEEN 8 AND 40),
    -- SHA-256 of the whole key; the key itself is never stored.
    key_hash          bytea NOT NULL CHECK (pg_catalog.octet_length(key_hash) = 32),
    scopes            text[] NOT NULL
                      CHECK (pg_catalog.cardinality(scopes) BETWEEN 1 AND 64
                             AND api_key_mgmt_internal.scopes_valid(scopes)),
    -- NULL: any provider / model.
    allowed_providers text[] CHECK (pg_catalog.cardinality(allowed_providers) BETWEEN 1 AND 64
                                    AND api_key_mgmt_internal.providers_valid(allowed_providers)),
    allowed_models    text[] CHECK (pg_catalog.cardinality(allowed_models) BETWEEN 1 AND 256
                                    AND api_key_mgmt_internal.models_valid(allowed_models)),
    expires_at        timestamptz,
    revoked_at        timestamptz,
    revoke_reason     text CHECK (pg_catalog.char_length(revoke_reason) <= 500),
    -- Rotation: the replacement, and the moment this key stops validating.
    rotated_from      uuid REFERENCES api_key_mgmt.api_keys (id) ON DELETE SET NULL,
    rotated_to        uuid REFERENCES api_key_mgmt.api_keys (id) ON DELETE SET NULL,
    grace_until       timestamptz,
    imported          boolean NOT NULL DEFAULT false,
    -- Has a row in meters (caps, credits or rate limits): validation then checks it.
    metered           boolean NOT NULL DEFAULT false,
    created_by        text CHECK (pg_catalog.char_length(created_by) <= 200),
    metadata          jsonb NOT NULL DEFAULT '{}' CHECK (pg_catalog.jsonb_typeof(metadata) = 'object'),
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT api_keys_reason_needs_revoke CHECK (revoke_reason IS NULL OR revoked_at IS NOT NULL),
    CONSTRAINT api_keys_grace_needs_rotation CHECK (grace_until IS NULL OR rotated_to IS NOT NULL),
    CONSTRAINT api_keys_not_own_successor CHECK (rotated_to <> id AND rotated_from <> id)
);
COMMENT ON TABLE api_key_mgmt.api_keys IS
    'api_key_mgmt: platform API keys (SHA-256 only; the key is shown once at issue)';

-- The hot path: validate_api_key probes this index by name (src/validation_pg.rs).
CREATE UNIQUE INDEX api_keys_key_hash_idx ON api_key_mgmt.api_keys (key_hash);
CREATE INDEX api_keys_tenant_idx ON api_key_mgmt.api_keys (tenant_id, created_at);
CREATE INDEX api_keys_rotated_from_idx ON api_key_mgmt.api_keys (rotated_from)
    WHERE rotated_from IS NOT NULL;

CREATE TRIGGER tenants_touch BEFORE UPDATE ON api_key_mgmt.tenants
    FOR EACH ROW EXECUTE FUNCTION api_key_mgmt_internal.touch_updated_at();
CREATE TRIGGER api_keys_touch BEFORE UPDATE ON api_key_mgmt.api_keys
    FOR EACH ROW EXECUTE FUNCTION api_key_mgmt_internal.touch_updated_at();

-- A key's identity never changes: the hash, tenant and id are fixed at issue.
CREATE FUNCTION api_key_mgmt_internal.api_keys_immutable() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
       OR NEW.key_hash IS DISTINCT FROM OLD.key_hash THEN
        RAISE EXCEPTION 'the id, tenant and hash of an API key cannot change'
            USING ERRCODE = '55000';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER api_keys_immutable BEFORE UPDATE ON api_key_mgmt.api_keys
    FOR EACH ROW EXECUTE FUNCTION api_key_mgmt_internal.api_keys_immutable();

-- The validation result: one composite row (see README, "Validation codes").
CREATE TYPE api_key_mgmt.key_validation AS (
    valid        boolean,
    code         text,
    tenant_id    uuid,
    key_id       uuid,
    environment  text,
    scopes       text[],
    expires_at   timestamptz,
    grace_until  timestamptz,
    metadata     jsonb,
    -- Metering (sql/007_metering.sql): what the key and its tenant have left (NULL: no
    -- cap / no credits / no rate limit), and when a metering refusal lifts.
    remaining_daily      numeric,
    remaining_monthly    numeric,
    remaining_credits    numeric,
    rate_limit_remaining bigint,
    retry_after          interval
);

ALTER TABLE api_key_mgmt.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.api_keys FORCE ROW LEVEL SECURITY;

-- Platform administrators see and manage every tenant; tenant-scoped policies for
-- other roles are added with tenant membership.
CREATE POLICY tenants_admin ON api_key_mgmt.tenants TO api_key_mgmt_admin
    USING (true) WITH CHECK (true);
CREATE POLICY api_keys_admin ON api_key_mgmt.api_keys TO api_key_mgmt_admin
    USING (true) WITH CHECK (true);

SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.api_keys', '');
