//! `validate_api_key`: the SQL entry point of the hot path.
//!
//! ```sql
//! validate_api_key(api_key text, scope text, provider text, model text, cost integer)
//!     RETURNS key_validation
//! ```
//!
//! Flow: bounds and shape of the key (no table read for a malformed or mistyped key) →
//! SHA-256 → unique-index probe on `api_keys.key_hash` → the tenant's facts (cached per
//! backend while their row version is the visible one, else a probe of `tenants` by id) →
//! [`crate::validation::decide`] → for a valid key, metering ([`crate::metering_pg::report`]:
//! caps and credits, then rate limits, consuming `cost` tokens in shared memory) → one
//! composite row. It never raises for a bad key
//! (an ERROR would put the statement, key included, in the server log) and writes
//! nothing, so it runs in READ ONLY transactions and on hot standbys.
//!
//! Written as a raw V1 function so that the result tuple is formed directly from the
//! typcache's tuple descriptor, without per-call type lookups by name.

use crate::catalog::{self, Row};
use crate::keys::{self, Shape};
use crate::result_row::ResultRow;
use crate::validation::{self, Code, KeyFacts, Request, TenantFacts};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::IntoDatum;
use std::cell::RefCell;
use std::rc::Rc;

/// Output columns, in the order of type `api_key_mgmt.key_validation`.
const N_OUT: usize = 14;
const O_VALID: usize = 0;
const O_CODE: usize = 1;
const O_TENANT: usize = 2;
const O_KEY: usize = 3;
const O_ENV: usize = 4;
const O_SCOPES: usize = 5;
const O_EXPIRES: usize = 6;
const O_GRACE: usize = 7;
const O_METADATA: usize = 8;
const O_REM_DAILY: usize = 9;
const O_REM_MONTHLY: usize = 10;
const O_REM_CREDITS: usize = 11;
const O_RATE_REMAINING: usize = 12;
const O_RETRY_AFTER: usize = 13;
/// Largest `cost` (rate-limit tokens) one validation may consume.
const MAX_COST: i32 = 1_000_000;

finfo_v1!(pg_finfo_akm_validate_api_key);

/// `validate_api_key(api_key text, scope text, provider text, model text, cost integer) RETURNS key_validation`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn akm_validate_api_key(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let mut out = Output::default();
        validate_into(fcinfo, &mut out);
        out.count_failure();
        out.into_datum(fcinfo)
    }
}

type Output = ResultRow<N_OUT>;

impl ResultRow<N_OUT> {
    fn code(&mut self, code: Code) {
        crate::metrics_pg::count_validation(code);
        self.set(O_VALID, (code == Code::Ok).into_datum());
        self.set(O_CODE, code.as_str().into_datum());
    }

    /// Count a refusal in shared memory (src/failures_pg.rs): per key when the key was
    /// found, per code otherwise. Nothing for `ok` or `missing`, nor without preload.
    fn count_failure(&self) {
        use pgrx::FromDatum;
        if self.get(O_VALID).is_some_and(|d| d.value() != 0) {
            return;
        }
        let code = self
            .get(O_CODE)
            .and_then(|d| unsafe { String::from_datum(d, false) });
        let Some(code) = code.filter(|c| c != "ok" && c != "missing") else {
            return;
        };
        let uuid = |i| {
            self.get(i)
                .and_then(|d| unsafe { pgrx::Uuid::from_datum(d, false) })
                .map(|u| *u.as_bytes())
        };
        match (uuid(O_KEY), uuid(O_TENANT)) {
            (Some(key), Some(tenant)) => {
                crate::failures_pg::count_key(key, tenant, &code, unsafe {
                    pg_sys::GetCurrentTimestamp()
                })
            }
            _ => crate::failures_pg::count_unknown(&code),
        }
    }
}

/// Fill `out` for the call's arguments. Never raises for anything about the key.
unsafe fn validate_into(fcinfo: pg_sys::FunctionCallInfo, out: &mut Output) {
    unsafe {
        // The cost is the caller's argument, not the key's: out of bounds is an error
        // (22023), checked before anything else.
        let cost = if (*fcinfo).nargs > 4 {
            pgrx::fcinfo::pg_getarg::<i32>(fcinfo, 4).unwrap_or(0)
        } else {
            0
        };
        if !(0..=MAX_COST).contains(&cost) {
            pgrx::ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "cost must be 0 to 1000000"
            );
        }
        // Bound the key before detoasting it: a 1 GB argument costs nothing here.
        let key_arg = pgrx::fcinfo::pg_get_nullable_datum(fcinfo, 0);
        if key_arg.isnull {
            return out.code(Code::Missing);
        }
        let raw_len = pg_sys::toast_raw_datum_size(key_arg.value) - pg_sys::VARHDRSZ;
        if raw_len == 0 {
            return out.code(Code::Missing);
        }
        if raw_len > keys::IMPORTED_MAX_LEN {
            return out.code(Code::Malformed);
        }
        let key: &str = match pgrx::fcinfo::pg_getarg::<&str>(fcinfo, 0) {
            Some(k) => k,
            None => return out.code(Code::Missing),
        };
        let req = Request {
            scope: pgrx::fcinfo::pg_getarg::<&str>(fcinfo, 1),
            provider: pgrx::fcinfo::pg_getarg::<&str>(fcinfo, 2),
            model: pgrx::fcinfo::pg_getarg::<&str>(fcinfo, 3),
        };
        if let Some(code) = validation::check_request(&req) {
            return out.code(code);
        }
        let shape = match keys::native_checksum_ok(key) {
            Some(true) => Shape::Native,
            Some(false) => Shape::BadChecksum,
            None => {
                let prefixes = crate::gucs::import_prefixes();
                let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
                keys::classify(key, &prefixes)
            }
        };
        match shape {
            Shape::Native | Shape::Imported => {}
            Shape::BadChecksum => return out.code(Code::BadChecksum),
            Shape::Malformed => return out.code(Code::Malformed),
        }

        let hash = keys::hash(key);
        let hash_datum = hash.as_slice().into_datum().expect("bytea datum");
        let Some(key_row) = catalog::lookup_unique(
            c"api_keys",
            c"api_keys_key_hash_idx",
            "key_hash",
            pg_sys::F_BYTEAEQ,
            hash_datum,
        ) else {
            return out.code(Code::NotFound);
        };
        let tenant_id = key_row.datum("tenant_id").expect("tenant_id is NOT NULL");
        let tenant = tenant_facts(tenant_id);

        let key_facts = key_facts(&key_row);
        let now = pg_sys::GetCurrentTransactionStartTimestamp();
        let mut code = validation::decide(&key_facts, &tenant.facts, &req, now);
        if code == Code::Ok {
            let key_id = key_row.datum("id").expect("id is NOT NULL");
            let metered = |row: &Row| row.get::<bool>("metered").unwrap_or(false);
            let m = crate::metering_pg::report(
                metered(&key_row).then_some(key_id),
                tenant.metered.then_some(tenant_id),
                cost,
            );
            code = m.code.unwrap_or(Code::Ok);
            let num = |v: Option<crate::metering::Money>| {
                v.and_then(|x| {
                    pgrx::AnyNumeric::try_from(
                        x.max(crate::metering::Money::ZERO).to_string().as_str(),
                    )
                    .ok()
                    .into_datum()
                })
            };
            out.set(O_REM_DAILY, num(m.remaining.daily));
            out.set(O_REM_MONTHLY, num(m.remaining.monthly));
            out.set(O_REM_CREDITS, num(m.remaining.credits));
            out.set(O_RATE_REMAINING, m.rate_remaining.into_datum());
            out.set(
                O_RETRY_AFTER,
                m.retry_after
                    .and_then(|us| crate::metering_pg::interval(us).into_datum()),
            );
        }

        out.code(code);
        out.set(O_TENANT, Some(tenant_id));
        out.set(O_KEY, key_row.datum("id"));
        out.set(O_ENV, key_row.datum("environment"));
        out.set(O_SCOPES, key_row.datum("scopes"));
        out.set(O_EXPIRES, key_row.datum("expires_at"));
        out.set(O_GRACE, key_row.datum("grace_until"));
        out.set(O_METADATA, key_row.datum("metadata"));
    }
}

/// What validation needs of a tenant row.
struct CachedTenant {
    facts: TenantFacts,
    metered: bool,
}

/// Tenants cached per backend before the cache is emptied and filled again.
const TENANT_CACHE: usize = 16384;

thread_local! {
    /// Tenant facts by tenant id, with the row version they were read from.
    static TENANTS: RefCell<catalog::RowCache<[u8; 16], Rc<CachedTenant>>> =
        RefCell::new(catalog::RowCache::new(TENANT_CACHE));
}

/// The facts of the key's tenant as the current snapshot sees them. A cached entry is
/// used only while its row version is still the visible one (one heap fetch by TID);
/// otherwise the tenants' primary key is probed and the entry replaced. So a disabled
/// tenant or a narrowed plan takes effect exactly when a probe would see it.
fn tenant_facts(tenant_id: pg_sys::Datum) -> Rc<CachedTenant> {
    let id: [u8; 16] = unsafe { *tenant_id.cast_mut_ptr::<[u8; 16]>() };
    if let Some((stamp, t)) = TENANTS.with(|c| c.borrow_mut().get(&id)) {
        if catalog::still_visible(c"tenants", stamp, "id", &id) {
            return t;
        }
    }
    let row = catalog::lookup_unique(
        c"tenants",
        c"tenants_pkey",
        "id",
        pg_sys::F_UUID_EQ,
        tenant_id,
    )
    .expect("foreign key guarantees the tenant");
    let fresh = Rc::new(CachedTenant {
        facts: TenantFacts {
            disabled: row.datum("disabled_at").is_some(),
            allowed_scopes: row.get::<Vec<String>>("allowed_scopes").unwrap_or_default(),
        },
        metered: row.get::<bool>("metered").unwrap_or(false),
    });
    TENANTS.with(|c| c.borrow_mut().put(id, row.stamp(), fresh.clone()));
    fresh
}

fn key_facts(row: &Row) -> KeyFacts {
    let ts = |name| row.datum(name).map(|d| d.value() as i64);
    KeyFacts {
        scopes: row.get::<Vec<String>>("scopes").unwrap_or_default(),
        allowed_providers: row.get::<Vec<String>>("allowed_providers"),
        allowed_models: row.get::<Vec<String>>("allowed_models"),
        expires_at: ts("expires_at"),
        revoked_at: ts("revoked_at"),
        grace_until: ts("grace_until"),
    }
}

/// `tenant_has_meter(tenant_id uuid) RETURNS boolean` — internal: whether the tenant has
/// a meter row (its `metered` flag, set in the transaction that creates the row), read
/// through the same per-backend tenant cache as validation. Lets a charge skip looking
/// for a tenant meter that does not exist. Called with the tenant of an existing key
/// meter (a foreign key); NULL: false.
#[pg_extern(sql = false, stable, parallel_safe)]
fn tenant_has_meter(tenant_id: Option<pgrx::Uuid>) -> bool {
    let Some(t) = tenant_id else { return false };
    tenant_metered(t.into_datum().expect("uuid datum"))
}

/// [`tenant_has_meter`] for a uuid datum of an existing tenant.
pub(crate) fn tenant_metered(tenant_id: pg_sys::Datum) -> bool {
    tenant_facts(tenant_id).metered
}
