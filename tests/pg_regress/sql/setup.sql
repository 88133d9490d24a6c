-- Run once before the other regression tests. With regress.from_version set
-- (REGRESS_FROM=0.1.0 tests/regress.sh) the extension is installed at that version and
-- then updated, so that the whole suite runs on an updated database.
SELECT current_setting('regress.from_version') AS from_version,
       current_setting('regress.from_version') <> '' AS upgrade \gset
\if :upgrade
CREATE EXTENSION api_key_mgmt VERSION :'from_version';
ALTER EXTENSION api_key_mgmt UPDATE;
\else
CREATE EXTENSION api_key_mgmt;
\endif
CREATE SCHEMA regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;
-- try(sql) -> 'ok' or '<SQLSTATE>: <message>': errors as data, so every expected
-- SQLSTATE is part of the expected output (ids in messages shown as <uuid>).
CREATE FUNCTION regress.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_detail text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM,
        '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g')
        -- PostgREST's own format carries the HTTP status and headers in the detail.
        || CASE WHEN SQLSTATE = 'PGRST' THEN ' ' || v_detail ELSE '' END;
END
$$;
-- use_keys(name): point api_key_mgmt.master_key_file at one of the test key files
-- that tests/regress.sh wrote (v1, v12, v2, wrong, malformed, missing).
CREATE FUNCTION regress.use_keys(name text) RETURNS void LANGUAGE sql AS $$
    SELECT set_config('api_key_mgmt.master_key_file', current_setting('regress.keys') || '/' || name, false);
$$;
