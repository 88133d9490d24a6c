#![cfg(not(feature = "pg_test"))]
//! Tenant isolation, roles, the audit log and the PostgREST pre-request hook (issue 5),
//! over real connections to a cluster the harness starts itself (tests/common). Each
//! test works in a database of its own; login roles are named after their test (roles
//! are cluster-wide and the tests run in parallel).
//!
//! Run with `make test-integration` (installs the extension first).

mod common;

use common::keys::{body, unissued_native_key};
use common::secrets::{
    openai_secret, put_secret, set_database_key_file, try_get_secret, try_resolve, KeyFile,
    MasterKey,
};
use common::sql::*;
use common::{run, TestDb};
use postgres::types::ToSql;
use postgres::{Client, Error, SimpleQueryMessage};
use serde_json::{json, Value};
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// A database with the extension and a master key file (`1 <64 hex>`) configured with
/// `ALTER DATABASE ... SET api_key_mgmt.master_key_file` (new sessions see it).
fn db_with_key_file(name: &str) -> (TestDb, KeyFile) {
    let db = TestDb::new(name);
    let cluster = db.cluster();
    let file = KeyFile::create(cluster, name, vec![MasterKey::random(1)], None);
    let mut admin = cluster.connect("postgres");
    set_database_key_file(&mut admin, &db.name, &file.path);
    (db, file)
}

/// `issue_api_key(tenant, name, scopes)`.
fn issue_scoped(c: &mut Client, tenant: &str, name: &str, scopes: &[&str]) -> Issued {
    try_issue_scoped(c, tenant, name, scopes)
        .unwrap_or_else(|e| panic!("issue_api_key({name}): {e:?}"))
}

fn try_issue_scoped(
    c: &mut Client,
    tenant: &str,
    name: &str,
    scopes: &[&str],
) -> Result<Issued, Error> {
    let row = c.query_one(
        "SELECT key_id::text, api_key \
           FROM api_key_mgmt.issue_api_key($1::text::uuid, $2, $3::text[])",
        &[&tenant, &name, &scopes],
    )?;
    Ok(Issued {
        id: row.get(0),
        key: row.get(1),
    })
}

fn add_member(c: &mut Client, tenant: &str, user: &str, role: &str) {
    c.execute(
        "SELECT api_key_mgmt.add_tenant_member($1::text::uuid, $2, $3)",
        &[&tenant, &user, &role],
    )
    .unwrap_or_else(|e| panic!("add_tenant_member({user}, {role}): {e:?}"));
}

/// The session acts for JWT subject `user` with the tenant claim `tenant` (what
/// PostgREST sets from a verified JWT; here for the whole session).
fn act_as(c: &mut Client, user: Option<&str>, tenant: Option<&str>) {
    let claims = json!({"role": "authenticated", "sub": user, "tenant_id": tenant}).to_string();
    c.execute(
        "SELECT pg_catalog.set_config('request.jwt.claims', $1, false)",
        &[&claims],
    )
    .expect("set request.jwt.claims");
}

/// `(current_tenant_id(), current_tenant_role(), current_key_id())` of the session.
fn context(c: &mut Client) -> (Option<String>, Option<String>, Option<String>) {
    let row = c
        .query_one(
            "SELECT api_key_mgmt.current_tenant_id()::text, api_key_mgmt.current_tenant_role(), \
                    api_key_mgmt.current_key_id()::text",
            &[],
        )
        .expect("context functions");
    (row.get(0), row.get(1), row.get(2))
}

/// One text column of every row of `sql` (simple protocol, NULL as `<null>`).
fn texts(c: &mut Client, sql: &str) -> Result<Vec<Vec<String>>, Error> {
    Ok(c.simple_query(sql)?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("<null>").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// Every row of a query, each row as one text (`row::text`), in the query's order.
fn rows_text(c: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<String> {
    c.query(sql, params)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

fn one_i64(c: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
    c.query_one(sql, params)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

fn text_params(v: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    v.iter().map(|s| s as &(dyn ToSql + Sync)).collect()
}

/// A refusal of the pre-request hook, in PostgREST's format: SQLSTATE `PGRST`, the
/// message a JSON body (code, message, details, hint), the detail JSON with the HTTP
/// status and headers.
#[derive(Debug)]
struct Refusal {
    status: i64,
    code: String,
    message: String,
    headers: Value,
}

/// Parse a PGRST error, asserting that none of its text carries any of `secrets` (or
/// anything shaped like a live key, which would mean the log hook masked a leak).
#[track_caller]
fn refusal(e: &Error, secrets: &[&str]) -> Refusal {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e:?}"));
    assert_eq!(db.code().code(), "PGRST", "SQLSTATE of {db:?}");
    for text in [Some(db.message()), db.detail(), db.hint(), db.where_()]
        .into_iter()
        .flatten()
    {
        for s in secrets {
            assert!(!text.contains(s), "the error carries a key: {text}");
        }
        assert!(
            !text.contains("_live_") && !text.contains("_test_"),
            "the error carries something shaped like a key: {text}"
        );
    }
    let body: Value = serde_json::from_str(db.message())
        .unwrap_or_else(|e| panic!("message is not JSON ({e}): {}", db.message()));
    let detail: Value = serde_json::from_str(db.detail().expect("a PGRST error has a DETAIL"))
        .unwrap_or_else(|e| panic!("detail is not JSON ({e}): {:?}", db.detail()));
    Refusal {
        status: detail["status"].as_i64().expect("detail.status"),
        code: body["code"].as_str().expect("message.code").to_owned(),
        message: body["message"]
            .as_str()
            .expect("message.message")
            .to_owned(),
        headers: detail["headers"].clone(),
    }
}

/// What PostgREST sets per request before calling `db-pre-request`.
struct Request<'a> {
    role: &'a str,
    claims: Value,
    headers: Value,
    method: &'a str,
    path: &'a str,
}

fn pre_request(c: &mut Client, r: &Request) -> Result<(), Error> {
    c.batch_execute(&format!("SET LOCAL ROLE {}", r.role))?;
    let (claims, headers) = (r.claims.to_string(), r.headers.to_string());
    c.execute(
        "SELECT pg_catalog.set_config('request.jwt.claims', $1, true), \
                pg_catalog.set_config('request.headers', $2, true), \
                pg_catalog.set_config('request.method', $3, true), \
                pg_catalog.set_config('request.path', $4, true)",
        &[&claims, &headers, &r.method, &r.path],
    )?;
    c.execute("SELECT api_key_mgmt.authenticate_request()", &[])?;
    Ok(())
}

/// Replay one PostgREST request: `BEGIN; SET LOCAL ROLE; set_config(...) x4;
/// SELECT authenticate_request(); <query>; COMMIT` (ROLLBACK on error).
fn replay<T>(
    c: &mut Client,
    r: &Request,
    query: impl FnOnce(&mut Client) -> Result<T, Error>,
) -> Result<T, Error> {
    c.batch_execute("BEGIN").expect("BEGIN");
    let result = pre_request(c, r).and_then(|()| query(c));
    match &result {
        Ok(_) => c.batch_execute("COMMIT").expect("COMMIT"),
        Err(_) => c.batch_execute("ROLLBACK").expect("ROLLBACK"),
    }
    result
}

/// The rows of `SELECT * FROM app.documents` as (tenant_id, title), by title.
fn documents(c: &mut Client) -> Result<Vec<(String, String)>, Error> {
    Ok(texts(c, "SELECT * FROM app.documents ORDER BY title")?
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect())
}

// ---------------------------------------------------------------------------------
// 1. PostgREST replay
// ---------------------------------------------------------------------------------

/// Set up the PostgREST roles (an authenticator, NOINHERIT, that may become the request
/// roles, which are tenant users) and an application table under RLS on the tenant.
fn postgrest_setup(su: &mut Client, authenticator: &str, anon: &str, user: &str) {
    su.batch_execute(&format!(
        "CREATE ROLE {authenticator} LOGIN NOINHERIT;
         CREATE ROLE {anon} NOLOGIN;
         CREATE ROLE {user} NOLOGIN;
         GRANT api_key_mgmt_user TO {anon}, {user};
         GRANT {anon}, {user} TO {authenticator};
         CREATE SCHEMA app;
         CREATE TABLE app.documents (tenant_id uuid NOT NULL, title text NOT NULL);
         ALTER TABLE app.documents ENABLE ROW LEVEL SECURITY;
         CREATE POLICY documents_tenant ON app.documents
             USING (tenant_id = (SELECT api_key_mgmt.current_tenant_id()));
         GRANT USAGE ON SCHEMA app TO {anon}, {user};
         GRANT SELECT ON app.documents TO {anon}, {user};"
    ))
    .expect("PostgREST roles and app.documents");
}

#[test]
fn postgrest_replay() {
    let db = TestDb::new("tn_pgrst");
    let mut su = db.connect();
    postgrest_setup(&mut su, "pr_authenticator", "web_anon", "web_user");
    let a = create_tenant(&mut su, "pgrst A");
    let b = create_tenant(&mut su, "pgrst B");
    add_member(&mut su, &b, "b_user", "owner");
    su.execute(
        "INSERT INTO app.documents VALUES ($1::text::uuid, 'a-1'), ($1::text::uuid, 'a-2'), \
                                          ($2::text::uuid, 'b-1')",
        &[&a, &b],
    )
    .unwrap();
    for (method, path, scope) in [
        ("GET", "/documents", Some("documents:read")),
        ("POST", "/rpc/purge_documents", Some("documents:admin")),
        ("GET", "/health", None),
    ] {
        su.execute(
            "SELECT api_key_mgmt.add_route_scope($1, $2, $3)",
            &[&method, &path, &scope],
        )
        .unwrap_or_else(|e| panic!("add_route_scope({method} {path}): {e:?}"));
    }
    let ka = issue_scoped(&mut su, &a, "rest A", &["documents:read"]);
    let kb = issue_scoped(&mut su, &b, "rest B", &["documents:read"]);
    let kr = issue_scoped(&mut su, &a, "rest revoked", &["documents:read"]);
    assert!(revoke(&mut su, &kr.id));
    let secrets: Vec<&str> = [&ka, &kb, &kr]
        .iter()
        .flat_map(|k| [k.key.as_str(), body(&k.key)])
        .collect();

    let mut c = db.connect_as("pr_authenticator");
    // The authenticator itself (NOINHERIT) holds nothing of its request roles.
    assert_fails(
        &mut c,
        "SELECT api_key_mgmt.authenticate_request()",
        "42501",
    );

    let anon = |headers: Value, method: &'static str, path: &'static str| Request {
        role: "web_anon",
        claims: json!({"role": "web_anon"}),
        headers,
        method,
        path,
    };
    let doc = |t: &str, title: &str| (t.to_owned(), title.to_owned());

    // Allowed: the key's tenant's rows only, and the key recorded for the transaction.
    let request = anon(
        json!({"x-api-key": ka.key, "user-agent": "it/1.0", "x-forwarded-for": "203.0.113.9"}),
        "GET",
        "/documents",
    );
    let (docs, ctx) = replay(&mut c, &request, |c| Ok((documents(c)?, context(c))))
        .unwrap_or_else(|e| panic!("allowed request: {e:?}"));
    assert_eq!(docs, vec![doc(&a, "a-1"), doc(&a, "a-2")]);
    assert_eq!(ctx, (Some(a.clone()), None, Some(ka.id.clone())));
    // The next transaction on the same connection has no key any more.
    c.batch_execute("BEGIN; SET LOCAL ROLE web_anon").unwrap();
    let after = (context(&mut c), documents(&mut c).unwrap());
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(after, ((None, None, None), vec![]));

    // Tenant B's key sees tenant B's row only.
    let request = anon(json!({"x-api-key": kb.key}), "GET", "/documents");
    let docs = replay(&mut c, &request, documents).expect("tenant B's request");
    assert_eq!(docs, vec![doc(&b, "b-1")]);

    // A key beats a JWT tenant claim (web_user with a verified JWT of a member of B).
    let request = Request {
        role: "web_user",
        claims: json!({"role": "web_user", "sub": "b_user", "tenant_id": b}),
        headers: json!({"x-api-key": ka.key}),
        method: "GET",
        path: "/documents",
    };
    let (docs, ctx) = replay(&mut c, &request, |c| Ok((documents(c)?, context(c)))).unwrap();
    assert_eq!(docs, vec![doc(&a, "a-1"), doc(&a, "a-2")]);
    assert_eq!(ctx, (Some(a.clone()), None, Some(ka.id.clone())));

    // Authorization: Bearer <key> works as well.
    let bearer = format!("Bearer {}", ka.key);
    let request = anon(json!({"authorization": bearer}), "GET", "/documents");
    let (docs, ctx) = replay(&mut c, &request, |c| Ok((documents(c)?, context(c)))).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(ctx.2.as_deref(), Some(ka.id.as_str()));

    // Wrong scope: 403.
    let request = anon(json!({"x-api-key": ka.key}), "POST", "/rpc/purge_documents");
    let err = replay(&mut c, &request, documents).expect_err("wrong scope");
    let r = refusal(&err, &secrets);
    assert_eq!((r.status, r.code.as_str()), (403, "AKM403"), "{r:?}");

    // Missing key: 401 with WWW-Authenticate.
    for headers in [
        json!({}),
        json!({"x-api-key": ""}),
        json!({"user-agent": "curl"}),
    ] {
        let request = anon(headers.clone(), "GET", "/documents");
        let err = replay(&mut c, &request, documents).expect_err("missing key");
        let r = refusal(&err, &secrets);
        assert_eq!(
            (r.status, r.code.as_str()),
            (401, "AKM401"),
            "{headers}: {r:?}"
        );
        assert_eq!(r.headers["WWW-Authenticate"], "ApiKey", "{r:?}");
        assert_eq!(r.message, "an API key is required");
    }

    // A JWT-looking bearer token is PostgREST's, never taken as an API key.
    let request = anon(
        json!({"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoid2ViX3VzZXIifQ.c2lnbmF0dXJl"}),
        "GET",
        "/documents",
    );
    let err = replay(&mut c, &request, documents).expect_err("JWT bearer");
    let r = refusal(&err, &secrets);
    assert_eq!((r.status, r.code.as_str()), (401, "AKM401"), "{r:?}");
    assert_eq!(
        r.message, "an API key is required",
        "a JWT must not be validated as a key"
    );

    // Revoked key: 401.
    let request = anon(json!({"x-api-key": kr.key}), "GET", "/documents");
    let err = replay(&mut c, &request, documents).expect_err("revoked key");
    let r = refusal(&err, &secrets);
    assert_eq!((r.status, r.code.as_str()), (401, "AKM401"), "{r:?}");
    assert_eq!(r.headers["WWW-Authenticate"], "ApiKey", "{r:?}");
    assert_eq!(r.message, "the API key is not valid (revoked)");

    // A key that was never issued (right shape and checksum): 401.
    let unknown = unissued_native_key("sk", "live");
    let request = anon(json!({"x-api-key": unknown}), "GET", "/documents");
    let err = replay(&mut c, &request, documents).expect_err("unknown key");
    let r = refusal(&err, &[&unknown, body(&unknown)]);
    assert_eq!((r.status, r.code.as_str()), (401, "AKM401"), "{r:?}");

    // No route matches (api_key_mgmt.unmatched_routes defaults to deny): 403.
    let request = anon(json!({"x-api-key": ka.key}), "GET", "/elsewhere");
    let err = replay(&mut c, &request, documents).expect_err("unmatched route");
    let r = refusal(&err, &secrets);
    assert_eq!((r.status, r.code.as_str()), (403, "AKM403"), "{r:?}");

    // Public route: no key needed, and no tenant either.
    let request = anon(json!({}), "GET", "/health");
    let (docs, ctx) = replay(&mut c, &request, |c| Ok((documents(c)?, context(c))))
        .expect("public route without a key");
    assert_eq!((docs, ctx), (vec![], (None, None, None)));

    // The failed requests left nothing behind on the connection.
    c.batch_execute("BEGIN; SET LOCAL ROLE web_anon").unwrap();
    let after = (context(&mut c), documents(&mut c).unwrap());
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(after, ((None, None, None), vec![]));
}

/// Metering through the pre-request hook: each request consumes one rate-limit token,
/// so the third request on a key limited to 2 per minute gets 429 with Retry-After; a
/// key whose credits are spent gets 402. Skipped (with a message) when the metering
/// functions (issue 4) are not installed.
#[test]
fn postgrest_rate_limited() {
    let db = TestDb::new("tn_pgrst_rate");
    let mut su = db.connect();
    let limiter: Option<String> = su
        .query_one(
            "SELECT to_regprocedure('api_key_mgmt.set_rate_limit(uuid,text,integer,interval,integer)')::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        limiter.is_some(),
        "api_key_mgmt.set_rate_limit(uuid,text,integer,interval,integer) is missing"
    );
    postgrest_setup(&mut su, "rl_authenticator", "rl_anon", "rl_user");
    let a = create_tenant(&mut su, "rate A");
    su.execute(
        "SELECT api_key_mgmt.add_route_scope('GET', '/documents', 'documents:read')",
        &[],
    )
    .unwrap();
    let k = issue_scoped(&mut su, &a, "limited", &["documents:read"]);
    let other = issue_scoped(&mut su, &a, "unlimited", &["documents:read"]);
    let broke = issue_scoped(&mut su, &a, "no credits", &["documents:read"]);
    // burst 0 is refused (22023: burst is 1 to 1e9, NULL = max_requests); NULL gives a
    // bucket of 2: two requests at once, the third refused.
    assert_sqlstate(
        su.execute(
            "SELECT api_key_mgmt.set_rate_limit($1::text::uuid, 'per_minute', 2, '1 minute', 0)",
            &[&k.id],
        ),
        "22023",
        "burst 0",
    );
    su.execute(
        "SELECT api_key_mgmt.set_rate_limit($1::text::uuid, 'per_minute', 2, '1 minute', NULL)",
        &[&k.id],
    )
    .unwrap();
    su.execute(
        "SELECT api_key_mgmt.set_key_caps($1::text::uuid, NULL, NULL, 0, NULL, NULL)",
        &[&broke.id],
    )
    .unwrap();
    let secrets: Vec<&str> = [&k, &other, &broke]
        .iter()
        .flat_map(|k| [k.key.as_str(), body(&k.key)])
        .collect();

    let mut c = db.connect_as("rl_authenticator");
    let request = |key: &str| Request {
        role: "rl_anon",
        claims: json!({"role": "rl_anon"}),
        headers: json!({"x-api-key": key}),
        method: "GET",
        path: "/documents",
    };
    for i in 1..=2 {
        let ctx = replay(&mut c, &request(&k.key), |c| Ok(context(c)))
            .unwrap_or_else(|e| panic!("request {i} within the limit: {e:?}"));
        assert_eq!(ctx.2.as_deref(), Some(k.id.as_str()));
    }
    for i in 3..=4 {
        let err =
            replay(&mut c, &request(&k.key), |c| Ok(context(c))).expect_err("beyond the limit");
        let r = refusal(&err, &secrets);
        assert_eq!(
            (r.status, r.code.as_str(), r.message.as_str()),
            (429, "AKM429", "too many requests for this API key"),
            "request {i}: {r:?}"
        );
        let retry = r.headers["Retry-After"]
            .as_str()
            .unwrap_or_else(|| panic!("a Retry-After header: {r:?}"));
        let secs: u64 = retry.parse().expect("Retry-After in whole seconds");
        assert!((1..=60).contains(&secs), "Retry-After {secs}");
    }
    // The limit is the key's: another key of the tenant still passes.
    let ctx = replay(&mut c, &request(&other.key), |c| Ok(context(c))).unwrap();
    assert_eq!(ctx.2.as_deref(), Some(other.id.as_str()));
    // Credits spent: 402.
    let err = replay(&mut c, &request(&broke.key), |c| Ok(context(c))).expect_err("no credits");
    let r = refusal(&err, &secrets);
    assert_eq!((r.status, r.code.as_str()), (402, "AKM402"), "{r:?}");
    assert_eq!(
        r.message,
        "the API key's budget is spent (credits_exhausted)"
    );
}

// ---------------------------------------------------------------------------------
// 2. Isolation matrix
// ---------------------------------------------------------------------------------

/// A relation of schema api_key_mgmt and the columns the session may read.
struct Relation {
    name: String,
    kind: String,
    columns: Vec<String>,
}

fn relations(c: &mut Client) -> Vec<Relation> {
    c.query(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind::text,
                ARRAY(SELECT pg_catalog.format('%I', a.attname) FROM pg_catalog.pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                         AND pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT')
                       ORDER BY a.attnum)
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'api_key_mgmt' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          ORDER BY 1",
        &[],
    )
    .expect("relations of api_key_mgmt")
    .iter()
    .map(|r| Relation {
        name: r.get(0),
        kind: r.get(1),
        columns: r.get(2),
    })
    .collect()
}

/// What a session sees of a relation: Err(SQLSTATE) when it cannot read it, else
/// (rows mentioning the other tenant, rows mentioning its own, rows).
type Visibility = Result<(i64, i64, i64), String>;

/// For each relation: Err(SQLSTATE) when the session cannot read it, else
/// (rows mentioning any of `theirs`, rows mentioning any of `ours`, rows).
fn visibility(c: &mut Client, theirs: &[String], ours: &[String]) -> Vec<(String, Visibility)> {
    relations(c)
        .into_iter()
        .map(|rel| {
            // No readable column: a count(*) must be refused.
            let sql = if rel.columns.is_empty() {
                format!("SELECT 0::bigint, 0::bigint, count(*) FROM {}", rel.name)
            } else {
                let text = rel
                    .columns
                    .iter()
                    .map(|c| format!("{c}::text"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "SELECT count(*) FILTER (WHERE EXISTS (SELECT FROM unnest($1::text[]) n
                                                            WHERE strpos(t.r, n) > 0)),
                            count(*) FILTER (WHERE EXISTS (SELECT FROM unnest($2::text[]) n
                                                            WHERE strpos(t.r, n) > 0)),
                            count(*)
                       FROM (SELECT concat_ws('|', {text}) AS r FROM {} x) t",
                    rel.name
                )
            };
            let result = if rel.columns.is_empty() {
                c.query_one(&sql, &[])
            } else {
                c.query_one(&sql, &[&theirs, &ours])
            }
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .map_err(|e| sqlstate(&e));
            if rel.columns.is_empty() {
                assert_eq!(
                    result,
                    Err("42501".to_owned()),
                    "{} ({}) has no readable column but can be counted",
                    rel.name,
                    rel.kind
                );
            }
            (rel.name, result)
        })
        .collect()
}

/// The (table, rows) of tenant `t` in every table with a tenant_id column, as text.
fn tenant_rows(su: &mut Client, t: &str) -> Vec<(String, Vec<String>)> {
    let tables: Vec<String> = su
        .query(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'api_key_mgmt' AND c.relkind IN ('r', 'p')
                AND NOT c.relispartition
                AND EXISTS (SELECT FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = c.oid AND a.attname = 'tenant_id')
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tables
        .into_iter()
        .map(|table| {
            let rows = rows_text(
                su,
                &format!(
                    "SELECT x::text FROM {table} x WHERE x.tenant_id = $1::text::uuid ORDER BY 1"
                ),
                &[&t],
            );
            (table, rows)
        })
        .collect()
}

#[test]
fn isolation_matrix() {
    let (db, _file) = db_with_key_file("tn_iso");
    let mut su = db.connect();
    su.batch_execute(
        "CREATE ROLE iso_app LOGIN IN ROLE api_key_mgmt_user;
         CREATE ROLE iso_svc LOGIN IN ROLE api_key_mgmt_service;",
    )
    .unwrap();
    let a = create_tenant(&mut su, "iso A");
    let b = create_tenant(&mut su, "iso B");
    let roles = [
        ("a_owner", "owner"),
        ("a_admin", "admin"),
        ("a_member", "member"),
        ("a_viewer", "viewer"),
    ];
    for (user, role) in roles {
        add_member(&mut su, &a, user, role);
    }
    add_member(&mut su, &b, "b_owner", "owner");
    add_member(&mut su, &b, "b_member", "member");

    // Tenant A's objects (the positive controls).
    let ka = issue(&mut su, &a, "a key");
    let ka_rev = issue(&mut su, &a, "a revoked key");
    assert!(revoke(&mut su, &ka_rev.id));
    let sa = put_secret(&mut su, Some(&a), "openai", &openai_secret(), None);
    // Tenant B's objects. kb_trap was created "by" a_member: a member manages the keys it
    // created, but never in another tenant.
    let kb = issue(&mut su, &b, "b key");
    let kb_trap: String = su
        .query_one(
            "SELECT key_id::text FROM api_key_mgmt.issue_api_key($1::text::uuid, 'b trap', \
             ARRAY['*'], created_by => 'a_member')",
            &[&b],
        )
        .unwrap()
        .get(0);
    let kb_rev = issue(&mut su, &b, "b revoked key");
    assert!(revoke(&mut su, &kb_rev.id));
    let b_secret = openai_secret();
    let sb = put_secret(&mut su, Some(&b), "openai", &b_secret, None);
    let platform_secret = put_secret(
        &mut su,
        None,
        "anthropic",
        &common::secrets::anthropic_secret(),
        None,
    );
    // Failed validations of known keys, counted per key and tenant.
    for k in [&ka_rev, &kb_rev] {
        assert_eq!(code(&mut su, &k.key), "revoked");
    }
    // Metering rows of B, when metering is installed.
    let metering = su
        .query_one(
            "SELECT to_regprocedure('api_key_mgmt.set_rate_limit(uuid,text,integer,interval,integer)') IS NOT NULL",
            &[],
        )
        .unwrap()
        .get::<_, bool>(0);
    let mut b_ids = vec![
        b.clone(),
        kb.id.clone(),
        kb_trap.clone(),
        kb_rev.id.clone(),
        sb.clone(),
    ];
    let mut reservation_b = None;
    if metering {
        let row = su
            .query_one(
                "SELECT api_key_mgmt.set_rate_limit($1::text::uuid, 'per_minute', 1000, '1 minute')::text,
                        api_key_mgmt.set_tenant_rate_limit($2::text::uuid, 'per_minute', 1000, '1 minute')::text",
                &[&kb.id, &b],
            )
            .unwrap();
        b_ids.push(row.get(0));
        b_ids.push(row.get(1));
        su.execute(
            "SELECT api_key_mgmt.set_key_caps($1::text::uuid, 100, 1000, NULL, NULL, NULL)",
            &[&kb.id],
        )
        .unwrap();
        let event: String = su
            .query_one(
                "SELECT event_id::text FROM api_key_mgmt.charge_api_key($1::text::uuid, 'agents:run', 1, 10, \
                 idempotency_key => 'b-charge-1')",
                &[&kb.id],
            )
            .unwrap()
            .get(0);
        b_ids.push(event);
        let res: String = su
            .query_one(
                "SELECT reservation_id::text FROM api_key_mgmt.reserve_budget($1::text::uuid, 'agents:run', 1, '1 hour')",
                &[&kb.id],
            )
            .unwrap()
            .get(0);
        b_ids.push(res.clone());
        reservation_b = Some(res);
    }
    b_ids.extend([
        "b_owner".to_owned(),
        "b_member".to_owned(),
        "b key".to_owned(),
    ]);
    let a_ids = vec![a.clone(), ka.id.clone(), sa.clone()];

    // The test data is there: the superuser (no RLS) finds B's rows in the tables.
    let seen = visibility(&mut su, &b_ids, &a_ids);
    let with_b: BTreeSet<&str> = seen
        .iter()
        .filter(|(_, r)| matches!(r, Ok((n, _, _)) if *n > 0))
        .map(|(t, _)| t.as_str())
        .collect();
    let mut expected = vec![
        "api_key_mgmt.tenants",
        "api_key_mgmt.api_keys",
        "api_key_mgmt.tenant_members",
        "api_key_mgmt.tenant_secrets",
        "api_key_mgmt.audit_log",
        "api_key_mgmt.api_key_status",
        "api_key_mgmt.tenant_secret_list",
    ];
    if metering {
        expected.extend([
            "api_key_mgmt.meters",
            "api_key_mgmt.rate_limits",
            "api_key_mgmt.usage_events",
            "api_key_mgmt.reservations",
        ]);
    }
    for t in expected {
        assert!(
            with_b.contains(t),
            "test data of B missing in {t}: {seen:?}"
        );
    }
    let b_before = tenant_rows(&mut su, &b);

    let mut app = db.connect_as("iso_app");
    for (user, role) in roles {
        act_as(&mut app, Some(user), Some(&a));
        assert_eq!(
            context(&mut app),
            (Some(a.clone()), Some(role.to_owned()), None),
            "context of {user}"
        );

        // Every relation: B's rows invisible (or the relation unreadable).
        let seen = visibility(&mut app, &b_ids, &a_ids);
        let mut readable = BTreeSet::new();
        for (rel, result) in &seen {
            match result {
                Ok((theirs, ours, _)) => {
                    assert_eq!(*theirs, 0, "{user} ({role}) sees rows of tenant B in {rel}");
                    if *ours > 0 {
                        readable.insert(rel.as_str());
                    }
                }
                Err(state) => assert_eq!(state, "42501", "{user} ({role}) reading {rel}"),
            }
        }
        // Positive controls: what the role may read of its own tenant.
        let mut own = vec![
            "api_key_mgmt.tenants",
            "api_key_mgmt.api_keys",
            "api_key_mgmt.tenant_members",
            "api_key_mgmt.api_key_status",
        ];
        let privileged = [
            "api_key_mgmt.tenant_secrets",
            "api_key_mgmt.audit_log",
            "api_key_mgmt.tenant_secret_list",
        ];
        if role == "owner" || role == "admin" {
            own.extend(privileged);
        } else {
            for rel in privileged {
                assert!(!readable.contains(rel), "{user} ({role}) reads {rel}");
            }
        }
        for rel in own {
            assert!(
                readable.contains(rel),
                "{user} ({role}) cannot read its tenant in {rel}: {seen:?}"
            );
        }

        // Failed-validation counters: admins and owners see their tenant's only.
        let failures = app.query(
            "SELECT tenant_id::text, key_id::text FROM api_key_mgmt.validation_failures()",
            &[],
        );
        match (role, failures) {
            ("owner" | "admin", Ok(rows)) => {
                let rows: Vec<(String, String)> =
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                assert!(rows.contains(&(a.clone(), ka_rev.id.clone())), "{rows:?}");
                assert!(
                    rows.iter().all(|(t, _)| *t == a),
                    "{user} sees other tenants' failures: {rows:?}"
                );
            }
            ("member" | "viewer", Err(e)) => assert_eq!(sqlstate(&e), "42501"),
            (_, other) => panic!("validation_failures() as {user} ({role}): {other:?}"),
        }

        // Every management function on B's objects: 42501.
        let unissued = unissued_native_key("sk", "live");
        let mut calls: Vec<(&str, &str, Vec<String>)> = vec![
            (
                "issue_api_key",
                "SELECT api_key_mgmt.issue_api_key($1::text::uuid, 'x', ARRAY['*'])",
                vec![b.clone()],
            ),
            (
                "import_api_key",
                "SELECT api_key_mgmt.import_api_key($1::text::uuid, $2, 'x', ARRAY['*'])",
                vec![b.clone(), unissued],
            ),
            (
                "revoke_api_key",
                "SELECT api_key_mgmt.revoke_api_key($1::text::uuid)",
                vec![kb.id.clone()],
            ),
            (
                "revoke_api_key",
                "SELECT api_key_mgmt.revoke_api_key($1::text::uuid)",
                vec![kb_trap.clone()],
            ),
            (
                "rotate_api_key",
                "SELECT api_key_mgmt.rotate_api_key($1::text::uuid, '1 hour')",
                vec![kb.id.clone()],
            ),
            (
                "rotate_api_key",
                "SELECT api_key_mgmt.rotate_api_key($1::text::uuid, '1 hour')",
                vec![kb_trap.clone()],
            ),
            (
                "update_api_key",
                "SELECT api_key_mgmt.update_api_key($1::text::uuid, '{\"name\": \"taken\"}')",
                vec![kb.id.clone()],
            ),
            (
                "update_api_key",
                "SELECT api_key_mgmt.update_api_key($1::text::uuid, '{\"scopes\": [\"*\"]}')",
                vec![kb_trap.clone()],
            ),
            (
                "put_tenant_secret",
                "SELECT api_key_mgmt.put_tenant_secret($1::text::uuid, 'openai', $2)",
                vec![b.clone(), openai_secret()],
            ),
            (
                "list_tenant_secrets",
                "SELECT * FROM api_key_mgmt.list_tenant_secrets($1::text::uuid)",
                vec![b.clone()],
            ),
            (
                "delete_tenant_secret",
                "SELECT api_key_mgmt.delete_tenant_secret($1::text::uuid, 'openai')",
                vec![b.clone()],
            ),
            (
                "mark_secret_validated",
                "SELECT api_key_mgmt.mark_secret_validated($1::text::uuid, false, 'x')",
                vec![sb.clone()],
            ),
            (
                "record_secret_usage",
                "SELECT api_key_mgmt.record_secret_usage($1::text::uuid, 1, 1)",
                vec![sb.clone()],
            ),
            (
                "add_tenant_member",
                "SELECT api_key_mgmt.add_tenant_member($1::text::uuid, $2, 'owner')",
                vec![b.clone(), user.to_owned()],
            ),
            (
                "remove_tenant_member",
                "SELECT api_key_mgmt.remove_tenant_member($1::text::uuid, 'b_owner')",
                vec![b.clone()],
            ),
            (
                "remove_tenant_member",
                "SELECT api_key_mgmt.remove_tenant_member($1::text::uuid, 'b_member')",
                vec![b.clone()],
            ),
            // Decryption is for the service role only, even of the caller's own tenant.
            (
                "get_tenant_secret",
                "SELECT api_key_mgmt.get_tenant_secret($1::text::uuid, 'openai', 'agents:run')",
                vec![b.clone()],
            ),
            (
                "get_tenant_secret",
                "SELECT api_key_mgmt.get_tenant_secret($1::text::uuid, 'openai', 'agents:run')",
                vec![a.clone()],
            ),
            (
                "resolve_provider_key",
                "SELECT api_key_mgmt.resolve_provider_key($1::text::uuid, 'openai', 'agents:run')",
                vec![b.clone()],
            ),
            (
                "resolve_provider_key",
                "SELECT api_key_mgmt.resolve_provider_key($1::text::uuid, 'openai', 'agents:run')",
                vec![a.clone()],
            ),
        ];
        if metering {
            calls.extend([
                ("set_key_caps", "SELECT api_key_mgmt.set_key_caps($1::text::uuid, 0, 0, NULL, NULL, NULL)", vec![kb.id.clone()]),
                ("set_tenant_caps", "SELECT api_key_mgmt.set_tenant_caps($1::text::uuid, 0, 0, NULL, NULL, NULL, 'UTC')", vec![b.clone()]),
                ("set_rate_limit", "SELECT api_key_mgmt.set_rate_limit($1::text::uuid, 'per_minute', 1, '1 minute')", vec![kb.id.clone()]),
                ("set_tenant_rate_limit", "SELECT api_key_mgmt.set_tenant_rate_limit($1::text::uuid, 'per_minute', 1, '1 minute')", vec![b.clone()]),
                ("remove_rate_limit", "SELECT api_key_mgmt.remove_rate_limit($1::text::uuid, 'per_minute')", vec![kb.id.clone()]),
                ("remove_tenant_rate_limit", "SELECT api_key_mgmt.remove_tenant_rate_limit($1::text::uuid, 'per_minute')", vec![b.clone()]),
                ("charge_api_key", "SELECT * FROM api_key_mgmt.charge_api_key($1::text::uuid, 'agents:run', 1000000, 1)", vec![kb.id.clone()]),
                ("reserve_budget", "SELECT * FROM api_key_mgmt.reserve_budget($1::text::uuid, 'agents:run', 1, '1 hour')", vec![kb.id.clone()]),
                ("consume_rate_limit", "SELECT * FROM api_key_mgmt.consume_rate_limit($1::text::uuid, 1)", vec![kb.id.clone()]),
                ("settle_reservation", "SELECT * FROM api_key_mgmt.settle_reservation($1::text::uuid, 1, 1)", vec![reservation_b.clone().unwrap()]),
                ("release_reservation", "SELECT api_key_mgmt.release_reservation($1::text::uuid)", vec![reservation_b.clone().unwrap()]),
            ]);
        }
        let mut covered = BTreeSet::new();
        for (function, sql, params) in &calls {
            covered.insert(function.to_string());
            assert_sqlstate(
                app.execute(*sql, &text_params(params)),
                "42501",
                &format!("{user} ({role}): {sql} on B's object"),
            );
        }
        // Every other function of api_key_mgmt that names a tenant, key, secret or
        // reservation (added later, say): called on B's object, 42501.
        let functions = app
            .query(
                "SELECT p.proname::text,
                        ARRAY(SELECT pg_catalog.format_type(t, NULL)
                                FROM unnest(p.proargtypes) WITH ORDINALITY u(t, i) ORDER BY i),
                        ARRAY(SELECT n FROM unnest(p.proargnames) WITH ORDINALITY u(n, i)
                               WHERE p.proargmodes IS NULL OR p.proargmodes[i] IN ('i', 'b')
                               ORDER BY i)
                   FROM pg_catalog.pg_proc p
                  WHERE p.pronamespace = 'api_key_mgmt'::regnamespace AND p.prokind = 'f'
                  ORDER BY 1",
                &[],
            )
            .unwrap();
        for f in functions {
            let (name, types, names): (String, Vec<String>, Vec<String>) =
                (f.get(0), f.get(1), f.get(2));
            let id_of = |arg: &str| match arg {
                "tenant_id" => Some(b.clone()),
                "key_id" => Some(kb.id.clone()),
                "secret_id" => Some(sb.clone()),
                "reservation" => reservation_b.clone(),
                _ => None,
            };
            if covered.contains(&name) || !names.iter().any(|n| id_of(n).is_some()) {
                continue;
            }
            let args: Vec<String> = types
                .iter()
                .enumerate()
                .map(|(i, t)| match names.get(i).and_then(|n| id_of(n)) {
                    Some(id) => format!("'{id}'::{t}"),
                    None => format!("NULL::{t}"),
                })
                .collect();
            let sql = format!("SELECT api_key_mgmt.{name}({})", args.join(", "));
            assert_sqlstate(
                app.execute(sql.as_str(), &[]),
                "42501",
                &format!("{user} ({role}): {sql}"),
            );
        }
    }

    // A forged claim (tenant B, by a member of A only) gives no tenant and no rows.
    act_as(&mut app, Some("a_owner"), Some(&b));
    assert_eq!(context(&mut app), (None, None, None));
    for (rel, result) in visibility(&mut app, &b_ids, &a_ids) {
        if let Ok((theirs, ours, all)) = result {
            assert_eq!((theirs, ours), (0, 0), "forged claim: rows in {rel}");
            if rel != "api_key_mgmt.providers" {
                assert_eq!(all, 0, "forged claim: rows in {rel}");
            }
        }
    }
    assert_sqlstate(
        try_issue_scoped(&mut app, &b, "forged", &["*"]),
        "42501",
        "issue_api_key with a forged claim",
    );
    // The setting, by a non-member of B: nothing.
    act_as(&mut app, None, None);
    app.execute(
        "SELECT pg_catalog.set_config('api_key_mgmt.user_id', 'a_owner', false), \
                pg_catalog.set_config('api_key_mgmt.tenant_id', $1, false)",
        &[&b],
    )
    .unwrap();
    assert_eq!(context(&mut app), (None, None, None));
    assert_eq!(count(&mut app, "FROM api_key_mgmt.api_keys"), 0);
    assert_eq!(count(&mut app, "FROM api_key_mgmt.tenant_members"), 0);
    // ... while the same setting names A for its member.
    app.execute(
        "SELECT pg_catalog.set_config('api_key_mgmt.tenant_id', $1, false)",
        &[&a],
    )
    .unwrap();
    assert_eq!(
        context(&mut app),
        (Some(a.clone()), Some("owner".into()), None)
    );
    // The service role may name any tenant with the setting.
    let mut svc = db.connect_as("iso_svc");
    svc.execute(
        "SELECT pg_catalog.set_config('api_key_mgmt.tenant_id', $1, false)",
        &[&b],
    )
    .unwrap();
    assert_eq!(
        context(&mut svc),
        (Some(b.clone()), Some("admin".into()), None)
    );
    assert_eq!(
        try_get_secret(&mut svc, Some(&b), "openai", None)
            .unwrap()
            .as_deref(),
        Some(b_secret.as_str()),
        "the service role decrypts"
    );

    // Nothing of B changed (the service role's read above appended one audit entry).
    let b_after = tenant_rows(&mut su, &b);
    for ((table, before), (_, after)) in b_before.iter().zip(&b_after) {
        if table == "api_key_mgmt.audit_log" {
            assert_eq!(after.len(), before.len() + 1, "audit entries of B");
            // Written in the read's transaction (no worker serves this database) by the
            // owner's audit_secret_read, for the service role that read.
            assert!(
                after
                    .iter()
                    .any(|r| r.contains("secret.decrypted") && r.contains(",iso_svc,iso_svc,")),
                "the read's entry names the service role: {after:#?}"
            );
            assert!(before.iter().all(|r| after.contains(r)));
        } else {
            assert_eq!(before, after, "rows of B in {table}");
        }
    }
    assert_eq!(
        b_before.iter().map(|(t, _)| t).collect::<Vec<_>>(),
        b_after.iter().map(|(t, _)| t).collect::<Vec<_>>()
    );
    for id in [&kb.id, &kb_trap] {
        let status: String = su
            .query_one(
                "SELECT status FROM api_key_mgmt.api_key_status WHERE key_id = $1::text::uuid",
                &[id],
            )
            .unwrap()
            .get(0);
        assert_eq!(status, "active", "B's key {id}");
    }
    assert_eq!(code(&mut su, &kb.key), "ok");
    assert_eq!(
        try_resolve(&mut su, None, "anthropic", None)
            .unwrap()
            .secret_id
            .as_deref(),
        Some(platform_secret.as_str())
    );
}

// ---------------------------------------------------------------------------------
// 3. Unprivileged roles
// ---------------------------------------------------------------------------------

#[test]
fn unprivileged_role() {
    let (db, _file) = db_with_key_file("tn_unpriv");
    let mut su = db.connect();
    su.batch_execute(
        "CREATE ROLE un_plain LOGIN;
         CREATE ROLE un_user LOGIN IN ROLE api_key_mgmt_user;
         CREATE ROLE un_admin LOGIN IN ROLE api_key_mgmt_admin;",
    )
    .unwrap();
    let a = create_tenant(&mut su, "unpriv A");
    let ka = issue(&mut su, &a, "unpriv key");
    put_secret(&mut su, Some(&a), "openai", &openai_secret(), None);
    let audit_rows = count(&mut su, "FROM api_key_mgmt.audit_log");
    assert!(audit_rows >= 3, "audit rows to protect: {audit_rows}");

    // No role but the owner executes anything in api_key_mgmt_internal.
    let internal: Vec<(String, bool, bool, bool, bool)> = su
        .query(
            "SELECT p.oid::regprocedure::text,
                    has_function_privilege('un_plain', p.oid, 'EXECUTE'),
                    has_function_privilege('un_user', p.oid, 'EXECUTE'),
                    has_function_privilege('un_admin', p.oid, 'EXECUTE'),
                    has_function_privilege('api_key_mgmt_service', p.oid, 'EXECUTE')
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'api_key_mgmt_internal'::regnamespace ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert!(internal.len() >= 10, "{internal:?}");
    for f in &internal {
        assert!(
            !(f.1 || f.2 || f.3 || f.4),
            "EXECUTE on an internal function: {f:?}"
        );
    }

    let decrypt = [
        "SELECT api_key_mgmt.get_tenant_secret($1::text::uuid, 'openai', 'agents:run')",
        "SELECT api_key_mgmt.resolve_provider_key($1::text::uuid, 'openai', 'agents:run')",
    ];
    let internal_calls = [
        "SELECT * FROM api_key_mgmt_internal.new_key('sk', 'live')",
        "SELECT * FROM api_key_mgmt_internal.seal_secret($1::text::uuid, gen_random_uuid(), 'openai', 'sk-not-a-real-secret-0000000000')",
        "SELECT api_key_mgmt_internal.set_request_key($1::text::uuid, $2::text::uuid)",
        "SELECT api_key_mgmt_internal.set_audit_retention(true)",
        "SELECT api_key_mgmt_internal.authorize($1::text::uuid, 'owner')",
        "SELECT api_key_mgmt_internal.audit($1::text::uuid, 'key.issued', 'api_key', 'forged')",
    ];
    let audit_writes = [
        "UPDATE api_key_mgmt.audit_log SET actor = 'someone else'",
        "DELETE FROM api_key_mgmt.audit_log",
        "TRUNCATE api_key_mgmt.audit_log",
        "INSERT INTO api_key_mgmt.audit_log (tenant_id, actor, actor_role, action) \
         VALUES (NULL, 'forger', 'forger', 'key.revoked')",
    ];
    for role in ["un_plain", "un_user", "un_admin"] {
        let mut c = db.connect_as(role);
        for sql in decrypt {
            assert_sqlstate(c.query(sql, &[&a]), "42501", &format!("{role}: {sql}"));
        }
        for sql in internal_calls {
            let params: Vec<&(dyn ToSql + Sync)> = match sql.matches('$').count() {
                0 => vec![],
                1 => vec![&a],
                _ => vec![&a, &ka.id],
            };
            assert_sqlstate(c.query(sql, &params), "42501", &format!("{role}: {sql}"));
        }
        for sql in audit_writes {
            assert_fails(&mut c, sql, "42501");
        }
        if role != "un_admin" {
            assert_fails(
                &mut c,
                "SELECT api_key_mgmt.purge_audit_log('1 day')",
                "42501",
            );
        }
    }

    // A superuser cannot change the audit log either ...
    for sql in &audit_writes[..3] {
        assert_fails(&mut su, sql, "42501");
    }
    assert_eq!(count(&mut su, "FROM api_key_mgmt.audit_log"), audit_rows);
    // ... only append to it, and the retention function removes old entries.
    su.execute(
        "INSERT INTO api_key_mgmt.audit_log (occurred_at, tenant_id, actor, actor_role, action) \
         VALUES (clock_timestamp() - interval '2 days', $1::text::uuid, 'old', 'postgres', 'key.issued')",
        &[&a],
    )
    .unwrap();
    assert_fails(
        &mut su,
        "SELECT api_key_mgmt.purge_audit_log('1 hour')",
        "22023",
    );
    let purged: i64 = su
        .query_one("SELECT api_key_mgmt.purge_audit_log('1 day')", &[])
        .unwrap()
        .get(0);
    assert_eq!(purged, 1);
    assert_eq!(
        count(&mut su, "FROM api_key_mgmt.audit_log WHERE actor = 'old'"),
        0
    );
    let purge_entry: Vec<String> = rows_text(
        &mut su,
        "SELECT details::text FROM api_key_mgmt.audit_log WHERE action = 'audit.purged'",
        &[],
    );
    assert_eq!(purge_entry.len(), 1);
    let details: Value = serde_json::from_str(&purge_entry[0]).unwrap();
    assert_eq!(details["deleted"], 1, "{details}");
    assert_eq!(
        count(&mut su, "FROM api_key_mgmt.audit_log"),
        audit_rows + 1
    );
    // The retention window closes with the function: a DELETE right after it, in the
    // same transaction, is refused.
    su.batch_execute("BEGIN").unwrap();
    su.query_one("SELECT api_key_mgmt.purge_audit_log('1 day')", &[])
        .unwrap();
    assert_fails(&mut su, "DELETE FROM api_key_mgmt.audit_log", "42501");
    su.batch_execute("ROLLBACK").unwrap();
    // An administrator (not a superuser) may purge too.
    let mut adm = db.connect_as("un_admin");
    let purged: i64 = adm
        .query_one("SELECT api_key_mgmt.purge_audit_log('1 day')", &[])
        .unwrap()
        .get(0);
    assert_eq!(purged, 0);
    assert_eq!(
        count(&mut su, "FROM api_key_mgmt.audit_log"),
        audit_rows + 2
    );
}

// ---------------------------------------------------------------------------------
// 4. search_path hijacking
// ---------------------------------------------------------------------------------

/// Look-alikes of what the extension's SQL uses, each counting its calls in the
/// sequence evil.calls (which survives rollbacks) and then failing loudly.
const EVIL_FUNCTIONS: &[(&str, &str, &str)] = &[
    ("now", "", "timestamptz"),
    ("clock_timestamp", "", "timestamptz"),
    ("gen_random_uuid", "", "uuid"),
    ("char_length", "text", "integer"),
    ("length", "text", "integer"),
    ("upper", "text", "text"),
    ("lower", "text", "text"),
    ("btrim", "text", "text"),
    ("\"left\"", "text, integer", "text"),
    ("split_part", "text, text, integer", "text"),
    ("current_setting", "text", "text"),
    ("current_setting", "text, boolean", "text"),
    ("format", "text", "text"),
    ("format", "text, VARIADIC text[]", "text"),
    ("jsonb_build_object", "VARIADIC text[]", "jsonb"),
    ("jsonb_build_object", "text, text", "jsonb"),
    ("jsonb_build_object", "text, anyelement", "jsonb"),
    ("jsonb_build_object", "text, text, text, text", "jsonb"),
    ("cardinality", "anyarray", "integer"),
    ("array_position", "anyarray, anyelement", "integer"),
    ("sha256", "bytea", "bytea"),
    ("encode", "bytea, text", "text"),
    ("set_config", "text, text, boolean", "text"),
];

fn evil_setup(ev: &mut Client, tenant: &str) {
    let mut sql = String::from(
        "CREATE SEQUENCE evil.calls;
         GRANT USAGE, SELECT, UPDATE ON SEQUENCE evil.calls TO PUBLIC;",
    );
    for (name, args, ret) in EVIL_FUNCTIONS {
        sql.push_str(&format!(
            "CREATE FUNCTION evil.{name}({args}) RETURNS {ret} LANGUAGE plpgsql AS $f$
             BEGIN
                 PERFORM pg_catalog.nextval('evil.calls');
                 RAISE EXCEPTION 'evil look-alike % was called', '{bare}' USING ERRCODE = 'EVIL1';
             END $f$;
             GRANT EXECUTE ON FUNCTION evil.{name}({args}) TO PUBLIC;",
            bare = name.trim_matches('"')
        ));
    }
    // Operators that answer true (and count): a comparison that used them would match
    // anything.
    for (op, left, right) in [
        ("=", "text", "text"),
        ("=", "uuid", "uuid"),
        ("=", "bytea", "bytea"),
        ("<>", "text", "text"),
        ("~", "text", "text"),
    ] {
        let f = format!(
            "op_{}_{left}_{right}",
            match op {
                "=" => "eq",
                "<>" => "ne",
                _ => "match",
            }
        );
        sql.push_str(&format!(
            "CREATE FUNCTION evil.{f}({left}, {right}) RETURNS boolean LANGUAGE plpgsql AS $f$
             BEGIN PERFORM pg_catalog.nextval('evil.calls'); RETURN true; END $f$;
             CREATE OPERATOR evil.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = evil.{f});"
        ));
    }
    sql.push_str(
        "CREATE TABLE evil.tenants (id uuid, name text, disabled_at timestamptz, allowed_scopes text[]);
         CREATE TABLE evil.api_keys (id uuid, tenant_id uuid, key_hash bytea, scopes text[],
                                     revoked_at timestamptz, created_by text);
         CREATE TABLE evil.tenant_members (tenant_id uuid, user_id text, role text);
         GRANT ALL ON evil.tenants, evil.api_keys, evil.tenant_members TO PUBLIC;",
    );
    ev.batch_execute(&sql).expect("the evil objects");
    // Rows that would change answers if read instead of the real tables: a stranger as
    // owner of the tenant, the tenant with every scope, a key row.
    ev.execute(
        "INSERT INTO evil.tenant_members VALUES ($1::text::uuid, 'ev_stranger', 'owner')",
        &[&tenant],
    )
    .unwrap();
    ev.execute(
        "INSERT INTO evil.tenants VALUES ($1::text::uuid, 'evil', NULL, ARRAY['*'])",
        &[&tenant],
    )
    .unwrap();
    ev.execute(
        "INSERT INTO evil.api_keys VALUES (pg_catalog.gen_random_uuid(), $1::text::uuid, \
         '\\x00'::bytea, ARRAY['*'], NULL, 'ev_stranger')",
        &[&tenant],
    )
    .unwrap();
}

fn evil_state(su: &mut Client) -> Vec<String> {
    let mut out = rows_text(
        su,
        "SELECT last_value::text || ' ' || is_called::text FROM evil.calls",
        &[],
    );
    for t in ["tenants", "api_keys", "tenant_members"] {
        out.extend(rows_text(
            su,
            &format!("SELECT '{t}: ' || x::text FROM evil.{t} x ORDER BY 1"),
            &[],
        ));
    }
    out
}

/// Exercise the extension as a tenant owner (app), a stranger and the service role;
/// the transcript holds outcomes only (no ids, no keys), so runs compare equal.
fn hijack_scenario(
    su: &mut Client,
    app: &mut Client,
    stranger: &mut Client,
    svc: &mut Client,
    tenant: &str,
    run_no: u32,
) -> Vec<String> {
    let mut t = Vec::new();
    let since: String = su
        .query_one("SELECT pg_catalog.clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    let ctx = context(app);
    t.push(format!(
        "owner context: tenant {} role {:?} key {:?}",
        ctx.0.as_deref() == Some(tenant),
        ctx.1,
        ctx.2
    ));

    let k = issue_scoped(app, tenant, &format!("hijack {run_no}"), &["docs:read"]);
    t.push(format!(
        "issued: shape {} stored {} visible {}",
        k.key.starts_with("sk_live_") && k.key.len() == 8 + 49,
        one_i64(
            su,
            "SELECT count(*) FROM api_key_mgmt.api_keys WHERE id = $1::text::uuid \
               AND tenant_id = $2::text::uuid AND created_by = 'ev_owner' AND revoked_at IS NULL",
            &[&k.id, &tenant]
        ),
        one_i64(
            app,
            "SELECT count(*) FROM api_key_mgmt.api_keys k \
              WHERE k.id OPERATOR(pg_catalog.=) $1::text::uuid",
            &[&k.id]
        ),
    ));
    let unknown = unissued_native_key("sk", "live");
    for (key, scope) in [
        (k.key.as_str(), Some("docs:read")),
        (k.key.as_str(), Some("docs:write")),
        (k.key.as_str(), None),
        (unknown.as_str(), None),
        ("not a key", None),
    ] {
        let v = try_validate_scoped(svc, Some(key), scope).expect("validate_api_key");
        let same_key = v.key_id.as_deref() == Some(k.id.as_str());
        t.push(format!(
            "validate {scope:?}: {} (this key: {same_key})",
            v.code
        ));
    }

    // The pre-request hook, as the tenant user role itself.
    let secrets = [k.key.as_str(), body(&k.key)];
    for (headers, method) in [
        (json!({"x-api-key": k.key}), "GET"),
        (json!({"x-api-key": k.key}), "POST"),
        (json!({}), "GET"),
    ] {
        let request = Request {
            role: "ev_app",
            claims: json!({"role": "ev_app"}),
            headers,
            method,
            path: "/docs",
        };
        match replay(app, &request, |c| Ok(context(c))) {
            Ok(ctx) => t.push(format!(
                "authenticate {method}: ok tenant {} key {}",
                ctx.0.as_deref() == Some(tenant),
                ctx.2.as_deref() == Some(k.id.as_str())
            )),
            Err(e) => {
                let r = refusal(&e, &secrets);
                t.push(format!(
                    "authenticate {method}: {} {} {}",
                    r.status, r.code, r.message
                ));
            }
        }
    }

    t.push(format!(
        "revoke: {}",
        try_revoke(app, &k.id).map_err(|e| sqlstate(&e)).unwrap()
    ));
    t.push(format!(
        "revoke again: {}",
        try_revoke(app, &k.id).map_err(|e| sqlstate(&e)).unwrap()
    ));
    t.push(format!(
        "after revoke: {}",
        try_validate_scoped(svc, Some(&k.key), None).unwrap().code
    ));

    let secret = openai_secret();
    let sid = put_secret(app, Some(tenant), "openai", &secret, None);
    t.push(format!(
        "secret: decrypts {} resolves {:?}",
        try_get_secret(svc, Some(tenant), "openai", None)
            .unwrap()
            .as_deref()
            == Some(secret.as_str()),
        try_resolve(svc, Some(tenant), "openai", None)
            .map(|r| (
                r.source,
                r.secret_id.as_deref() == Some(sid.as_str()),
                r.secret.as_deref() == Some(secret.as_str())
            ))
            .unwrap()
    ));

    // Delete it again, so that each run starts from an empty slot.
    let deleted: bool = app
        .query_one(
            "SELECT api_key_mgmt.delete_tenant_secret($1::text::uuid, 'openai')",
            &[&tenant],
        )
        .unwrap()
        .get(0);
    t.push(format!("secret deleted: {deleted}"));

    add_member(app, tenant, "ev_new", "viewer");
    t.push(format!(
        "members visible: {}",
        count(app, "FROM api_key_mgmt.tenant_members")
    ));
    let removed: bool = app
        .query_one(
            "SELECT api_key_mgmt.remove_tenant_member($1::text::uuid, 'ev_new')",
            &[&tenant],
        )
        .unwrap()
        .get(0);
    t.push(format!("member removed: {removed}"));

    // A stranger, listed as owner in evil.tenant_members only.
    t.push(format!("stranger context: {:?}", context(stranger)));
    t.push(format!(
        "stranger issues: {:?}",
        try_issue_scoped(stranger, tenant, "stranger", &["docs:read"])
            .map_err(|e| sqlstate(&e))
            .map(|_| ())
    ));

    // The audit trail of this run, in order.
    let entries = rows_text(
        su,
        "SELECT action || ' by ' || actor || ' as ' || actor_role || ' on ' || coalesce(target_type, '-') \
           FROM api_key_mgmt.audit_log WHERE occurred_at > $1::text::timestamptz ORDER BY occurred_at",
        &[&since],
    );
    t.push(format!("audit: {entries:?}"));
    t
}

#[test]
fn search_path_hijack() {
    let (db, _file) = db_with_key_file("tn_evil");
    let mut su = db.connect();
    su.batch_execute(
        "CREATE ROLE ev_app LOGIN IN ROLE api_key_mgmt_user;
         CREATE ROLE ev_svc LOGIN IN ROLE api_key_mgmt_service;
         CREATE SCHEMA evil;
         GRANT USAGE, CREATE ON SCHEMA evil TO ev_app, ev_svc;",
    )
    .unwrap();
    let tenant = create_tenant(&mut su, "hijacked");
    add_member(&mut su, &tenant, "ev_owner", "owner");
    for (method, scope) in [("GET", "docs:read"), ("POST", "docs:write")] {
        su.execute(
            "SELECT api_key_mgmt.add_route_scope($1, '/docs', $2)",
            &[&method, &scope],
        )
        .unwrap();
    }

    let mut app = db.connect_as("ev_app");
    act_as(&mut app, Some("ev_owner"), Some(&tenant));
    let mut stranger = db.connect_as("ev_app");
    act_as(&mut stranger, Some("ev_stranger"), Some(&tenant));
    let mut svc = db.connect_as("ev_svc");

    // Without the look-alikes.
    let baseline = hijack_scenario(&mut su, &mut app, &mut stranger, &mut svc, &tenant, 1);

    // The attacker creates them, and every session puts schema evil first.
    let mut ev = db.connect_as("ev_app");
    evil_setup(&mut ev, &tenant);
    let evil_before = evil_state(&mut su);
    assert_eq!(evil_before[0], "1 false");
    for c in [&mut app, &mut stranger, &mut svc] {
        c.batch_execute("SET search_path = evil, public, pg_catalog")
            .unwrap();
        // The look-alikes are live for unqualified names in these sessions...
        assert_eq!(
            c.query_one(
                "SELECT p.pronamespace::regnamespace::text FROM pg_catalog.pg_proc p \
                  WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure('now()')",
                &[]
            )
            .unwrap()
            .get::<_, String>(0),
            "evil"
        );
    }
    let hijacked = hijack_scenario(&mut su, &mut app, &mut stranger, &mut svc, &tenant, 2);
    assert_eq!(
        hijacked, baseline,
        "outcomes with the look-alikes ahead on search_path"
    );
    // ... and none was ever called, nothing was written to the evil tables.
    assert_eq!(evil_state(&mut su), evil_before);

    // The trap works: an unqualified call in such a session is caught.
    assert_fails(&mut app, "SELECT now()", "EVIL1");
    let eq: bool = app
        .query_one("SELECT 'a'::text = 'b'::text", &[])
        .unwrap()
        .get(0);
    assert!(eq, "the evil operator answers true");
    assert_eq!(evil_state(&mut su)[0], "2 true");
}

// ---------------------------------------------------------------------------------
// 5. Dump and restore
// ---------------------------------------------------------------------------------

/// Catalog facts that must survive a restore: RLS flags, policies, ACLs of the
/// extension's schemas, functions, relations and columns.
fn security_catalog(c: &mut Client) -> Vec<String> {
    let mut out = rows_text(
        c,
        "SELECT 'rls ' || c.relname || ' ' || c.relrowsecurity || ' ' || c.relforcerowsecurity
           FROM pg_catalog.pg_class c
          WHERE c.relnamespace = 'api_key_mgmt'::regnamespace AND c.relkind IN ('r', 'p')
          ORDER BY 1",
        &[],
    );
    out.extend(rows_text(
        c,
        "SELECT 'policy ' || tablename || ' ' || policyname || ' ' || permissive || ' ' || roles::text
                || ' ' || cmd || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '')
           FROM pg_catalog.pg_policies WHERE schemaname = 'api_key_mgmt' ORDER BY 1",
        &[],
    ));
    out.extend(rows_text(
        c,
        "SELECT 'schema ' || nspname || ' ' || coalesce(nspacl::text, '')
           FROM pg_catalog.pg_namespace
          WHERE nspname IN ('api_key_mgmt', 'api_key_mgmt_internal') ORDER BY 1",
        &[],
    ));
    out.extend(rows_text(
        c,
        "SELECT 'function ' || p.oid::regprocedure::text || ' ' || coalesce(p.proacl::text, '')
                || ' ' || p.prosecdef || ' ' || coalesce(p.proconfig::text, '')
           FROM pg_catalog.pg_proc p
          WHERE p.pronamespace IN ('api_key_mgmt'::regnamespace, 'api_key_mgmt_internal'::regnamespace)
          ORDER BY 1",
        &[],
    ));
    out.extend(rows_text(
        c,
        "SELECT 'relation ' || c.relname || ' ' || coalesce(c.relacl::text, '')
           FROM pg_catalog.pg_class c
          WHERE c.relnamespace = 'api_key_mgmt'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
          ORDER BY 1",
        &[],
    ));
    out.extend(rows_text(
        c,
        "SELECT 'column ' || c.relname || '.' || a.attname || ' ' || a.attacl::text
           FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
          WHERE c.relnamespace = 'api_key_mgmt'::regnamespace AND a.attacl IS NOT NULL
          ORDER BY 1",
        &[],
    ));
    out
}

/// Assert two line lists are equal, showing only the lines that differ.
#[track_caller]
fn assert_same_lines(before: &[String], after: &[String], what: &str) {
    if before != after {
        let missing: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
        let extra: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
        panic!("{what} (or only the order differs): missing {missing:#?}\nextra {extra:#?}");
    }
}

fn tenancy_rows(c: &mut Client) -> Vec<String> {
    let mut out = rows_text(
        c,
        "SELECT 'member ' || m::text FROM api_key_mgmt.tenant_members m ORDER BY 1",
        &[],
    );
    out.extend(rows_text(
        c,
        "SELECT 'route ' || r::text FROM api_key_mgmt.route_scopes r ORDER BY 1",
        &[],
    ));
    out
}

fn audit_rows(c: &mut Client) -> Vec<String> {
    rows_text(
        c,
        "SELECT a::text FROM api_key_mgmt.audit_log a ORDER BY a.occurred_at, a.id",
        &[],
    )
}

#[test]
fn dump_restore_tenancy() {
    let (db, file) = db_with_key_file("tn_dump");
    let cluster = db.cluster();
    let mut su = db.connect();
    su.batch_execute("CREATE ROLE dr_app LOGIN IN ROLE api_key_mgmt_user;")
        .unwrap();
    let a = create_tenant(&mut su, "dump A");
    let b = create_tenant(&mut su, "dump B");
    for (t, user, role) in [
        (&a, "alice", "owner"),
        (&a, "bob", "admin"),
        (&a, "carol", "member"),
        (&a, "dave", "viewer"),
        (&b, "erin", "owner"),
    ] {
        add_member(&mut su, t, user, role);
    }
    add_member(&mut su, &a, "dave", "member"); // member.role_changed
    for (method, path, scope) in [
        ("GET", "/documents*", Some("documents:read")),
        ("POST", "/rpc/orchestrate", Some("agents:orchestration")),
        ("GET", "/health", None),
    ] {
        su.execute(
            "SELECT api_key_mgmt.add_route_scope($1, $2, $3)",
            &[&method, &path, &scope],
        )
        .unwrap();
    }
    let ka = issue(&mut su, &a, "A active");
    let ka_rev = issue(&mut su, &a, "A revoked");
    assert!(revoke(&mut su, &ka_rev.id));
    let ka_old = issue(&mut su, &a, "A rotated");
    let ka_new = rotate(&mut su, &ka_old.id, "1 hour");
    let kb = issue(&mut su, &b, "B active");
    // An entry with the client's IP and user agent, as PostgREST passes them.
    su.batch_execute("BEGIN").unwrap();
    su.execute(
        "SELECT set_config('request.headers', $1, true), set_config('request.jwt.claims', $2, true)",
        &[
            &json!({"user-agent": "dump-test/1.0", "x-forwarded-for": "198.51.100.7, 10.0.0.1"}).to_string(),
            &json!({"sub": "alice", "tenant_id": a}).to_string(),
        ],
    )
    .unwrap();
    let kc = issue(&mut su, &a, "from the dashboard");
    su.batch_execute("COMMIT").unwrap();
    let keys = [&ka, &ka_rev, &ka_old, &ka_new, &kb, &kc];
    let (sa_plain, sb_plain) = (openai_secret(), openai_secret());
    put_secret(&mut su, Some(&a), "openai", &sa_plain, None);
    put_secret(&mut su, Some(&b), "openai", &sb_plain, None);
    assert_eq!(
        try_get_secret(&mut su, Some(&a), "openai", None)
            .unwrap()
            .as_deref(),
        Some(sa_plain.as_str())
    );
    let src_codes: Vec<String> = keys.iter().map(|k| code(&mut su, &k.key)).collect();
    assert_eq!(src_codes, ["ok", "revoked", "ok", "ok", "ok", "ok"]);
    let src_tenancy = tenancy_rows(&mut su);
    assert_eq!(src_tenancy.len(), 5 + 3);
    let src_audit = audit_rows(&mut su);
    let actions: BTreeSet<String> = rows_text(
        &mut su,
        "SELECT DISTINCT action FROM api_key_mgmt.audit_log",
        &[],
    )
    .into_iter()
    .collect();
    for action in [
        "tenant.created",
        "member.added",
        "member.role_changed",
        "route.set",
        "key.issued",
        "key.revoked",
        "key.rotated",
        "secret.created",
        "secret.decrypted",
    ] {
        assert!(
            actions.contains(action),
            "no {action} entry to carry: {actions:?}"
        );
    }
    assert_eq!(
        count(&mut su, "FROM api_key_mgmt.audit_log WHERE client_ip = '198.51.100.7' AND user_agent = 'dump-test/1.0' AND actor = 'alice'"),
        1
    );
    let src_catalog = security_catalog(&mut su);

    let dump = cluster.dir.join("tn_dump.Fc");
    run(cluster
        .client_command("pg_dump")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(&db.name));
    let restored = "tn_dump_restored";
    run(cluster.client_command("createdb").arg(restored));
    let mut admin = cluster.connect("postgres");
    set_database_key_file(&mut admin, restored, &file.path);
    run(cluster
        .client_command("pg_restore")
        .args(["--exit-on-error", "-d", restored])
        .arg(&dump));
    let mut r = cluster.connect(restored);

    // The audit log: the same entries, none added by the restore.
    assert_same_lines(
        &src_audit,
        &audit_rows(&mut r),
        "audit_log after the restore",
    );
    assert_same_lines(
        &src_audit,
        &audit_rows(&mut su),
        "the source's audit_log after the dump",
    );
    // Members and routes.
    assert_same_lines(
        &src_tenancy,
        &tenancy_rows(&mut r),
        "members and routes after the restore",
    );
    // RLS enabled and forced on every table, policies and grants as in the source.
    let catalog = security_catalog(&mut r);
    for line in catalog.iter().filter(|l| l.starts_with("rls ")) {
        assert!(line.ends_with(" true true"), "after the restore: {line}");
    }
    assert!(catalog
        .iter()
        .any(|l| l.starts_with("policy api_keys api_keys_member ")));
    assert_same_lines(&src_catalog, &catalog, "security catalog after the restore");
    let grants: Vec<(String, bool)> = r
        .query(
            "SELECT p.oid::regprocedure::text, has_function_privilege('dr_app', p.oid, 'EXECUTE')
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'api_key_mgmt_internal'::regnamespace
                 OR p.oid = 'api_key_mgmt.issue_api_key(uuid, text, text[], timestamptz, text, text[], text[], jsonb, text, numeric, numeric, numeric)'::regprocedure
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for (f, can) in &grants {
        assert_eq!(
            *can,
            f.starts_with("api_key_mgmt.issue_api_key("),
            "EXECUTE of {f} for a tenant user"
        );
    }
    // Keys validate as before.
    for (k, expected) in keys.iter().zip(&src_codes) {
        assert_code(&mut r, k, expected);
    }
    // A member of A sees A's rows only.
    let mut app = cluster.connect_as(restored, "dr_app");
    act_as(&mut app, Some("carol"), Some(&a));
    assert_eq!(
        context(&mut app),
        (Some(a.clone()), Some("member".into()), None)
    );
    let visible = rows_text(
        &mut app,
        "SELECT tenant_id::text FROM api_key_mgmt.api_keys ORDER BY 1",
        &[],
    );
    assert_eq!(visible, vec![a.clone(); 5]);
    assert_eq!(count(&mut app, "FROM api_key_mgmt.tenant_members"), 4);
    assert_eq!(count(&mut app, "FROM api_key_mgmt.tenants"), 1);
    // The restored vault decrypts with the same key file.
    for (t, plain) in [(&a, &sa_plain), (&b, &sb_plain)] {
        assert_eq!(
            try_get_secret(&mut r, Some(t), "openai", None)
                .unwrap()
                .as_deref(),
            Some(plain.as_str())
        );
    }
}

// ---------------------------------------------------------------------------------
// Regression tests for extension bugs found while writing the tests above.
// ---------------------------------------------------------------------------------

/// The failed-validation counters live in shared memory for the whole cluster and
/// record no database: a platform administrator of one database sees the key and tenant
/// ids of another's refused keys, and `reset_validation_failures()` there clears them.
#[test]
fn validation_failures_per_database() {
    let one = TestDb::new("tn_fail_one");
    let two = TestDb::new("tn_fail_two");
    let mut c1 = one.connect();
    let t = create_tenant(&mut c1, "failures one");
    let k = issue(&mut c1, &t, "refused");
    assert!(revoke(&mut c1, &k.id));
    assert_eq!(code(&mut c1, &k.key), "revoked");
    let seen = |c: &mut Client| {
        one_i64(
            c,
            "SELECT count(*) FROM api_key_mgmt.validation_failures() \
              WHERE key_id = $1::text::uuid",
            &[&k.id],
        )
    };
    assert_eq!(seen(&mut c1), 1, "counted where it happened");
    let mut c2 = two.connect();
    assert_eq!(seen(&mut c2), 0, "another database's failures are visible");
    c2.batch_execute("SELECT api_key_mgmt.reset_validation_failures()")
        .unwrap();
    assert_eq!(seen(&mut c1), 1, "another database's reset cleared them");
}

/// The tenant of a request authenticated by `authenticate_request()` is kept in the
/// leader's backend memory, so `current_tenant_id()` must never run in a parallel
/// worker (it is PARALLEL RESTRICTED): a policy that calls it directly (without the
/// `(SELECT ...)` wrapper) must still see every row of the key's tenant even when
/// parallel plans are as cheap as can be.
#[test]
fn request_context_in_parallel_workers() {
    let db = TestDb::new("tn_parallel");
    let mut su = db.connect();
    let a = create_tenant(&mut su, "parallel A");
    su.batch_execute(
        "CREATE ROLE par_app LOGIN IN ROLE api_key_mgmt_user;
         CREATE TABLE public.big_documents (tenant_id uuid NOT NULL, n integer NOT NULL);
         ALTER TABLE public.big_documents ENABLE ROW LEVEL SECURITY;
         CREATE POLICY unwrapped ON public.big_documents
             USING (tenant_id = api_key_mgmt.current_tenant_id());
         GRANT SELECT ON public.big_documents TO par_app;
         SELECT api_key_mgmt.add_route_scope('GET', '/big_documents', 'documents:read');",
    )
    .unwrap();
    su.execute(
        "INSERT INTO public.big_documents SELECT $1::text::uuid, g FROM generate_series(1, 100000) g",
        &[&a],
    )
    .unwrap();
    su.batch_execute("ANALYZE public.big_documents").unwrap();
    let k = issue_scoped(&mut su, &a, "parallel", &["documents:read"]);

    let mut c = db.connect_as("par_app");
    c.batch_execute(
        "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
         SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2;",
    )
    .unwrap();
    let request = Request {
        role: "par_app",
        claims: json!({"role": "par_app"}),
        headers: json!({"x-api-key": k.key}),
        method: "GET",
        path: "/big_documents",
    };
    let (plan, n) = replay(&mut c, &request, |c| {
        let plan = texts(
            c,
            "EXPLAIN (COSTS OFF) SELECT count(*) FROM public.big_documents",
        )?;
        let n = one_i64(c, "SELECT count(*) FROM public.big_documents", &[]);
        Ok((plan, n))
    })
    .unwrap();
    // No worker evaluates the policy: either no parallel plan, or the filter above it.
    let filter_in_worker = plan.iter().any(|l| l[0].contains("Gather"))
        && plan
            .iter()
            .skip_while(|l| !l[0].contains("Gather"))
            .any(|l| l[0].contains("current_tenant_id"));
    assert!(
        !filter_in_worker,
        "the policy ran in a parallel worker: {plan:?}"
    );
    assert_eq!(
        n, 100_000,
        "rows of the key's tenant under a parallel-friendly plan"
    );
}
