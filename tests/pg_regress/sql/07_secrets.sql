-- Tenant secrets: BYOK under AES-256-GCM, resolution order, scopes, tampering,
-- master key errors and rotation.
SELECT id AS acme FROM api_key_mgmt.tenants WHERE external_id = 'acme' \gset
SELECT id AS vito FROM api_key_mgmt.tenants WHERE external_id = 'vito' \gset

-- Without a master key nothing can be stored, and nothing is written.
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa1111'));
SELECT regress.use_keys('missing');
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa1111'));
SELECT regress.use_keys('malformed');
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa1111'));
SELECT count(*) AS secrets, (SELECT count(*) FROM api_key_mgmt.master_key_versions) AS versions
  FROM api_key_mgmt.tenant_secrets;

-- BYOK in three statements: store, resolve, use.
SELECT regress.use_keys('v1');
SELECT api_key_mgmt.put_tenant_secret(:'acme', 'openai', 'sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa1111') AS acme_openai \gset
SELECT api_key_mgmt.get_tenant_secret(:'acme', 'openai', 'agents:orchestration');
SELECT source, provider, model, environment, secret_id = :'acme_openai' AS same_id
  FROM api_key_mgmt.resolve_provider_key(:'acme', 'openai', 'agents:orchestration');

-- The ciphertext is neither the plaintext nor repeated: same plaintext, other nonce.
SELECT position('sk-proj' IN encode(ciphertext, 'escape')) = 0 AS not_plaintext,
       octet_length(ciphertext) = octet_length('sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa1111') + 16 AS tag_included,
       octet_length(nonce) AS nonce_bytes, key_version, secret_version
  FROM api_key_mgmt.tenant_secrets WHERE id = :'acme_openai';
SELECT nonce AS n1, ciphertext AS c1 FROM api_key_mgmt.tenant_secrets WHERE id = :'acme_openai' \gset
SELECT api_key_mgmt.put_tenant_secret(:'acme', 'openai', 'sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa1111') = :'acme_openai' AS replaced_in_place;
SELECT nonce <> :'n1' AS new_nonce, ciphertext <> :'c1' AS new_ciphertext, secret_version, rotated_at IS NOT NULL AS rotated
  FROM api_key_mgmt.tenant_secrets WHERE id = :'acme_openai';
SELECT api_key_mgmt.put_tenant_secret(:'vito', 'openai', 'sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa1111') AS vito_openai \gset
SELECT count(DISTINCT ciphertext) AS distinct_ciphertexts FROM api_key_mgmt.tenant_secrets;

-- Resolution: the tenant's model override, the tenant's provider key, the platform's.
SELECT api_key_mgmt.put_tenant_secret(:'acme', 'openai', 'sk-proj-bbbbbbbbbbbbbbbbbbbbbbbb2222', model => 'gpt-4o') AS acme_gpt4o \gset
SELECT api_key_mgmt.put_tenant_secret(NULL, 'openai', 'sk-proj-pppppppppppppppppppppppp0000') AS platform_openai \gset
SELECT api_key_mgmt.put_tenant_secret(NULL, 'anthropic', 'sk-ant-pppppppppppppppppppppppp0000', scopes => '{agents:*}') AS platform_anthropic \gset
SELECT m.model, r.source, r.secret, r.tenant_id IS NULL AS platform_owned
  FROM (VALUES ('gpt-4o'), ('gpt-4o-mini'), (NULL)) AS m(model),
       LATERAL api_key_mgmt.resolve_provider_key(:'acme', 'openai', 'agents:orchestration', m.model) r
 ORDER BY m.model NULLS LAST;
SELECT source, secret FROM api_key_mgmt.resolve_provider_key(:'acme', 'anthropic', 'agents:voice');
SELECT api_key_mgmt.get_tenant_secret('00000000-0000-0000-0000-000000000000', 'openai', 'voice:synthesis') AS unknown_tenant_gets_platform;
-- Nothing stored: NULL (and an all-NULL row).
SELECT api_key_mgmt.get_tenant_secret(:'acme', 'elevenlabs', 'voice:synthesis') IS NULL AS none;
SELECT source IS NULL AS none, secret IS NULL AS no_secret FROM api_key_mgmt.resolve_provider_key(:'acme', 'elevenlabs', 'voice:synthesis');
SELECT api_key_mgmt.get_tenant_secret(:'acme', 'openai', 'agents:x', environment => 'dev') IS NULL AS other_environment;

-- Scopes: a secret serves only the scopes it lists; refusal is 42501, not a fallback.
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'acme', 'anthropic', 'voice:synthesis'));
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'agents:*'));
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, NULL)', :'acme', 'openai'));
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L, NULL, %L)', :'acme', 'openai', 'agents:x', 'production'));

-- Bad input when storing.
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L)', :'acme', 'anthropic', 'sk-proj-cccccccccccccccccccccccc3333'));
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L)', :'acme', 'nosuch', 'whatever-secret-value'));
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, NULL)', :'acme', 'openai'));
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L)', :'acme', 'elevenlabs', ''));
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L, environment => %L)', :'acme', 'elevenlabs', 'el-secret-1234', 'production'));
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L, scopes => %L)', :'acme', 'elevenlabs', 'el-secret-1234', '{avatar}'));
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L, model => %L)', :'acme', 'elevenlabs', 'el-secret-1234', 'has space'));
SELECT regress.try($$SELECT api_key_mgmt.put_tenant_secret('00000000-0000-0000-0000-000000000000', 'elevenlabs', 'el-secret-1234')$$);

-- Listing shows previews and metadata, never plaintext or ciphertext.
SELECT provider, model, name, scopes, environment, preview, key_version, secret_version, validation_status
  FROM api_key_mgmt.list_tenant_secrets(:'acme');
SELECT provider, preview FROM api_key_mgmt.list_tenant_secrets(NULL);
SELECT count(*) AS list_columns_with_secrets FROM information_schema.columns
 WHERE table_schema = 'api_key_mgmt' AND table_name = 'tenant_secret_list'
   AND column_name IN ('ciphertext', 'nonce', 'secret');

-- The application reports validation and usage.
SELECT api_key_mgmt.mark_secret_validated(:'acme_openai', false, 'provider said 401');
SELECT api_key_mgmt.record_secret_usage(:'acme_openai', 3, 1500);
SELECT validation_status, validation_message, validated_at IS NOT NULL AS validated, request_count, token_count,
       last_used_at IS NOT NULL AS used
  FROM api_key_mgmt.tenant_secrets WHERE id = :'acme_openai';
SELECT regress.try($$SELECT api_key_mgmt.mark_secret_validated('00000000-0000-0000-0000-000000000000', true)$$);
SELECT regress.try(format('SELECT api_key_mgmt.record_secret_usage(%L, -1)', :'acme_openai'));

-- Tampering: any changed byte, or a ciphertext moved to another row or tenant, fails
-- to decrypt with XX001 (data_corrupted), never garbage.
BEGIN;
UPDATE api_key_mgmt.tenant_secrets SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1) WHERE id = :'acme_openai';
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'agents:x'));
ROLLBACK;
BEGIN;
UPDATE api_key_mgmt.tenant_secrets SET ciphertext = set_byte(ciphertext, octet_length(ciphertext) - 1,
       get_byte(ciphertext, octet_length(ciphertext) - 1) # 128) WHERE id = :'acme_openai';
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'agents:x'));
ROLLBACK;
BEGIN;
UPDATE api_key_mgmt.tenant_secrets SET nonce = set_byte(nonce, 11, get_byte(nonce, 11) # 1) WHERE id = :'acme_openai';
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'agents:x'));
ROLLBACK;
BEGIN;  -- another tenant's ciphertext (same plaintext, even) copied into acme's row
UPDATE api_key_mgmt.tenant_secrets a SET ciphertext = v.ciphertext, nonce = v.nonce
  FROM api_key_mgmt.tenant_secrets v WHERE a.id = :'acme_openai' AND v.id = :'vito_openai';
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'agents:x'));
ROLLBACK;
BEGIN;  -- the same tenant's other row
UPDATE api_key_mgmt.tenant_secrets a SET ciphertext = v.ciphertext, nonce = v.nonce
  FROM api_key_mgmt.tenant_secrets v WHERE a.id = :'acme_openai' AND v.id = :'acme_gpt4o';
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'agents:x'));
ROLLBACK;
SELECT api_key_mgmt.get_tenant_secret(:'acme', 'openai', 'agents:x') AS intact;

-- A wrong key file is detected at first use by the key-check value; nothing is written.
SELECT regress.use_keys('wrong');
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'agents:x'));
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L)', :'acme', 'elevenlabs', 'el-secret-1234'));
SELECT count(*) AS secrets FROM api_key_mgmt.tenant_secrets;

-- Rotation: add version 2 (active) to the file, record it, rewrap in batches.
SELECT regress.use_keys('v12');
SELECT api_key_mgmt.rotate_master_key() AS active_version;
SELECT version, secrets, retired_at FROM api_key_mgmt.secret_key_versions ORDER BY version;
SELECT api_key_mgmt.get_tenant_secret(:'acme', 'openai', 'agents:x', 'gpt-4o') AS old_version_still_decrypts;
SELECT api_key_mgmt.put_tenant_secret(:'acme', 'elevenlabs', 'el-secret-1234', scopes => '{voice:*}') IS NOT NULL AS new_secret_on_v2;
SELECT regress.try('SELECT api_key_mgmt.retire_master_key_version(1)');
SELECT api_key_mgmt.rewrap_secrets(2) AS first_batch;
SELECT api_key_mgmt.rewrap_secrets(2) AS second_batch;
SELECT api_key_mgmt.rewrap_secrets() AS third_batch;
SELECT version, secrets FROM api_key_mgmt.secret_key_versions ORDER BY version;
SELECT api_key_mgmt.retire_master_key_version(1);
SELECT version, secrets, retired_at IS NOT NULL AS retired FROM api_key_mgmt.secret_key_versions ORDER BY version;
-- Version 1 can now leave the file: everything decrypts with version 2 alone.
SELECT regress.use_keys('v2');
SELECT r.provider, r.model, r.source, r.secret
  FROM (VALUES ('openai', 'gpt-4o'), ('openai', NULL), ('anthropic', NULL), ('elevenlabs', NULL)) AS q(provider, model),
       LATERAL api_key_mgmt.resolve_provider_key(:'acme', q.provider, 'agents:voice', q.model) r
 WHERE q.provider <> 'elevenlabs'
UNION ALL
SELECT 'elevenlabs', NULL, source, secret FROM api_key_mgmt.resolve_provider_key(:'acme', 'elevenlabs', 'voice:cloning');
-- A secret still on a version missing from the file would be refused (55000).
SELECT regress.use_keys('v1');
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'agents:x'));
SELECT regress.use_keys('v2');

-- Delete: true when something was deleted.
SELECT api_key_mgmt.delete_tenant_secret(:'acme', 'openai', 'gpt-4o') AS deleted,
       api_key_mgmt.delete_tenant_secret(:'acme', 'openai', 'gpt-4o') AS again;
SELECT api_key_mgmt.get_tenant_secret(:'acme', 'openai', 'agents:x', 'gpt-4o') AS falls_back_to_tenant;

-- Providers: the registry ships with the usual ones; administrators add more.
SELECT id, display_name, key_pattern IS NOT NULL AS has_hint FROM api_key_mgmt.providers ORDER BY id;
SELECT api_key_mgmt.register_provider('mistral', 'Mistral AI');
SELECT regress.try($$SELECT api_key_mgmt.register_provider('Bad Id', 'x')$$);
SELECT regress.try($$SELECT api_key_mgmt.register_provider('x', 'x', '(')$$);
SELECT regress.try($$SELECT api_key_mgmt.register_provider('openai', 'Not OpenAI')$$);

-- Who may decrypt: the service role only.
SET ROLE api_key_mgmt_service;
SELECT api_key_mgmt.get_tenant_secret(:'acme', 'openai', 'agents:x') AS service_reads;
RESET ROLE;
SET ROLE api_key_mgmt_admin;
SELECT regress.try(format('SELECT api_key_mgmt.get_tenant_secret(%L, %L, %L)', :'acme', 'openai', 'agents:x'));
SELECT regress.try('SELECT ciphertext FROM api_key_mgmt.tenant_secrets');
SELECT regress.try('SELECT api_key_mgmt_internal.reseal_secret(secret_id) FROM api_key_mgmt.tenant_secret_list');
SELECT count(*) > 0 AS admin_lists FROM api_key_mgmt.tenant_secret_list;
RESET ROLE;
-- The setting itself is hidden from other roles.
SET ROLE api_key_mgmt_service;
-- (42501; PostgreSQL words the message differently from one major to the next.)
SELECT regress.try('SHOW api_key_mgmt.master_key_file') ~ '^42501: ' AS refused_42501;
SELECT count(*) AS visible_in_pg_settings FROM pg_settings WHERE name = 'api_key_mgmt.master_key_file';
RESET ROLE;

-- Reads are audited through the shared-memory queue (written by the maintenance
-- worker) only in the worker's database, api_key_mgmt.agent_maintenance_database
-- ('postgres'); in this one each read writes its entry in its own transaction.
SELECT mode, capacity FROM api_key_mgmt.audit_queue_status();

-- Provider and secret swapped by mistake: the error names neither.
SELECT regress.try(format('SELECT api_key_mgmt.put_tenant_secret(NULL, %L, %L)', 'sk-proj-abcdefghijklmnop', 'openai'));
