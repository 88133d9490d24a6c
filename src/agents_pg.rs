//! Agent access, the pgrx layer over [`crate::agents`]: `resolve_proxy_token`, the
//! helpers for `sql/010_agents.sql`, the maintenance background worker, and the
//! security-event writer for refused resolves.
//!
//! A refused resolve raises an ERROR, which rolls back whatever the transaction wrote;
//! its security event is therefore written by a short-lived dynamic background worker
//! in a transaction of its own (it shows up a moment later, and on the NOTIFY channel).

use crate::agents::{self, Refusal, TokenState};
use crate::catalog::{self, Row};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{IntoDatum, PgSqlErrorCode, Uuid};
use std::time::{Duration, Instant};

use crate::errors::{raise, required};

fn refusal_code(r: Refusal) -> PgSqlErrorCode {
    match r {
        Refusal::Invalid | Refusal::Expired | Refusal::Revoked | Refusal::TenantDisabled => {
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION
        }
        Refusal::WrongEnvironment => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        Refusal::Exhausted => PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
    }
}

/// Record the security event of a refusal (in its own transaction), then raise.
fn refuse(r: Refusal, tenant: Option<Uuid>, token_id: Option<Uuid>) -> ! {
    if let (Some(kind), Some(tenant), Some(token)) = (r.event_kind(), tenant, token_id) {
        record_event_async(kind, tenant, token);
    }
    raise(refusal_code(r), r.message(), "")
}

/// Start a dynamic background worker that writes the event and exits.
fn record_event_async(kind: &str, tenant: Uuid, token: Uuid) {
    let extra = format!("{kind}|{tenant}|{token}");
    let db = unsafe { pg_sys::MyDatabaseId };
    let started = BackgroundWorkerBuilder::new("api_key_mgmt security event")
        .set_library("api_key_mgmt")
        .set_function("akm_security_event_worker")
        .set_argument(db.into_datum())
        .set_extra(&extra)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .load_dynamic();
    if started.is_err() {
        pgrx::warning!(
            "api_key_mgmt: no background worker slot to record security event {kind} of proxy token {token}"
        );
    }
}

/// Entry point of the security-event writer (a dynamic background worker).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn akm_security_event_worker(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let db = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    let extra = BackgroundWorker::get_extra().to_owned();
    let mut parts = extra.splitn(3, '|');
    let (Some(kind), Some(tenant), Some(token)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (kind, tenant, token) = (kind.to_owned(), tenant.to_owned(), token.to_owned());
    BackgroundWorker::transaction(move || {
        Spi::run_with_args(
            "SELECT api_key_mgmt_internal.security_event($2::uuid, $1, 'warning', 'proxy_token', $3, \
               pg_catalog.jsonb_build_object('session_id', \
                 (SELECT t.session_id FROM api_key_mgmt.proxy_tokens t WHERE t.id = $3::uuid)))",
            &[kind.as_str().into(), tenant.as_str().into(), token.as_str().into()],
        )
        .unwrap_or_else(|e| pgrx::warning!("api_key_mgmt: could not record a security event: {e}"));
    });
}

/// Register the maintenance worker (only while preloading).
pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("api_key_mgmt agent maintenance")
        .set_library("api_key_mgmt")
        .set_function("akm_agent_maintenance_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(60)))
        .load();
}

/// Entry point of the maintenance worker: every `api_key_mgmt.agent_maintenance_interval`
/// seconds, `run_agent_maintenance()` in `api_key_mgmt.agent_maintenance_database` if
/// the extension is installed there; and, as soon as they arrive, the secret-read
/// audit entries queued in shared memory for that database (src/audit_pg.rs), also
/// written out before a clean shutdown. An error ends the worker; the postmaster starts
/// it again a minute later (queued entries wait for it; meanwhile reads are audited in
/// their own transactions).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn akm_agent_maintenance_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = crate::gucs::agent_maintenance_database();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    // Everything this worker runs names its objects; nothing resolves through a schema
    // another role can create in.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
        )
    };
    // Durable secret reads return once this worker's commit of their audit entry is
    // flushed: never with synchronous_commit off (a crash could lose a committed entry).
    // SAFETY: reads and sets a GUC of this worker's own session.
    unsafe {
        let current = pg_sys::GetConfigOption(c"synchronous_commit".as_ptr(), false, false);
        if !current.is_null() && std::ffi::CStr::from_ptr(current).to_bytes() == b"off" {
            pg_sys::SetConfigOption(
                c"synchronous_commit".as_ptr(),
                c"local".as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_SESSION,
            );
        }
    }
    crate::audit_pg::attach_worker();
    let mut last_maintenance = Instant::now();
    loop {
        let secs = crate::gucs::AGENT_MAINTENANCE_INTERVAL.get();
        let every = Duration::from_secs(if secs > 0 { secs as u64 } else { 60 });
        let next = every.saturating_sub(last_maintenance.elapsed());
        // Reads arrive one at a time and the first one wakes the worker, which then
        // gathers for a moment and writes what came in one transaction, not one per
        // read (a busy backend wakes it early when the queue is half full). Durable
        // readers wait for the commit: then it writes at once, and the reads that
        // arrive while it writes make up the next transaction (group commit).
        let gathering = crate::audit_pg::queued() > 0;
        let wait = if gathering && crate::audit_pg::durable_waiting() {
            Duration::ZERO
        } else if gathering {
            AUDIT_GATHER
        } else {
            next.min(Duration::from_secs(1))
        };
        if !BackgroundWorker::wait_latch(Some(wait)) {
            // Shutting down: take no more entries, write those queued.
            crate::audit_pg::detach_worker();
            drain_audit_queue(true);
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if gathering || crate::audit_pg::queued() >= crate::audit_pg::BATCH as u64 {
            drain_audit_queue(false);
        }
        if last_maintenance.elapsed() < every {
            continue;
        }
        last_maintenance = Instant::now();
        if crate::gucs::AGENT_MAINTENANCE_INTERVAL.get() <= 0 {
            continue;
        }
        BackgroundWorker::transaction(|| {
            if extension_installed() {
                Spi::run("SELECT FROM api_key_mgmt.run_agent_maintenance()").unwrap_or_else(|e| {
                    pgrx::warning!("api_key_mgmt: agent maintenance failed: {e}")
                });
            }
        });
    }
}

/// How long the worker gathers secret-read audit entries before writing them.
const AUDIT_GATHER: Duration = Duration::from_millis(20);

fn extension_installed() -> bool {
    unsafe { pg_sys::get_extension_oid(c"api_key_mgmt".as_ptr(), true) != pg_sys::InvalidOid }
}

/// Write queued audit entries, a batch per transaction, until a batch is not full (or,
/// with `all`, until none is left). A batch leaves the queue only once its transaction
/// has committed (dropped instead if the extension is not installed here: there is no
/// audit_log to write to).
fn drain_audit_queue(all: bool) {
    while let Some((tail, entries)) = crate::audit_pg::peek_batch() {
        let full = entries.len() == crate::audit_pg::BATCH;
        let written = BackgroundWorker::transaction(|| {
            let installed = extension_installed();
            if installed {
                crate::audit_pg::write(&entries);
            }
            installed
        });
        crate::audit_pg::advance(tail, &entries, written);
        if !all && !full {
            break;
        }
    }
}

/// `agent_decision(risk_level text, auto_approve_medium boolean) RETURNS text`
#[pg_extern(sql = false, immutable, parallel_safe)]
fn agent_decision(risk_level: &str, auto_approve_medium: bool) -> &'static str {
    agents::decide(risk_level, auto_approve_medium).as_str()
}

/// `agent_token_env(environment text) RETURNS text`
#[pg_extern(sql = false, immutable, parallel_safe)]
fn agent_token_env(environment: &str) -> &'static str {
    match agents::token_env(environment) {
        Some(e) => e.as_str(),
        None => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "environment must be 'dev', 'staging' or 'prod'",
            "",
        ),
    }
}

/// `agent_declared(patterns text[], name text) RETURNS boolean`
#[pg_extern(sql = false, immutable, parallel_safe)]
fn agent_declared(patterns: Array<&str>, name: &str) -> bool {
    agents::declared(patterns.iter().flatten(), name)
}

fn lookup_by_id(
    table: &'static std::ffi::CStr,
    index: &'static std::ffi::CStr,
    id: Uuid,
) -> Option<Row> {
    catalog::lookup_unique(
        table,
        index,
        "id",
        pg_sys::F_UUID_EQ,
        id.into_datum().expect("uuid datum"),
    )
}

finfo_v1!(pg_finfo_akm_resolve_proxy_token);

/// `resolve_proxy_token(token text, environment text) RETURNS text` — the secret behind
/// a proxy token, counting one use; refusals as in [`Refusal`]. Granted to
/// `api_key_mgmt_service` only. A raw function so that the result is made straight
/// from the wiped plaintext buffer, with no Rust `String` copy left behind.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn akm_resolve_proxy_token(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        use pgrx::fcinfo::pg_getarg;
        let plaintext =
            resolve_proxy_token(pg_getarg::<&str>(fcinfo, 0), pg_getarg::<&str>(fcinfo, 1));
        crate::secrets_pg::plaintext_text(&plaintext)
    }
}

fn resolve_proxy_token(
    token: Option<&str>,
    environment: Option<&str>,
) -> zeroize::Zeroizing<Vec<u8>> {
    let token = required(token, "token");
    if let Some(e) = environment {
        if agents::token_env(e).is_none() {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "environment must be 'dev', 'staging' or 'prod'",
                "",
            );
        }
    }
    if !agents::is_proxy_token(token) {
        refuse(Refusal::Invalid, None, None);
    }
    let hash = crate::keys::hash(token);
    let Some(tok) = catalog::lookup_unique(
        c"proxy_tokens",
        c"proxy_tokens_hash_idx",
        "token_hash",
        pg_sys::F_BYTEAEQ,
        hash.to_vec().into_datum().expect("bytea datum"),
    ) else {
        refuse(Refusal::Invalid, None, None)
    };
    let token_id: Uuid = tok.get("id").expect("id is NOT NULL");
    let tenant: Option<Uuid> = tok.get("tenant_id");
    let session_id: Uuid = tok.get("session_id").expect("session_id is NOT NULL");
    let secret_id: Uuid = tok.get("secret_id").expect("secret_id is NOT NULL");
    let Some(session) = lookup_by_id(c"agent_sessions", c"agent_sessions_pkey", session_id) else {
        refuse(Refusal::Invalid, None, None)
    };
    let Some(secret) = lookup_by_id(c"tenant_secrets", c"tenant_secrets_pkey", secret_id) else {
        refuse(Refusal::Invalid, None, None)
    };
    let tenant_disabled = match tenant {
        Some(t) => lookup_by_id(c"tenants", c"tenants_pkey", t)
            .is_none_or(|row| row.datum("disabled_at").is_some()),
        None => true,
    };
    let status: String = session.get("status").expect("status is NOT NULL");
    let ends_at = session
        .datum("ends_at")
        .expect("ends_at is NOT NULL")
        .value() as i64;
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let token_env: String = tok.get("environment").expect("environment is NOT NULL");
    let secret_env: String = secret.get("environment").expect("environment is NOT NULL");
    let state = TokenState {
        tenant_disabled,
        token_revoked: tok.datum("revoked_at").is_some(),
        session_status: &status,
        session_over: ends_at <= now,
        token_environment: &token_env,
        secret_environment: &secret_env,
        uses: tok.get("uses").unwrap_or(0),
        max_uses: tok.get("max_uses"),
    };
    if let Err(r) = agents::check(&state, environment) {
        refuse(r, tenant, Some(token_id));
    }
    // Counting the use is a write (and the read is audited).
    if unsafe { pg_sys::XactReadOnly || pg_sys::RecoveryInProgress() } {
        raise(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "resolving a proxy token counts a use and needs a read-write transaction",
            "",
        );
    }
    let used = Spi::get_one_with_args::<i32>(
        "SELECT api_key_mgmt_internal.use_proxy_token($1)",
        &[token_id.into()],
    )
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not count a use of a proxy token: {e}"),
            "",
        )
    });
    if used.is_none() {
        refuse(Refusal::Exhausted, tenant, Some(token_id));
    }
    crate::secrets_pg::open_row(&secret)
}
