-- Every argument a table constraint would refuse is refused by the function first, with
-- 22023 and a message naming the argument (issue 13): a constraint violation would
-- print the row in its DETAIL. One call per constrained column that an argument
-- reaches; none may answer 23514. Sets up its own tenant and key (after setup.sql).
SELECT regress.use_keys('v1');
SELECT api_key_mgmt.create_tenant('Input checks', '{*}', 'input-checks') AS t \gset
SELECT key_id AS k FROM api_key_mgmt.issue_api_key(:'t', 'k', '{*}') \gset
SELECT api_key_mgmt.put_tenant_secret(:'t', 'openai', 'sk-proj-inputinputinput00000001') AS s \gset
SELECT n, substring(call FROM 'api_key_mgmt\.(\w+)') AS function, regress.try(call) AS answer
  FROM unnest(ARRAY[
    -- tenants
    (format('SELECT api_key_mgmt.create_tenant(%L, %L, NULL, %L)', 'n', '{*}', 'BAD-PREFIX')),
    (format('SELECT api_key_mgmt.create_tenant(%L, %L, NULL, %L, %L)', 'n', '{*}', 'sk', '-1 day')),
    (format('SELECT api_key_mgmt.create_tenant(%L, %L, %L)', repeat('n', 201), '{*}', NULL)),
    (format('SELECT api_key_mgmt.create_tenant(%L, %L, %L)', 'n', '{*}', repeat('e', 201))),
    (format('SELECT api_key_mgmt.update_tenant(%L, %L)', :'t', '{"max_key_age": "-1 day"}')),
    (format('SELECT api_key_mgmt.update_tenant(%L, %L)', :'t', '{"key_type_prefix": "X"}')),
    (format('SELECT api_key_mgmt.update_tenant(%L, %L)', :'t', '{"settings": [1]}')),
    -- api_keys
    (format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L)', :'t', repeat('n', 201), '{*}')),
    (format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L, environment => %L)', :'t', 'n', '{*}', 'prod')),
    (format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L, metadata => %L)', :'t', 'n', '{*}', '[1]')),
    (format('SELECT api_key_mgmt.issue_api_key(%L, %L, %L, allowed_models => %L)', :'t', 'n', '{*}', '{}')),
    (format('SELECT api_key_mgmt.revoke_api_key(%L, %L)', :'k', repeat('r', 501))),
    (format('SELECT api_key_mgmt.update_api_key(%L, %L)', :'k', '{"name": ""}')),
    -- providers and secrets
    (format('SELECT api_key_mgmt.register_provider(%L, %L, %L)', 'Bad Id', 'x', NULL)),
    (format('SELECT api_key_mgmt.register_provider(%L, %L, %L)', 'okid', repeat('d', 101), NULL)),
    (format('SELECT api_key_mgmt.register_provider(%L, %L, %L)', 'okid', 'x', repeat('a', 501))),
    (format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L, %L)', :'t', 'openai', 'sk-proj-inputinputinput00000001', 'bad model')),
    (format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L)', :'t', 'elevenlabs', repeat('s', 70000))),
    (format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L, name => %L)', :'t', 'openai', 'sk-proj-inputinputinput00000001', repeat('n', 201))),
    (format('SELECT api_key_mgmt.put_tenant_secret(%L, %L, %L, environment => %L)', :'t', 'openai', 'sk-proj-inputinputinput00000001', 'qa')),
    (format('SELECT api_key_mgmt.record_secret_usage(%L, -1, 0)', :'s')),
    (format('SELECT api_key_mgmt.mark_secret_validated(%L, true, repeat(%L, 501))', :'s', 'm')),
    -- metering
    (format('SELECT api_key_mgmt.set_rate_limit(%L, %L, 10, %L)', :'k', 'Bad Name', '1 minute')),
    (format('SELECT api_key_mgmt.set_rate_limit(%L, %L, 0, %L)', :'k', 'ok', '1 minute')),
    (format('SELECT api_key_mgmt.set_rate_limit(%L, %L, 10, %L)', :'k', 'ok', '1 microsecond')),
    (format('SELECT api_key_mgmt.set_rate_limit(%L, %L, 10, %L, 0)', :'k', 'ok', '1 minute')),
    (format('SELECT * FROM api_key_mgmt.charge_api_key(%L, %L, -1)', :'k', 'a:b')),
    (format('SELECT * FROM api_key_mgmt.charge_api_key(%L, %L, 1, -1)', :'k', 'a:b')),
    (format('SELECT * FROM api_key_mgmt.charge_api_key(%L, %L, 1, 1, key_source => %L)', :'k', 'a:b', 'other')),
    (format('SELECT * FROM api_key_mgmt.reserve_budget(%L, %L, -1)', :'k', 'a:b')),
    -- tenancy
    (format('SELECT api_key_mgmt.add_tenant_member(%L, %L, %L)', :'t', repeat('u', 201), 'owner')),
    (format('SELECT api_key_mgmt.add_tenant_member(%L, %L, %L)', :'t', 'u', 'boss')),
    (format('SELECT api_key_mgmt.add_route_scope(%L, %L, %L)', 'GET', '/x y', 'a:b')),
    (format('SELECT api_key_mgmt.add_route_scope(%L, %L, %L)', 'FETCH!', '/x', 'a:b')),
    -- agents
    (format('SELECT api_key_mgmt.create_project(%L, %L, %L)', :'t', 'Bad Name', NULL)),
    (format('SELECT api_key_mgmt.create_project(%L, %L, %L)', :'t', 'ok', repeat('d', 1001))),
    (format('SELECT api_key_mgmt.set_secret_labels(%L, NULL, %L)', :'s', '{Bad Tag}')),
    (format('SELECT api_key_mgmt.register_agent_tool(%L, %L, %L, %L, %L, %L, %L)', :'t', 'BAD KEY', 'x', '{a}', '{prod}', 'low', '1 hour')),
    (format('SELECT api_key_mgmt.register_agent_tool(%L, %L, %L, %L, %L, %L, %L, 0)', :'t', 'okkey', 'x', '{a}', '{prod}', 'low', '1 hour')),
    (format('SELECT api_key_mgmt.register_agent_tool(%L, %L, %L, %L, %L, %L, %L)', :'t', 'okkey', 'x', '{a}', '{prod}', 'low', '31 days')),
    (format('SELECT api_key_mgmt.register_agent_tool(%L, %L, %L, %L, %L, %L, %L)', :'t', 'okkey', repeat('n', 201), '{a}', '{prod}', 'low', '1 hour'))
]) WITH ORDINALITY AS v(call, n)
 ORDER BY n;
