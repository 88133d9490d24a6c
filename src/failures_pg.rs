//! Failed-validation counters in shared memory (only with `shared_preload_libraries`):
//! per key for keys that were found and refused, and per code for strings that are not
//! keys. `validate_api_key` stays read-only (it works on standbys), and counting costs
//! an atomic add or one short LWLock hold — never a table row per attempt.
//!
//! Layout: a [`Header`] (magic, per-code atomic counters, evictions) then
//! [`SLOTS`] [`Slot`]s guarded by one LWLock (tranche `api_key_mgmt_failures`).

use crate::failures::{self, Slot, N_CODES};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode, Uuid};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Keys tracked at once (least recently failed evicted within a key's probe window).
pub const SLOTS: usize = 4096;
const TRANCHE: &CStr = c"api_key_mgmt_failures";
const MAGIC: u64 = 0x616b_6d5f_6661_0001;

#[repr(C)]
struct Header {
    magic: u64,
    unknown: [AtomicU64; N_CODES],
    evictions: AtomicU64,
}

static mut SHARED: *mut Header = std::ptr::null_mut();
static mut LOCK: *mut pg_sys::LWLockPadded = std::ptr::null_mut();

fn size() -> usize {
    std::mem::size_of::<Header>() + SLOTS * std::mem::size_of::<Slot>()
}

/// Called from `_PG_init`: register the region (only while preloading).
pub fn init() {
    crate::shmem::register(crate::shmem::Region {
        name: c"api_key_mgmt failures",
        tranche: TRANCHE,
        locks: 1,
        size,
        init: |p| unsafe { (*(p as *mut Header)).magic = MAGIC },
        attach: |p, locks| unsafe {
            SHARED = p as *mut Header;
            LOCK = locks;
        },
    });
}

fn active() -> bool {
    unsafe { !SHARED.is_null() && (*SHARED).magic == MAGIC }
}

unsafe fn slots() -> &'static mut [Slot] {
    unsafe {
        let base = (SHARED as *mut u8).add(std::mem::size_of::<Header>()) as *mut Slot;
        std::slice::from_raw_parts_mut(base, SLOTS)
    }
}

/// The region's lock, held until the guard drops.
fn locked(mode: pg_sys::LWLockMode::Type) -> crate::shmem::Guard {
    unsafe { crate::shmem::Guard::acquire(&raw mut (*LOCK).lock, mode) }
}

/// Count a refusal of a string that is not a known key (no-op without preload).
pub fn count_unknown(code: &str) {
    if active() {
        unsafe { (*SHARED).unknown[failures::code_index(code)].fetch_add(1, Ordering::Relaxed) };
    }
}

/// Count a refusal of a found key (no-op without preload).
pub fn count_key(key: [u8; 16], tenant: [u8; 16], code: &str, now: i64) {
    if !active() {
        return;
    }
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let _lock = locked(pg_sys::LWLockMode::LW_EXCLUSIVE);
    if failures::record(
        unsafe { slots() },
        db,
        key,
        tenant,
        failures::code_index(code),
        now,
    ) {
        unsafe { (*SHARED).evictions.fetch_add(1, Ordering::Relaxed) };
    }
}

fn require_active() {
    if !active() {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "failed validations are counted only when api_key_mgmt is in shared_preload_libraries",
            "",
        );
    }
}

fn by_code_json(counts: &[u32; N_CODES]) -> JsonB {
    let map: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (failures::code_name(i).to_owned(), (*n).into()))
        .collect();
    JsonB(serde_json::Value::Object(map))
}

/// `validation_failures() RETURNS TABLE (key_id uuid, tenant_id uuid, failures bigint,
/// by_code jsonb, first_failed_at timestamptz, last_failed_at timestamptz)` — refused
/// validations of known keys since server start. Platform administrators see every
/// tenant; tenant admins and owners their own tenant's keys.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn validation_failures() -> TableIterator<
    'static,
    (
        name!(key_id, Uuid),
        name!(tenant_id, Uuid),
        name!(failures, i64),
        name!(by_code, JsonB),
        name!(first_failed_at, pgrx::datum::TimestampWithTimeZone),
        name!(last_failed_at, pgrx::datum::TimestampWithTimeZone),
    ),
> {
    require_active();
    let visible = crate::tenancy_pg::visible_tenant_for_admin_views();
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let rows: Vec<Slot> = {
        let _lock = locked(pg_sys::LWLockMode::LW_SHARED);
        unsafe { slots() }
            .iter()
            .filter(|s| s.used != 0 && s.db == db)
            .filter(|s| visible.is_none_or(|t| t == s.tenant))
            .copied()
            .collect()
    };
    let ts = |micros: i64| {
        pgrx::datum::TimestampWithTimeZone::try_from(micros).expect("valid timestamptz")
    };
    TableIterator::new(rows.into_iter().map(move |s| {
        (
            Uuid::from_bytes(s.key),
            Uuid::from_bytes(s.tenant),
            s.total as i64,
            by_code_json(&s.by_code),
            ts(s.first_at),
            ts(s.last_at),
        )
    }))
}

/// `validation_failure_totals() RETURNS TABLE (code text, failures bigint)` — refusals
/// of strings that were not known keys, per code, since server start, for the whole
/// cluster (a string that is not a key belongs to no database; platform administrators
/// only).
#[pg_extern(sql = false)]
fn validation_failure_totals() -> TableIterator<'static, (name!(code, String), name!(failures, i64))>
{
    require_active();
    let rows: Vec<(String, i64)> = (0..N_CODES)
        .map(|i| {
            let n = unsafe { (*SHARED).unknown[i].load(Ordering::Relaxed) };
            (failures::code_name(i).to_owned(), n as i64)
        })
        .filter(|(_, n)| *n > 0)
        .chain(std::iter::once(("evicted_keys".to_owned(), unsafe {
            (*SHARED).evictions.load(Ordering::Relaxed)
        }
            as i64)))
        .collect();
    TableIterator::new(rows)
}

/// `reset_validation_failures() RETURNS void` — zero this database's key counters and
/// the cluster-wide per-code counters (platform admins).
#[pg_extern(sql = false)]
fn reset_validation_failures() {
    require_active();
    let _lock = locked(pg_sys::LWLockMode::LW_EXCLUSIVE);
    unsafe {
        let db = pg_sys::MyDatabaseId.to_u32();
        for s in slots().iter_mut().filter(|s| s.db == db) {
            *s = Slot::default();
        }
        for c in (*SHARED).unknown.iter() {
            c.store(0, Ordering::Relaxed);
        }
        (*SHARED).evictions.store(0, Ordering::Relaxed);
    }
}
