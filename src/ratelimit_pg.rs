//! The shared-memory rate limiter: memory, locks and hooks around the pure
//! [`crate::ratelimit`] slot table.
//!
//! Active only when the library is in `shared_preload_libraries`: `_PG_init` then
//! registers a [`crate::shmem::Region`] of `api_key_mgmt.rate_limit_slots` slots (32
//! bytes each) with [`PARTS`] LWLocks (named tranche `api_key_mgmt_ratelimit`).
//!
//! Layout: a [`Header`] followed by `parts × slots_per_part` [`Slot`]s. A limit's uuid
//! picks its partition (and lock) by hash; inside the partition it lives in a probe
//! window of [`crate::ratelimit::PROBE`] slots from its home position. Nothing is written
//! to a table, so it works on hot standbys; the state is lost at server restart (every
//! limit starts with a full burst), which is documented.

use crate::ratelimit::{self, Decision, Limit, Slot};
use crate::validation::Micros;
use pgrx::pg_sys;
use std::ffi::CStr;

/// Lock partitions.
pub const PARTS: usize = 16;
const TRANCHE: &CStr = c"api_key_mgmt_ratelimit";
const MAGIC: u64 = 0x616b_6d5f_726c_0001;

#[repr(C)]
struct Header {
    magic: u64,
    slots_per_part: u64,
}

static mut SHARED: *mut Header = std::ptr::null_mut();
static mut LOCKS: *mut pg_sys::LWLockPadded = std::ptr::null_mut();

fn slots_per_part() -> usize {
    let total = crate::gucs::RATE_LIMIT_SLOTS.get().max(1024) as usize;
    total.div_ceil(PARTS)
}

fn shmem_size() -> usize {
    std::mem::size_of::<Header>() + PARTS * slots_per_part() * std::mem::size_of::<Slot>()
}

/// Called from `_PG_init`: register the region when preloading, otherwise nothing (the
/// table-based fallback is used).
pub fn init() {
    crate::shmem::register(crate::shmem::Region {
        name: c"api_key_mgmt rate limiter",
        tranche: TRANCHE,
        locks: PARTS as i32,
        size: shmem_size,
        init: |p| unsafe {
            let h = p as *mut Header;
            (*h).slots_per_part = slots_per_part() as u64;
            (*h).magic = MAGIC;
        },
        attach: |p, locks| unsafe {
            SHARED = p as *mut Header;
            LOCKS = locks;
        },
    });
}

/// Whether limiter state lives in shared memory in this server.
pub fn active() -> bool {
    unsafe { !SHARED.is_null() && (*SHARED).magic == MAGIC }
}

/// Capacity in slots (0 when not active).
pub fn capacity() -> usize {
    if active() {
        unsafe { (*SHARED).slots_per_part as usize * PARTS }
    } else {
        0
    }
}

unsafe fn all_slots() -> &'static mut [Slot] {
    unsafe {
        let n = (*SHARED).slots_per_part as usize * PARTS;
        let base = (SHARED as *mut u8).add(std::mem::size_of::<Header>()) as *mut Slot;
        std::slice::from_raw_parts_mut(base, n)
    }
}

/// Holds the partition locks of one call, released on drop (also on ERROR unwinding,
/// and Postgres releases every LWLock at abort anyway).
struct Held(Vec<usize>);

impl Drop for Held {
    fn drop(&mut self) {
        for &p in self.0.iter().rev() {
            unsafe { pg_sys::LWLockRelease(&raw mut (*LOCKS.add(p)).lock) };
        }
    }
}

/// Decide `reqs` (limit id, limit) together for `cost` tokens: all admit and consume,
/// or none consumes. `None` when shared memory is not active.
pub fn consume(
    reqs: &[([u8; 16], Limit)],
    now: Micros,
    cost: i64,
) -> Option<(bool, Vec<Decision>)> {
    if !active() {
        return None;
    }
    if reqs.is_empty() {
        return Some((true, Vec::new()));
    }
    let mut order: Vec<usize> = reqs
        .iter()
        .map(|(id, _)| ratelimit::partition(id, PARTS))
        .collect();
    order.sort_unstable();
    order.dedup();
    // Locks in partition order: no deadlock between calls. A check without consuming
    // only reads.
    let mode = if cost > 0 {
        pg_sys::LWLockMode::LW_EXCLUSIVE
    } else {
        pg_sys::LWLockMode::LW_SHARED
    };
    let mut held = Held(Vec::with_capacity(order.len()));
    for &p in &order {
        unsafe { pg_sys::LWLockAcquire(&raw mut (*LOCKS.add(p)).lock, mode) };
        held.0.push(p);
    }
    // Only the locked partitions are read or written (consume_all stays inside the
    // partition of each limit).
    let result = ratelimit::consume_all(unsafe { all_slots() }, PARTS, reqs, now, cost);
    drop(held);
    crate::metrics_pg::count_rate_limit(result.0);
    Some(result)
}
