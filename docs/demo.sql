-- The quick start, narrated. Run by `make demo` against a throwaway cluster.
\pset footer off
\echo
\echo '== 1. Install: one statement. The library is preloaded (shared_preload_libraries).'
CREATE EXTENSION api_key_mgmt;
SELECT extversion AS version FROM pg_extension WHERE extname = 'api_key_mgmt';

\echo
\echo '== 2. A tenant, with a plan: the scopes its keys may ever hold.'
SELECT api_key_mgmt.create_tenant('Acme Robotics',
         allowed_scopes => '{agents:*,voice:synthesis,document:ocr}',
         external_id    => 'acme') AS tenant_id \gset
SELECT id, name, external_id, allowed_scopes FROM api_key_mgmt.tenants;

\echo
\echo '== 3. Issue a key. This is the only time the key is ever shown:'
\echo '      only its SHA-256 is stored.'
SELECT key_id, api_key, display_prefix
  FROM api_key_mgmt.issue_api_key(:'tenant_id', 'orchestrator',
         scopes => '{agents:orchestration,voice:synthesis}') \gset
\echo '   api_key        =' :api_key
\echo '   display_prefix =' :display_prefix
SELECT name, display_prefix, scopes, encode(key_hash, 'hex') AS stored_sha256
  FROM api_key_mgmt.api_keys WHERE id = :'key_id';

\echo
\echo '== 4. Validate it, as a request would (pass the key as a bind parameter in real code).'
SELECT valid, code, tenant_id, key_id, scopes
  FROM api_key_mgmt.validate_api_key(:'api_key', 'agents:orchestration');

\echo
\echo '== 5. A scope the key does not hold is refused, with a code (never an error).'
SELECT valid, code FROM api_key_mgmt.validate_api_key(:'api_key', 'document:ocr');

\echo
\echo '== 6. A mistyped key fails its checksum before any table is read.'
SELECT valid, code FROM api_key_mgmt.validate_api_key(left(:'api_key', -1) ||
         CASE WHEN right(:'api_key', 1) = 'x' THEN 'y' ELSE 'x' END);

\echo
\echo '== 7. Revoke it: the next validation says so.'
SELECT api_key_mgmt.revoke_api_key(:'key_id', 'demo over') AS revoked;
SELECT valid, code FROM api_key_mgmt.validate_api_key(:'api_key', 'agents:orchestration');
SELECT name, status, revoke_reason FROM api_key_mgmt.api_key_status WHERE key_id = :'key_id';
