//! `charge_api_key`: the common charge written natively.
//!
//! Most charges change nothing but running totals: no idempotency key, no rate cost, a
//! tenant without a meter, no period ended, the charge fits every cap and the credits
//! and crosses no alert threshold ([`metering::charges_quietly`]). Such a charge is
//! two writes, and this module makes them through the table access method: the key's
//! meter row is updated, the usage row is inserted into its monthly partition, and
//! both get their index entries. There is no SQL statement, so no
//! plan, no executor start-up and no CHECK expression re-read from the catalog.
//! Anything else goes to the plpgsql full path,
//! `api_key_mgmt_internal.charge_api_key_full`, which decides, refuses, rolls periods
//! over and alerts. So does a charge on a table this code does not fully know (a
//! trigger other than the foreign-key checks, an added column or CHECK, a stored
//! generated column), into the default partition or while a partition is detached,
//! and in parallel mode (where the full path raises as SQL would). A read-only
//! transaction (a hot standby's included) gets 25006 before anything.
//!
//! What it does as the executor would: RowExclusiveLock on the tables and their
//! indexes; the update of the row version the snapshot sees, and when a concurrent
//! transaction updated it first, in READ COMMITTED the lock of the newest version (FOR
//! NO KEY UPDATE) and a new decision on it (EvalPlanQual), in REPEATABLE READ or
//! SERIALIZABLE 40001; NOT NULL and the known CHECKs hold by the argument checks;
//! index entries for every index (none when the update is HOT); a fresh snapshot and
//! a command counter increment around the writes, as SPI gives a volatile function.
//! What it skips: row-level security and table privileges, like the `SECURITY DEFINER`
//! plpgsql it replaces (EXECUTE on `charge_api_key` is the gate), and the foreign-key
//! triggers of `meters`, which PostgreSQL itself skips when the key columns do not
//! change.

use crate::catalog;
use crate::errors::raise;
use crate::metering::{self, Money, Period, QuietMeter};
use crate::metering_pg::{self, check_charge_args, to_money};
use crate::result_row::ResultRow;
use crate::validation_pg::tenant_metered;
use pgrx::fcinfo::pg_getarg;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{AnyNumeric, FromDatum, Uuid};
use std::cell::RefCell;
use std::ffi::CStr;

/// The `meters` columns the charge reads or writes, in this order.
const METER: [&str; 16] = [
    "subject_id",
    "tenant_id",
    "key_id",
    "daily_cap",
    "day_spent",
    "day_ends_at",
    "monthly_cap",
    "month_spent",
    "month_ends_at",
    "credits",
    "credits_refill_period",
    "credits_until",
    "credits_granted",
    "day_alerted",
    "month_alerted",
    "credits_alerted",
];
const M_TENANT: usize = 1;
const M_KEY: usize = 2;
const M_DAILY_CAP: usize = 3;
const M_DAY_SPENT: usize = 4;
const M_DAY_ENDS: usize = 5;
const M_MONTHLY_CAP: usize = 6;
const M_MONTH_SPENT: usize = 7;
const M_MONTH_ENDS: usize = 8;
const M_CREDITS: usize = 9;
const M_REFILL_PERIOD: usize = 10;
const M_CREDITS_UNTIL: usize = 11;
const M_CREDITS_GRANTED: usize = 12;
const M_ALERTED: [usize; 3] = [13, 14, 15];

/// Every column of `usage_events`, in this order: a table with any other column (an
/// upgrade or the user added one, maybe with a default) takes the full path.
const USAGE: [&str; 13] = [
    "id",
    "tenant_id",
    "key_id",
    "scope",
    "provider",
    "model",
    "key_source",
    "units",
    "cost",
    "idempotency_key",
    "reservation_id",
    "metadata",
    "occurred_at",
];
const USAGE_CHECKS: [&str; 3] = [
    "usage_events_cost_check",
    "usage_events_key_source_check",
    "usage_events_units_check",
];
const METER_CHECKS: [&str; 1] = ["meters_valid"];

/// The arguments of a charge, checked.
struct Charge {
    key_id: pg_sys::Datum,
    scope: pg_sys::Datum,
    cost: pg_sys::Datum,
    /// `cost` checked, as [`Money`].
    amount: Money,
    units: pg_sys::Datum,
    provider: Option<pg_sys::Datum>,
    model: Option<pg_sys::Datum>,
    metadata: Option<pg_sys::Datum>,
    key_source: Option<pg_sys::Datum>,
}

finfo_v1!(pg_finfo_akm_charge_api_key);

/// `charge_api_key(key_id uuid, scope text, cost numeric, units bigint, provider text, model text, idempotency_key text, metadata jsonb, key_source text, rate_cost integer) RETURNS charge_result`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn akm_charge_api_key(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let arg = |i: usize| pgrx::fcinfo::pg_getarg_datum(fcinfo, i);
        let idempotency_key = pg_getarg::<&str>(fcinfo, 6);
        let rate_cost = pg_getarg::<i32>(fcinfo, 9);
        let cost = check_charge_args(
            pg_getarg::<Uuid>(fcinfo, 0),
            pg_getarg::<&str>(fcinfo, 1),
            pg_getarg::<AnyNumeric>(fcinfo, 2),
            pg_getarg::<i64>(fcinfo, 3),
            pg_getarg::<&str>(fcinfo, 4),
            pg_getarg::<&str>(fcinfo, 5),
            idempotency_key,
            arg(7).map(jsonb_is_object),
            pg_getarg::<&str>(fcinfo, 8),
            rate_cost,
        );
        if pg_sys::XactReadOnly {
            raise(
                PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
                "charge_api_key writes and needs a read-write transaction",
                "Charge on the primary, outside READ ONLY transactions.",
            );
        }
        if idempotency_key.is_none() && rate_cost == Some(0) {
            let charge = Charge {
                key_id: arg(0).expect("checked"),
                scope: arg(1).expect("checked"),
                cost: arg(2).expect("checked"),
                amount: cost,
                units: arg(3).expect("checked"),
                provider: arg(4),
                model: arg(5),
                metadata: arg(7),
                key_source: arg(8),
            };
            if let Some(row) = quiet_charge(&charge) {
                return row.into_datum(fcinfo);
            }
        }
        let types = [
            pg_sys::UUIDOID,
            pg_sys::TEXTOID,
            pg_sys::NUMERICOID,
            pg_sys::INT8OID,
            pg_sys::TEXTOID,
            pg_sys::TEXTOID,
            pg_sys::TEXTOID,
            pg_sys::JSONBOID,
            pg_sys::TEXTOID,
            pg_sys::INT4OID,
        ];
        let args: Vec<_> = types
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, arg(i)))
            .collect();
        match catalog::call_internal(c"charge_api_key_full", &args) {
            Some(d) => {
                count_outcome(d);
                d
            }
            None => {
                (*fcinfo).isnull = true;
                pg_sys::Datum::from(0usize)
            }
        }
    }
}

/// Count the outcome of a charge the full path made (its `charge_result.code`).
fn count_outcome(result: pg_sys::Datum) {
    use pgrx::FromDatum;
    let mut isnull = false;
    // SAFETY: `result` is the charge_result composite charge_api_key_full returned;
    // GetAttributeByName reads its attribute "code" (detoasting the tuple as needed) and
    // answers NULL (isnull) when it has none.
    let code = unsafe {
        let tuple = pg_sys::pg_detoast_datum(result.cast_mut_ptr()) as pg_sys::HeapTupleHeader;
        let d = pg_sys::GetAttributeByName(tuple, c"code".as_ptr(), &mut isnull);
        String::from_datum(d, isnull)
    };
    if let Some(code) = code {
        crate::metrics_pg::count_charge(&code);
    }
}

/// Column positions of the tables, by name, for the relcache generation they were
/// found in (a table rewrite or ALTER drops them).
#[derive(Clone, Copy)]
struct Layout {
    generation: u64,
    meters: pg_sys::Oid,
    meter: [usize; 16],
}

thread_local! {
    static LAYOUT: RefCell<Option<Layout>> = const { RefCell::new(None) };
    /// The `usage_events` whose partition key was found to be `RANGE (occurred_at)`.
    static PARTITION_KEY: std::cell::Cell<Option<(u64, pg_sys::Oid)>> = const { std::cell::Cell::new(None) };
    /// Partitions already checked: (generation, partition oid, positions of USAGE).
    static PARTITIONS: RefCell<Vec<(u64, pg_sys::Oid, [usize; 13])>> = const { RefCell::new(Vec::new()) };
}

/// Positions of `names` in a tuple descriptor; `None` when one is missing or when the
/// table has a live column not in `names` and `complete` is asked.
unsafe fn positions<const N: usize>(
    tupdesc: pg_sys::TupleDesc,
    names: &[&str; N],
    complete: bool,
) -> Option<[usize; N]> {
    unsafe {
        let attrs = crate::pg_compat::attrs(tupdesc);
        let mut out = [usize::MAX; N];
        for (i, a) in attrs.iter().enumerate() {
            if a.attisdropped {
                continue;
            }
            match names.iter().position(|n| *n == a.name()) {
                Some(j) => out[j] = i,
                None if complete => return None,
                None => {}
            }
        }
        out.iter().all(|p| *p != usize::MAX).then_some(out)
    }
}

/// Whether a table's CHECK constraints are exactly `names` and it has no stored
/// generated column.
unsafe fn constraints_are(rel: pg_sys::Relation, names: &[&str]) -> bool {
    unsafe {
        let constr = (*(*rel).rd_att).constr;
        if constr.is_null() {
            return names.is_empty();
        }
        if (*constr).has_generated_stored || (*constr).num_check as usize != names.len() {
            return false;
        }
        let checks = std::slice::from_raw_parts((*constr).check, names.len());
        checks
            .iter()
            .all(|c| names.contains(&CStr::from_ptr(c.ccname).to_str().unwrap_or("")) && c.ccvalid)
    }
}

/// Whether a table has no trigger but the foreign-key checks (`RI_FKey_check_*`),
/// which an update that leaves the key columns alone does not fire.
unsafe fn only_fk_check_triggers(rel: pg_sys::Relation) -> bool {
    unsafe {
        let desc = (*rel).trigdesc;
        if desc.is_null() {
            return true;
        }
        let triggers = std::slice::from_raw_parts((*desc).triggers, (*desc).numtriggers as usize);
        triggers.iter().all(|t| {
            t.tgisinternal
                && (t.tgfoid == pg_sys::Oid::from(pg_sys::F_RI_FKEY_CHECK_INS)
                    || t.tgfoid == pg_sys::Oid::from(pg_sys::F_RI_FKEY_CHECK_UPD))
        })
    }
}

unsafe fn is_heap(rel: pg_sys::Relation) -> bool {
    unsafe { (*rel).rd_tableam == pg_sys::GetHeapamTableAmRoutine() }
}

/// The meters layout, checked once per relcache generation.
unsafe fn meter_layout(rel: pg_sys::Relation) -> Option<Layout> {
    let generation = catalog::generation();
    let relid = unsafe { (*rel).rd_id };
    if let Some(l) = LAYOUT.with(|l| *l.borrow()) {
        if l.generation == generation && l.meters == relid {
            return Some(l);
        }
    }
    let meter = unsafe { positions((*rel).rd_att, &METER, false)? };
    let layout = Layout {
        generation,
        meters: relid,
        meter,
    };
    LAYOUT.with(|l| *l.borrow_mut() = Some(layout));
    Some(layout)
}

/// Heap datums of a tuple, deformed.
unsafe fn deform(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> (Vec<pg_sys::Datum>, Vec<bool>) {
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        (values, nulls)
    }
}

/// Whether the meter row (`values`/`nulls` at positions `m` of [`METER`]) takes a
/// charge of `cost` at `now` quietly ([`metering::charges_quietly`]). A NULL total or an
/// amount out of [`Money`]'s range: no (the full path decides).
fn quiet(cost: Money, now: i64, values: &[pg_sys::Datum], nulls: &[bool], m: &[usize; 16]) -> bool {
    let datum = |i: usize| (!nulls[m[i]]).then(|| values[m[i]]);
    // `None`: NULL; `Some(None)`: out of Money's range.
    let money = |i: usize| {
        datum(i).map(|d| {
            unsafe { AnyNumeric::from_datum(d, false) }
                .as_ref()
                .and_then(to_money)
        })
    };
    // timestamptz and smallint are passed by value.
    let micros = |i: usize| datum(i).map(|d| d.value() as i64);
    let (Some(Some(day_spent)), Some(Some(month_spent))) =
        (money(M_DAY_SPENT), money(M_MONTH_SPENT))
    else {
        return false;
    };
    let [daily_cap, monthly_cap, credits, credits_granted] =
        [M_DAILY_CAP, M_MONTHLY_CAP, M_CREDITS, M_CREDITS_GRANTED].map(money);
    if [daily_cap, monthly_cap, credits, credits_granted]
        .iter()
        .any(|v| matches!(v, Some(None)))
    {
        return false;
    }
    let meter = QuietMeter {
        daily_cap: daily_cap.flatten(),
        monthly_cap: monthly_cap.flatten(),
        day: Period {
            spent: day_spent,
            ends_at: micros(M_DAY_ENDS),
        },
        month: Period {
            spent: month_spent,
            ends_at: micros(M_MONTH_ENDS),
        },
        credits: credits.flatten(),
        refills: datum(M_REFILL_PERIOD).is_some(),
        credits_until: micros(M_CREDITS_UNTIL),
        credits_granted: credits_granted.flatten(),
        alerted: M_ALERTED.map(|i| datum(i).map_or(0, |d| d.value() as i16)),
    };
    metering::charges_quietly(&meter, cost, now)
}

/// Whether a `jsonb` datum is an object (the root container's flag; no parsing).
fn jsonb_is_object(d: pg_sys::Datum) -> bool {
    const JB_FOBJECT: u32 = 0x2000_0000;
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        let header = pgrx::varlena::vardata_any(v).cast::<u32>().read_unaligned();
        header & JB_FOBJECT != 0
    }
}

unsafe extern "C-unwind" {
    /// `numeric + numeric` and `numeric - numeric`, the functions SQL's operators call
    /// (the V1 symbols themselves, for `DirectFunctionCall2Coll`).
    fn numeric_add(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    fn numeric_sub(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}

type V1 = unsafe extern "C-unwind" fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum;

fn numeric(f: V1, a: pg_sys::Datum, b: pg_sys::Datum) -> pg_sys::Datum {
    unsafe { pg_sys::DirectFunctionCall2Coll(Some(f), pg_sys::InvalidOid, a, b) }
}

/// The two writes of a quiet charge, or `None` when the full path must decide (nothing
/// written then; the meter's row lock may be held, as the full path takes it anyway).
unsafe fn quiet_charge(c: &Charge) -> Option<ResultRow<8>> {
    unsafe {
        if pg_sys::IsInParallelMode() {
            return None;
        }
        let now = metering_pg::now_micros(false);
        let meters_oid = catalog::oid(c"meters");
        let rel = pg_sys::table_open(meters_oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let result = (|| {
            if !is_heap(rel) || !only_fk_check_triggers(rel) || !constraints_are(rel, &METER_CHECKS)
            {
                return None;
            }
            let layout = meter_layout(rel)?;
            // As SPI does for each statement of a volatile function: see everything
            // done so far, this function's earlier calls included.
            pg_sys::CommandCounterIncrement();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            pg_sys::UpdateActiveSnapshotCommandId();
            let out = write(c, rel, &layout, now);
            pg_sys::PopActiveSnapshot();
            if out.is_some() {
                pg_sys::CommandCounterIncrement();
            }
            out
        })();
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        result
    }
}

/// Update the key's meter row as UPDATE does and insert the usage row. The active
/// snapshot is the one pushed by [`quiet_charge`]. The row version the snapshot sees
/// is updated at once; when a concurrent transaction changed it first, READ COMMITTED
/// locks the newest version and decides again on it (the executor's EvalPlanQual),
/// REPEATABLE READ and SERIALIZABLE raise 40001.
unsafe fn write(
    c: &Charge,
    rel: pg_sys::Relation,
    layout: &Layout,
    now: i64,
) -> Option<ResultRow<8>> {
    unsafe {
        let snapshot = pg_sys::GetActiveSnapshot();
        let cid = pg_sys::GetCurrentCommandId(true);
        let tupdesc = (*rel).rd_att;
        let m = &layout.meter;

        // Where the usage row goes, settled before anything is written.
        let (part, pos) = usage_partition(now)?;
        let usage = usage_values(c, now, part, &pos);
        let Some(mut usage) = usage else {
            pg_sys::table_close(part, pg_sys::NoLock as pg_sys::LOCKMODE);
            return None;
        };

        // The meter row version the snapshot sees, by primary key.
        let mut skey = pg_sys::ScanKeyData::default();
        pg_sys::ScanKeyInit(
            &mut skey,
            (m[0] + 1) as pg_sys::AttrNumber,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_UUID_EQ),
            c.key_id,
        );
        let scan = pg_sys::systable_beginscan(
            rel,
            catalog::oid(c"meters_pkey"),
            true,
            snapshot,
            1,
            &mut skey,
        );
        let found = pg_sys::systable_getnext(scan);
        let mut current = if found.is_null() {
            None
        } else {
            Some(pg_sys::heap_copytuple(found))
        };
        pg_sys::systable_endscan(scan);

        let xact_snapshot = pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32;
        let mut locked = false;
        let mut out = ResultRow::<8>::default();
        let mut tmfd = pg_sys::TM_FailureData::default();
        let newslot = pg_sys::MakeSingleTupleTableSlot(tupdesc, &pg_sys::TTSOpsHeapTuple);
        let written = loop {
            let Some(tuple) = current else { break false };
            out = ResultRow::default();
            let mut otid = (*tuple).t_self;
            let (mut values, mut nulls) = deform(tuple, tupdesc);
            if nulls[m[M_KEY]]
                || !quiet(c.amount, now, &values, &nulls, m)
                || tenant_metered(values[m[M_TENANT]])
            {
                break false;
            }
            usage[1] = Some(values[m[M_TENANT]]);
            values[m[M_DAY_SPENT]] = numeric(numeric_add, values[m[M_DAY_SPENT]], c.cost);
            values[m[M_MONTH_SPENT]] = numeric(numeric_add, values[m[M_MONTH_SPENT]], c.cost);
            if !nulls[m[M_CREDITS]] {
                values[m[M_CREDITS]] = numeric(numeric_sub, values[m[M_CREDITS]], c.cost);
            }
            let remaining = |cap: usize, spent: usize| {
                (!nulls[m[cap]]).then(|| numeric(numeric_sub, values[m[cap]], values[m[spent]]))
            };
            out.set(2, remaining(M_DAILY_CAP, M_DAY_SPENT));
            out.set(3, remaining(M_MONTHLY_CAP, M_MONTH_SPENT));
            out.set(4, (!nulls[m[M_CREDITS]]).then(|| values[m[M_CREDITS]]));
            let newtuple =
                pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::ExecStoreHeapTuple(newtuple, newslot, true);
            let mut lockmode = pg_sys::LockTupleMode::LockTupleNoKeyExclusive;
            let (updated, index_update) = crate::pg_compat::tuple_update(
                rel,
                &mut otid,
                newslot,
                cid,
                snapshot,
                &mut tmfd,
                &mut lockmode,
            );
            match updated {
                pg_sys::TM_Result::TM_Ok => {
                    match index_update {
                        crate::pg_compat::IndexUpdate::None => {}
                        crate::pg_compat::IndexUpdate::All => {
                            insert_index_entries(rel, newslot, false)
                        }
                        crate::pg_compat::IndexUpdate::Summarizing => {
                            insert_index_entries(rel, newslot, true)
                        }
                    }
                    break true;
                }
                pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted if xact_snapshot => {
                    raise(
                        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                        "could not serialize access due to concurrent update",
                        "",
                    )
                }
                pg_sys::TM_Result::TM_Updated if !locked => {
                    // Lock the newest version and decide again on it.
                    locked = true;
                    current = lock_newest(rel, otid, snapshot, cid);
                }
                pg_sys::TM_Result::TM_Deleted => break false,
                // Changed by this transaction in this very command, or (after the lock)
                // anything else: the full path decides.
                _ => break false,
            }
        };
        pg_sys::ExecDropSingleTupleTableSlot(newslot);
        if !written {
            pg_sys::table_close(part, pg_sys::NoLock as pg_sys::LOCKMODE);
            return None;
        }
        let event_id = Uuid::from_bytes(crate::audit::uuid_v4(rand::random()));
        usage[0] = event_id.into_datum();
        insert_usage(part, &pos, &usage, cid);
        pg_sys::table_close(part, pg_sys::NoLock as pg_sys::LOCKMODE);
        out.set(0, true.into_datum());
        out.set(1, "ok".into_datum());
        crate::metrics_pg::count_charge("ok");
        out.set(6, event_id.into_datum());
        Some(out)
    }
}

/// The newest version of the row at `tid`, locked as UPDATE locks it (FOR NO KEY
/// UPDATE, waiting for other lockers): a copy, or `None` when the row is gone.
unsafe fn lock_newest(
    rel: pg_sys::Relation,
    mut tid: pg_sys::ItemPointerData,
    snapshot: pg_sys::Snapshot,
    cid: pg_sys::CommandId,
) -> Option<pg_sys::HeapTuple> {
    unsafe {
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let mut tmfd = pg_sys::TM_FailureData::default();
        let am = &*(*rel).rd_tableam;
        let locked = am.tuple_lock.expect("tuple_lock")(
            rel,
            &mut tid,
            snapshot,
            slot,
            cid,
            pg_sys::LockTupleMode::LockTupleNoKeyExclusive,
            pg_sys::LockWaitPolicy::LockWaitBlock,
            (pg_sys::TUPLE_LOCK_FLAG_LOCK_UPDATE_IN_PROGRESS
                | pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION) as u8,
            &mut tmfd,
        );
        let newest = (locked == pg_sys::TM_Result::TM_Ok).then(|| {
            let mut should_free = false;
            let t = pg_sys::ExecFetchSlotHeapTuple(slot, false, &mut should_free);
            let copy = pg_sys::heap_copytuple(t);
            (*copy).t_self = (*slot).tts_tid;
            copy
        });
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        newest
    }
}

/// Index entries for a tuple just written to `rel` (its TID in `slot`), as the
/// executor makes them: expressions, partial indexes and unique checks included.
/// `only_summarizing`: a HOT update that needs entries in summarizing indexes only.
unsafe fn insert_index_entries(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    only_summarizing: bool,
) {
    unsafe {
        let estate = pg_sys::CreateExecutorState();
        let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
            .cast::<pg_sys::ResultRelInfo>();
        pg_sys::InitResultRelInfo(rri, rel, 0, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(rri, false);
        let recheck = crate::pg_compat::insert_index_tuples(rri, slot, estate, only_summarizing);
        pg_sys::list_free(recheck);
        pg_sys::ExecCloseIndices(rri);
        pg_sys::FreeExecutorState(estate);
    }
}

/// The leaf partition of `usage_events` for `occurred_at`, opened with
/// RowExclusiveLock, with its column positions; `None` (nothing locked beyond the
/// parent) when the full path must insert.
unsafe fn usage_partition(occurred_at: i64) -> Option<(pg_sys::Relation, [usize; 13])> {
    unsafe {
        let parent = pg_sys::table_open(
            catalog::oid(c"usage_events"),
            pg_sys::RowExclusiveLock as pg_sys::LOCKMODE,
        );
        let found = (|| {
            if (*(*parent).rd_rel).relkind != pg_sys::RELKIND_PARTITIONED_TABLE as core::ffi::c_char
                || !(*parent).trigdesc.is_null()
            {
                return None;
            }
            let checked = (catalog::generation(), (*parent).rd_id);
            if PARTITION_KEY.with(|k| k.get()) != Some(checked) {
                let columns = pg_sys::pg_get_partkeydef_columns((*parent).rd_id, false);
                if CStr::from_ptr(columns).to_bytes() != b"occurred_at" {
                    return None;
                }
                PARTITION_KEY.with(|k| k.set(Some(checked)));
            }
            let desc = pg_sys::RelationGetPartitionDesc(parent, true);
            if desc.is_null() || (*desc).detached_exist || (*desc).boundinfo.is_null() {
                return None;
            }
            let bounds = (*desc).boundinfo;
            if !crate::pg_compat::is_range(bounds) {
                return None;
            }
            let mut cmp = pg_sys::FmgrInfo::default();
            pg_sys::fmgr_info(pg_sys::Oid::from(pg_sys::F_TIMESTAMPTZ_CMP), &mut cmp);
            let mut collation = pg_sys::InvalidOid;
            let mut value = pg_sys::Datum::from(occurred_at);
            let mut equal = false;
            let offset = pg_sys::partition_range_datum_bsearch(
                &mut cmp,
                &mut collation,
                bounds,
                1,
                &mut value,
                &mut equal,
            );
            let index = *(*bounds).indexes.offset((offset + 1) as isize);
            // No partition for it (the default one included): the full path inserts,
            // or raises as SQL would. The default partition's own constraint is checked
            // by the executor, which the full path runs.
            if index < 0 {
                return None;
            }
            let index = index as usize;
            if !*(*desc).is_leaf.add(index) {
                return None;
            }
            Some(*(*desc).oids.add(index))
        })();
        pg_sys::table_close(parent, pg_sys::NoLock as pg_sys::LOCKMODE);
        let oid = found?;
        let part = pg_sys::table_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let generation = catalog::generation();
        let cached = PARTITIONS.with(|p| {
            p.borrow()
                .iter()
                .find(|(g, o, _)| *g == generation && *o == oid)
                .map(|(_, _, pos)| *pos)
        });
        let pos = match cached {
            Some(pos) => Some(pos),
            None => {
                let ok = (*(*part).rd_rel).relkind == pg_sys::RELKIND_RELATION as core::ffi::c_char
                    && is_heap(part)
                    && (*part).trigdesc.is_null()
                    && constraints_are(part, &USAGE_CHECKS);
                let pos = if ok {
                    positions((*part).rd_att, &USAGE, true)
                } else {
                    None
                };
                if let Some(pos) = pos {
                    PARTITIONS.with(|p| {
                        let mut p = p.borrow_mut();
                        p.retain(|(g, _, _)| *g == generation);
                        p.push((generation, oid, pos));
                    });
                }
                pos
            }
        };
        match pos {
            Some(pos) => Some((part, pos)),
            None => {
                pg_sys::table_close(part, pg_sys::NoLock as pg_sys::LOCKMODE);
                None
            }
        }
    }
}

/// The usage row's values in [`USAGE`] order (id and tenant filled in later), or
/// `None` when a NOT NULL of the partition (one the user added) would refuse them: the
/// full path raises it as SQL does.
unsafe fn usage_values(
    c: &Charge,
    now: i64,
    part: pg_sys::Relation,
    pos: &[usize; 13],
) -> Option<[Option<pg_sys::Datum>; 13]> {
    let fields = [
        None,
        None,
        Some(c.key_id),
        Some(c.scope),
        c.provider,
        c.model,
        c.key_source,
        Some(c.units),
        Some(c.cost),
        None,
        None,
        c.metadata,
        Some(pg_sys::Datum::from(now)),
    ];
    unsafe {
        let tupdesc = (*part).rd_att;
        let attrs = crate::pg_compat::attrs(tupdesc);
        // id and tenant_id are always set.
        let refused = (2..13).any(|i| fields[i].is_none() && attrs[pos[i]].attnotnull);
        (!refused).then_some(fields)
    }
}

/// Insert the usage row into its partition, with its index entries.
unsafe fn insert_usage(
    part: pg_sys::Relation,
    pos: &[usize; 13],
    fields: &[Option<pg_sys::Datum>; 13],
    cid: pg_sys::CommandId,
) {
    unsafe {
        let tupdesc = (*part).rd_att;
        let natts = (*tupdesc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        for (i, f) in fields.iter().enumerate() {
            if let Some(d) = f {
                values[pos[i]] = *d;
                nulls[pos[i]] = false;
            }
        }
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        let slot = pg_sys::MakeSingleTupleTableSlot(tupdesc, &pg_sys::TTSOpsHeapTuple);
        pg_sys::ExecStoreHeapTuple(tuple, slot, true);
        let am = &*(*part).rd_tableam;
        am.tuple_insert.expect("tuple_insert")(part, slot, cid, 0, std::ptr::null_mut());
        insert_index_entries(part, slot, false);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
    }
}
