-- Secure by default, checked from the catalogs so new objects are covered too.

-- Every SECURITY DEFINER function of the extension fixes its search_path.
SELECT p.oid::regprocedure AS definer_without_search_path
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'api_key_mgmt'
 WHERE p.prosecdef
   AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%');

-- No function of the extension is executable by PUBLIC.
SELECT p.oid::regprocedure AS public_executable
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'api_key_mgmt'
 WHERE has_function_privilege('public', p.oid, 'EXECUTE');

-- Every table has row-level security enabled and forced, and is in pg_dump's list.
SELECT c.oid::regclass AS tbl, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced,
       c.oid = ANY (e.extconfig) AS dumped
  FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'api_key_mgmt'
 WHERE c.relkind IN ('r', 'p')
 ORDER BY 1;

-- Views run with the caller's rights, so RLS applies through them; the one exception,
-- api_key_mgmt.metrics, shows counts only and is granted to the monitoring roles alone.
SELECT c.oid::regclass AS view, c.reloptions
  FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'api_key_mgmt'
 WHERE c.relkind = 'v'
 ORDER BY 1;

-- What each role may execute.
SELECT r.rolname, p.oid::regprocedure AS function
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'api_key_mgmt'
 CROSS JOIN pg_roles r
 WHERE r.rolname IN ('api_key_mgmt_admin', 'api_key_mgmt_service')
   AND has_function_privilege(r.oid, p.oid, 'EXECUTE')
 ORDER BY r.rolname, p.oid::regprocedure::text;

-- An unprivileged role gets 42501 everywhere.
CREATE ROLE regress_nobody;
SET ROLE regress_nobody;
SELECT regress.try($$SELECT api_key_mgmt.validate_api_key('x')$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('x')$$);
SELECT regress.try($$SELECT * FROM api_key_mgmt.api_keys$$);
SELECT regress.try($$SELECT * FROM api_key_mgmt_internal.new_key('sk', 'live')$$);
RESET ROLE;
-- The service role validates but cannot issue; the admin cannot read hashes.
SET ROLE api_key_mgmt_service;
SELECT (api_key_mgmt.validate_api_key('x')).code AS service_validates;
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('x')$$);
RESET ROLE;
SET ROLE api_key_mgmt_admin;
SELECT regress.try($$SELECT key_hash FROM api_key_mgmt.api_keys$$);
SELECT count(*) > 0 AS admin_reads_status FROM api_key_mgmt.api_key_status;
RESET ROLE;
DROP ROLE regress_nobody;
