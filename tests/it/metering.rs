//! Metering over real connections (issue 4): exact caps under 40 concurrent
//! connections, idempotent replay, rollback, alerts on LISTEN, partitions, and the rate
//! limiter in shared-memory mode (the shared cluster preloads the library) and in the
//! table fallback (a second, small cluster without `shared_preload_libraries`).

use crate::common::sql::*;
use crate::common::{wait_until, Cluster, TestDb};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use std::sync::{Barrier, OnceLock};
use std::thread;
use std::time::Duration;

const CONNS: usize = 40;

fn issue_key(c: &mut Client, tenant: &str) -> Issued {
    issue(c, tenant, "metered")
}

/// Run `f(connection, index)` on `n` connections at once (all opened first, then a
/// barrier), returning the results in index order.
fn concurrently<T: Send>(conns: Vec<Client>, f: impl Fn(&mut Client, usize) -> T + Sync) -> Vec<T> {
    let start = Barrier::new(conns.len());
    thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                let (start, f) = (&start, &f);
                s.spawn(move || {
                    start.wait();
                    f(&mut c, i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

fn charge(c: &mut Client, key: &str, cost: &str) -> (bool, String) {
    let row = c
        .query_one(
            "SELECT allowed, code FROM api_key_mgmt.charge_api_key($1::text::uuid, 'agents:chat', $2::text::numeric)",
            &[&key, &cost],
        )
        .unwrap_or_else(|e| panic!("charge_api_key: {e:?}"));
    (row.get(0), row.get(1))
}

fn numeric(c: &mut Client, sql: &str, args: &[&(dyn postgres::types::ToSql + Sync)]) -> String {
    c.query_one(&format!("SELECT ({sql})::text"), args)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

fn rate_limit_mode(c: &mut Client) -> String {
    c.query_one("SELECT api_key_mgmt.rate_limit_mode()", &[])
        .unwrap()
        .get(0)
}

/// `c` with `api_key_mgmt.clock_override` set by the statement `clock`.
fn at_clock(mut c: Client, clock: &str) -> Client {
    c.batch_execute(clock).unwrap();
    c
}

/// 40 connections charge one key far beyond its cap: the admitted charges add up to
/// the cap exactly, never more; the running totals and the log agree. Then two keys of
/// a tenant with a tenant cap of 35 and charges of 0.7.
#[test]
fn metering_caps_are_exact_under_concurrency() {
    let db = TestDb::new("it_meter_caps");
    let mut main = db.connect();
    let tenant = create_tenant(&mut main, "metered");
    let key = issue_key(&mut main, &tenant);
    main.execute(
        "SELECT api_key_mgmt.set_key_caps($1::text::uuid, daily_cap => 100, monthly_cap => 1000)",
        &[&key.id],
    )
    .unwrap();
    let conns = (0..CONNS).map(|_| db.connect()).collect();
    let admitted: Vec<usize> = concurrently(conns, |c, _| {
        (0..6)
            .filter(|_| {
                let (ok, code) = charge(c, &key.id, "1");
                assert!(ok || code == "daily_cap_exceeded", "{code}");
                ok
            })
            .count()
    });
    let total: usize = admitted.iter().sum();
    assert_eq!(total, 100, "demand 240 against a cap of 100");
    let logged = numeric(
        &mut main,
        "SELECT sum(cost) FROM api_key_mgmt.usage_events WHERE key_id = $1::text::uuid",
        &[&key.id],
    );
    assert_eq!(logged, "100");
    let spent = numeric(
        &mut main,
        "SELECT day_spent FROM api_key_mgmt.meters WHERE key_id = $1::text::uuid",
        &[&key.id],
    );
    assert_eq!(spent, "100");

    // A tenant cap shared by two keys, decimal costs.
    let t2 = create_tenant(&mut main, "tenant capped");
    let keys = [issue_key(&mut main, &t2), issue_key(&mut main, &t2)];
    main.execute(
        "SELECT api_key_mgmt.set_tenant_caps($1::text::uuid, daily_cap => 35)",
        &[&t2],
    )
    .unwrap();
    let conns = (0..CONNS).map(|_| db.connect()).collect();
    let admitted: Vec<usize> = concurrently(conns, |c, i| {
        let k = &keys[i % 2].id;
        (0..3).filter(|_| charge(c, k, "0.7").0).count()
    });
    assert_eq!(admitted.iter().sum::<usize>(), 50, "35 / 0.7");
    let logged = numeric(
        &mut main,
        "SELECT sum(cost) FROM api_key_mgmt.usage_events WHERE tenant_id = $1::text::uuid",
        &[&t2],
    );
    assert_eq!(logged, "35.0");
}

/// The same idempotency key from 32 connections at once is charged once; a charge
/// that rolls back leaves no trace and its idempotency key is free again.
#[test]
fn metering_idempotency_and_rollback() {
    let db = TestDb::new("it_meter_idem");
    let mut main = db.connect();
    let tenant = create_tenant(&mut main, "metered");
    let key = issue_key(&mut main, &tenant);
    let conns = (0..32).map(|_| db.connect()).collect();
    let codes: Vec<(bool, String)> = concurrently(conns, |c, _| {
        let row = c
            .query_one(
                "SELECT allowed, code FROM api_key_mgmt.charge_api_key($1::text::uuid, 'agents:chat', 1.5, idempotency_key => 'req-42')",
                &[&key.id],
            )
            .unwrap();
        (row.get(0), row.get(1))
    });
    assert!(codes.iter().all(|(ok, _)| *ok), "{codes:?}");
    assert_eq!(codes.iter().filter(|(_, c)| c == "ok").count(), 1);
    assert_eq!(codes.iter().filter(|(_, c)| c == "duplicate").count(), 31);
    assert_eq!(
        count(
            &mut main,
            "FROM api_key_mgmt.usage_events WHERE idempotency_key = 'req-42'"
        ),
        1
    );

    // Rollback: nothing stays, and the idempotency key can be used again.
    let mut tx = main.transaction().unwrap();
    tx.execute(
        "SELECT api_key_mgmt.charge_api_key($1::text::uuid, 'agents:chat', 7, idempotency_key => 'req-43')",
        &[&key.id],
    )
    .unwrap();
    tx.rollback().unwrap();
    assert_eq!(
        count(
            &mut main,
            "FROM api_key_mgmt.usage_events WHERE idempotency_key = 'req-43'"
        ),
        0
    );
    let row = main
        .query_one(
            "SELECT code FROM api_key_mgmt.charge_api_key($1::text::uuid, 'agents:chat', 7, idempotency_key => 'req-43')",
            &[&key.id],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "ok");
    let spent = numeric(
        &mut main,
        "SELECT day_spent FROM api_key_mgmt.meters WHERE key_id = $1::text::uuid",
        &[&key.id],
    );
    assert_eq!(spent, "8.5");
}

/// LISTEN api_key_mgmt_alerts: 80% and 100% of a daily cap fire once each, however
/// many charges cross or hit them, with the documented payload; nothing for a
/// rolled-back charge.
#[test]
fn metering_alerts_fire_once_per_threshold() {
    let db = TestDb::new("it_meter_alerts");
    let mut main = db.connect();
    let mut listener = db.connect();
    listener
        .batch_execute("LISTEN api_key_mgmt_alerts")
        .unwrap();
    let tenant = create_tenant(&mut main, "metered");
    let key = issue_key(&mut main, &tenant);
    main.execute(
        "SELECT api_key_mgmt.set_key_caps($1::text::uuid, daily_cap => 10)",
        &[&key.id],
    )
    .unwrap();
    // A rolled-back crossing sends nothing.
    let mut tx = main.transaction().unwrap();
    tx.execute(
        "SELECT api_key_mgmt.charge_api_key($1::text::uuid, 'agents:chat', 9)",
        &[&key.id],
    )
    .unwrap();
    tx.rollback().unwrap();
    let conns = (0..8).map(|_| db.connect()).collect();
    concurrently(conns, |c, _| {
        for _ in 0..3 {
            charge(c, &key.id, "1");
        }
    });
    listener.batch_execute("SELECT 1").unwrap();
    let mut got = Vec::new();
    let mut n = listener.notifications();
    let mut it = n.timeout_iter(Duration::from_secs(2));
    while let Some(note) = it.next().unwrap() {
        assert_eq!(note.channel(), "api_key_mgmt_alerts");
        got.push(serde_json::from_str::<serde_json::Value>(note.payload()).unwrap());
    }
    let thresholds: Vec<i64> = got
        .iter()
        .map(|v| v["threshold"].as_i64().unwrap())
        .collect();
    assert_eq!(thresholds, vec![80, 100], "{got:?}");
    for v in &got {
        assert_eq!(v["kind"], "daily_cap");
        assert_eq!(v["subject"], "key");
        assert_eq!(v["key_id"], key.id.as_str());
        assert_eq!(v["tenant_id"], tenant.as_str());
        assert_eq!(v["cap"], 10);
    }
}

/// Partitions for the coming months exist after maintenance, and a charge today lands
/// in this month's partition, not the default one.
#[test]
fn metering_partitions_ahead() {
    let db = TestDb::new("it_meter_parts");
    let mut main = db.connect();
    let made: i32 = main
        .query_one("SELECT api_key_mgmt.create_usage_partitions(3)", &[])
        .unwrap()
        .get(0);
    assert_eq!(made, 4);
    let names: Vec<String> = main
        .query(
            "SELECT 'usage_events_' || to_char(now() AT TIME ZONE 'UTC' + make_interval(months => i), '\"y\"YYYY\"m\"MM') \
               FROM generate_series(0, 3) i",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for n in &names {
        assert_eq!(
            count(
                &mut main,
                &format!("FROM pg_inherits WHERE inhrelid = 'api_key_mgmt.{n}'::regclass AND inhparent = 'api_key_mgmt.usage_events'::regclass")
            ),
            1,
            "{n}"
        );
    }
    let tenant = create_tenant(&mut main, "metered");
    let key = issue_key(&mut main, &tenant);
    charge(&mut main, &key.id, "1");
    assert_eq!(
        count(&mut main, &format!("FROM api_key_mgmt.{}", names[0])),
        1
    );
    assert_eq!(
        count(&mut main, "FROM api_key_mgmt.usage_events_default"),
        0
    );
}

fn validate_code(c: &mut Client, key: &str, cost: i32) -> String {
    c.query_one(
        "SELECT code FROM api_key_mgmt.validate_api_key($1, cost => $2)",
        &[&key, &cost],
    )
    .unwrap()
    .get(0)
}

/// Shared memory: 5 per hour with a burst of 5, consumed by validate_api_key from 8
/// connections at once: exactly 5 admitted; refusal carries retry_after; one emission
/// interval later (controlled clock) one more. No table is written.
#[test]
fn metering_rate_limit_shared_memory() {
    let db = TestDb::new("it_meter_rl_shmem");
    let mut main = db.connect();
    assert_eq!(rate_limit_mode(&mut main), "shared_memory");
    let tenant = create_tenant(&mut main, "limited");
    let key = issue_key(&mut main, &tenant);
    main.execute(
        "SELECT api_key_mgmt.set_rate_limit($1::text::uuid, 'hourly', 5, '1 hour', 5)",
        &[&key.id],
    )
    .unwrap();
    let clock = "SET api_key_mgmt.clock_override = '2031-05-05 10:00:00+00'";
    let conns: Vec<Client> = (0..8).map(|_| at_clock(db.connect(), clock)).collect();
    let writes_before: i64 = main
        .query_one("SELECT n_tup_upd + n_tup_ins FROM pg_stat_user_tables WHERE relname = 'rate_limit_state'", &[])
        .unwrap()
        .get(0);
    let ok: Vec<usize> = concurrently(conns, |c, _| {
        (0..3)
            .filter(|_| validate_code(c, &key.key, 1) == "ok")
            .count()
    });
    assert_eq!(ok.iter().sum::<usize>(), 5);
    main.batch_execute(clock).unwrap();
    let row = main
        .query_one(
            "SELECT code, retry_after::text FROM api_key_mgmt.validate_api_key($1, cost => 1)",
            &[&key.key],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "rate_limited");
    assert_eq!(row.get::<_, String>(1), "00:12:00");
    main.batch_execute("SET api_key_mgmt.clock_override = '2031-05-05 10:12:00+00'")
        .unwrap();
    assert_eq!(validate_code(&mut main, &key.key, 1), "ok");
    assert_eq!(validate_code(&mut main, &key.key, 1), "rate_limited");
    let writes_after: i64 = main
        .query_one("SELECT n_tup_upd + n_tup_ins FROM pg_stat_user_tables WHERE relname = 'rate_limit_state'", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        writes_before, writes_after,
        "no table write in shared-memory mode"
    );
}

/// validate_and_charge from 16 connections at once on a key with a rate limit of 7
/// (shared memory) and a daily cap of 10: exactly 7 charges are admitted and logged,
/// every other answer is `rate_limited` with a retry_after; tokens are taken only for
/// charges the cap admits, so once the cap is spent a refusal takes no token.
#[test]
fn metering_validate_and_charge_rate_limited_under_concurrency() {
    let db = TestDb::new("it_meter_vac");
    let mut main = db.connect();
    assert_eq!(rate_limit_mode(&mut main), "shared_memory");
    let tenant = create_tenant(&mut main, "charged and limited");
    let key = issue_key(&mut main, &tenant);
    main.execute(
        "SELECT api_key_mgmt.set_rate_limit($1::text::uuid, 'hourly', 7, '1 hour', 7)",
        &[&key.id],
    )
    .unwrap();
    main.execute(
        "SELECT api_key_mgmt.set_key_caps($1::text::uuid, daily_cap => 10)",
        &[&key.id],
    )
    .unwrap();
    let clock = "SET api_key_mgmt.clock_override = '2031-06-01 10:00:00+00'";
    let conns: Vec<Client> = (0..16).map(|_| at_clock(db.connect(), clock)).collect();
    let sql = "SELECT allowed, code, retry_after IS NOT NULL \
               FROM api_key_mgmt.validate_and_charge($1, 'agents:chat', 1)";
    let answers: Vec<Vec<(bool, String, bool)>> = concurrently(conns, |c, _| {
        (0..2)
            .map(|_| {
                let r = c.query_one(sql, &[&key.key]).unwrap();
                (r.get(0), r.get(1), r.get(2))
            })
            .collect()
    });
    let answers: Vec<_> = answers.into_iter().flatten().collect();
    let admitted = answers.iter().filter(|a| a.0).count();
    assert_eq!(admitted, 7, "{answers:?}");
    for (ok, code, retry) in &answers {
        if *ok {
            assert_eq!(code, "ok");
        } else {
            assert_eq!((code.as_str(), *retry), ("rate_limited", true));
        }
    }
    let logged = numeric(
        &mut main,
        "SELECT count(*)::numeric FROM api_key_mgmt.usage_events WHERE key_id = $1::text::uuid",
        &[&key.id],
    );
    assert_eq!(logged, "7");

    // An hour later (and a second: the interval is rounded up) the limiter is full again
    // (7); the cap (10) admits three more and
    // stops the fourth without taking a token, so four tokens are left.
    main.batch_execute("SET api_key_mgmt.clock_override = '2031-06-01 11:00:01+00'")
        .unwrap();
    let code = |c: &mut Client| -> String { c.query_one(sql, &[&key.key]).unwrap().get(1) };
    assert_eq!(
        (0..4).map(|_| code(&mut main)).collect::<Vec<_>>(),
        ["ok", "ok", "ok", "daily_cap_exceeded"]
    );
    let take = |c: &mut Client, n: i32| -> (bool, i64) {
        let r = c
            .query_one(
                "SELECT allowed, remaining FROM api_key_mgmt.consume_rate_limit($1::text::uuid, $2)",
                &[&key.id, &n],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(!take(&mut main, 5).0, "only four tokens are left");
    assert_eq!(take(&mut main, 4), (true, 0));
}

/// A cluster without shared_preload_libraries, shared by the fallback tests.
fn fallback_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let mut c = Cluster::init("fallback");
        let conf = c.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(
            "\nshared_preload_libraries = ''\nmax_connections = 40\nshared_buffers = 16MB\n",
        );
        std::fs::write(&conf, text).unwrap();
        c.start();
        c
    })
}

/// Table fallback: the same limit through consume_rate_limit from 8 connections at once
/// (row locks): exactly 5 admitted, refusal, recovery; validate_api_key with a cost
/// only checks there (it never writes).
#[test]
fn metering_rate_limit_table_fallback() {
    let cluster = fallback_cluster();
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute("CREATE DATABASE it_meter_rl_table")
        .unwrap();
    let info = cluster.conninfo("it_meter_rl_table", "postgres");
    let connect = || Client::connect(&info, NoTls).unwrap();
    let mut main = connect();
    main.batch_execute("CREATE EXTENSION api_key_mgmt").unwrap();
    assert_eq!(rate_limit_mode(&mut main), "table");
    let tenant = create_tenant(&mut main, "limited");
    let key = issue_key(&mut main, &tenant);
    main.execute(
        "SELECT api_key_mgmt.set_rate_limit($1::text::uuid, 'hourly', 5, '1 hour', 5)",
        &[&key.id],
    )
    .unwrap();
    let clock = "SET api_key_mgmt.clock_override = '2031-05-05 10:00:00+00'";
    let conns: Vec<Client> = (0..8).map(|_| at_clock(connect(), clock)).collect();
    let ok: Vec<usize> = concurrently(conns, |c, _| {
        (0..3)
            .filter(|_| {
                c.query_one(
                    "SELECT allowed FROM api_key_mgmt.consume_rate_limit($1::text::uuid)",
                    &[&key.id],
                )
                .unwrap()
                .get::<_, bool>(0)
            })
            .count()
    });
    assert_eq!(ok.iter().sum::<usize>(), 5);
    main.batch_execute(clock).unwrap();
    // validate sees the exhausted limit, but consumes nothing.
    assert_eq!(validate_code(&mut main, &key.key, 1), "rate_limited");
    let row = main
        .query_one(
            "SELECT allowed, retry_after::text FROM api_key_mgmt.consume_rate_limit($1::text::uuid)",
            &[&key.id],
        )
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "00:12:00");
    main.batch_execute("SET api_key_mgmt.clock_override = '2031-05-05 10:12:00+00'")
        .unwrap();
    assert_eq!(validate_code(&mut main, &key.key, 1), "ok");
    assert_eq!(
        validate_code(&mut main, &key.key, 1),
        "ok",
        "validate did not consume"
    );
    let allowed = |c: &mut Client| -> bool {
        c.query_one(
            "SELECT allowed FROM api_key_mgmt.consume_rate_limit($1::text::uuid)",
            &[&key.id],
        )
        .unwrap()
        .get(0)
    };
    assert!(allowed(&mut main));
    assert!(!allowed(&mut main));
}

/// The native charge (src/charge_pg.rs) locks the meter row as UPDATE does. In READ
/// COMMITTED a charge waits for another transaction's charge of the same key and then
/// adds to the newest total; in REPEATABLE READ, a key charged by a transaction that
/// committed after the snapshot was taken gets 40001, as an UPDATE of the row would.
#[test]
fn metering_native_charge_locks_like_update() {
    let db = TestDb::new("it_meter_native");
    let mut main = db.connect();
    let tenant = create_tenant(&mut main, "native");
    let key = issue_key(&mut main, &tenant);
    main.execute(
        "SELECT api_key_mgmt.set_key_caps($1::text::uuid, daily_cap => 100)",
        &[&key.id],
    )
    .unwrap();
    let spent = |c: &mut Client| {
        numeric(
            c,
            "SELECT day_spent FROM api_key_mgmt.meters WHERE key_id = $1::text::uuid",
            &[&key.id],
        )
    };

    let mut a = db.connect();
    let mut b = db.connect();
    let b_pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    a.batch_execute("BEGIN").unwrap();
    assert_eq!(charge(&mut a, &key.id, "1"), (true, "ok".to_string()));
    let remaining = thread::scope(|s| {
        let waiter = s.spawn(|| {
            b.query_one(
                "SELECT remaining_daily::text FROM api_key_mgmt.charge_api_key($1::text::uuid, 'agents:chat', 2)",
                &[&key.id],
            )
            .unwrap()
            .get::<_, String>(0)
        });
        wait_until(
            "the second charge waits for the row lock",
            Duration::from_secs(30),
            || {
                let wait: Option<String> = main
                    .query_one(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1",
                        &[&b_pid],
                    )
                    .unwrap()
                    .get(0);
                wait.as_deref() == Some("Lock")
            },
        );
        assert_eq!(spent(&mut main), "0", "nothing committed yet");
        a.batch_execute("COMMIT").unwrap();
        waiter.join().unwrap()
    });
    assert_eq!(
        remaining, "97",
        "the waiting charge added to the committed total"
    );
    assert_eq!(spent(&mut main), "3");

    // REPEATABLE READ: a snapshot older than the last charge cannot charge the key.
    a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    assert_eq!(charge(&mut main, &key.id, "1"), (true, "ok".to_string()));
    let err = a
        .query_one(
            "SELECT allowed FROM api_key_mgmt.charge_api_key($1::text::uuid, 'agents:chat', 1)",
            &[&key.id],
        )
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE),
        "{err:?}"
    );
    a.batch_execute("ROLLBACK").unwrap();
    // A newer snapshot charges it, and sees its own charge.
    a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    assert_eq!(charge(&mut a, &key.id, "5"), (true, "ok".to_string()));
    assert_eq!(spent(&mut a), "9");
    assert_eq!(charge(&mut a, &key.id, "1"), (true, "ok".to_string()));
    a.batch_execute("COMMIT").unwrap();
    assert_eq!(spent(&mut main), "10");
    let events = numeric(
        &mut main,
        "SELECT count(*) FROM api_key_mgmt.usage_events WHERE key_id = $1::text::uuid",
        &[&key.id],
    );
    assert_eq!(events, "5");
}
