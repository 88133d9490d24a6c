-- Tenants: creation, validation of every argument, updates, disable/enable.
SELECT api_key_mgmt.create_tenant('Acme', '{agents:*,voice:synthesis,document:ocr}', 'acme') AS acme \gset
SELECT name, external_id, allowed_scopes, key_type_prefix, max_key_age, disabled_at IS NULL AS enabled, settings
  FROM api_key_mgmt.tenants WHERE id = :'acme';

-- Bad input: a specific SQLSTATE each, nothing written.
SELECT regress.try($$SELECT api_key_mgmt.create_tenant(NULL)$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('')$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant(repeat('x', 201))$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('T', NULL)$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('T', '{}')$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('T', '{agents}')$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('T', '{Agents:x}')$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('T', '{agents:x,NULL}')$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('T', '{*}', 'acme')$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('T', '{*}', NULL, 'SK')$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('T', '{*}', NULL, 'a')$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('T', '{*}', NULL, 'sk', '-1 day')$$);
SELECT regress.try($$SELECT api_key_mgmt.create_tenant('T', '{*}', NULL, 'sk', '90 days', '[]')$$);
SELECT count(*) AS tenants FROM api_key_mgmt.tenants;

-- A tenant with its own key prefix and no maximum key age.
SELECT api_key_mgmt.create_tenant('Vito', '{*}', 'vito', 'vito', NULL) AS vito \gset
SELECT key_type_prefix, max_key_age FROM api_key_mgmt.tenants WHERE id = :'vito';

-- update_tenant takes a JSON object of changes; unknown fields are refused.
SELECT api_key_mgmt.update_tenant(:'acme', '{"name": "Acme Corp", "max_key_age": "30 days", "settings": {"tier": "pro"}}');
SELECT name, max_key_age, settings FROM api_key_mgmt.tenants WHERE id = :'acme';
SELECT regress.try(format('SELECT api_key_mgmt.update_tenant(%L, %L)', :'acme', '{"nmae": "typo"}'));
SELECT regress.try(format('SELECT api_key_mgmt.update_tenant(%L, %L)', :'acme', '{"allowed_scopes": "agents:*"}'));
SELECT regress.try(format('SELECT api_key_mgmt.update_tenant(%L, %L)', :'acme', '{"allowed_scopes": ["bad"]}'));
SELECT regress.try(format('SELECT api_key_mgmt.update_tenant(%L, %L)', :'acme', '{"external_id": "vito"}'));
SELECT regress.try(format('SELECT api_key_mgmt.update_tenant(%L, %L)', :'acme', '[]'));
SELECT regress.try($$SELECT api_key_mgmt.update_tenant('00000000-0000-0000-0000-000000000000', '{}')$$);
SELECT regress.try($$SELECT api_key_mgmt.update_tenant(NULL, '{}')$$);
SELECT name, external_id, allowed_scopes FROM api_key_mgmt.tenants WHERE id = :'acme';

-- Disable and enable report whether they changed anything.
SELECT api_key_mgmt.disable_tenant(:'vito') AS disabled, api_key_mgmt.disable_tenant(:'vito') AS again;
SELECT api_key_mgmt.enable_tenant(:'vito') AS enabled, api_key_mgmt.enable_tenant(:'vito') AS again;
