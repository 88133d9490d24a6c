//! Every setting of the extension, in one place.
//!
//! | setting | type | context | default |
//! |---|---|---|---|
//! | `api_key_mgmt.import_prefixes` | text | superuser | `''` |
//! | `api_key_mgmt.master_key_file` | text | superuser, hidden from others | unset |
//! | `api_key_mgmt.tenant_id` | text | anyone (`set_config(..., true)`) | unset |
//! | `api_key_mgmt.user_id` | text | anyone (`set_config(..., true)`) | unset |
//! | `api_key_mgmt.tenant_claims` | text | superuser | `tenant_id,app_metadata.tenant_id` |
//! | `api_key_mgmt.api_key_header` | text | superuser | `x-api-key` |
//! | `api_key_mgmt.unmatched_routes` | text | superuser | `deny` |
//! | `api_key_mgmt.audit_secret_reads` | bool | superuser | on |
//! | `api_key_mgmt.audit_queue_size` | integer | server start (only when preloading) | 4096 (0: no queue) |
//! | `api_key_mgmt.audit_reads_in_transaction` | bool | superuser | off (deprecated) |
//! | `api_key_mgmt.audit_read_mode` | enum | superuser | `durable` |
//! | `api_key_mgmt.audit_durable_timeout` | integer (ms) | superuser | 5000 |
//! | `api_key_mgmt.metrics_top_tenants` | integer | superuser | 0 |
//! | `api_key_mgmt.clock_override` | text (timestamptz) | superuser | unset: the real clock |
//! | `api_key_mgmt.rate_limit_slots` | integer | server start | 65536 |
//! | `api_key_mgmt.agent_request_timeout` | integer (s) | superuser | 1h |
//! | `api_key_mgmt.agent_retention` | integer (s) | superuser | 30d |
//! | `api_key_mgmt.agent_maintenance_interval` | integer (s) | sighup | 60s (0: off) |
//! | `api_key_mgmt.agent_maintenance_database` | text | sighup (read at worker start) | `postgres` |

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Comma-separated prefixes under which keys from another system may be imported
/// (`import_api_key`) and are looked up by `validate_api_key`. Empty: no foreign keys,
/// so anything that is not a native key is refused without reading a table.
pub static IMPORT_PREFIXES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Path of the master key file for tenant secrets (see `crypto` for its format). Only
/// the path is a setting: the keys themselves never enter the database. Superuser-only,
/// and not shown to other roles by SHOW or pg_settings.
pub static MASTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The tenant an app server acts for (`set_config('api_key_mgmt.tenant_id', ..., true)`).
pub static TENANT_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// The user an app server acts for, when there is no JWT `sub` claim.
pub static USER_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// JWT claim paths naming the tenant, tried in order.
pub static TENANT_CLAIMS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"tenant_id,app_metadata.tenant_id"));
/// The request header that carries the API key (PostgREST pre-request hook).
pub static API_KEY_HEADER: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"x-api-key"));
/// What the pre-request hook does with a request no route matches: `deny` or `any_key`.
pub static UNMATCHED_ROUTES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"deny"));
/// Whether each decryption of a tenant secret appends an audit row.
pub static AUDIT_SECRET_READS: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Entries of the shared-memory queue of secret-read audit entries (src/audit_pg.rs),
/// fixed at server start; 0: no queue.
pub static AUDIT_QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(4096);
/// How long (ms) a read waits for room in a full audit queue before it is audited
/// synchronously.
pub static AUDIT_QUEUE_WAIT: GucSetting<i32> = GucSetting::<i32>::new(100);
/// Deprecated alias of `audit_read_mode = transaction` (on wins over the mode).
pub static AUDIT_READS_IN_TRANSACTION: GucSetting<bool> = GucSetting::<bool>::new(false);

/// How a secret read's `secret.decrypted` entry is written (see README, Audit log).
#[derive(pgrx::PostgresGucEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditReadMode {
    /// Through the queue; the plaintext is returned only once the worker has committed
    /// the entry (readers share the worker's commits). Fails closed (58000).
    #[name = c"durable"]
    Durable,
    /// Through the queue, returned at once; entries still queued are lost in a crash.
    #[name = c"queued"]
    Queued,
    /// In the reading transaction: committed or rolled back with it.
    #[name = c"transaction"]
    Transaction,
}

pub static AUDIT_READ_MODE: GucSetting<AuditReadMode> =
    GucSetting::<AuditReadMode>::new(AuditReadMode::Durable);
/// Tenants whose month's spend the metrics view shows, highest first (0: none).
pub static METRICS_TOP_TENANTS: GucSetting<i32> = GucSetting::<i32>::new(0);
/// How long (ms) a durable read waits for its audit entry to be committed.
pub static AUDIT_DURABLE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// The mode in force (the deprecated `audit_reads_in_transaction = on` means
/// `transaction`).
pub fn audit_read_mode() -> AuditReadMode {
    if AUDIT_READS_IN_TRANSACTION.get() {
        AuditReadMode::Transaction
    } else {
        AUDIT_READ_MODE.get()
    }
}

// --- metering (issue 4) ---------------------------------------------------------

/// "Now" for metering periods, credits refills, reservations and rate limits, for tests
/// (`SET api_key_mgmt.clock_override = '2030-01-31 23:59:59+00'`). Superuser-only.
pub static CLOCK_OVERRIDE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Capacity of the shared-memory rate limiter (limit states), fixed at server start.
pub static RATE_LIMIT_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(65536);

fn init_metering() {
    GucRegistry::define_string_guc(
        c"api_key_mgmt.clock_override",
        c"Overrides the current time for metering periods and rate limits (tests only).",
        c"A timestamptz; empty or unset: the transaction start time.",
        &CLOCK_OVERRIDE,
        GucContext::Suset,
        GucFlags::default(),
    );
    // A server-start setting can only be defined while preloading; without preload the
    // limiter uses its table and the setting does not exist.
    if !unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    GucRegistry::define_int_guc(
        c"api_key_mgmt.rate_limit_slots",
        c"Limit states the shared-memory rate limiter holds (needs shared_preload_libraries).",
        c"32 bytes each; idle states are reused, and when full the stalest is evicted.",
        &RATE_LIMIT_SLOTS,
        1024,
        16 * 1024 * 1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// The clock override, if set (the text; parsed by the caller as a timestamptz).
pub fn clock_override() -> Option<String> {
    CLOCK_OVERRIDE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.trim().is_empty())
}

// --- agent access (issue 6) ----------------------------------------------------

/// How long a pending access request waits for a decision before it expires.
pub static AGENT_REQUEST_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(3600);
/// How long ended requests, sessions, tokens and security events are kept.
pub static AGENT_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(30 * 86400);
/// Seconds between two runs of `run_agent_maintenance()` by the background worker.
pub static AGENT_MAINTENANCE_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);
/// The database the maintenance worker connects to.
pub static AGENT_MAINTENANCE_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

fn init_agents() {
    GucRegistry::define_int_guc(
        c"api_key_mgmt.agent_request_timeout",
        c"How long a pending agent access request waits for a decision.",
        c"Past it, the request expires (run_agent_maintenance, or when an admin tries to decide).",
        &AGENT_REQUEST_TIMEOUT,
        1,
        30 * 86400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"api_key_mgmt.agent_retention",
        c"How long ended agent requests, sessions, proxy tokens and security events are kept.",
        c"run_agent_maintenance() deletes older ones.",
        &AGENT_RETENTION,
        3600,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"api_key_mgmt.agent_maintenance_interval",
        c"Seconds between runs of run_agent_maintenance() by the background worker.",
        c"The worker runs only with shared_preload_libraries; 0 pauses it.",
        &AGENT_MAINTENANCE_INTERVAL,
        0,
        86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"api_key_mgmt.agent_maintenance_database",
        c"The database the agent maintenance worker connects to.",
        c"Read when the worker starts; it does nothing where the extension is not installed.",
        &AGENT_MAINTENANCE_DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// The maintenance worker's database.
pub fn agent_maintenance_database() -> String {
    AGENT_MAINTENANCE_DATABASE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres".to_owned())
}

pub fn init() {
    init_metering();
    init_agents();
    GucRegistry::define_string_guc(
        c"api_key_mgmt.tenant_id",
        c"The tenant an app server acts for in this transaction.",
        c"Counts for api_key_mgmt_service as is; for other roles only when the user is a member of the tenant.",
        &TENANT_ID,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"api_key_mgmt.user_id",
        c"The user an app server acts for, when there is no JWT sub claim.",
        c"Used for tenant membership and as the actor in the audit log.",
        &USER_ID,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"api_key_mgmt.tenant_claims",
        c"Comma-separated JWT claim paths naming the tenant, tried in order.",
        c"Dots descend into objects, e.g. app_metadata.tenant_id (Supabase).",
        &TENANT_CLAIMS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"api_key_mgmt.api_key_header",
        c"Request header carrying the API key, for authenticate_request().",
        c"Authorization: Bearer <key> is also accepted when the token is not a JWT.",
        &API_KEY_HEADER,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"api_key_mgmt.unmatched_routes",
        c"What authenticate_request() does when no route matches: deny or any_key.",
        c"deny (default): 403. any_key: any valid key passes, with no scope required.",
        &UNMATCHED_ROUTES,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"api_key_mgmt.audit_secret_reads",
        c"Append an audit row for every decryption of a tenant secret.",
        c"On (default): reading a secret needs a read-write transaction.",
        &AUDIT_SECRET_READS,
        GucContext::Suset,
        GucFlags::default(),
    );
    // Server-start setting: defined only while preloading (as rate_limit_slots); without
    // preload there is no queue and the setting does not exist.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        define_audit_queue_size();
    }
    GucRegistry::define_int_guc(
        c"api_key_mgmt.audit_queue_wait",
        c"Milliseconds a secret read waits for room in a full audit queue before it is audited synchronously.",
        c"0: never wait. A full queue normally drains within tens of milliseconds.",
        &AUDIT_QUEUE_WAIT,
        0,
        60_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"api_key_mgmt.audit_reads_in_transaction",
        c"Deprecated: on means api_key_mgmt.audit_read_mode = transaction.",
        c"On: the entry commits or rolls back with the read, and reads need a read-write transaction.",
        &AUDIT_READS_IN_TRANSACTION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"api_key_mgmt.audit_read_mode",
        c"How a secret read's audit entry is written: durable, queued or transaction.",
        c"durable: the plaintext is returned only after the entry is committed (fails closed with 58000); queued: returned at once, the entries still queued are lost in a crash; transaction: written in the reading transaction.",
        &AUDIT_READ_MODE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_key_mgmt.metrics_top_tenants",
        c"How many tenants the metrics view shows the month's spend of, highest first.",
        c"0 (the default): no per-tenant series. Each one is a Prometheus series labelled by tenant id.",
        &METRICS_TOP_TENANTS,
        0,
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_key_mgmt.audit_durable_timeout",
        c"Milliseconds a durable secret read waits for its audit entry to be committed before it fails (58000).",
        c"The worker commits a batch within milliseconds; a longer wait means it is not running or cannot write.",
        &AUDIT_DURABLE_TIMEOUT,
        1,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"api_key_mgmt.master_key_file",
        c"File holding the master key versions that encrypt tenant secrets.",
        c"Readable by the server's OS user only. Lines: <version> <64 hex or base64 key> [active].",
        &MASTER_KEY_FILE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"api_key_mgmt.import_prefixes",
        c"Prefixes of foreign-format keys that import_api_key accepts and validation looks up.",
        c"Comma-separated, e.g. 'unkey_,sk-old-'. Empty: only native keys are ever looked up.",
        &IMPORT_PREFIXES,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// The configured import prefixes (owned: the setting may change between calls).
pub fn import_prefixes() -> Vec<String> {
    match IMPORT_PREFIXES.get() {
        Some(s) => crate::keys::parse_prefix_list(&s.to_string_lossy())
            .into_iter()
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    }
}

/// The configured master key file path, if any (empty counts as unset).
pub fn master_key_file() -> Option<String> {
    MASTER_KEY_FILE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

/// The JWT claim paths naming the tenant.
pub fn tenant_claim_paths() -> Vec<String> {
    TENANT_CLAIMS
        .get()
        .map(|s| {
            s.to_string_lossy()
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn define_audit_queue_size() {
    GucRegistry::define_int_guc(
        c"api_key_mgmt.audit_queue_size",
        c"Secret-read audit entries the shared-memory queue holds (0: no queue).",
        c"With the library preloaded, reads in the maintenance worker's database are audited through the queue, written by the worker.",
        &AUDIT_QUEUE_SIZE,
        0,
        65536,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}
