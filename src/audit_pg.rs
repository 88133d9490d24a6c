//! The shared-memory queue of `secret.decrypted` audit entries (only with
//! `shared_preload_libraries` and `api_key_mgmt.audit_queue_size` > 0).
//!
//! A secret read appends its entry here instead of inserting into `audit_log` in the
//! reading transaction, and the maintenance background worker (`src/agents_pg.rs`)
//! writes the queue into `audit_log` in batches. So a read stays a read (no XID, no WAL
//! of its own), works in READ ONLY transactions, and stays audited when the reader rolls
//! back. Entries are taken only for the worker's database and only while the worker is
//! running.
//!
//! Two ways to use it (`api_key_mgmt.audit_read_mode`):
//! - `durable` ([`enqueue_durable`], the default): the reader waits until the worker
//!   has committed its entry (the ring position below which every written entry is
//!   committed, [`Header::committed`]), so no plaintext leaves without a durable audit
//!   row. Readers share the worker's commits: it writes whatever is queued in one
//!   transaction, and skips its gathering pause while durable readers wait. Anything
//!   that keeps the entry from being committed in time (no queue, no worker for this
//!   database, the worker not writing) fails the read: fail closed.
//! - `queued` ([`enqueue`]): the reader goes on at once. A full queue, another
//!   database, or a value too long for its field means the read is audited in its own
//!   transaction instead. Entries not yet written are lost if the server crashes (at
//!   most the queue's capacity; they are written before a clean shutdown).
//!
//! Layout: a [`Header`] then a [`Ring`] of `capacity` [`Entry`]s. Readers append without
//! a lock (one compare-and-swap; many backends reading secrets at once never wait for
//! each other or for the worker). The worker copies entries out, writes them with one
//! binary `COPY` into `audit_log` (so the table's constraints, triggers and indexes all
//! apply), and only after its transaction commits releases them: a failed write leaves
//! them queued for its next attempt.

use crate::audit::{self, Entry};
use crate::ring::Ring;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::cell::RefCell;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

const MAGIC: u64 = 0x616b_6d5f_6175_0004;
/// Entries written per worker transaction.
pub const BATCH: usize = 512;

#[repr(C)]
struct Header {
    magic: u64,
    /// The worker's latch (0: no worker takes entries) and database.
    latch: AtomicUsize,
    database: AtomicU32,
    /// Readers between their check of `latch` and the end of their append: the worker
    /// waits for none to be left after it stops taking entries (see [`detach_worker`]).
    appending: AtomicU32,
    /// Entries the worker wrote; reads audited synchronously instead of queued.
    written: AtomicU64,
    synchronous: AtomicU64,
    /// Ring position below which every entry the worker wrote is committed.
    committed: AtomicU64,
    /// The newest range of positions dropped instead of written (`[from, to)`).
    dropped_from: AtomicU64,
    dropped_to: AtomicU64,
    /// Durable readers waiting for a commit: the worker writes at once, no gathering.
    durable_waiting: AtomicU32,
    /// Durable reads refused because their entry was not committed in time.
    failed: AtomicU64,
    /// Entries taken into the queue; entries dropped by the worker (no extension in its
    /// database).
    queued_total: AtomicU64,
    dropped: AtomicU64,
    /// Broadcast by the worker after each batch (room made): readers that found the
    /// queue full wait on it. (Durable readers waiting for their commit are woken one
    /// by one through the latch their entry names.)
    room: std::cell::UnsafeCell<pg_sys::ConditionVariable>,
}

static mut SHARED: *mut Header = std::ptr::null_mut();

fn capacity_setting() -> u64 {
    crate::gucs::AUDIT_QUEUE_SIZE.get().max(0) as u64
}

fn size() -> usize {
    std::mem::size_of::<Header>() + Ring::<Entry>::size(capacity_setting())
}

/// Called from `_PG_init`: register the region when preloading with a non-zero size.
pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } || capacity_setting() == 0 {
        return;
    }
    crate::shmem::register(crate::shmem::Region {
        name: c"api_key_mgmt audit queue",
        tranche: c"api_key_mgmt_audit",
        locks: 0,
        size,
        init: |p| unsafe {
            Ring::<Entry>::init(p.add(std::mem::size_of::<Header>()), capacity_setting());
            let h = p as *mut Header;
            pg_sys::ConditionVariableInit((*h).room.get());
            (*h).magic = MAGIC;
        },
        attach: |p, _| unsafe { SHARED = p as *mut Header },
    });
}

/// The header, when the queue exists in this server.
fn header() -> Option<&'static Header> {
    let h = unsafe { SHARED.as_ref()? };
    (h.magic == MAGIC).then_some(h)
}

fn ring() -> Ring<Entry> {
    unsafe { Ring::attach((SHARED as *mut u8).add(std::mem::size_of::<Header>())) }
}

/// Whether the queue takes entries for `database` now (the worker is there; whether
/// there is room is for [`enqueue`] to find out): a cheap check before building one. A
/// refusal is counted as a read audited synchronously.
pub fn accepts(database: u32) -> bool {
    let Some(h) = header() else {
        return false;
    };
    let takes =
        h.latch.load(Ordering::SeqCst) != 0 && h.database.load(Ordering::SeqCst) == database;
    if !takes {
        h.synchronous.fetch_add(1, Ordering::Relaxed);
    }
    takes
}

/// Why a read's entry was not queued (or, durable, not committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// The library is not preloaded, or `audit_queue_size` is 0.
    NoQueue,
    /// The worker is not running, or serves another database.
    NoWorker,
    /// A value of the read is longer than its field in the queue.
    TooLong,
    /// The queue stayed full, or the entry was not committed, within the wait.
    TimedOut,
    /// The worker dropped the entry (the extension is not installed in its database).
    Dropped,
}

impl NotQueued {
    pub fn detail(self) -> &'static str {
        match self {
            NotQueued::NoQueue => "The audit queue needs shared_preload_libraries = 'api_key_mgmt' and api_key_mgmt.audit_queue_size > 0.",
            NotQueued::NoWorker => "The maintenance worker is not running in this database (api_key_mgmt.agent_maintenance_database names the database it serves).",
            NotQueued::TooLong => "A value of the read (user id, role, client address) is too long for the audit queue.",
            NotQueued::TimedOut => "The maintenance worker did not commit the entry within api_key_mgmt.audit_durable_timeout.",
            NotQueued::Dropped => "The maintenance worker dropped the entry: the extension is not installed in its database.",
        }
    }
}

/// Append `entry` for `database`, waiting up to `wait_ms` for room in a full queue.
/// Returns the entry's ring position. `durable`: wake the worker for every entry.
fn push(
    h: &Header,
    entry: &Entry,
    database: u32,
    wait_ms: i64,
    durable: bool,
) -> Result<u64, NotQueued> {
    let room = h.room.get();
    let mut waiting = false;
    let started = std::time::Instant::now();
    let pushed = loop {
        h.appending.fetch_add(1, Ordering::SeqCst);
        let latch = h.latch.load(Ordering::SeqCst);
        let taken = latch != 0 && h.database.load(Ordering::SeqCst) == database;
        let pushed = taken.then(|| ring().push(entry)).flatten();
        h.appending.fetch_sub(1, Ordering::SeqCst);
        if let Some(p) = pushed {
            h.queued_total.fetch_add(1, Ordering::Relaxed);
            // Wake the worker for the first entry, and again at half full in case it is
            // still gathering (for every entry when a reader waits for its commit). Its
            // latch lives in its PGPROC, in shared memory.
            if durable || p.was_empty || p.half_full {
                // SAFETY: the worker published its own latch, in shared memory, and
                // clears it before it exits; SetLatch on a stale latch only wakes.
                unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
            }
            break Ok(p.pos);
        }
        if !taken {
            break Err(NotQueued::NoWorker);
        }
        let left = wait_ms - started.elapsed().as_millis() as i64;
        if left <= 0 {
            break Err(NotQueued::TimedOut);
        }
        // Full: make sure the worker is writing, and wait for it to make room.
        // SAFETY: as above; the condition variable lives in the header.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
        if !waiting {
            // SAFETY: a condition variable in shared memory, initialised at startup.
            unsafe { pg_sys::ConditionVariablePrepareToSleep(room) };
            waiting = true;
            continue;
        }
        // SAFETY: prepared above; the sleep is cancelled below (or at abort).
        unsafe { pg_sys::ConditionVariableTimedSleep(room, left, pg_sys::PG_WAIT_EXTENSION) };
    };
    if waiting {
        // SAFETY: cancels this backend's own prepared sleep.
        unsafe { pg_sys::ConditionVariableCancelSleep() };
    }
    pushed
}

/// `queued` mode: queue a read's entry. `false`: not queued (no queue, no worker for
/// this database, a value too long, or the queue still full after
/// `api_key_mgmt.audit_queue_wait`): the caller audits synchronously. A full queue
/// drains in tens of milliseconds; the wait is bounded so that reads do not hang on a
/// stuck worker.
pub fn enqueue(read: &audit::Read) -> bool {
    let Some(h) = header() else {
        return false;
    };
    let wait = i64::from(crate::gucs::AUDIT_QUEUE_WAIT.get());
    let queued =
        Entry::new(read).is_some_and(|entry| push(h, &entry, read.database, wait, false).is_ok());
    if !queued {
        h.synchronous.fetch_add(1, Ordering::Relaxed);
    }
    queued
}

/// Counts a durable reader while it waits (also when an ERROR, such as a cancel,
/// interrupts the wait).
struct Waiting<'a>(&'a Header);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.durable_waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `durable` mode: queue a read's entry and return once the worker has committed it
/// (within `api_key_mgmt.audit_durable_timeout`). `Err`: the read must not return its
/// plaintext.
pub fn enqueue_durable(read: &audit::Read) -> Result<(), NotQueued> {
    let Some(h) = header() else {
        return Err(NotQueued::NoQueue);
    };
    let result = wait_durable(h, read);
    if result.is_err() {
        h.failed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

fn wait_durable(h: &Header, read: &audit::Read) -> Result<(), NotQueued> {
    let mut entry = Entry::new(read).ok_or(NotQueued::TooLong)?;
    // The worker sets this backend's latch (in its PGPROC, in shared memory) once the
    // batch holding the entry is committed: only the readers of that batch wake.
    // SAFETY: reads the backend-global pointer to this process's latch.
    let latch = unsafe { pg_sys::MyLatch };
    entry.waiter = latch as u64;
    let timeout = i64::from(crate::gucs::AUDIT_DURABLE_TIMEOUT.get());
    let started = std::time::Instant::now();
    // Counted before the push, so that a worker about to gather sees it.
    h.durable_waiting.fetch_add(1, Ordering::SeqCst);
    let _waiting = Waiting(h);
    let pos = push(h, &entry, read.database, timeout, true)?;
    loop {
        // Reset before the check, so that a wake-up between the check and the wait is
        // not lost (WaitLatch returns at once for a latch set meanwhile).
        // SAFETY: this process's own latch.
        unsafe { pg_sys::ResetLatch(latch) };
        let (from, to) = (
            h.dropped_from.load(Ordering::SeqCst),
            h.dropped_to.load(Ordering::SeqCst),
        );
        if (from..to).contains(&pos) {
            return Err(NotQueued::Dropped);
        }
        if h.committed.load(Ordering::SeqCst) > pos {
            return Ok(());
        }
        let left = timeout - started.elapsed().as_millis() as i64;
        if left <= 0 {
            return Err(NotQueued::TimedOut);
        }
        // SAFETY: waits on this process's own latch; a cancel or terminate request is
        // served by check_for_interrupts (an ERROR unwinds through `_waiting`).
        unsafe {
            pg_sys::WaitLatch(
                latch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                left,
                pg_sys::PG_WAIT_EXTENSION,
            );
        }
        pgrx::check_for_interrupts!();
    }
}

/// Worker: durable readers are waiting for a commit (write now, do not gather).
pub fn durable_waiting() -> bool {
    header().is_some_and(|h| h.durable_waiting.load(Ordering::SeqCst) > 0)
}

/// The worker takes entries for its database from now on (no-op without the queue).
pub fn attach_worker() {
    let Some(h) = header() else {
        return;
    };
    h.database
        .store(unsafe { pg_sys::MyDatabaseId }.to_u32(), Ordering::SeqCst);
    h.latch
        .store(unsafe { pg_sys::MyLatch } as usize, Ordering::SeqCst);
    unsafe { pg_sys::before_shmem_exit(Some(on_worker_exit), pg_sys::Datum::from(0usize)) };
}

/// The worker takes no more entries: later reads are audited synchronously. Called
/// before its last drain at shutdown, and when it exits for any reason. Returns once no
/// reader is still appending (an append takes microseconds; after a second the worker
/// stops waiting), so that last drain sees every entry taken.
pub fn detach_worker() {
    let Some(h) = header() else {
        return;
    };
    h.latch.store(0, Ordering::SeqCst);
    // Readers waiting for room stop waiting and audit synchronously.
    unsafe { pg_sys::ConditionVariableBroadcast(h.room.get()) };
    for _ in 0..10_000 {
        if h.appending.load(Ordering::SeqCst) == 0 {
            return;
        }
        unsafe { pg_sys::pg_usleep(100) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_worker_exit(_code: i32, _arg: pg_sys::Datum) {
    detach_worker();
}

/// The queue's counters since server start, for monitoring (src/metrics_pg.rs).
pub struct Stats {
    pub queued: u64,
    pub written: u64,
    pub synchronous: u64,
    pub failed: u64,
    pub dropped: u64,
    pub depth: u64,
    pub capacity: u64,
    /// The database the maintenance worker takes entries for (0: none now).
    pub worker_database: u64,
}

pub fn stats() -> Option<Stats> {
    let h = header()?;
    let attached = h.latch.load(Ordering::SeqCst) != 0;
    Some(Stats {
        queued: h.queued_total.load(Ordering::Relaxed),
        written: h.written.load(Ordering::Relaxed),
        synchronous: h.synchronous.load(Ordering::Relaxed),
        failed: h.failed.load(Ordering::Relaxed),
        dropped: h.dropped.load(Ordering::Relaxed),
        depth: ring().len(),
        capacity: ring().capacity(),
        worker_database: if attached {
            u64::from(h.database.load(Ordering::SeqCst))
        } else {
            0
        },
    })
}

/// Entries queued now (0 without the queue).
pub fn queued() -> u64 {
    header().map_or(0, |_| ring().len())
}

/// Worker: a copy of up to [`BATCH`] queued entries and the ring position of the first.
/// They stay queued until [`advance`] (after the transaction that wrote them commits).
pub fn peek_batch() -> Option<(u64, Vec<Entry>)> {
    header()?;
    let (tail, entries) = ring().peek(BATCH);
    (!entries.is_empty()).then_some((tail, entries))
}

/// Worker: the `entries` from ring position `tail` are done — written (and committed),
/// or dropped because the extension is not installed in the worker's database. Their
/// durable readers are woken.
pub fn advance(tail: u64, entries: &[Entry], written: bool) {
    let n = entries.len();
    let Some(h) = header() else {
        return;
    };
    ring().release(tail, n);
    let end = tail + n as u64;
    if written {
        h.written.fetch_add(n as u64, Ordering::Relaxed);
        h.committed.fetch_max(end, Ordering::SeqCst);
    } else {
        h.dropped.fetch_add(n as u64, Ordering::Relaxed);
        h.dropped_to.store(0, Ordering::SeqCst);
        h.dropped_from.store(tail, Ordering::SeqCst);
        h.dropped_to.store(end, Ordering::SeqCst);
    }
    for e in entries.iter().filter(|e| e.waiter != 0) {
        // SAFETY: the waiter is the latch in a backend's PGPROC (shared memory, lives as
        // long as the server); if that backend has gone, SetLatch only wakes whoever
        // uses the PGPROC now, and latch users always re-check their condition.
        unsafe { pg_sys::SetLatch(e.waiter as *mut pg_sys::Latch) };
    }
    unsafe { pg_sys::ConditionVariableBroadcast(h.room.get()) };
}

thread_local! {
    /// The binary COPY data [`copy_source`] hands to `CopyFrom`, and how much of it is read.
    static COPY_DATA: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// `CopyFrom`'s data source: the next bytes of [`COPY_DATA`] (0 at its end).
#[pg_guard]
unsafe extern "C-unwind" fn copy_source(
    outbuf: *mut std::ffi::c_void,
    _minread: i32,
    maxread: i32,
) -> i32 {
    COPY_DATA.with(|d| {
        let (data, at) = &mut *d.borrow_mut();
        let n = (data.len() - *at).min(maxread.max(0) as usize);
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().add(*at), outbuf as *mut u8, n) };
        *at += n;
        n as i32
    })
}

/// Insert the entries into `audit_log` in the current transaction, as
/// `api_key_mgmt_internal.audit()` would have, with one binary `COPY FROM` (its
/// multi-row inserts; the table's defaults, constraints, triggers and indexes apply as
/// for any COPY). Ids are version 7 UUIDs of the read's time.
pub fn write(entries: &[Entry]) {
    let data = audit::copy_binary(entries, |e| {
        let unix_ms = (e.occurred_at / 1000 + 946_684_800_000).max(0) as u64;
        audit::uuid_v7(unix_ms, rand::random())
    });
    COPY_DATA.with(|d| *d.borrow_mut() = (data, 0));
    let name = |s: &CStr| unsafe { pg_sys::makeString(pg_sys::pstrdup(s.as_ptr())) };
    unsafe {
        let rel = pg_sys::table_open(
            crate::catalog::oid(c"audit_log"),
            pg_sys::RowExclusiveLock as i32,
        );
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel,
            pg_sys::RowExclusiveLock as i32,
            std::ptr::null_mut(),
            false,
            false,
        );
        let mut columns = std::ptr::null_mut();
        for c in audit::COPY_COLUMNS {
            columns = pg_sys::lappend(columns, name(c).cast());
        }
        let format = pg_sys::makeDefElem(
            pg_sys::pstrdup(c"format".as_ptr()),
            name(c"binary").cast(),
            -1,
        );
        let options = pg_sys::lappend(std::ptr::null_mut(), format.cast());
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let cstate = pg_sys::BeginCopyFrom(
            pstate,
            rel,
            std::ptr::null_mut(),
            std::ptr::null(),
            false,
            Some(copy_source),
            columns,
            options,
        );
        // Fewer rows than entries only if a BEFORE trigger of the site's own skipped
        // some: that is its choice, not a reason to write the batch again.
        pg_sys::CopyFrom(cstate);
        pg_sys::EndCopyFrom(cstate);
        pg_sys::PopActiveSnapshot();
        pg_sys::free_parsestate(pstate);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
    COPY_DATA.with(|d| *d.borrow_mut() = (Vec::new(), 0));
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

/// `audit_queue_status() RETURNS TABLE (mode text, capacity bigint, queued bigint, written bigint, synchronous bigint, failed bigint)`
#[pg_extern(sql = false)]
fn audit_queue_status() -> TableIterator<
    'static,
    (
        name!(mode, String),
        name!(capacity, i64),
        name!(queued, i64),
        name!(written, i64),
        name!(synchronous, i64),
        name!(failed, i64),
    ),
> {
    let Some(h) = header() else {
        return TableIterator::once(("synchronous".to_owned(), 0, 0, 0, 0, 0));
    };
    let here = h.latch.load(Ordering::SeqCst) != 0
        && h.database.load(Ordering::SeqCst) == unsafe { pg_sys::MyDatabaseId }.to_u32();
    let row = (
        if here { "queue" } else { "synchronous" }.to_owned(),
        ring().capacity() as i64,
        ring().len() as i64,
        h.written.load(Ordering::Relaxed) as i64,
        h.synchronous.load(Ordering::Relaxed) as i64,
        h.failed.load(Ordering::Relaxed) as i64,
    );
    TableIterator::once(row)
}
