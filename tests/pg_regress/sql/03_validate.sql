-- validate_api_key: one composite row; every code; never raises for a bad key.
SELECT id AS acme FROM api_key_mgmt.tenants WHERE external_id = 'acme' \gset
SELECT * FROM api_key_mgmt.issue_api_key(:'acme', 'agent', '{agents:*,voice:synthesis}',
    allowed_providers => '{openai,anthropic}', allowed_models => '{gpt-4o*,claude-3-5-sonnet}',
    metadata => '{"team": "ml"}') \gset k_

-- ok: valid, with the key's facts.
SELECT valid, code, tenant_id = :'acme' AS tenant_ok, key_id = :'k_key_id' AS key_ok,
       environment, scopes, expires_at, grace_until, metadata
  FROM api_key_mgmt.validate_api_key(:'k_api_key');
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'agents:orchestration')).code AS wildcard_area;
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'voice:synthesis')).code AS exact_scope;
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'agents:voice', 'openai', 'gpt-4o-mini')).code AS model_prefix;
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'agents:voice', 'anthropic', 'claude-3-5-sonnet')).code AS model_exact;

-- Denials keep the key's identity (for logging), never valid.
SELECT valid, code, key_id = :'k_key_id' AS key_ok
  FROM api_key_mgmt.validate_api_key(:'k_api_key', 'voice:cloning');
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'document:ocr')).code AS not_in_key;
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'agents:voice', 'elevenlabs')).code AS provider;
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'agents:voice', 'openai', 'o1')).code AS model;
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'agents:*')).code AS wildcard_request;
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'agents')).code AS bad_request;

-- Keys that are not keys: no table is read, no error is raised.
SELECT code, valid, tenant_id, key_id FROM api_key_mgmt.validate_api_key(NULL);
SELECT (api_key_mgmt.validate_api_key('')).code AS empty;
SELECT (api_key_mgmt.validate_api_key('hello')).code AS word;
SELECT (api_key_mgmt.validate_api_key(repeat('x', 10000000))).code AS ten_megabytes;
SELECT (api_key_mgmt.validate_api_key(left(:'k_api_key', -1) ||
        CASE WHEN right(:'k_api_key', 1) = 'A' THEN 'B' ELSE 'A' END)).code AS last_char_changed;
SELECT (api_key_mgmt.validate_api_key(overlay(:'k_api_key' PLACING
        CASE WHEN substr(:'k_api_key', 20, 1) = 'A' THEN 'B' ELSE 'A' END FROM 20 FOR 1))).code AS body_char_changed;
SELECT (api_key_mgmt.validate_api_key(upper(:'k_api_key'))).code AS upper_cased;
SELECT (api_key_mgmt.validate_api_key(' ' || :'k_api_key')).code AS leading_space;
-- A well-formed key with a valid checksum that was never issued.
SELECT (api_key_mgmt.validate_api_key(api_key)).code AS never_issued
  FROM api_key_mgmt_internal.new_key('sk', 'live');

-- The plan is enforced on existing keys: narrowing the tenant's scopes denies at once.
SELECT api_key_mgmt.update_tenant(:'acme', '{"allowed_scopes": ["voice:*", "document:ocr"]}');
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'agents:orchestration')).code AS plan_narrowed;
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'voice:synthesis')).code AS still_in_plan;
SELECT api_key_mgmt.update_tenant(:'acme', '{"allowed_scopes": ["agents:*", "voice:synthesis", "document:ocr"]}');

-- A disabled tenant's keys answer tenant_disabled; enabling restores them.
SELECT api_key_mgmt.disable_tenant(:'acme');
SELECT valid, code FROM api_key_mgmt.validate_api_key(:'k_api_key');
SELECT api_key_mgmt.enable_tenant(:'acme');
SELECT valid, code FROM api_key_mgmt.validate_api_key(:'k_api_key');

-- Expiry: a key whose expiry has passed answers expired (set directly, as time would).
SELECT * FROM api_key_mgmt.issue_api_key(:'acme', 'short', '{voice:synthesis}', now() + interval '1 hour') \gset e_
SELECT (api_key_mgmt.validate_api_key(:'e_api_key')).code AS before_expiry;
UPDATE api_key_mgmt.api_keys SET expires_at = now() - interval '1 second' WHERE id = :'e_key_id';
SELECT valid, code, expires_at < now() AS past FROM api_key_mgmt.validate_api_key(:'e_api_key');

-- Validation writes nothing: it runs in a READ ONLY transaction.
BEGIN TRANSACTION READ ONLY;
SELECT (api_key_mgmt.validate_api_key(:'k_api_key', 'agents:orchestration')).code AS read_only;
COMMIT;

-- A key issued by an earlier statement of the same transaction validates at once
-- (within one statement, validation sees the statement's snapshot, as any query does).
BEGIN;
SELECT api_key AS tx_key FROM api_key_mgmt.issue_api_key(:'acme', 'tx', '{voice:synthesis}') \gset
SELECT (api_key_mgmt.validate_api_key(:'tx_key')).code AS same_transaction;
ROLLBACK;
SELECT (api_key_mgmt.validate_api_key(:'tx_key')).code AS rolled_back;
