-- Issue keys lo..hi in one set-based statement (run by benches/run.sh as superuser).
-- psql variables: lo, hi, ntenants.
--
-- Key n goes to tenant ((n - 1) % ntenants) + 1, so keys are spread evenly. The key
-- material comes from the extension's own generator, api_key_mgmt_internal.new_key(),
-- exactly as issue_api_key() uses it; the plaintext goes to bench.side (benchmark
-- only) and the hash is mirrored into the hand-written baseline's table.
--
-- Half the keys carry '{agents:*,voice:synthesis}', half '{agents:orchestration,voice:*}';
-- every fourth key expires in a year. Every key answers 'ok' for 'agents:orchestration'.
\set ON_ERROR_STOP on

WITH k AS MATERIALIZED (
    -- new_key() in the target list: called once per row (a LATERAL call that does not
    -- reference g could be evaluated once and rescanned).
    SELECT g AS n, tm.tenant_id, api_key_mgmt_internal.new_key('sk', 'live') AS nk
      FROM generate_series(:lo, :hi) AS g
      JOIN bench.tenant_map tm ON tm.n = (g - 1) % :ntenants + 1
), side AS (
    INSERT INTO bench.side (id, api_key)
    SELECT n, (nk).api_key FROM k
), ext AS (
    INSERT INTO api_key_mgmt.api_keys
        (tenant_id, name, environment, display_prefix, key_hash, scopes, expires_at, created_by)
    SELECT tenant_id, 'bench key ' || n, 'live', (nk).display_prefix, (nk).key_hash,
           CASE WHEN n % 2 = 0 THEN '{agents:*,voice:synthesis}'::text[]
                ELSE '{agents:orchestration,voice:*}'::text[] END,
           CASE WHEN n % 4 = 0 THEN now() + interval '365 days' END,
           'bench'
      FROM k
    RETURNING id, tenant_id, key_hash, scopes, expires_at, revoked_at, metadata
)
INSERT INTO bench.hw_keys (id, tenant_id, key_hash, scopes, expires_at, revoked_at, metadata)
SELECT id, tenant_id, key_hash, scopes, expires_at, revoked_at, metadata FROM ext;
