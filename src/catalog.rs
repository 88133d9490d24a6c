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
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn invalidate(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    // Any relcache invalidation may concern our tables (or be a reset): forget it all.
    CACHE.with(|c| {
        if let Ok(mut m) = c.try_borrow_mut() {
            m.clear();
        }
    });
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

/// Column names of an open table, cached with its OID.
unsafe fn column_names(name: &'static CStr, tupdesc: pg_sys::TupleDesc) -> Rc<[String]> {
    if let Some(n) = CACHE.with(|c| c.borrow().get(name).and_then(|e| e.names.clone())) {
        return n;
    }
    let natts = unsafe { (*tupdesc).natts } as usize;
    let names: Rc<[String]> = unsafe { (*tupdesc).attrs.as_slice(natts) }
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
        }
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
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let snapshot = if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        };
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
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let snapshot = if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        };
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
