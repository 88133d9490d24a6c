-- validate_api_key(api_key text, scope text, provider text, model text, cost integer)
-- -> key_validation
-- The hot path (src/validation_pg.rs). Never raises for a bad key, writes no table.
-- cost: rate-limit tokens to consume (0: check only); consumed only in shared memory
-- (library preloaded), so VOLATILE; in table mode checked only (see consume_rate_limit).
-- Not STRICT: a NULL key answers code 'missing'. Not SECURITY DEFINER: it reads the
-- tables through their indexes directly, and EXECUTE on it is the gate.
CREATE FUNCTION api_key_mgmt.validate_api_key(
    api_key text,
    scope text DEFAULT NULL,
    provider text DEFAULT NULL,
    model text DEFAULT NULL,
    cost integer DEFAULT 0
) RETURNS api_key_mgmt.key_validation
    VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'akm_validate_api_key';
