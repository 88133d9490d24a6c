//! Monitoring counters in shared memory (only with `shared_preload_libraries`): one
//! atomic counter per slot of [`crate::metrics`], each on a cache line of its own. A
//! validation, a charge or a rate-limit decision adds one with a relaxed atomic add: no
//! lock, no table write. Counted since server start, for the whole cluster.

use crate::metrics::{self, SLOTS};
use crate::validation::Code;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: u64 = 0x616b_6d5f_6d65_0001;

/// A counter alone on its cache line (the validation counters of busy backends would
/// otherwise share one).
#[repr(C, align(64))]
struct Counter(AtomicU64);

#[repr(C)]
struct Region {
    magic: u64,
    counters: [Counter; SLOTS],
}

static mut SHARED: *mut Region = std::ptr::null_mut();

/// Called from `_PG_init`: register the region (only while preloading).
pub fn init() {
    crate::shmem::register(crate::shmem::Region {
        name: c"api_key_mgmt metrics",
        tranche: c"api_key_mgmt_metrics",
        locks: 0,
        size: std::mem::size_of::<Region>,
        // SAFETY: a freshly created, zeroed region of size_of::<Region>() bytes.
        init: |p| unsafe { (*(p as *mut Region)).magic = MAGIC },
        // SAFETY: the region stays mapped for the life of the server.
        attach: |p, _| unsafe { SHARED = p as *mut Region },
    });
}

fn region() -> Option<&'static Region> {
    // SAFETY: SHARED is set once, before any backend runs, to the mapped region.
    let r = unsafe { (&raw const SHARED).read().as_ref()? };
    (r.magic == MAGIC).then_some(r)
}

fn add(slot: usize) {
    if let Some(r) = region() {
        r.counters[slot].0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A `validate_api_key` answer.
pub fn count_validation(code: Code) {
    add(metrics::validation_slot(code));
}

/// A `charge_api_key` outcome, by its `code`.
pub fn count_charge(code: &str) {
    add(metrics::charge_slot(code));
}

/// A rate-limit decision in shared memory.
pub fn count_rate_limit(allowed: bool) {
    add(metrics::rate_limit_slot(allowed));
}

/// `metric_counters() RETURNS TABLE (name text, label text, label_value text, value bigint)`
/// — the shared-memory counters and gauges, cluster-wide (the metrics view reads them). Without preloading
/// only `api_key_mgmt_preloaded` (0).
#[pg_extern(sql = false)]
fn metric_counters() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(label, String),
        name!(label_value, String),
        name!(value, i64),
    ),
> {
    let row =
        |n: &str, l: &str, v: &str, x: u64| (n.to_owned(), l.to_owned(), v.to_owned(), x as i64);
    let Some(r) = region() else {
        return TableIterator::new(vec![row("api_key_mgmt_preloaded", "", "", 0)]);
    };
    let mut rows = vec![row("api_key_mgmt_preloaded", "", "", 1)];
    for slot in 0..SLOTS {
        let (name, label, value) = metrics::describe(slot);
        rows.push(row(
            name,
            label,
            value,
            r.counters[slot].0.load(Ordering::Relaxed),
        ));
    }
    if let Some(a) = crate::audit_pg::stats() {
        let entries = "api_key_mgmt_audit_entries_total";
        rows.push(row(entries, "outcome", "queued", a.queued));
        rows.push(row(entries, "outcome", "written", a.written));
        rows.push(row(entries, "outcome", "synchronous", a.synchronous));
        rows.push(row(entries, "outcome", "failed", a.failed));
        rows.push(row(entries, "outcome", "dropped", a.dropped));
        rows.push(row("api_key_mgmt_audit_queue_depth", "", "", a.depth));
        rows.push(row("api_key_mgmt_audit_queue_capacity", "", "", a.capacity));
        rows.push(row(
            "api_key_mgmt_maintenance_worker_database_oid",
            "",
            "",
            a.worker_database,
        ));
    }
    TableIterator::new(rows)
}
