//! Agent access over real connections (issue 6): the whole flow (register, request on
//! the auto-approved and pending paths, approve/deny, token, resolve, revoke/expire,
//! resolve refused) with security events on LISTEN, environments, undeclared
//! requests, tokens absent from the tables and from pg_dump, `max_uses` under
//! concurrent resolves, and the maintenance
//! background worker in a preloaded cluster of its own.

use crate::common::secrets::{set_database_key_file, KeyFile, MasterKey};
use crate::common::sql::*;
use crate::common::{wait_until, Cluster, TestDb};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::sync::OnceLock;
use std::time::Duration;

const STRIPE_PROD: &str = "sk_live_itprodsecret000111";
const STRIPE_DEV: &str = "sk_test_itdevsecret0000222";

/// A tenant with a prod and a dev Stripe secret and two tools: `billing` (low risk,
/// stripe-*, dev and prod) and `refunds` (high risk, stripe-prod, prod only).
fn setup(c: &mut Client, name: &str) -> String {
    let tenant = create_tenant(c, name);
    c.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM api_key_mgmt.providers WHERE id = 'stripe') THEN
             PERFORM api_key_mgmt.register_provider('stripe', 'Stripe');
           END IF;
         END $$",
    )
    .unwrap();
    for (secret, env, name) in [
        (STRIPE_PROD, "prod", "stripe-prod"),
        (STRIPE_DEV, "dev", "stripe-dev"),
    ] {
        c.execute(
            "SELECT api_key_mgmt.put_tenant_secret($1::text::uuid, 'stripe', $2, environment => $3, name => $4)",
            &[&tenant, &secret, &env, &name],
        )
        .unwrap_or_else(|e| panic!("put_tenant_secret: {e:?}"));
    }
    c.execute(
        "SELECT api_key_mgmt.register_agent_tool($1::text::uuid, 'billing', 'Billing', '{stripe-*}', '{dev,prod}', 'low', '1 hour')",
        &[&tenant],
    )
    .unwrap();
    c.execute(
        "SELECT api_key_mgmt.register_agent_tool($1::text::uuid, 'refunds', 'Refunds', '{stripe-prod}', '{prod}', 'high', '15 minutes')",
        &[&tenant],
    )
    .unwrap();
    tenant
}

/// `request_secret_access` -> (request_id, status, session_id).
fn request(
    c: &mut Client,
    tenant: &str,
    tool: &str,
    names: &[&str],
    env: &str,
) -> (String, String, Option<String>) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let row = c
        .query_one(
            "SELECT request_id::text, status, session_id::text FROM api_key_mgmt.request_secret_access(\
               $1::text::uuid, $2, $3, $4, 'integration test')",
            &[&tenant, &tool, &names, &env],
        )
        .unwrap_or_else(|e| panic!("request_secret_access: {e:?}"));
    (row.get(0), row.get(1), row.get(2))
}

fn token(c: &mut Client, session: &str, name: &str) -> String {
    c.query_one(
        "SELECT api_key_mgmt.issue_proxy_token($1::text::uuid, $2)",
        &[&session, &name],
    )
    .unwrap_or_else(|e| panic!("issue_proxy_token: {e:?}"))
    .get(0)
}

/// Resolve as the backend service role.
fn resolve(c: &mut Client, token: &str, env: Option<&str>) -> Result<String, postgres::Error> {
    c.batch_execute("SET ROLE api_key_mgmt_service").unwrap();
    let r = c
        .query_one(
            "SELECT api_key_mgmt.resolve_proxy_token($1, $2)",
            &[&token, &env],
        )
        .map(|row| row.get(0));
    c.batch_execute("RESET ROLE").unwrap();
    r
}

/// Security event notifications received within `wait`.
fn events(listener: &mut Client, wait: Duration) -> Vec<serde_json::Value> {
    listener.batch_execute("SELECT 1").unwrap();
    let mut got = Vec::new();
    let mut n = listener.notifications();
    let mut it = n.timeout_iter(wait);
    while let Some(note) = it.next().unwrap() {
        assert_eq!(note.channel(), "api_key_mgmt_security");
        got.push(serde_json::from_str::<serde_json::Value>(note.payload()).unwrap());
    }
    got
}

/// Wait until an event of `kind` arrives (events of other kinds are kept in `seen`).
fn expect_event(
    listener: &mut Client,
    seen: &mut Vec<serde_json::Value>,
    kind: &str,
) -> serde_json::Value {
    for _ in 0..50 {
        if let Some(i) = seen.iter().position(|v| v["kind"] == kind) {
            return seen.remove(i);
        }
        seen.extend(events(listener, Duration::from_millis(200)));
    }
    panic!("no {kind} security event; got {seen:?}")
}

fn key_file(cluster: &'static Cluster, admin: &mut Client, db: &str) {
    let file = KeyFile::create(cluster, db, vec![MasterKey::random(1)], None);
    set_database_key_file(admin, db, &file.path);
}

/// The whole flow over real connections, with the events on LISTEN.
#[test]
fn agents_flow_end_to_end() {
    let db = TestDb::new("it_agents_flow");
    let mut admin = db.cluster().connect("postgres");
    key_file(db.cluster(), &mut admin, &db.name);
    let mut c = db.connect();
    let mut listener = db.connect();
    listener
        .batch_execute("LISTEN api_key_mgmt_security")
        .unwrap();
    let mut seen = Vec::new();
    let tenant = setup(&mut c, "agents flow");

    // Auto-approved (low risk): a session at once, a token, the secret.
    let (_, status, session) = request(&mut c, &tenant, "billing", &["stripe-prod"], "prod");
    assert_eq!(status, "approved");
    let session = session.expect("a session");
    let tok = token(&mut c, &session, "stripe-prod");
    assert!(tok.starts_with("pxt_live_"), "{tok}");
    assert_eq!(resolve(&mut c, &tok, None).unwrap(), STRIPE_PROD);
    assert_eq!(resolve(&mut c, &tok, Some("prod")).unwrap(), STRIPE_PROD);
    assert_eq!(
        count(
            &mut c,
            &format!("FROM api_key_mgmt.proxy_tokens WHERE session_id = '{session}' AND uses = 2")
        ),
        1
    );
    // Only the backend service may resolve.
    c.batch_execute("SET ROLE api_key_mgmt_admin").unwrap();
    assert_sqlstate(
        c.query_one("SELECT api_key_mgmt.resolve_proxy_token($1)", &[&tok]),
        "42501",
        "admin resolves",
    );
    c.batch_execute("RESET ROLE").unwrap();
    // Revoke: refused at once, with a security event on the channel.
    c.execute(
        "SELECT api_key_mgmt.revoke_session($1::text::uuid)",
        &[&session],
    )
    .unwrap();
    assert_sqlstate(resolve(&mut c, &tok, None), "28000", "revoked token");
    let ev = expect_event(&mut listener, &mut seen, "resolve_after_revocation");
    assert_eq!(ev["tenant_id"], tenant.as_str());
    assert_eq!(ev["subject_type"], "proxy_token");
    assert!(!ev.to_string().contains(&tok) && !ev.to_string().contains(STRIPE_PROD));

    // Pending (high risk): nothing until a tenant admin approves.
    let (req, status, session) = request(&mut c, &tenant, "refunds", &["stripe-prod"], "prod");
    assert_eq!((status.as_str(), session), ("pending", None));
    let session: String = c
        .query_one(
            "SELECT api_key_mgmt.approve_access_request($1::text::uuid, 'ok')::text",
            &[&req],
        )
        .unwrap()
        .get(0);
    let tok2 = token(&mut c, &session, "stripe-prod");
    assert_eq!(resolve(&mut c, &tok2, None).unwrap(), STRIPE_PROD);
    // Expiry: the session's end passes; refused, with an event.
    c.execute(
        "UPDATE api_key_mgmt.agent_sessions SET starts_at = now() - interval '1 hour', ends_at = now() - interval '1 minute' WHERE id = $1::text::uuid",
        &[&session],
    )
    .unwrap();
    assert_sqlstate(resolve(&mut c, &tok2, None), "28000", "expired token");
    expect_event(&mut listener, &mut seen, "resolve_after_expiry");
    // Deny: recorded, with an event.
    let (req, status, _) = request(&mut c, &tenant, "refunds", &["stripe-prod"], "prod");
    assert_eq!(status, "pending");
    c.execute(
        "SELECT api_key_mgmt.deny_access_request($1::text::uuid, 'no')",
        &[&req],
    )
    .unwrap();
    let ev = expect_event(&mut listener, &mut seen, "access_denied");
    assert_eq!(ev["subject_id"], req.as_str());
    assert_sqlstate(
        c.query_one(
            "SELECT api_key_mgmt.approve_access_request($1::text::uuid)",
            &[&req],
        ),
        "55000",
        "approve a denied request",
    );

    // A dev session cannot resolve (or get a token for) a prod secret.
    let (_, _, dev) = request(&mut c, &tenant, "billing", &["stripe-dev"], "dev");
    let dev = dev.unwrap();
    assert_sqlstate(
        c.query_one(
            "SELECT api_key_mgmt.issue_proxy_token($1::text::uuid, 'stripe-prod')",
            &[&dev],
        ),
        "42501",
        "prod secret in a dev session",
    );
    let dev_tok = token(&mut c, &dev, "stripe-dev");
    assert!(dev_tok.starts_with("pxt_test_"));
    assert_sqlstate(
        resolve(&mut c, &dev_tok, Some("prod")),
        "42501",
        "dev token in prod",
    );
    expect_event(&mut listener, &mut seen, "resolve_wrong_environment");
    assert_eq!(resolve(&mut c, &dev_tok, Some("dev")).unwrap(), STRIPE_DEV);
    assert_sqlstate(
        c.query_one(
            "SELECT * FROM api_key_mgmt.request_secret_access($1::text::uuid, 'billing', '{stripe-prod}', 'dev', 'x')",
            &[&tenant],
        ),
        "42704",
        "prod-only secret asked for in dev",
    );

    // A tool cannot obtain what it did not declare: denied, with an event.
    let (req, status, session) = request(&mut c, &tenant, "refunds", &["stripe-dev"], "prod");
    assert_eq!((status.as_str(), session), ("denied", None));
    let ev = expect_event(&mut listener, &mut seen, "undeclared_request");
    assert_eq!(ev["subject_id"], req.as_str());
    let (_, status, _) = request(&mut c, &tenant, "refunds", &["stripe-prod"], "dev");
    assert_eq!(status, "denied");

    // Tokens are stored nowhere in plaintext: not in any row, not in a dump.
    let tokens = [&tok, &tok2, &dev_tok];
    for t in tokens {
        assert_eq!(
            count(
                &mut c,
                &format!("FROM api_key_mgmt.proxy_tokens p WHERE strpos(row_to_json(p)::text, '{t}') > 0")
            ),
            0
        );
        assert_eq!(
            count(
                &mut c,
                &format!(
                    "FROM api_key_mgmt.audit_log a WHERE strpos(row_to_json(a)::text, '{t}') > 0"
                )
            ),
            0
        );
    }
    let dump = crate::common::run(db.cluster().client_command("pg_dump").arg(&db.name));
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("proxy_tokens"), "the dump has the table");
    for t in tokens {
        assert!(!dump.contains(t.as_str()), "a token in the dump");
    }
}

/// Tenant isolation of the new tables for tenant users (RLS), over real connections.
#[test]
fn agents_tables_are_tenant_isolated() {
    let db = TestDb::new("it_agents_rls");
    let mut admin = db.cluster().connect("postgres");
    key_file(db.cluster(), &mut admin, &db.name);
    let mut c = db.connect();
    let a = setup(&mut c, "agents rls a");
    let b = setup(&mut c, "agents rls b");
    for (t, user) in [(&a, "alice"), (&b, "bruno")] {
        c.execute(
            "SELECT api_key_mgmt.add_tenant_member($1::text::uuid, $2, 'owner')",
            &[t, &user],
        )
        .unwrap();
        let (_, _, s) = request(&mut c, t, "billing", &["stripe-prod"], "prod");
        token(&mut c, &s.unwrap(), "stripe-prod");
        request(&mut c, t, "refunds", &["stripe-dev"], "prod"); // an event
    }
    c.batch_execute("CREATE ROLE it_agents_app; GRANT api_key_mgmt_user TO it_agents_app")
        .unwrap_or_default();
    c.batch_execute("SET ROLE it_agents_app").unwrap();
    for (t, user) in [(&a, "alice"), (&b, "bruno")] {
        c.execute(
            "SELECT set_config('request.jwt.claims', json_build_object('sub', $1::text, 'tenant_id', $2::text)::text, false)",
            &[&user, t],
        )
        .unwrap();
        for table in [
            "agent_tools",
            "access_requests",
            "agent_sessions",
            "proxy_tokens",
            "security_events",
        ] {
            let total = count(&mut c, &format!("FROM api_key_mgmt.{table}"));
            let own = count(
                &mut c,
                &format!("FROM api_key_mgmt.{table} WHERE tenant_id = '{t}'"),
            );
            assert!(total > 0, "{user} sees own {table}");
            assert_eq!(total, own, "{user} sees only own {table}");
        }
    }
    c.batch_execute("RESET ROLE").unwrap();
}

/// A preloaded cluster of its own, running the maintenance worker every second in
/// `postgres`, where the extension is created only after the worker has started.
fn bgw_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let mut c = Cluster::init("agents-bgw");
        let conf = c.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(
            "\napi_key_mgmt.agent_maintenance_interval = 1\n\
             api_key_mgmt.agent_maintenance_database = 'postgres'\n\
             max_connections = 20\nshared_buffers = 16MB\n",
        );
        std::fs::write(&conf, text).unwrap();
        c.start();
        c
    })
}

/// The background worker really runs maintenance: an expired session turns `expired`
/// and its token is revoked without anyone calling run_agent_maintenance().
#[test]
fn agents_maintenance_worker_runs_when_preloaded() {
    let cluster = bgw_cluster();
    let mut c = cluster.connect("postgres");
    wait_until("the maintenance worker", Duration::from_secs(20), || {
        count(
            &mut c,
            "FROM pg_stat_activity WHERE backend_type = 'api_key_mgmt agent maintenance'",
        ) == 1
    });
    // Not installed yet: the worker idles without errors; then install.
    std::thread::sleep(Duration::from_millis(1500));
    c.batch_execute("CREATE EXTENSION api_key_mgmt").unwrap();
    key_file(cluster, &mut c, "postgres");
    let mut c = cluster.connect("postgres");
    let tenant = setup(&mut c, "agents bgw");
    let (_, _, session) = request(&mut c, &tenant, "billing", &["stripe-prod"], "prod");
    let session = session.unwrap();
    token(&mut c, &session, "stripe-prod");
    c.execute(
        "UPDATE api_key_mgmt.agent_sessions SET starts_at = now() - interval '1 hour', ends_at = now() - interval '1 second' WHERE id = $1::text::uuid",
        &[&session],
    )
    .unwrap();
    wait_until(
        "the worker to expire the session",
        Duration::from_secs(30),
        || {
            count(
            &mut c,
            &format!("FROM api_key_mgmt.agent_sessions WHERE id = '{session}' AND status = 'expired'"),
        ) == 1
        },
    );
    assert_eq!(
        count(
            &mut c,
            &format!("FROM api_key_mgmt.proxy_tokens WHERE session_id = '{session}' AND revoked_at IS NULL")
        ),
        0
    );
    assert!(
        count(&mut c, "FROM api_key_mgmt.audit_log WHERE action = 'agent.maintenance' AND actor_role = 'postgres'") >= 1
    );
    let log = String::from_utf8_lossy(&cluster.log()).into_owned();
    assert!(!log.contains("agent maintenance failed"), "{log}");
    assert!(
        !log.contains("api_key_mgmt agent maintenance\" (PID"),
        "the worker exited: {log}"
    );
}

/// `max_uses` holds under concurrency: 16 connections resolve one token with 5 uses at
/// once; exactly 5 get the secret, the rest 54000, and `uses` ends at 5.
#[test]
fn agents_max_uses_under_concurrency() {
    let db = TestDb::new("it_agents_uses");
    let mut admin = db.cluster().connect("postgres");
    key_file(db.cluster(), &mut admin, &db.name);
    let mut c = db.connect();
    let tenant = setup(&mut c, "agents uses");
    let (_, _, session) = request(&mut c, &tenant, "billing", &["stripe-prod"], "prod");
    let session = session.unwrap();
    let tok: String = c
        .query_one(
            "SELECT api_key_mgmt.issue_proxy_token($1::text::uuid, 'stripe-prod', 5)",
            &[&session],
        )
        .unwrap()
        .get(0);
    let conns: Vec<Client> = (0..16).map(|_| db.connect()).collect();
    let start = std::sync::Barrier::new(conns.len());
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|mut conn| {
                let (start, tok) = (&start, &tok);
                s.spawn(move || {
                    start.wait();
                    resolve(&mut conn, tok, Some("prod")).map_err(|e| sqlstate(&e))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5, "{results:?}");
    for r in &results {
        match r {
            Ok(secret) => assert_eq!(secret, STRIPE_PROD),
            Err(code) => assert_eq!(code, "54000"),
        }
    }
    assert_eq!(
        count(
            &mut c,
            &format!("FROM api_key_mgmt.proxy_tokens WHERE session_id = '{session}' AND uses = 5")
        ),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "FROM api_key_mgmt.audit_log WHERE action = 'secret.decrypted' AND details ->> 'source' = 'proxy_token'"
        ),
        5
    );
}
