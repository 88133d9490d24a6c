//! Direct index lookups on the extension's own tables, for the hot path.
//!
//! `validate_api_key` runs on every request; going through SPI would plan and start an
//! executor for each lookup. Instead we open the table, probe its unique index with
//! `systable_beginscan` under the caller's snapshot (so MVCC, READ ONLY transactions
//! and hot standbys behave exactly as for a SELECT), copy the one matching tuple and
//! deform it. Columns are found by name, so upgrade scripts may add columns freely.
//!
//! Relation OIDs and column names are cached per backend and dropped on any relcache
//! invalidation (DROP/ALTER of the extension's tables, or a reset), so a probe costs
//! no catalog lookups. The table lock is kept until the end of the transaction, as the
//! executor does, so repeated probes do not go back to the lock manager.
//!
//! These lookups do not apply RLS or SELECT privileges: they are reached only through
//! functions whose EXECUTE privilege is the gate.

use pgrx::pg_sys;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

pub const SCHEMA: &CStr = c"api_key_mgmt";

/// A tuple copied out of a table, deformed into datums that live in the current memory
/// context (the caller's per-call context).
pub struct Row {
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
    names: Rc<[String]>,
    stamp: Stamp,
}

/// Which version of a row a [`Row`] was copied from: its TID and (raw) `xmin`. A
/// version visible to a snapshot is the only visible version of its row, so facts
/// derived from it can be reused while [`still_visible`] says so.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Stamp {
    block: u32,
    offset: u16,
    xmin: u32,
}

impl Row {
    /// Position of a column; a missing column means the extension's SQL and library do
    /// not match, which is an internal error, never a validation code.
    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap_or_else(|| {
            pgrx::error!("api_key_mgmt: column \"{name}\" is missing; the extension's SQL and library versions differ")
        })
    }

    /// The raw datum of a column, `None` for NULL.
    pub fn datum(&self, name: &str) -> Option<pg_sys::Datum> {
        let i = self.index(name);
        (!self.nulls[i]).then(|| self.values[i])
    }

    /// A column converted by pgrx.
    pub fn get<T: pgrx::FromDatum>(&self, name: &str) -> Option<T> {
        let i = self.index(name);
        unsafe { T::from_datum(self.values[i], self.nulls[i]) }
    }

    pub fn stamp(&self) -> Stamp {
        self.stamp
    }
}

/// What a backend remembers about one of the extension's relations.
#[derive(Clone)]
struct Cached {
    oid: pg_sys::Oid,
    /// Column names of a table, by position (empty names for dropped columns).
    names: Option<Rc<[String]>>,
}

thread_local! {
    static CACHE: RefCell<HashMap<&'static CStr, Cached>> = RefCell::new(HashMap::new());
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn invalidate(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    // Any relcache invalidation may concern our tables (or be a reset): forget it all.
    CACHE.with(|c| {
        if let Ok(mut m) = c.try_borrow_mut() {
            m.clear();
        }
    });
    GENERATION.with(|g| g.set(g.get() + 1));
}

/// Bumped by every relcache invalidation: caches keyed by [`Stamp`]s (TIDs) drop their
/// entries when it changes, since a table rewrite (VACUUM FULL, CLUSTER) moves rows.
pub fn generation() -> u64 {
    GENERATION.with(std::cell::Cell::get)
}

fn cached(name: &'static CStr) -> Cached {
    if !CALLBACK.with(|c| c.replace(true)) {
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(Some(invalidate), pg_sys::Datum::from(0usize))
        };
    }
    if let Some(c) = CACHE.with(|c| c.borrow().get(name).cloned()) {
        return c;
    }
    let entry = Cached {
        oid: relation_oid(name),
        names: None,
    };
    CACHE.with(|c| c.borrow_mut().insert(name, entry.clone()));
    entry
}

/// OID of `api_key_mgmt.<name>` (a table or an index), cached per backend.
pub fn oid(name: &'static CStr) -> pg_sys::Oid {
    cached(name).oid
}

/// Column names of an open table, cached with its OID.
unsafe fn column_names(name: &'static CStr, tupdesc: pg_sys::TupleDesc) -> Rc<[String]> {
    if let Some(n) = CACHE.with(|c| c.borrow().get(name).and_then(|e| e.names.clone())) {
        return n;
    }
    // SAFETY: an open relation's descriptor, alive for this call.
    let names: Rc<[String]> = unsafe { crate::pg_compat::attrs(tupdesc) }
        .iter()
        .map(|a| {
            if a.attisdropped {
                String::new()
            } else {
                a.name().to_owned()
            }
        })
        .collect();
    CACHE.with(|c| {
        if let Some(e) = c.borrow_mut().get_mut(name) {
            e.names = Some(names.clone());
        }
    });
    names
}

/// Copy a tuple found by a scan (its buffer is released at the scan's end) and deform
/// it: the datums then live in the current memory context.
unsafe fn copy_row(
    found: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    names: Rc<[String]>,
) -> Row {
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let copy = pg_sys::heap_copytuple(found);
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        pg_sys::heap_deform_tuple(copy, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        Row {
            values,
            nulls,
            names,
            stamp: stamp_of(copy),
        }
    }
}

/// Open a table as a SELECT would (AccessShareLock, kept to the end of the
/// transaction) and the snapshot to read it with: the statement's, else the
/// transaction's.
unsafe fn open_for_read(relid: pg_sys::Oid) -> (pg_sys::Relation, pg_sys::Snapshot) {
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let snapshot = if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        };
        (rel, snapshot)
    }
}

unsafe fn stamp_of(tuple: pg_sys::HeapTuple) -> Stamp {
    unsafe {
        let tid = (*tuple).t_self;
        Stamp {
            block: ((tid.ip_blkid.bi_hi as u32) << 16) | tid.ip_blkid.bi_lo as u32,
            offset: tid.ip_posid,
            xmin: (*(*tuple).t_data).t_choice.t_heap.t_xmin.into(),
        }
    }
}

/// Whether the row version `stamp` of `api_key_mgmt.<table>` is visible to the current
/// snapshot and is still the row whose uuid column `id_column` is `id`: one heap fetch
/// by TID instead of an index probe. The table is locked as by [`lookup`].
pub fn still_visible(table: &'static CStr, stamp: Stamp, id_column: &str, id: &[u8; 16]) -> bool {
    let relid = cached(table).oid;
    unsafe {
        let (rel, snapshot) = open_for_read(relid);
        let tupdesc = (*rel).rd_att;
        let names = column_names(table, tupdesc);
        let mut tuple = pg_sys::HeapTupleData::default();
        tuple.t_self.ip_blkid.bi_hi = (stamp.block >> 16) as u16;
        tuple.t_self.ip_blkid.bi_lo = (stamp.block & 0xffff) as u16;
        tuple.t_self.ip_posid = stamp.offset;
        let mut buffer: pg_sys::Buffer = 0;
        let mut same = false;
        if block_exists(rel, stamp.block)
            && pg_sys::heap_fetch(rel, snapshot, &mut tuple, &mut buffer, false)
        {
            let xmin: u32 = (*tuple.t_data).t_choice.t_heap.t_xmin.into();
            if xmin == stamp.xmin {
                if let Some(attno) = names.iter().position(|n| n == id_column) {
                    let mut isnull = false;
                    let d =
                        pg_sys::heap_getattr(&mut tuple, attno as i32 + 1, tupdesc, &mut isnull);
                    same = !isnull && *(d.cast_mut_ptr::<[u8; 16]>()) == *id;
                }
            }
            pg_sys::ReleaseBuffer(buffer);
        }
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        same
    }
}

/// Whether block `block` of the open (locked) table still exists: VACUUM may have
/// truncated the table since a row was found there, and reading a block past the end is
/// an ERROR. Answered from the size the backend's storage manager last saw when that
/// is larger, else with `lseek` (which also updates that size). This is safe because
/// only a truncation shrinks a table, and it sends a storage invalidation at once,
/// while holding ACCESS EXCLUSIVE: taking our lock processed it, which dropped the
/// remembered size; and while we hold our lock no truncation can start.
unsafe fn block_exists(rel: pg_sys::Relation, block: u32) -> bool {
    unsafe {
        let smgr = (*rel).rd_smgr;
        let main = pg_sys::ForkNumber::MAIN_FORKNUM as usize;
        if !smgr.is_null() {
            let known = (*smgr).smgr_cached_nblocks[main];
            if known != pg_sys::InvalidBlockNumber && block < known {
                return true;
            }
        }
        block < pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM)
    }
}

/// A per-backend cache of values derived from rows, each with the [`Stamp`] of the row
/// version it came from, emptied when the catalog [`generation`] changes (a table
/// rewrite moves rows) and when it holds `capacity` entries. Its users check an entry
/// with [`still_visible`] before trusting it.
///
/// Keys hash with foldhash (a cache hit is on every read's path; SipHash was about 15 % of
/// the extension's own instructions there) and are looked up by any borrowed form that
/// hashes and compares the same (`hashbrown::Equivalent`), so a hit allocates nothing.
pub struct RowCache<K, V> {
    generation: u64,
    capacity: usize,
    entries: hashbrown::HashMap<K, (Stamp, V)>,
}

impl<K: std::hash::Hash + Eq, V: Clone> RowCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        RowCache {
            generation: 0,
            capacity,
            entries: hashbrown::HashMap::new(),
        }
    }

    /// The entry of `key` read under the current generation.
    pub fn get<Q>(&mut self, key: &Q) -> Option<(Stamp, V)>
    where
        Q: std::hash::Hash + hashbrown::Equivalent<K> + ?Sized,
    {
        if self.generation != generation() {
            self.generation = generation();
            self.entries.clear();
        }
        self.entries.get(key).cloned()
    }

    /// Remember `value`, derived from the row version `stamp`. A lookup may have run
    /// catalog invalidations since the generation was last seen: then nothing is kept.
    pub fn put(&mut self, key: K, stamp: Stamp, value: V) {
        if self.generation != generation() {
            self.generation = generation();
            self.entries.clear();
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        self.entries.insert(key, (stamp, value));
    }
}

/// OID of `api_key_mgmt.<name>`, or an ERROR if the extension is not installed here.
fn relation_oid(name: &CStr) -> pg_sys::Oid {
    unsafe {
        let nsp = pg_sys::get_namespace_oid(SCHEMA.as_ptr(), true);
        let oid = if nsp == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            pg_sys::get_relname_relid(name.as_ptr(), nsp)
        };
        if oid == pg_sys::InvalidOid {
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "api_key_mgmt is not installed in this database",
                "Run CREATE EXTENSION api_key_mgmt."
            );
        }
        oid
    }
}

/// One equality condition of an index probe: `column = value` (compared with the btree
/// equality function `eq_proc`), or `column IS NULL` when `value` is `None`.
pub struct Key<'a> {
    pub column: &'a str,
    pub value: Option<pg_sys::Datum>,
    pub eq_proc: u32,
}

/// Look up the single row of `api_key_mgmt.<table>` whose `column`, indexed by the
/// unique single-column index `<index>`, equals `key`.
pub fn lookup_unique(
    table: &'static CStr,
    index: &'static CStr,
    column: &str,
    eq_proc: u32,
    key: pg_sys::Datum,
) -> Option<Row> {
    lookup(
        table,
        index,
        &[Key {
            column,
            value: Some(key),
            eq_proc,
        }],
    )
}

/// Look up the first row of `api_key_mgmt.<table>` matching every key through the
/// unique index `<index>`. Keys are given in the index's column order; text columns
/// probed this way are declared `COLLATE "C"` (the scan keys' collation).
pub fn lookup(table: &'static CStr, index: &'static CStr, keys: &[Key]) -> Option<Row> {
    let relid = cached(table).oid;
    let indexid = cached(index).oid;
    unsafe {
        let (rel, snapshot) = open_for_read(relid);
        let tupdesc = (*rel).rd_att;
        let names = column_names(table, tupdesc);
        let mut skeys = vec![pg_sys::ScanKeyData::default(); keys.len()];
        for (skey, key) in skeys.iter_mut().zip(keys) {
            // systable_beginscan wants the heap's attribute number and maps it to the index's.
            // (Dropped columns have empty names, and no key names an empty column.)
            let Some(attno) = names.iter().position(|n| n == key.column) else {
                pgrx::error!("api_key_mgmt: column \"{}\" is missing; the extension's SQL and library versions differ", key.column)
            };
            let attno = (attno + 1) as pg_sys::AttrNumber;
            match key.value {
                Some(value) => pg_sys::ScanKeyInit(
                    skey,
                    attno,
                    pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                    pg_sys::Oid::from(key.eq_proc),
                    value,
                ),
                None => pg_sys::ScanKeyEntryInitialize(
                    skey,
                    (pg_sys::SK_ISNULL | pg_sys::SK_SEARCHNULL) as i32,
                    attno,
                    0 as pg_sys::StrategyNumber, /* InvalidStrategy */
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::Datum::from(0usize),
                ),
            }
        }
        let scan = pg_sys::systable_beginscan(
            rel,
            indexid,
            true,
            snapshot,
            skeys.len() as i32,
            skeys.as_mut_ptr(),
        );
        let found = pg_sys::systable_getnext(scan);
        let row = if found.is_null() {
            None
        } else {
            Some(copy_row(found, tupdesc, names))
        };
        pg_sys::systable_endscan(scan);
        // Keep the lock to the end of the transaction, as the executor does.
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        row
    }
}

/// Every row of `api_key_mgmt.<table>` (a heap scan under the active snapshot): for the
/// small configuration tables only.
pub fn scan_all(table: &'static CStr) -> Vec<Row> {
    let relid = cached(table).oid;
    let mut rows = Vec::new();
    unsafe {
        let (rel, snapshot) = open_for_read(relid);
        let tupdesc = (*rel).rd_att;
        let names = column_names(table, tupdesc);
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            snapshot,
            0,
            std::ptr::null_mut(),
        );
        loop {
            let found = pg_sys::systable_getnext(scan);
            if found.is_null() {
                break;
            }
            rows.push(copy_row(found, tupdesc, names.clone()));
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
    rows
}

/// Call `api_key_mgmt_internal.<name>(args)` through the function manager, found by
/// its schema, name and argument types with no permission check on the schema and no
/// name resolved through the caller's `search_path` (LookupFuncName would check USAGE
/// on the schema, which callers of the extension's invoker-rights functions lack). A
/// `SECURITY DEFINER` function then runs as its owner with its own `search_path`.
/// `args`: (type OID, value; `None` for NULL). Returns the result, `None` for NULL.
pub fn call_internal(
    name: &CStr,
    args: &[(pg_sys::Oid, Option<pg_sys::Datum>)],
) -> Option<pg_sys::Datum> {
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"api_key_mgmt_internal".as_ptr(), false);
        let types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
        let argtypes = pg_sys::buildoidvector(types.as_ptr(), types.len() as i32);
        let oid = pg_sys::GetSysCacheOid(
            pg_sys::SysCacheIdentifier::PROCNAMEARGSNSP as i32,
            pg_sys::Anum_pg_proc_oid as pg_sys::AttrNumber,
            pg_sys::Datum::from(name.as_ptr()),
            pg_sys::Datum::from(argtypes),
            pg_sys::Datum::from(namespace),
            pg_sys::Datum::from(0usize),
        );
        if oid == pg_sys::InvalidOid {
            pgrx::error!(
                "api_key_mgmt: function api_key_mgmt_internal.{} is missing; the extension's SQL and library versions differ",
                name.to_string_lossy()
            );
        }
        let mut flinfo = pg_sys::FmgrInfo::default();
        pg_sys::fmgr_info(oid, &mut flinfo);
        let fcinfo = pg_sys::palloc0(
            std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
                + std::mem::size_of::<pg_sys::NullableDatum>() * args.len(),
        ) as *mut pg_sys::FunctionCallInfoBaseData;
        (*fcinfo).flinfo = &mut flinfo;
        (*fcinfo).fncollation = pg_sys::DEFAULT_COLLATION_OID;
        (*fcinfo).nargs = args.len() as i16;
        for (slot, (_, value)) in (*fcinfo).args.as_mut_slice(args.len()).iter_mut().zip(args) {
            slot.value = value.unwrap_or(pg_sys::Datum::from(0usize));
            slot.isnull = value.is_none();
        }
        let func = flinfo.fn_addr.expect("fmgr_info sets fn_addr");
        // A SECURITY DEFINER function sees the role that called us as its caller.
        let _frame = crate::caller::definer_of(oid).map(crate::caller::FrameGuard::enter);
        let result = crate::caller::without_row_details(|| {
            pg_sys::ffi::pg_guard_ffi_boundary(|| func(fcinfo))
        });
        let isnull = (*fcinfo).isnull;
        pg_sys::pfree(fcinfo.cast());
        (!isnull).then_some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(n: u32) -> Stamp {
        Stamp {
            block: n,
            offset: 1,
            xmin: 100 + n,
        }
    }

    fn bump() {
        GENERATION.with(|g| g.set(g.get() + 1));
    }

    #[test]
    fn row_cache_keeps_entries_of_the_current_generation() {
        let mut c: RowCache<u8, &str> = RowCache::new(2);
        assert_eq!(c.get(&1), None);
        c.put(1, stamp(1), "one");
        assert_eq!(c.get(&1), Some((stamp(1), "one")));
        c.put(1, stamp(2), "newer");
        assert_eq!(c.get(&1), Some((stamp(2), "newer")), "replaced");
        c.put(2, stamp(3), "two");
        c.put(3, stamp(4), "three");
        assert_eq!(c.get(&1), None, "full: emptied before the third entry");
        assert_eq!(c.get(&3), Some((stamp(4), "three")));
        // An invalidation empties it.
        bump();
        assert_eq!(c.get(&3), None);
        // One between a get and the put that follows it (during a probe): nothing kept.
        assert_eq!(c.get(&4), None);
        bump();
        c.put(4, stamp(5), "four");
        assert_eq!(c.get(&4), None);
        c.put(4, stamp(5), "four");
        assert_eq!(c.get(&4), Some((stamp(5), "four")));
    }
}
