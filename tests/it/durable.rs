//! Durable audited secret reads (`api_key_mgmt.audit_read_mode = durable`, the
//! default): a read returns its plaintext only after its `secret.decrypted` entry is
//! committed by the maintenance worker, and fails closed (58000) when it cannot be.
//! Each test runs a cluster of its own whose worker serves `postgres`.

use crate::common::secrets::*;
use crate::common::sql::*;
use crate::common::{wait_until, Cluster};
use postgres::error::SqlState;
use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const QUEUE: i64 = 64;

fn cluster(name: &str, mode: &str) -> Cluster {
    let mut c = Cluster::init(name);
    let conf = c.data().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "\napi_key_mgmt.audit_queue_size = {QUEUE}\napi_key_mgmt.audit_read_mode = '{mode}'\n\
         max_connections = 40\nshared_buffers = 16MB\n"
    ));
    std::fs::write(&conf, text).unwrap();
    c.start();
    c
}

/// The extension in `postgres` with a key file, a tenant and its OpenAI secret, once
/// the worker takes entries: (superuser session, tenant, secret id).
fn setup(cluster: &Cluster, tenant: &str) -> (Client, String, String) {
    let mut su = cluster.connect("postgres");
    su.batch_execute("CREATE EXTENSION api_key_mgmt").unwrap();
    private_key_file(cluster, &mut su, "postgres", "it_durable");
    let mut su = cluster.connect("postgres");
    let tenant = create_tenant(&mut su, tenant);
    let secret_id = put_secret(&mut su, Some(&tenant), "openai", &openai_secret(), None);
    wait_until("the worker takes entries", Duration::from_secs(30), || {
        queue_row(&mut su).0 == "queue"
    });
    (su, tenant, secret_id)
}

/// (mode, written, failed) of audit_queue_status().
fn queue_row(c: &mut Client) -> (String, i64, i64) {
    let r = c
        .query_one(
            "SELECT mode, written, failed FROM api_key_mgmt.audit_queue_status()",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn tag_reader(c: &mut Client, tag: &str) {
    c.execute(
        "SELECT set_config('request.headers', json_build_object('user-agent', $1::text)::text, false)",
        &[&tag],
    )
    .unwrap();
}

/// Audit rows of secret reads with user agent `tag`.
fn audited_as(c: &mut Client, tag: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM api_key_mgmt.audit_log WHERE action = 'secret.decrypted' AND user_agent = $1",
        &[&tag],
    )
    .unwrap()
    .get(0)
}

/// The moment a durable read returns, its entry is committed (another session sees it
/// with no wait), also for a READ ONLY reader that then rolls back; concurrent readers
/// share the worker's commits and every one of their reads is there when they return.
#[test]
fn durable_reads_are_committed_before_they_return() {
    let cluster = cluster("durable", "durable");
    let (mut su, tenant, _) = setup(&cluster, "durable reads");

    let mut reader = cluster.connect("postgres");
    reader.batch_execute("BEGIN READ ONLY").unwrap();
    tag_reader(&mut reader, "durable-one");
    assert!(try_get_secret(&mut reader, Some(&tenant), "openai", None)
        .unwrap()
        .is_some());
    assert_eq!(audited_as(&mut su, "durable-one"), 1, "committed on return");
    reader.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        audited_as(&mut su, "durable-one"),
        1,
        "kept after the rollback"
    );

    const READERS: usize = 8;
    const EACH: usize = 40;
    let threads: Vec<_> = (0..READERS)
        .map(|t| {
            let mut c = cluster.connect("postgres");
            let tenant = tenant.clone();
            std::thread::spawn(move || {
                tag_reader(&mut c, &format!("durable-many-{t}"));
                for _ in 0..EACH {
                    get_secret(&mut c, Some(&tenant), "openai", None).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total: i64 = su
        .query_one(
            "SELECT count(*) FROM api_key_mgmt.audit_log WHERE user_agent LIKE 'durable-many-%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(total, (READERS * EACH) as i64, "every read there on return");
    assert_eq!(queue_row(&mut su).2, 0, "no read failed");
}

/// Fail closed: a read whose entry cannot be committed returns no plaintext and raises
/// 58000 with the reason (no worker for the database; the worker not writing within
/// `audit_durable_timeout`); the mode cannot be lowered by a non-superuser.
#[test]
fn durable_reads_fail_closed() {
    let cluster = cluster("durable_closed", "durable");
    let (mut su, tenant, _) = setup(&cluster, "fail closed");

    // The worker cannot write: the read waits, then fails.
    let mut holder = cluster.connect("postgres");
    holder
        .batch_execute("BEGIN; LOCK TABLE api_key_mgmt.audit_log IN EXCLUSIVE MODE")
        .unwrap();
    let mut reader = cluster.connect("postgres");
    reader
        .batch_execute("SET api_key_mgmt.audit_durable_timeout = '300ms'")
        .unwrap();
    tag_reader(&mut reader, "closed-stuck");
    let err = try_get_secret(&mut reader, Some(&tenant), "openai", None).unwrap_err();
    let db = err.as_db_error().expect("an ERROR");
    assert_eq!(db.code(), &SqlState::SYSTEM_ERROR);
    assert_eq!(
        db.message(),
        "the audit entry of this secret read could not be made durable; the secret is withheld"
    );
    assert_eq!(
        db.detail(),
        Some("The maintenance worker did not commit the entry within api_key_mgmt.audit_durable_timeout.")
    );
    assert_eq!(queue_row(&mut su).2, 1, "counted as failed");
    holder.batch_execute("ROLLBACK").unwrap();
    // Once the worker writes again, reads work again.
    tag_reader(&mut reader, "closed-after");
    assert!(try_get_secret(&mut reader, Some(&tenant), "openai", None)
        .unwrap()
        .is_some());
    assert_eq!(audited_as(&mut su, "closed-after"), 1);

    // Another database: no worker takes its entries.
    su.batch_execute("CREATE DATABASE other").unwrap();
    let mut other = cluster.connect("other");
    other
        .batch_execute("CREATE EXTENSION api_key_mgmt")
        .unwrap();
    private_key_file(&cluster, &mut other, "other", "it_durable_other");
    let mut other = cluster.connect("other");
    let t = create_tenant(&mut other, "elsewhere");
    put_secret(&mut other, Some(&t), "openai", &openai_secret(), None);
    let err = try_get_secret(&mut other, Some(&t), "openai", None).unwrap_err();
    let db = err.as_db_error().expect("an ERROR");
    assert_eq!(db.code(), &SqlState::SYSTEM_ERROR);
    assert!(
        db.detail()
            .unwrap()
            .contains("not running in this database"),
        "{db:?}"
    );
    let audited: i64 = other
        .query_one(
            "SELECT count(*) FROM api_key_mgmt.audit_log WHERE action = 'secret.decrypted'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, 0);
    // The in-transaction mode, set for that database by a superuser, serves it.
    other
        .batch_execute("ALTER DATABASE other SET api_key_mgmt.audit_read_mode = 'transaction'")
        .unwrap();
    let mut other = cluster.connect("other");
    assert!(try_get_secret(&mut other, Some(&t), "openai", None)
        .unwrap()
        .is_some());

    // Only a superuser may change the mode.
    let mut service = cluster.connect("postgres");
    service
        .batch_execute("SET ROLE api_key_mgmt_service")
        .unwrap();
    let err = service
        .batch_execute("SET api_key_mgmt.audit_read_mode = 'queued'")
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
}

/// Readers tag each read with its user agent and record those that returned the
/// plaintext; one reader's backend is killed with SIGKILL in the middle of the load
/// (the postmaster then restarts every backend). Returns (reads that returned, those
/// of them with no audit row after recovery).
fn crash_under_load(cluster: &Cluster, tenant: &str) -> (usize, i64) {
    const READERS: usize = 6;
    let returned = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pids = Arc::new(Mutex::new(Vec::<i32>::new()));
    let threads: Vec<_> = (0..READERS)
        .map(|t| {
            let mut c = cluster.connect("postgres");
            let (tenant, returned, count, stop, pids) = (
                tenant.to_owned(),
                returned.clone(),
                count.clone(),
                stop.clone(),
                pids.clone(),
            );
            std::thread::spawn(move || {
                let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
                pids.lock().unwrap().push(pid);
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let tag = format!("crash-{t}-{i}");
                    let read = c
                        .execute(
                            "SELECT set_config('request.headers', json_build_object('user-agent', $1::text)::text, false)",
                            &[&tag],
                        )
                        .and_then(|_| try_get_secret(&mut c, Some(&tenant), "openai", None));
                    match read {
                        Ok(Some(_)) => {
                            returned.lock().unwrap().push(tag);
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => break,
                    }
                }
            })
        })
        .collect();
    wait_until("the readers are under way", Duration::from_secs(60), || {
        count.load(Ordering::SeqCst) >= 300
    });
    let victim = pids.lock().unwrap()[0];
    let killed = std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let mut su = None;
    wait_until("the server has recovered", Duration::from_secs(60), || {
        su = Client::connect(&cluster.conninfo("postgres", "postgres"), NoTls).ok();
        su.is_some()
    });
    let mut su = su.unwrap();
    let log = String::from_utf8_lossy(&cluster.log()).into_owned();
    assert!(
        log.contains(&format!("(PID {victim}) was terminated by signal 9")),
        "the backend was killed"
    );
    let returned = returned.lock().unwrap().clone();
    let missing: i64 = su
        .query_one(
            "SELECT count(*) FROM unnest($1::text[]) AS t(tag) \
              WHERE NOT EXISTS (SELECT FROM api_key_mgmt.audit_log l \
                                 WHERE l.action = 'secret.decrypted' AND l.user_agent = t.tag)",
            &[&returned],
        )
        .unwrap()
        .get(0);
    eprintln!(
        "crash test: {} reads returned plaintext, {missing} of them without an audit row",
        returned.len()
    );
    (returned.len(), missing)
}

/// Durable mode: after a backend is killed with SIGKILL under load, every read that
/// returned plaintext has its audit row.
#[test]
fn durable_reads_survive_a_crash_audited() {
    let cluster = cluster("durable_crash", "durable");
    let (_su, tenant, _) = setup(&cluster, "crash durable");
    let (returned, missing) = crash_under_load(&cluster, &tenant);
    assert!(returned >= 300, "{returned} reads returned");
    assert_eq!(
        missing, 0,
        "a read returned plaintext without a durable audit row"
    );
}

/// Queued mode (the opt-in): the same crash loses at most the entries the queue held.
#[test]
fn queued_reads_lose_at_most_the_queue_in_a_crash() {
    let cluster = cluster("queued_crash", "queued");
    let (_su, tenant, _) = setup(&cluster, "crash queued");
    let (returned, missing) = crash_under_load(&cluster, &tenant);
    assert!(returned >= 300, "{returned} reads returned");
    assert!(
        missing <= QUEUE,
        "{missing} lost, more than the queue holds"
    );
}
