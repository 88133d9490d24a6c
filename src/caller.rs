//! Who is calling: the role that invoked one of the extension's functions, never the
//! session's role.
//!
//! The management functions must run with the extension owner's rights (they write
//! tables their callers cannot), but inside a `SECURITY DEFINER` function PostgreSQL
//! no longer tells who called it: the current user is the owner, and the session user
//! may be a superuser whose session merely ran someone else's code (a `SECURITY
//! DEFINER` function of a low-privilege role, or an index expression that `ANALYZE`
//! evaluates as the table's owner). So the public functions are not `SECURITY
//! DEFINER` themselves. Each is a C entry point, [`akm_call_as_caller`], that
//!
//! 1. takes the caller's identity while it still runs as the caller (the current
//!    user, see [`invoker`]),
//! 2. pushes it as a [`Frame`] (popped on return and when an error unwinds),
//! 3. calls the function of the same name and argument types in schema
//!    `api_key_mgmt_impl`, which is `SECURITY DEFINER` and granted to no one (the
//!    function manager calls it without an `EXECUTE` check),
//! 4. and returns its result, or re-raises its error exactly as raised (SQLSTATE,
//!    detail, hint, context), except that a constraint violation on the extension's
//!    own tables loses its DETAIL, which would print the stored row.
//!
//! Inside the body, [`invoker`] answers the frame's caller as long as the current user
//! is the role the body runs as; anywhere else it answers the current user. The public
//! entry points are generated from the bodies by `sql/098_entry_points.sql`, so a
//! signature cannot drift between the two.

use crate::errors::raise;
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::ffi::{c_void, CStr};

/// One call of a `SECURITY DEFINER` body: who called it, and the role it runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    caller: pg_sys::Oid,
    runs_as: pg_sys::Oid,
}

thread_local! {
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// The role on whose behalf the current statement runs: inside a body reached through
/// an entry point (the current user is the role that body runs as), the role that
/// called the entry point; everywhere else the current user.
pub fn invoker() -> pg_sys::Oid {
    // SAFETY: GetUserId only reads backend-local state (it asserts a user is set,
    // which is true in any backend running SQL).
    let current = unsafe { pg_sys::GetUserId() };
    let framed = FRAMES.with(|f| match f.borrow().last() {
        Some(frame) if frame.runs_as == current => Some(frame.caller),
        _ => None,
    });
    match framed {
        Some(caller) => caller,
        // Only inside a SECURITY DEFINER function can 0.1.0's answer differ from the
        // current user: the catalog is probed there only, not on every secret read.
        None if in_definer() && !entry_points_installed() => legacy_invoker(),
        None => current,
    }
}

/// Whether a SECURITY DEFINER function has switched the current user.
fn in_definer() -> bool {
    // SAFETY: reads backend-local state only.
    unsafe { pg_sys::InLocalUserIdChange() }
}

/// Whether this database holds the SQL of a version with entry points (0.2.0 on):
/// schema `api_key_mgmt_impl` exists. One syscache probe.
fn entry_points_installed() -> bool {
    // SAFETY: a syscache lookup by name; missing_ok, so it never raises.
    unsafe { pg_sys::get_namespace_oid(IMPL_SCHEMA.as_ptr(), true) != pg_sys::InvalidOid }
}

/// The caller as version 0.1.0 found it, for a database whose SQL is still 0.1.0's
/// (between installing this library and `ALTER EXTENSION api_key_mgmt UPDATE`): its
/// public functions are `SECURITY DEFINER` themselves, so no entry point records the
/// caller, and the current user inside them is the owner. Answering the owner would
/// make every caller a superuser; this answers what 0.1.0 did (`SET ROLE`'s role,
/// else the session user), no better and no worse, until the update installs the
/// entry points (UPDATING.md says to run it at once).
fn legacy_invoker() -> pg_sys::Oid {
    // SAFETY: these read backend-local state only.
    unsafe {
        let role = pg_sys::GetCurrentRoleId();
        if role != pg_sys::InvalidOid {
            role
        } else {
            pg_sys::GetSessionUserId()
        }
    }
}

/// A pushed [`Frame`], popped when dropped (on return, and when an ERROR unwinds
/// through the Rust frames that hold it).
pub struct FrameGuard {
    depth: usize,
}

impl FrameGuard {
    /// Record the current [`invoker`] as the caller of a body that runs as `runs_as`.
    pub fn enter(runs_as: pg_sys::Oid) -> FrameGuard {
        let caller = invoker();
        FRAMES.with(|f| {
            let mut frames = f.borrow_mut();
            let depth = frames.len();
            frames.push(Frame { caller, runs_as });
            FrameGuard { depth }
        })
    }
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        FRAMES.with(|f| f.borrow_mut().truncate(self.depth));
    }
}

/// The owner of function `oid` if it is `SECURITY DEFINER` (the role it runs as).
pub fn definer_of(oid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache probe by OID; the tuple is read, then released, within the
    // block, and GETSTRUCT of a pg_proc tuple is a FormData_pg_proc.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(oid),
        );
        if tuple.is_null() {
            return None;
        }
        let proc_ = &*(pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(tuple));
        let owner = proc_.prosecdef.then_some(proc_.proowner);
        pg_sys::ReleaseSysCache(tuple);
        owner
    }
}

/// The body an entry point calls, resolved on its first call and kept in its
/// `fn_extra` (memory of the call site's `fn_mcxt`).
#[repr(C)]
struct Body {
    flinfo: pg_sys::FmgrInfo,
    owner: pg_sys::Oid,
}

const IMPL_SCHEMA: &CStr = c"api_key_mgmt_impl";

fn mismatch(what: String) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("api_key_mgmt: {what}; the extension's SQL and library versions differ"),
        "Run ALTER EXTENSION api_key_mgmt UPDATE in this database.",
    )
}

/// Find, check and cache the body of the entry point `fcinfo` calls.
///
/// # Safety
/// `fcinfo` is the current call of an entry point (a valid flinfo with `fn_oid`).
unsafe fn body_of(fcinfo: pg_sys::FunctionCallInfo) -> *mut Body {
    // SAFETY: the caller's promise; fn_extra is ours (this C function owns its flinfo's
    // fn_extra), allocated below in fn_mcxt, which lives as long as the flinfo.
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        if !(*flinfo).fn_extra.is_null() {
            return (*flinfo).fn_extra as *mut Body;
        }
        let own = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from((*flinfo).fn_oid),
        );
        if own.is_null() {
            mismatch(format!("function {} not found", (*flinfo).fn_oid.to_u32()));
        }
        let own_proc = &*(pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(own));
        let name = CStr::from_ptr(own_proc.proname.data.as_ptr())
            .to_string_lossy()
            .into_owned();
        let (rettype, retset) = (own_proc.prorettype, own_proc.proretset);
        let namespace = pg_sys::get_namespace_oid(IMPL_SCHEMA.as_ptr(), true);
        let body_oid = if namespace == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            pg_sys::GetSysCacheOid(
                pg_sys::SysCacheIdentifier::PROCNAMEARGSNSP as i32,
                pg_sys::Anum_pg_proc_oid as pg_sys::AttrNumber,
                pg_sys::Datum::from(own_proc.proname.data.as_ptr()),
                pg_sys::Datum::from(&raw const own_proc.proargtypes),
                pg_sys::Datum::from(namespace),
                pg_sys::Datum::from(0usize),
            )
        };
        pg_sys::ReleaseSysCache(own);
        if body_oid == pg_sys::InvalidOid {
            mismatch(format!(
                "the body of {name} (api_key_mgmt_impl.{name} with the same argument types) is missing"
            ));
        }
        let body = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(body_oid),
        );
        if body.is_null() {
            mismatch(format!("the body of {name} vanished"));
        }
        let body_proc = &*(pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(body));
        let checked = (
            body_proc.prosecdef,
            body_proc.prorettype == rettype,
            body_proc.proretset == retset,
            body_proc.proowner,
        );
        pg_sys::ReleaseSysCache(body);
        match checked {
            (false, _, _, _) => {
                mismatch(format!("api_key_mgmt_impl.{name} is not SECURITY DEFINER"))
            }
            (_, false, _, _) | (_, _, false, _) => {
                mismatch(format!("{name} and its body return different types"))
            }
            _ => {}
        }
        let cache = pg_sys::MemoryContextAllocZero((*flinfo).fn_mcxt, std::mem::size_of::<Body>())
            as *mut Body;
        pg_sys::fmgr_info_cxt(body_oid, &raw mut (*cache).flinfo, (*flinfo).fn_mcxt);
        // The call site's expression (argument types, for polymorphic resolution): the
        // body has the same argument types.
        (*cache).flinfo.fn_expr = (*flinfo).fn_expr;
        (*cache).owner = checked.3;
        (*flinfo).fn_extra = cache.cast();
        cache
    }
}

/// What the error-context callback keeps of an ERROR raised inside a body.
struct Capture {
    /// A copy of the newest ERROR (null: none), in `cxt`.
    edata: *mut pg_sys::ErrorData,
    cxt: pg_sys::MemoryContext,
}

/// `ERRCODE_TO_CATEGORY` of class 23 (integrity constraint violation).
const CLASS_23: i32 = (b'2' - b'0') as i32 | (((b'3' - b'0') as i32) << 6);
const CATEGORY_MASK: i32 = (1 << 12) - 1;

/// Whether an error of `sqlstate` on a table of `schema` would print stored values in
/// its DETAIL ("Failing row contains ...", "Key (...)=(...) already exists.").
pub fn prints_row(sqlstate: i32, schema: Option<&str>) -> bool {
    sqlstate & CATEGORY_MASK == CLASS_23
        && matches!(schema, Some("api_key_mgmt" | "api_key_mgmt_internal"))
}

/// Run `f`, which calls one of the extension's own functions (they write only the
/// extension's tables): a constraint violation it raises is raised again with its
/// SQLSTATE, message and hint but [`WITHHELD`] as its DETAIL. For the internal
/// functions the invoker-rights C paths call (`catalog::call_internal`); the entry
/// points do the same in [`capture_error`], keeping every other field.
pub fn without_row_details<T>(f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            if let Some(pg_sys::panic::CaughtError::PostgresError(e)) =
                payload.downcast_ref::<pg_sys::panic::CaughtError>()
            {
                let code = e.sql_error_code();
                if e.detail().is_some() && code as i32 & CATEGORY_MASK == CLASS_23 {
                    crate::errors::raise_with_detail(
                        code,
                        e.message().to_owned(),
                        WITHHELD.to_str().expect("ASCII"),
                        e.hint().unwrap_or(""),
                    );
                }
            }
            std::panic::resume_unwind(payload)
        }
    }
}

/// The DETAIL that replaces one that would print a stored row.
pub const WITHHELD: &CStr = c"The row's values are withheld: the extension's tables hold key hashes, ciphertext and tokens.";

/// Error-context callback: keep a copy of each ERROR raised while a body runs (the
/// newest one is the one that leaves it), with a row-printing DETAIL withheld.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn capture_error(arg: *mut c_void) {
    // SAFETY: `arg` is the Capture of the call_body frame that pushed this callback and
    // is still on the stack (the callback is popped before that frame returns). During
    // errfinish the error being raised is the top of the error stack, which
    // CopyErrorData copies into the memory context we switch to (not ErrorContext).
    unsafe {
        let capture = &mut *(arg as *mut Capture);
        let old = pg_sys::MemoryContextSwitchTo(capture.cxt);
        let copy = pg_sys::CopyErrorData();
        pg_sys::MemoryContextSwitchTo(old);
        if (*copy).elevel < pgrx::PgLogLevel::ERROR as i32 {
            pg_sys::FreeErrorData(copy);
            return;
        }
        let schema = (!(*copy).schema_name.is_null())
            .then(|| CStr::from_ptr((*copy).schema_name).to_str().unwrap_or(""));
        if !(*copy).detail.is_null() && prints_row((*copy).sqlerrcode, schema) {
            pg_sys::pfree((*copy).detail.cast());
            (*copy).detail = pg_sys::MemoryContextStrdup(capture.cxt, WITHHELD.as_ptr());
        }
        if !capture.edata.is_null() {
            pg_sys::FreeErrorData(capture.edata);
        }
        capture.edata = copy;
    }
}

/// Call the body of the entry point `fcinfo` with the caller recorded. `Err`: the
/// ERROR it raised, to be raised again by the caller once no Rust frame is left.
///
/// # Safety
/// `fcinfo` is the current call of an entry point.
unsafe fn call_body(
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<pg_sys::Datum, *mut pg_sys::ErrorData> {
    // SAFETY: body_of's contract is ours. The FunctionCallInfo built here has room for
    // nargs arguments (as SizeForFunctionCallInfo), copies the caller's arguments and
    // result info (a set-returning body materialises into the caller's tuplestore),
    // and points at the cached FmgrInfo of the body. The error-context callback is
    // pushed for exactly the duration of the call and `capture` outlives it.
    unsafe {
        let body = body_of(fcinfo);
        let nargs = (*fcinfo).nargs;
        let call = pg_sys::palloc0(
            std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
                + std::mem::size_of::<pg_sys::NullableDatum>() * nargs as usize,
        ) as *mut pg_sys::FunctionCallInfoBaseData;
        (*call).flinfo = &raw mut (*body).flinfo;
        (*call).fncollation = (*fcinfo).fncollation;
        (*call).resultinfo = (*fcinfo).resultinfo;
        (*call).nargs = nargs;
        std::ptr::copy_nonoverlapping(
            (*fcinfo).args.as_ptr(),
            (*call).args.as_mut_ptr(),
            nargs as usize,
        );
        let func = (*body).flinfo.fn_addr.expect("fmgr_info sets fn_addr");

        let _frame = FrameGuard::enter((*body).owner);
        let mut capture = Capture {
            edata: std::ptr::null_mut(),
            cxt: pg_sys::CurrentMemoryContext,
        };
        let mut callback = pg_sys::ErrorContextCallback {
            previous: pg_sys::error_context_stack,
            callback: Some(capture_error),
            arg: (&raw mut capture).cast(),
        };
        pg_sys::error_context_stack = &raw mut callback;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pg_sys::ffi::pg_guard_ffi_boundary(|| func(call))
        }));
        pg_sys::error_context_stack = callback.previous;
        match result {
            Ok(datum) => {
                (*fcinfo).isnull = (*call).isnull;
                pg_sys::pfree(call.cast());
                if !capture.edata.is_null() {
                    // An ERROR the body caught and handled itself.
                    pg_sys::FreeErrorData(capture.edata);
                }
                Ok(datum)
            }
            Err(payload) => {
                let from_postgres = matches!(
                    payload.downcast_ref::<pg_sys::panic::CaughtError>(),
                    Some(pg_sys::panic::CaughtError::PostgresError(_))
                );
                if from_postgres && !capture.edata.is_null() {
                    Err(capture.edata)
                } else {
                    std::panic::resume_unwind(payload)
                }
            }
        }
    }
}

unsafe extern "C-unwind" {
    /// `ThrowErrorData`, not wrapped by pgrx's FFI guard: it raises the ERROR by
    /// longjmp to PostgreSQL's handler, which is what [`akm_call_as_caller`] wants once
    /// no Rust frame with anything to drop is left.
    #[link_name = "ThrowErrorData"]
    fn throw_error_data(edata: *mut pg_sys::ErrorData);
}

finfo_v1!(pg_finfo_akm_call_as_caller);

/// The entry point of every public `SECURITY DEFINER` function (see the module
/// comment): `api_key_mgmt.<f>(...)` runs `api_key_mgmt_impl.<f>(...)` as its owner,
/// with the caller recorded for [`invoker`].
///
/// # Safety
/// Called by the function manager only, for a function declared in SQL as
/// `LANGUAGE c AS 'MODULE_PATHNAME', 'akm_call_as_caller'`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn akm_call_as_caller(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: pgrx_extern_c_guard turns a Rust panic or a pgrx ERROR inside into a
    // PostgreSQL ERROR; call_body's contract is this function's.
    let outcome = unsafe { pg_sys::panic::pgrx_extern_c_guard(|| call_body(fcinfo)) };
    match outcome {
        Ok(datum) => datum,
        Err(edata) => {
            // SAFETY: every Rust value of this call has been dropped (outcome holds a
            // raw pointer only); ThrowErrorData raises the copied ERROR (it copies the
            // fields into the error stack before it jumps).
            unsafe { throw_error_data(edata) };
            pg_sys::Datum::from(0usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlstate(s: &str) -> i32 {
        s.bytes()
            .enumerate()
            .map(|(i, c)| (((c - b'0') & 0x3f) as i32) << (6 * i))
            .sum()
    }

    #[test]
    fn only_constraint_errors_on_our_tables_print_rows() {
        for code in ["23514", "23505", "23503", "23502", "23P01"] {
            assert!(prints_row(sqlstate(code), Some("api_key_mgmt")), "{code}");
            assert!(
                prints_row(sqlstate(code), Some("api_key_mgmt_internal")),
                "{code}"
            );
            assert!(!prints_row(sqlstate(code), Some("public")), "{code}");
            assert!(!prints_row(sqlstate(code), None), "{code}");
        }
        for code in ["22023", "42501", "P0001", "25006", "XX000"] {
            assert!(!prints_row(sqlstate(code), Some("api_key_mgmt")), "{code}");
        }
    }
}
