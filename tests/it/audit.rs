//! Secret reads audited through the shared-memory queue (src/audit_pg.rs), on a cluster
//! of its own whose maintenance worker serves `postgres` (the default database of
//! `api_key_mgmt.agent_maintenance_database`) with a queue of 16 entries.

use crate::common::secrets::*;
use crate::common::sql::*;
use crate::common::{wait_until, Cluster};
use postgres::Client;
use std::sync::OnceLock;
use std::time::Duration;

const QUEUE: i64 = 16;

/// A started cluster of its own whose audit queue holds [`QUEUE`] entries, with
/// `extra` lines of configuration.
fn cluster_with_queue(name: &str, extra: &str) -> Cluster {
    let mut c = Cluster::init(name);
    let conf = c.data().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "\napi_key_mgmt.audit_queue_size = {QUEUE}\nmax_connections = 40\nshared_buffers = 16MB\napi_key_mgmt.audit_read_mode = 'queued'\n{extra}\n"
    ));
    std::fs::write(&conf, text).unwrap();
    c.start();
    c
}

fn queue_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| cluster_with_queue("auditq", ""))
}

/// The extension in `postgres` with a key file of its own, a tenant and its OpenAI
/// secret, once the worker takes entries: (superuser session, tenant, secret id).
fn secret_behind_the_queue(
    cluster: &Cluster,
    key_file: &str,
    tenant: &str,
) -> (Client, String, String) {
    let mut su = cluster.connect("postgres");
    su.batch_execute("CREATE EXTENSION api_key_mgmt").unwrap();
    private_key_file(cluster, &mut su, "postgres", key_file);
    let mut su = cluster.connect("postgres");
    let tenant = create_tenant(&mut su, tenant);
    let secret_id = put_secret(&mut su, Some(&tenant), "openai", &openai_secret(), None);
    wait_until("the worker takes entries", Duration::from_secs(30), || {
        status(&mut su).0 == "queue"
    });
    (su, tenant, secret_id)
}

/// (mode, queued, written)
fn status(c: &mut Client) -> (String, i64, i64) {
    let r = c
        .query_one(
            "SELECT mode, queued, written FROM api_key_mgmt.audit_queue_status()",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Reads the queue did not take (audited in their own transaction).
fn synchronous(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT synchronous FROM api_key_mgmt.audit_queue_status()",
        &[],
    )
    .unwrap()
    .get(0)
}

fn audited(c: &mut Client, secret: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM api_key_mgmt.audit_log WHERE action = 'secret.decrypted' AND target_id = $1",
        &[&secret],
    )
    .unwrap()
    .get(0)
}

/// A read in a READ ONLY transaction that then rolls back is still audited, with what
/// the synchronous path records (user id, role, client address, user agent, details).
/// With the worker's INSERT held up, the queue takes exactly its capacity and further
/// reads fall back to synchronous auditing (refused in READ ONLY transactions: 25006);
/// released, every queued entry is written once. Another database of the cluster is
/// audited synchronously. `audit_reads_in_transaction` forces the synchronous path.
#[test]
fn audit_secret_reads_through_the_queue() {
    let cluster = queue_cluster();
    let mut su = cluster.connect("postgres");
    su.batch_execute("CREATE EXTENSION api_key_mgmt").unwrap();
    let file = KeyFile::create(cluster, "it_audit_queue", vec![MasterKey::random(1)], None);
    set_database_key_file(&mut su, "postgres", &file.path);
    let mut su = cluster.connect("postgres");
    let tenant = create_tenant(&mut su, "queued audit");
    let secret_id = put_secret(&mut su, Some(&tenant), "openai", &openai_secret(), None);
    wait_until("the worker takes entries", Duration::from_secs(30), || {
        status(&mut su).0 == "queue"
    });

    // A read-only read, rolled back, by a user behind PostgREST.
    let mut reader = cluster.connect("postgres");
    reader
        .batch_execute(
            r#"BEGIN READ ONLY;
               SET LOCAL request.jwt.claims = '{"sub": "user-42"}';
               SET LOCAL request.headers = '{"x-forwarded-for": "203.0.113.7, 10.0.0.1", "user-agent": "it-agent/1.0"}';"#,
        )
        .unwrap();
    let plain = try_get_secret(&mut reader, Some(&tenant), "openai", None).unwrap();
    assert!(plain.is_some());
    reader.batch_execute("ROLLBACK").unwrap();
    wait_until("the entry is written", Duration::from_secs(30), || {
        audited(&mut su, &secret_id) == 1
    });
    let row = su
        .query_one(
            "SELECT tenant_id::text, actor, actor_role, target_type, client_ip, user_agent, \
                    details->>'provider', details->>'source', details->>'scope', \
                    occurred_at <= clock_timestamp() AND occurred_at > clock_timestamp() - interval '1 minute' \
               FROM api_key_mgmt.audit_log WHERE action = 'secret.decrypted' AND target_id = $1",
            &[&secret_id],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), tenant);
    assert_eq!(row.get::<_, String>(1), "user-42");
    assert_eq!(row.get::<_, String>(2), "postgres");
    assert_eq!(row.get::<_, String>(3), "secret");
    assert_eq!(row.get::<_, String>(4), "203.0.113.7");
    assert_eq!(row.get::<_, String>(5), "it-agent/1.0");
    assert_eq!(row.get::<_, String>(6), "openai");
    assert_eq!(row.get::<_, String>(7), "tenant");
    assert_eq!(row.get::<_, String>(8), SCOPE);
    assert!(row.get::<_, bool>(9));

    // Hold the worker's INSERT: the queue fills to its capacity, then READ ONLY reads
    // are refused (they would have to be audited in their own transaction).
    let mut holder = cluster.connect("postgres");
    holder
        .batch_execute("BEGIN; LOCK TABLE api_key_mgmt.audit_log IN EXCLUSIVE MODE")
        .unwrap();
    reader
        .batch_execute("SET default_transaction_read_only = on")
        .unwrap();
    let mut ok = 0;
    for _ in 0..QUEUE + 4 {
        match try_get_secret(&mut reader, Some(&tenant), "openai", None) {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(sqlstate(&e), "25006", "{e:?}"),
        }
    }
    assert_eq!(ok, QUEUE, "the queue takes exactly its capacity");
    assert_eq!(status(&mut su).1, QUEUE);
    holder.batch_execute("ROLLBACK").unwrap();
    wait_until("the queue is written", Duration::from_secs(30), || {
        audited(&mut su, &secret_id) == 1 + QUEUE && status(&mut su).1 == 0
    });
    assert_eq!(status(&mut su).2, 1 + QUEUE, "written once each");

    // In the reading transaction on request: read-only refused, a rollback leaves nothing.
    reader
        .batch_execute("SET api_key_mgmt.audit_reads_in_transaction = on")
        .unwrap();
    assert_sqlstate(
        try_get_secret(&mut reader, Some(&tenant), "openai", None),
        "25006",
        "read-only read audited in its transaction",
    );
    reader
        .batch_execute("SET default_transaction_read_only = off")
        .unwrap();
    reader.batch_execute("BEGIN").unwrap();
    try_get_secret(&mut reader, Some(&tenant), "openai", None).unwrap();
    reader.batch_execute("ROLLBACK").unwrap();
    try_get_secret(&mut reader, Some(&tenant), "openai", None).unwrap();
    assert_eq!(audited(&mut su, &secret_id), 2 + QUEUE);

    // Another database: no worker there, so reads are audited synchronously.
    su.batch_execute("CREATE DATABASE it_audit_other").unwrap();
    let mut other = cluster.connect("it_audit_other");
    other
        .batch_execute("CREATE EXTENSION api_key_mgmt")
        .unwrap();
    set_database_key_file(&mut other, "it_audit_other", &file.path);
    let mut other = cluster.connect("it_audit_other");
    assert_eq!(status(&mut other).0, "synchronous");
    let there = create_tenant(&mut other, "elsewhere");
    let there_id = put_secret(&mut other, Some(&there), "openai", &openai_secret(), None);
    let before = synchronous(&mut other);
    try_get_secret(&mut other, Some(&there), "openai", None).unwrap();
    // Written by the read's own transaction: there at once, and counted as such.
    assert_eq!(audited(&mut other, &there_id), 1);
    assert_eq!(synchronous(&mut other), before + 1);
}

/// Entries still queued when the server is stopped cleanly are written first. The
/// worker is held inside its agent maintenance (a lock on access_requests), not inside
/// an audit write, so nothing but its shutdown drain can write the three queued
/// entries: a fast shutdown ends the lock holder, the maintenance finishes, the worker
/// sees SIGTERM, detaches and writes the queue; after a restart all three are there.
#[test]
fn audit_queue_written_before_a_clean_shutdown() {
    let mut cluster =
        cluster_with_queue("auditq_stop", "api_key_mgmt.agent_maintenance_interval = 1");
    let (mut su, tenant, secret_id) =
        secret_behind_the_queue(&cluster, "it_audit_stop", "audited at shutdown");

    let mut holder = cluster.connect("postgres");
    holder
        .batch_execute("BEGIN; LOCK TABLE api_key_mgmt.access_requests IN EXCLUSIVE MODE")
        .unwrap();
    wait_until(
        "the worker waits in its maintenance",
        Duration::from_secs(30),
        || {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity \
                  WHERE backend_type <> 'client backend' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
                == 1
        },
    );
    let mut reader = cluster.connect("postgres");
    for _ in 0..3 {
        try_get_secret(&mut reader, Some(&tenant), "openai", None).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&mut su).1, 3, "queued while the worker is busy");
    assert_eq!(audited(&mut su, &secret_id), 0);
    // Stop with the lock still held: its session ends with the shutdown.
    let out = crate::common::pg_command("pg_ctl")
        .arg("-D")
        .arg(cluster.data())
        .args(["-m", "fast", "-w", "-t", "60", "stop"])
        .output()
        .expect("run pg_ctl stop");
    assert!(out.status.success(), "{out:?}");
    drop((holder, reader, su));
    cluster.start();
    let mut su = cluster.connect("postgres");
    assert_eq!(audited(&mut su, &secret_id), 3);
    cluster.destroy();
}

/// A read that finds the queue full waits (up to `api_key_mgmt.audit_queue_wait`) for
/// the worker to make room instead of writing in its own transaction: a READ ONLY read
/// held up by a full queue succeeds once the worker can write again. Then 8 sessions
/// read concurrently through a queue of 16 (it fills and wraps around over and over):
/// every read is written exactly once, none synchronously, with an id whose version 7
/// time is the read's `occurred_at`, and the table's own triggers fire for the rows
/// the worker writes.
#[test]
fn audit_queue_waits_for_room_and_loses_nothing() {
    let cluster = cluster_with_queue("auditq_wait", "");
    let (mut su, tenant, secret_id) =
        secret_behind_the_queue(&cluster, "it_audit_wait", "waits for room");
    // A trigger of the site's own on audit_log: it must see the worker's rows.
    su.batch_execute(
        "CREATE TABLE public.seen (action text, target_id text);
         CREATE FUNCTION public.note_audit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.seen VALUES (NEW.action, NEW.target_id); RETURN NULL; END $$;
         CREATE TRIGGER note_audit AFTER INSERT ON api_key_mgmt.audit_log
           FOR EACH ROW EXECUTE FUNCTION public.note_audit();",
    )
    .unwrap();
    let sync_before = synchronous(&mut su);

    // Fill the queue while the worker cannot write.
    let mut holder = cluster.connect("postgres");
    holder
        .batch_execute("BEGIN; LOCK TABLE api_key_mgmt.audit_log IN EXCLUSIVE MODE")
        .unwrap();
    let mut reader = cluster.connect("postgres");
    reader
        .batch_execute(
            "SET default_transaction_read_only = on; SET api_key_mgmt.audit_queue_wait = '60s'",
        )
        .unwrap();
    for _ in 0..QUEUE {
        try_get_secret(&mut reader, Some(&tenant), "openai", None).unwrap();
    }
    assert_eq!(status(&mut su).1, QUEUE);
    let waiting = std::thread::spawn(move || {
        let r = try_get_secret(&mut reader, Some(&tenant), "openai", None).map(|p| p.is_some());
        (r, reader)
    });
    wait_until("the read waits for room", Duration::from_secs(30), || {
        su.query_one(
            "SELECT count(*) FROM pg_stat_activity \
              WHERE backend_type = 'client backend' AND wait_event = 'Extension'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 1
    });
    assert!(!waiting.is_finished());
    holder.batch_execute("ROLLBACK").unwrap();
    let (read, _reader) = waiting.join().unwrap();
    assert!(
        read.unwrap(),
        "the read-only read succeeds once there is room"
    );
    wait_until("the queue is written", Duration::from_secs(30), || {
        audited(&mut su, &secret_id) == QUEUE + 1 && status(&mut su).1 == 0
    });
    assert_eq!(
        synchronous(&mut su),
        sync_before,
        "nothing audited synchronously"
    );

    // Many readers at once through a small queue.
    const READERS: i64 = 8;
    const EACH: i64 = 150;
    let tenant = create_tenant(&mut su, "many readers");
    let many_id = put_secret(&mut su, Some(&tenant), "openai", &openai_secret(), None);
    let written_before = status(&mut su).2;
    let threads: Vec<_> = (0..READERS)
        .map(|_| {
            let mut c = cluster.connect("postgres");
            let tenant = tenant.clone();
            std::thread::spawn(move || {
                c.batch_execute("SET api_key_mgmt.audit_queue_wait = '60s'")
                    .unwrap();
                for _ in 0..EACH {
                    get_secret(&mut c, Some(&tenant), "openai", None);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_until("every read is written", Duration::from_secs(60), || {
        status(&mut su).1 == 0
    });
    assert_eq!(audited(&mut su, &many_id), READERS * EACH, "each read once");
    assert_eq!(status(&mut su).2, written_before + READERS * EACH);
    assert_eq!(synchronous(&mut su), sync_before);
    let row = su
        .query_one(
            "SELECT count(*) FILTER (WHERE ('x' || lpad(replace(left(id::text, 13), '-', ''), 16, '0'))::bit(64)::bigint
                                           = floor(extract(epoch FROM occurred_at) * 1000)::bigint
                                       AND substr(id::text, 15, 1) = '7'),
                    count(DISTINCT id), count(*)
               FROM api_key_mgmt.audit_log WHERE action = 'secret.decrypted' AND target_id = $1",
            &[&many_id],
        )
        .unwrap();
    let total = READERS * EACH;
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (total, total, total),
        "version 7 ids of the read's time, all distinct"
    );
    let seen: i64 = su
        .query_one(
            "SELECT count(*) FROM public.seen WHERE action = 'secret.decrypted' AND target_id = $1",
            &[&many_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        seen, total,
        "the table's triggers fire for the worker's rows"
    );
    cluster.destroy();
}
