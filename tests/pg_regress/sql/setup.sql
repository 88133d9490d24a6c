-- Run once before the other regression tests.
CREATE EXTENSION api_key_mgmt;
CREATE SCHEMA regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;
-- try(sql) -> 'ok' or '<SQLSTATE>: <message>': errors as data, so every expected
-- SQLSTATE is part of the expected output (ids in messages shown as <uuid>).
CREATE FUNCTION regress.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM,
        '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g');
END
$$;
