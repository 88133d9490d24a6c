-- Agent access to secrets (issue 6): projects and tags on secrets, the tool registry,
-- access requests with approval, time-limited sessions, proxy tokens resolved only by
-- the backend (src/agents_pg.rs), expiry and cleanup, security events.
--
-- Same conventions as the other files: SECURITY DEFINER, search_path fixed,
-- everything schema-qualified, authorization first, specific SQLSTATEs (22004 NULL,
-- 22023 bad value, 42704 unknown object, 55000 wrong state, 23505 duplicate, 42501
-- not allowed), audit entries without any secret or token.

-- Rust (src/agents_pg.rs).

-- resolve_proxy_token(token, environment) -> text: the secret behind a proxy token,
-- for the backend service only. Refusals: 28000 not a valid / expired / revoked token,
-- 42501 wrong environment, 54000 no uses left (see README, Agent access).
CREATE FUNCTION api_key_mgmt_impl.resolve_proxy_token(token text, environment text DEFAULT NULL)
    RETURNS text VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    LANGUAGE c AS 'MODULE_PATHNAME', 'akm_resolve_proxy_token';
-- agent_decision(risk_level, auto_approve_medium) -> text: approved | pending.
CREATE FUNCTION api_key_mgmt_internal.agent_decision(risk_level text, auto_approve_medium boolean)
    RETURNS text IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'agent_decision_wrapper';
-- agent_token_env(environment) -> text: the key-format environment of a proxy token
-- (prod: live; dev, staging: test).
CREATE FUNCTION api_key_mgmt_internal.agent_token_env(environment text)
    RETURNS text IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'agent_token_env_wrapper';
-- agent_declared(patterns, name) -> boolean: whether a declared pattern (a secret name,
-- a provider id, or either with * wildcards) covers a requested name.
CREATE FUNCTION api_key_mgmt_internal.agent_declared(patterns text[], name text)
    RETURNS boolean IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'agent_declared_wrapper';

-- Projects: groups of a tenant's secrets.
CREATE TABLE api_key_mgmt.projects (
    id          uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    description text CHECK (pg_catalog.char_length(description) <= 1000),
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT projects_name UNIQUE (tenant_id, name)
);
COMMENT ON TABLE api_key_mgmt.projects IS 'api_key_mgmt: projects grouping a tenant''s secrets';

ALTER TABLE api_key_mgmt.tenant_secrets
    ADD COLUMN project_id uuid REFERENCES api_key_mgmt.projects (id) ON DELETE SET NULL,
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}'
        CHECK (pg_catalog.cardinality(tags) <= 32
               AND pg_catalog.array_to_string(tags, ',') ~ '^([a-z0-9][a-z0-9_.-]{0,62}(,|$))*$');
CREATE INDEX tenant_secrets_project_idx ON api_key_mgmt.tenant_secrets (project_id);

-- Registered agent tools and what they declared.
CREATE TABLE api_key_mgmt.agent_tools (
    id           uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    tool_key     text COLLATE "C" NOT NULL CHECK (tool_key ~ '^[a-z0-9][a-z0-9_.:-]{0,99}$'),
    name         text NOT NULL CHECK (pg_catalog.char_length(name) BETWEEN 1 AND 200),
    -- Secret names or provider ids it may ask for (* wildcards), or tag:<tag>.
    secrets      text[] NOT NULL CHECK (pg_catalog.cardinality(secrets) BETWEEN 1 AND 64),
    environments text[] NOT NULL CHECK (pg_catalog.cardinality(environments) BETWEEN 1 AND 3
                                        AND environments <@ ARRAY['dev', 'staging', 'prod']),
    risk_level   text NOT NULL CHECK (risk_level IN ('low', 'medium', 'high', 'critical')),
    max_session  interval NOT NULL CHECK (max_session > '0'::interval AND max_session <= '30 days'::interval),
    -- Default maximum uses of each proxy token (NULL: unlimited while the session lasts).
    max_uses     integer CHECK (max_uses > 0),
    -- Set: only secrets of this project.
    project_id   uuid REFERENCES api_key_mgmt.projects (id) ON DELETE CASCADE,
    enabled      boolean NOT NULL DEFAULT true,
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT agent_tools_key UNIQUE (tenant_id, tool_key)
);
COMMENT ON TABLE api_key_mgmt.agent_tools IS 'api_key_mgmt: agent tools and the secrets they declared';
CREATE TRIGGER agent_tools_touch BEFORE UPDATE ON api_key_mgmt.agent_tools
    FOR EACH ROW EXECUTE FUNCTION api_key_mgmt_internal.touch_updated_at();

-- Requests for access: pending until decided, or decided at once by the risk policy.
CREATE TABLE api_key_mgmt.access_requests (
    id            uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    tool_id       uuid NOT NULL REFERENCES api_key_mgmt.agent_tools (id) ON DELETE CASCADE,
    secret_names  text[] NOT NULL,
    secret_ids    uuid[] NOT NULL DEFAULT '{}',
    environment   text NOT NULL CHECK (environment IN ('dev', 'staging', 'prod')),
    justification text NOT NULL CHECK (pg_catalog.char_length(justification) BETWEEN 1 AND 2000),
    duration      interval NOT NULL,
    context       jsonb,
    risk_level    text NOT NULL,
    status        text NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    deadline      timestamptz,
    decided_by    text,
    decided_at    timestamptz,
    note          text CHECK (pg_catalog.char_length(note) <= 1000)
);
COMMENT ON TABLE api_key_mgmt.access_requests IS 'api_key_mgmt: agents'' requests for access to secrets';
CREATE INDEX access_requests_tenant_idx ON api_key_mgmt.access_requests (tenant_id, requested_at);
CREATE INDEX access_requests_pending_idx ON api_key_mgmt.access_requests (deadline) WHERE status = 'pending';

-- Sessions opened by approved requests.
CREATE TABLE api_key_mgmt.agent_sessions (
    id          uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    request_id  uuid NOT NULL UNIQUE REFERENCES api_key_mgmt.access_requests (id) ON DELETE CASCADE,
    tool_id     uuid NOT NULL REFERENCES api_key_mgmt.agent_tools (id) ON DELETE CASCADE,
    environment text NOT NULL CHECK (environment IN ('dev', 'staging', 'prod')),
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL CHECK (ends_at > starts_at),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'expired', 'revoked')),
    ended_at    timestamptz,
    end_reason  text CHECK (pg_catalog.char_length(end_reason) <= 500)
);
COMMENT ON TABLE api_key_mgmt.agent_sessions IS 'api_key_mgmt: time-limited agent sessions';
CREATE INDEX agent_sessions_tenant_idx ON api_key_mgmt.agent_sessions (tenant_id, starts_at);
CREATE INDEX agent_sessions_active_idx ON api_key_mgmt.agent_sessions (ends_at) WHERE status = 'active';

-- Proxy tokens: only SHA-256 of the token is stored.
CREATE TABLE api_key_mgmt.proxy_tokens (
    id             uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    tenant_id      uuid NOT NULL REFERENCES api_key_mgmt.tenants (id) ON DELETE CASCADE,
    session_id     uuid NOT NULL REFERENCES api_key_mgmt.agent_sessions (id) ON DELETE CASCADE,
    secret_id      uuid NOT NULL REFERENCES api_key_mgmt.tenant_secrets (id) ON DELETE CASCADE,
    secret_name    text NOT NULL,
    environment    text NOT NULL CHECK (environment IN ('dev', 'staging', 'prod')),
    token_hash     bytea NOT NULL CHECK (pg_catalog.octet_length(token_hash) = 32),
    display_prefix text NOT NULL,
    max_uses       integer CHECK (max_uses > 0),
    uses           integer NOT NULL DEFAULT 0 CHECK (uses >= 0),
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_used_at   timestamptz,
    revoked_at     timestamptz
);
COMMENT ON TABLE api_key_mgmt.proxy_tokens IS 'api_key_mgmt: proxy tokens of agent sessions (hashes only)';
CREATE UNIQUE INDEX proxy_tokens_hash_idx ON api_key_mgmt.proxy_tokens (token_hash);
CREATE INDEX proxy_tokens_session_idx ON api_key_mgmt.proxy_tokens (session_id);

-- Security events, also sent on NOTIFY channel api_key_mgmt_security.
CREATE TABLE api_key_mgmt.security_events (
    id           uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    occurred_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    tenant_id    uuid,
    kind         text NOT NULL CHECK (kind ~ '^[a-z_]+$'),
    severity     text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    subject_type text,
    subject_id   text,
    details      jsonb NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE api_key_mgmt.security_events IS 'api_key_mgmt: security events of agent access (never a secret or token)';
CREATE INDEX security_events_tenant_idx ON api_key_mgmt.security_events (tenant_id, occurred_at);
CREATE INDEX security_events_time_idx ON api_key_mgmt.security_events (occurred_at);

-- security_event(tenant, kind, severity, subject_type, subject_id, details): record
-- and NOTIFY api_key_mgmt_security with {id, tenant_id, kind, severity, subject_type,
-- subject_id, occurred_at}. The 5th refused resolve (resolve_*) of a tenant within a
-- minute adds a critical refusal_burst event.
CREATE FUNCTION api_key_mgmt_internal.security_event(
    p_tenant_id uuid, p_kind text, p_severity text, p_subject_type text, p_subject_id text,
    p_details jsonb DEFAULT '{}'
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v api_key_mgmt.security_events;
BEGIN
    INSERT INTO api_key_mgmt.security_events (tenant_id, kind, severity, subject_type, subject_id, details)
    VALUES (p_tenant_id, p_kind, p_severity, p_subject_type, p_subject_id, COALESCE(p_details, '{}'))
    RETURNING * INTO v;
    PERFORM pg_catalog.pg_notify('api_key_mgmt_security', pg_catalog.jsonb_build_object(
        'id', v.id, 'tenant_id', v.tenant_id, 'kind', v.kind, 'severity', v.severity,
        'subject_type', v.subject_type, 'subject_id', v.subject_id, 'occurred_at', v.occurred_at)::text);
    IF p_kind LIKE 'resolve\_%' AND p_tenant_id IS NOT NULL
       AND (SELECT pg_catalog.count(*) FROM api_key_mgmt.security_events e
             WHERE e.tenant_id = p_tenant_id AND e.kind LIKE 'resolve\_%'
               AND e.occurred_at > v.occurred_at - '1 minute'::interval) = 5 THEN
        PERFORM api_key_mgmt_internal.security_event(p_tenant_id, 'refusal_burst', 'critical', 'tenant',
            p_tenant_id::text, pg_catalog.jsonb_build_object('refusals', 5, 'within', '1 minute'));
    END IF;
END
$$;

-- check_environments(what, environments): 1 to 3 of dev, staging, prod.
CREATE FUNCTION api_key_mgmt_internal.check_environments(what text, environments text[])
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM api_key_mgmt_internal.check_flat(what, environments);
    IF environments IS NULL OR pg_catalog.array_position(environments, NULL) IS NOT NULL THEN
        RAISE EXCEPTION '% must not be or contain NULL', what USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.cardinality(environments) NOT BETWEEN 1 AND 3
       OR NOT environments <@ ARRAY['dev', 'staging', 'prod'] THEN
        RAISE EXCEPTION '% must hold dev, staging and/or prod', what USING ERRCODE = '22023';
    END IF;
END
$$;

-- check_names(what, names, max): 1 to max non-empty names of at most 200 characters.
CREATE FUNCTION api_key_mgmt_internal.check_names(what text, names text[], max integer)
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM api_key_mgmt_internal.check_flat(what, names);
    IF names IS NULL OR pg_catalog.array_position(names, NULL) IS NOT NULL THEN
        RAISE EXCEPTION '% must not be or contain NULL', what USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.cardinality(names) NOT BETWEEN 1 AND max
       OR EXISTS (SELECT FROM pg_catalog.unnest(names) n WHERE pg_catalog.char_length(n) NOT BETWEEN 1 AND 200) THEN
        RAISE EXCEPTION '% must hold 1 to % names of 1 to 200 characters', what, max USING ERRCODE = '22023';
    END IF;
END
$$;

-- project_id(tenant_id, name): 42704 when the tenant has no such project; NULL for NULL.
CREATE FUNCTION api_key_mgmt_internal.project_id(p_tenant_id uuid, p_name text)
    RETURNS uuid LANGUAGE plpgsql STABLE AS $$
DECLARE
    v uuid;
BEGIN
    IF p_name IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT p.id INTO v FROM api_key_mgmt.projects p WHERE p.tenant_id = p_tenant_id AND p.name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'project "%" does not exist', p_name USING ERRCODE = '42704';
    END IF;
    RETURN v;
END
$$;

-- open_session(request) -> uuid: an approved request's session, from now on.
CREATE FUNCTION api_key_mgmt_internal.open_session(r api_key_mgmt.access_requests)
    RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    INSERT INTO api_key_mgmt.agent_sessions (tenant_id, request_id, tool_id, environment, starts_at, ends_at)
    VALUES (r.tenant_id, r.id, r.tool_id, r.environment, pg_catalog.now(), pg_catalog.now() + r.duration)
    RETURNING id INTO v_id;
    PERFORM api_key_mgmt_internal.audit(r.tenant_id, 'agent_session.opened', 'agent_session', v_id::text,
        pg_catalog.jsonb_build_object('request_id', r.id, 'environment', r.environment,
                                      'ends_at', pg_catalog.now() + r.duration));
    RETURN v_id;
END
$$;

-- end_sessions(ids, status, reason): end active sessions and revoke their tokens.
CREATE FUNCTION api_key_mgmt_internal.end_sessions(p_ids uuid[], p_status text, p_reason text)
    RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_count bigint;
BEGIN
    WITH ended AS (
        UPDATE api_key_mgmt.agent_sessions s
           SET status = p_status, ended_at = pg_catalog.now(), end_reason = p_reason
         WHERE s.id = ANY (p_ids) AND s.status = 'active'
        RETURNING s.id
    ), tokens AS (
        UPDATE api_key_mgmt.proxy_tokens t SET revoked_at = pg_catalog.now()
          FROM ended WHERE t.session_id = ended.id AND t.revoked_at IS NULL
        RETURNING t.id
    )
    SELECT pg_catalog.count(*) INTO v_count FROM ended;
    RETURN v_count;
END
$$;

-- Projects and labels.

-- create_project(tenant_id, name, description) -> uuid (tenant admins).
CREATE FUNCTION api_key_mgmt_impl.create_project(tenant_id uuid, name text, description text DEFAULT NULL)
    RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(create_project.tenant_id, 'admin');
    PERFORM api_key_mgmt_internal.tenant_row(create_project.tenant_id, false);
    PERFORM api_key_mgmt_internal.check_text('name', create_project.name, 63);
    IF create_project.name !~ '^[a-z0-9][a-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'project name must be lower-case letters, digits, _ . -' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.char_length(create_project.description) > 1000 THEN
        RAISE EXCEPTION 'description must be at most 1000 characters' USING ERRCODE = '22023';
    END IF;
    INSERT INTO api_key_mgmt.projects (tenant_id, name, description, created_by)
    VALUES (create_project.tenant_id, create_project.name, create_project.description, api_key_mgmt_internal.actor())
    ON CONFLICT ON CONSTRAINT projects_name DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'project "%" already exists', create_project.name USING ERRCODE = '23505';
    END IF;
    PERFORM api_key_mgmt_internal.audit(create_project.tenant_id, 'project.created', 'project', v_id::text,
        pg_catalog.jsonb_build_object('name', create_project.name));
    RETURN v_id;
END
$$;

-- set_secret_labels(secret_id, project, tags) -> void: a tenant secret's project (by
-- name; NULL: none) and tags (tenant admins).
CREATE FUNCTION api_key_mgmt_impl.set_secret_labels(secret_id uuid, project text, tags text[] DEFAULT '{}')
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tenant uuid;
    v_project uuid;
BEGIN
    v_tenant := api_key_mgmt_internal.authorize_secret(set_secret_labels.secret_id);
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'tenant secret % does not exist', set_secret_labels.secret_id USING ERRCODE = '42704',
            HINT = 'Platform-wide secrets have no project or tags.';
    END IF;
    PERFORM api_key_mgmt_internal.check_flat('tags', set_secret_labels.tags);
    IF set_secret_labels.tags IS NULL OR pg_catalog.array_position(set_secret_labels.tags, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'tags must not be or contain NULL' USING ERRCODE = '22004';
    END IF;
    IF pg_catalog.cardinality(set_secret_labels.tags) > 32
       OR EXISTS (SELECT FROM pg_catalog.unnest(set_secret_labels.tags) t WHERE t !~ '^[a-z0-9][a-z0-9_.-]{0,62}$') THEN
        RAISE EXCEPTION 'tags must be at most 32 of lower-case letters, digits, _ . -' USING ERRCODE = '22023';
    END IF;
    v_project := api_key_mgmt_internal.project_id(v_tenant, set_secret_labels.project);
    UPDATE api_key_mgmt.tenant_secrets s
       SET project_id = v_project,
           tags = ARRAY(SELECT DISTINCT t FROM pg_catalog.unnest(set_secret_labels.tags) t ORDER BY t)
     WHERE s.id = set_secret_labels.secret_id;
    PERFORM api_key_mgmt_internal.audit(v_tenant, 'secret.labelled', 'secret', set_secret_labels.secret_id::text,
        pg_catalog.jsonb_build_object('project', set_secret_labels.project, 'tags', set_secret_labels.tags));
END
$$;

-- The tool registry (tenant admins).

-- check_tool_policy(risk_level, max_session, max_uses): what register_agent_tool and
-- update_agent_tool accept: 22004 NULL risk level or session length, 22023 otherwise.
CREATE FUNCTION api_key_mgmt_internal.check_tool_policy(p_risk_level text, p_max_session interval, p_max_uses integer)
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_risk_level IS NULL THEN
        RAISE EXCEPTION 'risk_level must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF p_risk_level NOT IN ('low', 'medium', 'high', 'critical') THEN
        RAISE EXCEPTION 'risk_level must be low, medium, high or critical' USING ERRCODE = '22023';
    END IF;
    IF p_max_session IS NULL THEN
        RAISE EXCEPTION 'max_session must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF p_max_session <= '0'::interval OR p_max_session > '30 days'::interval THEN
        RAISE EXCEPTION 'max_session must be positive and at most 30 days' USING ERRCODE = '22023';
    END IF;
    IF p_max_uses <= 0 THEN
        RAISE EXCEPTION 'max_uses must be positive (or NULL: unlimited)' USING ERRCODE = '22023';
    END IF;
END
$$;

-- register_agent_tool(tenant_id, tool_key, name, secrets, environments, risk_level,
-- max_session, max_uses, project) -> uuid. 23505 when the key is taken.
CREATE FUNCTION api_key_mgmt_impl.register_agent_tool(
    tenant_id uuid, tool_key text, name text, secrets text[], environments text[],
    risk_level text, max_session interval, max_uses integer DEFAULT NULL, project text DEFAULT NULL
) RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
    v_project uuid;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(register_agent_tool.tenant_id, 'admin');
    PERFORM api_key_mgmt_internal.tenant_row(register_agent_tool.tenant_id, false);
    PERFORM api_key_mgmt_internal.check_text('tool_key', register_agent_tool.tool_key, 100);
    IF register_agent_tool.tool_key !~ '^[a-z0-9][a-z0-9_.:-]{0,99}$' THEN
        RAISE EXCEPTION 'tool_key must be lower-case letters, digits, _ . : -' USING ERRCODE = '22023';
    END IF;
    PERFORM api_key_mgmt_internal.check_text('name', register_agent_tool.name, 200);
    PERFORM api_key_mgmt_internal.check_names('secrets', register_agent_tool.secrets, 64);
    PERFORM api_key_mgmt_internal.check_environments('environments', register_agent_tool.environments);
    PERFORM api_key_mgmt_internal.check_tool_policy(register_agent_tool.risk_level,
        register_agent_tool.max_session, register_agent_tool.max_uses);
    v_project := api_key_mgmt_internal.project_id(register_agent_tool.tenant_id, register_agent_tool.project);
    INSERT INTO api_key_mgmt.agent_tools AS t (tenant_id, tool_key, name, secrets, environments, risk_level,
                                               max_session, max_uses, project_id, created_by)
    VALUES (register_agent_tool.tenant_id, register_agent_tool.tool_key, register_agent_tool.name,
            register_agent_tool.secrets, register_agent_tool.environments, register_agent_tool.risk_level,
            register_agent_tool.max_session, register_agent_tool.max_uses, v_project, api_key_mgmt_internal.actor())
    ON CONFLICT ON CONSTRAINT agent_tools_key DO NOTHING
    RETURNING t.id INTO v_id;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'agent tool "%" is already registered', register_agent_tool.tool_key USING ERRCODE = '23505',
            HINT = 'Change it with update_agent_tool().';
    END IF;
    PERFORM api_key_mgmt_internal.audit(register_agent_tool.tenant_id, 'agent_tool.registered', 'agent_tool', v_id::text,
        pg_catalog.jsonb_build_object('tool_key', register_agent_tool.tool_key, 'secrets', register_agent_tool.secrets,
            'environments', register_agent_tool.environments, 'risk_level', register_agent_tool.risk_level,
            'max_session', register_agent_tool.max_session));
    RETURN v_id;
END
$$;

-- tool_row(tenant_id, tool_key): the tool, locked; 42704 when unknown.
CREATE FUNCTION api_key_mgmt_internal.tool_row(p_tenant_id uuid, p_tool_key text)
    RETURNS api_key_mgmt.agent_tools LANGUAGE plpgsql AS $$
DECLARE
    v api_key_mgmt.agent_tools;
BEGIN
    IF p_tool_key IS NULL THEN
        RAISE EXCEPTION 'tool_key must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO v FROM api_key_mgmt.agent_tools t
     WHERE t.tenant_id = p_tenant_id AND t.tool_key = p_tool_key FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent tool "%" is not registered', p_tool_key USING ERRCODE = '42704';
    END IF;
    RETURN v;
END
$$;

-- update_agent_tool(tenant_id, tool_key, changes jsonb) -> void: change name, secrets,
-- environments, risk_level, max_session, max_uses or enabled (tenant admins).
-- Narrowing what a tool declared does not shorten sessions already open.
CREATE FUNCTION api_key_mgmt_impl.update_agent_tool(tenant_id uuid, tool_key text, changes jsonb)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v api_key_mgmt.agent_tools;
    v_bad text;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(update_agent_tool.tenant_id, 'admin');
    PERFORM api_key_mgmt_internal.check_object('changes', update_agent_tool.changes);
    v := api_key_mgmt_internal.tool_row(update_agent_tool.tenant_id, update_agent_tool.tool_key);
    SELECT k INTO v_bad FROM pg_catalog.jsonb_object_keys(update_agent_tool.changes) k
     WHERE k NOT IN ('name', 'secrets', 'environments', 'risk_level', 'max_session', 'max_uses', 'enabled') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown change "%"', v_bad USING ERRCODE = '22023',
            HINT = 'name, secrets, environments, risk_level, max_session, max_uses, enabled';
    END IF;
    IF update_agent_tool.changes ? 'name' THEN
        v.name := api_key_mgmt_internal.json_text('changes.name', update_agent_tool.changes -> 'name');
        PERFORM api_key_mgmt_internal.check_text('name', v.name, 200);
    END IF;
    IF update_agent_tool.changes ? 'secrets' THEN
        v.secrets := api_key_mgmt_internal.text_array('secrets', update_agent_tool.changes -> 'secrets');
        PERFORM api_key_mgmt_internal.check_names('secrets', v.secrets, 64);
    END IF;
    IF update_agent_tool.changes ? 'environments' THEN
        v.environments := api_key_mgmt_internal.text_array('environments', update_agent_tool.changes -> 'environments');
        PERFORM api_key_mgmt_internal.check_environments('environments', v.environments);
    END IF;
    IF update_agent_tool.changes ? 'risk_level' THEN
        v.risk_level := api_key_mgmt_internal.json_text('changes.risk_level', update_agent_tool.changes -> 'risk_level');
    END IF;
    IF update_agent_tool.changes ? 'max_session' THEN
        v.max_session := (update_agent_tool.changes ->> 'max_session')::interval;
    END IF;
    IF update_agent_tool.changes ? 'max_uses' THEN
        v.max_uses := (update_agent_tool.changes ->> 'max_uses')::integer;
    END IF;
    PERFORM api_key_mgmt_internal.check_tool_policy(v.risk_level, v.max_session, v.max_uses);
    IF update_agent_tool.changes ? 'enabled' THEN
        v.enabled := (update_agent_tool.changes ->> 'enabled')::boolean;
        IF v.enabled IS NULL THEN
            RAISE EXCEPTION 'enabled must be true or false' USING ERRCODE = '22023';
        END IF;
    END IF;
    UPDATE api_key_mgmt.agent_tools t
       SET name = v.name, secrets = v.secrets, environments = v.environments, risk_level = v.risk_level,
           max_session = v.max_session, max_uses = v.max_uses, enabled = v.enabled
     WHERE t.id = v.id;
    PERFORM api_key_mgmt_internal.audit(update_agent_tool.tenant_id, 'agent_tool.updated', 'agent_tool', v.id::text,
        update_agent_tool.changes);
END
$$;

-- disable_agent_tool(tenant_id, tool_key) -> bigint: disable a tool and revoke its
-- open sessions (returns how many); its pending requests are denied (tenant admins).
CREATE FUNCTION api_key_mgmt_impl.disable_agent_tool(tenant_id uuid, tool_key text)
    RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v api_key_mgmt.agent_tools;
    v_count bigint;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(disable_agent_tool.tenant_id, 'admin');
    v := api_key_mgmt_internal.tool_row(disable_agent_tool.tenant_id, disable_agent_tool.tool_key);
    UPDATE api_key_mgmt.agent_tools t SET enabled = false WHERE t.id = v.id;
    UPDATE api_key_mgmt.access_requests r
       SET status = 'denied', decided_by = api_key_mgmt_internal.actor(), decided_at = pg_catalog.now(),
           note = 'tool disabled'
     WHERE r.tool_id = v.id AND r.status = 'pending';
    v_count := api_key_mgmt_internal.end_sessions(
        ARRAY(SELECT s.id FROM api_key_mgmt.agent_sessions s WHERE s.tool_id = v.id AND s.status = 'active'),
        'revoked', 'tool disabled');
    PERFORM api_key_mgmt_internal.audit(disable_agent_tool.tenant_id, 'agent_tool.disabled', 'agent_tool', v.id::text,
        pg_catalog.jsonb_build_object('sessions_revoked', v_count));
    RETURN v_count;
END
$$;

-- Requests and approval.

-- request_secret_access(tenant_id, tool_key, secret_names, environment, justification,
-- duration, context) -> (request_id, status, session_id, ends_at). Tenant members (and
-- the backend service). A tool declares secret names or provider ids (* wildcards), or
-- tag:<tag> for the secrets carrying that tag (within its project, when it has one).
-- A name or environment the tool did not declare: the request is
-- recorded as denied, a security event is raised, and status 'denied' is returned.
-- Otherwise low risk (and medium when the tenant's settings say auto_approve_medium)
-- opens a session at once; high and critical wait for a tenant admin until the
-- deadline (api_key_mgmt.agent_request_timeout). duration NULL or longer than the
-- tool's max_session: max_session.
CREATE FUNCTION api_key_mgmt_impl.request_secret_access(
    tenant_id uuid, tool_key text, secret_names text[], environment text, justification text,
    duration interval DEFAULT NULL, context jsonb DEFAULT NULL
) RETURNS TABLE (request_id uuid, status text, session_id uuid, ends_at timestamptz)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tenant api_key_mgmt.tenants;
    v_tool api_key_mgmt.agent_tools;
    v_req api_key_mgmt.access_requests;
    v_undeclared text[];
    v_tags text[];
    v_missing text;
    v_ids uuid[];
    v_duration interval;
    v_decision text;
    v_session uuid;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(request_secret_access.tenant_id, 'member');
    v_tenant := api_key_mgmt_internal.tenant_row(request_secret_access.tenant_id, true);
    v_tool := api_key_mgmt_internal.tool_row(request_secret_access.tenant_id, request_secret_access.tool_key);
    IF NOT v_tool.enabled THEN
        RAISE EXCEPTION 'agent tool "%" is disabled', v_tool.tool_key USING ERRCODE = '55000';
    END IF;
    PERFORM api_key_mgmt_internal.check_names('secret_names', request_secret_access.secret_names, 32);
    PERFORM api_key_mgmt_internal.check_secret_environment(request_secret_access.environment);
    PERFORM api_key_mgmt_internal.check_text('justification', request_secret_access.justification, 2000);
    IF request_secret_access.duration IS NOT NULL AND request_secret_access.duration <= '0'::interval THEN
        RAISE EXCEPTION 'duration must be positive' USING ERRCODE = '22023';
    END IF;
    IF request_secret_access.context IS NOT NULL THEN
        PERFORM api_key_mgmt_internal.check_object('context', request_secret_access.context);
    END IF;
    v_duration := LEAST(COALESCE(request_secret_access.duration, v_tool.max_session), v_tool.max_session);
    -- Declared: a pattern covers the name, or a tag:<tag> pattern covers the secret's tags.
    v_tags := ARRAY(SELECT pg_catalog.substr(d, 5) FROM pg_catalog.unnest(v_tool.secrets) d WHERE d LIKE 'tag:%');
    v_undeclared := ARRAY(SELECT n FROM pg_catalog.unnest(request_secret_access.secret_names) n
                           WHERE NOT api_key_mgmt_internal.agent_declared(v_tool.secrets, n)
                             AND NOT EXISTS (SELECT FROM api_key_mgmt.tenant_secrets s
                                              WHERE s.tenant_id = v_tool.tenant_id
                                                AND s.environment = request_secret_access.environment
                                                AND (s.name = n OR s.provider = n) AND s.tags && v_tags
                                                AND (v_tool.project_id IS NULL OR s.project_id = v_tool.project_id)));
    IF pg_catalog.cardinality(v_undeclared) > 0
       OR NOT request_secret_access.environment = ANY (v_tool.environments) THEN
        INSERT INTO api_key_mgmt.access_requests AS r (tenant_id, tool_id, secret_names, environment, justification,
                duration, context, risk_level, status, requested_by, decided_by, decided_at, note)
        VALUES (v_tool.tenant_id, v_tool.id, request_secret_access.secret_names, request_secret_access.environment,
                request_secret_access.justification, v_duration, request_secret_access.context, v_tool.risk_level,
                'denied', api_key_mgmt_internal.actor(), 'policy', pg_catalog.now(), 'not declared by the tool')
        RETURNING * INTO v_req;
        PERFORM api_key_mgmt_internal.security_event(v_tool.tenant_id, 'undeclared_request', 'warning',
            'access_request', v_req.id::text,
            pg_catalog.jsonb_build_object('tool_key', v_tool.tool_key, 'undeclared', v_undeclared,
                'environment', request_secret_access.environment,
                'environment_declared', request_secret_access.environment = ANY (v_tool.environments)));
        PERFORM api_key_mgmt_internal.audit(v_tool.tenant_id, 'access_request.refused', 'access_request', v_req.id::text,
            pg_catalog.jsonb_build_object('tool_key', v_tool.tool_key, 'undeclared', v_undeclared));
        RETURN QUERY SELECT v_req.id, v_req.status, NULL::uuid, NULL::timestamptz;
        RETURN;
    END IF;
    -- Each name: the tenant's secret of that name, else of that provider, in the environment.
    SELECT n INTO v_missing FROM pg_catalog.unnest(request_secret_access.secret_names) n
     WHERE NOT EXISTS (SELECT FROM api_key_mgmt.tenant_secrets s
                        WHERE s.tenant_id = v_tool.tenant_id AND s.environment = request_secret_access.environment
                          AND (s.name = n OR s.provider = n)
                          AND (v_tool.project_id IS NULL OR s.project_id = v_tool.project_id))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the tenant has no % secret "%"%', request_secret_access.environment, v_missing,
            CASE WHEN v_tool.project_id IS NULL THEN '' ELSE ' in the tool''s project' END
            USING ERRCODE = '42704';
    END IF;
    v_ids := ARRAY(SELECT DISTINCT s.id FROM pg_catalog.unnest(request_secret_access.secret_names) n
                     JOIN api_key_mgmt.tenant_secrets s
                       ON s.tenant_id = v_tool.tenant_id AND s.environment = request_secret_access.environment
                      AND (s.name = n OR s.provider = n)
                      AND (v_tool.project_id IS NULL OR s.project_id = v_tool.project_id)
                      AND (api_key_mgmt_internal.agent_declared(v_tool.secrets, n) OR s.tags && v_tags));
    v_decision := api_key_mgmt_internal.agent_decision(v_tool.risk_level,
        COALESCE(v_tenant.settings ->> 'auto_approve_medium', 'false') = 'true');
    INSERT INTO api_key_mgmt.access_requests AS r (tenant_id, tool_id, secret_names, secret_ids, environment,
            justification, duration, context, risk_level, status, requested_by, deadline, decided_by, decided_at, note)
    VALUES (v_tool.tenant_id, v_tool.id, request_secret_access.secret_names, v_ids, request_secret_access.environment,
            request_secret_access.justification, v_duration, request_secret_access.context, v_tool.risk_level,
            v_decision, api_key_mgmt_internal.actor(),
            CASE WHEN v_decision = 'pending'
                 THEN pg_catalog.now() + pg_catalog.current_setting('api_key_mgmt.agent_request_timeout')::interval END,
            CASE WHEN v_decision = 'approved' THEN 'policy' END,
            CASE WHEN v_decision = 'approved' THEN pg_catalog.now() END,
            CASE WHEN v_decision = 'approved' THEN 'auto-approved: ' || v_tool.risk_level || ' risk' END)
    RETURNING * INTO v_req;
    PERFORM api_key_mgmt_internal.audit(v_tool.tenant_id, 'access_request.created', 'access_request', v_req.id::text,
        pg_catalog.jsonb_build_object('tool_key', v_tool.tool_key, 'secret_names', v_req.secret_names,
            'environment', v_req.environment, 'duration', v_req.duration, 'status', v_req.status));
    IF v_decision = 'approved' THEN
        v_session := api_key_mgmt_internal.open_session(v_req);
    END IF;
    RETURN QUERY SELECT v_req.id, v_req.status, v_session,
        CASE WHEN v_session IS NOT NULL THEN pg_catalog.now() + v_duration END;
END
$$;

-- pending_request(request_id): the request, locked, after authorizing a tenant admin;
-- 42704 unknown, 55000 no longer pending (a pending one past its deadline expires).
CREATE FUNCTION api_key_mgmt_internal.pending_request(p_request_id uuid)
    RETURNS api_key_mgmt.access_requests LANGUAGE plpgsql AS $$
DECLARE
    v api_key_mgmt.access_requests;
BEGIN
    IF p_request_id IS NULL THEN
        RAISE EXCEPTION 'request_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO v FROM api_key_mgmt.access_requests r WHERE r.id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'access request % does not exist', p_request_id USING ERRCODE = '42704';
    END IF;
    PERFORM api_key_mgmt_internal.authorize(v.tenant_id, 'admin');
    IF v.status = 'pending' AND v.deadline <= pg_catalog.now() THEN
        RAISE EXCEPTION 'access request % has expired', p_request_id USING ERRCODE = '55000';
    END IF;
    IF v.status <> 'pending' THEN
        RAISE EXCEPTION 'access request % is % already', p_request_id, v.status USING ERRCODE = '55000';
    END IF;
    RETURN v;
END
$$;

-- decide_request(request_id, status, note) -> the request, decided: a pending request
-- (pending_request: tenant admins) set to 'approved' (only while its tool is enabled)
-- or 'denied', with who decided, when and why, and its audit entry.
CREATE FUNCTION api_key_mgmt_internal.decide_request(p_request_id uuid, p_status text, p_note text)
    RETURNS api_key_mgmt.access_requests LANGUAGE plpgsql AS $$
DECLARE
    v api_key_mgmt.access_requests;
BEGIN
    v := api_key_mgmt_internal.pending_request(p_request_id);
    IF pg_catalog.char_length(p_note) > 1000 THEN
        RAISE EXCEPTION 'note must be at most 1000 characters' USING ERRCODE = '22023';
    END IF;
    IF p_status = 'approved' AND NOT (SELECT t.enabled FROM api_key_mgmt.agent_tools t WHERE t.id = v.tool_id) THEN
        RAISE EXCEPTION 'the agent tool is disabled' USING ERRCODE = '55000';
    END IF;
    UPDATE api_key_mgmt.access_requests r
       SET status = p_status, decided_by = api_key_mgmt_internal.actor(), decided_at = pg_catalog.now(),
           note = p_note
     WHERE r.id = v.id
    RETURNING * INTO v;
    PERFORM api_key_mgmt_internal.audit(v.tenant_id, 'access_request.' || p_status, 'access_request', v.id::text,
        pg_catalog.jsonb_build_object('note', p_note));
    RETURN v;
END
$$;

-- approve_access_request(request_id, note) -> uuid: approve a pending request and open
-- its session, which lasts the request's duration from now (tenant admins).
CREATE FUNCTION api_key_mgmt_impl.approve_access_request(request_id uuid, note text DEFAULT NULL)
    RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN api_key_mgmt_internal.open_session(api_key_mgmt_internal.decide_request(
        approve_access_request.request_id, 'approved', approve_access_request.note));
END
$$;

-- deny_access_request(request_id, note) -> void (tenant admins); a security event.
CREATE FUNCTION api_key_mgmt_impl.deny_access_request(request_id uuid, note text DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v api_key_mgmt.access_requests;
BEGIN
    v := api_key_mgmt_internal.decide_request(deny_access_request.request_id, 'denied', deny_access_request.note);
    PERFORM api_key_mgmt_internal.security_event(v.tenant_id, 'access_denied', 'info', 'access_request', v.id::text,
        pg_catalog.jsonb_build_object('decided_by', api_key_mgmt_internal.actor()));
END
$$;

-- Sessions and proxy tokens.

-- issue_proxy_token(session_id, secret_name, max_uses) -> text: a token (shown once)
-- for one secret of an active session; secret_name one of the names requested.
-- max_uses NULL: the tool's default. Tenant members (and the backend service).
CREATE FUNCTION api_key_mgmt_impl.issue_proxy_token(session_id uuid, secret_name text, max_uses integer DEFAULT NULL)
    RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_session api_key_mgmt.agent_sessions;
    v_req api_key_mgmt.access_requests;
    v_tool api_key_mgmt.agent_tools;
    v_secret uuid;
    v_key record;
    v_token_id uuid;
BEGIN
    IF issue_proxy_token.session_id IS NULL THEN
        RAISE EXCEPTION 'session_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO v_session FROM api_key_mgmt.agent_sessions s WHERE s.id = issue_proxy_token.session_id FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent session % does not exist', issue_proxy_token.session_id USING ERRCODE = '42704';
    END IF;
    PERFORM api_key_mgmt_internal.authorize(v_session.tenant_id, 'member');
    PERFORM api_key_mgmt_internal.tenant_row(v_session.tenant_id, true);
    IF v_session.status <> 'active' OR v_session.ends_at <= pg_catalog.now() THEN
        RAISE EXCEPTION 'agent session % is not active', issue_proxy_token.session_id USING ERRCODE = '55000';
    END IF;
    PERFORM api_key_mgmt_internal.check_text('secret_name', issue_proxy_token.secret_name, 200);
    IF issue_proxy_token.max_uses <= 0 THEN
        RAISE EXCEPTION 'max_uses must be positive (or NULL: the tool''s default)' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_req FROM api_key_mgmt.access_requests r WHERE r.id = v_session.request_id;
    SELECT * INTO v_tool FROM api_key_mgmt.agent_tools t WHERE t.id = v_session.tool_id;
    IF NOT issue_proxy_token.secret_name = ANY (v_req.secret_names) THEN
        RAISE EXCEPTION 'secret "%" was not granted to this session', issue_proxy_token.secret_name
            USING ERRCODE = '42501';
    END IF;
    -- The secret's name first, else the provider's secret, among those granted.
    SELECT s.id INTO v_secret FROM api_key_mgmt.tenant_secrets s
     WHERE s.id = ANY (v_req.secret_ids) AND s.environment = v_session.environment
       AND (s.name = issue_proxy_token.secret_name OR s.provider = issue_proxy_token.secret_name)
     ORDER BY (s.name = issue_proxy_token.secret_name) DESC, s.model NULLS FIRST LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'secret "%" of this session no longer exists', issue_proxy_token.secret_name
            USING ERRCODE = '42704';
    END IF;
    SELECT * INTO v_key FROM api_key_mgmt_internal.new_key('pxt', api_key_mgmt_internal.agent_token_env(v_session.environment));
    INSERT INTO api_key_mgmt.proxy_tokens (tenant_id, session_id, secret_id, secret_name, environment, token_hash,
                                           display_prefix, max_uses)
    VALUES (v_session.tenant_id, v_session.id, v_secret, issue_proxy_token.secret_name, v_session.environment,
            v_key.key_hash, v_key.display_prefix, COALESCE(issue_proxy_token.max_uses, v_tool.max_uses))
    RETURNING id INTO v_token_id;
    PERFORM api_key_mgmt_internal.audit(v_session.tenant_id, 'proxy_token.issued', 'proxy_token', v_token_id::text,
        pg_catalog.jsonb_build_object('session_id', v_session.id, 'secret_id', v_secret,
            'display_prefix', v_key.display_prefix, 'max_uses', COALESCE(issue_proxy_token.max_uses, v_tool.max_uses)));
    RETURN v_key.api_key;
END
$$;

-- revoke_session(session_id, reason) -> boolean: end a session at once and revoke its
-- tokens; false when it had ended already (tenant members).
CREATE FUNCTION api_key_mgmt_impl.revoke_session(session_id uuid, reason text DEFAULT NULL)
    RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tenant uuid;
BEGIN
    IF revoke_session.session_id IS NULL THEN
        RAISE EXCEPTION 'session_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT s.tenant_id INTO v_tenant FROM api_key_mgmt.agent_sessions s WHERE s.id = revoke_session.session_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent session % does not exist', revoke_session.session_id USING ERRCODE = '42704';
    END IF;
    PERFORM api_key_mgmt_internal.authorize(v_tenant, 'member');
    IF pg_catalog.char_length(revoke_session.reason) > 500 THEN
        RAISE EXCEPTION 'reason must be at most 500 characters' USING ERRCODE = '22023';
    END IF;
    IF api_key_mgmt_internal.end_sessions(ARRAY[revoke_session.session_id], 'revoked',
                                          COALESCE(revoke_session.reason, 'revoked')) = 0 THEN
        RETURN false;
    END IF;
    PERFORM api_key_mgmt_internal.audit(v_tenant, 'agent_session.revoked', 'agent_session',
        revoke_session.session_id::text, pg_catalog.jsonb_build_object('reason', revoke_session.reason));
    RETURN true;
END
$$;

-- Internal, for resolve_proxy_token: count one use of a token (NULL when it has none
-- left) and audit the read. Called by the Rust code after its checks.
CREATE FUNCTION api_key_mgmt_internal.use_proxy_token(p_token_id uuid)
    RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v api_key_mgmt.proxy_tokens;
BEGIN
    UPDATE api_key_mgmt.proxy_tokens t SET uses = t.uses + 1, last_used_at = pg_catalog.now()
     WHERE t.id = p_token_id AND (t.max_uses IS NULL OR t.uses < t.max_uses)
    RETURNING * INTO v;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF pg_catalog.current_setting('api_key_mgmt.audit_secret_reads')::boolean THEN
        PERFORM api_key_mgmt_internal.audit(v.tenant_id, 'secret.decrypted', 'secret', v.secret_id::text,
            pg_catalog.jsonb_build_object('source', 'proxy_token', 'token_id', v.id, 'session_id', v.session_id,
                                          'use', v.uses));
    END IF;
    RETURN v.uses;
END
$$;

-- Maintenance.

-- run_agent_maintenance() -> (requests_expired, sessions_expired, tokens_revoked,
-- purged): expire pending requests past their deadline and sessions past their end
-- (revoking their tokens), and delete requests, sessions, tokens and security events
-- older than api_key_mgmt.agent_retention. Platform administrators; safe to schedule
-- (pg_cron) and run by the background worker when the library is preloaded.
CREATE FUNCTION api_key_mgmt_impl.run_agent_maintenance()
    RETURNS TABLE (requests_expired bigint, sessions_expired bigint, tokens_revoked bigint, purged bigint)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_requests bigint;
    v_sessions bigint;
    v_tokens bigint;
    v_purged bigint := 0;
    v_n bigint;
    v_cutoff timestamptz;
BEGIN
    PERFORM api_key_mgmt_internal.authorize(NULL, 'platform');
    UPDATE api_key_mgmt.access_requests r SET status = 'expired', decided_at = pg_catalog.now(), decided_by = 'policy',
           note = 'no decision before the deadline'
     WHERE r.status = 'pending' AND r.deadline <= pg_catalog.now();
    GET DIAGNOSTICS v_requests = ROW_COUNT;
    SELECT pg_catalog.count(*) INTO v_tokens FROM api_key_mgmt.proxy_tokens t
      JOIN api_key_mgmt.agent_sessions s ON s.id = t.session_id
     WHERE s.status = 'active' AND s.ends_at <= pg_catalog.now() AND t.revoked_at IS NULL;
    v_sessions := api_key_mgmt_internal.end_sessions(
        ARRAY(SELECT s.id FROM api_key_mgmt.agent_sessions s WHERE s.status = 'active' AND s.ends_at <= pg_catalog.now()),
        'expired', 'session ended');
    v_cutoff := pg_catalog.now() - pg_catalog.current_setting('api_key_mgmt.agent_retention')::interval;
    -- Requests take their sessions and tokens with them (ON DELETE CASCADE).
    DELETE FROM api_key_mgmt.access_requests r
     WHERE r.status <> 'pending' AND COALESCE(r.decided_at, r.requested_at) < v_cutoff
       AND NOT EXISTS (SELECT FROM api_key_mgmt.agent_sessions s
                        WHERE s.request_id = r.id AND (s.status = 'active' OR COALESCE(s.ended_at, s.ends_at) >= v_cutoff));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_purged := v_purged + v_n;
    DELETE FROM api_key_mgmt.security_events e WHERE e.occurred_at < v_cutoff;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_purged := v_purged + v_n;
    IF v_requests + v_sessions + v_purged > 0 THEN
        PERFORM api_key_mgmt_internal.audit(NULL, 'agent.maintenance', NULL, NULL,
            pg_catalog.jsonb_build_object('requests_expired', v_requests, 'sessions_expired', v_sessions,
                                          'tokens_revoked', v_tokens, 'purged', v_purged));
    END IF;
    RETURN QUERY SELECT v_requests, v_sessions, v_tokens, v_purged;
END
$$;

-- RLS for every table, and their dump registration.
ALTER TABLE api_key_mgmt.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.projects FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.agent_tools ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.agent_tools FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.access_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.access_requests FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.agent_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.agent_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.proxy_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.proxy_tokens FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.security_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key_mgmt.security_events FORCE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.projects', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.agent_tools', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.access_requests', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.agent_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.proxy_tokens', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_mgmt.security_events', '');

CREATE POLICY projects_admin ON api_key_mgmt.projects FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY agent_tools_admin ON api_key_mgmt.agent_tools FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY access_requests_admin ON api_key_mgmt.access_requests FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY agent_sessions_admin ON api_key_mgmt.agent_sessions FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY proxy_tokens_admin ON api_key_mgmt.proxy_tokens FOR SELECT TO api_key_mgmt_admin USING (true);
CREATE POLICY security_events_admin ON api_key_mgmt.security_events FOR SELECT TO api_key_mgmt_admin USING (true);

CREATE POLICY projects_member ON api_key_mgmt.projects FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);
CREATE POLICY agent_tools_member ON api_key_mgmt.agent_tools FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);
CREATE POLICY access_requests_member ON api_key_mgmt.access_requests FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);
CREATE POLICY agent_sessions_member ON api_key_mgmt.agent_sessions FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IS NOT NULL);
CREATE POLICY proxy_tokens_member ON api_key_mgmt.proxy_tokens FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IN ('admin', 'owner'));
CREATE POLICY security_events_member ON api_key_mgmt.security_events FOR SELECT TO api_key_mgmt_user
    USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id())
           AND (SELECT api_key_mgmt.current_tenant_role()) IN ('admin', 'owner'));
