-- api_key_mgmt: bootstrap. CREATE EXTENSION makes schema api_key_mgmt (control file)
-- and runs the files of sql/ in order: 001 schema, 002 internal helpers, 003 tables,
-- 004 key management, 005 validation, 099 grants.
--
-- The extension must be installed by a superuser: it defines C functions and creates
-- its roles when they are missing.

-- Internal helpers live in a schema of their own, never exposed to API clients.
CREATE SCHEMA api_key_mgmt_internal;
COMMENT ON SCHEMA api_key_mgmt_internal IS
    'api_key_mgmt: internal helpers; not an API, not to be exposed through PostgREST';
-- The bodies of the public SECURITY DEFINER functions: each runs as the extension's
-- owner and is reached only through the entry point of the same name in api_key_mgmt
-- (sql/098_entry_points.sql, src/caller.rs), which records the role that called it.
-- Nothing here is granted to anyone.
CREATE SCHEMA api_key_mgmt_impl;
COMMENT ON SCHEMA api_key_mgmt_impl IS
    'api_key_mgmt: bodies of the SECURITY DEFINER functions; called only through api_key_mgmt''s entry points';
COMMENT ON SCHEMA api_key_mgmt IS
    'api_key_mgmt: API keys and tenants (see README for the SQL API)';

-- Roles are cluster-wide, so they are created only when missing and are not members
-- of the extension (DROP EXTENSION leaves them).
-- Two databases creating the extension at once may both find a role missing: the
-- loser of that race finds it created and carries on.
DO $roles$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM (VALUES
        ('api_key_mgmt_admin', 'api_key_mgmt: platform administrators (tenants, keys and secrets of every tenant)'),
        ('api_key_mgmt_service', 'api_key_mgmt: backend services (validate keys, read secrets)'),
        ('api_key_mgmt_user', 'api_key_mgmt: tenant users (members, through PostgREST or an app server)')) AS v(name, note)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r.name) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r.name);
                EXECUTE pg_catalog.format('COMMENT ON ROLE %I IS %L', r.name, r.note);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$roles$;
