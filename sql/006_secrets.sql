-- Tenant secrets: bring-your-own provider keys under AES-256-GCM (src/crypto.rs,
-- src/secrets_pg.rs). The master key never enters the database: it is read from the
-- file named by api_key_mgmt.master_key_file. Tables: providers, master_key_versions,
-- tenant_secrets. Functions: register_provider, put_tenant_secret, get_tenant_secret,
-- resolve_provider_key, list_tenant_secrets, delete_tenant_secret,
-- mark_secret_validated, record_secret_usage, rotate_master_key, rewrap_secrets,
-- retire_master_key_version. Views: tenant_secret_list, secret_key_versions.

-- The provider registry. key_pattern is a hint used to refuse obviously wrong input
-- (an OpenAI key pasted as an Anthropic one); NULL: no check. Built-in rows come with
-- the extension (and its upgrade scripts) and are not dumped; rows administrators add
-- are.
CREATE TABLE api_key_mgmt.providers (
    id           text COLLATE "C" PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    display_name text NOT NULL CHECK (pg_catalog.char_length(display_name) BETWEEN 1 AND 100),
    key_pattern  text CHECK (pg_catalog.char_length(key_pattern) <= 500),
    builtin      boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE api_key_mgmt.providers IS 'api_key_mgmt: providers whose keys tenants may store';

INSERT INTO api_key_mgmt.providers (id, display_name, key_pattern, builtin) VALUES
    ('openai',        'OpenAI',              '^sk-(?!ant-)[A-Za-z0-9_-]{20,}$', true),
    ('anthropic',     'Anthropic',           '^sk-ant-[A-Za-z0-9_-]{20,}$',     true),
    ('gemini',        'Google Gemini',       '^AIza[0-9A-Za-z_-]{35}$',         true),
    ('google-vision', 'Google Cloud Vision', '^AIza[0-9A-Za-z_-]{35}$',         true),
    ('elevenlabs',    'ElevenLabs',          NULL,                              true),
    ('cartesia',      'Cartesia',            NULL,                              true),
    ('textract',      'AWS Textract',        NULL,                              true),
    ('tavus',         'Tavus',               NULL,                              true),
    ('perplexity',    'Perplexity',          '^pplx-[A-Za-z0-9]{20,}$',         true),
    ('kimi',          'Moonshot Kimi',       '^sk-[A-Za-z0-9]{20,}$',           true),
    ('huggingface',   'Hugging Face',        '^hf_[A-Za-z0-9]{20,}$',           true);

-- One row per master key version ever used: its key-check value (HMAC of a fixed
-- label under the key, not secret) detects a wrong or missing key file at first use.
CREATE TABLE api_key_mgmt.master_key_versions (
    version     integer PRIMARY KEY CHECK (version > 0),
    key_check   bytea NOT NULL CHECK (pg_catalog.octet_length(key_check) = 32),
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    retired_at  timestamptz
);
COMMENT ON TABLE api_key_mgmt.master_key_versions IS
    'api_key_mgmt: key-check values of master key versions (never the keys)';

CREATE TABLE api_key_mgmt.tenant_secrets (
    id                 uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    -- NULL: a platform-wide default, used when the tenant has no secret of its own.
    tenant_id          uuid REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    provider           text COLLATE "C" NOT NULL REFERENCES api_key_mgmt.providers (id),
    -- NULL: any model of the provider; set: an override for that model.
    model              text COLLATE "C" CHECK (model ~ '^[\x21-\x7e]{1,200}$'),
    name               text NOT NULL CHECK (pg_catalog.char_length(name) BETWEEN 1 AND 200),
    scopes             text[] NOT NULL DEFAULT '{*}'
                       CHECK (pg_catalog.cardinality(scopes) BETWEEN 1 AND 64
                              AND api_key_mgmt_internal.scopes_valid(scopes)),
    environment        text COLLATE "C" NOT NULL DEFAULT 'prod'
                       CHECK (environment IN ('dev', 'staging', 'prod')),
    -- AES-256-GCM: ciphertext includes the 16-byte tag; key_version is the master key
    -- version whose per-tenant data key sealed it.
    ciphertext         bytea NOT NULL CHECK (pg_catalog.octet_length(ciphertext) BETWEEN 17 AND 65552),
    nonce              bytea NOT NULL CHECK (pg_catalog.octet_length(nonce) = 12),
    key_version        integer NOT NULL REFERENCES api_key_mgmt.master_key_versions (version),
    -- Bumped each time the secret is replaced.
    secret_version     integer NOT NULL DEFAULT 1 CHECK (secret_version > 0),
    preview            text NOT NULL CHECK (pg_catalog.char_length(preview) <= 40),
    validation_status  text NOT NULL DEFAULT 'unknown' CHECK (validation_status IN ('unknown', 'valid', 'invalid')),
    validation_message text CHECK (pg_catalog.char_length(validation_message) <= 500),
    validated_at       timestamptz,
    request_count      bigint NOT NULL DEFAULT 0 CHECK (request_count >= 0),
    token_count        bigint NOT NULL DEFAULT 0 CHECK (token_count >= 0),
    last_used_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rotated_at         timestamptz,
    CONSTRAINT tenant_secrets_one_per_slot
        UNIQUE NULLS NOT DISTINCT (tenant_id, provider, model, environment)
);
COMMENT ON TABLE api_key_mgmt.tenant_secrets IS
    'api_key_mgmt: provider keys of tenants (and platform defaults), AES-256-GCM encrypted';
-- get_tenant_secret probes tenant_secrets_one_per_slot by name (src/secrets_pg.rs), the
-- tenant first: most comparisons in the descent end at its uuid, and the index also
-- serves lookups by tenant.
CREATE INDEX tenant_secrets_key_version_idx ON api_key_mgmt.tenant_secrets (key_version);

CREATE TRIGGER tenant_secrets_touch BEFORE UPDATE ON api_key_mgmt.tenant_secrets
    FOR EACH ROW EXECUTE FUNCTION api_key_mgmt_internal.touch_updated_at();

-- The sealed form binds tenant, id and provider: they never change.
CREATE FUNCTION api_key_mgmt_internal.tenant_secrets_immutable() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
       OR NEW.provider IS DISTINCT FROM OLD.provider THEN
        RAISE EXCEPTION 'the id, tenant and provider of a secret cannot change'
            USING ERRCODE = '55000';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER tenant_secrets_immutable BEFORE UPDATE ON api_key_mgmt.tenant_secrets
    FOR EACH ROW EXECUTE FUNCTION api_key_mgmt_internal.tenant_secrets_immutable();

-- What resolve_provider_key returns.
CREATE TYPE api_key_mgmt.provider_key AS (
    secret       text,
    source       text,      -- model | tenant | platform
    secret_id    uuid,
    tenant_id    uuid,      -- the owner: NULL for a platform default
    provider     text,
    model        text,
    environment  text
);

ALTER TABLE api_key_mgmt.providers ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.providers FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.master_key_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.master_key_versions FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.tenant_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.tenant_secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY providers_read ON api_key_mgmt.providers FOR SELECT
    TO api_key_mgmt_admin, api_key_mgmt_service USING (true);
CREATE POLICY master_key_versions_admin ON api_key_mgmt.master_key_versions FOR SELECT
    TO api_key_mgmt_admin USING (true);
CREATE POLICY tenant_secrets_admin ON api_key_mgmt.tenant_secrets FOR SELECT
    TO api_key_mgmt_admin USING (true);

SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.providers', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.master_key_versions', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.tenant_secrets', '');

-- Rust helpers (src/secrets_pg.rs). The plaintext of a secret exists only inside them.

-- master_keys() -> (version, active, key_check): the versions in the key file.
CREATE FUNCTION api_key_mgmt_internal.master_keys()
    RETURNS TABLE (version integer, active boolean, key_check bytea)
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'master_keys_wrapper';

-- seal_secret(tenant_id, secret_id, provider, secret) -> (ciphertext, nonce, key_version)
CREATE FUNCTION api_key_mgmt_internal.seal_secret(tenant_id uuid, secret_id uuid, provider text, secret text)
    RETURNS TABLE (ciphertext bytea, nonce bytea, key_version integer)
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'seal_secret_wrapper';

-- reseal_secret(secret_id) -> (ciphertext, nonce, key_version): re-encrypt a stored
-- secret under the active master key version (rewrap), with a new nonce.
CREATE FUNCTION api_key_mgmt_internal.reseal_secret(secret_id uuid)
    RETURNS TABLE (ciphertext bytea, nonce bytea, key_version integer)
    VOLATILE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'reseal_secret_wrapper';

-- secret_preview(secret) -> text: `sk-...abcd`, never more than a quarter of it.
CREATE FUNCTION api_key_mgmt_internal.secret_preview(secret text) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'secret_preview_wrapper';

-- ensure_key_version() -> integer: the active master key version, its key-check value
-- recorded on first use, or 28000 when the file's key does not match the one recorded.
CREATE FUNCTION api_key_mgmt_internal.ensure_key_version() RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    v_version integer;
    v_check bytea;
    v_stored bytea;
BEGIN
    SELECT m.version, m.key_check INTO v_version, v_check
      FROM api_key_mgmt_internal.master_keys() m WHERE m.active;
    SELECT v.key_check INTO v_stored FROM api_key_mgmt.master_key_versions v
     WHERE v.version = v_version FOR SHARE;
    IF NOT FOUND THEN
        INSERT INTO api_key_mgmt.master_key_versions (version, key_check)
        VALUES (v_version, v_check) ON CONFLICT (version) DO NOTHING;
        SELECT v.key_check INTO v_stored FROM api_key_mgmt.master_key_versions v
         WHERE v.version = v_version;
    END IF;
    IF v_stored IS DISTINCT FROM v_check THEN
        RAISE EXCEPTION 'master key version % in the key file is not the key recorded for that version', v_version
            USING ERRCODE = '28000',
                  HINT = 'api_key_mgmt.master_key_file names the wrong file, or the file was edited.';
    END IF;
    RETURN v_version;
END
$$;

-- check_provider_key(provider, secret): 42704 unknown provider, 22023 when the
-- secret does not look like the provider's keys.
CREATE FUNCTION api_key_mgmt_internal.check_provider_key(p_provider text, p_secret text)
    RETURNS void LANGUAGE plpgsql STABLE AS $$
DECLARE
    v api_key_mgmt.providers;
BEGIN
    IF p_provider IS NULL THEN
        RAISE EXCEPTION 'provider must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO v FROM api_key_mgmt.providers p WHERE p.id = p_provider;
    IF NOT FOUND THEN
        -- Not echoed: provider and secret swapped by a caller must not put the secret
        -- into the error and the server log.
        RAISE EXCEPTION 'the provider is not registered' USING ERRCODE = '42704',
            HINT = 'See api_key_mgmt.providers; administrators add providers with register_provider().';
    END IF;
    IF p_secret IS NULL THEN
        RAISE EXCEPTION 'secret must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.octet_length(p_secret) NOT BETWEEN 1 AND 65536 THEN
        RAISE EXCEPTION 'secret must be 1 to 65536 bytes' USING ERRCODE = '22023';
    END IF;
    IF v.key_pattern IS NOT NULL AND p_secret !~ v.key_pattern THEN
        RAISE EXCEPTION 'the secret does not look like a key of provider "%"', p_provider USING ERRCODE = '22023',
            HINT = 'Check that the key was pasted for the right provider.';
    END IF;
END
$$;

-- check_environment(environment): dev | staging | prod.
CREATE FUNCTION api_key_mgmt_internal.check_secret_environment(p_environment text)
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_environment IS NULL OR p_environment NOT IN ('dev', 'staging', 'prod') THEN
        RAISE EXCEPTION 'environment must be ''dev'', ''staging'' or ''prod''' USING ERRCODE = '22023';
    END IF;
END
$$;

-- register_provider(id, display_name, key_pattern) -> void: add or update a provider
-- of your own. Built-in providers belong to the extension (55000).
CREATE FUNCTION api_key_mgmt_impl.register_provider(id text, display_name text, key_pattern text DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    IF register_provider.id IS NULL OR register_provider.id !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'provider id must be 1 to 63 characters: lower-case letters, digits, _ . -'
            USING ERRCODE = '22023';
    END IF;
    PERFORM api_key_mgmt_internal.check_text('display_name', register_provider.display_name, 100);
    IF register_provider.key_pattern IS NOT NULL THEN
        IF pg_catalog.char_length(register_provider.key_pattern) > 500 THEN
            RAISE EXCEPTION 'key_pattern must be at most 500 characters' USING ERRCODE = '22023';
        END IF;
        BEGIN
            PERFORM '' ~ register_provider.key_pattern;
        EXCEPTION WHEN invalid_regular_expression THEN
            RAISE EXCEPTION 'key_pattern is not a valid regular expression' USING ERRCODE = '22023';
        END;
    END IF;
    IF EXISTS (SELECT FROM api_key_mgmt.providers p WHERE p.id = register_provider.id AND p.builtin) THEN
        RAISE EXCEPTION 'provider "%" is built in and cannot be changed', register_provider.id
            USING ERRCODE = '55000', HINT = 'Register your variant under another id, e.g. "%-custom".';
    END IF;
    INSERT INTO api_key_mgmt.providers AS p (id, display_name, key_pattern)
    VALUES (register_provider.id, register_provider.display_name, register_provider.key_pattern)
    ON CONFLICT ON CONSTRAINT providers_pkey DO UPDATE
        SET display_name = EXCLUDED.display_name, key_pattern = EXCLUDED.key_pattern;
    PERFORM api_key_mgmt_internal.audit(NULL, 'provider.registered', 'provider', register_provider.id,
        pg_catalog.jsonb_build_object('display_name', register_provider.display_name,
                                      'key_pattern', register_provider.key_pattern));
END
$$;

-- put_tenant_secret(tenant_id, provider, secret, model, scopes, environment, name) -> uuid
-- Create or replace the secret of one slot (tenant, provider, model, environment);
-- tenant_id NULL stores a platform default. Replacing keeps the id, bumps
-- secret_version and re-encrypts with a new nonce.
CREATE FUNCTION api_key_mgmt_impl.put_tenant_secret(
    tenant_id uuid,
    provider text,
    secret text,
    model text DEFAULT NULL,
    scopes text[] DEFAULT '{*}',
    environment text DEFAULT 'prod',
    name text DEFAULT NULL
) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
    v_sealed record;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(put_tenant_secret.tenant_id, 'admin');
    IF put_tenant_secret.tenant_id IS NOT NULL THEN
        PERFORM api_key_mgmt_internal.tenant_row(put_tenant_secret.tenant_id, true);
    END IF;
    PERFORM api_key_mgmt_internal.check_provider_key(put_tenant_secret.provider, put_tenant_secret.secret);
    IF put_tenant_secret.model IS NOT NULL AND put_tenant_secret.model !~ '^[\x21-\x7e]{1,200}$' THEN
        RAISE EXCEPTION 'model must be 1 to 200 visible ASCII characters' USING ERRCODE = '22023';
    END IF;
    -- The scopes a secret may serve (syntax only: the tenant's plan is enforced on keys).
    PERFORM api_key_mgmt_internal.check_scopes('scopes', put_tenant_secret.scopes, NULL);
    PERFORM api_key_mgmt_internal.check_secret_environment(put_tenant_secret.environment);
    IF put_tenant_secret.name IS NOT NULL THEN
        PERFORM api_key_mgmt_internal.check_text('name', put_tenant_secret.name, 200);
    END IF;
    PERFORM api_key_mgmt_internal.ensure_key_version();

    SELECT s.id INTO v_id FROM api_key_mgmt.tenant_secrets s
     WHERE s.provider = put_tenant_secret.provider AND s.environment = put_tenant_secret.environment
       AND s.tenant_id IS NOT DISTINCT FROM put_tenant_secret.tenant_id
       AND s.model IS NOT DISTINCT FROM put_tenant_secret.model
       FOR UPDATE;
    IF NOT FOUND THEN
        v_id := pg_catalog.gen_random_uuid();
        SELECT * INTO v_sealed FROM api_key_mgmt_internal.seal_secret(
            put_tenant_secret.tenant_id, v_id, put_tenant_secret.provider, put_tenant_secret.secret);
        BEGIN
            INSERT INTO api_key_mgmt.tenant_secrets
                (id, tenant_id, provider, model, name, scopes, environment, ciphertext, nonce,
                 key_version, preview)
            VALUES (v_id, put_tenant_secret.tenant_id, put_tenant_secret.provider, put_tenant_secret.model,
                    COALESCE(put_tenant_secret.name,
                             put_tenant_secret.provider || COALESCE('/' || put_tenant_secret.model, '')),
                    put_tenant_secret.scopes, put_tenant_secret.environment, v_sealed.ciphertext,
                    v_sealed.nonce, v_sealed.key_version,
                    api_key_mgmt_internal.secret_preview(put_tenant_secret.secret));
            PERFORM api_key_mgmt_internal.audit(put_tenant_secret.tenant_id, 'secret.created', 'secret', v_id::text,
                pg_catalog.jsonb_build_object('provider', put_tenant_secret.provider, 'model', put_tenant_secret.model,
                                              'environment', put_tenant_secret.environment));
            RETURN v_id;
        EXCEPTION WHEN unique_violation THEN
            -- A concurrent put created the slot first: replace its secret instead.
            SELECT s.id INTO v_id FROM api_key_mgmt.tenant_secrets s
             WHERE s.provider = put_tenant_secret.provider AND s.environment = put_tenant_secret.environment
               AND s.tenant_id IS NOT DISTINCT FROM put_tenant_secret.tenant_id
               AND s.model IS NOT DISTINCT FROM put_tenant_secret.model
               FOR UPDATE;
        END;
    END IF;
    SELECT * INTO v_sealed FROM api_key_mgmt_internal.seal_secret(
        put_tenant_secret.tenant_id, v_id, put_tenant_secret.provider, put_tenant_secret.secret);
    UPDATE api_key_mgmt.tenant_secrets s
       SET ciphertext = v_sealed.ciphertext, nonce = v_sealed.nonce, key_version = v_sealed.key_version,
           secret_version = s.secret_version + 1, rotated_at = pg_catalog.now(),
           scopes = put_tenant_secret.scopes,
           name = COALESCE(put_tenant_secret.name, s.name),
           preview = api_key_mgmt_internal.secret_preview(put_tenant_secret.secret),
           validation_status = 'unknown', validation_message = NULL, validated_at = NULL
     WHERE s.id = v_id;
    PERFORM api_key_mgmt_internal.audit(put_tenant_secret.tenant_id, 'secret.updated', 'secret', v_id::text,
        pg_catalog.jsonb_build_object('provider', put_tenant_secret.provider, 'model', put_tenant_secret.model,
                                      'environment', put_tenant_secret.environment));
    RETURN v_id;
END
$$;

-- audit_secret_read(tenant_id, secret_id, provider, source, scope) -> void: internal,
-- the secret.decrypted entry of a read audited in the reading transaction. Called by
-- the read path (src/secrets_pg.rs) through the function manager, as the owner.
CREATE FUNCTION api_key_mgmt_internal.audit_secret_read(
    p_tenant_id uuid, p_secret_id text, p_provider text, p_source text, p_scope text
) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT api_key_mgmt_internal.audit(p_tenant_id, 'secret.decrypted', 'secret', p_secret_id,
        pg_catalog.jsonb_build_object('provider', p_provider, 'source', p_source, 'scope', p_scope))
$$;

-- get_tenant_secret(tenant_id, provider, scope, model, environment) -> text
-- Resolution: the tenant's secret for the model, the tenant's secret for the
-- provider, the platform's for the model, the platform's for the provider; NULL when
-- none exists. 42501 when the secret found does not allow the scope. Each read appends
-- a secret.decrypted audit entry (see api_key_mgmt.audit_secret_reads).
-- Not SECURITY DEFINER, like validate_api_key: it reads the tables through their
-- indexes directly and resolves no name (so the caller's search_path cannot reach it),
-- EXECUTE on it is the gate, and an audit entry written in the reading transaction goes
-- through audit_secret_read above. This spares every read the save and restore of a
-- SET search_path.
CREATE FUNCTION api_key_mgmt.get_tenant_secret(
    tenant_id uuid,
    provider text,
    scope text,
    model text DEFAULT NULL,
    environment text DEFAULT 'prod'
) RETURNS text
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'akm_get_tenant_secret';

-- resolve_provider_key(tenant_id, provider, scope, model, environment) -> provider_key
-- The same resolution, with where the secret came from (model | tenant | platform),
-- so billing can tell BYOK from platform usage; all NULL when none exists. Not SECURITY
-- DEFINER, for the same reasons as get_tenant_secret.
CREATE FUNCTION api_key_mgmt.resolve_provider_key(
    tenant_id uuid,
    provider text,
    scope text,
    model text DEFAULT NULL,
    environment text DEFAULT 'prod'
) RETURNS api_key_mgmt.provider_key
    VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'akm_resolve_provider_key';

-- tenant_secret_list: every secret's metadata and preview; never the ciphertext.
CREATE VIEW api_key_mgmt.tenant_secret_list WITH (security_invoker = true) AS
SELECT s.id AS secret_id, s.tenant_id, s.provider, s.model, s.name, s.scopes, s.environment,
       s.preview, s.key_version, s.secret_version, s.validation_status, s.validation_message,
       s.validated_at, s.request_count, s.token_count, s.last_used_at, s.created_at,
       s.updated_at, s.rotated_at
  FROM api_key_mgmt.tenant_secrets s;

-- list_tenant_secrets(tenant_id) -> the tenant's secrets (tenant_id NULL: the
-- platform defaults), previews and metadata only.
CREATE FUNCTION api_key_mgmt_impl.list_tenant_secrets(tenant_id uuid)
    RETURNS SETOF api_key_mgmt.tenant_secret_list
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM api_key_mgmt_internal.authorize(list_tenant_secrets.tenant_id, 'admin');
    RETURN QUERY SELECT * FROM api_key_mgmt.tenant_secret_list l
     WHERE l.tenant_id IS NOT DISTINCT FROM list_tenant_secrets.tenant_id
     ORDER BY l.provider, l.model NULLS FIRST, l.environment;
END
$$;

-- delete_tenant_secret(tenant_id, provider, model, environment) -> boolean
CREATE FUNCTION api_key_mgmt_impl.delete_tenant_secret(
    tenant_id uuid,
    provider text,
    model text DEFAULT NULL,
    environment text DEFAULT 'prod'
) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(delete_tenant_secret.tenant_id, 'admin');
    IF delete_tenant_secret.provider IS NULL THEN
        RAISE EXCEPTION 'provider must not be NULL' USING ERRCODE = '22004';
    END IF;
    PERFORM api_key_mgmt_internal.check_secret_environment(delete_tenant_secret.environment);
    DELETE FROM api_key_mgmt.tenant_secrets s
     WHERE s.provider = delete_tenant_secret.provider AND s.environment = delete_tenant_secret.environment
       AND s.tenant_id IS NOT DISTINCT FROM delete_tenant_secret.tenant_id
       AND s.model IS NOT DISTINCT FROM delete_tenant_secret.model
    RETURNING s.id INTO v_id;
    IF v_id IS NULL THEN
        RETURN false;
    END IF;
    PERFORM api_key_mgmt_internal.audit(delete_tenant_secret.tenant_id, 'secret.deleted', 'secret', v_id::text,
        pg_catalog.jsonb_build_object('provider', delete_tenant_secret.provider, 'model', delete_tenant_secret.model,
                                      'environment', delete_tenant_secret.environment));
    RETURN true;
END
$$;

-- authorize_secret(secret_id) -> uuid: the secret's tenant (NULL for a platform default);
-- 22004 NULL id, 42704 no such secret, 42501 unless the caller administers its tenant
-- (platform administrators for platform defaults).
CREATE FUNCTION api_key_mgmt_internal.authorize_secret(p_secret_id uuid) RETURNS uuid
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_tenant uuid;
BEGIN
    IF p_secret_id IS NULL THEN
        RAISE EXCEPTION 'secret_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT s.tenant_id INTO v_tenant FROM api_key_mgmt.tenant_secrets s WHERE s.id = p_secret_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'secret % does not exist', p_secret_id USING ERRCODE = '42704';
    END IF;
    PERFORM api_key_mgmt_internal.authorize(v_tenant, 'admin');
    RETURN v_tenant;
END
$$;

-- mark_secret_validated(secret_id, ok, message) -> void: the application tells the
-- database whether the provider accepted the key (the database cannot call providers).
CREATE FUNCTION api_key_mgmt_impl.mark_secret_validated(secret_id uuid, ok boolean, message text DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF mark_secret_validated.secret_id IS NULL OR mark_secret_validated.ok IS NULL THEN
        RAISE EXCEPTION 'secret_id and ok must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.char_length(mark_secret_validated.message) > 500 THEN
        RAISE EXCEPTION 'message must be at most 500 characters' USING ERRCODE = '22023';
    END IF;
    PERFORM api_key_mgmt_internal.authorize_secret(mark_secret_validated.secret_id);
    UPDATE api_key_mgmt.tenant_secrets s
       SET validation_status = CASE WHEN mark_secret_validated.ok THEN 'valid' ELSE 'invalid' END,
           validation_message = mark_secret_validated.message, validated_at = pg_catalog.now()
     WHERE s.id = mark_secret_validated.secret_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'secret % does not exist', mark_secret_validated.secret_id USING ERRCODE = '42704';
    END IF;
END
$$;

-- record_secret_usage(secret_id, requests, tokens) -> void: add to the usage counters.
-- Reading a secret writes nothing (it works on a standby); the application (or
-- metering) records use here.
CREATE FUNCTION api_key_mgmt_impl.record_secret_usage(secret_id uuid, requests bigint DEFAULT 1, tokens bigint DEFAULT 0)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF record_secret_usage.secret_id IS NULL OR record_secret_usage.requests IS NULL
       OR record_secret_usage.tokens IS NULL THEN
        RAISE EXCEPTION 'secret_id, requests and tokens must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF record_secret_usage.requests < 0 OR record_secret_usage.tokens < 0 THEN
        RAISE EXCEPTION 'requests and tokens must not be negative' USING ERRCODE = '22023';
    END IF;
    PERFORM api_key_mgmt_internal.authorize_secret(record_secret_usage.secret_id);
    UPDATE api_key_mgmt.tenant_secrets s
       SET request_count = s.request_count + record_secret_usage.requests,
           token_count = s.token_count + record_secret_usage.tokens,
           last_used_at = pg_catalog.now()
     WHERE s.id = record_secret_usage.secret_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'secret % does not exist', record_secret_usage.secret_id USING ERRCODE = '42704';
    END IF;
END
$$;

-- rotate_master_key() -> integer: after a new version was added to the key file and
-- marked active, record it (verifying it against any value already recorded) and
-- return it. Then call rewrap_secrets until it returns 0.
CREATE FUNCTION api_key_mgmt_impl.rotate_master_key() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_version integer;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    v_version := api_key_mgmt_internal.ensure_key_version();
    PERFORM api_key_mgmt_internal.audit(NULL, 'master_key.rotated', 'master_key', v_version::text);
    RETURN v_version;
END
$$;

-- rewrap_secrets(batch_size) -> integer: re-encrypt up to batch_size secrets that are
-- not on the active master key version (new nonce each); returns how many. Online:
-- rows being changed by others are skipped and picked up by a later call.
CREATE FUNCTION api_key_mgmt_impl.rewrap_secrets(batch_size integer DEFAULT 1000) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_active integer;
    v_id uuid;
    v_sealed record;
    v_done integer := 0;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    PERFORM api_key_mgmt_internal.check_range('batch_size', rewrap_secrets.batch_size, 1, 100000);
    v_active := api_key_mgmt_internal.ensure_key_version();
    FOR v_id IN
        SELECT s.id FROM api_key_mgmt.tenant_secrets s
         WHERE s.key_version <> v_active
         ORDER BY s.id LIMIT rewrap_secrets.batch_size
           FOR UPDATE SKIP LOCKED
    LOOP
        SELECT * INTO v_sealed FROM api_key_mgmt_internal.reseal_secret(v_id);
        UPDATE api_key_mgmt.tenant_secrets s
           SET ciphertext = v_sealed.ciphertext, nonce = v_sealed.nonce, key_version = v_sealed.key_version
         WHERE s.id = v_id;
        v_done := v_done + 1;
    END LOOP;
    IF v_done > 0 THEN
        PERFORM api_key_mgmt_internal.audit(NULL, 'master_key.rewrapped', 'master_key', v_active::text,
            pg_catalog.jsonb_build_object('secrets', v_done));
    END IF;
    RETURN v_done;
END
$$;

-- retire_master_key_version(version) -> void: mark a version retired once no secret
-- uses it (55000 otherwise); it may then be removed from the key file.
CREATE FUNCTION api_key_mgmt_impl.retire_master_key_version(version integer) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_left bigint;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    PERFORM FROM api_key_mgmt.master_key_versions v WHERE v.version = retire_master_key_version.version
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'master key version % was never used', retire_master_key_version.version
            USING ERRCODE = '42704';
    END IF;
    SELECT count(*) INTO v_left FROM api_key_mgmt.tenant_secrets s
     WHERE s.key_version = retire_master_key_version.version;
    IF v_left > 0 THEN
        RAISE EXCEPTION 'master key version % still encrypts % secrets', retire_master_key_version.version, v_left
            USING ERRCODE = '55000', HINT = 'Run rewrap_secrets() until it returns 0 first.';
    END IF;
    UPDATE api_key_mgmt.master_key_versions v SET retired_at = COALESCE(v.retired_at, pg_catalog.now())
     WHERE v.version = retire_master_key_version.version;
    PERFORM api_key_mgmt_internal.audit(NULL, 'master_key.retired', 'master_key', retire_master_key_version.version::text);
END
$$;

-- secret_key_versions: how many secrets sit on each master key version.
CREATE VIEW api_key_mgmt.secret_key_versions WITH (security_invoker = true) AS
SELECT v.version, v.recorded_at, v.retired_at,
       (SELECT count(*) FROM api_key_mgmt.tenant_secrets s WHERE s.key_version = v.version) AS secrets
  FROM api_key_mgmt.master_key_versions v;
