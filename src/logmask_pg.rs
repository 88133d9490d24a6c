//! The `emit_log_hook` that masks native keys in what reaches the server log (pgrx layer
//! over the pure [`crate::logmask`]).
//!
//! Installed by `_PG_init`, so in every backend when the library is preloaded
//! (`shared_preload_libraries`), otherwise from the first use of the library in a session.
//!
//! For each message bound for the server log (`output_to_server`):
//! - the error's `message`, `detail`, `detail_log`, `hint`, `context` and `internalquery`
//!   are masked **in place**: they are the error's own palloc'd copies, and the masked
//!   text is never longer, so nothing is allocated. That covers `log_statement` /
//!   `log_min_duration_statement` lines (the statement is in the message, its
//!   `parameters: $1 = '...'` in the detail) and `log_parameter_max_length_on_error`
//!   (in the context);
//! - the `STATEMENT:` line that `log_min_error_statement` adds is printed after the hook
//!   returns, from the global `debug_query_string`, which points at the protocol buffer
//!   or a plan's source text and must not be changed. When it holds a key, the hook
//!   points `debug_query_string` at a masked copy in `TopMemoryContext` instead. One such
//!   copy is kept per backend; it is freed only when the next statement with a key needs
//!   one (by then `debug_query_string` points elsewhere: postgres.c sets it for every
//!   message), so it never dangles. The original is never modified or freed. If the copy
//!   cannot be made (out of memory, or inside a critical section, where allocating is not
//!   allowed) the `STATEMENT:` line is suppressed (`hide_stmt`) rather than logged in
//!   clear.
//!
//! Text without a candidate (`_live_` / `_test_` followed by 49 base62 characters with a
//! matching checksum) costs one byte scan and no allocation. The hook never raises: it
//! calls no function that can `ereport` (allocation is `MCXT_ALLOC_NO_OOM`), and a Rust
//! panic is caught here and not propagated (so no `#[pg_guard]`, which would turn it into
//! an ERROR inside error reporting). The previous hook, if any, is called afterwards with
//! the masked data.
//!
//! The client receives the same (masked) `ErrorData`: masking is not limited to the log.

use crate::logmask;
use pgrx::pg_sys;
use std::ffi::{c_char, CStr};
use std::ptr;

/// The hook that was installed before ours.
static mut PREV_EMIT_LOG_HOOK: pg_sys::emit_log_hook_type = None;
static mut INSTALLED: bool = false;
/// The masked copy of `debug_query_string` (in `TopMemoryContext`), if any.
static mut MASKED_QUERY: *mut c_char = ptr::null_mut();

/// `MaxAllocSize` / `MaxAllocHugeSize` of `memutils.h`.
const MAX_ALLOC_SIZE: usize = 0x3fff_ffff;
const MAX_ALLOC_HUGE_SIZE: usize = usize::MAX / 2;

/// Install the hook (once per process), chaining to any previous one.
pub fn install() {
    // SAFETY: `_PG_init` runs on the main thread, before any message could use the hook.
    unsafe {
        if INSTALLED {
            return;
        }
        INSTALLED = true;
        PREV_EMIT_LOG_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(emit_log_hook);
    }
}

/// Mask, then chain. Not `#[pg_guard]`: nothing here may raise or unwind into C.
unsafe extern "C-unwind" fn emit_log_hook(edata: *mut pg_sys::ErrorData) {
    let masked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: Postgres passes the ErrorData being emitted.
        unsafe { mask_error_data(edata) }
    }));
    if masked.is_err() && !edata.is_null() {
        // Unreachable in practice; if it happens, at least keep the statement out.
        // SAFETY: as above.
        unsafe { (*edata).hide_stmt = true };
    }
    drop(masked);
    // SAFETY: the previous hook has the same contract as ours.
    unsafe {
        if let Some(prev) = PREV_EMIT_LOG_HOOK {
            prev(edata);
        }
    }
}

/// Mask keys in the error's text fields (in place) and in the statement that will be
/// logged with it. Public for the `#[pg_test]`s.
///
/// # Safety
/// `edata` is null or a valid `ErrorData` whose string fields are null or NUL-terminated
/// and writable; `debug_query_string` is null or NUL-terminated. Main thread only.
pub unsafe fn mask_error_data(edata: *mut pg_sys::ErrorData) {
    let Some(e) = (unsafe { edata.as_mut() }) else {
        return;
    };
    for field in [
        e.message,
        e.detail,
        e.detail_log,
        e.hint,
        e.context,
        e.internalquery,
    ] {
        // SAFETY: the caller's contract.
        unsafe { mask_c_string_in_place(field) };
    }
    if !e.hide_stmt && statement_may_be_logged(e.elevel) {
        // SAFETY: the caller's contract.
        unsafe { mask_debug_query_string(e) };
        // What masking cannot cover (a mistyped or imported key) keeps the statement out.
        let query = unsafe { pg_sys::debug_query_string };
        if !query.is_null() {
            let prefixes = crate::gucs::import_prefixes();
            let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
            // SAFETY: NUL-terminated (the caller's contract, or our masked copy).
            let bytes = unsafe { CStr::from_ptr(query) }.to_bytes();
            if logmask::holds_unmasked_key(bytes, &prefixes) {
                e.hide_stmt = true;
            }
        }
    }
}

/// Whether `send_message_to_server_log` may print the statement for a message of
/// `elevel` (a superset of its `is_log_level_output(elevel, log_min_error_statement)`).
fn statement_may_be_logged(elevel: i32) -> bool {
    // SAFETY: a plain read of a GUC variable on the main thread.
    let min = unsafe { pg_sys::log_min_error_statement };
    let elevel_u = elevel as u32;
    elevel >= min
        || elevel_u == pg_sys::LOG
        || elevel_u == pg_sys::LOG_SERVER_ONLY
        || elevel_u >= pg_sys::FATAL
}

/// Mask a NUL-terminated, writable string in place (no allocation).
///
/// # Safety
/// `s` is null or a writable NUL-terminated string.
unsafe fn mask_c_string_in_place(s: *mut c_char) {
    if s.is_null() {
        return;
    }
    // SAFETY: the caller's contract; the slice covers the string without its NUL.
    let bytes = unsafe {
        let len = CStr::from_ptr(s).to_bytes().len();
        std::slice::from_raw_parts_mut(s.cast::<u8>(), len)
    };
    if let Some(n) = logmask::mask_in_place(bytes) {
        bytes[n] = 0; // n < len: the masked text is shorter
    }
}

/// Point `debug_query_string` at a masked copy when it holds a key.
///
/// # Safety
/// Main thread; `debug_query_string` is null or NUL-terminated.
unsafe fn mask_debug_query_string(e: &mut pg_sys::ErrorData) {
    unsafe {
        let query = pg_sys::debug_query_string;
        if query.is_null() || query == MASKED_QUERY.cast_const() {
            return; // nothing, or our copy (already masked)
        }
        let bytes = CStr::from_ptr(query).to_bytes();
        if !logmask::contains_key(bytes) {
            return;
        }
        let size = bytes.len() + 1;
        let copy = if pg_sys::CritSectionCount > 0 || size > MAX_ALLOC_HUGE_SIZE {
            ptr::null_mut()
        } else {
            let mut flags = pg_sys::MCXT_ALLOC_NO_OOM as i32;
            if size > MAX_ALLOC_SIZE {
                flags |= pg_sys::MCXT_ALLOC_HUGE as i32;
            }
            pg_sys::MemoryContextAllocExtended(pg_sys::TopMemoryContext, size, flags).cast::<u8>()
        };
        if copy.is_null() {
            e.hide_stmt = true;
            return;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), copy, bytes.len());
        let masked = std::slice::from_raw_parts_mut(copy, bytes.len());
        let n = logmask::mask_in_place(masked).unwrap_or(bytes.len());
        *copy.add(n) = 0;
        let old = MASKED_QUERY;
        MASKED_QUERY = copy.cast::<c_char>();
        pg_sys::debug_query_string = MASKED_QUERY;
        if !old.is_null() {
            pg_sys::pfree(old.cast());
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{emit_log_hook, mask_error_data, MASKED_QUERY};
    use crate::keys::{generate, Environment};
    use crate::logmask::MASK;
    use pgrx::pg_sys;
    use pgrx::prelude::*;
    use std::ffi::{c_char, CStr, CString};

    unsafe fn pstrdup(s: &str) -> *mut c_char {
        let c = CString::new(s).unwrap();
        unsafe { pg_sys::pstrdup(c.as_ptr()) }
    }

    unsafe fn text(p: *const c_char) -> String {
        unsafe { CStr::from_ptr(p).to_string_lossy().into_owned() }
    }

    /// Preloaded (see `lib.rs`): the hook is ours.
    #[pg_test]
    fn hook_is_installed() {
        let installed = unsafe { pg_sys::emit_log_hook };
        assert!(
            installed.is_some_and(|f| std::ptr::fn_addr_eq(
                f,
                emit_log_hook as unsafe extern "C-unwind" fn(*mut pg_sys::ErrorData)
            )),
            "emit_log_hook is not ours"
        );
    }

    /// Every text field is masked in place; the statement is replaced by a masked copy
    /// (the original left intact); look-alikes and key-free text are untouched.
    #[pg_test]
    fn hook_masks_fields_and_statement() {
        let key = generate("sk", Environment::Live);
        let other = generate("acme", Environment::Test);
        let bad = {
            let (head, last) = key.split_at(key.len() - 1);
            format!("{head}{}", if last == "A" { "B" } else { "A" })
        };
        let masked = format!("sk_live_{MASK}");
        let masked_other = format!("acme_test_{MASK}");
        unsafe {
            let e = pg_sys::palloc0(std::mem::size_of::<pg_sys::ErrorData>())
                .cast::<pg_sys::ErrorData>();
            (*e).elevel = pg_sys::PGERROR as i32;
            (*e).output_to_server = true;
            (*e).message = pstrdup(&format!("boom '{key}' {bad}"));
            (*e).detail = pstrdup(&format!("parameters: $1 = '{other}'"));
            (*e).detail_log = pstrdup("nothing here");
            (*e).hint = pstrdup(&format!("{key},{other}"));
            (*e).context = pstrdup(&format!("SQL statement \"SELECT '{key}'\""));
            (*e).internalquery = pstrdup(&format!("SELECT '{key}' +"));

            let saved = pg_sys::debug_query_string;
            let statement = CString::new(format!("SELECT 1/0, '{key}', '{bad}'")).unwrap();
            // Only valid keys: masked and logged.
            let valid_only = CString::new(format!("SELECT '{key}'")).unwrap();
            pg_sys::debug_query_string = valid_only.as_ptr();
            mask_error_data(e);
            let hide_after_valid = (*e).hide_stmt;
            // A mistyped key is left in the text, so the statement is hidden.
            pg_sys::debug_query_string = statement.as_ptr();
            mask_error_data(e);
            let hide_after_bad = (*e).hide_stmt;
            (*e).hide_stmt = false;
            let logged = pg_sys::debug_query_string;
            let logged_text = text(logged);
            // Again: already masked, nothing changes.
            mask_error_data(e);
            let again = pg_sys::debug_query_string;
            // A statement without a key is left as it is.
            let plain = CString::new("SELECT 1/0").unwrap();
            pg_sys::debug_query_string = plain.as_ptr();
            mask_error_data(e);
            let plain_after = pg_sys::debug_query_string;
            // hide_stmt: the statement is not logged, so not touched.
            (*e).hide_stmt = true;
            pg_sys::debug_query_string = statement.as_ptr();
            mask_error_data(e);
            let hidden_after = pg_sys::debug_query_string;
            pg_sys::debug_query_string = saved;

            assert_eq!(text((*e).message), format!("boom '{masked}' {bad}"));
            assert_eq!(
                text((*e).detail),
                format!("parameters: $1 = '{masked_other}'")
            );
            assert_eq!(text((*e).detail_log), "nothing here");
            assert_eq!(text((*e).hint), format!("{masked},{masked_other}"));
            assert_eq!(
                text((*e).context),
                format!("SQL statement \"SELECT '{masked}'\"")
            );
            assert_eq!(text((*e).internalquery), format!("SELECT '{masked}' +"));

            assert_eq!(logged_text, format!("SELECT 1/0, '{masked}', '{bad}'"));
            assert_eq!(logged, MASKED_QUERY.cast_const());
            assert_eq!(again, logged);
            assert_eq!(
                statement.to_str().unwrap(),
                format!("SELECT 1/0, '{key}', '{bad}'"),
                "the original statement text is never changed"
            );
            assert_eq!(plain_after, plain.as_ptr());
            assert_eq!(hidden_after, statement.as_ptr());
            assert!(
                hide_after_bad,
                "a statement with a mistyped key is kept out of the log"
            );
            assert!(
                !hide_after_valid,
                "a statement with only valid keys is logged masked"
            );
        }
    }

    /// Through the real hook: a LOG message carrying a key does not fail, and the
    /// session carries on (the log file itself is checked by the integration test).
    #[pg_test]
    fn hook_survives_real_messages() {
        let key = generate("sk", Environment::Test);
        pgrx::log!("a key {key} in a LOG message");
        pgrx::warning!("a key {key} in a WARNING");
        assert_eq!(Spi::get_one::<i32>("SELECT 1").unwrap(), Some(1));
    }
}
