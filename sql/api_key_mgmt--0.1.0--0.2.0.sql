-- api_key_mgmt 0.1.0 -> 0.2.0, run by ALTER EXTENSION api_key_mgmt UPDATE (UPDATING.md).
-- What changes (CHANGELOG.md):
-- 1. The caller is the role that really called: the public SECURITY DEFINER functions
--    move to schema api_key_mgmt_impl (their bodies, granted to no one), and schema
--    api_key_mgmt gets an entry point of the same signature for each (src/caller.rs),
--    which takes over the function's grants, including any a site added itself.
-- 2. Arguments a table constraint would refuse are refused before any write (22023).
-- 3. audit_queue_status() gains the column failed (durable audited secret reads).
-- 4. Monitoring: role api_key_mgmt_monitor, view api_key_mgmt.metrics, api_key_mgmt.health().
-- A released script: never edited. Later changes go into api_key_mgmt--0.2.0--<next>.sql.
\echo Use "ALTER EXTENSION api_key_mgmt UPDATE TO '0.2.0'" to load this file. \quit

CREATE SCHEMA api_key_mgmt_impl;
COMMENT ON SCHEMA api_key_mgmt_impl IS
    'api_key_mgmt: bodies of the SECURITY DEFINER functions; called only through api_key_mgmt''s entry points';
REVOKE ALL ON SCHEMA api_key_mgmt_impl FROM PUBLIC;

-- 1. Every SECURITY DEFINER function of schema api_key_mgmt becomes a body in
--    api_key_mgmt_impl (grants are moved to the entry points in step 5).
DO $move$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'api_key_mgmt'::pg_catalog.regnamespace AND p.prosecdef
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET SCHEMA api_key_mgmt_impl',
                                  f.oid::pg_catalog.regprocedure);
    END LOOP;
END
$move$;

-- 2. New and changed internal helpers (arguments refused before any write).

-- actor() -> text: who is acting, for created_by and the audit log: the JWT sub, the
-- setting api_key_mgmt.user_id, or the database role. 22023 when the user id is longer
-- than the 200 characters a created_by column holds (checked before any write, so no
-- constraint of a table ever refuses it and prints its row).
CREATE OR REPLACE FUNCTION api_key_mgmt_internal.actor() RETURNS text
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v text := COALESCE(api_key_mgmt.current_user_id(), api_key_mgmt_internal.invoker_name());
BEGIN
    IF pg_catalog.char_length(v) > 200 THEN
        RAISE EXCEPTION 'the acting user id (JWT sub claim or api_key_mgmt.user_id) must be at most 200 characters'
            USING ERRCODE = '22023';
    END IF;
    RETURN v;
END
$$;

-- check_flat(what, array): 22023 for an array of more than one dimension.
CREATE FUNCTION api_key_mgmt_internal.check_flat(what text, value anyarray)
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF pg_catalog.array_ndims(value) > 1 THEN
        RAISE EXCEPTION '% must be a one-dimensional array', what USING ERRCODE = '22023';
    END IF;
END
$$;

-- json_text(what, value) -> text: a JSON string as text, NULL for JSON null; 22023
-- for any other JSON type (a number or object where a name is expected).
CREATE FUNCTION api_key_mgmt_internal.json_text(what text, value jsonb)
    RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL OR pg_catalog.jsonb_typeof(value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF pg_catalog.jsonb_typeof(value) <> 'string' THEN
        RAISE EXCEPTION '% must be a JSON string', what USING ERRCODE = '22023';
    END IF;
    RETURN value #>> '{}';
END
$$;

-- check_scopes(what, scopes, plan): 22004 NULL array or element, 22023 empty, bad
-- syntax or (when plan is given) a scope outside the tenant's plan.
CREATE OR REPLACE FUNCTION api_key_mgmt_internal.check_scopes(what text, scopes text[], plan text[])
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_bad text;
BEGIN
    IF scopes IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', what USING ERRCODE = '22004';
    END IF;
    PERFORM api_key_mgmt_internal.check_flat(what, scopes);
    IF pg_catalog.array_position(scopes, NULL) IS NOT NULL THEN
        RAISE EXCEPTION '% must not contain NULL', what USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.cardinality(scopes) = 0 THEN
        RAISE EXCEPTION '% must hold at least one scope', what USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.cardinality(scopes) > 64 THEN
        RAISE EXCEPTION '% may hold at most 64 scopes', what USING ERRCODE = '22023';
    END IF;
    SELECT s INTO v_bad FROM pg_catalog.unnest(scopes) AS s
     WHERE NOT api_key_mgmt_internal.scopes_valid(ARRAY[s]) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'scope "%" is invalid', v_bad USING ERRCODE = '22023',
            HINT = 'A scope is area:action (lower-case letters, digits, _ . -), area:* or *.';
    END IF;
    IF plan IS NOT NULL THEN
        v_bad := api_key_mgmt_internal.first_uncovered(plan, scopes);
        IF v_bad IS NOT NULL THEN
            RAISE EXCEPTION 'scope "%" is not in the tenant''s allowed scopes', v_bad
                USING ERRCODE = '22023';
        END IF;
    END IF;
END
$$;

-- check_allowlists(providers, models): NULL means any; otherwise non-empty and valid.
CREATE OR REPLACE FUNCTION api_key_mgmt_internal.check_allowlists(providers text[], models text[])
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM api_key_mgmt_internal.check_flat('allowed_providers', providers);
    PERFORM api_key_mgmt_internal.check_flat('allowed_models', models);
    IF providers IS NOT NULL AND (pg_catalog.cardinality(providers) NOT BETWEEN 1 AND 64
        OR NOT api_key_mgmt_internal.providers_valid(providers)) THEN
        RAISE EXCEPTION 'allowed_providers must be NULL (any) or 1 to 64 provider ids'
            USING ERRCODE = '22023',
                  HINT = 'A provider id is lower-case letters, digits, _ . - (e.g. openai).';
    END IF;
    IF models IS NOT NULL AND (pg_catalog.cardinality(models) NOT BETWEEN 1 AND 256
        OR NOT api_key_mgmt_internal.models_valid(models)) THEN
        RAISE EXCEPTION 'allowed_models must be NULL (any) or 1 to 256 model names'
            USING ERRCODE = '22023',
                  HINT = 'A model name is visible ASCII; a trailing * matches by prefix.';
    END IF;
END
$$;

-- check_environments(what, environments): 1 to 3 of dev, staging, prod.
CREATE OR REPLACE FUNCTION api_key_mgmt_internal.check_environments(what text, environments text[])
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM api_key_mgmt_internal.check_flat(what, environments);
    IF environments IS NULL OR pg_catalog.array_position(environments, NULL) IS NOT NULL THEN
        RAISE EXCEPTION '% must not be or contain NULL', what USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.cardinality(environments) NOT BETWEEN 1 AND 3
       OR NOT environments <@ ARRAY['dev', 'staging', 'prod'] THEN
        RAISE EXCEPTION '% must hold dev, staging and/or prod', what USING ERRCODE = '22023';
    END IF;
END
$$;

-- check_names(what, names, max): 1 to max non-empty names of at most 200 characters.
CREATE OR REPLACE FUNCTION api_key_mgmt_internal.check_names(what text, names text[], max integer)
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM api_key_mgmt_internal.check_flat(what, names);
    IF names IS NULL OR pg_catalog.array_position(names, NULL) IS NOT NULL THEN
        RAISE EXCEPTION '% must not be or contain NULL', what USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.cardinality(names) NOT BETWEEN 1 AND max
       OR EXISTS (SELECT FROM pg_catalog.unnest(names) n WHERE pg_catalog.char_length(n) NOT BETWEEN 1 AND 200) THEN
        RAISE EXCEPTION '% must hold 1 to % names of 1 to 200 characters', what, max USING ERRCODE = '22023';
    END IF;
END
$$;

-- 3. Changed bodies (now in api_key_mgmt_impl).

-- register_provider(id, display_name, key_pattern) -> void: add or update a provider
-- of your own. Built-in providers belong to the extension (55000).
CREATE OR REPLACE FUNCTION api_key_mgmt_impl.register_provider(id text, display_name text, key_pattern text DEFAULT NULL)
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

-- update_tenant(tenant_id, changes jsonb) -> void. Fields: name, external_id,
-- allowed_scopes, key_type_prefix, max_key_age, settings; a JSON null clears
-- external_id or max_key_age.
CREATE OR REPLACE FUNCTION api_key_mgmt_impl.update_tenant(tenant_id uuid, changes jsonb) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v api_key_mgmt.tenants;
    v_field text;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    PERFORM api_key_mgmt_internal.check_object('changes', changes);
    SELECT f INTO v_field FROM pg_catalog.jsonb_object_keys(changes) AS f
     WHERE f NOT IN ('name', 'external_id', 'allowed_scopes', 'key_type_prefix', 'max_key_age', 'settings')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown field "%" in changes', v_field USING ERRCODE = '22023',
            HINT = 'Fields: name, external_id, allowed_scopes, key_type_prefix, max_key_age, settings.';
    END IF;
    v := api_key_mgmt_internal.tenant_row(update_tenant.tenant_id, false);
    IF changes ? 'name' THEN
        v.name := api_key_mgmt_internal.json_text('changes.name', changes -> 'name');
        PERFORM api_key_mgmt_internal.check_text('name', v.name, 200);
    END IF;
    IF changes ? 'external_id' THEN
        v.external_id := api_key_mgmt_internal.json_text('changes.external_id', changes -> 'external_id');
        IF v.external_id IS NOT NULL THEN
            PERFORM api_key_mgmt_internal.check_text('external_id', v.external_id, 200);
        END IF;
    END IF;
    IF changes ? 'allowed_scopes' THEN
        v.allowed_scopes := api_key_mgmt_internal.text_array('allowed_scopes', changes -> 'allowed_scopes');
        PERFORM api_key_mgmt_internal.check_scopes('allowed_scopes', v.allowed_scopes, NULL);
    END IF;
    IF changes ? 'key_type_prefix' THEN
        v.key_type_prefix := api_key_mgmt_internal.json_text('changes.key_type_prefix', changes -> 'key_type_prefix');
        IF v.key_type_prefix IS NULL OR v.key_type_prefix !~ '^[a-z][a-z0-9]{1,9}$' THEN
            RAISE EXCEPTION 'key_type_prefix must be 2 to 10 characters: a lower-case letter, then lower-case letters or digits'
                USING ERRCODE = '22023';
        END IF;
    END IF;
    IF changes ? 'max_key_age' THEN
        v.max_key_age := (changes ->> 'max_key_age')::interval;
        IF v.max_key_age <= '0'::interval THEN
            RAISE EXCEPTION 'max_key_age must be positive (or null for no maximum)' USING ERRCODE = '22023';
        END IF;
    END IF;
    IF changes ? 'settings' THEN
        v.settings := changes -> 'settings';
        PERFORM api_key_mgmt_internal.check_object('settings', v.settings);
    END IF;
    BEGIN
        UPDATE api_key_mgmt.tenants t
           SET name = v.name, external_id = v.external_id, allowed_scopes = v.allowed_scopes,
               key_type_prefix = v.key_type_prefix, max_key_age = v.max_key_age, settings = v.settings
         WHERE t.id = v.id;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'a tenant with external_id "%" already exists', v.external_id
            USING ERRCODE = '23505';
    END;
    PERFORM api_key_mgmt_internal.audit(v.id, 'tenant.updated', 'tenant', v.id::text,
        pg_catalog.jsonb_build_object('fields', (SELECT pg_catalog.jsonb_agg(k ORDER BY k) FROM pg_catalog.jsonb_object_keys(changes) k)));
END
$$;

-- issue_api_key(tenant_id, name, scopes, expires_at, environment, allowed_providers,
--               allowed_models, metadata, created_by, daily_cap, monthly_cap, credits)
--               -> (key_id, api_key, display_prefix)
-- The only time the key is ever shown. Caps and credits given here are set as by
-- set_key_caps (which needs the tenant role admin).
CREATE OR REPLACE FUNCTION api_key_mgmt_impl.issue_api_key(
    tenant_id uuid,
    name text,
    scopes text[],
    expires_at timestamptz DEFAULT NULL,
    environment text DEFAULT 'live',
    allowed_providers text[] DEFAULT NULL,
    allowed_models text[] DEFAULT NULL,
    metadata jsonb DEFAULT '{}',
    created_by text DEFAULT NULL,
    daily_cap numeric DEFAULT NULL,
    monthly_cap numeric DEFAULT NULL,
    credits numeric DEFAULT NULL
) RETURNS TABLE (key_id uuid, api_key text, display_prefix text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tenant api_key_mgmt.tenants;
    v_new record;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(issue_api_key.tenant_id, 'member');
    v_tenant := api_key_mgmt_internal.tenant_row(issue_api_key.tenant_id, true);
    PERFORM api_key_mgmt_internal.check_text('name', issue_api_key.name, 200);
    PERFORM api_key_mgmt_internal.check_scopes('scopes', issue_api_key.scopes, v_tenant.allowed_scopes);
    PERFORM api_key_mgmt_internal.check_allowlists(issue_api_key.allowed_providers, issue_api_key.allowed_models);
    PERFORM api_key_mgmt_internal.check_future('expires_at', issue_api_key.expires_at);
    PERFORM api_key_mgmt_internal.check_object('metadata', issue_api_key.metadata);
    IF issue_api_key.created_by IS NOT NULL THEN
        PERFORM api_key_mgmt_internal.check_text('created_by', issue_api_key.created_by, 200);
    END IF;
    PERFORM api_key_mgmt_internal.actor();
    IF issue_api_key.environment IS NULL OR issue_api_key.environment NOT IN ('live', 'test') THEN
        RAISE EXCEPTION 'environment must be ''live'' or ''test''' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_new FROM api_key_mgmt_internal.new_key(v_tenant.key_type_prefix, issue_api_key.environment);
    INSERT INTO api_key_mgmt.api_keys AS k
        (tenant_id, name, environment, display_prefix, key_hash, scopes, allowed_providers,
         allowed_models, expires_at, metadata, created_by)
    VALUES (v_tenant.id, issue_api_key.name, issue_api_key.environment, v_new.display_prefix,
            v_new.key_hash, issue_api_key.scopes, issue_api_key.allowed_providers,
            issue_api_key.allowed_models, issue_api_key.expires_at, issue_api_key.metadata,
            COALESCE(issue_api_key.created_by, api_key_mgmt_internal.actor()))
    RETURNING k.id INTO issue_api_key.key_id;
    PERFORM api_key_mgmt_internal.audit(v_tenant.id, 'key.issued', 'api_key', issue_api_key.key_id::text,
        pg_catalog.jsonb_build_object('name', issue_api_key.name, 'scopes', issue_api_key.scopes,
            'environment', issue_api_key.environment, 'display_prefix', v_new.display_prefix,
            'expires_at', issue_api_key.expires_at));
    IF issue_api_key.daily_cap IS NOT NULL OR issue_api_key.monthly_cap IS NOT NULL
       OR issue_api_key.credits IS NOT NULL THEN
        PERFORM api_key_mgmt.set_key_caps(issue_api_key.key_id, issue_api_key.daily_cap,
            issue_api_key.monthly_cap, issue_api_key.credits);
    END IF;
    issue_api_key.api_key := v_new.api_key;
    issue_api_key.display_prefix := v_new.display_prefix;
    RETURN NEXT;
END
$$;

-- import_api_key(tenant_id, existing_key, name, scopes, expires_at, environment,
--                allowed_providers, allowed_models, metadata, created_by) -> (key_id, display_prefix)
-- Registers a key issued elsewhere (its SHA-256 only) so it keeps working. A native key
-- keeps its environment; a foreign key must start with a prefix listed in the setting
-- api_key_mgmt.import_prefixes, which is also what makes validation look it up.
CREATE OR REPLACE FUNCTION api_key_mgmt_impl.import_api_key(
    tenant_id uuid,
    existing_key text,
    name text,
    scopes text[],
    expires_at timestamptz DEFAULT NULL,
    environment text DEFAULT NULL,
    allowed_providers text[] DEFAULT NULL,
    allowed_models text[] DEFAULT NULL,
    metadata jsonb DEFAULT '{}',
    created_by text DEFAULT NULL
) RETURNS TABLE (key_id uuid, display_prefix text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tenant api_key_mgmt.tenants;
    v_shape text;
    v_env text := import_api_key.environment;
    v_hash bytea;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(import_api_key.tenant_id, 'admin');
    v_tenant := api_key_mgmt_internal.tenant_row(import_api_key.tenant_id, true);
    IF import_api_key.existing_key IS NULL THEN
        RAISE EXCEPTION 'existing_key must not be NULL' USING ERRCODE = '22004';
    END IF;
    v_shape := api_key_mgmt_internal.key_shape(import_api_key.existing_key);
    IF v_shape = 'bad_checksum' THEN
        RAISE EXCEPTION 'existing_key has the native key shape but its checksum does not match'
            USING ERRCODE = '22023', HINT = 'The key was probably copied incompletely.';
    ELSIF v_shape = 'malformed' THEN
        RAISE EXCEPTION 'existing_key is not a native key and does not start with a prefix listed in api_key_mgmt.import_prefixes'
            USING ERRCODE = '22023',
                  HINT = 'Set api_key_mgmt.import_prefixes (e.g. ALTER DATABASE ... SET api_key_mgmt.import_prefixes = ''oldprefix_''); foreign keys must be 16 to 512 visible ASCII characters.';
    ELSIF v_shape = 'native' THEN
        v_env := COALESCE(v_env, api_key_mgmt_internal.key_environment(import_api_key.existing_key));
        IF v_env IS DISTINCT FROM api_key_mgmt_internal.key_environment(import_api_key.existing_key) THEN
            RAISE EXCEPTION 'environment does not match the environment named in the key' USING ERRCODE = '22023';
        END IF;
    END IF;
    v_env := COALESCE(v_env, 'live');
    IF v_env NOT IN ('live', 'test') THEN
        RAISE EXCEPTION 'environment must be ''live'' or ''test''' USING ERRCODE = '22023';
    END IF;
    PERFORM api_key_mgmt_internal.check_text('name', import_api_key.name, 200);
    PERFORM api_key_mgmt_internal.check_scopes('scopes', import_api_key.scopes, v_tenant.allowed_scopes);
    PERFORM api_key_mgmt_internal.check_allowlists(import_api_key.allowed_providers, import_api_key.allowed_models);
    PERFORM api_key_mgmt_internal.check_future('expires_at', import_api_key.expires_at);
    PERFORM api_key_mgmt_internal.check_object('metadata', import_api_key.metadata);
    IF import_api_key.created_by IS NOT NULL THEN
        PERFORM api_key_mgmt_internal.check_text('created_by', import_api_key.created_by, 200);
    END IF;
    PERFORM api_key_mgmt_internal.actor();
    v_hash := api_key_mgmt_internal.hash_key(import_api_key.existing_key);
    IF EXISTS (SELECT FROM api_key_mgmt.api_keys k WHERE k.key_hash = v_hash) THEN
        RAISE EXCEPTION 'this key is already registered' USING ERRCODE = '23505';
    END IF;
    import_api_key.display_prefix := api_key_mgmt_internal.display_prefix(import_api_key.existing_key);
    BEGIN
        INSERT INTO api_key_mgmt.api_keys AS k
            (tenant_id, name, environment, display_prefix, key_hash, scopes, allowed_providers,
             allowed_models, expires_at, metadata, created_by, imported)
        VALUES (v_tenant.id, import_api_key.name, v_env, import_api_key.display_prefix, v_hash,
                import_api_key.scopes, import_api_key.allowed_providers, import_api_key.allowed_models,
                import_api_key.expires_at, import_api_key.metadata,
                COALESCE(import_api_key.created_by, api_key_mgmt_internal.actor()), true)
        RETURNING k.id INTO import_api_key.key_id;
    EXCEPTION WHEN unique_violation THEN
        -- A concurrent import of the same key; the index's detail would show the hash.
        RAISE EXCEPTION 'this key is already registered' USING ERRCODE = '23505';
    END;
    PERFORM api_key_mgmt_internal.audit(v_tenant.id, 'key.imported', 'api_key', import_api_key.key_id::text,
        pg_catalog.jsonb_build_object('name', import_api_key.name, 'scopes', import_api_key.scopes,
            'environment', v_env, 'display_prefix', import_api_key.display_prefix));
    RETURN NEXT;
END
$$;

-- update_api_key(key_id, changes jsonb) -> void. Fields: name, scopes,
-- allowed_providers, allowed_models, expires_at, metadata; a JSON null clears
-- allowed_providers, allowed_models (any) or expires_at (never).
CREATE OR REPLACE FUNCTION api_key_mgmt_impl.update_api_key(key_id uuid, changes jsonb) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v api_key_mgmt.api_keys;
    v_tenant api_key_mgmt.tenants;
    v_field text;
BEGIN
    PERFORM api_key_mgmt_internal.check_object('changes', changes);
    SELECT f INTO v_field FROM pg_catalog.jsonb_object_keys(changes) AS f
     WHERE f NOT IN ('name', 'scopes', 'allowed_providers', 'allowed_models', 'expires_at', 'metadata')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown field "%" in changes', v_field USING ERRCODE = '22023',
            HINT = 'Fields: name, scopes, allowed_providers, allowed_models, expires_at, metadata.';
    END IF;
    v := api_key_mgmt_internal.key_row(update_api_key.key_id);
    PERFORM api_key_mgmt_internal.authorize_key(v);
    IF v.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'API key % is revoked and cannot be changed', v.id USING ERRCODE = '55000';
    END IF;
    v_tenant := api_key_mgmt_internal.tenant_row(v.tenant_id, false);
    IF changes ? 'name' THEN
        v.name := api_key_mgmt_internal.json_text('changes.name', changes -> 'name');
        PERFORM api_key_mgmt_internal.check_text('name', v.name, 200);
    END IF;
    IF changes ? 'scopes' THEN
        v.scopes := api_key_mgmt_internal.text_array('scopes', changes -> 'scopes');
        PERFORM api_key_mgmt_internal.check_scopes('scopes', v.scopes, v_tenant.allowed_scopes);
    END IF;
    IF changes ? 'allowed_providers' THEN
        v.allowed_providers := api_key_mgmt_internal.text_array('allowed_providers', changes -> 'allowed_providers');
    END IF;
    IF changes ? 'allowed_models' THEN
        v.allowed_models := api_key_mgmt_internal.text_array('allowed_models', changes -> 'allowed_models');
    END IF;
    PERFORM api_key_mgmt_internal.check_allowlists(v.allowed_providers, v.allowed_models);
    IF changes ? 'expires_at' THEN
        v.expires_at := (changes ->> 'expires_at')::timestamptz;
        PERFORM api_key_mgmt_internal.check_future('expires_at', v.expires_at);
    END IF;
    IF changes ? 'metadata' THEN
        v.metadata := changes -> 'metadata';
        PERFORM api_key_mgmt_internal.check_object('metadata', v.metadata);
    END IF;
    UPDATE api_key_mgmt.api_keys k
       SET name = v.name, scopes = v.scopes, allowed_providers = v.allowed_providers,
           allowed_models = v.allowed_models, expires_at = v.expires_at, metadata = v.metadata
     WHERE k.id = v.id;
    PERFORM api_key_mgmt_internal.audit(v.tenant_id, 'key.updated', 'api_key', v.id::text,
        pg_catalog.jsonb_build_object('fields', (SELECT pg_catalog.jsonb_agg(k ORDER BY k) FROM pg_catalog.jsonb_object_keys(changes) k)));
END
$$;

-- set_secret_labels(secret_id, project, tags) -> void: a tenant secret's project (by
-- name; NULL: none) and tags (tenant admins).
CREATE OR REPLACE FUNCTION api_key_mgmt_impl.set_secret_labels(secret_id uuid, project text, tags text[] DEFAULT '{}')
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tenant uuid;
    v_project uuid;
BEGIN
    v_tenant := api_key_mgmt_internal.authorize_secret(set_secret_labels.secret_id);
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'tenant secret % does not exist', set_secret_labels.secret_id USING ERRCODE = '42704',
            HINT = 'Platform-wide secrets have no project or tags.';
    END IF;
    PERFORM api_key_mgmt_internal.check_flat('tags', set_secret_labels.tags);
    IF set_secret_labels.tags IS NULL OR pg_catalog.array_position(set_secret_labels.tags, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'tags must not be or contain NULL' USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.cardinality(set_secret_labels.tags) > 32
       OR EXISTS (SELECT FROM pg_catalog.unnest(set_secret_labels.tags) t WHERE t !~ '^[a-z0-9][a-z0-9_.-]{0,62}$') THEN
        RAISE EXCEPTION 'tags must be at most 32 of lower-case letters, digits, _ . -' USING ERRCODE = '22023';
    END IF;
    v_project := api_key_mgmt_internal.project_id(v_tenant, set_secret_labels.project);
    UPDATE api_key_mgmt.tenant_secrets s
       SET project_id = v_project,
           tags = ARRAY(SELECT DISTINCT t FROM pg_catalog.unnest(set_secret_labels.tags) t ORDER BY t)
     WHERE s.id = set_secret_labels.secret_id;
    PERFORM api_key_mgmt_internal.audit(v_tenant, 'secret.labelled', 'secret', set_secret_labels.secret_id::text,
        pg_catalog.jsonb_build_object('project', set_secret_labels.project, 'tags', set_secret_labels.tags));
END
$$;

-- update_agent_tool(tenant_id, tool_key, changes jsonb) -> void: change name, secrets,
-- environments, risk_level, max_session, max_uses or enabled (tenant admins).
-- Narrowing what a tool declared does not shorten sessions already open.
CREATE OR REPLACE FUNCTION api_key_mgmt_impl.update_agent_tool(tenant_id uuid, tool_key text, changes jsonb)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v api_key_mgmt.agent_tools;
    v_bad text;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(update_agent_tool.tenant_id, 'admin');
    PERFORM api_key_mgmt_internal.check_object('changes', update_agent_tool.changes);
    v := api_key_mgmt_internal.tool_row(update_agent_tool.tenant_id, update_agent_tool.tool_key);
    SELECT k INTO v_bad FROM pg_catalog.jsonb_object_keys(update_agent_tool.changes) k
     WHERE k NOT IN ('name', 'secrets', 'environments', 'risk_level', 'max_session', 'max_uses', 'enabled') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown change "%"', v_bad USING ERRCODE = '22023',
            HINT = 'name, secrets, environments, risk_level, max_session, max_uses, enabled';
    END IF;
    IF update_agent_tool.changes ? 'name' THEN
        v.name := api_key_mgmt_internal.json_text('changes.name', update_agent_tool.changes -> 'name');
        PERFORM api_key_mgmt_internal.check_text('name', v.name, 200);
    END IF;
    IF update_agent_tool.changes ? 'secrets' THEN
        v.secrets := api_key_mgmt_internal.text_array('secrets', update_agent_tool.changes -> 'secrets');
        PERFORM api_key_mgmt_internal.check_names('secrets', v.secrets, 64);
    END IF;
    IF update_agent_tool.changes ? 'environments' THEN
        v.environments := api_key_mgmt_internal.text_array('environments', update_agent_tool.changes -> 'environments');
        PERFORM api_key_mgmt_internal.check_environments('environments', v.environments);
    END IF;
    IF update_agent_tool.changes ? 'risk_level' THEN
        v.risk_level := api_key_mgmt_internal.json_text('changes.risk_level', update_agent_tool.changes -> 'risk_level');
    END IF;
    IF update_agent_tool.changes ? 'max_session' THEN
        v.max_session := (update_agent_tool.changes ->> 'max_session')::interval;
    END IF;
    IF update_agent_tool.changes ? 'max_uses' THEN
        v.max_uses := (update_agent_tool.changes ->> 'max_uses')::integer;
    END IF;
    PERFORM api_key_mgmt_internal.check_tool_policy(v.risk_level, v.max_session, v.max_uses);
    IF update_agent_tool.changes ? 'enabled' THEN
        v.enabled := (update_agent_tool.changes ->> 'enabled')::boolean;
        IF v.enabled IS NULL THEN
            RAISE EXCEPTION 'enabled must be true or false' USING ERRCODE = '22023';
        END IF;
    END IF;
    UPDATE api_key_mgmt.agent_tools t
       SET name = v.name, secrets = v.secrets, environments = v.environments, risk_level = v.risk_level,
           max_session = v.max_session, max_uses = v.max_uses, enabled = v.enabled
     WHERE t.id = v.id;
    PERFORM api_key_mgmt_internal.audit(update_agent_tool.tenant_id, 'agent_tool.updated', 'agent_tool', v.id::text,
        update_agent_tool.changes);
END
$$;


-- 4. audit_queue_status() gains a column: dropped and created again, with its grant.
DROP FUNCTION api_key_mgmt.audit_queue_status();
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
REVOKE ALL ON FUNCTION api_key_mgmt.audit_queue_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_key_mgmt.audit_queue_status() TO api_key_mgmt_admin;

-- 4b. Monitoring (issue 17): the monitoring role, the counters, the metrics view, the
--     health check's body (its entry point is made in step 5).
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

-- 5. The entry points (as sql/098_entry_points.sql of 0.2.0 makes them), then each
--    body's grants move to its entry point: the body is granted to no one.
DO $entry_points$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid, p.proname, p.provolatile, p.proisstrict
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'api_key_mgmt_impl'::pg_catalog.regnamespace
         ORDER BY p.proname, p.oid
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE FUNCTION api_key_mgmt.%I(%s) RETURNS %s LANGUAGE c %s %s SECURITY INVOKER AS %L, %L',
            f.proname,
            pg_catalog.pg_get_function_arguments(f.oid),
            pg_catalog.pg_get_function_result(f.oid),
            CASE f.provolatile WHEN 'i' THEN 'IMMUTABLE' WHEN 's' THEN 'STABLE' ELSE 'VOLATILE' END,
            CASE WHEN f.proisstrict THEN 'STRICT' ELSE 'CALLED ON NULL INPUT' END,
            'MODULE_PATHNAME', 'akm_call_as_caller');
        EXECUTE pg_catalog.format(
            'COMMENT ON FUNCTION api_key_mgmt.%I(%s) IS %L',
            f.proname,
            pg_catalog.pg_get_function_identity_arguments(f.oid),
            'api_key_mgmt: runs api_key_mgmt_impl.' || f.proname
                || ' as the extension owner, with the calling role recorded for authorization and audit');
    END LOOP;
END
$entry_points$;

DO $grants$
DECLARE
    b record;
    a record;
    v_entry pg_catalog.regprocedure;
BEGIN
    FOR b IN
        SELECT p.oid, p.proname, p.proowner, p.proargtypes, p.proacl FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'api_key_mgmt_impl'::pg_catalog.regnamespace
         ORDER BY p.proname, p.oid
    LOOP
        SELECT e.oid INTO STRICT v_entry FROM pg_catalog.pg_proc e
         WHERE e.pronamespace = 'api_key_mgmt'::pg_catalog.regnamespace
           AND e.proname = b.proname AND e.proargtypes = b.proargtypes;
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_entry);
        FOR a IN
            SELECT x.grantee, x.is_grantable
              FROM pg_catalog.aclexplode(b.proacl) WITH ORDINALITY AS x(grantor, grantee, privilege_type, is_grantable, n)
             WHERE x.grantee <> b.proowner AND x.privilege_type = 'EXECUTE'
             ORDER BY x.n
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s', v_entry,
                CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END,
                CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', b.oid::pg_catalog.regprocedure);
        FOR a IN
            SELECT DISTINCT x.grantee FROM pg_catalog.aclexplode(b.proacl) AS x
             WHERE x.grantee <> b.proowner AND x.grantee <> 0
        LOOP
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %I CASCADE',
                b.oid::pg_catalog.regprocedure, pg_catalog.pg_get_userbyid(a.grantee));
        END LOOP;
    END LOOP;
END
$grants$;

-- 6. The new internal helpers are for the extension's own SQL only.
REVOKE ALL ON FUNCTION api_key_mgmt_internal.check_flat(text, anyarray),
    api_key_mgmt_internal.json_text(text, jsonb) FROM PUBLIC;

-- 7. Monitoring grants (as sql/099_grants.sql of 0.2.0 gives them).
REVOKE ALL ON FUNCTION api_key_mgmt.metric_counters() FROM PUBLIC;
REVOKE ALL ON api_key_mgmt.metrics FROM PUBLIC;
GRANT USAGE ON SCHEMA api_key_mgmt TO api_key_mgmt_monitor, pg_monitor;
GRANT SELECT ON api_key_mgmt.metrics TO api_key_mgmt_monitor, pg_monitor, api_key_mgmt_admin;
GRANT EXECUTE ON FUNCTION api_key_mgmt.metric_counters(), api_key_mgmt.health()
    TO api_key_mgmt_monitor, pg_monitor, api_key_mgmt_admin;
