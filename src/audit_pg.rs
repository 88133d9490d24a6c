//! The shared-memory queue of `secret.decrypted` audit entries (only with
//! `shared_preload_libraries` and `api_key_mgmt.audit_queue_size` > 0).
//!
//! A secret read appends its entry here instead of inserting into `audit_log` in the
//! reading transaction, and the maintenance background worker (`src/agents_pg.rs`)
//! writes the queue into `audit_log` in batches. So a read stays a read (no XID, no WAL
//! of its own), works in READ ONLY transactions, and stays audited when the reader rolls
//! back. Entries are taken only for the worker's database and only while the worker is
//! running; a full queue, another database, or a value too long for its field means the
//! read is audited synchronously, as without the queue. Entries not yet written are lost
//! if the server crashes (they are written before a clean shutdown).
//!
//! Layout: a [`Header`] then `capacity` [`Entry`]s, guarded by one LWLock (tranche
//! `api_key_mgmt_audit`). The worker copies entries out, writes them, and only after its
//! transaction commits advances `tail`: a failed write leaves them queued for its next
//! attempt.

use crate::audit::{self, Entry};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};

const TRANCHE: &CStr = c"api_key_mgmt_audit";
const MAGIC: u64 = 0x616b_6d5f_6175_0001;
/// Entries written per worker transaction.
pub const BATCH: usize = 512;

#[repr(C)]
struct Header {
    magic: u64,
    capacity: u64,
    /// Next position to write / to read (only grow; the slot is `pos % capacity`).
    head: u64,
    tail: u64,
    /// The worker's latch (0: no worker takes entries) and database.
    latch: usize,
    database: u32,
    /// Entries the worker wrote; reads audited synchronously instead of queued.
    written: AtomicU64,
    synchronous: AtomicU64,
}

static mut SHARED: *mut Header = std::ptr::null_mut();
static mut LOCK: *mut pg_sys::LWLockPadded = std::ptr::null_mut();

fn capacity_setting() -> usize {
    crate::gucs::AUDIT_QUEUE_SIZE.get().max(0) as usize
}

fn size() -> usize {
    std::mem::size_of::<Header>() + capacity_setting() * std::mem::size_of::<Entry>()
}

/// Called from `_PG_init`: register the region when preloading with a non-zero size.
pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } || capacity_setting() == 0 {
        return;
    }
    crate::shmem::register(crate::shmem::Region {
        name: c"api_key_mgmt audit queue",
        tranche: TRANCHE,
        locks: 1,
        size,
        init: |p| unsafe {
            let h = p as *mut Header;
            (*h).capacity = capacity_setting() as u64;
            (*h).magic = MAGIC;
        },
        attach: |p, locks| unsafe {
            SHARED = p as *mut Header;
            LOCK = locks;
        },
    });
}

fn active() -> bool {
    unsafe { !SHARED.is_null() && (*SHARED).magic == MAGIC }
}

/// The entry at ring position `pos`. Caller holds the lock.
unsafe fn slot(pos: u64) -> *mut Entry {
    unsafe {
        let base = (SHARED as *mut u8).add(std::mem::size_of::<Header>()) as *mut Entry;
        base.add((pos % (*SHARED).capacity) as usize)
    }
}

/// The queue's lock (exclusive), held until the guard drops.
fn locked() -> crate::shmem::Guard {
    unsafe { crate::shmem::Guard::acquire(&raw mut (*LOCK).lock, pg_sys::LWLockMode::LW_EXCLUSIVE) }
}

/// Whether the queue takes entries for `database` now: a cheap check before building
/// one ([`enqueue`] decides again under the lock). A refusal is counted as a read
/// audited synchronously.
pub fn accepts(database: u32) -> bool {
    if !active() {
        return false;
    }
    let takes = {
        let _lock = locked();
        let h = unsafe { &*SHARED };
        h.latch != 0 && h.database == database && audit::has_room(h.head, h.tail, h.capacity)
    };
    if !takes {
        unsafe { (*SHARED).synchronous.fetch_add(1, Ordering::Relaxed) };
    }
    takes
}

/// Queue a read's entry. `false`: not queued (no queue, no worker for this database,
/// queue full, or a value too long): the caller audits synchronously.
pub fn enqueue(read: &audit::Read) -> bool {
    if !active() {
        return false;
    }
    let queued = Entry::new(read).and_then(|entry| {
        let _lock = locked();
        let h = unsafe { &mut *SHARED };
        if h.latch == 0
            || h.database != read.database
            || !audit::has_room(h.head, h.tail, h.capacity)
        {
            return None;
        }
        let was_empty = h.head == h.tail;
        unsafe { slot(h.head).write(entry) };
        h.head += 1;
        // Wake the worker for the first entry, and again at half full in case it is
        // still gathering.
        let half = h.head - h.tail == h.capacity.div_ceil(2);
        Some(if was_empty || half { h.latch } else { 0 })
    });
    match queued {
        Some(latch) => {
            if latch != 0 {
                // The worker's latch lives in its PGPROC, in shared memory.
                unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
            }
            true
        }
        None => {
            unsafe { (*SHARED).synchronous.fetch_add(1, Ordering::Relaxed) };
            false
        }
    }
}

/// The worker takes entries for its database from now on (no-op without the queue).
pub fn attach_worker() {
    if !active() {
        return;
    }
    let _lock = locked();
    unsafe {
        (*SHARED).latch = pg_sys::MyLatch as usize;
        (*SHARED).database = pg_sys::MyDatabaseId.to_u32();
        pg_sys::before_shmem_exit(Some(on_worker_exit), pg_sys::Datum::from(0usize));
    }
}

/// The worker takes no more entries: later reads are audited synchronously. Called
/// before its last drain at shutdown, and when it exits for any reason.
pub fn detach_worker() {
    if !active() {
        return;
    }
    let _lock = locked();
    unsafe { (*SHARED).latch = 0 };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_worker_exit(_code: i32, _arg: pg_sys::Datum) {
    detach_worker();
}

/// Entries queued now (0 without the queue).
pub fn queued() -> u64 {
    if !active() {
        return 0;
    }
    let _lock = locked();
    let h = unsafe { &*SHARED };
    h.head - h.tail
}

/// Worker: a copy of up to [`BATCH`] queued entries and the ring position of the first.
/// They stay queued until [`advance`] (after the transaction that wrote them commits).
pub fn peek_batch() -> Option<(u64, Vec<Entry>)> {
    if !active() {
        return None;
    }
    let _lock = locked();
    let h = unsafe { &*SHARED };
    let n = (h.head - h.tail).min(BATCH as u64);
    (n > 0).then(|| {
        (
            h.tail,
            (0..n).map(|i| unsafe { *slot(h.tail + i) }).collect(),
        )
    })
}

/// Worker: the `n` entries from ring position `tail` are done — written (and committed),
/// or dropped because the extension is not installed in the worker's database.
pub fn advance(tail: u64, n: usize, written: bool) {
    let _lock = locked();
    unsafe {
        debug_assert_eq!((*SHARED).tail, tail, "only the worker advances the tail");
        (*SHARED).tail = tail + n as u64;
        if written {
            (*SHARED).written.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Insert the entries into `audit_log` in the current transaction, as
/// `api_key_mgmt_internal.audit()` would have, in one statement.
pub fn write(entries: &[Entry]) {
    let text = |f: fn(&Entry) -> Option<&str>| -> Vec<Option<String>> {
        entries.iter().map(|e| f(e).map(str::to_owned)).collect()
    };
    let at: Vec<i64> = entries.iter().map(|e| e.occurred_at).collect();
    let tenant: Vec<Option<Uuid>> = entries
        .iter()
        .map(|e| e.tenant().map(Uuid::from_bytes))
        .collect();
    let secret: Vec<Uuid> = entries
        .iter()
        .map(|e| Uuid::from_bytes(e.secret()))
        .collect();
    let source: Vec<Option<String>> = entries
        .iter()
        .map(|e| e.source().map(|s| s.as_str().to_owned()))
        .collect();
    let args = [
        at.into(),
        tenant.into(),
        text(Entry::actor).into(),
        text(Entry::actor_role).into(),
        secret.into(),
        text(Entry::provider).into(),
        source.into(),
        text(Entry::scope).into(),
        text(Entry::client_ip).into(),
        text(Entry::user_agent).into(),
    ];
    // Prepared once per worker (the plan cache revalidates it after DDL). The worker's
    // search_path is pg_catalog, pg_temp (src/agents_pg.rs).
    Spi::connect_mut(|client| {
        INSERT_PLAN.with(|cell| {
            let mut plan = cell.borrow_mut();
            if plan.is_none() {
                use pg_sys::BuiltinOid::*;
                let types = [
                    INT8ARRAYOID,
                    UUIDARRAYOID,
                    TEXTARRAYOID,
                    TEXTARRAYOID,
                    UUIDARRAYOID,
                    TEXTARRAYOID,
                    TEXTARRAYOID,
                    TEXTARRAYOID,
                    TEXTARRAYOID,
                    TEXTARRAYOID,
                ]
                .map(pgrx::PgOid::BuiltIn);
                *plan = Some(client.prepare_mut(INSERT, &types)?.keep());
            }
            client
                .update(plan.as_ref().expect("prepared above"), None, &args)
                .map(|_| ())
        })
    })
    .expect("write queued audit entries");
}

/// The worker's INSERT of a batch, `$1`..`$10` one array per column.
const INSERT: &str =
    "INSERT INTO api_key_mgmt.audit_log (occurred_at, tenant_id, actor, actor_role, \
         action, target_type, target_id, details, client_ip, user_agent) \
     SELECT timestamptz '2000-01-01 00:00:00+00' + u.us * interval '1 microsecond', u.t, \
            u.actor, u.role, 'secret.decrypted', 'secret', u.sid::text, \
            jsonb_build_object('provider', u.p, 'source', u.s, 'scope', u.sc), u.ip, u.ua \
       FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
            AS u(us, t, actor, role, sid, p, s, sc, ip, ua)";

thread_local! {
    static INSERT_PLAN: std::cell::RefCell<Option<pgrx::spi::OwnedPreparedStatement>> =
        const { std::cell::RefCell::new(None) };
}

/// `uuid_v7() RETURNS uuid` — internal: the default of `audit_log.id`.
#[pg_extern(sql = false, volatile, parallel_safe)]
fn uuid_v7() -> Uuid {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // An id needs uniqueness, not secrecy: the per-thread generator (seeded from the
    // OS, reseeded after a fork) costs a fraction of pg_strong_random's OpenSSL call.
    let random: [u8; 10] = rand::random();
    Uuid::from_bytes(audit::uuid_v7(unix_ms, random))
}

/// `audit_queue_status() RETURNS TABLE (mode text, capacity bigint, queued bigint, written bigint, synchronous bigint)`
#[pg_extern(sql = false)]
fn audit_queue_status() -> TableIterator<
    'static,
    (
        name!(mode, String),
        name!(capacity, i64),
        name!(queued, i64),
        name!(written, i64),
        name!(synchronous, i64),
    ),
> {
    if !active() {
        return TableIterator::once(("synchronous".to_owned(), 0, 0, 0, 0));
    }
    let row = {
        let _lock = locked();
        let h = unsafe { &*SHARED };
        let here = h.latch != 0 && h.database == unsafe { pg_sys::MyDatabaseId }.to_u32();
        (
            if here { "queue" } else { "synchronous" }.to_owned(),
            h.capacity as i64,
            (h.head - h.tail) as i64,
            h.written.load(Ordering::Relaxed) as i64,
            h.synchronous.load(Ordering::Relaxed) as i64,
        )
    };
    TableIterator::once(row)
}
