-- Entry points of the SECURITY DEFINER functions (src/caller.rs).
--
-- Inside a SECURITY DEFINER function PostgreSQL no longer tells who called it, so the
-- public functions are not SECURITY DEFINER themselves. For every body in
-- api_key_mgmt_impl (SECURITY DEFINER, search_path fixed, granted to no one) this
-- creates api_key_mgmt.<same name>(<same arguments, names and defaults>) RETURNS
-- <same result>: a C function that records its caller (the current user when it is
-- called) and then calls the body. Authorization and the audit log's actor_role use
-- that caller, never the session's role.
--
-- Generated from the bodies, so an entry point and its body cannot differ in
-- signature; the library checks the pair again on the first call of each call site.
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
