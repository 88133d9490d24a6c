//! What differs between the PostgreSQL majors the extension builds for, in one place.
//! Each item has one meaning for the rest of the code; the `cfg`s live here only, each
//! naming the major where PostgreSQL changed. 15 and 18 are built and tested; the 16
//! and 17 branches follow PostgreSQL's release notes and headers but are not built here.

use pgrx::pg_sys;

/// The attributes of a tuple descriptor, in order. (PostgreSQL 18 puts the
/// `FormData_pg_attribute` array after the new `compact_attrs` array.)
///
/// # Safety
/// `tupdesc` is a valid tuple descriptor that outlives the slice.
pub unsafe fn attrs<'a>(tupdesc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: the caller's promise; natts is the length of the array in both layouts.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        #[cfg(not(feature = "pg18"))]
        {
            (*tupdesc).attrs.as_slice(natts)
        }
        #[cfg(feature = "pg18")]
        {
            let first = (*tupdesc).compact_attrs.as_ptr().add(natts).cast();
            std::slice::from_raw_parts(first, natts)
        }
    }
}

/// This backend's local transaction id (`MyProc->lxid`; `MyProc->vxid.lxid` from 17).
pub fn local_xid() -> u32 {
    // SAFETY: MyProc is this backend's own PGPROC, set for the life of the backend.
    unsafe {
        #[cfg(not(any(feature = "pg17", feature = "pg18")))]
        {
            (*pg_sys::MyProc).lxid
        }
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        {
            (*pg_sys::MyProc).vxid.lxid
        }
    }
}

/// Whether partition bounds are of a `RANGE` partitioning (`strategy` is a `char` in
/// 15 and a `PartitionStrategy` enum from 16).
///
/// # Safety
/// `bounds` is a valid `PartitionBoundInfo`.
pub unsafe fn is_range(bounds: pg_sys::PartitionBoundInfo) -> bool {
    // SAFETY: the caller's promise.
    unsafe {
        #[cfg(feature = "pg15")]
        {
            (*bounds).strategy == pg_sys::PARTITION_STRATEGY_RANGE as core::ffi::c_char
        }
        #[cfg(not(feature = "pg15"))]
        {
            (*bounds).strategy == pg_sys::PartitionStrategy::PARTITION_STRATEGY_RANGE
        }
    }
}

/// Which index entries an updated row needs (`bool` in 15; `TU_UpdateIndexes` from 16,
/// where a HOT update may still need entries in summarizing indexes such as BRIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexUpdate {
    None,
    All,
    Summarizing,
}

/// `table_tuple_update` through the relation's table AM, with the index-update answer
/// as [`IndexUpdate`].
///
/// # Safety
/// As the AM's `tuple_update`: `rel` open and locked, `otid` the visible version,
/// `newslot` holding the new row, the pointers valid.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tuple_update(
    rel: pg_sys::Relation,
    otid: *mut pg_sys::ItemPointerData,
    newslot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    snapshot: pg_sys::Snapshot,
    tmfd: *mut pg_sys::TM_FailureData,
    lockmode: *mut pg_sys::LockTupleMode::Type,
) -> (pg_sys::TM_Result::Type, IndexUpdate) {
    // SAFETY: the caller's promise; rd_tableam is set for every table.
    unsafe {
        let update = (*(*rel).rd_tableam).tuple_update.expect("tuple_update");
        #[cfg(feature = "pg15")]
        {
            let mut all = false;
            let r = update(
                rel,
                otid,
                newslot,
                cid,
                snapshot,
                std::ptr::null_mut(),
                true,
                tmfd,
                lockmode,
                &mut all,
            );
            (
                r,
                if all {
                    IndexUpdate::All
                } else {
                    IndexUpdate::None
                },
            )
        }
        #[cfg(not(feature = "pg15"))]
        {
            let mut which = pg_sys::TU_UpdateIndexes::TU_None;
            let r = update(
                rel,
                otid,
                newslot,
                cid,
                snapshot,
                std::ptr::null_mut(),
                true,
                tmfd,
                lockmode,
                &mut which,
            );
            let which = match which {
                pg_sys::TU_UpdateIndexes::TU_None => IndexUpdate::None,
                pg_sys::TU_UpdateIndexes::TU_Summarizing => IndexUpdate::Summarizing,
                _ => IndexUpdate::All,
            };
            (r, which)
        }
    }
}

/// `ExecInsertIndexTuples` without conflict checks; `only_summarizing`: only the
/// summarizing indexes (for a HOT update, from 16; always false on 15). Returns the
/// list of indexes needing a recheck (none here: no deferred constraints are checked).
///
/// # Safety
/// As `ExecInsertIndexTuples`: `rri`'s indexes open, `slot` holding the stored row.
pub unsafe fn insert_index_tuples(
    rri: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    estate: *mut pg_sys::EState,
    only_summarizing: bool,
) -> *mut pg_sys::List {
    // SAFETY: the caller's promise.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        {
            debug_assert!(
                !only_summarizing,
                "PostgreSQL 15 has no summarizing-only updates"
            );
            pg_sys::ExecInsertIndexTuples(
                rri,
                slot,
                estate,
                false,
                false,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        }
        #[cfg(not(feature = "pg15"))]
        {
            pg_sys::ExecInsertIndexTuples(
                rri,
                slot,
                estate,
                false,
                false,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                only_summarizing,
            )
        }
    }
}
