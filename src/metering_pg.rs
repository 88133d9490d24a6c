//! Metering, pgrx layer: the clock, the rate-limit entry points for the SQL in
//! `sql/007_metering.sql`, and what `validate_api_key` reports about caps, credits and
//! rate limits (read from `api_key_mgmt.meters` by direct index probes, no write).

use crate::catalog::{self, Row};
use crate::errors::{raise, required};
use crate::metering::{self, Meter, Money, Period, Refill, Remaining};
use crate::ratelimit::{self, Decision, Limit};
use crate::ratelimit_pg;
use crate::validation::{Code, Micros};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::{AnyNumeric, Uuid};
use std::str::FromStr;

/// "Now" for metering: the clock override (tests) or, for periods, the transaction start
/// (as SQL's `now()`), for rate limits the current time (as `clock_timestamp()`).
pub fn now_micros(real_time: bool) -> Micros {
    if let Some(s) = crate::gucs::clock_override() {
        match TimestampWithTimeZone::from_str(&s) {
            Ok(t) => return t.into_inner(),
            Err(_) => {
                pgrx::ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_INVALID_DATETIME_FORMAT,
                    "api_key_mgmt.clock_override is not a timestamptz"
                );
            }
        }
    }
    unsafe {
        if real_time {
            pg_sys::GetCurrentTimestamp()
        } else {
            pg_sys::GetCurrentTransactionStartTimestamp()
        }
    }
}

fn ts(micros: Micros) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(micros).expect("finite timestamp")
}

/// An interval of `micros` microseconds, whole days split off as SQL's
/// `timestamptz - timestamptz` does (`26 days 12:00:00`, not `636:00:00`).
pub fn interval(micros: Micros) -> Interval {
    const DAY: i64 = 86_400_000_000;
    Interval::new(0, (micros / DAY) as i32, micros % DAY).expect("interval")
}

/// `api_key_mgmt_internal.meter_now() RETURNS timestamptz` — now for periods.
#[pg_extern(sql = false, stable, parallel_safe)]
fn meter_now() -> TimestampWithTimeZone {
    ts(now_micros(false))
}

/// `api_key_mgmt_internal.limiter_now() RETURNS timestamptz` — now for rate limits.
#[pg_extern(sql = false, volatile, parallel_safe)]
fn limiter_now() -> TimestampWithTimeZone {
    ts(now_micros(true))
}

/// `api_key_mgmt.rate_limit_mode() RETURNS text` — `shared_memory` or `table`.
#[pg_extern(sql = false, stable, parallel_safe)]
fn rate_limit_mode() -> &'static str {
    if ratelimit_pg::active() {
        "shared_memory"
    } else {
        "table"
    }
}

/// `api_key_mgmt_internal.rate_limit_capacity() RETURNS integer` — slots (0: table mode).
#[pg_extern(sql = false, stable, parallel_safe)]
fn rate_limit_capacity() -> i64 {
    ratelimit_pg::capacity() as i64
}

fn limit_of(period_us: i64, max_requests: i32, burst: Option<i32>) -> Limit {
    match Limit::new(max_requests as i64, period_us, burst.map(i64::from)) {
        Some(l) => l,
        None => {
            pgrx::ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "a rate limit needs positive max_requests, period and burst"
            );
        }
    }
}

/// `api_key_mgmt_internal.gcra(tat timestamptz, now timestamptz, period_us bigint,
/// max_requests integer, burst integer, cost integer)` — one GCRA step for the table
/// fallback (the caller holds the state row's lock).
#[pg_extern(sql = false, immutable, parallel_safe)]
fn gcra(
    tat: Option<TimestampWithTimeZone>,
    now: TimestampWithTimeZone,
    period_us: i64,
    max_requests: i32,
    burst: Option<i32>,
    cost: i32,
) -> TableIterator<
    'static,
    (
        name!(allowed, bool),
        name!(tat, TimestampWithTimeZone),
        name!(remaining, i64),
        name!(retry_after, Option<Interval>),
    ),
> {
    let d = ratelimit::gcra(
        tat.map(|t| t.into_inner()),
        now.into_inner(),
        limit_of(period_us, max_requests, burst),
        cost as i64,
    );
    TableIterator::once((
        d.allowed,
        ts(d.tat),
        d.remaining,
        d.retry_after.map(interval),
    ))
}

/// `api_key_mgmt_internal.shmem_consume(ids uuid[], period_us bigint[], max_requests
/// integer[], bursts integer[], cost integer)` — all limits admit and consume, or none
/// does; NULL `allowed` when shared memory is not active.
#[pg_extern(sql = false, volatile)]
fn shmem_consume(
    ids: Vec<Uuid>,
    period_us: Vec<i64>,
    max_requests: Vec<i32>,
    bursts: Vec<Option<i32>>,
    cost: i32,
) -> TableIterator<
    'static,
    (
        name!(allowed, Option<bool>),
        name!(remaining, Option<i64>),
        name!(retry_after, Option<Interval>),
    ),
> {
    let n = ids.len();
    if period_us.len() != n || max_requests.len() != n || bursts.len() != n {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "the limit arrays differ in length"
        );
    }
    let reqs: Vec<([u8; 16], Limit)> = (0..n)
        .map(|i| {
            (
                *ids[i].as_bytes(),
                limit_of(period_us[i], max_requests[i], bursts[i]),
            )
        })
        .collect();
    let now = now_micros(true);
    match ratelimit_pg::consume(&reqs, now, cost as i64) {
        None => TableIterator::once((None, None, None)),
        Some((allowed, ds)) => {
            let (remaining, retry) = summarize(&ds);
            TableIterator::once((Some(allowed), remaining, retry.map(interval)))
        }
    }
}

/// The smallest remaining and, over refusals, the longest wait (`None` when some
/// refusal never lifts or nothing was refused).
fn summarize(ds: &[Decision]) -> (Option<i64>, Option<Micros>) {
    let remaining = ds.iter().map(|d| d.remaining).min();
    let refused: Vec<&Decision> = ds.iter().filter(|d| !d.allowed).collect();
    let retry = if refused.is_empty() || refused.iter().any(|d| d.retry_after.is_none()) {
        None
    } else {
        refused.iter().filter_map(|d| d.retry_after).max()
    };
    (remaining, retry)
}

// ---------------------------------------------------------------------------------
// What validate_api_key reports.
// ---------------------------------------------------------------------------------

/// Caps, credits and rate limits of a valid key, as `validate_api_key` reports them.
#[derive(Debug, Default)]
pub struct Report {
    pub code: Option<Code>,
    pub remaining: Remaining,
    pub rate_remaining: Option<i64>,
    pub retry_after: Option<Micros>,
}

/// A `numeric` as [`Money`]; `None` when it is out of range (too large, more than
/// [`metering::SCALE`] decimals, NaN or infinite).
pub(crate) fn to_money(n: &AnyNumeric) -> Option<Money> {
    Money::parse(&n.to_string())
}

fn money(row: &Row, col: &str) -> Option<Money> {
    row.get::<AnyNumeric>(col).map(|n| {
        to_money(&n).unwrap_or_else(|| pgrx::error!("api_key_mgmt: meters.{col} is out of range"))
    })
}

fn micros(row: &Row, col: &str) -> Option<Micros> {
    row.datum(col).map(|d| d.value() as i64)
}

fn meter_of(row: &Row) -> Meter {
    Meter {
        daily_cap: money(row, "daily_cap"),
        monthly_cap: money(row, "monthly_cap"),
        day: Period {
            spent: money(row, "day_spent").unwrap_or_default(),
            ends_at: micros(row, "day_ends_at"),
        },
        month: Period {
            spent: money(row, "month_spent").unwrap_or_default(),
            ends_at: micros(row, "month_ends_at"),
        },
        credits: money(row, "credits"),
        credits_refill: money(row, "credits_refill"),
        refill: row
            .get::<String>("credits_refill_period")
            .and_then(|s| Refill::parse(&s)),
        credits_until: micros(row, "credits_until"),
    }
}

/// The rate limits mirrored into a meter row (`limit_ids`, `limit_period_us`,
/// `limit_max`, `limit_burst`).
fn limits_of(row: &Row, out: &mut Vec<([u8; 16], Limit)>) {
    let Some(ids) = row.get::<Vec<Uuid>>("limit_ids") else {
        return;
    };
    let periods = row.get::<Vec<i64>>("limit_period_us").unwrap_or_default();
    let maxes = row.get::<Vec<i32>>("limit_max").unwrap_or_default();
    let bursts = row
        .get::<Vec<Option<i32>>>("limit_burst")
        .unwrap_or_default();
    for (i, id) in ids.iter().enumerate() {
        let limit = Limit::new(
            maxes.get(i).copied().unwrap_or(0) as i64,
            periods.get(i).copied().unwrap_or(0),
            bursts.get(i).copied().flatten().map(i64::from),
        );
        if let Some(l) = limit {
            out.push((*id.as_bytes(), l));
        }
    }
}

fn meter_row(subject: pg_sys::Datum) -> Option<Row> {
    catalog::lookup_unique(
        c"meters",
        c"meters_pkey",
        "subject_id",
        pg_sys::F_UUID_EQ,
        subject,
    )
}

/// Caps and credits first (a refusal there consumes no rate-limit token), then rate
/// limits: `cost` tokens consumed when shared memory is active; in table mode checked
/// only (validation never writes; `consume_rate_limit` consumes there).
///
/// # Safety
/// `key_id` and `tenant_id` (those that have a meter) must be uuid datums.
pub unsafe fn report(
    key_id: Option<pg_sys::Datum>,
    tenant_id: Option<pg_sys::Datum>,
    cost: i32,
) -> Report {
    // Only keys and tenants flagged `metered` have a meter row to probe.
    let key = key_id.and_then(meter_row);
    let tenant = tenant_id.and_then(meter_row);
    let mut out = Report::default();
    if key.is_none() && tenant.is_none() {
        return out;
    }
    let meters: Vec<Meter> = key.iter().chain(tenant.iter()).map(meter_of).collect();
    let refs: Vec<&Meter> = meters.iter().collect();
    let now = now_micros(false);
    let (code, rem) = metering::decide(&refs, now, Money::ZERO);
    out.remaining = rem;
    if code != Code::Ok {
        out.code = Some(code);
        out.retry_after = rem.retry_at.map(|t| t - now);
        return out;
    }
    let mut reqs = Vec::new();
    for row in key.iter().chain(tenant.iter()) {
        limits_of(row, &mut reqs);
    }
    if reqs.is_empty() {
        return out;
    }
    let now = now_micros(true);
    let decisions = match ratelimit_pg::consume(&reqs, now, cost.max(0) as i64) {
        Some((_, ds)) => ds,
        None => reqs
            .iter()
            .map(|(id, limit)| {
                let tat = catalog::lookup_unique(
                    c"rate_limit_state",
                    c"rate_limit_state_pkey",
                    "limit_id",
                    pg_sys::F_UUID_EQ,
                    Uuid::from_bytes(*id).into_datum().expect("uuid"),
                )
                .and_then(|r| micros(&r, "tat"));
                ratelimit::gcra(tat, now, *limit, 0)
            })
            .collect(),
    };
    let (remaining, retry) = summarize(&decisions);
    out.rate_remaining = remaining;
    if decisions.iter().any(|d| !d.allowed) {
        out.code = Some(Code::RateLimited);
        out.retry_after = retry;
    }
    out
}

finfo_v1!(pg_finfo_akm_meter_row_valid);

/// `meter_row_valid(m api_key_mgmt.meters) RETURNS boolean` — the `meters` row
/// constraint in one call: caps and refill not negative, a refill period of `day` or
/// `month`, refill and period set together and only with credits, and the subject is
/// the key (key meters) or the tenant. One CHECK on the whole row instead of seven: the
/// executor rebuilds every CHECK expression of a table from its stored text on each
/// UPDATE or INSERT statement, and that text grows with every column it names.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn akm_meter_row_valid(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let Some(row) = pgrx::fcinfo::pg_getarg_datum(fcinfo, 0) else {
            return pg_sys::Datum::from(true);
        };
        let row = pg_sys::pg_detoast_datum(row.cast_mut_ptr()) as pg_sys::HeapTupleHeader;
        let field = |name: &std::ffi::CStr| {
            let mut isnull = false;
            let d = pg_sys::GetAttributeByName(row, name.as_ptr(), &mut isnull);
            (d, isnull)
        };
        let uuid = |name| {
            let (d, n) = field(name);
            Uuid::from_datum(d, n)
        };
        let numeric = |name| {
            let (d, n) = field(name);
            AnyNumeric::from_datum(d, n)
        };
        let (period, n) = field(c"credits_refill_period");
        let period = String::from_datum(period, n);
        pg_sys::Datum::from(meter_row_ok(
            uuid(c"subject_id"),
            uuid(c"tenant_id"),
            uuid(c"key_id"),
            numeric(c"daily_cap"),
            numeric(c"monthly_cap"),
            numeric(c"credits"),
            numeric(c"credits_refill"),
            period.as_deref(),
        ))
    }
}

#[allow(clippy::too_many_arguments)]
fn meter_row_ok(
    subject_id: Option<Uuid>,
    tenant_id: Option<Uuid>,
    key_id: Option<Uuid>,
    daily_cap: Option<AnyNumeric>,
    monthly_cap: Option<AnyNumeric>,
    credits: Option<AnyNumeric>,
    credits_refill: Option<AnyNumeric>,
    credits_refill_period: Option<&str>,
) -> bool {
    let zero = AnyNumeric::from(0);
    let non_negative = |v: &Option<AnyNumeric>| v.as_ref().is_none_or(|x| *x >= zero);
    non_negative(&daily_cap)
        && non_negative(&monthly_cap)
        && non_negative(&credits_refill)
        && credits_refill_period.is_none_or(|p| p == "day" || p == "month")
        && subject_id == key_id.or(tenant_id)
        && credits_refill.is_none() == credits_refill_period.is_none()
        && (credits_refill.is_none() || credits.is_some())
}

/// `check_amount(what text, value numeric, nullable boolean) RETURNS void`
///
/// Money is `numeric`, 0 <= value < 10^15, at most 9 decimal places (trailing zeros
/// aside). 22004 NULL (unless `nullable`), 22023 otherwise. Rust rather than plpgsql:
/// every charge runs it.
#[pg_extern(sql = false, immutable, parallel_safe)]
fn check_amount(what: Option<&str>, value: Option<AnyNumeric>, nullable: Option<bool>) {
    checked_amount(what.unwrap_or("amount"), value, nullable == Some(true));
}

/// [`check_amount`], returning the amount (`None` for an allowed NULL).
fn checked_amount(what: &str, value: Option<AnyNumeric>, nullable: bool) -> Option<Money> {
    match value {
        None if !nullable => raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{what} must not be NULL"),
            "",
        ),
        None => None,
        Some(v) => match to_money(&v) {
            Some(m) if m >= Money::ZERO => Some(m),
            _ => raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{what} must be a number from 0 to 999999999999999.999999999 with at most 9 decimal places"),
                "",
            ),
        },
    }
}

/// `check_charge(key_id uuid, scope text, what text, cost numeric) RETURNS void`
///
/// The common argument checks of `charge_api_key` and `reserve_budget`.
#[pg_extern(sql = false, immutable, parallel_safe)]
fn check_charge(
    key_id: Option<Uuid>,
    scope: Option<&str>,
    what: Option<&str>,
    cost: Option<AnyNumeric>,
) {
    checked_charge(key_id, scope, what.unwrap_or("amount"), cost);
}

/// [`check_charge`], returning the cost.
fn checked_charge(
    key_id: Option<Uuid>,
    scope: Option<&str>,
    what: &str,
    cost: Option<AnyNumeric>,
) -> Money {
    required(key_id, "key_id");
    let scope = required(scope, "scope");
    if !metering::charge_scope_ok(scope) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "scope must be a concrete area:action",
            "",
        );
    }
    checked_amount(what, cost, false).expect("not nullable")
}

/// `check_usage(units bigint, provider text, model text, metadata jsonb, key_source text) RETURNS void`
///
/// What a usage row records, checked the same way by `charge_api_key` and
/// `settle_reservation`: units not negative (22004 NULL, 22023), a provider id, a model
/// of 1 to 200 visible ASCII characters, a JSON object as metadata, `byok` or `platform`
/// as key source (22023; NULL allowed except for units).
#[pg_extern(sql = false, immutable, parallel_safe)]
fn check_usage(
    units: Option<i64>,
    provider: Option<&str>,
    model: Option<&str>,
    metadata: Option<pgrx::JsonB>,
    key_source: Option<&str>,
) {
    check_usage_values(
        units,
        provider,
        model,
        metadata.map(|j| j.0.is_object()),
        key_source,
    );
}

/// [`check_usage`] with the metadata given as whether it is a JSON object.
fn check_usage_values(
    units: Option<i64>,
    provider: Option<&str>,
    model: Option<&str>,
    metadata_is_object: Option<bool>,
    key_source: Option<&str>,
) {
    let bad = |m: String| raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, m, "");
    match units {
        None => raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "units must be a non-negative number",
            "",
        ),
        Some(u) if u < 0 => bad("units must be a non-negative number".into()),
        _ => {}
    }
    // Not echoed: a value that is not a provider id may be anything, a secret included.
    if provider.is_some_and(|p| !crate::scopes::valid_provider(p)) {
        bad("provider must be a provider id (lowercase letters, digits, _ . -)".into());
    }
    if model.is_some_and(|m| !crate::scopes::valid_model(m)) {
        bad("model must be 1 to 200 visible ASCII characters".into());
    }
    if metadata_is_object == Some(false) {
        bad("metadata must be a JSON object".into());
    }
    if key_source.is_some_and(|k| k != "byok" && k != "platform") {
        bad("key_source must be byok or platform".into());
    }
}

/// The argument checks of `charge_api_key`, in the order of its plpgsql full path:
/// `check_charge`, `check_usage`, then the idempotency key (22023 unless 1 to 200
/// characters) and `rate_cost` (22004 NULL, 22023 outside 0 to 1000000). Returns the
/// cost.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_charge_args(
    key_id: Option<Uuid>,
    scope: Option<&str>,
    cost: Option<AnyNumeric>,
    units: Option<i64>,
    provider: Option<&str>,
    model: Option<&str>,
    idempotency_key: Option<&str>,
    metadata_is_object: Option<bool>,
    key_source: Option<&str>,
    rate_cost: Option<i32>,
) -> Money {
    let cost = checked_charge(key_id, scope, "cost", cost);
    check_usage_values(units, provider, model, metadata_is_object, key_source);
    if idempotency_key.is_some_and(|k| !(1..=200).contains(&k.chars().count())) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "idempotency_key must be 1 to 200 characters long",
            "",
        );
    }
    match rate_cost {
        None => raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "rate_cost must not be NULL",
            "",
        ),
        Some(r) if !(0..=1_000_000).contains(&r) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "rate_cost must be 0 to 1000000",
            "",
        ),
        _ => {}
    }
    cost
}
