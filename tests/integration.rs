#![cfg(not(feature = "pg_test"))]
//! Integration tests: real connections to a cluster the harness starts itself
//! (tests/common). Each test works in a database of its own.
//!
//! Run with `make test-integration` (installs the extension first).

mod common;
// Metering (issue 4): caps, idempotency, alerts, partitions, rate limits in both modes.
#[path = "it/metering.rs"]
mod metering;
// Agent access (issue 6): tools, requests, sessions, proxy tokens, maintenance worker.
#[path = "it/agents.rs"]
mod agents;
// Secret reads audited through the shared-memory queue and the maintenance worker.
#[path = "it/audit.rs"]
mod audit;
// Durable audited reads: committed before the plaintext leaves, fail closed, crashes.
#[path = "it/durable.rs"]
mod durable;
// Caller identity: a tenant user's definer function run by autovacuum, ANALYZE, admins.
#[path = "it/caller.rs"]
mod caller;
// Updating in place from 0.1.0: same answers, same rows, the schema of a fresh install.
#[path = "it/upgrade.rs"]
mod upgrade;
// Monitoring: postgres_exporter with monitoring/queries.yaml, scraped over loopback.
#[path = "it/monitoring.rs"]
mod monitoring;

use common::keys::{body, random_alnum, unissued_native_key, with_bad_checksum};
use common::secrets::*;
use common::sql::*;
use common::{primary, run, wait_until, Cluster, TestDb};
use postgres::Client;
use std::os::unix::fs::MetadataExt;
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

/// Each backend caches its tenants' facts (disabled, plan) and reuses them only while
/// the cached row version is the one its snapshot sees: a change committed by another
/// session shows at the next snapshot, never earlier (REPEATABLE READ keeps seeing the
/// old state) and never later; after VACUUM FULL (rows move) too.
#[test]
fn tenant_state_follows_snapshots() {
    let db = TestDb::new("it_tenant_cache");
    let mut admin = db.connect();
    let tenant = create_tenant(&mut admin, "cached");
    let key = issue(&mut admin, &tenant, "k");
    let mut a = db.connect();
    let mut b = db.connect();
    let scoped = |c: &mut Client, scope: &str| -> String {
        c.query_one(
            "SELECT code FROM api_key_mgmt.validate_api_key($1, $2)",
            &[&key.key, &scope],
        )
        .unwrap()
        .get(0)
    };
    assert_code(&mut a, &key, "ok");
    assert_code(&mut b, &key, "ok");

    // A holds an old snapshot while the tenant is disabled.
    a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    assert_code(&mut a, &key, "ok");
    admin
        .execute(
            "SELECT api_key_mgmt.disable_tenant($1::text::uuid)",
            &[&tenant],
        )
        .unwrap();
    assert_code(&mut b, &key, "tenant_disabled");
    assert_code(&mut a, &key, "ok");
    a.batch_execute("COMMIT").unwrap();
    assert_code(&mut a, &key, "tenant_disabled");

    // B caches the disabled state inside an old snapshot; enabling shows after it.
    b.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    assert_code(&mut b, &key, "tenant_disabled");
    admin
        .execute(
            "SELECT api_key_mgmt.enable_tenant($1::text::uuid)",
            &[&tenant],
        )
        .unwrap();
    assert_code(&mut a, &key, "ok");
    assert_code(&mut b, &key, "tenant_disabled");
    b.batch_execute("COMMIT").unwrap();
    assert_code(&mut b, &key, "ok");

    // A narrowed plan, then the table rewritten under the caches.
    assert_eq!(scoped(&mut a, "agents:orchestration"), "ok");
    admin
        .execute(
            "SELECT api_key_mgmt.update_tenant($1::text::uuid, '{\"allowed_scopes\": [\"voice:*\"]}')",
            &[&tenant],
        )
        .unwrap();
    assert_eq!(scoped(&mut a, "agents:orchestration"), "scope_denied");
    admin
        .batch_execute("VACUUM FULL api_key_mgmt.tenants")
        .unwrap();
    assert_eq!(scoped(&mut a, "agents:orchestration"), "scope_denied");
    assert_eq!(scoped(&mut b, "agents:orchestration"), "scope_denied");
    admin
        .execute(
            "SELECT api_key_mgmt.disable_tenant($1::text::uuid)",
            &[&tenant],
        )
        .unwrap();
    assert_code(&mut a, &key, "tenant_disabled");
    assert_code(&mut b, &key, "tenant_disabled");
}

/// A charge reads whether its tenant has a meter through the same per-backend tenant
/// cache: caps set on the tenant by another session after this backend cached "no
/// meter" apply to its very next charge, and are exact under the cap.
#[test]
fn tenant_caps_seen_by_a_backend_that_cached_the_tenant() {
    let db = TestDb::new("it_tenant_cache_meter");
    let mut admin = db.connect();
    let tenant = create_tenant(&mut admin, "capped later");
    let key = issue(&mut admin, &tenant, "k");
    let mut a = db.connect();
    let charge = |c: &mut Client| -> (bool, String) {
        let r = c
            .query_one(
                "SELECT allowed, code FROM api_key_mgmt.charge_api_key($1::text::uuid, 'agents:chat', 1)",
                &[&key.id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    // Uncapped, and cached as such by a's validation and charge.
    assert_code(&mut a, &key, "ok");
    assert_eq!(charge(&mut a), (true, "ok".to_owned()));
    admin
        .execute(
            "SELECT api_key_mgmt.set_tenant_caps($1::text::uuid, daily_cap => 3)",
            &[&tenant],
        )
        .unwrap();
    // The tenant's total starts from the log (1 spent): two more fit, the third not.
    assert_eq!(charge(&mut a), (true, "ok".to_owned()));
    assert_eq!(charge(&mut a), (true, "ok".to_owned()));
    assert_eq!(charge(&mut a), (false, "daily_cap_exceeded".to_owned()));
    assert_code(&mut a, &key, "daily_cap_exceeded");
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

    // pg_dump warns of circular foreign keys on api_keys (a rotated key and its
    // successor name each other): the restore below shows the warning is harmless.
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

/// With the library preloaded, native keys written as literals in SQL are masked in
/// everything that reaches the server log: statements logged by `log_statement` and
/// `log_min_error_statement`, error messages, details, hints, contexts, internal queries
/// and logged bind parameters. A look-alike with a bad checksum is left alone as text,
/// but a failing statement holding one gets no STATEMENT line.
#[test]
fn keys_masked_in_server_log() {
    let db = TestDb::new("it_logmask");
    let cluster = db.cluster();
    let mut c = db.connect();
    let tenant = create_tenant(&mut c, "logmask");
    let key = issue(&mut c, &tenant, "k").key;
    let other = unissued_native_key("acme", "test");
    let bad = with_bad_checksum(&unissued_native_key("sk", "live"));
    let mask = "****************";
    let masked = format!("sk_live_{mask}");
    let masked_other = format!("acme_test_{mask}");
    let tag = format!("it_logmask_{}", random_alnum(12).to_lowercase());
    c.batch_execute(
        "SET log_min_error_statement = 'error'; SET log_statement = 'all'; \
         SET log_parameter_max_length = -1; SET log_parameter_max_length_on_error = -1",
    )
    .unwrap();

    // A failing statement (simple protocol): the statement, the STATEMENT line.
    assert_fails(
        &mut c,
        &format!("SELECT 1/0, '{key}', '{bad}' /* {tag} 1 */"),
        "22012",
    );
    // A successful one (extended protocol): the "execute <unnamed>:" line.
    let row = c
        .query_one(
            &format!("SELECT (api_key_mgmt.validate_api_key('{key}')).code, '{bad}' /* {tag} 2 */"),
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "ok");
    // A plpgsql exception carrying keys in its message, detail and hint.
    let raised = c
        .batch_execute(&format!(
            "DO $$BEGIN RAISE EXCEPTION 'leaked % and {bad}', '{key}' \
             USING DETAIL = 'detail {other}', HINT = 'hint {key}'; END$$ /* {tag} 3 */"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&raised), "P0001");
    let db_error = raised.as_db_error().unwrap();
    // The client gets the same, masked, error.
    assert_eq!(db_error.message(), format!("leaked {masked} and {bad}"));
    assert_eq!(
        db_error.detail(),
        Some(format!("detail {masked_other}").as_str())
    );
    // A key in the context (the failing SQL statement) and in the internal query.
    assert_fails(
        &mut c,
        &format!("DO $$BEGIN PERFORM 1/0, '{key}'; END$$ /* {tag} 4 */"),
        "22012",
    );
    assert_fails(
        &mut c,
        &format!("DO $$BEGIN EXECUTE 'SELECT ''{other}'' +'; END$$ /* {tag} 5 */"),
        "42601",
    );
    // Keys as bind parameters of a statement failing at execution (not folded at bind):
    // the "parameters:" detail of the execute line, the portal's parameters in the
    // error's context.
    assert_sqlstate(
        c.query(
            &format!("SELECT $1::text, $2::text, 1 / (random() * 0)::int /* {tag} 6 */"),
            &[&key, &bad],
        ),
        "22012",
        "failing statement with the key as a parameter",
    );
    // A warning (logged, without the statement).
    c.batch_execute(&format!(
        "DO $$BEGIN RAISE WARNING 'warned {other}'; END$$ /* {tag} 7 */"
    ))
    .unwrap();
    // An imported key (no checksum, recognised by its configured prefix) in a statement
    // that fails inside validate_api_key: with the default log_min_error_statement the
    // error is logged, its statement is not.
    let imported = format!("legacy_{}", random_alnum(24));
    let mut d = db.connect();
    d.batch_execute("SET api_key_mgmt.import_prefixes = 'legacy_'")
        .unwrap();
    assert_fails(
        &mut d,
        &format!("SELECT api_key_mgmt.validate_api_key('{imported}', cost => -1) /* {tag} 8 */"),
        "22023",
    );
    // Logged after the error above by the same backend: waiting for it waits for both.
    d.batch_execute(&format!("DO $$BEGIN RAISE WARNING 'done {tag} 9'; END$$"))
        .unwrap();
    let last = format!("done {tag} 9");
    wait_until(
        "the last statement in the log",
        Duration::from_secs(30),
        || String::from_utf8_lossy(&cluster.log()).contains(&last),
    );

    let log = String::from_utf8_lossy(&cluster.log()).into_owned();
    assert!(
        !log.contains(&imported),
        "the server log contains an imported key"
    );
    for secret in [&key, &other] {
        let tail = &secret[secret.len() - 49..];
        assert!(!log.contains(tail), "the server log contains a key's body");
        assert!(
            !log.contains(body(secret)),
            "the server log contains a key's body"
        );
    }
    // The look-alike with a bad checksum is ordinary text, logged as it is.
    assert!(
        log.matches(&bad).count() >= 6,
        "the look-alike must be logged unchanged"
    );
    let lines: Vec<&str> = log.lines().collect();
    let logged = |what: &str, marker: &str, needle: &str| {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(what) && l.contains(marker) && l.contains(needle)),
            "no {what:?} line with {marker:?} and {needle:?} in the server log"
        );
    };
    for n in 1..=4 {
        logged("LOG:  ", &masked, &format!("{tag} {n}"));
    }
    logged("LOG:  ", &masked_other, &format!("{tag} 5"));
    logged("STATEMENT:  ", &masked, &format!("{tag} 4"));
    // A statement holding a key-shaped look-alike (a mistyped key is nearly all of a
    // real one) is kept out of the log as a STATEMENT line altogether.
    for n in [1, 3] {
        let marker = format!("{tag} {n}");
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("STATEMENT:  ") && l.contains(&marker)),
            "statement {n} holds a look-alike and must not be logged with its error"
        );
    }
    logged("STATEMENT:  ", &masked_other, &format!("{tag} 5"));
    logged("STATEMENT:  ", "$1::text", &format!("{tag} 6"));
    logged("ERROR:  ", &masked, &format!("leaked {masked} and {bad}"));
    logged("DETAIL:  ", &masked_other, "detail");
    logged("HINT:  ", &masked, "hint");
    logged("CONTEXT:  ", &masked, "SQL statement \"SELECT 1/0,");
    logged("QUERY:  ", &masked_other, "+");
    // "parameters:" up to PostgreSQL 15, "Parameters:" from 16.
    logged(
        "DETAIL:  ",
        &masked,
        &format!("arameters: $1 = '{masked}', $2 = '{bad}'"),
    );
    logged(
        "CONTEXT:  ",
        &masked,
        &format!("with parameters: $1 = '{masked}', $2 = '{bad}'"),
    );
    logged("WARNING:  ", &masked_other, "warned");
    assert!(
        !log.contains("terminated by signal"),
        "a server process crashed"
    );
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

// ---------------------------------------------------------------------------------------
// Tenant secrets (the vault): every secret and key below is random, made by the test, and
// reaches the server only as a bind parameter or in a key file.

/// One stored secret and how it resolves: `resolve_provider_key(query_tenant, provider,
/// SCOPE, model)` must answer `secret` from `source`.
struct StoredSecret {
    owner: Option<String>,
    query_tenant: Option<String>,
    provider: &'static str,
    model: Option<&'static str>,
    secret: String,
    source: &'static str,
    id: String,
}

impl StoredSecret {
    #[allow(clippy::too_many_arguments)]
    fn put(
        c: &mut Client,
        owner: Option<&str>,
        query_tenant: Option<&str>,
        provider: &'static str,
        model: Option<&'static str>,
        secret: String,
        source: &'static str,
    ) -> StoredSecret {
        let id = put_secret(c, owner, provider, &secret, model);
        StoredSecret {
            owner: owner.map(str::to_owned),
            query_tenant: query_tenant.map(str::to_owned),
            provider,
            model,
            secret,
            source,
            id,
        }
    }

    fn what(&self) -> String {
        format!(
            "{} secret of {:?} for {}/{:?}",
            self.source, self.owner, self.provider, self.model
        )
    }

    /// Resolves to this very secret, from the expected source; get_tenant_secret agrees.
    #[track_caller]
    fn assert_resolves(&self, c: &mut Client, db: &str) {
        let got = resolve(c, self.query_tenant.as_deref(), self.provider, self.model);
        assert!(
            got.secret.as_deref() == Some(self.secret.as_str()),
            "{db}: {} does not resolve to its plaintext",
            self.what()
        );
        assert_eq!(
            (
                got.source.as_deref(),
                got.secret_id.as_deref(),
                got.tenant_id
            ),
            (
                Some(self.source),
                Some(self.id.as_str()),
                self.owner.clone()
            ),
            "{db}: {}",
            self.what()
        );
        let plain = get_secret(c, self.query_tenant.as_deref(), self.provider, self.model);
        assert!(
            plain.as_deref() == Some(self.secret.as_str()),
            "{db}: get_tenant_secret of the {}",
            self.what()
        );
    }

    /// The distinctive random part of the secret (what a partial leak would show).
    fn body(&self) -> &str {
        &self.secret[self.secret.len() - 40..]
    }
}

/// `(id, copies, builtin)` of every provider.
fn provider_rows(c: &mut Client) -> Vec<(String, i64, bool)> {
    c.query(
        "SELECT id, count(*), bool_and(builtin) FROM api_key_mgmt.providers GROUP BY id ORDER BY id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// pg_dump carries tenant secrets as ciphertext only, never a plaintext or a master key;
/// a restore with the same key file resolves every secret alike, and a restore with
/// another key file (same versions, other keys) refuses with 28000 instead of garbage.
#[test]
fn secrets_dump_and_restore() {
    const CUSTOM: &str = "it-byok";
    let db = TestDb::new("it_sec_dump");
    let cluster = db.cluster();
    let mut admin = cluster.connect("postgres");
    let v1 = MasterKey::random(1);
    let v2 = MasterKey::random(2);
    let mut file = KeyFile::create(cluster, "it_sec_dump", vec![v1.clone()], None);
    set_database_key_file(&mut admin, &db.name, &file.path);

    let mut c = db.connect();
    let t1 = create_tenant(&mut c, "secrets dump one");
    let t2 = create_tenant(&mut c, "secrets dump two");
    c.execute(
        "SELECT api_key_mgmt.register_provider($1, $2)",
        &[&CUSTOM, &"Integration BYOK"],
    )
    .unwrap();
    let (t1, t2) = (Some(t1.as_str()), Some(t2.as_str()));
    let secrets = [
        StoredSecret::put(&mut c, t1, t1, "openai", None, openai_secret(), "tenant"),
        StoredSecret::put(
            &mut c,
            t1,
            t1,
            "openai",
            Some("gpt-4o"),
            openai_secret(),
            "model",
        ),
        StoredSecret::put(
            &mut c,
            None,
            t1,
            "anthropic",
            None,
            anthropic_secret(),
            "platform",
        ),
        StoredSecret::put(
            &mut c,
            None,
            t2,
            "openai",
            Some("gpt-4o-mini"),
            openai_secret(),
            "platform",
        ),
        StoredSecret::put(
            &mut c,
            t2,
            t2,
            CUSTOM,
            None,
            format!("byok-{}", random_alnum(40)),
            "tenant",
        ),
    ];
    let n = secrets.len() as i64;

    // Rotation to version 2, one secret rewrapped: the dump holds both versions.
    file.rewrite(vec![v1.clone(), v2.clone()], Some(2));
    assert_eq!(try_rotate_master_key(&mut c).unwrap(), 2);
    assert_eq!(try_rewrap(&mut c, 1).unwrap(), 1);
    assert_eq!(secrets_per_version(&mut c), vec![(1, n - 1), (2, 1)]);
    for s in &secrets {
        s.assert_resolves(&mut c, &db.name);
    }
    let source_providers = provider_rows(&mut c);
    assert_eq!(
        source_providers
            .iter()
            .filter(|(id, copies, builtin)| *builtin && *copies == 1 && id != CUSTOM)
            .count(),
        source_providers.len() - 1,
        "built-in providers of the source: {source_providers:?}"
    );
    assert!(source_providers.contains(&(CUSTOM.to_owned(), 1, false)));

    // Plain format: nothing secret in the text.
    let out = run(cluster.client_command("pg_dump").arg(&db.name));
    let text = String::from_utf8_lossy(&out.stdout);
    for table in ["tenant_secrets", "master_key_versions", "providers"] {
        assert!(
            text.contains(&format!("COPY api_key_mgmt.{table} ")),
            "the dump carries the rows of {table}"
        );
    }
    assert!(
        text.contains(CUSTOM),
        "the dump carries the custom provider"
    );
    for s in &secrets {
        assert!(
            !text.contains(&s.secret) && !text.contains(s.body()),
            "the plain dump contains the plaintext of the {}",
            s.what()
        );
    }
    for k in &file.keys {
        for form in k.forms() {
            assert!(
                !text.contains(&form),
                "the plain dump contains master key version {}",
                k.version
            );
        }
    }
    for (i, line) in file.lines().iter().enumerate() {
        assert!(
            !text.contains(line.as_str()),
            "the plain dump contains line {} of the key file",
            i + 1
        );
    }

    // Custom format, restored into a fresh database with the same key file.
    let dump = cluster.dir.join("it_sec_dump.Fc");
    run(cluster
        .client_command("pg_dump")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(&db.name));
    let restored = "it_sec_dump_restored";
    run(cluster.client_command("createdb").arg(restored));
    set_database_key_file(&mut admin, restored, &file.path);
    run(cluster
        .client_command("pg_restore")
        .args(["--exit-on-error", "-d", restored])
        .arg(&dump));
    let mut r = cluster.connect(restored);
    for s in &secrets {
        s.assert_resolves(&mut r, restored);
    }
    assert_eq!(
        provider_rows(&mut r),
        source_providers,
        "providers after the restore: built-ins once each, the custom one once"
    );
    assert_eq!(secrets_per_version(&mut r), vec![(1, n - 1), (2, 1)]);
    // The restored vault is fully usable: rewrap the rest, store, resolve.
    assert_eq!(try_rewrap(&mut r, 100).unwrap(), (n - 1) as i32);
    assert_eq!(secrets_per_version(&mut r), vec![(1, 0), (2, n)]);
    for s in &secrets {
        s.assert_resolves(&mut r, restored);
    }
    let extra = StoredSecret::put(&mut r, t2, t2, "openai", None, openai_secret(), "tenant");
    assert_eq!(secret_versions(&mut r, &extra.id), (2, 1));
    extra.assert_resolves(&mut r, restored);

    // The same dump restored where another key file (same versions, other keys) is
    // configured: the key-check values refuse it (28000), nothing decrypts to garbage.
    let other = KeyFile::create(
        cluster,
        "it_sec_dump_other",
        vec![MasterKey::random(1), MasterKey::random(2)],
        Some(2),
    );
    let wrong = "it_sec_dump_wrong_key";
    run(cluster.client_command("createdb").arg(wrong));
    set_database_key_file(&mut admin, wrong, &other.path);
    run(cluster
        .client_command("pg_restore")
        .args(["--exit-on-error", "-d", wrong])
        .arg(&dump));
    let mut w = cluster.connect(wrong);
    for s in &secrets {
        let (t, p, m) = (s.query_tenant.as_deref(), s.provider, s.model);
        assert_sqlstate(
            try_resolve(&mut w, t, p, m),
            "28000",
            &format!("resolve the {} under another key file", s.what()),
        );
        assert_sqlstate(
            try_get_secret(&mut w, t, p, m),
            "28000",
            &format!("get the {} under another key file", s.what()),
        );
    }
    assert_sqlstate(
        try_put_secret(&mut w, t1, "openai", &openai_secret(), None),
        "28000",
        "put under another key file",
    );
    assert_sqlstate(
        try_rotate_master_key(&mut w),
        "28000",
        "rotate under another key file",
    );
    assert_sqlstate(
        try_rewrap(&mut w, 10),
        "28000",
        "rewrap under another key file",
    );
    assert_eq!(secrets_per_version(&mut w), vec![(1, n - 1), (2, 1)]);
}

/// A backend keeps the secrets it read (ciphertext, with the row version they came
/// from) and answers from them only while that version is the one its snapshot sees:
/// another session's replacement, scope change or deletion is seen by the next
/// statement in READ COMMITTED, and not before the end of a REPEATABLE READ
/// transaction that started earlier, exactly as a query of the table.
#[test]
fn secret_reads_follow_snapshots() {
    let db = TestDb::new("it_sec_snapshots");
    let cluster = db.cluster();
    let file = KeyFile::create(
        cluster,
        "it_sec_snapshots",
        vec![MasterKey::random(1)],
        None,
    );
    let mut main = db.connect();
    set_database_key_file(&mut main, &db.name, &file.path);
    let mut main = db.connect();
    let mut reader = db.connect();
    let tenant = create_tenant(&mut main, "cached");
    let platform = openai_secret();
    put_secret(&mut main, None, "openai", &platform, None);
    let first = openai_secret();
    let id = put_secret(&mut main, Some(&tenant), "openai", &first, None);
    for _ in 0..3 {
        assert_eq!(
            get_secret(&mut reader, Some(&tenant), "openai", None),
            Some(first.clone())
        );
    }

    // Replaced: the next statement sees the new value; a REPEATABLE READ transaction
    // begun before keeps the old one to its end.
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    assert_eq!(
        get_secret(&mut reader, Some(&tenant), "openai", None),
        Some(first.clone())
    );
    let second = openai_secret();
    assert_eq!(
        put_secret(&mut main, Some(&tenant), "openai", &second, None),
        id
    );
    assert_eq!(
        get_secret(&mut reader, Some(&tenant), "openai", None),
        Some(first.clone())
    );
    reader.batch_execute("COMMIT").unwrap();
    assert_eq!(
        get_secret(&mut reader, Some(&tenant), "openai", None),
        Some(second.clone())
    );

    // Narrowed scopes: refused at once.
    main.execute(
        "UPDATE api_key_mgmt.tenant_secrets SET scopes = '{voice:*}' WHERE id = $1::text::uuid",
        &[&id],
    )
    .unwrap();
    let err = try_get_secret(&mut reader, Some(&tenant), "openai", None).unwrap_err();
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err:?}"
    );
    main.execute(
        "UPDATE api_key_mgmt.tenant_secrets SET scopes = '{*}' WHERE id = $1::text::uuid",
        &[&id],
    )
    .unwrap();
    assert_eq!(
        get_secret(&mut reader, Some(&tenant), "openai", None),
        Some(second.clone())
    );

    // Deleted: the platform default answers, and a rolled-back delete changes nothing.
    main.batch_execute("BEGIN").unwrap();
    main.execute(
        "SELECT api_key_mgmt.delete_tenant_secret($1::text::uuid, 'openai')",
        &[&tenant],
    )
    .unwrap();
    assert_eq!(
        get_secret(&mut reader, Some(&tenant), "openai", None),
        Some(second.clone())
    );
    main.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        get_secret(&mut reader, Some(&tenant), "openai", None),
        Some(second.clone())
    );
    main.execute(
        "SELECT api_key_mgmt.delete_tenant_secret($1::text::uuid, 'openai')",
        &[&tenant],
    )
    .unwrap();
    assert_eq!(
        get_secret(&mut reader, Some(&tenant), "openai", None),
        Some(platform.clone())
    );
    // A new secret in the slot (a new row) is read too.
    let third = openai_secret();
    put_secret(&mut main, Some(&tenant), "openai", &third, None);
    assert_eq!(
        get_secret(&mut reader, Some(&tenant), "openai", None),
        Some(third)
    );
}

/// A cached secret whose page VACUUM has since truncated away: the next read in a
/// transaction that began before the VACUUM (so the cache still holds the old row
/// version when the read starts) finds the block gone instead of reading past the end
/// of the table, and answers what the table holds now.
#[test]
fn secret_cache_survives_vacuum_truncation() {
    let db = TestDb::new("it_sec_truncate");
    let cluster = db.cluster();
    let file = KeyFile::create(cluster, "it_sec_truncate", vec![MasterKey::random(1)], None);
    let mut main = db.connect();
    set_database_key_file(&mut main, &db.name, &file.path);
    let mut main = db.connect();
    let platform = openai_secret();
    put_secret(&mut main, None, "openai", &platform, None);
    main.batch_execute(
        "SELECT api_key_mgmt.put_tenant_secret(api_key_mgmt.create_tenant('filler ' || g), 'openai',
                                               'sk-proj-' || md5(g::text) || md5('x' || g))
           FROM generate_series(1, 300) g",
    )
    .unwrap();
    let tenant = create_tenant(&mut main, "last page");
    let last = openai_secret();
    put_secret(&mut main, Some(&tenant), "openai", &last, None);
    let size = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT pg_relation_size('api_key_mgmt.tenant_secrets')",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let before = size(&mut main);
    let mut reader = db.connect();
    for _ in 0..2 {
        assert_eq!(
            get_secret(&mut reader, Some(&tenant), "openai", None),
            Some(last.clone())
        );
    }
    // A transaction that began before the VACUUM, not yet holding a lock on the table.
    reader.batch_execute("BEGIN; SELECT 1").unwrap();
    main.batch_execute("DELETE FROM api_key_mgmt.tenant_secrets WHERE tenant_id IS NOT NULL")
        .unwrap();
    main.batch_execute("VACUUM api_key_mgmt.tenant_secrets")
        .unwrap();
    let after = size(&mut main);
    assert!(
        after < before,
        "VACUUM truncated the table ({before} -> {after} bytes)"
    );
    assert_eq!(
        get_secret(&mut reader, Some(&tenant), "openai", None),
        Some(platform.clone())
    );
    reader.batch_execute("COMMIT").unwrap();
    assert_eq!(
        get_secret(&mut reader, Some(&tenant), "openai", None),
        Some(platform)
    );
}

/// Who may store, read and decrypt tenant secrets, and who may see or change the key
/// file setting.
#[test]
fn secrets_privileges() {
    let db = TestDb::new("it_sec_privs");
    let cluster = db.cluster();
    let file = KeyFile::create(cluster, "it_sec_privs", vec![MasterKey::random(1)], None);
    let mut su = db.connect();
    set_database_key_file(&mut su, &db.name, &file.path);
    su.batch_execute(
        "CREATE ROLE it_sec_plain LOGIN;
         CREATE ROLE it_sec_svc LOGIN IN ROLE api_key_mgmt_service;
         CREATE ROLE it_sec_adm LOGIN IN ROLE api_key_mgmt_admin;",
    )
    .unwrap();
    let mut su = db.connect();
    let tenant = create_tenant(&mut su, "secret privileges");
    let t = Some(tenant.as_str());
    let by_su = openai_secret();
    let su_id = put_secret(&mut su, t, "openai", &by_su, None);

    // The administrator stores, lists and rotates, never reads a plaintext.
    let mut adm = db.connect_as("it_sec_adm");
    let by_adm = anthropic_secret();
    let adm_id = put_secret(&mut adm, t, "anthropic", &by_adm, None);
    assert_sqlstate(
        try_get_secret(&mut adm, t, "openai", None),
        "42501",
        "admin: get_tenant_secret",
    );
    assert_sqlstate(
        try_resolve(&mut adm, t, "openai", None),
        "42501",
        "admin: resolve_provider_key",
    );
    for column in ["ciphertext", "nonce", "*"] {
        assert_fails(
            &mut adm,
            &format!("SELECT {column} FROM api_key_mgmt.tenant_secrets"),
            "42501",
        );
    }
    let listed: Vec<String> = adm
        .query(
            "SELECT l::text FROM api_key_mgmt.tenant_secret_list l ORDER BY provider",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(listed.len(), 2, "admin lists both secrets");
    assert!(listed[0].contains(&adm_id) && listed[1].contains(&su_id));
    for row in &listed {
        for secret in [&by_su, &by_adm] {
            assert!(
                !row.contains(secret.as_str()) && !row.contains(&secret[secret.len() - 40..]),
                "tenant_secret_list shows a plaintext"
            );
        }
    }
    assert_eq!(try_rotate_master_key(&mut adm).unwrap(), 1);
    assert_eq!(try_rewrap(&mut adm, 10).unwrap(), 0);

    // The service decrypts, including what the administrator stored; it stores nothing.
    let mut svc = db.connect_as("it_sec_svc");
    assert_eq!(get_secret(&mut svc, t, "openai", None), Some(by_su.clone()));
    assert_eq!(
        get_secret(&mut svc, t, "anthropic", None),
        Some(by_adm.clone())
    );
    let r = resolve(&mut svc, t, "anthropic", None);
    assert_eq!(
        (r.secret, r.source, r.secret_id),
        (
            Some(by_adm.clone()),
            Some("tenant".into()),
            Some(adm_id.clone())
        )
    );
    assert_sqlstate(
        try_put_secret(&mut svc, t, "openai", &openai_secret(), None),
        "42501",
        "service: put_tenant_secret",
    );
    assert_fails(
        &mut svc,
        "SELECT ciphertext FROM api_key_mgmt.tenant_secrets",
        "42501",
    );
    assert_sqlstate(
        try_rotate_master_key(&mut svc),
        "42501",
        "service: rotate_master_key",
    );

    // A role of neither group: nothing.
    let mut plain = db.connect_as("it_sec_plain");
    assert_sqlstate(
        try_get_secret(&mut plain, t, "openai", None),
        "42501",
        "plain: get_tenant_secret",
    );
    assert_sqlstate(
        try_resolve(&mut plain, t, "openai", None),
        "42501",
        "plain: resolve_provider_key",
    );
    assert_sqlstate(
        try_put_secret(&mut plain, t, "openai", &openai_secret(), None),
        "42501",
        "plain: put_tenant_secret",
    );
    assert_fails(
        &mut plain,
        "SELECT * FROM api_key_mgmt.tenant_secret_list",
        "42501",
    );

    // The internal sealing functions belong to the extension's own code only.
    let fresh_id = "00000000-0000-4000-8000-000000000001";
    for (who, c) in [
        ("plain", &mut plain),
        ("service", &mut svc),
        ("admin", &mut adm),
    ] {
        assert_sqlstate(
            c.query(
                "SELECT * FROM api_key_mgmt_internal.seal_secret($1::text::uuid, $2::text::uuid, 'openai', $3)",
                &[&tenant, &fresh_id, &openai_secret()],
            ),
            "42501",
            &format!("{who}: seal_secret"),
        );
        assert_sqlstate(
            c.query(
                "SELECT * FROM api_key_mgmt_internal.reseal_secret($1::text::uuid)",
                &[&su_id],
            ),
            "42501",
            &format!("{who}: reseal_secret"),
        );
        assert_sqlstate(
            c.query("SELECT * FROM api_key_mgmt_internal.master_keys()", &[]),
            "42501",
            &format!("{who}: master_keys"),
        );
    }

    // The key file setting: superusers only, to change and to see.
    let elsewhere = format!("{}/elsewhere", key_dir(cluster).display());
    for (who, c) in [
        ("plain", &mut plain),
        ("service", &mut svc),
        ("admin", &mut adm),
    ] {
        for sql in [
            format!("SET api_key_mgmt.master_key_file = '{elsewhere}'"),
            format!("SET LOCAL api_key_mgmt.master_key_file = '{elsewhere}'"),
            "RESET api_key_mgmt.master_key_file".to_owned(),
            "SHOW api_key_mgmt.master_key_file".to_owned(),
            "SELECT current_setting('api_key_mgmt.master_key_file')".to_owned(),
            format!("SELECT set_config('api_key_mgmt.master_key_file', '{elsewhere}', false)"),
            format!("ALTER ROLE CURRENT_USER SET api_key_mgmt.master_key_file = '{elsewhere}'"),
        ] {
            assert_sqlstate(c.batch_execute(&sql), "42501", &format!("{who}: {sql}"));
        }
        assert_eq!(
            count(
                c,
                "FROM pg_settings WHERE name = 'api_key_mgmt.master_key_file'"
            ),
            0,
            "{who}: the setting in pg_settings"
        );
    }
    // Still the database's file for everyone (nothing above changed it).
    let shown: String = su
        .query_one("SHOW api_key_mgmt.master_key_file", &[])
        .unwrap()
        .get(0);
    assert_eq!(shown, file.sql_path());
    assert_eq!(get_secret(&mut svc, t, "openai", None), Some(by_su));
}

/// Concurrent puts into one slot serialize (one row, every put counted), and concurrent
/// rewraps after a rotation share the work without doing any secret twice.
#[test]
fn secrets_concurrency() {
    const PUTTERS: usize = 8;
    const ROUNDS: usize = 5;
    const TENANTS: usize = 10;
    const MODELS: usize = 20;
    const REWRAPPERS: usize = 4;
    const BATCH: i32 = 16;

    let started = Instant::now();
    let db = TestDb::new("it_sec_concurrency");
    let cluster = db.cluster();
    let v1 = MasterKey::random(1);
    let mut file = KeyFile::create(cluster, "it_sec_concurrency", vec![v1.clone()], None);
    let mut main = db.connect();
    set_database_key_file(&mut main, &db.name, &file.path);
    let mut main = db.connect();
    let tenant = create_tenant(&mut main, "one slot");

    // One slot (tenant, openai, no model, prod), written by every connection at once. The
    // first round also races to create the slot and to record master key version 1.
    let mut conns: Vec<Client> = (0..PUTTERS).map(|_| db.connect()).collect();
    let puts_started = Instant::now();
    let mut slot_id: Option<String> = None;
    let mut puts = 0;
    let mut last_round: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        let written: Vec<String> = (0..PUTTERS).map(|_| openai_secret()).collect();
        let barrier = Barrier::new(PUTTERS);
        let results: Vec<Result<String, postgres::Error>> = thread::scope(|s| {
            let handles: Vec<_> = conns
                .iter_mut()
                .zip(&written)
                .map(|(c, secret)| {
                    let (barrier, tenant) = (&barrier, &tenant);
                    s.spawn(move || {
                        barrier.wait();
                        try_put_secret(c, Some(tenant), "openai", secret, None)
                    })
                })
                .collect();
            handles.into_iter().map(join).collect()
        });
        for r in &results {
            let id = r
                .as_ref()
                .unwrap_or_else(|e| panic!("round {round}: concurrent put failed: {e:?}"));
            let first = slot_id.get_or_insert_with(|| id.clone());
            assert_eq!(id, first, "round {round}: every put returns the slot's id");
        }
        puts += results.len();
        last_round = written;
    }
    let slot_id = slot_id.unwrap();
    let rows: i64 = main
        .query_one(
            "SELECT count(*) FROM api_key_mgmt.tenant_secrets \
              WHERE tenant_id = $1::text::uuid AND provider = 'openai' AND model IS NULL \
                AND environment = 'prod'",
            &[&tenant],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "rows in the slot");
    assert_eq!(
        secret_versions(&mut main, &slot_id),
        (1, puts as i32),
        "(key_version, secret_version) after {puts} puts"
    );
    let current = get_secret(&mut main, Some(&tenant), "openai", None).expect("the slot resolves");
    assert!(
        last_round.contains(&current),
        "the slot holds a secret of the last round"
    );
    let puts_done = puts_started.elapsed();

    // ~200 secrets on version 1, then version 2 becomes active and four connections
    // rewrap at once, in small batches, until each finds nothing left.
    let mut stored: Vec<(String, String, String)> = vec![(
        tenant.clone(),
        String::new(), // the slot above: no model
        current,
    )];
    for t in 0..TENANTS {
        let tenant = create_tenant(&mut main, &format!("rewrap {t}"));
        for m in 0..MODELS {
            let model = format!("model-{m:02}");
            let secret = openai_secret();
            put_secret(&mut main, Some(&tenant), "openai", &secret, Some(&model));
            stored.push((tenant.clone(), model, secret));
        }
    }
    let total = stored.len() as i64;
    assert_eq!(secrets_per_version(&mut main), vec![(1, total)]);
    let v2 = MasterKey::random(2);
    file.rewrite(vec![v1.clone(), v2.clone()], Some(2));
    assert_eq!(try_rotate_master_key(&mut main).unwrap(), 2);

    let mut rewrappers: Vec<Client> = conns.drain(..REWRAPPERS).collect();
    let barrier = Barrier::new(REWRAPPERS);
    let done: Vec<(i64, usize)> = thread::scope(|s| {
        let handles: Vec<_> = rewrappers
            .iter_mut()
            .map(|c| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let (mut sum, mut calls) = (0i64, 0usize);
                    loop {
                        let n = try_rewrap(c, BATCH)
                            .unwrap_or_else(|e| panic!("concurrent rewrap_secrets failed: {e:?}"));
                        assert!((0..=BATCH).contains(&n), "rewrap_secrets returned {n}");
                        calls += 1;
                        if n == 0 {
                            break;
                        }
                        sum += i64::from(n);
                    }
                    (sum, calls)
                })
            })
            .collect();
        handles.into_iter().map(join).collect()
    });
    let rewrapped: i64 = done.iter().map(|(n, _)| n).sum();
    assert_eq!(
        rewrapped, total,
        "secrets rewrapped by {REWRAPPERS} connections: {done:?}"
    );
    assert_eq!(secrets_per_version(&mut main), vec![(1, 0), (2, total)]);
    assert_eq!(try_rewrap(&mut main, BATCH).unwrap(), 0);

    // Every secret decrypts to what was stored, first with both versions in the file,
    // then (version 1 retired) with version 2 alone.
    let check_all = |c: &mut Client, when: &str| {
        for (tenant, model, secret) in &stored {
            let model = (!model.is_empty()).then_some(model.as_str());
            let got = get_secret(c, Some(tenant), "openai", model);
            assert!(
                got.as_deref() == Some(secret.as_str()),
                "{when}: the secret of {tenant}/{model:?} changed"
            );
        }
    };
    check_all(&mut main, "after the rewrap");
    main.execute("SELECT api_key_mgmt.retire_master_key_version(1)", &[])
        .unwrap();
    let only_v2 = KeyFile::create(cluster, "it_sec_concurrency_v2", vec![v2.clone()], None);
    set_session_key_file(&mut main, &only_v2.path);
    check_all(&mut main, "with version 2 alone");
    eprintln!(
        "secrets_concurrency: {puts} puts in {puts_done:?}; {total} secrets rewrapped as {done:?} \
         (sum, calls) per connection; total {:?}",
        started.elapsed()
    );
}

/// Failing and succeeding vault calls, secrets as bind parameters: neither a plaintext
/// nor a master key ever reaches the server log.
#[test]
fn secrets_nothing_in_server_log() {
    let db = TestDb::new("it_sec_log");
    let cluster = db.cluster();
    let right = KeyFile::create(cluster, "it_sec_log", vec![MasterKey::random(1)], None);
    let wrong = KeyFile::create(
        cluster,
        "it_sec_log_wrong",
        vec![MasterKey::random(1)],
        None,
    );
    let only_v2 = KeyFile::create(cluster, "it_sec_log_v2", vec![MasterKey::random(2)], None);
    // Malformed files holding real-looking keys: the parse error must not quote them.
    let trailing = MasterKey::random(1);
    let trailing_path = key_dir(cluster).join("it_sec_log_trailing");
    write_private(
        cluster,
        &trailing_path,
        &format!("1 {} bogus\n", trailing.hex()),
    );
    let short = MasterKey::random(1).hex()[..63].to_owned();
    let short_path = key_dir(cluster).join("it_sec_log_short");
    write_private(cluster, &short_path, &format!("1 {short}\n"));
    let missing_path = key_dir(cluster).join("it_sec_log_missing");

    let mut su = db.connect();
    set_database_key_file(&mut su, &db.name, &right.path);
    let mut c = db.connect();
    let tenant = create_tenant(&mut c, "secrets log");
    let t = Some(tenant.as_str());
    let stored = openai_secret();
    put_secret(&mut c, t, "openai", &stored, None);
    let restricted = anthropic_secret();
    c.query_one(
        "SELECT api_key_mgmt.put_tenant_secret($1::text::uuid, 'anthropic', $2, scopes => '{voice:*}')",
        &[&tenant, &restricted],
    )
    .unwrap();
    let marker = format!("it_sec_log_marker_{}", random_alnum(12).to_lowercase());
    let put_sql =
        format!("SELECT api_key_mgmt.put_tenant_secret($1::text::uuid, $2, $3) /* {marker} */");
    let get_sql =
        format!("SELECT api_key_mgmt.get_tenant_secret($1::text::uuid, $2, $3) /* {marker} */");
    let resolve_sql = format!(
        "SELECT (api_key_mgmt.resolve_provider_key($1::text::uuid, $2, $3)).secret /* {marker} */"
    );
    let mut refused: Vec<String> = Vec::new();
    let mut failing = 0;
    let mut expect = |c: &mut Client, sql: &str, params: [&str; 3], code: &str, what: &str| {
        let p: [&(dyn postgres::types::ToSql + Sync); 3] = [&params[0], &params[1], &params[2]];
        assert_sqlstate(c.query(sql, &p), code, what);
        failing += 1;
    };

    // Refused input.
    let unknown_provider = openai_secret();
    expect(
        &mut c,
        &put_sql,
        [&tenant, "it-nosuch", &unknown_provider],
        "42704",
        "put into an unknown provider",
    );
    let misfiled = openai_secret();
    expect(
        &mut c,
        &put_sql,
        [&tenant, "anthropic", &misfiled],
        "22023",
        "an OpenAI key put as an Anthropic one",
    );
    let huge_core = random_alnum(64);
    let huge = format!("{huge_core}{}", "x".repeat(70_000));
    expect(
        &mut c,
        &put_sql,
        [&tenant, "elevenlabs", &huge],
        "22023",
        "a secret over 64 KiB",
    );
    refused.extend([unknown_provider, misfiled, huge_core]);

    // Reads that fail after (or instead of) decrypting.
    expect(
        &mut c,
        &get_sql,
        [&tenant, "anthropic", SCOPE],
        "42501",
        "a scope the secret does not allow",
    );
    for sql in [&get_sql, &resolve_sql] {
        let failing_after = sql.replace(" /*", ", 1/0 /*");
        expect(
            &mut c,
            &failing_after,
            [&tenant, "openai", SCOPE],
            "22012",
            "an error after decrypting",
        );
    }

    // A key file that is not the one recorded: 28000 for everything.
    set_session_key_file(&mut c, &wrong.path);
    let under_wrong_key = openai_secret();
    expect(
        &mut c,
        &put_sql,
        [&tenant, "openai", &under_wrong_key],
        "28000",
        "put under the wrong key file",
    );
    refused.push(under_wrong_key);
    expect(
        &mut c,
        &get_sql,
        [&tenant, "openai", SCOPE],
        "28000",
        "get under the wrong key file",
    );
    expect(
        &mut c,
        &resolve_sql,
        [&tenant, "openai", SCOPE],
        "28000",
        "resolve under the wrong key file",
    );
    assert_sqlstate(
        c.query(
            &format!("SELECT api_key_mgmt.rotate_master_key() /* {marker} */"),
            &[],
        ),
        "28000",
        "rotate under the wrong key file",
    );
    // The secret's version missing from the file: 55000.
    set_session_key_file(&mut c, &only_v2.path);
    expect(
        &mut c,
        &get_sql,
        [&tenant, "openai", SCOPE],
        "55000",
        "get without the secret's key version",
    );
    // Malformed or missing key files.
    for (path, code) in [
        (&trailing_path, "F0000"),
        (&short_path, "F0000"),
        (&missing_path, "58P01"),
    ] {
        set_session_key_file(&mut c, path);
        let secret = openai_secret();
        expect(
            &mut c,
            &put_sql,
            [&tenant, "openai", &secret],
            code,
            "put with a bad key file",
        );
        expect(
            &mut c,
            &resolve_sql,
            [&tenant, "openai", SCOPE],
            code,
            "resolve with a bad key file",
        );
        refused.push(secret);
    }

    // Back to the right file: reads succeed and answer what was stored.
    c.batch_execute("RESET api_key_mgmt.master_key_file")
        .unwrap();
    assert_eq!(get_secret(&mut c, t, "openai", None), Some(stored.clone()));
    assert_eq!(
        resolve(&mut c, t, "openai", None).secret,
        Some(stored.clone())
    );
    let failing = failing + 1; // the rotation above

    let log = String::from_utf8_lossy(&cluster.log()).into_owned();
    let logged = log.matches(&marker).count();
    assert!(
        logged >= failing,
        "every failing statement must be in the server log ({logged} of {failing} found)"
    );
    for message in [
        "is not registered",
        "does not look like a key of provider",
        "is not the key recorded for that version",
        "is not in the master key file",
        "the master key file is malformed",
    ] {
        assert!(log.contains(message), "the server log lacks \"{message}\"");
    }
    assert!(
        !log.contains("terminated by signal"),
        "a server process crashed"
    );
    for secret in [&stored, &restricted].into_iter().chain(&refused) {
        let tail = &secret[secret.len().saturating_sub(32)..];
        assert!(
            !log.contains(secret.as_str()) && !log.contains(tail),
            "the server log contains a secret"
        );
    }
    let keys: Vec<&MasterKey> = [&right, &wrong, &only_v2]
        .into_iter()
        .flat_map(|f| &f.keys)
        .chain([&trailing])
        .collect();
    for k in keys {
        for form in k.forms() {
            assert!(!log.contains(&form), "the server log contains a master key");
        }
    }
    assert!(
        !log.contains(&short),
        "the server log contains a malformed file's key"
    );
}

/// A backend sees a rewritten key file (same path, same inode) without reconnecting:
/// rotate_master_key() finds the new active version and new secrets use it.
#[test]
fn secret_key_file_reload() {
    let db = TestDb::new("it_sec_reload");
    let cluster = db.cluster();
    let v1 = MasterKey::random(1);
    let mut file = KeyFile::create(cluster, "it_sec_reload", vec![v1.clone()], None);
    let mut su = db.connect();
    set_database_key_file(&mut su, &db.name, &file.path);

    let mut c = db.connect();
    let tenant = create_tenant(&mut c, "key file reload");
    let t = Some(tenant.as_str());
    let first = openai_secret();
    let first_id = put_secret(&mut c, t, "openai", &first, None);
    let platform = anthropic_secret();
    let platform_id = put_secret(&mut c, None, "anthropic", &platform, None);
    assert_eq!(secret_versions(&mut c, &first_id), (1, 1));
    assert_eq!(secret_versions(&mut c, &platform_id), (1, 1));
    assert_eq!(get_secret(&mut c, t, "openai", None), Some(first.clone()));
    assert_eq!(try_rotate_master_key(&mut c).unwrap(), 1, "nothing new yet");

    // Version 2 added, active, in the same file (rewritten in place).
    let inode = std::fs::metadata(&file.path).unwrap().ino();
    let v2 = MasterKey::random(2);
    file.rewrite(vec![v1.clone(), v2.clone()], Some(2));
    assert_eq!(std::fs::metadata(&file.path).unwrap().ino(), inode);
    assert_eq!(
        try_rotate_master_key(&mut c).unwrap(),
        2,
        "rotate_master_key in the same session after the file changed"
    );
    let second = anthropic_secret();
    let second_id = put_secret(&mut c, t, "anthropic", &second, None);
    assert_eq!(secret_versions(&mut c, &second_id), (2, 1));
    // Replacing a secret seals it under the new version too; version 1 still decrypts.
    let replaced = openai_secret();
    assert_eq!(put_secret(&mut c, t, "openai", &replaced, None), first_id);
    assert_eq!(secret_versions(&mut c, &first_id), (2, 2));
    assert_eq!(
        get_secret(&mut c, t, "openai", None),
        Some(replaced.clone())
    );
    assert_eq!(get_secret(&mut c, t, "anthropic", None), Some(second));
    assert_eq!(
        get_secret(&mut c, None, "anthropic", None),
        Some(platform.clone())
    );
    assert_eq!(secrets_per_version(&mut c), vec![(1, 1), (2, 2)]);
    // Other sessions agree.
    let mut other = db.connect();
    assert_eq!(try_rotate_master_key(&mut other).unwrap(), 2);
    assert_eq!(get_secret(&mut other, t, "openai", None), Some(replaced));

    // The base64 spelling the leak checks look for is the same key to the extension.
    let b64_path = key_dir(cluster).join("it_sec_reload_base64");
    write_private(cluster, &b64_path, &format!("1 {}\n", base64(&v1.bytes)));
    let key_check = |c: &mut Client| -> Vec<u8> {
        c.query_one(
            "SELECT key_check FROM api_key_mgmt_internal.master_keys() WHERE version = 1",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let from_hex = key_check(&mut other);
    set_session_key_file(&mut other, &b64_path);
    assert_eq!(key_check(&mut other), from_hex);
    assert_eq!(
        get_secret(&mut other, None, "anthropic", None),
        Some(platform.clone())
    );

    // An edit in place reaches reads within a second, also in a session that already
    // read under the edited version (reads trust the file they looked at for up to a
    // second, to spare a stat() per read): version 1 replaced by another key.
    assert_eq!(
        get_secret(&mut c, None, "anthropic", None),
        Some(platform.clone())
    );
    file.rewrite(vec![MasterKey::random(1), v2.clone()], Some(2));
    thread::sleep(Duration::from_millis(1100));
    let refused = try_get_secret(&mut c, None, "anthropic", None);
    assert_eq!(sqlstate(&refused.unwrap_err()), "28000");
    // Storing looks at the file at once; version 2 is unchanged, so it still works.
    put_secret(&mut c, t, "openai", &openai_secret(), Some("gpt-4o"));
    // The file restored: version 1 reads again.
    file.rewrite(vec![v1.clone(), v2], Some(2));
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(get_secret(&mut c, None, "anthropic", None), Some(platform));
}
