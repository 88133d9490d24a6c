-- Revocation, rotation with grace, updates, keys due for rotation.
SELECT id AS acme FROM api_key_mgmt.tenants WHERE external_id = 'acme' \gset
SELECT * FROM api_key_mgmt.issue_api_key(:'acme', 'rev', '{voice:synthesis}') \gset r_

-- Revoke: true the first time, false after; the key answers revoked.
SELECT api_key_mgmt.revoke_api_key(:'r_key_id', 'leaked in a screenshot') AS revoked;
SELECT api_key_mgmt.revoke_api_key(:'r_key_id') AS again;
SELECT valid, code FROM api_key_mgmt.validate_api_key(:'r_api_key');
SELECT revoke_reason, status FROM api_key_mgmt.api_key_status WHERE key_id = :'r_key_id';
SELECT regress.try($$SELECT api_key_mgmt.revoke_api_key('00000000-0000-0000-0000-000000000000')$$);
SELECT regress.try($$SELECT api_key_mgmt.revoke_api_key(NULL)$$);
SELECT regress.try(format('SELECT api_key_mgmt.revoke_api_key(%L, repeat(%L, 501))', :'r_key_id', 'x'));
SELECT regress.try(format('SELECT api_key_mgmt.rotate_api_key(%L)', :'r_key_id'));
SELECT regress.try(format('SELECT api_key_mgmt.update_api_key(%L, %L)', :'r_key_id', '{"name": "x"}'));

-- Rotate with a grace period: both keys validate until the grace ends.
SELECT * FROM api_key_mgmt.issue_api_key(:'acme', 'rot', '{agents:*}', now() + interval '10 days',
    metadata => '{"app": "billing"}') \gset o_
SELECT * FROM api_key_mgmt.rotate_api_key(:'o_key_id', '1 hour') \gset n_
SELECT :'n_api_key' <> :'o_api_key' AS new_key, :'n_api_key' ~ '^sk_live_' AS native;
SELECT (api_key_mgmt.validate_api_key(:'o_api_key')).code AS old_in_grace,
       (api_key_mgmt.validate_api_key(:'o_api_key')).grace_until = :'n_old_key_valid_until' AS grace_reported,
       (api_key_mgmt.validate_api_key(:'n_api_key')).code AS new_key_code;
-- The replacement inherits name, scopes, metadata and the same lifetime.
SELECT n.name, n.scopes, n.metadata, n.rotated_from = o.id AS linked_back, o.rotated_to = n.id AS linked_forward,
       n.expires_at - n.created_at = o.expires_at - o.created_at AS same_lifetime
  FROM api_key_mgmt.api_keys o, api_key_mgmt.api_keys n
 WHERE o.id = :'o_key_id' AND n.id = :'n_new_key_id';
SELECT status FROM api_key_mgmt.api_key_status WHERE key_id = :'o_key_id';
-- Rotating twice is refused; grace bounds are checked.
SELECT regress.try(format('SELECT api_key_mgmt.rotate_api_key(%L)', :'o_key_id'));
SELECT regress.try(format('SELECT api_key_mgmt.rotate_api_key(%L, %L)', :'n_new_key_id', '-1 minute'));
SELECT regress.try(format('SELECT api_key_mgmt.rotate_api_key(%L, %L)', :'n_new_key_id', '31 days'));
SELECT regress.try(format('SELECT api_key_mgmt.rotate_api_key(%L, NULL)', :'n_new_key_id'));
-- When the grace ends, the old key answers rotated (simulated by moving the grace end).
UPDATE api_key_mgmt.api_keys SET grace_until = now() - interval '1 second' WHERE id = :'o_key_id';
SELECT valid, code FROM api_key_mgmt.validate_api_key(:'o_api_key');
SELECT status FROM api_key_mgmt.api_key_status WHERE key_id = :'o_key_id';
-- Grace 0: the old key stops at once.
SELECT new_key_id AS z_new FROM api_key_mgmt.rotate_api_key(:'n_new_key_id', '0') \gset
SELECT (api_key_mgmt.validate_api_key(:'n_api_key')).code AS zero_grace;

-- update_api_key: a JSON object of changes; null clears an allowlist or the expiry.
SELECT * FROM api_key_mgmt.issue_api_key(:'acme', 'upd', '{voice:synthesis}', now() + interval '1 day',
    allowed_providers => '{openai}') \gset u_
SELECT api_key_mgmt.update_api_key(:'u_key_id',
    '{"name": "renamed", "scopes": ["agents:*"], "allowed_providers": null, "expires_at": null, "metadata": {"v": 2}}');
SELECT name, scopes, allowed_providers, expires_at, metadata FROM api_key_mgmt.api_keys WHERE id = :'u_key_id';
SELECT (api_key_mgmt.validate_api_key(:'u_api_key', 'agents:financial', 'anyone')).code AS after_update;
SELECT regress.try(format('SELECT api_key_mgmt.update_api_key(%L, %L)', :'u_key_id', '{"scope": ["agents:*"]}'));
SELECT regress.try(format('SELECT api_key_mgmt.update_api_key(%L, %L)', :'u_key_id', '{"scopes": ["avatar:generation"]}'));
SELECT regress.try(format('SELECT api_key_mgmt.update_api_key(%L, %L)', :'u_key_id', '{"scopes": null}'));
SELECT regress.try(format('SELECT api_key_mgmt.update_api_key(%L, %L)', :'u_key_id', '{"expires_at": "2000-01-01T00:00:00Z"}'));
SELECT regress.try(format('SELECT api_key_mgmt.update_api_key(%L, %L)', :'u_key_id', '{"allowed_models": []}'));
SELECT regress.try(format('SELECT api_key_mgmt.update_api_key(%L, %L)', :'u_key_id', '{"metadata": []}'));
SELECT name, scopes FROM api_key_mgmt.api_keys WHERE id = :'u_key_id';

-- keys_due_for_rotation: keys past (or within 7 days of) the tenant's max_key_age.
SELECT * FROM api_key_mgmt.issue_api_key(:'acme', 'old', '{voice:synthesis}') \gset d_
UPDATE api_key_mgmt.api_keys SET created_at = now() - interval '29 days' WHERE id = :'d_key_id';
SELECT name, overdue, rotate_by BETWEEN now() + interval '23 hours' AND now() + interval '1 day' AS due_tomorrow
  FROM api_key_mgmt.keys_due_for_rotation WHERE tenant_id = :'acme';
UPDATE api_key_mgmt.api_keys SET created_at = now() - interval '31 days' WHERE id = :'d_key_id';
SELECT name, overdue FROM api_key_mgmt.keys_due_for_rotation WHERE tenant_id = :'acme';
-- Rotating it takes it off the list.
SELECT count(*) AS rotated FROM api_key_mgmt.rotate_api_key(:'d_key_id');
SELECT count(*) AS due FROM api_key_mgmt.keys_due_for_rotation WHERE tenant_id = :'acme';
