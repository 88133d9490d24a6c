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
COMMENT ON SCHEMA api_key_mgmt IS
    'api_key_mgmt: API keys and tenants (see README for the SQL API)';

-- Roles are cluster-wide, so they are created only when missing and are not members
-- of the extension (DROP EXTENSION leaves them).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'api_key_mgmt_admin') THEN
        CREATE ROLE api_key_mgmt_admin NOLOGIN;
        COMMENT ON ROLE api_key_mgmt_admin IS
            'api_key_mgmt: platform administrators (tenants, keys of every tenant)';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'api_key_mgmt_service') THEN
        CREATE ROLE api_key_mgmt_service NOLOGIN;
        COMMENT ON ROLE api_key_mgmt_service IS
            'api_key_mgmt: backend services (validate keys)';
    END IF;
END
$roles$;
