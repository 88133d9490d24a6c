-- Sanity check before measuring (run by benches/run.sh). psql variable: nkeys.
-- Every key must exist once in each table and answer 'ok' for 'agents:orchestration'
-- through both validate_api_key() and the hand-written function; a wrong key must
-- answer not_found / bad_checksum, and the ceiling script's scope 'agents:*'
-- invalid_scope. Prints one line; run.sh compares it.
\set ON_ERROR_STOP on
\pset tuples_only on
\pset format unaligned

WITH sample AS (
    SELECT s.id, s.api_key FROM bench.side s
     WHERE s.id % greatest(:nkeys / 2000, 1) = 0
)
SELECT concat_ws(' ',
    (SELECT count(*) FROM bench.side) = :nkeys,
    (SELECT count(*) FROM api_key_mgmt.api_keys) = :nkeys,
    (SELECT count(*) FROM bench.hw_keys) = :nkeys,
    (SELECT bool_and(v.code = 'ok' AND v.valid) FROM sample
        CROSS JOIN LATERAL api_key_mgmt.validate_api_key(sample.api_key, 'agents:orchestration') v),
    (SELECT bool_and(v.code = 'ok' AND v.valid) FROM sample
        CROSS JOIN LATERAL bench.hw_validate_api_key(sample.api_key, 'agents:orchestration') v),
    (SELECT bool_and(v.code = 'scope_denied') FROM sample
        CROSS JOIN LATERAL api_key_mgmt.validate_api_key(sample.api_key, 'billing:read') v),
    (SELECT bool_and(v.code = 'scope_denied') FROM sample
        CROSS JOIN LATERAL bench.hw_validate_api_key(sample.api_key, 'billing:read') v),
    (SELECT v.code = 'not_found' FROM api_key_mgmt_internal.new_key('sk', 'live') nk
        CROSS JOIN LATERAL api_key_mgmt.validate_api_key(nk.api_key, 'agents:orchestration') v),
    (SELECT v.code = 'not_found' FROM api_key_mgmt_internal.new_key('sk', 'live') nk
        CROSS JOIN LATERAL bench.hw_validate_api_key(nk.api_key, 'agents:orchestration') v),
    -- The ceiling script's scope is refused before any work on the key.
    (SELECT bool_and(v.code = 'invalid_scope') FROM sample
        CROSS JOIN LATERAL api_key_mgmt.validate_api_key(sample.api_key, 'agents:*') v));
