//! Every setting of the extension, in one place.
//!
//! | setting | type | context | default |
//! |---|---|---|---|
//! | `api_key_mgmt.import_prefixes` | text | superuser | `''` |
//! | `api_key_mgmt.master_key_file` | text | superuser, hidden from others | unset |

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

pub fn init() {
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
