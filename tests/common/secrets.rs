//! Tenant secrets: master key files written by the tests, and SQL helpers. Secrets
//! always travel as bind parameters, never inside the statement text.

use super::keys::random_alnum;
use super::{is_root, Cluster};
use postgres::{Client, Error, GenericClient};
use rand::RngCore;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The scope the tests ask secrets for (stored secrets allow `*` unless told).
pub const SCOPE: &str = "agents:run";

/// One master key version: 32 random bytes.
#[derive(Clone)]
pub struct MasterKey {
    pub version: i32,
    pub bytes: [u8; 32],
}

impl MasterKey {
    pub fn random(version: i32) -> MasterKey {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        MasterKey { version, bytes }
    }

    /// Lower-case hex, as written to key files.
    pub fn hex(&self) -> String {
        self.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Every textual form a leak of the key could take: hex in either case, and base64
    /// (without its padding, so an unpadded copy is caught too).
    pub fn forms(&self) -> Vec<String> {
        let hex = self.hex();
        vec![
            hex.to_uppercase(),
            hex,
            base64(&self.bytes).trim_end_matches('=').to_owned(),
        ]
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| chunk.get(i).copied().unwrap_or(0) as u32;
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `cluster.dir/keys`: outside the data directory, owned by the server's OS user, 0700.
pub fn key_dir(cluster: &Cluster) -> PathBuf {
    let dir = cluster.dir.join("keys");
    std::fs::create_dir_all(&dir).expect("create the key directory");
    give_to_server(cluster, &dir, 0o700);
    dir
}

/// Owner: the owner of the cluster's directory (the server's OS user); then `mode`.
fn give_to_server(cluster: &Cluster, path: &Path, mode: u32) {
    if is_root() {
        let owner = std::fs::metadata(&cluster.dir).expect("stat the cluster directory");
        std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Write `text` to `path` in place (truncated, same inode when it exists), mode 0600,
/// owned by the server's OS user.
pub fn write_private(cluster: &Cluster, path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    drop(f);
    give_to_server(cluster, path, 0o600);
}

/// A master key file: `<version> <64 hex> [active]` per line.
pub struct KeyFile {
    pub cluster: &'static Cluster,
    pub path: PathBuf,
    pub keys: Vec<MasterKey>,
    pub active: Option<i32>,
}

impl KeyFile {
    /// Write `keys` to `cluster.dir/keys/<name>` (`active`: the version marked active;
    /// None marks none, so the highest is active).
    pub fn create(
        cluster: &'static Cluster,
        name: &str,
        keys: Vec<MasterKey>,
        active: Option<i32>,
    ) -> KeyFile {
        let file = KeyFile {
            cluster,
            path: key_dir(cluster).join(name),
            keys,
            active,
        };
        file.write();
        file
    }

    /// The file's lines, as written.
    pub fn lines(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| {
                let mark = if self.active == Some(k.version) {
                    " active"
                } else {
                    ""
                };
                format!("{} {}{mark}", k.version, k.hex())
            })
            .collect()
    }

    fn write(&self) {
        let mut text = self.lines().join("\n");
        text.push('\n');
        write_private(self.cluster, &self.path, &text);
    }

    /// Rewrite the same file in place with other versions.
    pub fn rewrite(&mut self, keys: Vec<MasterKey>, active: Option<i32>) {
        self.keys = keys;
        self.active = active;
        self.write();
    }

    /// The path as SQL text; the harness's paths never hold a quote.
    pub fn sql_path(&self) -> String {
        sql_path(&self.path)
    }
}

fn sql_path(path: &Path) -> String {
    let s = path.to_str().expect("UTF-8 path").to_owned();
    assert!(!s.contains('\''), "a path with a quote: {s}");
    s
}

/// `ALTER DATABASE <db> SET api_key_mgmt.master_key_file` (new sessions see it).
pub fn set_database_key_file(c: &mut Client, db: &str, path: &Path) {
    c.batch_execute(&format!(
        "ALTER DATABASE {db} SET api_key_mgmt.master_key_file = '{}'",
        sql_path(path)
    ))
    .unwrap_or_else(|e| panic!("ALTER DATABASE {db} SET api_key_mgmt.master_key_file: {e:?}"));
}

/// A key file of its own (one random version 1) for database `db` of `cluster`, for
/// clusters a test starts itself ([`KeyFile`] is for the shared primary).
pub fn private_key_file(cluster: &Cluster, c: &mut Client, db: &str, name: &str) {
    let path = key_dir(cluster).join(name);
    write_private(
        cluster,
        &path,
        &format!("1 {}\n", MasterKey::random(1).hex()),
    );
    set_database_key_file(c, db, &path);
}

/// `SET api_key_mgmt.master_key_file` for this session (superuser only).
pub fn set_session_key_file(c: &mut Client, path: &Path) {
    c.batch_execute(&format!(
        "SET api_key_mgmt.master_key_file = '{}'",
        sql_path(path)
    ))
    .unwrap_or_else(|e| panic!("SET api_key_mgmt.master_key_file: {e:?}"));
}

/// An OpenAI-looking secret nobody else has.
pub fn openai_secret() -> String {
    format!("sk-proj-{}", random_alnum(40))
}

/// An Anthropic-looking secret nobody else has.
pub fn anthropic_secret() -> String {
    format!("sk-ant-api03-{}", random_alnum(40))
}

/// `put_tenant_secret(tenant, provider, secret, model)`: the secret's id.
pub fn try_put_secret(
    c: &mut impl GenericClient,
    tenant: Option<&str>,
    provider: &str,
    secret: &str,
    model: Option<&str>,
) -> Result<String, Error> {
    c.query_one(
        "SELECT api_key_mgmt.put_tenant_secret($1::text::uuid, $2, $3, $4)::text",
        &[&tenant, &provider, &secret, &model],
    )
    .map(|r| r.get(0))
}

#[track_caller]
pub fn put_secret(
    c: &mut impl GenericClient,
    tenant: Option<&str>,
    provider: &str,
    secret: &str,
    model: Option<&str>,
) -> String {
    try_put_secret(c, tenant, provider, secret, model)
        .unwrap_or_else(|e| panic!("put_tenant_secret({tenant:?}, {provider}, {model:?}): {e:?}"))
}

/// `get_tenant_secret(tenant, provider, SCOPE, model)`.
pub fn try_get_secret(
    c: &mut impl GenericClient,
    tenant: Option<&str>,
    provider: &str,
    model: Option<&str>,
) -> Result<Option<String>, Error> {
    c.query_one(
        "SELECT api_key_mgmt.get_tenant_secret($1::text::uuid, $2, $3, $4)",
        &[&tenant, &provider, &SCOPE, &model],
    )
    .map(|r| r.get(0))
}

#[track_caller]
pub fn get_secret(
    c: &mut impl GenericClient,
    tenant: Option<&str>,
    provider: &str,
    model: Option<&str>,
) -> Option<String> {
    try_get_secret(c, tenant, provider, model)
        .unwrap_or_else(|e| panic!("get_tenant_secret({tenant:?}, {provider}, {model:?}): {e:?}"))
}

/// What `resolve_provider_key` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderKey {
    pub secret: Option<String>,
    pub source: Option<String>,
    pub secret_id: Option<String>,
    pub tenant_id: Option<String>,
}

/// `resolve_provider_key(tenant, provider, SCOPE, model)`.
pub fn try_resolve(
    c: &mut impl GenericClient,
    tenant: Option<&str>,
    provider: &str,
    model: Option<&str>,
) -> Result<ProviderKey, Error> {
    c.query_one(
        "SELECT r.secret, r.source, r.secret_id::text, r.tenant_id::text \
           FROM api_key_mgmt.resolve_provider_key($1::text::uuid, $2, $3, $4) r",
        &[&tenant, &provider, &SCOPE, &model],
    )
    .map(|r| ProviderKey {
        secret: r.get(0),
        source: r.get(1),
        secret_id: r.get(2),
        tenant_id: r.get(3),
    })
}

#[track_caller]
pub fn resolve(
    c: &mut impl GenericClient,
    tenant: Option<&str>,
    provider: &str,
    model: Option<&str>,
) -> ProviderKey {
    try_resolve(c, tenant, provider, model).unwrap_or_else(|e| {
        panic!("resolve_provider_key({tenant:?}, {provider}, {model:?}): {e:?}")
    })
}

/// `(key_version, secret_version)` of a stored secret.
pub fn secret_versions(c: &mut impl GenericClient, id: &str) -> (i32, i32) {
    let row = c
        .query_one(
            "SELECT key_version, secret_version FROM api_key_mgmt.tenant_secrets \
              WHERE id = $1::text::uuid",
            &[&id],
        )
        .unwrap_or_else(|e| panic!("versions of secret {id}: {e:?}"));
    (row.get(0), row.get(1))
}

/// `rotate_master_key()`.
pub fn try_rotate_master_key(c: &mut impl GenericClient) -> Result<i32, Error> {
    c.query_one("SELECT api_key_mgmt.rotate_master_key()", &[])
        .map(|r| r.get(0))
}

/// `rewrap_secrets(batch)`.
pub fn try_rewrap(c: &mut impl GenericClient, batch: i32) -> Result<i32, Error> {
    c.query_one("SELECT api_key_mgmt.rewrap_secrets($1)", &[&batch])
        .map(|r| r.get(0))
}

/// `(version, secrets)` of `secret_key_versions`, by version.
pub fn secrets_per_version(c: &mut impl GenericClient) -> Vec<(i32, i64)> {
    c.query(
        "SELECT version, secrets FROM api_key_mgmt.secret_key_versions ORDER BY version",
        &[],
    )
    .expect("secret_key_versions")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}
