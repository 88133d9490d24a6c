//! Tenant context, the pgrx layer over [`crate::tenancy`]: who is calling, for which
//! tenant, with which member role; the API key a request authenticated with; the
//! route table lookup of the PostgREST pre-request hook.
//!
//! The tenant of a request comes, in order, from an API key validated earlier in the
//! same transaction (kept in backend memory, tied to the transaction: no setting can
//! forge it), the setting `api_key_mgmt.tenant_id`, or a JWT claim. A tenant named by
//! the setting or a claim counts only when the caller is a member of it — except for
//! the trusted backend role `api_key_mgmt_service` (and platform administrators),
//! whose setting is taken as is.

use crate::catalog::{self, Key};
use crate::errors::raise;
use crate::tenancy::{self, Role};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{IntoDatum, PgSqlErrorCode, Uuid};
use serde_json::Value;
use std::cell::Cell;
use std::ffi::CStr;

/// (local transaction id, subtransaction that set it, tenant, key) of the API key a
/// transaction authenticated with. Rolling back that subtransaction (`ROLLBACK TO
/// SAVEPOINT`, an exception block) forgets it, as it rolls back the request's headers.
type RequestKey = (u32, pg_sys::SubTransactionId, [u8; 16], [u8; 16]);

thread_local! {
    static REQUEST_KEY: Cell<Option<RequestKey>> = const { Cell::new(None) };
    /// Set only while the audit retention function deletes rows.
    static RETENTION: Cell<Option<u32>> = const { Cell::new(None) };
}

fn lxid() -> u32 {
    crate::pg_compat::local_xid()
}

pub(crate) fn setting(name: &CStr) -> Option<String> {
    unsafe {
        let p = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        if p.is_null() {
            return None;
        }
        let s = CStr::from_ptr(p).to_string_lossy().into_owned();
        (!s.is_empty()).then_some(s)
    }
}

fn claims() -> Option<Value> {
    setting(c"request.jwt.claims").and_then(|s| serde_json::from_str(&s).ok())
}

/// The role on whose behalf the current statement runs: the role that called the
/// extension's function (see [`crate::caller`]), never the session's role.
fn invoker() -> pg_sys::Oid {
    crate::caller::invoker()
}

fn invoker_has(role: &CStr) -> bool {
    unsafe {
        let oid = pg_sys::get_role_oid(role.as_ptr(), true);
        oid != pg_sys::InvalidOid && pg_sys::has_privs_of_role(invoker(), oid)
    }
}

/// Platform administrators (and superusers) may act on every tenant.
fn is_platform_admin() -> bool {
    invoker_has(c"api_key_mgmt_admin")
}

fn is_service() -> bool {
    invoker_has(c"api_key_mgmt_service")
}

/// The caller's user id: the JWT `sub` claim, else the setting `api_key_mgmt.user_id`.
fn user_id_from(claims: Option<&Value>) -> Option<String> {
    claims
        .and_then(tenancy::subject)
        .map(str::to_owned)
        .or_else(|| setting(c"api_key_mgmt.user_id"))
}

/// The member role of `user` in `tenant` (direct probe of tenant_members' primary key).
fn member_role(tenant: [u8; 16], user: &str) -> Option<Role> {
    let tenant = Uuid::from_bytes(tenant);
    let row = catalog::lookup(
        c"tenant_members",
        c"tenant_members_pkey",
        &[
            Key {
                column: "tenant_id",
                value: tenant.into_datum(),
                eq_proc: pg_sys::F_UUID_EQ,
            },
            Key {
                column: "user_id",
                value: user.into_datum(),
                eq_proc: pg_sys::F_TEXTEQ,
            },
        ],
    )?;
    Role::parse(&row.get::<String>("role")?)
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = tenancy::canonical_uuid(s)?.replace('-', "");
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Where the tenant context came from, and what it may do there.
struct Context {
    tenant: [u8; 16],
    /// `None`: API-key context, which identifies the tenant but manages nothing.
    role: Option<Role>,
}

fn context() -> Option<Context> {
    if let Some((x, _, tenant, _)) = REQUEST_KEY.with(Cell::get) {
        if x == lxid() {
            return Some(Context { tenant, role: None });
        }
    }
    // The claims are parsed once: they name the user and, perhaps, the tenant.
    let claims = claims();
    let user = user_id_from(claims.as_ref());
    if let Some(t) = setting(c"api_key_mgmt.tenant_id").and_then(|s| parse_uuid(&s)) {
        if is_service() || is_platform_admin() {
            return Some(Context {
                tenant: t,
                role: Some(Role::Admin),
            });
        }
        if let Some(role) = user.as_deref().and_then(|u| member_role(t, u)) {
            return Some(Context {
                tenant: t,
                role: Some(role),
            });
        }
        return None;
    }
    let paths = crate::gucs::tenant_claim_paths();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let t = claims
        .as_ref()
        .and_then(|c| tenancy::tenant_from_claims(c, &paths))
        .and_then(|s| parse_uuid(&s))?;
    let role = member_role(t, user.as_deref()?)?;
    Some(Context {
        tenant: t,
        role: Some(role),
    })
}

/// For views that span tenants (failure counters): `None` for platform administrators
/// (everything), the tenant for its admins and owners; 42501 for anyone else.
pub fn visible_tenant_for_admin_views() -> Option<[u8; 16]> {
    if is_platform_admin() {
        return None;
    }
    match context() {
        Some(Context {
            tenant,
            role: Some(r),
        }) if r >= Role::Admin => Some(tenant),
        _ => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "this requires the tenant role admin or higher",
            "",
        ),
    }
}

/// `current_tenant_id() RETURNS uuid` — the tenant of the current request, or NULL.
#[pg_extern(sql = false, stable, parallel_safe)]
fn current_tenant_id() -> Option<Uuid> {
    let c = context()?;
    Some(Uuid::from_bytes(c.tenant))
}

/// `current_tenant_role() RETURNS text` — the caller's role in that tenant: `owner`,
/// `admin` (also the service role), `member`, `viewer`; NULL without one (an API-key
/// context names a tenant but holds no member role).
#[pg_extern(sql = false, stable, parallel_safe)]
fn current_tenant_role() -> Option<&'static str> {
    context()?.role.map(Role::as_str)
}

/// `current_user_id() RETURNS text` — the JWT `sub`, else the setting `api_key_mgmt.user_id`.
#[pg_extern(sql = false, stable, parallel_safe)]
pub(crate) fn current_user_id() -> Option<String> {
    user_id_from(claims().as_ref())
}

/// `current_key_id() RETURNS uuid` — the API key the current transaction authenticated with.
#[pg_extern(sql = false, stable, parallel_safe)]
fn current_key_id() -> Option<Uuid> {
    let (x, _, _, key) = REQUEST_KEY.with(Cell::get)?;
    (x == lxid()).then(|| Uuid::from_bytes(key))
}

/// `set_request_key(tenant_id uuid, key_id uuid) RETURNS void` — internal: record the
/// key a request authenticated with, for the rest of the transaction.
#[pg_extern(sql = false)]
fn set_request_key(tenant_id: Uuid, key_id: Uuid) {
    if !SUBXACT_CALLBACK.with(Cell::get) {
        // SAFETY: registers a plain function for the life of the backend (never
        // unregistered; the library is not unloaded).
        unsafe { pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut()) };
        SUBXACT_CALLBACK.with(|c| c.set(true));
    }
    // SAFETY: reads backend-local transaction state.
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    REQUEST_KEY.with(|c| {
        c.set(Some((
            lxid(),
            sub,
            *tenant_id.as_bytes(),
            *key_id.as_bytes(),
        )))
    });
}

thread_local! {
    static SUBXACT_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Subtransaction ends: a request key set in the aborted subtransaction (or one below
/// it: their ids are larger) is forgotten; one set in a committed subtransaction now
/// belongs to its parent.
#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    REQUEST_KEY.with(|c| {
        let Some((x, set_in, tenant, key)) = c.get() else {
            return;
        };
        if set_in < sub {
            return;
        }
        match event {
            pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => c.set(None),
            pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => c.set(Some((x, parent, tenant, key))),
            _ => {}
        }
    });
}

/// `authorize(tenant_id uuid, need text) RETURNS text` — internal: raise 42501 unless
/// the caller may act on `tenant_id` with at least role `need` (`viewer`, `member`,
/// `admin`, `owner`, or `platform` for platform administrators only). Returns the
/// caller's standing: `platform` or its tenant role.
#[pg_extern(sql = false)]
fn authorize(tenant_id: Option<Uuid>, need: &str) -> &'static str {
    if is_platform_admin() {
        return "platform";
    }
    let need_platform = need == "platform";
    // The trusted backend role acts as an administrator of every tenant.
    if is_service() && !need_platform && Role::parse(need).is_some_and(|r| r <= Role::Admin) {
        return "admin";
    }
    let deny =
        |msg: String| -> ! { raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, msg, "") };
    let Some(need_role) = Role::parse(need) else {
        deny("this requires the api_key_mgmt_admin role".into())
    };
    let Some(tenant_id) = tenant_id else {
        deny("platform-wide objects require the api_key_mgmt_admin role".into())
    };
    let Some(ctx) = context() else {
        deny("no tenant context: authenticate as a member of the tenant".into())
    };
    if ctx.tenant != *tenant_id.as_bytes() {
        deny(format!("permission denied for tenant {tenant_id}"));
    }
    match ctx.role {
        Some(r) if r >= need_role => r.as_str(),
        _ => deny(format!("this requires the tenant role {need} or higher")),
    }
}

/// `invoker_name() RETURNS text` — internal: the database role acting (see `invoker`).
#[pg_extern(sql = false, stable)]
pub(crate) fn invoker_name() -> String {
    unsafe {
        let p = pg_sys::GetUserNameFromId(invoker(), true);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// `set_audit_retention(on boolean) RETURNS void` — internal: allow (this transaction)
/// the audit log's DELETEs done by the retention function.
#[pg_extern(sql = false)]
fn set_audit_retention(on: bool) {
    RETENTION.with(|c| c.set(on.then(lxid)));
}

/// `audit_retention_active() RETURNS boolean` — internal, for the append-only trigger.
#[pg_extern(sql = false, stable)]
fn audit_retention_active() -> bool {
    RETENTION.with(Cell::get) == Some(lxid())
}

/// `route_scope(method text, path text) RETURNS TABLE (found boolean, scope text)` —
/// internal: the route table's answer for a request (`found` false: no route matches).
#[pg_extern(sql = false, stable)]
fn route_scope(
    method: &str,
    path: &str,
) -> TableIterator<'static, (name!(found, bool), name!(scope, Option<String>))> {
    let rows = catalog::scan_all(c"route_scopes");
    let routes: Vec<tenancy::Route> = rows
        .iter()
        .map(|r| tenancy::Route {
            method: r.get::<String>("method").unwrap_or_default(),
            path_pattern: r.get::<String>("path_pattern").unwrap_or_default(),
        })
        .collect();
    let answer = match tenancy::best_route(&routes, method, path) {
        Some(i) => (true, rows[i].get::<String>("scope")),
        None => (false, None),
    };
    TableIterator::once(answer)
}

/// `request_api_key(headers jsonb, header text) RETURNS text` — internal: the key of a
/// PostgREST request (configured header, else a non-JWT bearer token).
#[pg_extern(sql = false, immutable)]
fn request_api_key(headers: pgrx::JsonB, header: &str) -> Option<String> {
    tenancy::api_key_from_headers(&headers.0, header)
}

/// `json_object_or_null(value text) RETURNS jsonb` — internal: `value` parsed as a JSON
/// object, NULL for anything else (no error, so callers need no subtransaction).
#[pg_extern(sql = false, immutable, parallel_safe)]
fn json_object_or_null(value: Option<&str>) -> Option<pgrx::JsonB> {
    match serde_json::from_str::<Value>(value?) {
        Ok(v @ Value::Object(_)) => Some(pgrx::JsonB(v)),
        _ => None,
    }
}
