-- Tenants and the API key lifecycle: create_tenant, update_tenant, disable_tenant,
-- enable_tenant, issue_api_key, import_api_key, revoke_api_key, rotate_api_key,
-- update_api_key; views api_key_status and keys_due_for_rotation.
--
-- Every function here is SECURITY DEFINER with search_path fixed to pg_catalog, pg_temp
-- and schema-qualifies every reference. Errors carry a specific SQLSTATE and never a
-- key: 22004 NULL where a value is required, 22023 a bad value, 42704 no such tenant
-- or key, 55000 the object's state forbids it, 23505 a duplicate.

-- actor() -> text: who is acting, for created_by and the audit log: the JWT sub, the
-- setting api_key_mgmt.user_id, or the database role. 22023 when the user id is longer
-- than the 200 characters a created_by column holds (checked before any write, so no
-- constraint of a table ever refuses it and prints its row).
CREATE FUNCTION api_key_mgmt_internal.actor() RETURNS text
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

-- check_text(what, value, max_len): 22004 for NULL, 22023 for empty or too long.
CREATE FUNCTION api_key_mgmt_internal.check_text(what text, value text, max_len integer)
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', what USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.char_length(value) NOT BETWEEN 1 AND max_len THEN
        RAISE EXCEPTION '% must be 1 to % characters long', what, max_len USING ERRCODE = '22023';
    END IF;
END
$$;

-- check_range(what, value, lo, hi): 22004 NULL, 22023 outside lo..hi.
CREATE FUNCTION api_key_mgmt_internal.check_range(what text, value bigint, lo bigint, hi bigint)
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', what USING ERRCODE = '22004';
    END IF;
    IF value NOT BETWEEN lo AND hi THEN
        RAISE EXCEPTION '% must be % to %', what, lo, hi USING ERRCODE = '22023';
    END IF;
END
$$;

-- check_scopes(what, scopes, plan): 22004 NULL array or element, 22023 empty, bad
-- syntax or (when plan is given) a scope outside the tenant's plan.
CREATE FUNCTION api_key_mgmt_internal.check_scopes(what text, scopes text[], plan text[])
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
CREATE FUNCTION api_key_mgmt_internal.check_allowlists(providers text[], models text[])
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

-- check_future(what, ts): a timestamp given must lie in the future.
CREATE FUNCTION api_key_mgmt_internal.check_future(what text, ts timestamptz)
    RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF ts IS NOT NULL AND ts <= pg_catalog.now() THEN
        RAISE EXCEPTION '% must be in the future', what USING ERRCODE = '22023';
    END IF;
END
$$;

-- check_object(what, value): jsonb must be an object.
CREATE FUNCTION api_key_mgmt_internal.check_object(what text, value jsonb)
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', what USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.jsonb_typeof(value) <> 'object' THEN
        RAISE EXCEPTION '% must be a JSON object', what USING ERRCODE = '22023';
    END IF;
END
$$;

-- tenant_row(tenant_id, for_keys): the tenant, locked against concurrent changes;
-- 22004 NULL id, 42704 no such tenant, 55000 disabled (when for_keys).
CREATE FUNCTION api_key_mgmt_internal.tenant_row(p_tenant_id uuid, for_keys boolean)
    RETURNS api_key_mgmt.tenants LANGUAGE plpgsql AS $$
DECLARE
    v api_key_mgmt.tenants;
BEGIN
    IF p_tenant_id IS NULL THEN
        RAISE EXCEPTION 'tenant_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO v FROM api_key_mgmt.tenants t WHERE t.id = p_tenant_id FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = '42704';
    END IF;
    IF for_keys AND v.disabled_at IS NOT NULL THEN
        RAISE EXCEPTION 'tenant % is disabled', p_tenant_id USING ERRCODE = '55000';
    END IF;
    RETURN v;
END
$$;

-- key_row(key_id): the key, locked FOR UPDATE; 22004 NULL id, 42704 no such key.
CREATE FUNCTION api_key_mgmt_internal.key_row(p_key_id uuid)
    RETURNS api_key_mgmt.api_keys LANGUAGE plpgsql AS $$
DECLARE
    v api_key_mgmt.api_keys;
BEGIN
    IF p_key_id IS NULL THEN
        RAISE EXCEPTION 'key_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO v FROM api_key_mgmt.api_keys k WHERE k.id = p_key_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'API key % does not exist', p_key_id USING ERRCODE = '42704';
    END IF;
    RETURN v;
END
$$;

-- authorize_key(key): 42501 unless the caller administers the key's tenant, or is a
-- member acting on a key it created itself.
CREATE FUNCTION api_key_mgmt_internal.authorize_key(v api_key_mgmt.api_keys) RETURNS void
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF api_key_mgmt_internal.authorize(v.tenant_id, 'member') = 'member'
       AND v.created_by IS DISTINCT FROM api_key_mgmt_internal.actor() THEN
        RAISE EXCEPTION 'members may manage only the keys they created' USING ERRCODE = '42501';
    END IF;
END
$$;

-- create_tenant(name, allowed_scopes, external_id, key_type_prefix, max_key_age, settings) -> uuid
CREATE FUNCTION api_key_mgmt_impl.create_tenant(
    name text,
    allowed_scopes text[] DEFAULT '{*}',
    external_id text DEFAULT NULL,
    key_type_prefix text DEFAULT 'sk',
    max_key_age interval DEFAULT '90 days',
    settings jsonb DEFAULT '{}'
) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    PERFORM api_key_mgmt_internal.check_text('name', create_tenant.name, 200);
    PERFORM api_key_mgmt_internal.check_scopes('allowed_scopes', create_tenant.allowed_scopes, NULL);
    IF create_tenant.external_id IS NOT NULL THEN
        PERFORM api_key_mgmt_internal.check_text('external_id', create_tenant.external_id, 200);
    END IF;
    IF create_tenant.key_type_prefix IS NULL OR create_tenant.key_type_prefix !~ '^[a-z][a-z0-9]{1,9}$' THEN
        RAISE EXCEPTION 'key_type_prefix must be 2 to 10 characters: a lower-case letter, then lower-case letters or digits'
            USING ERRCODE = '22023';
    END IF;
    IF create_tenant.max_key_age <= '0'::interval THEN
        RAISE EXCEPTION 'max_key_age must be positive (or NULL for no maximum)' USING ERRCODE = '22023';
    END IF;
    PERFORM api_key_mgmt_internal.check_object('settings', create_tenant.settings);
    BEGIN
        INSERT INTO api_key_mgmt.tenants (name, external_id, allowed_scopes, key_type_prefix, max_key_age, settings)
        VALUES (create_tenant.name, create_tenant.external_id, create_tenant.allowed_scopes,
                create_tenant.key_type_prefix, create_tenant.max_key_age, create_tenant.settings)
        RETURNING id INTO v_id;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'a tenant with external_id "%" already exists', create_tenant.external_id
            USING ERRCODE = '23505';
    END;
    PERFORM api_key_mgmt_internal.audit(v_id, 'tenant.created', 'tenant', v_id::text,
        pg_catalog.jsonb_build_object('name', create_tenant.name, 'external_id', create_tenant.external_id,
                                      'allowed_scopes', create_tenant.allowed_scopes));
    RETURN v_id;
END
$$;

-- update_tenant(tenant_id, changes jsonb) -> void. Fields: name, external_id,
-- allowed_scopes, key_type_prefix, max_key_age, settings; a JSON null clears
-- external_id or max_key_age.
CREATE FUNCTION api_key_mgmt_impl.update_tenant(tenant_id uuid, changes jsonb) RETURNS void
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

-- text_array(what, value jsonb) -> text[]: a JSON array of strings, else 22023/22004.
CREATE FUNCTION api_key_mgmt_internal.text_array(what text, value jsonb) RETURNS text[]
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL OR pg_catalog.jsonb_typeof(value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF pg_catalog.jsonb_typeof(value) <> 'array' OR EXISTS (
        SELECT FROM pg_catalog.jsonb_array_elements(value) AS e WHERE pg_catalog.jsonb_typeof(e) <> 'string') THEN
        RAISE EXCEPTION '% must be a JSON array of strings', what USING ERRCODE = '22023';
    END IF;
    RETURN ARRAY(SELECT pg_catalog.jsonb_array_elements_text(value));
END
$$;

-- disable_tenant(tenant_id) -> boolean: every key of the tenant answers tenant_disabled.
-- Returns false when the tenant was already disabled.
CREATE FUNCTION api_key_mgmt_impl.disable_tenant(tenant_id uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v api_key_mgmt.tenants;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    v := api_key_mgmt_internal.tenant_row(disable_tenant.tenant_id, false);
    IF v.disabled_at IS NOT NULL THEN
        RETURN false;
    END IF;
    UPDATE api_key_mgmt.tenants t SET disabled_at = pg_catalog.now() WHERE t.id = v.id;
    PERFORM api_key_mgmt_internal.audit(v.id, 'tenant.disabled', 'tenant', v.id::text);
    RETURN true;
END
$$;

-- enable_tenant(tenant_id) -> boolean: undoes disable_tenant; false when not disabled.
CREATE FUNCTION api_key_mgmt_impl.enable_tenant(tenant_id uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v api_key_mgmt.tenants;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    v := api_key_mgmt_internal.tenant_row(enable_tenant.tenant_id, false);
    IF v.disabled_at IS NULL THEN
        RETURN false;
    END IF;
    UPDATE api_key_mgmt.tenants t SET disabled_at = NULL WHERE t.id = v.id;
    PERFORM api_key_mgmt_internal.audit(v.id, 'tenant.enabled', 'tenant', v.id::text);
    RETURN true;
END
$$;

-- issue_api_key(tenant_id, name, scopes, expires_at, environment, allowed_providers,
--               allowed_models, metadata, created_by, daily_cap, monthly_cap, credits)
--               -> (key_id, api_key, display_prefix)
-- The only time the key is ever shown. Caps and credits given here are set as by
-- set_key_caps (which needs the tenant role admin).
CREATE FUNCTION api_key_mgmt_impl.issue_api_key(
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
CREATE FUNCTION api_key_mgmt_impl.import_api_key(
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

-- revoke_api_key(key_id, reason) -> boolean: the key answers revoked from now on.
-- Returns false (and changes nothing) when it was already revoked.
CREATE FUNCTION api_key_mgmt_impl.revoke_api_key(key_id uuid, reason text DEFAULT NULL) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v api_key_mgmt.api_keys := api_key_mgmt_internal.key_row(revoke_api_key.key_id);
BEGIN
    PERFORM api_key_mgmt_internal.authorize_key(v);
    IF pg_catalog.char_length(revoke_api_key.reason) > 500 THEN
        RAISE EXCEPTION 'reason must be at most 500 characters' USING ERRCODE = '22023';
    END IF;
    IF v.revoked_at IS NOT NULL THEN
        RETURN false;
    END IF;
    UPDATE api_key_mgmt.api_keys k
       SET revoked_at = pg_catalog.now(), revoke_reason = revoke_api_key.reason
     WHERE k.id = v.id;
    PERFORM api_key_mgmt_internal.audit(v.tenant_id, 'key.revoked', 'api_key', v.id::text,
        pg_catalog.jsonb_build_object('reason', revoke_api_key.reason));
    RETURN true;
END
$$;

-- rotate_api_key(key_id, grace) -> (new_key_id, api_key, display_prefix, old_key_valid_until)
-- Issues a replacement with the same tenant, name, environment, scopes, allowlists and
-- metadata (and the same lifetime, when the old key had an expiry), shown once. The old
-- key keeps validating for `grace`, then answers `rotated`.
CREATE FUNCTION api_key_mgmt_impl.rotate_api_key(key_id uuid, grace interval DEFAULT '24 hours')
    RETURNS TABLE (new_key_id uuid, api_key text, display_prefix text, old_key_valid_until timestamptz)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old api_key_mgmt.api_keys := api_key_mgmt_internal.key_row(rotate_api_key.key_id);
    v_tenant api_key_mgmt.tenants;
    v_new record;
    v_grace_until timestamptz;
BEGIN
    PERFORM api_key_mgmt_internal.authorize_key(v_old);
    v_tenant := api_key_mgmt_internal.tenant_row(v_old.tenant_id, true);
    IF rotate_api_key.grace IS NULL THEN
        RAISE EXCEPTION 'grace must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF rotate_api_key.grace < '0'::interval OR rotate_api_key.grace > '30 days'::interval THEN
        RAISE EXCEPTION 'grace must be between 0 and 30 days' USING ERRCODE = '22023';
    END IF;
    IF v_old.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'API key % is revoked; issue a new key instead', v_old.id USING ERRCODE = '55000';
    END IF;
    IF v_old.rotated_to IS NOT NULL THEN
        RAISE EXCEPTION 'API key % was already rotated (to %)', v_old.id, v_old.rotated_to
            USING ERRCODE = '55000';
    END IF;
    PERFORM api_key_mgmt_internal.check_scopes('scopes', v_old.scopes, v_tenant.allowed_scopes);
    SELECT * INTO v_new FROM api_key_mgmt_internal.new_key(v_tenant.key_type_prefix, v_old.environment);
    INSERT INTO api_key_mgmt.api_keys AS k
        (tenant_id, name, environment, display_prefix, key_hash, scopes, allowed_providers,
         allowed_models, expires_at, metadata, created_by, rotated_from)
    VALUES (v_old.tenant_id, v_old.name, v_old.environment, v_new.display_prefix, v_new.key_hash,
            v_old.scopes, v_old.allowed_providers, v_old.allowed_models,
            pg_catalog.now() + (v_old.expires_at - v_old.created_at), v_old.metadata,
            api_key_mgmt_internal.actor(), v_old.id)
    RETURNING k.id INTO rotate_api_key.new_key_id;
    v_grace_until := pg_catalog.now() + rotate_api_key.grace;
    UPDATE api_key_mgmt.api_keys k
       SET rotated_to = rotate_api_key.new_key_id, grace_until = v_grace_until
     WHERE k.id = v_old.id;
    rotate_api_key.api_key := v_new.api_key;
    rotate_api_key.display_prefix := v_new.display_prefix;
    rotate_api_key.old_key_valid_until := LEAST(v_grace_until, v_old.expires_at);
    PERFORM api_key_mgmt_internal.audit(v_old.tenant_id, 'key.rotated', 'api_key', v_old.id::text,
        pg_catalog.jsonb_build_object('new_key_id', rotate_api_key.new_key_id, 'grace', rotate_api_key.grace,
                                      'display_prefix', v_new.display_prefix));
    RETURN NEXT;
END
$$;

-- update_api_key(key_id, changes jsonb) -> void. Fields: name, scopes,
-- allowed_providers, allowed_models, expires_at, metadata; a JSON null clears
-- allowed_providers, allowed_models (any) or expires_at (never).
CREATE FUNCTION api_key_mgmt_impl.update_api_key(key_id uuid, changes jsonb) RETURNS void
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

-- api_key_status: every key with its lifecycle status (never the hash or the key).
-- status: revoked | rotated (grace over) | expired | rotating (in grace) | active.
CREATE VIEW api_key_mgmt.api_key_status WITH (security_invoker = true) AS
SELECT k.id AS key_id, k.tenant_id, k.name, k.environment, k.display_prefix, k.scopes,
       k.allowed_providers, k.allowed_models,
       CASE WHEN k.revoked_at IS NOT NULL THEN 'revoked'
            WHEN k.grace_until <= pg_catalog.now() THEN 'rotated'
            WHEN k.expires_at <= pg_catalog.now() THEN 'expired'
            WHEN k.grace_until IS NOT NULL THEN 'rotating'
            ELSE 'active' END AS status,
       k.expires_at, k.revoked_at, k.revoke_reason, k.rotated_from, k.rotated_to, k.grace_until,
       k.imported, k.created_by, k.metadata, k.created_at, k.updated_at
  FROM api_key_mgmt.api_keys k;

-- keys_due_for_rotation: live keys (not revoked, rotated or expired) older than their
-- tenant's max_key_age, or within 7 days of it; overdue once past it.
CREATE VIEW api_key_mgmt.keys_due_for_rotation WITH (security_invoker = true) AS
SELECT k.id AS key_id, k.tenant_id, k.name, k.environment, k.display_prefix, k.created_at,
       k.created_at + t.max_key_age AS rotate_by,
       k.created_at + t.max_key_age <= pg_catalog.now() AS overdue
  FROM api_key_mgmt.api_keys k
  JOIN api_key_mgmt.tenants t ON t.id = k.tenant_id
 WHERE t.max_key_age IS NOT NULL
   AND k.revoked_at IS NULL
   AND k.rotated_to IS NULL
   AND (k.expires_at IS NULL OR k.expires_at > pg_catalog.now())
   AND k.created_at + t.max_key_age <= pg_catalog.now() + '7 days'::interval;
