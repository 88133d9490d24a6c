//! Tenant secrets, the pgrx layer over [`crate::crypto`]: the master key file cache,
//! sealing and resealing for the plpgsql in `sql/006_secrets.sql`, and the read path
//! behind `get_tenant_secret` / `resolve_provider_key`.
//!
//! The plaintext of a secret exists only inside these functions and in their result;
//! no error or message here carries it, a key, or the key file's path.

use crate::audit::{self, Source};
use crate::catalog::{self, Key, Row};
use crate::crypto::{self, CryptoError, MasterKeys};
use crate::result_row::ResultRow;
use crate::scopes;
use hashbrown::{HashMap, HashSet};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{IntoDatum, PgSqlErrorCode, Uuid};
use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;
use zeroize::Zeroizing;

use crate::errors::{raise, raise_with_detail, required};
use crate::gucs::AuditReadMode;

/// The key file as last read by this backend, which versions were checked against
/// their recorded key-check values since, and the data keys derived from them (HKDF is
/// the largest cost of a read; the keys are wiped when the file changes or the backend
/// ends, like the master keys they come from).
struct Keyring {
    path: String,
    stamp: (i64, i64, u64, u64, i64, i64),
    /// When the file's stamp was last compared with `stamp`.
    checked: std::time::Instant,
    keys: MasterKeys,
    verified: HashSet<i32>,
    /// Boxed: growing the map moves only pointers, so no copy of a key is left behind
    /// unwiped (a `DataKey` wipes itself when dropped). foldhash, as `catalog::RowCache`.
    data_keys: HashMap<(i32, Option<[u8; 16]>), Box<crypto::DataKey>>,
}

/// Data keys cached per backend before the cache is emptied and filled again.
const DATA_KEY_CACHE: usize = 4096;

/// The data key of `tenant` under master key `version` (verified), derived once per
/// backend and key file generation.
fn data_key(ring: &mut Keyring, version: i32, tenant: Option<[u8; 16]>) -> &crypto::DataKey {
    if !ring.data_keys.contains_key(&(version, tenant)) {
        let master = master_key(ring, version);
        if ring.data_keys.len() >= DATA_KEY_CACHE {
            ring.data_keys.clear();
        }
        let dek = crypto::derive_data_key(&master, tenant.as_ref());
        ring.data_keys.insert((version, tenant), Box::new(dek));
    }
    &ring.data_keys[&(version, tenant)]
}

thread_local! {
    static KEYRING: RefCell<Option<Keyring>> = const { RefCell::new(None) };
}

/// How long a read trusts the key file it last looked at (see [`with_keyring_for_read`]).
const KEY_FILE_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// [`with_keyring`] for decrypting under master key `version`: while the file was
/// looked at less than [`KEY_FILE_RECHECK`] ago, its path is unchanged and `version`
/// is in it and verified, the `stat()` of the file is skipped (it is a good part of a
/// read's cost). A version the backend has not seen yet, a new path, and every seal
/// still look at the file at once; editing the file under a running server is seen by
/// reads within a second.
fn with_keyring_for_read<R>(version: i32, f: impl FnOnce(&mut Keyring) -> R) -> R {
    let path = crate::gucs::master_key_file();
    let trusted = KEYRING.with(|cell| {
        matches!(&*cell.borrow(), Some(k) if Some(&k.path) == path.as_ref()
            && k.verified.contains(&version)
            && k.checked.elapsed() < KEY_FILE_RECHECK)
    });
    if trusted {
        KEYRING.with(|cell| f(cell.borrow_mut().as_mut().expect("checked above")))
    } else {
        with_keyring(f)
    }
}

/// Run `f` with the master keys, reading the file again whenever its path, size,
/// modification time or inode changed (so a rotation is seen by every backend).
fn with_keyring<R>(f: impl FnOnce(&mut Keyring) -> R) -> R {
    let Some(path) = crate::gucs::master_key_file() else {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "no master key is configured: api_key_mgmt.master_key_file is not set",
            "A superuser sets it (postgresql.conf or ALTER SYSTEM) to a file readable only by the server's OS user.",
        )
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            "the master key file named by api_key_mgmt.master_key_file does not exist",
            "",
        ),
        Err(_) => raise(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            "the master key file named by api_key_mgmt.master_key_file cannot be read",
            "It must be readable by the server's OS user.",
        ),
    };
    let stamp = (
        meta.mtime(),
        meta.mtime_nsec(),
        meta.len(),
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec(),
    );
    KEYRING.with(|cell| {
        let mut slot = cell.borrow_mut();
        let fresh = matches!(&*slot, Some(k) if k.path == path && k.stamp == stamp);
        if !fresh {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => Zeroizing::new(t),
                Err(_) => raise(
                    PgSqlErrorCode::ERRCODE_IO_ERROR,
                    "the master key file named by api_key_mgmt.master_key_file cannot be read",
                    "It must be readable by the server's OS user.",
                ),
            };
            let keys = match MasterKeys::parse(&text) {
                Ok(k) => k,
                Err(e) => raise(
                    PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
                    format!("the master key file is malformed: {e}"),
                    "Each line: <version> <64 hex characters or base64 of 32 bytes> [active].",
                ),
            };
            *slot = Some(Keyring {
                path,
                stamp,
                checked: std::time::Instant::now(),
                keys,
                verified: HashSet::new(),
                data_keys: HashMap::new(),
            });
        }
        let ring = slot.as_mut().expect("just filled");
        ring.checked = std::time::Instant::now();
        f(ring)
    })
}

/// The master key of `version`, checked once per file generation against the
/// key-check value recorded in `master_key_versions`.
fn master_key(ring: &mut Keyring, version: i32) -> crypto::MasterKey {
    let Some(key) = ring.keys.get(version).cloned() else {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("master key version {version} is not in the master key file"),
            "Secrets encrypted under a version stay readable only while that version is in the file.",
        )
    };
    if !ring.verified.contains(&version) {
        let recorded = catalog::lookup_unique(
            c"master_key_versions",
            c"master_key_versions_pkey",
            "version",
            pg_sys::F_INT4EQ,
            version.into_datum().expect("int4 datum"),
        )
        .and_then(|row| row.get::<Vec<u8>>("key_check"));
        match recorded {
            None => raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("master key version {version} has no recorded key-check value"),
                "rotate_master_key() records the active version.",
            ),
            Some(stored) if !crypto::ct_eq(&stored, &crypto::key_check_value(&key)) => raise(
                PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                format!("master key version {version} in the key file is not the key recorded for that version"),
                "api_key_mgmt.master_key_file names the wrong file, or the file was edited.",
            ),
            Some(_) => {
                ring.verified.insert(version);
            }
        }
    }
    key
}

fn tenant_bytes(tenant: Option<Uuid>) -> Option<[u8; 16]> {
    tenant.map(|t| *t.as_bytes())
}

/// Seal `plaintext` for a row under the active master key version.
fn seal(
    tenant: Option<Uuid>,
    secret_id: Uuid,
    provider: &str,
    plaintext: &[u8],
) -> (Vec<u8>, Vec<u8>, i32) {
    with_keyring(|ring| {
        let version = ring.keys.active_version();
        let t = tenant_bytes(tenant);
        let dek = data_key(ring, version, t);
        let aad = crypto::aad(t.as_ref(), secret_id.as_bytes(), provider, version);
        match crypto::encrypt(dek, plaintext, &aad) {
            Ok(sealed) => (sealed.ciphertext, sealed.nonce.to_vec(), version),
            Err(e) => crypto_error(e, secret_id),
        }
    })
}

fn crypto_error(e: CryptoError, secret_id: Uuid) -> ! {
    match e {
        CryptoError::PlaintextLength { .. } => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "secret must be 1 to 65536 bytes",
            "",
        ),
        CryptoError::Random => raise(
            PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
            "the operating system's random source failed",
            "",
        ),
        _ => raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "secret {secret_id} cannot be decrypted: its ciphertext, nonce or row do not match"
            ),
            "The stored ciphertext was altered or copied from another row or tenant.",
        ),
    }
}

/// A stored secret row, decrypted. The plaintext is wiped when dropped. Also used by
/// `resolve_proxy_token` (src/agents_pg.rs).
pub(crate) fn open_row(row: &Row) -> Zeroizing<Vec<u8>> {
    open_sealed(&Sealed::of(row))
}

/// What decrypting a stored secret and reporting it needs, copied out of its row (so a
/// backend can keep it between calls: ciphertext, never plaintext).
struct Sealed {
    id: Uuid,
    tenant: Option<Uuid>,
    provider: String,
    model: Option<String>,
    environment: String,
    scopes: Vec<String>,
    version: i32,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl Sealed {
    fn of(row: &Row) -> Sealed {
        Sealed {
            id: row.get("id").expect("id is NOT NULL"),
            tenant: row.get("tenant_id"),
            provider: row.get("provider").expect("provider is NOT NULL"),
            model: row.get("model"),
            environment: row.get("environment").expect("environment is NOT NULL"),
            scopes: row.get("scopes").unwrap_or_default(),
            version: row.get("key_version").expect("key_version is NOT NULL"),
            nonce: row.get("nonce").expect("nonce is NOT NULL"),
            ciphertext: row.get("ciphertext").expect("ciphertext is NOT NULL"),
        }
    }
}

fn open_sealed(s: &Sealed) -> Zeroizing<Vec<u8>> {
    with_keyring_for_read(s.version, |ring| {
        let t = tenant_bytes(s.tenant);
        let dek = data_key(ring, s.version, t);
        let aad = crypto::aad(t.as_ref(), s.id.as_bytes(), &s.provider, s.version);
        match crypto::decrypt(dek, &s.nonce, &s.ciphertext, &aad) {
            Ok(p) => Zeroizing::new(p),
            Err(e) => crypto_error(e, s.id),
        }
    })
}

/// `master_keys() RETURNS TABLE (version int, active bool, key_check bytea)`
#[pg_extern(sql = false)]
fn master_keys() -> TableIterator<
    'static,
    (
        name!(version, i32),
        name!(active, bool),
        name!(key_check, Vec<u8>),
    ),
> {
    let rows = with_keyring(|ring| {
        let active = ring.keys.active_version();
        ring.keys
            .versions()
            .into_iter()
            .map(|v| {
                let key = ring.keys.get(v).expect("listed version");
                (v, v == active, crypto::key_check_value(key).to_vec())
            })
            .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}

/// `seal_secret(tenant_id uuid, secret_id uuid, provider text, secret text) RETURNS TABLE (ciphertext bytea, nonce bytea, key_version int)`
#[pg_extern(sql = false)]
fn seal_secret(
    tenant_id: Option<Uuid>,
    secret_id: Uuid,
    provider: &str,
    secret: &str,
) -> TableIterator<
    'static,
    (
        name!(ciphertext, Vec<u8>),
        name!(nonce, Vec<u8>),
        name!(key_version, i32),
    ),
> {
    TableIterator::once(seal(tenant_id, secret_id, provider, secret.as_bytes()))
}

/// `reseal_secret(secret_id uuid) RETURNS TABLE (ciphertext bytea, nonce bytea, key_version int)`
#[pg_extern(sql = false)]
fn reseal_secret(
    secret_id: Uuid,
) -> TableIterator<
    'static,
    (
        name!(ciphertext, Vec<u8>),
        name!(nonce, Vec<u8>),
        name!(key_version, i32),
    ),
> {
    let Some(row) = catalog::lookup_unique(
        c"tenant_secrets",
        c"tenant_secrets_pkey",
        "id",
        pg_sys::F_UUID_EQ,
        secret_id.into_datum().expect("uuid datum"),
    ) else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("secret {secret_id} does not exist"),
            "",
        )
    };
    let plaintext = open_row(&row);
    let tenant: Option<Uuid> = row.get("tenant_id");
    let provider: String = row.get("provider").expect("provider is NOT NULL");
    TableIterator::once(seal(tenant, secret_id, &provider, &plaintext))
}

/// `secret_preview(secret text) RETURNS text`
#[pg_extern(sql = false, immutable, parallel_safe)]
fn secret_preview(secret: &str) -> String {
    crypto::preview(secret)
}

struct Resolved {
    secret: Rc<Sealed>,
    source: Source,
    plaintext: Zeroizing<Vec<u8>>,
}

/// Where a resolution starts: (tenant, provider, model, environment).
type Slot = (Option<[u8; 16]>, String, Option<String>, String);

/// Cached secrets per backend before the cache is emptied and filled again.
const SECRET_CACHE: usize = 4096;

thread_local! {
    /// Secrets found at the first place their resolution looks, with the row version
    /// they were copied from.
    static SECRETS: RefCell<catalog::RowCache<Slot, Rc<Sealed>>> =
        RefCell::new(catalog::RowCache::new(SECRET_CACHE));
}

/// A [`Slot`] borrowed from a call's arguments: it hashes and compares as the owned
/// tuple does, so a cache hit allocates nothing.
#[derive(Clone, Copy)]
struct SlotRef<'a>(Option<[u8; 16]>, &'a str, Option<&'a str>, &'a str);

impl std::hash::Hash for SlotRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // As the tuple `Slot` hashes: field by field (a `String` hashes as its `str`).
        (self.0, self.1, self.2, self.3).hash(h)
    }
}

impl hashbrown::Equivalent<Slot> for SlotRef<'_> {
    fn equivalent(&self, key: &Slot) -> bool {
        self.0 == key.0 && self.1 == key.1 && self.2 == key.2.as_deref() && self.3 == key.3
    }
}

impl SlotRef<'_> {
    fn owned(self) -> Slot {
        (
            self.0,
            self.1.to_owned(),
            self.2.map(str::to_owned),
            self.3.to_owned(),
        )
    }
}

/// The cached secret of `slot` if its row version is still the one the current
/// snapshot sees (one heap fetch by TID instead of the index probe). Only secrets
/// found at the first place a resolution looks are cached: nothing can come before
/// them, so a visible cached version is exactly what the probe would return.
fn cached_secret(slot: &SlotRef) -> Option<Rc<Sealed>> {
    let (stamp, secret) = SECRETS.with(|c| c.borrow_mut().get(slot))?;
    catalog::still_visible(c"tenant_secrets", stamp, "id", secret.id.as_bytes()).then_some(secret)
}

/// The resolution order: the tenant's secret for the model, the tenant's for the
/// provider, the platform's for the model, the platform's for the provider.
fn candidates(
    tenant: Option<Uuid>,
    model: Option<&str>,
) -> Vec<(Option<Uuid>, Option<&str>, Source)> {
    let mut out = Vec::with_capacity(4);
    if let Some(t) = tenant {
        if let Some(m) = model {
            out.push((Some(t), Some(m), Source::Model));
        }
        out.push((Some(t), None, Source::Tenant));
    }
    if let Some(m) = model {
        out.push((None, Some(m), Source::Platform));
    }
    out.push((None, None, Source::Platform));
    out
}

/// Shared by `get_tenant_secret` and `resolve_provider_key`.
fn resolve(
    tenant: Option<Uuid>,
    provider: Option<&str>,
    scope: Option<&str>,
    model: Option<&str>,
    environment: Option<&str>,
) -> Option<Resolved> {
    let provider = required(provider, "provider");
    let scope = required(scope, "scope");
    if !scopes::is_concrete(scope) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("scope \"{scope}\" is invalid: ask for one area:action"),
            "",
        );
    }
    let environment = match required(environment, "environment") {
        e @ ("dev" | "staging" | "prod") => e,
        _ => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "environment must be 'dev', 'staging' or 'prod'",
            "",
        ),
    };
    for (i, (t, m, source)) in candidates(tenant, model).into_iter().enumerate() {
        // Only the first place looked at is cached (see cached_secret).
        let slot = (i == 0).then(|| SlotRef(t.map(|t| *t.as_bytes()), provider, m, environment));
        let secret = match slot.as_ref().and_then(cached_secret) {
            Some(secret) => secret,
            None => {
                // In the order of the index's columns (tenant_id, provider, model, environment).
                let keys = [
                    Key {
                        column: "tenant_id",
                        value: t.and_then(IntoDatum::into_datum),
                        eq_proc: pg_sys::F_UUID_EQ,
                    },
                    Key {
                        column: "provider",
                        value: provider.into_datum(),
                        eq_proc: pg_sys::F_TEXTEQ,
                    },
                    Key {
                        column: "model",
                        value: m.and_then(IntoDatum::into_datum),
                        eq_proc: pg_sys::F_TEXTEQ,
                    },
                    Key {
                        column: "environment",
                        value: environment.into_datum(),
                        eq_proc: pg_sys::F_TEXTEQ,
                    },
                ];
                let Some(row) =
                    catalog::lookup(c"tenant_secrets", c"tenant_secrets_one_per_slot", &keys)
                else {
                    continue;
                };
                let secret = Rc::new(Sealed::of(&row));
                if let Some(slot) = slot {
                    SECRETS.with(|c| {
                        c.borrow_mut()
                            .put(slot.owned(), row.stamp(), secret.clone())
                    });
                }
                secret
            }
        };
        if !scopes::any_covers(&secret.scopes, scope) {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "the {provider} secret found ({}) is not allowed for scope \"{scope}\"",
                    source.as_str()
                ),
                "The secret's scopes list what it may be used for.",
            );
        }
        let plaintext = open_sealed(&secret);
        audit_read(&secret, provider, source, scope);
        return Some(Resolved {
            secret,
            source,
            plaintext,
        });
    }
    None
}

/// Offer the read's audit entry to the shared-memory queue, with what
/// `api_key_mgmt_internal.audit()` records: the user id (JWT `sub`, else the setting)
/// or the role, the role, and the client's address and user agent from PostgREST's
/// `request.headers`.
/// `durable`: return only once the worker has committed the entry, else raise 58000.
fn queue_read(
    id: Uuid,
    tenant: Option<Uuid>,
    provider: &str,
    source: Source,
    scope: &str,
    durable: bool,
) -> bool {
    // SAFETY: reads a backend-global set at connection.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    // The headers and claims are parsed only when the queue would take the entry.
    if !durable && !crate::audit_pg::accepts(database) {
        return false;
    }
    let role = crate::tenancy_pg::invoker_name();
    let actor = crate::tenancy_pg::current_user_id();
    let headers = crate::tenancy_pg::setting(c"request.headers")
        .and_then(|h| serde_json::from_str::<serde_json::Value>(&h).ok())
        .filter(serde_json::Value::is_object);
    let client_ip = headers.as_ref().and_then(audit::client_ip);
    let user_agent = headers.as_ref().and_then(audit::user_agent);
    let read = audit::Read {
        database,
        occurred_at: unsafe { pg_sys::GetCurrentTimestamp() },
        tenant: tenant.map(|t| *t.as_bytes()),
        secret: *id.as_bytes(),
        provider,
        source,
        scope,
        actor: actor.as_deref().unwrap_or(&role),
        actor_role: &role,
        client_ip: client_ip.as_deref(),
        user_agent: user_agent.as_deref(),
    };
    if !durable {
        return crate::audit_pg::enqueue(&read);
    }
    if let Err(why) = crate::audit_pg::enqueue_durable(&read) {
        raise_with_detail(
            PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
            "the audit entry of this secret read could not be made durable; the secret is withheld",
            why.detail(),
            "api_key_mgmt.audit_read_mode = 'durable' returns a secret only after its audit entry is committed. See README, Audit log.",
        );
    }
    true
}

/// Append `secret.decrypted` to the audit log (unless `api_key_mgmt.audit_secret_reads`
/// is off), as `api_key_mgmt.audit_read_mode` says: `durable`, through the
/// shared-memory queue (src/audit_pg.rs), returning only once the entry is committed
/// (else 58000: the plaintext is not returned); `queued`, through the queue when it
/// takes the entry, else in the reading transaction; `transaction`, in the reading
/// transaction. An audit in the transaction needs a read-write transaction: refused
/// (25006) otherwise, rather than reading without a trace.
fn audit_read(secret: &Sealed, provider: &str, source: Source, scope: &str) {
    if !crate::gucs::AUDIT_SECRET_READS.get() {
        return;
    }
    let (id, tenant) = (secret.id, secret.tenant);
    match crate::gucs::audit_read_mode() {
        AuditReadMode::Durable => {
            queue_read(id, tenant, provider, source, scope, true);
            return;
        }
        AuditReadMode::Queued => {
            if queue_read(id, tenant, provider, source, scope, false) {
                return;
            }
        }
        AuditReadMode::Transaction => {}
    }
    if unsafe { pg_sys::XactReadOnly || pg_sys::RecoveryInProgress() } {
        raise(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "reading a tenant secret is audited and needs a read-write transaction",
            "Read secrets on the primary outside READ ONLY transactions, or turn api_key_mgmt.audit_secret_reads off.",
        );
    }
    // SECURITY DEFINER (the reader may not write audit_log itself).
    let text = |s: &str| (pg_sys::TEXTOID, s.into_datum());
    catalog::call_internal(
        c"audit_secret_read",
        &[
            (pg_sys::UUIDOID, tenant.and_then(IntoDatum::into_datum)),
            text(&id.to_string()),
            text(provider),
            text(source.as_str()),
            text(scope),
        ],
    );
}

/// A secret's plaintext as a `text` datum, made straight from the buffer (which its
/// owner wipes): no Rust `String` copy of it is left in freed memory. `XX001` when it
/// is not UTF-8.
pub(crate) fn plaintext_text(plaintext: &[u8]) -> pg_sys::Datum {
    match std::str::from_utf8(plaintext) {
        Ok(s) => s.into_datum().expect("text datum"),
        Err(_) => raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            "a stored secret is not valid UTF-8",
            "",
        ),
    }
}

/// [`resolve`] with the arguments of a raw call of `get_tenant_secret` or
/// `resolve_provider_key` (tenant_id, provider, scope, model, environment).
///
/// # Safety
/// `fcinfo` must be a call of one of those two functions.
unsafe fn resolve_call(fcinfo: pg_sys::FunctionCallInfo) -> Option<Resolved> {
    use pgrx::fcinfo::pg_getarg;
    unsafe {
        resolve(
            pg_getarg::<Uuid>(fcinfo, 0),
            pg_getarg::<&str>(fcinfo, 1),
            pg_getarg::<&str>(fcinfo, 2),
            pg_getarg::<&str>(fcinfo, 3),
            pg_getarg::<&str>(fcinfo, 4),
        )
    }
}

finfo_v1!(pg_finfo_akm_get_tenant_secret);

/// `get_tenant_secret(tenant_id uuid, provider text, scope text, model text, environment text) RETURNS text`
/// — raw, like `resolve_provider_key`, so that the result is made from the wiped
/// plaintext buffer directly.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn akm_get_tenant_secret(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let resolved = resolve_call(fcinfo);
        match resolved {
            Some(r) => plaintext_text(&r.plaintext),
            None => {
                (*fcinfo).isnull = true;
                pg_sys::Datum::from(0usize)
            }
        }
    }
}

finfo_v1!(pg_finfo_akm_resolve_provider_key);

/// `resolve_provider_key(tenant_id uuid, provider text, scope text, model text, environment text) RETURNS provider_key`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn akm_resolve_provider_key(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let resolved = resolve_call(fcinfo);
        let mut out = ResultRow::<7>::default();
        if let Some(r) = resolved {
            out.set(0, Some(plaintext_text(&r.plaintext)));
            out.set(1, r.source.as_str().into_datum());
            let s = &r.secret;
            out.set(2, s.id.into_datum());
            out.set(3, s.tenant.into_datum());
            out.set(4, s.provider.as_str().into_datum());
            out.set(5, s.model.as_deref().into_datum());
            out.set(6, s.environment.as_str().into_datum());
        }
        out.into_datum(fcinfo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_order() {
        let t = Uuid::from_bytes([7; 16]);
        let order = |t, m| {
            candidates(t, m)
                .into_iter()
                .map(|(t, m, s)| (t.is_some(), m.is_some(), s))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            order(Some(t), Some("gpt-4o")),
            vec![
                (true, true, Source::Model),
                (true, false, Source::Tenant),
                (false, true, Source::Platform),
                (false, false, Source::Platform),
            ]
        );
        assert_eq!(
            order(Some(t), None),
            vec![
                (true, false, Source::Tenant),
                (false, false, Source::Platform)
            ]
        );
        assert_eq!(order(None, None), vec![(false, false, Source::Platform)]);
    }

    #[test]
    fn slot_refs_find_owned_slots() {
        let stamp = catalog::Stamp::default();
        let mut cache: catalog::RowCache<Slot, u8> = catalog::RowCache::new(8);
        let t = Some([7u8; 16]);
        cache.get(&SlotRef(None, "", None, "")); // takes the current generation
        cache.put(SlotRef(t, "openai", None, "prod").owned(), stamp, 1);
        cache.put(
            SlotRef(t, "openai", Some("gpt-4o"), "prod").owned(),
            stamp,
            2,
        );
        cache.put(SlotRef(None, "openai", None, "prod").owned(), stamp, 3);
        let get = |c: &mut catalog::RowCache<Slot, u8>, s: SlotRef| c.get(&s).map(|(_, v)| v);
        assert_eq!(get(&mut cache, SlotRef(t, "openai", None, "prod")), Some(1));
        assert_eq!(
            get(&mut cache, SlotRef(t, "openai", Some("gpt-4o"), "prod")),
            Some(2)
        );
        assert_eq!(
            get(&mut cache, SlotRef(None, "openai", None, "prod")),
            Some(3)
        );
        assert_eq!(
            get(&mut cache, SlotRef(t, "openai", Some(""), "prod")),
            None
        );
        assert_eq!(get(&mut cache, SlotRef(t, "openai", None, "dev")), None);
        assert_eq!(get(&mut cache, SlotRef(t, "anthropic", None, "prod")), None);
        assert_eq!(
            get(&mut cache, SlotRef(Some([8; 16]), "openai", None, "prod")),
            None
        );
        // Field boundaries count: ("ab", "c") is not ("a", "bc").
        cache.put(SlotRef(t, "ab", Some("c"), "prod").owned(), stamp, 4);
        assert_eq!(get(&mut cache, SlotRef(t, "a", Some("bc"), "prod")), None);
        assert_eq!(
            get(&mut cache, SlotRef(t, "ab", Some("c"), "prod")),
            Some(4)
        );
    }
}
