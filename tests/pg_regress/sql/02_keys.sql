-- Issuing keys: the format, what is stored, and bad input.
SELECT id AS acme FROM api_key_mgmt.tenants WHERE external_id = 'acme' \gset
SELECT id AS vito FROM api_key_mgmt.tenants WHERE external_id = 'vito' \gset

SELECT * FROM api_key_mgmt.issue_api_key(:'acme', 'backend', '{agents:orchestration,voice:synthesis}') \gset k1_
-- <type>_<env>_<43 base62><6 base62 checksum>; shown once, here, and never stored.
SELECT :'k1_api_key' ~ '^sk_live_[0-9A-Za-z]{49}$' AS native_format,
       length(:'k1_api_key') AS length,
       :'k1_display_prefix' = left(:'k1_api_key', 12) || '...' || right(:'k1_api_key', 4) AS display_prefix_ok;
-- Only SHA-256 of the whole key is stored; no column holds the key.
SELECT key_hash = sha256(convert_to(:'k1_api_key', 'UTF8')) AS hash_is_sha256,
       position(:'k1_api_key' IN row_to_json(k)::text) = 0 AS key_not_in_row
  FROM api_key_mgmt.api_keys k WHERE id = :'k1_key_id';
SELECT name, environment, scopes, allowed_providers, allowed_models, expires_at, revoked_at,
       imported, created_by, metadata
  FROM api_key_mgmt.api_keys WHERE id = :'k1_key_id';

-- Tenant prefix and test environment.
SELECT api_key ~ '^vito_test_[0-9A-Za-z]{49}$' AS vito_test_format
  FROM api_key_mgmt.issue_api_key(:'vito', 'ci', '{document:ocr}', environment => 'test');

-- Every argument is checked; the messages name the problem, never a key.
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, NULL, %L)', :'acme', '{agents:x}'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, NULL)', :'acme', 'n'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L)', :'acme', 'n', '{}'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L)', :'acme', 'n', '{agents}'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L)', :'acme', 'n', '{avatar:generation}'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L)', :'acme', 'n', '{*}'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L, now() - interval %L)', :'acme', 'n', '{agents:x}', '1 hour'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L, NULL, %L)', :'acme', 'n', '{agents:x}', 'prod'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L, allowed_providers => %L)', :'acme', 'n', '{agents:x}', '{OpenAI}'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L, allowed_providers => %L)', :'acme', 'n', '{agents:x}', '{}'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L, allowed_models => %L)', :'acme', 'n', '{agents:x}', '{"gpt 4"}'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L, metadata => %L)', :'acme', 'n', '{agents:x}', '"x"'));
SELECT regress.try($$SELECT api_key_mgmt.issue_api_key('00000000-0000-0000-0000-000000000000', 'n', '{agents:x}')$$);
SELECT regress.try($$SELECT api_key_mgmt.issue_api_key(NULL, 'n', '{agents:x}')$$);
SELECT api_key_mgmt.disable_tenant(:'vito');
SELECT regress.try(format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L)', :'vito', 'n', '{agents:x}'));
SELECT api_key_mgmt.enable_tenant(:'vito');
SELECT count(*) AS keys FROM api_key_mgmt.api_keys;

-- The table's own constraints hold even for a superuser writing directly.
SELECT regress.try(format('UPDATE api_key_mgmt.api_keys SET environment = %L WHERE id = %L', 'prod', :'k1_key_id'));
SELECT regress.try(format('UPDATE api_key_mgmt.api_keys SET scopes = %L WHERE id = %L', '{nope}', :'k1_key_id'));
SELECT regress.try(format('UPDATE api_key_mgmt.api_keys SET key_hash = %L WHERE id = %L', '\x00', :'k1_key_id'));
SELECT regress.try(format('UPDATE api_key_mgmt.api_keys SET key_hash = sha256(%L) WHERE id = %L', 'x', :'k1_key_id'));
SELECT regress.try(format('UPDATE api_key_mgmt.api_keys SET revoke_reason = %L WHERE id = %L', 'why', :'k1_key_id'));
SELECT regress.try(format('UPDATE api_key_mgmt.api_keys SET tenant_id = %L WHERE id = %L', :'vito', :'k1_key_id'));
