-- Benchmark schema (run by benches/run.sh as superuser on a throwaway cluster).
-- psql variable: ntenants.
--
-- Everything here except the extension itself lives in schema `bench`, which exists
-- only for the benchmark:
--   bench.side            plaintext of every issued key by a dense integer id, so that
--                         pgbench can pick a random key (the FLOOR script reads only this)
--   bench.tenant_map      tenant number 1..ntenants -> tenant id
--   bench.hw_tenants,
--   bench.hw_keys,
--   bench.hw_validate_api_key()
--                         the hand-written plpgsql + pgcrypto baseline: what users write
--                         themselves without the extension (see BENCHMARKS.md)
\set ON_ERROR_STOP on

CREATE EXTENSION api_key_mgmt;
CREATE EXTENSION pgcrypto;      -- digest(), for the hand-written baseline only
CREATE EXTENSION pg_prewarm;    -- to load tables and indexes before measuring

CREATE SCHEMA bench;

CREATE TABLE bench.side (
    id      integer PRIMARY KEY,
    api_key text NOT NULL
);

CREATE TABLE bench.tenant_map (
    n         integer PRIMARY KEY,
    tenant_id uuid NOT NULL
);

-- ---------------------------------------------------------------------------------
-- The hand-written baseline: a key table holding the SHA-256 (bytea, pgcrypto
-- digest()) of each key, and a plpgsql function that hashes, looks the key and its
-- tenant up, checks tenant disabled / revoked / expiry / scope (exact, area:* or *,
-- against the key's scopes and the tenant's plan) and returns a record.
-- ---------------------------------------------------------------------------------
CREATE TABLE bench.hw_tenants (
    id             uuid PRIMARY KEY,
    disabled_at    timestamptz,
    allowed_scopes text[] NOT NULL DEFAULT '{*}'
);

CREATE TABLE bench.hw_keys (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES bench.hw_tenants (id),
    key_hash   bytea NOT NULL UNIQUE,          -- digest(api_key, 'sha256')
    scopes     text[] NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    metadata   jsonb NOT NULL DEFAULT '{}'
);

CREATE TYPE bench.hw_validation AS (
    valid      boolean,
    code       text,
    tenant_id  uuid,
    key_id     uuid,
    scopes     text[],
    expires_at timestamptz,
    metadata   jsonb
);

CREATE FUNCTION bench.hw_validate_api_key(p_key text, p_scope text)
    RETURNS bench.hw_validation
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    k record;
    r bench.hw_validation;
    wanted text[];
BEGIN
    r.valid := false;
    IF p_key IS NULL OR p_key = '' THEN
        r.code := 'missing';
        RETURN r;
    END IF;
    SELECT hk.id, hk.tenant_id, hk.scopes, hk.expires_at, hk.revoked_at, hk.metadata,
           t.disabled_at, t.allowed_scopes
      INTO k
      FROM bench.hw_keys hk
      JOIN bench.hw_tenants t ON t.id = hk.tenant_id
     WHERE hk.key_hash = public.digest(p_key, 'sha256');
    IF NOT FOUND THEN
        r.code := 'not_found';
        RETURN r;
    END IF;
    r.tenant_id := k.tenant_id;
    r.key_id := k.id;
    r.scopes := k.scopes;
    r.expires_at := k.expires_at;
    r.metadata := k.metadata;
    -- A scope is granted by itself, by area:* or by *.
    wanted := ARRAY[p_scope, split_part(p_scope, ':', 1) || ':*', '*'];
    IF k.disabled_at IS NOT NULL THEN
        r.code := 'tenant_disabled';
    ELSIF k.revoked_at IS NOT NULL THEN
        r.code := 'revoked';
    ELSIF k.expires_at IS NOT NULL AND k.expires_at <= now() THEN
        r.code := 'expired';
    ELSIF p_scope IS NOT NULL
          AND NOT (k.scopes && wanted AND k.allowed_scopes && wanted) THEN
        r.code := 'scope_denied';
    ELSE
        r.code := 'ok';
        r.valid := true;
    END IF;
    RETURN r;
END
$$;

-- ---------------------------------------------------------------------------------
-- Tenants: through the extension's own create_tenant(), set-based.
-- ---------------------------------------------------------------------------------
INSERT INTO bench.tenant_map (n, tenant_id)
SELECT g, api_key_mgmt.create_tenant('bench tenant ' || g, '{*}', 'bench-' || g)
  FROM generate_series(1, :ntenants) AS g;

INSERT INTO bench.hw_tenants (id, disabled_at, allowed_scopes)
SELECT id, disabled_at, allowed_scopes FROM api_key_mgmt.tenants;

-- ---------------------------------------------------------------------------------
-- A route of the PostgREST pre-request hook, for authenticate_request() in
-- benches/instructions.sh (the keys hold agents:orchestration).
-- ---------------------------------------------------------------------------------
SELECT api_key_mgmt.add_route_scope('POST', '/rpc/orchestrate', 'agents:orchestration');
