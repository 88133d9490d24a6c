-- import_api_key: keys from another system keep working; only their hash is stored.
SELECT id AS acme FROM api_key_mgmt.tenants WHERE external_id = 'acme' \gset

-- Without a configured prefix a foreign key is refused, and is never looked up.
SELECT regress.try(format('SELECT api_key_mgmt.import_api_key(%L, %L, %L, %L)',
    :'acme', 'legacy_9f8e7d6c5b4a39281706f5e4', 'legacy', '{voice:synthesis}'));
SELECT (api_key_mgmt.validate_api_key('legacy_9f8e7d6c5b4a39281706f5e4')).code AS unconfigured;

SET api_key_mgmt.import_prefixes = 'legacy_, old-';
SHOW api_key_mgmt.import_prefixes;
SELECT display_prefix FROM api_key_mgmt.import_api_key(:'acme', 'legacy_9f8e7d6c5b4a39281706f5e4', 'legacy', '{voice:synthesis}') \gset i_
SELECT :'i_display_prefix' AS display_prefix;
SELECT valid, code FROM api_key_mgmt.validate_api_key('legacy_9f8e7d6c5b4a39281706f5e4', 'voice:synthesis');
SELECT imported, environment, key_hash = sha256('legacy_9f8e7d6c5b4a39281706f5e4'::bytea) AS hash_ok
  FROM api_key_mgmt.api_keys WHERE name = 'legacy';
-- Under a configured prefix but never imported: looked up, not found.
SELECT (api_key_mgmt.validate_api_key('legacy_00000000000000000000000000')).code AS not_imported;
SELECT (api_key_mgmt.validate_api_key('other_9f8e7d6c5b4a39281706f5e4')).code AS other_prefix;

-- Refusals: duplicates, short keys, bad checksums, whitespace, NULL.
SELECT regress.try(format('SELECT api_key_mgmt.import_api_key(%L, %L, %L, %L)',
    :'acme', 'legacy_9f8e7d6c5b4a39281706f5e4', 'again', '{voice:synthesis}'));
SELECT regress.try(format('SELECT api_key_mgmt.import_api_key(%L, %L, %L, %L)',
    :'acme', 'legacy_short', 'short', '{voice:synthesis}'));
SELECT regress.try(format('SELECT api_key_mgmt.import_api_key(%L, %L, %L, %L)',
    :'acme', 'old-has a space in it 12345', 'space', '{voice:synthesis}'));
SELECT regress.try(format('SELECT api_key_mgmt.import_api_key(%L, NULL, %L, %L)',
    :'acme', 'null', '{voice:synthesis}'));
SELECT regress.try(format('SELECT api_key_mgmt.import_api_key(%L, %L, %L, %L)',
    :'acme', 'sk_live_' || repeat('A', 49), 'bad checksum', '{voice:synthesis}'));

-- A native key from another installation keeps its environment.
SELECT api_key AS native FROM api_key_mgmt_internal.new_key('sk', 'test') \gset
SELECT count(*) FROM api_key_mgmt.import_api_key(:'acme', :'native', 'moved', '{voice:synthesis}');
SELECT environment, imported FROM api_key_mgmt.api_keys WHERE name = 'moved';
SELECT (api_key_mgmt.validate_api_key(:'native')).code AS native_imported;
SELECT api_key AS native2 FROM api_key_mgmt_internal.new_key('sk', 'test') \gset
SELECT regress.try(format('SELECT api_key_mgmt.import_api_key(%L, %L, %L, %L, environment => %L)',
    :'acme', :'native2', 'mismatch', '{voice:synthesis}', 'live'));

-- Rotating an imported key replaces it with a native key.
SELECT id AS legacy_id FROM api_key_mgmt.api_keys WHERE name = 'legacy' \gset
SELECT api_key ~ '^sk_live_' AS native_replacement FROM api_key_mgmt.rotate_api_key(:'legacy_id');
RESET api_key_mgmt.import_prefixes;
