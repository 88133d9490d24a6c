//! Updating in place (issue 15): a database created with 0.1.0's install script (the
//! frozen `sql/api_key_mgmt--0.1.0.sql`) and the current library, filled with data of
//! every kind through the API, is updated with `ALTER EXTENSION api_key_mgmt UPDATE`.
//! Then every key validates with the same answer, every secret decrypts to the same
//! plaintext, every row is still there, a proxy token issued before still resolves, and
//! the extension's schemas equal a fresh install of the current version (pg_dump of
//! both, with the objects released from the extension so that pg_dump prints them).
//! The regression suite on an updated database is `REGRESS_FROM=0.1.0 tests/regress.sh`
//! (in `make test`).

use crate::common::secrets::*;
use crate::common::sql::*;
use crate::common::{run, wait_until, Cluster};
use postgres::Client;
use std::time::Duration;

const FROM: &str = "0.1.0";
/// The tables whose rows must all survive.
const TABLES: [&str; 12] = [
    "tenants",
    "api_keys",
    "tenant_members",
    "tenant_secrets",
    "providers",
    "meters",
    "usage_events",
    "audit_log",
    "agent_tools",
    "access_requests",
    "agent_sessions",
    "proxy_tokens",
];

struct Before {
    /// (key, what validate_api_key answered: code, key id)
    answers: Vec<(String, Validation)>,
    /// (tenant or None, provider, plaintext)
    secrets: Vec<(Option<String>, String, String)>,
    rows: Vec<i64>,
    proxy_token: String,
}

fn rows(c: &mut Client) -> Vec<i64> {
    TABLES
        .iter()
        .map(|t| count(c, &format!("FROM api_key_mgmt.{t}")))
        .collect()
}

/// Tenants, keys of every state, members, secrets (tenant and platform), caps, charges
/// and usage, audit entries, an approved agent session and its proxy token.
fn fill(c: &mut Client) -> Before {
    let a = create_tenant(c, "upgrade a");
    let b = create_tenant(c, "upgrade b");
    c.execute(
        "SELECT api_key_mgmt.add_tenant_member($1::text::uuid, 'alice', 'owner')",
        &[&a],
    )
    .unwrap();
    let active = issue(c, &a, "active");
    let revoked = issue(c, &a, "revoked");
    revoke(c, &revoked.id);
    let expired = issue_expiring(c, &a, "expired", "1 hour");
    c.execute(
        "UPDATE api_key_mgmt.api_keys SET expires_at = now() - interval '1 minute' WHERE id = $1::text::uuid",
        &[&expired.id],
    )
    .unwrap();
    let in_grace = issue(c, &a, "in grace");
    let successor = rotate(c, &in_grace.id, "1 hour");
    let past_grace = issue(c, &a, "past grace");
    let successor2 = rotate(c, &past_grace.id, "0 seconds");
    c.batch_execute(
        "SET api_key_mgmt.import_prefixes = 'legacy_';
         ALTER DATABASE upgraded SET api_key_mgmt.import_prefixes = 'legacy_';",
    )
    .unwrap();
    let imported = "legacy_0123456789abcdefghijklmnopqrstuvwxyz".to_owned();
    try_import(c, &a, &imported).unwrap();
    let of_b = issue(c, &b, "tenant disabled");
    c.execute("SELECT api_key_mgmt.disable_tenant($1::text::uuid)", &[&b])
        .unwrap();
    let mut keys: Vec<String> = [
        &active,
        &revoked,
        &expired,
        &in_grace,
        &successor,
        &past_grace,
        &successor2,
        &of_b,
    ]
    .iter()
    .map(|k| k.key.clone())
    .collect();
    keys.push(imported);
    keys.push("sk_live_notakeynotakeynotakeynotakeynotakeynota".into());

    // Secrets, caps and usage.
    let tenant_secret = openai_secret();
    put_secret(c, Some(&a), "openai", &tenant_secret, None);
    let platform_secret = "sk-ant-platformplatformplatform0001".to_owned();
    put_secret(c, None, "anthropic", &platform_secret, None);
    c.execute(
        "SELECT api_key_mgmt.set_key_caps($1::text::uuid, 100, 1000, 50)",
        &[&active.id],
    )
    .unwrap();
    for _ in 0..3 {
        c.execute(
            "SELECT * FROM api_key_mgmt.charge_api_key($1::text::uuid, 'agents:chat', 0.25, 10, 'openai', 'gpt-4o')",
            &[&active.id],
        )
        .unwrap();
    }
    // A provider of the site's own, an agent session and its proxy token.
    c.batch_execute(
        "SELECT api_key_mgmt.register_provider('stripe', 'Stripe', '^sk_(live|test)_[A-Za-z0-9]{10,}$')",
    )
    .unwrap();
    c.execute(
        "SELECT api_key_mgmt.put_tenant_secret($1::text::uuid, 'stripe', 'sk_live_upgradeupgrade1234', environment => 'prod', name => 'stripe-prod')",
        &[&a],
    )
    .unwrap();
    c.execute(
        "SELECT api_key_mgmt.register_agent_tool($1::text::uuid, 'billing-bot', 'Billing bot', '{stripe-*}', '{prod}', 'low', '1 hour')",
        &[&a],
    )
    .unwrap();
    let session: String = c
        .query_one(
            "SELECT session_id::text FROM api_key_mgmt.request_secret_access($1::text::uuid, 'billing-bot', '{stripe-prod}', 'prod', 'upgrade test', '1 hour')",
            &[&a],
        )
        .unwrap()
        .get(0);
    let proxy_token: String = c
        .query_one(
            "SELECT api_key_mgmt.issue_proxy_token($1::text::uuid, 'stripe-prod')",
            &[&session],
        )
        .unwrap()
        .get(0);

    Before {
        answers: keys
            .into_iter()
            .map(|k| {
                let v = validate(c, &k);
                (k, v)
            })
            .collect(),
        secrets: vec![
            (Some(a), "openai".into(), tenant_secret),
            (None, "anthropic".into(), platform_secret),
        ],
        rows: rows(c),
        proxy_token,
    }
}

/// `db`'s extension schemas as pg_dump prints them, after releasing the extension's
/// objects from it in a throwaway copy (pg_dump leaves extension members out), with the
/// lines that differ between any two dumps (comments, settings) removed.
fn schema_dump(cluster: &Cluster, su: &mut Client, db: &str) -> String {
    let copy = format!("{db}_dump");
    // A session just closed may still be leaving the template database.
    wait_until(
        "the template database is free",
        Duration::from_secs(30),
        || {
            su.batch_execute(&format!("CREATE DATABASE {copy} TEMPLATE {db}"))
                .is_ok()
        },
    );
    let mut c = cluster.connect(&copy);
    c.batch_execute(
        "SET allow_system_table_mods = on;
         DELETE FROM pg_depend WHERE deptype = 'e'
            AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'api_key_mgmt');",
    )
    .unwrap();
    drop(c);
    let out = run(cluster.client_command("pg_dump").args([
        "--schema-only",
        "-n",
        "api_key_mgmt",
        "-n",
        "api_key_mgmt_internal",
        "-n",
        "api_key_mgmt_impl",
        "-d",
        &copy,
    ]));
    su.batch_execute(&format!("DROP DATABASE {copy}")).unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            !(l.is_empty()
                || l.starts_with("--")
                || l.starts_with("SET ")
                || l.starts_with("SELECT pg_catalog.set_config")
                // pg_dump's per-dump random key against injected psql meta-commands
                || l.starts_with("\\restrict ")
                || l.starts_with("\\unrestrict "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn updating_from_0_1_0_keeps_every_answer_and_matches_a_fresh_install() {
    let mut cluster = Cluster::init("upgrade");
    cluster.start();
    let mut su = cluster.connect("postgres");
    su.batch_execute("CREATE DATABASE upgraded").unwrap();
    su.batch_execute("CREATE DATABASE fresh").unwrap();

    let mut setup = cluster.connect("upgraded");
    setup
        .batch_execute(&format!("CREATE EXTENSION api_key_mgmt VERSION '{FROM}'"))
        .unwrap();
    private_key_file(&cluster, &mut setup, "upgraded", "it_upgrade");
    drop(setup);
    let mut c = cluster.connect("upgraded");
    let before = fill(&mut c);
    // The library with 0.1.0's SQL (the state between installing a package and the
    // update): everything above ran through it; a function whose result changed since
    // (audit_queue_status gained a column) answers with the old row type, no crash.
    let old_row = c
        .query_one("SELECT * FROM api_key_mgmt.audit_queue_status()", &[])
        .unwrap();
    assert_eq!(old_row.len(), 5);
    c.batch_execute("ALTER EXTENSION api_key_mgmt UPDATE")
        .unwrap();
    let new_row = c
        .query_one("SELECT * FROM api_key_mgmt.audit_queue_status()", &[])
        .unwrap();
    assert_eq!(new_row.len(), 6);
    let version: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'api_key_mgmt'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    drop(c);

    // The same answers, secrets and rows; the proxy token still resolves.
    let mut c = cluster.connect("upgraded");
    for (key, answer) in &before.answers {
        assert_eq!(&validate(&mut c, key), answer, "validation of {answer:?}");
    }
    for (tenant, provider, plaintext) in &before.secrets {
        let got = get_secret(&mut c, tenant.as_deref(), provider, None);
        assert_eq!(
            got.as_deref(),
            Some(plaintext.as_str()),
            "{provider} of {tenant:?}"
        );
    }
    let after = rows(&mut c);
    // Reading the secrets above added one secret.decrypted entry each: nothing else.
    let mut expected = before.rows.clone();
    expected[TABLES.iter().position(|t| *t == "audit_log").unwrap()] += 2;
    assert_eq!(after, expected, "rows of {TABLES:?}");
    let resolved: String = c
        .query_one(
            "SELECT api_key_mgmt.resolve_proxy_token($1, 'prod')",
            &[&before.proxy_token],
        )
        .unwrap()
        .get(0);
    assert_eq!(resolved, "sk_live_upgradeupgrade1234");
    drop(c);

    // The schema equals a fresh install's.
    let mut f = cluster.connect("fresh");
    f.batch_execute("CREATE EXTENSION api_key_mgmt").unwrap();
    drop(f);
    let updated = schema_dump(&cluster, &mut su, "upgraded");
    let fresh = schema_dump(&cluster, &mut su, "fresh");
    assert!(updated.len() > 10_000, "the dump holds the schema");
    if updated != fresh {
        let dir = std::env::temp_dir();
        let (u, f) = (dir.join("akm_updated.sql"), dir.join("akm_fresh.sql"));
        std::fs::write(&u, &updated).unwrap();
        std::fs::write(&f, &fresh).unwrap();
        let diff = std::process::Command::new("diff")
            .args(["-u"])
            .arg(&f)
            .arg(&u)
            .output()
            .unwrap();
        panic!(
            "the updated schema differs from a fresh install:\n{}",
            String::from_utf8_lossy(&diff.stdout)
        );
    }
    cluster.destroy();
}
