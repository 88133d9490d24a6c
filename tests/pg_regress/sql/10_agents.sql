-- Agent access (issue 6): projects and labels, the tool registry, requests and their
-- approval, sessions, proxy tokens, resolve and its refusals, maintenance, security
-- events, RLS.
SELECT regress.use_keys('v2');
SELECT api_key_mgmt.create_tenant('Agents Co', '{*}', 'agents-co') AS t \gset
SELECT api_key_mgmt.create_tenant('Other Co', '{*}', 'other-co') AS o \gset
SELECT api_key_mgmt.register_provider('stripe', 'Stripe', '^sk_(live|test)_[A-Za-z0-9]{10,}$');
SELECT api_key_mgmt.put_tenant_secret(:'t', 'stripe', 'sk_live_prodprodprod1234', environment => 'prod', name => 'stripe-prod') AS stripe_prod \gset
SELECT api_key_mgmt.put_tenant_secret(:'t', 'stripe', 'sk_test_devdevdevdev1234', environment => 'dev', name => 'stripe-dev') AS stripe_dev \gset
SELECT api_key_mgmt.put_tenant_secret(:'t', 'openai', 'sk-proj-agentsagentsagents0001', environment => 'prod', name => 'openai-main') AS openai_prod \gset
SELECT api_key_mgmt.put_tenant_secret(:'o', 'stripe', 'sk_live_otherotherother999', environment => 'prod', name => 'stripe-prod') AS other_stripe \gset

-- Projects and labels.
SELECT api_key_mgmt.create_project(:'t', 'payments', 'Payment keys') AS payments \gset
SELECT regress.try(format('SELECT api_key_mgmt.create_project(%L, %L)', :'t', 'payments'));
SELECT regress.try(format('SELECT api_key_mgmt.create_project(%L, %L)', :'t', 'Bad Name'));
SELECT api_key_mgmt.set_secret_labels(:'stripe_prod', 'payments', '{payment,critical,payment}');
SELECT api_key_mgmt.set_secret_labels(:'stripe_dev', 'payments', '{payment}');
SELECT regress.try(format('SELECT api_key_mgmt.set_secret_labels(%L, %L, %L)', :'openai_prod', 'nope', '{}'));
SELECT regress.try(format('SELECT api_key_mgmt.set_secret_labels(%L, NULL, %L)', :'openai_prod', '{Bad Tag}'));
SELECT s.name, s.environment, p.name AS project, s.tags FROM api_key_mgmt.tenant_secrets s
  LEFT JOIN api_key_mgmt.projects p ON p.id = s.project_id WHERE s.tenant_id = :'t' ORDER BY s.name;

-- The tool registry.
SELECT api_key_mgmt.register_agent_tool(:'t', 'billing-bot', 'Billing bot', '{stripe-*}', '{dev,prod}',
    'low', '1 hour', max_uses => 2, project => 'payments') AS billing_tool \gset
SELECT api_key_mgmt.register_agent_tool(:'t', 'refund-bot', 'Refund bot', '{stripe-prod}', '{prod}',
    'high', '30 minutes') AS refund_tool \gset
SELECT api_key_mgmt.register_agent_tool(:'t', 'writer', 'Writer', '{openai}', '{prod}', 'medium', '10 minutes') AS writer_tool \gset
SELECT regress.try(format('SELECT api_key_mgmt.register_agent_tool(%L, %L, %L, %L, %L, %L, %L)', :'t', 'billing-bot', 'x', '{a}', '{prod}', 'low', '1 hour'));
SELECT regress.try(format('SELECT api_key_mgmt.register_agent_tool(%L, %L, %L, %L, %L, %L, %L)', :'t', 'x', 'x', '{a}', '{qa}', 'low', '1 hour'));
SELECT regress.try(format('SELECT api_key_mgmt.register_agent_tool(%L, %L, %L, %L, %L, %L, %L)', :'t', 'x', 'x', '{a}', '{prod}', 'extreme', '1 hour'));
SELECT regress.try(format('SELECT api_key_mgmt.register_agent_tool(%L, %L, %L, %L, %L, %L, %L)', :'t', 'x', 'x', '{a}', '{prod}', 'low', '60 days'));
SELECT regress.try(format('SELECT api_key_mgmt.register_agent_tool(%L, %L, %L, NULL, %L, %L, %L)', :'t', 'x', 'x', '{prod}', 'low', '1 hour'));
SELECT regress.try(format('SELECT api_key_mgmt.update_agent_tool(%L, %L, %L)', :'t', 'writer', '{"colour": "red"}'));
SELECT regress.try(format('SELECT api_key_mgmt.update_agent_tool(%L, %L, %L)', :'t', 'nobody', '{}'));
SELECT api_key_mgmt.update_agent_tool(:'t', 'writer', '{"name": "Writer v2", "max_session": "20 minutes"}');
SELECT tool_key, name, secrets, environments, risk_level, max_session, max_uses, project_id = :'payments' AS in_payments, enabled
  FROM api_key_mgmt.agent_tools WHERE tenant_id = :'t' ORDER BY tool_key;

-- Low risk: approved at once, duration capped by max_session.
SELECT request_id AS r1, status, session_id AS s1, ends_at - now() AS lasts
  FROM api_key_mgmt.request_secret_access(:'t', 'billing-bot', '{stripe-prod}', 'prod', 'charge order 42', '1 day') \gset
SELECT status, duration, decided_by, note, deadline IS NULL AS no_deadline FROM api_key_mgmt.access_requests WHERE id = :'r1';
SELECT status, environment, ends_at - starts_at AS lasts FROM api_key_mgmt.agent_sessions WHERE id = :'s1';
-- A token: native format with its own prefix, stored only as a hash.
SELECT api_key_mgmt.issue_proxy_token(:'s1', 'stripe-prod') AS tok1 \gset
SELECT :'tok1' ~ '^pxt_live_[0-9A-Za-z]{49}$' AS native_format,
       api_key_mgmt_internal.key_shape(:'tok1') AS shape;
SELECT token_hash = api_key_mgmt_internal.hash_key(:'tok1') AS hash_only, secret_id = :'stripe_prod' AS right_secret,
       environment, max_uses, uses FROM api_key_mgmt.proxy_tokens WHERE session_id = :'s1';
SELECT count(*) AS plaintext_anywhere FROM api_key_mgmt.proxy_tokens t
 WHERE row_to_json(t)::text LIKE '%' || :'tok1' || '%';
SELECT regress.try(format('SELECT api_key_mgmt.issue_proxy_token(%L, %L)', :'s1', 'stripe-dev'));
SELECT regress.try(format('SELECT api_key_mgmt.issue_proxy_token(%L, %L, 0)', :'s1', 'stripe-prod'));

-- Resolve: only the backend service role.
SET ROLE api_key_mgmt_admin;
SELECT regress.try(format('SELECT api_key_mgmt.resolve_proxy_token(%L)', :'tok1'));
RESET ROLE;
SET ROLE api_key_mgmt_service;
SELECT api_key_mgmt.resolve_proxy_token(:'tok1') AS secret;
SELECT regress.try(format('SELECT api_key_mgmt.resolve_proxy_token(%L, %L)', :'tok1', 'dev'));
BEGIN READ ONLY;
SELECT regress.try(format('SELECT api_key_mgmt.resolve_proxy_token(%L)', :'tok1'));
ROLLBACK;
SELECT api_key_mgmt.resolve_proxy_token(:'tok1', 'prod') AS secret_again;
SELECT regress.try(format('SELECT api_key_mgmt.resolve_proxy_token(%L)', :'tok1'));
SELECT regress.try('SELECT api_key_mgmt.resolve_proxy_token(''pxt_live_nope'')');
SELECT regress.try(format('SELECT api_key_mgmt.resolve_proxy_token(%L)', left(:'tok1', -1) || CASE WHEN right(:'tok1', 1) = '0' THEN '1' ELSE '0' END));
SELECT regress.try('SELECT api_key_mgmt.resolve_proxy_token(NULL)');
SELECT regress.try(format('SELECT api_key_mgmt.resolve_proxy_token(%L, %L)', :'tok1', 'qa'));
RESET ROLE;
SELECT uses, last_used_at IS NOT NULL AS used FROM api_key_mgmt.proxy_tokens WHERE session_id = :'s1';
SELECT action, details - 'token_id' - 'session_id' AS details FROM api_key_mgmt.audit_log
 WHERE tenant_id = :'t' AND action = 'secret.decrypted' ORDER BY occurred_at;

-- A dev session cannot resolve a prod secret; a dev token is a test-environment key.
SELECT request_id AS r2, status, session_id AS s2
  FROM api_key_mgmt.request_secret_access(:'t', 'billing-bot', '{stripe-dev}', 'dev', 'test run') \gset
SELECT api_key_mgmt.issue_proxy_token(:'s2', 'stripe-dev', 10) AS tok2 \gset
SELECT :'tok2' LIKE 'pxt_test_%' AS test_key;
SELECT regress.try(format('SELECT api_key_mgmt.issue_proxy_token(%L, %L)', :'s2', 'stripe-prod'));
SET ROLE api_key_mgmt_service;
SELECT regress.try(format('SELECT api_key_mgmt.resolve_proxy_token(%L, %L)', :'tok2', 'prod'));
SELECT api_key_mgmt.resolve_proxy_token(:'tok2', 'dev') AS dev_secret;
RESET ROLE;
-- A dev request for a secret that exists only in prod, or not at all: 42704.
SELECT regress.try(format('SELECT * FROM api_key_mgmt.request_secret_access(%L, %L, %L, %L, %L)', :'t', 'billing-bot', '{stripe-prod}', 'dev', 'x'));
SELECT regress.try(format('SELECT * FROM api_key_mgmt.request_secret_access(%L, %L, %L, %L, %L)', :'t', 'billing-bot', '{stripe-none}', 'dev', 'x'));

-- Undeclared: recorded as denied, with a security event.
SELECT status, session_id IS NULL AS no_session
  FROM api_key_mgmt.request_secret_access(:'t', 'billing-bot', '{openai-main}', 'prod', 'also chat');
SELECT status, session_id IS NULL AS no_session
  FROM api_key_mgmt.request_secret_access(:'t', 'refund-bot', '{stripe-prod}', 'dev', 'dev too');
SELECT status, note, decided_by FROM api_key_mgmt.access_requests
 WHERE tenant_id = :'t' AND status = 'denied' ORDER BY requested_at;
SELECT kind, severity, subject_type, details - 'tool_key' AS details FROM api_key_mgmt.security_events
 WHERE tenant_id = :'t' AND kind = 'undeclared_request' ORDER BY occurred_at;

-- High risk: pending until a tenant admin decides.
SELECT request_id AS r3, status, session_id IS NULL AS no_session
  FROM api_key_mgmt.request_secret_access(:'t', 'refund-bot', '{stripe-prod}', 'prod', 'refund order 7', '2 hours') \gset
SELECT status, duration, deadline - requested_at AS waits FROM api_key_mgmt.access_requests WHERE id = :'r3';
SELECT api_key_mgmt.add_tenant_member(:'t', 'ann', 'admin');
SELECT api_key_mgmt.add_tenant_member(:'t', 'max', 'member');
SET ROLE regress_app;
SELECT regress.claims('max', :'t');
SELECT regress.try(format('SELECT api_key_mgmt.approve_access_request(%L, %L)', :'r3', 'ok'));
SELECT regress.claims('ann', :'t');
SELECT api_key_mgmt.approve_access_request(:'r3', 'customer asked') AS s3 \gset
SELECT regress.try(format('SELECT api_key_mgmt.approve_access_request(%L, %L)', :'r3', 'again'));
SELECT status, decided_by, note FROM api_key_mgmt.access_requests WHERE id = :'r3';
SELECT ends_at - starts_at AS lasts FROM api_key_mgmt.agent_sessions WHERE id = :'s3';
RESET ROLE;
-- Medium risk: pending, unless the tenant auto-approves medium.
SELECT request_id AS r4, status FROM api_key_mgmt.request_secret_access(:'t', 'writer', '{openai}', 'prod', 'draft') \gset
SELECT api_key_mgmt.update_tenant(:'t', '{"settings": {"auto_approve_medium": "true"}}');
SELECT status, session_id AS writer_session
  FROM api_key_mgmt.request_secret_access(:'t', 'writer', '{openai}', 'prod', 'draft again') \gset
SELECT :'status' AS status, :'writer_session' <> '' AS has_session;
-- Deny: recorded with who and when, and a security event.
SET ROLE regress_app;
SELECT regress.claims('ann', :'t');
SELECT api_key_mgmt.deny_access_request(:'r4', 'not now');
SELECT status, decided_by, decided_at IS NOT NULL AS decided, note FROM api_key_mgmt.access_requests WHERE id = :'r4';
-- Tenant isolation: another tenant's admin sees none of it and cannot decide.
RESET ROLE;
SELECT api_key_mgmt.add_tenant_member(:'o', 'olga', 'owner');
SET ROLE regress_app;
SELECT regress.claims('olga', :'o');
SELECT (SELECT count(*) FROM api_key_mgmt.projects) AS projects, (SELECT count(*) FROM api_key_mgmt.agent_tools) AS tools,
       (SELECT count(*) FROM api_key_mgmt.access_requests) AS requests, (SELECT count(*) FROM api_key_mgmt.agent_sessions) AS sessions,
       (SELECT count(*) FROM api_key_mgmt.proxy_tokens) AS tokens, (SELECT count(*) FROM api_key_mgmt.security_events) AS events;
SELECT regress.try(format('SELECT api_key_mgmt.revoke_session(%L)', :'s1'));
SELECT regress.try(format('SELECT * FROM api_key_mgmt.request_secret_access(%L, %L, %L, %L, %L)', :'t', 'billing-bot', '{stripe-prod}', 'prod', 'x'));
SELECT regress.claims('ann', :'t');
SELECT (SELECT count(*) FROM api_key_mgmt.agent_tools) AS tools, (SELECT count(*) FROM api_key_mgmt.proxy_tokens) AS tokens,
       (SELECT count(*) > 0 FROM api_key_mgmt.security_events) AS events;
SELECT regress.try('SELECT token_hash FROM api_key_mgmt.proxy_tokens');
SELECT regress.claims('max', :'t');
SELECT (SELECT count(*) FROM api_key_mgmt.agent_sessions) AS sessions, (SELECT count(*) FROM api_key_mgmt.proxy_tokens) AS tokens_hidden,
       (SELECT count(*) FROM api_key_mgmt.security_events) AS events_hidden;
RESET ROLE;

-- Revoke: the session's tokens die at once; the refusal is a security event, written
-- by a background worker (the refusal's own transaction is rolled back).
SELECT api_key_mgmt.issue_proxy_token(:'s3', 'stripe-prod') AS tok3 \gset
SELECT api_key_mgmt.revoke_session(:'s3', 'done');
SELECT api_key_mgmt.revoke_session(:'s3');
SELECT status, end_reason FROM api_key_mgmt.agent_sessions WHERE id = :'s3';
SELECT revoked_at IS NOT NULL AS token_revoked FROM api_key_mgmt.proxy_tokens WHERE session_id = :'s3';
SET ROLE api_key_mgmt_service;
SELECT regress.try(format('SELECT api_key_mgmt.resolve_proxy_token(%L)', :'tok3'));
RESET ROLE;
-- wait_for_event(kind, n): whether n events of that kind arrive within 10 seconds.
CREATE FUNCTION regress.wait_for_event(p_kind text, n integer DEFAULT 1) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..100 LOOP
        IF (SELECT count(*) FROM api_key_mgmt.security_events WHERE kind = p_kind) >= n THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN false;
END
$$;
SELECT regress.wait_for_event('resolve_after_revocation') AS recorded;
SELECT regress.wait_for_event('resolve_wrong_environment', 2) AND regress.wait_for_event('resolve_exhausted') AS recorded;

-- Expiry: a session past its end refuses its tokens; maintenance expires sessions,
-- pending requests past their deadline, and revokes the tokens.
SELECT api_key_mgmt.issue_proxy_token(:'s2', 'stripe-dev') AS tok4 \gset
UPDATE api_key_mgmt.agent_sessions SET starts_at = now() - interval '2 hours', ends_at = now() - interval '1 hour' WHERE id = :'s2';
SET ROLE api_key_mgmt_service;
SELECT regress.try(format('SELECT api_key_mgmt.resolve_proxy_token(%L)', :'tok4'));
RESET ROLE;
SELECT regress.wait_for_event('resolve_after_expiry') AS recorded;
-- That was the tenant's 5th refused resolve within a minute: a burst.
SELECT kind, severity, subject_type, subject_id = :'t' AS the_tenant, details
  FROM api_key_mgmt.security_events WHERE kind = 'refusal_burst';
SELECT request_id AS r5 FROM api_key_mgmt.request_secret_access(:'t', 'refund-bot', '{stripe-prod}', 'prod', 'late') \gset
UPDATE api_key_mgmt.access_requests SET deadline = now() - interval '1 second' WHERE id = :'r5';
SELECT regress.try(format('SELECT api_key_mgmt.approve_access_request(%L)', :'r5'));
SELECT * FROM api_key_mgmt.run_agent_maintenance();
SELECT * FROM api_key_mgmt.run_agent_maintenance();
SELECT status FROM api_key_mgmt.access_requests WHERE id = :'r5';
SELECT status, end_reason FROM api_key_mgmt.agent_sessions WHERE id = :'s2';
SELECT count(*) FILTER (WHERE revoked_at IS NULL) AS live_tokens_of_s2 FROM api_key_mgmt.proxy_tokens WHERE session_id = :'s2';
SET ROLE api_key_mgmt_service;
SELECT regress.try('SELECT * FROM api_key_mgmt.run_agent_maintenance()');
RESET ROLE;
-- Purge after the retention period.
UPDATE api_key_mgmt.access_requests SET decided_at = now() - interval '40 days', requested_at = now() - interval '40 days' WHERE id = :'r5';
UPDATE api_key_mgmt.agent_sessions SET starts_at = now() - interval '41 days', ends_at = now() - interval '40 days', ended_at = now() - interval '40 days' WHERE id = :'s2';
UPDATE api_key_mgmt.access_requests SET decided_at = now() - interval '40 days' WHERE id = :'r2';
SELECT purged FROM api_key_mgmt.run_agent_maintenance();
SELECT count(*) AS gone FROM api_key_mgmt.agent_sessions WHERE id = :'s2';

-- Disabling a tool revokes its open sessions.
SELECT api_key_mgmt.disable_agent_tool(:'t', 'billing-bot');
SELECT status, end_reason FROM api_key_mgmt.agent_sessions WHERE id = :'s1';
SELECT regress.try(format('SELECT * FROM api_key_mgmt.request_secret_access(%L, %L, %L, %L, %L)', :'t', 'billing-bot', '{stripe-prod}', 'prod', 'x'));
SELECT kind, count(*) FROM api_key_mgmt.security_events WHERE tenant_id = :'t' GROUP BY kind ORDER BY kind;
-- No token or secret in the audit log or the events.
SELECT count(*) AS leaks FROM api_key_mgmt.audit_log a
 WHERE strpos(a.details::text, :'tok1') > 0 OR strpos(a.details::text, :'tok2') > 0
    OR strpos(a.details::text, :'tok3') > 0 OR strpos(a.details::text, :'tok4') > 0
    OR a.details::text ~ 'sk_live_prodprod|sk_test_devdev';
SELECT count(*) AS leaks FROM api_key_mgmt.security_events e WHERE e.details::text ~ 'pxt_|sk_live|sk_test';
SELECT count(*) AS display_prefix_only FROM api_key_mgmt.audit_log a
 WHERE a.tenant_id = :'t' AND a.action = 'proxy_token.issued' AND a.details ->> 'display_prefix' ~ '^pxt_(live|test)_';

-- A disabled tenant's tokens are refused (and none issued) until it is enabled again.
SELECT api_key_mgmt.issue_proxy_token(:'writer_session', 'openai') AS tok5 \gset
SELECT api_key_mgmt.disable_tenant(:'t');
SELECT regress.try(format('SELECT api_key_mgmt.issue_proxy_token(%L, %L)', :'writer_session', 'openai'));
SET ROLE api_key_mgmt_service;
SELECT regress.try(format('SELECT api_key_mgmt.resolve_proxy_token(%L)', :'tok5'));
RESET ROLE;
SELECT regress.wait_for_event('resolve_tenant_disabled') AS recorded;
SELECT api_key_mgmt.enable_tenant(:'t');
SET ROLE api_key_mgmt_service;
SELECT api_key_mgmt.resolve_proxy_token(:'tok5', 'prod') AS openai_secret;
RESET ROLE;

-- A tool declaring tag:critical gets the critical secrets of its project, nothing else.
SELECT api_key_mgmt.register_agent_tool(:'t', 'auditor', 'Auditor', '{tag:critical}', '{prod,dev}', 'low', '5 minutes',
    project => 'payments') IS NOT NULL AS registered;
SELECT status FROM api_key_mgmt.request_secret_access(:'t', 'auditor', '{stripe-prod}', 'prod', 'audit');
SELECT status FROM api_key_mgmt.request_secret_access(:'t', 'auditor', '{stripe-dev}', 'dev', 'audit');
SELECT status FROM api_key_mgmt.request_secret_access(:'t', 'auditor', '{openai-main}', 'prod', 'audit');
-- By provider id: the provider's secret, when it carries the tag.
SELECT request_id AS r6, status FROM api_key_mgmt.request_secret_access(:'t', 'auditor', '{stripe}', 'prod', 'audit') \gset
SELECT :'status' AS status, (SELECT array_agg(s.name) FROM api_key_mgmt.tenant_secrets s WHERE s.id = ANY (r.secret_ids)) AS granted
  FROM api_key_mgmt.access_requests r WHERE r.id = :'r6';

