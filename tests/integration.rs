#![cfg(not(feature = "pg_test"))]
//! Integration tests: real connections to a cluster the harness starts itself
//! (tests/common). Each test works in a database of its own.
//!
//! Run with `make test-integration` (installs the extension first).

mod common;

use common::keys::{body, random_alnum, unissued_native_key, with_bad_checksum};
use common::sql::*;
use common::{primary, run, wait_until, Cluster, TestDb};
use postgres::Client;
use std::panic::resume_unwind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Sets the flag when dropped, also while unwinding, so background loops end.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn join<T>(h: thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|e| resume_unwind(e))
}

/// The full lifecycle from many connections at once, then races on a single key, with
/// validation running throughout.
#[test]
fn concurrency() {
    const WORKERS: usize = 16;
    const VALIDATORS: usize = 4;
    const ITERATIONS: usize = 20;
    const RACE_ROUNDS: usize = 10;

    let started = Instant::now();
    let db = TestDb::new("it_concurrency");
    let mut main = db.connect();
    let tenants = [
        create_tenant(&mut main, "tenant a"),
        create_tenant(&mut main, "tenant b"),
    ];
    let stable: Vec<Issued> = (0..8)
        .map(|i| issue(&mut main, &tenants[i % 2], "stable"))
        .collect();
    let unknown = unissued_native_key("sk", "live");
    let bad_checksum = with_bad_checksum(&stable[0].key);

    // Every connection is opened before any thread waits on a barrier.
    let worker_conns: Vec<Client> = (0..WORKERS).map(|_| db.connect()).collect();
    let validator_conns: Vec<Client> = (0..VALIDATORS).map(|_| db.connect()).collect();
    let start = Barrier::new(WORKERS + VALIDATORS);
    let stop = AtomicBool::new(false);
    let validations = AtomicU64::new(0);
    // Keys being rotated and revoked by the workers, committed before they are pushed.
    let churn: Mutex<Vec<String>> = Mutex::new(Vec::new());

    thread::scope(|s| {
        let _stop_on_exit = SetOnDrop(&stop);
        let validators: Vec<_> = validator_conns
            .into_iter()
            .map(|mut c| {
                let (start, stop, validations, churn) = (&start, &stop, &validations, &churn);
                let (stable, unknown, bad_checksum) = (&stable, &unknown, &bad_checksum);
                s.spawn(move || {
                    start.wait();
                    let deadline = Instant::now() + Duration::from_secs(180);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        for k in stable {
                            assert_code(&mut c, k, "ok");
                        }
                        assert_eq!(code(&mut c, unknown), "not_found");
                        assert_eq!(code(&mut c, bad_checksum), "bad_checksum");
                        assert_eq!(code(&mut c, "garbage"), "malformed");
                        let recent: Vec<String> = {
                            let all = churn.lock().unwrap();
                            all[all.len().saturating_sub(24)..].to_vec()
                        };
                        for k in &recent {
                            let got = code(&mut c, k);
                            assert!(
                                ["ok", "rotated", "revoked"].contains(&got.as_str()),
                                "a key under churn answered {got}"
                            );
                        }
                        validations.fetch_add(11 + recent.len() as u64, Ordering::Relaxed);
                    }
                })
            })
            .collect();

        let workers: Vec<_> = worker_conns
            .into_iter()
            .enumerate()
            .map(|(w, mut c)| {
                let (start, churn, tenant) = (&start, &churn, &tenants[w % 2]);
                s.spawn(move || {
                    start.wait();
                    for i in 0..ITERATIONS {
                        let k0 = issue(&mut c, tenant, &format!("w{w} i{i}"));
                        assert_code(&mut c, &k0, "ok");
                        churn.lock().unwrap().push(k0.key.clone());

                        // Rotation with grace: both the old and the new key validate.
                        let k1 = rotate(&mut c, &k0.id, "1 hour");
                        churn.lock().unwrap().push(k1.key.clone());
                        assert_code(&mut c, &k0, "ok");
                        assert_code(&mut c, &k1, "ok");

                        // Rotation without grace: the old key answers rotated at once.
                        let k2 = rotate(&mut c, &k1.id, "0");
                        churn.lock().unwrap().push(k2.key.clone());
                        assert_code(&mut c, &k1, "rotated");
                        assert_code(&mut c, &k2, "ok");

                        // Revocation, also of a key still in its grace period.
                        assert!(revoke(&mut c, &k2.id));
                        assert_code(&mut c, &k2, "revoked");
                        assert!(!revoke(&mut c, &k2.id), "second revoke must return false");
                        assert!(revoke(&mut c, &k0.id));
                        assert_code(&mut c, &k0, "revoked");
                        assert_sqlstate(
                            try_rotate(&mut c, &k0.id, "1 hour"),
                            "55000",
                            "rotate revoked",
                        );
                        assert_sqlstate(
                            try_rotate(&mut c, &k1.id, "1 hour"),
                            "55000",
                            "rotate rotated",
                        );
                    }
                    c
                })
            })
            .collect();
        let mut conns: Vec<Client> = workers.into_iter().map(join).collect();
        let lifecycle_done = started.elapsed();

        // Races: every connection rotates the same key at the same instant, then
        // revokes the same key at the same instant.
        for round in 0..RACE_ROUNDS {
            let target = issue(&mut main, &tenants[round % 2], &format!("race {round}"));
            let barrier = Barrier::new(WORKERS);
            let results: Vec<Result<Issued, postgres::Error>> = thread::scope(|r| {
                let handles: Vec<_> = conns
                    .iter_mut()
                    .map(|c| {
                        let (barrier, target) = (&barrier, &target);
                        r.spawn(move || {
                            barrier.wait();
                            try_rotate(c, &target.id, "1 hour")
                        })
                    })
                    .collect();
                handles.into_iter().map(join).collect()
            });
            let winners: Vec<&Issued> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(
                winners.len(),
                1,
                "round {round}: concurrent rotations that succeeded"
            );
            for e in results.iter().filter_map(|r| r.as_ref().err()) {
                assert_eq!(
                    sqlstate(e),
                    "55000",
                    "round {round}: losing rotation: {e:?}"
                );
            }
            let successor = winners[0].clone();
            let successors: Vec<String> = main
                .query(
                    "SELECT id::text FROM api_key_mgmt.api_keys WHERE rotated_from = $1::text::uuid",
                    &[&target.id],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(
                successors,
                vec![successor.id.clone()],
                "round {round}: successor rows"
            );
            let rotated_to: Option<String> = main
                .query_one(
                    "SELECT rotated_to::text FROM api_key_mgmt.api_keys WHERE id = $1::text::uuid",
                    &[&target.id],
                )
                .unwrap()
                .get(0);
            assert_eq!(rotated_to, Some(successor.id.clone()));
            assert_code(&mut main, &target, "ok");
            assert_code(&mut main, &successor, "ok");

            let barrier = Barrier::new(WORKERS);
            let revoked: Vec<Result<bool, postgres::Error>> = thread::scope(|r| {
                let handles: Vec<_> = conns
                    .iter_mut()
                    .map(|c| {
                        let (barrier, target) = (&barrier, &target);
                        r.spawn(move || {
                            barrier.wait();
                            try_revoke(c, &target.id)
                        })
                    })
                    .collect();
                handles.into_iter().map(join).collect()
            });
            let revoked: Vec<bool> = revoked
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|e| panic!("round {round}: concurrent revoke failed: {e:?}"))
                })
                .collect();
            assert_eq!(
                revoked.iter().filter(|&&b| b).count(),
                1,
                "round {round}: concurrent revocations that returned true: {revoked:?}"
            );
            assert_code(&mut main, &target, "revoked");
            assert_code(&mut main, &successor, "ok");
        }

        stop.store(true, Ordering::SeqCst);
        validators.into_iter().for_each(join);
        eprintln!(
            "concurrency: lifecycle {lifecycle_done:?}, total {:?}, {} validations in the background",
            started.elapsed(),
            validations.load(Ordering::Relaxed)
        );
    });

    assert!(
        validations.load(Ordering::Relaxed) > 0,
        "the validators never ran"
    );
    let expected = (stable.len() + WORKERS * ITERATIONS * 3 + RACE_ROUNDS * 2) as i64;
    assert_eq!(count(&mut main, "FROM api_key_mgmt.api_keys"), expected);
    assert_eq!(
        count(
            &mut main,
            "FROM api_key_mgmt.api_keys WHERE revoked_at IS NOT NULL"
        ),
        (WORKERS * ITERATIONS * 2 + RACE_ROUNDS) as i64
    );
}

/// Validation writes nothing: it works in READ ONLY transactions, where writing fails.
#[test]
fn read_only_transactions() {
    let db = TestDb::new("it_read_only");
    let mut c = db.connect();
    let tenant = create_tenant(&mut c, "read only");
    let key = issue(&mut c, &tenant, "k");
    let gone = issue(&mut c, &tenant, "revoked");
    assert!(revoke(&mut c, &gone.id));

    c.batch_execute("BEGIN; SET TRANSACTION READ ONLY").unwrap();
    let ro: String = c
        .query_one("SHOW transaction_read_only", &[])
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");
    assert_code(&mut c, &key, "ok");
    assert_code(&mut c, &gone, "revoked");
    assert_sqlstate(
        try_issue(&mut c, &tenant, "x"),
        "25006",
        "issue in READ ONLY",
    );
    c.batch_execute("ROLLBACK").unwrap();

    c.batch_execute("BEGIN; SET TRANSACTION READ ONLY").unwrap();
    assert_sqlstate(try_revoke(&mut c, &key.id), "25006", "revoke in READ ONLY");
    c.batch_execute("ROLLBACK").unwrap();

    let mut c = db.connect();
    c.batch_execute("SET default_transaction_read_only = on")
        .unwrap();
    assert_code(&mut c, &key, "ok");
    assert_code(&mut c, &gone, "revoked");
    assert_sqlstate(try_issue(&mut c, &tenant, "x"), "25006", "issue");
    assert_sqlstate(try_rotate(&mut c, &key.id, "1 hour"), "25006", "rotate");
    assert_sqlstate(try_revoke(&mut c, &key.id), "25006", "revoke");
    assert_sqlstate(try_create_tenant(&mut c, "t"), "25006", "create_tenant");

    // Nothing was written by any of it.
    let mut c = db.connect();
    assert_code(&mut c, &key, "ok");
    assert_eq!(count(&mut c, "FROM api_key_mgmt.api_keys"), 2);
    assert_eq!(count(&mut c, "FROM api_key_mgmt.tenants"), 1);
}

/// Stops and removes a cluster when dropped (also when the test fails).
struct Destroy(Cluster);

impl Drop for Destroy {
    fn drop(&mut self) {
        self.0.destroy();
    }
}

/// Wait until the standby has replayed everything the primary has written so far.
fn wait_for_replay(primary: &mut Client, standby: &mut Client) {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    wait_until(&format!("replay of {lsn}"), Duration::from_secs(60), || {
        standby
            .query_one(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                &[&lsn],
            )
            .unwrap()
            .get(0)
    });
}

/// Validation runs on a hot standby and follows the primary's revocations.
#[test]
fn hot_standby() {
    let db = TestDb::new("it_standby");
    let mut p = db.connect();
    let tenant = create_tenant(&mut p, "standby");
    let before = issue(&mut p, &tenant, "before the base backup");

    let mut standby = Destroy(Cluster::standby_of(primary(), "standby"));
    standby.0.start();
    let mut s = standby.0.connect(&db.name);
    let in_recovery: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery, "the standby must be in recovery");

    let after = issue(&mut p, &tenant, "after the base backup");
    wait_for_replay(&mut p, &mut s);
    assert_code(&mut s, &before, "ok");
    assert_code(&mut s, &after, "ok");
    assert_eq!(
        code(&mut s, &unissued_native_key("sk", "live")),
        "not_found"
    );
    assert_sqlstate(
        try_issue(&mut s, &tenant, "x"),
        "25006",
        "issue on a standby",
    );

    assert!(revoke(&mut p, &before.id));
    let rotated = rotate(&mut p, &after.id, "0");
    wait_for_replay(&mut p, &mut s);
    assert_code(&mut s, &before, "revoked");
    assert_code(&mut s, &after, "rotated");
    assert_code(&mut s, &rotated, "ok");
    drop(s);
    drop(standby);
}

/// What each role may and may not do.
#[test]
fn roles_and_grants() {
    let db = TestDb::new("it_roles");
    let mut su = db.connect();
    su.batch_execute(
        "CREATE ROLE plain LOGIN;
         CREATE ROLE svc LOGIN IN ROLE api_key_mgmt_service;
         CREATE ROLE adm LOGIN IN ROLE api_key_mgmt_admin;",
    )
    .unwrap();
    let tenant = create_tenant(&mut su, "roles");
    let key = issue(&mut su, &tenant, "k");

    let mut plain = db.connect_as("plain");
    assert_sqlstate(
        try_validate_scoped(&mut plain, Some(&key.key), None),
        "42501",
        "plain: validate",
    );
    assert_sqlstate(try_issue(&mut plain, &tenant, "x"), "42501", "plain: issue");
    assert_sqlstate(
        try_create_tenant(&mut plain, "x"),
        "42501",
        "plain: create_tenant",
    );
    assert_sqlstate(try_revoke(&mut plain, &key.id), "42501", "plain: revoke");
    assert_fails(&mut plain, "SELECT id FROM api_key_mgmt.api_keys", "42501");
    assert_fails(
        &mut plain,
        "SELECT * FROM api_key_mgmt.api_key_status",
        "42501",
    );
    assert_fails(
        &mut plain,
        "SELECT * FROM api_key_mgmt_internal.new_key('sk', 'live')",
        "42501",
    );

    let mut svc = db.connect_as("svc");
    assert_code(&mut svc, &key, "ok");
    assert_eq!(
        code(&mut svc, &unissued_native_key("sk", "live")),
        "not_found"
    );
    assert_sqlstate(try_issue(&mut svc, &tenant, "x"), "42501", "service: issue");
    assert_sqlstate(
        try_create_tenant(&mut svc, "x"),
        "42501",
        "service: create_tenant",
    );
    assert_sqlstate(try_revoke(&mut svc, &key.id), "42501", "service: revoke");
    assert_sqlstate(
        try_rotate(&mut svc, &key.id, "1 hour"),
        "42501",
        "service: rotate",
    );
    assert_fails(&mut svc, "SELECT id FROM api_key_mgmt.api_keys", "42501");
    assert_fails(
        &mut svc,
        "SELECT * FROM api_key_mgmt_internal.new_key('sk', 'live')",
        "42501",
    );

    let mut adm = db.connect_as("adm");
    assert_fails(
        &mut adm,
        "SELECT key_hash FROM api_key_mgmt.api_keys",
        "42501",
    );
    assert_fails(&mut adm, "SELECT * FROM api_key_mgmt.api_keys", "42501");
    assert_fails(
        &mut adm,
        "SELECT * FROM api_key_mgmt_internal.new_key('sk', 'live')",
        "42501",
    );
    let own_tenant = create_tenant(&mut adm, "created by admin");
    let k1 = issue(&mut adm, &own_tenant, "admin key");
    assert_code(&mut adm, &k1, "ok");
    let k2 = rotate(&mut adm, &k1.id, "1 hour");
    assert!(revoke(&mut adm, &k2.id));
    assert_code(&mut adm, &k1, "ok");
    assert_code(&mut adm, &k2, "revoked");
    assert_code(&mut svc, &k2, "revoked");

    let statuses: Vec<(String, String)> = adm
        .query(
            "SELECT key_id::text, status FROM api_key_mgmt.api_key_status ORDER BY created_at, key_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (key.id.clone(), "active".to_owned()),
            (k1.id.clone(), "rotating".to_owned()),
            (k2.id.clone(), "revoked".to_owned()),
        ]
    );
    assert_eq!(count(&mut adm, "FROM api_key_mgmt.tenants"), 2);
    let created_by: String = su
        .query_one(
            "SELECT created_by FROM api_key_mgmt.api_keys WHERE id = $1::text::uuid",
            &[&k1.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(created_by, "adm");
}

/// Validation codes of `keys`, each as the whole key_validation row in text form.
fn validation_rows(c: &mut Client, keys: &[&Issued]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            c.query_one("SELECT api_key_mgmt.validate_api_key($1)::text", &[&k.key])
                .unwrap()
                .get(0)
        })
        .collect()
}

/// pg_dump carries tenants and key hashes, never a key; a restore validates alike.
#[test]
fn dump_and_restore() {
    let db = TestDb::new("it_dump");
    let cluster = db.cluster();
    let mut c = db.connect();
    let t1 = create_tenant(&mut c, "dump one");
    let t2 = create_tenant(&mut c, "dump two");
    let active = issue(&mut c, &t1, "active");
    let revoked = issue(&mut c, &t1, "revoked");
    assert!(revoke(&mut c, &revoked.id));
    let in_grace = issue(&mut c, &t2, "rotated");
    let successor = rotate(&mut c, &in_grace.id, "1 hour");
    let expiring = issue_expiring(&mut c, &t2, "expiring", "30 days");
    let keys = [&active, &revoked, &in_grace, &successor, &expiring];
    let codes: Vec<String> = keys.iter().map(|k| code(&mut c, &k.key)).collect();
    assert_eq!(codes, ["ok", "revoked", "ok", "ok", "ok"]);
    let source_rows = validation_rows(&mut c, &keys);

    let dump = cluster.dir.join("it_dump.Fc");
    run(cluster
        .client_command("pg_dump")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(&db.name));
    run(cluster.client_command("createdb").arg("it_dump_restored"));
    run(cluster
        .client_command("pg_restore")
        .args(["--exit-on-error", "-d", "it_dump_restored"])
        .arg(&dump));

    let mut r = cluster.connect("it_dump_restored");
    for k in keys {
        assert_code(&mut r, k, &code(&mut c, &k.key));
    }
    assert_eq!(validation_rows(&mut r, &keys), source_rows);
    for table in ["tenants", "api_keys"] {
        let from = format!("FROM api_key_mgmt.{table}");
        assert_eq!(
            count(&mut r, &from),
            count(&mut c, &from),
            "rows of {table}"
        );
    }
    assert_eq!(count(&mut r, "FROM api_key_mgmt.api_keys"), 5);

    for dbname in [db.name.as_str(), "it_dump_restored"] {
        let out = run(cluster.client_command("pg_dump").arg(dbname));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("COPY api_key_mgmt.api_keys"),
            "the dump carries the keys' rows"
        );
        for k in keys {
            assert!(
                !text.contains(&k.key),
                "the dump of {dbname} contains a plaintext key"
            );
            assert!(
                !text.contains(body(&k.key)),
                "the dump of {dbname} contains a key body"
            );
        }
    }
}

/// Nothing secret reaches the server log, and validation never raises.
#[test]
fn nothing_secret_in_server_log() {
    let db = TestDb::new("it_log");
    let cluster = db.cluster();
    let mut c = db.connect();
    let tenant = create_tenant(&mut c, "log");
    let key = issue(&mut c, &tenant, "k");
    let bad = with_bad_checksum(&key.key);
    let unknown = unissued_native_key("sk", "test");
    let marker = format!("it_log_marker_{}", random_alnum(12).to_lowercase());

    // Errors in statements that carry keys as bind parameters.
    let import = format!(
        "SELECT key_id FROM api_key_mgmt.import_api_key($1::text::uuid, $2, 'x', ARRAY['*']) /* {marker} */"
    );
    assert_sqlstate(
        c.query(&import, &[&tenant, &key.key]),
        "23505",
        "import of a registered key",
    );
    assert_sqlstate(
        c.query(&import, &[&tenant, &bad]),
        "22023",
        "import with a bad checksum",
    );
    assert_sqlstate(
        c.query(&import, &[&tenant, &"sk_live_short"]),
        "22023",
        "import of garbage",
    );
    let failing = format!("SELECT api_key_mgmt.validate_api_key($1), 1/0 /* {marker} */");
    assert_sqlstate(
        c.query(&failing, &[&unknown]),
        "22012",
        "error after a validation",
    );
    assert_sqlstate(
        c.query(&failing, &[&key.key]),
        "22012",
        "error after a validation",
    );

    // validate_api_key answers, never raises, whatever it is given.
    let huge = "x".repeat(10 * 1024 * 1024);
    let cases: [(Option<&str>, Option<&str>, &str); 8] = [
        (None, None, "missing"),
        (Some(""), None, "missing"),
        (Some(&huge), None, "malformed"),
        (Some(&bad), None, "bad_checksum"),
        (Some(&unknown), None, "not_found"),
        (Some("ÿ€漢字 🔑"), None, "malformed"),
        (Some(&key.key), Some("agents:*"), "invalid_scope"),
        (Some(&key.key), Some("agents:run"), "ok"),
    ];
    for (k, scope, expected) in cases {
        let shown = k.map(|k| k.chars().take(20).collect::<String>());
        match try_validate_scoped(&mut c, k, scope) {
            Ok(v) => assert_eq!(v.code, expected, "key {shown:?} scope {scope:?}"),
            Err(e) => panic!("validate_api_key raised for {shown:?}: {e:?}"),
        }
    }
    assert_eq!(code(&mut c, &huge[..513]), "malformed");

    let log = String::from_utf8_lossy(&cluster.log()).into_owned();
    let logged = log.matches(&marker).count();
    assert!(
        logged >= 5,
        "the failing statements must be in the log ({logged} found)"
    );
    assert!(
        log.contains("this key is already registered"),
        "the 23505 error must be logged"
    );
    assert!(
        !log.contains("terminated by signal"),
        "a server process crashed"
    );
    for secret in [
        key.key.as_str(),
        body(&key.key),
        &bad,
        body(&bad),
        &unknown,
        body(&unknown),
    ] {
        assert!(
            !log.contains(secret),
            "the server log contains a key or its body"
        );
    }
}

/// Keys from another system, under a configured import prefix.
#[test]
fn import_foreign_keys() {
    let db = TestDb::new("it_import");
    let mut c = db.connect();
    let tenant = create_tenant(&mut c, "import");
    let legacy = format!("legacy_{}", random_alnum(30));
    // Not configured yet: refused, and validation does not even look it up.
    assert_sqlstate(
        try_import(&mut c, &tenant, &legacy),
        "22023",
        "import before configuring",
    );
    assert_eq!(code(&mut c, &legacy), "malformed");

    c.batch_execute(&format!(
        "ALTER DATABASE {} SET api_key_mgmt.import_prefixes = 'legacy_'",
        db.name
    ))
    .unwrap();
    let mut c = db.connect();
    let setting: String = c
        .query_one("SHOW api_key_mgmt.import_prefixes", &[])
        .unwrap()
        .get(0);
    assert_eq!(setting, "legacy_");

    let id = try_import(&mut c, &tenant, &legacy).unwrap_or_else(|e| panic!("import: {e:?}"));
    let imported = Issued {
        id,
        key: legacy.clone(),
    };
    assert_code(&mut c, &imported, "ok");
    let (flag, env): (bool, String) = c
        .query_one(
            "SELECT imported, environment FROM api_key_mgmt.api_keys WHERE id = $1::text::uuid",
            &[&imported.id],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(flag);
    assert_eq!(env, "live");

    let other = format!("other_{}", random_alnum(30));
    assert_sqlstate(
        try_import(&mut c, &tenant, &other),
        "22023",
        "unconfigured prefix",
    );
    assert_sqlstate(
        try_import(&mut c, &tenant, &legacy),
        "23505",
        "the same key twice",
    );
    assert_eq!(
        code(&mut c, &format!("legacy_{}", random_alnum(30))),
        "not_found"
    );
    assert_eq!(code(&mut c, &other), "malformed");
    assert_eq!(code(&mut c, "legacy_short"), "malformed");

    // The imported key has the lifecycle of any other.
    let successor = rotate(&mut c, &imported.id, "0");
    assert_code(&mut c, &imported, "rotated");
    assert_code(&mut c, &successor, "ok");

    // Concurrent imports of one key: exactly one wins, the others see 23505.
    let racer = format!("legacy_{}", random_alnum(30));
    let mut conns: Vec<Client> = (0..8).map(|_| db.connect()).collect();
    let barrier = Barrier::new(conns.len());
    let results: Vec<Result<String, postgres::Error>> = thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter_mut()
            .map(|c| {
                let (barrier, tenant, racer) = (&barrier, &tenant, &racer);
                s.spawn(move || {
                    barrier.wait();
                    try_import(c, tenant, racer)
                })
            })
            .collect();
        handles.into_iter().map(join).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(sqlstate(e), "23505", "{e:?}");
    }
    assert_eq!(code(&mut c, &racer), "ok");
    assert_eq!(
        count(&mut c, "FROM api_key_mgmt.api_keys WHERE imported"),
        2
    );
}

/// CREATE EXTENSION in two databases of a fresh cluster at the same time: both must
/// succeed (the extension's roles are cluster-wide and created when missing; the loser
/// of the race finds them created).
#[test]
fn concurrent_create_extension_on_a_fresh_cluster() {
    let mut fresh = Destroy(Cluster::init("fresh"));
    fresh.0.start();
    let mut admin = fresh.0.connect("postgres");
    admin.batch_execute("CREATE DATABASE one").unwrap();
    admin.batch_execute("CREATE DATABASE two").unwrap();
    let mut a = fresh.0.connect("one");
    let mut b = fresh.0.connect("two");
    a.batch_execute("BEGIN; CREATE EXTENSION api_key_mgmt")
        .unwrap();
    let second = thread::scope(|s| {
        let h = s.spawn(|| b.batch_execute("CREATE EXTENSION api_key_mgmt"));
        // The second CREATE EXTENSION waits for the first transaction's roles.
        wait_until(
            "the second CREATE EXTENSION to wait",
            Duration::from_secs(30),
            || {
                count(
                    &mut admin,
                    "FROM pg_stat_activity WHERE datname = 'two' AND wait_event_type = 'Lock'",
                ) == 1
            },
        );
        a.batch_execute("COMMIT").unwrap();
        join(h)
    });
    if let Err(e) = &second {
        panic!("concurrent CREATE EXTENSION failed: {e:?}");
    }
}
