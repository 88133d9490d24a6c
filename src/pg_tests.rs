//! `#[pg_test]` tests: run inside a Postgres backend by `cargo pgrx test` (the extension
//! is installed with `shared_preload_libraries = 'api_key_mgmt'`, see `lib.rs`).
//! They exercise the Rust layer against the real schema: the direct index probes, the
//! result tuple, and the pure logic's agreement with what the SQL stores.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::keys;
    use pgrx::datum::DatumWithOid;
    use pgrx::prelude::*;

    fn tenant(scopes: &str) -> pgrx::Uuid {
        Spi::get_one_with_args::<pgrx::Uuid>(
            "SELECT api_key_mgmt.create_tenant('t', $1::text[])",
            &[DatumWithOid::from(scopes)],
        )
        .unwrap()
        .unwrap()
    }

    fn issue(tenant: pgrx::Uuid, scopes: &str) -> (pgrx::Uuid, String) {
        let (id, key) = Spi::get_two_with_args::<pgrx::Uuid, String>(
            "SELECT key_id, api_key FROM api_key_mgmt.issue_api_key($1, 'k', $2::text[])",
            &[DatumWithOid::from(tenant), DatumWithOid::from(scopes)],
        )
        .unwrap();
        (id.unwrap(), key.unwrap())
    }

    fn code(key: &str, scope: Option<&str>) -> String {
        Spi::get_one_with_args::<String>(
            "SELECT (api_key_mgmt.validate_api_key($1, $2)).code",
            &[DatumWithOid::from(key), DatumWithOid::from(scope)],
        )
        .unwrap()
        .unwrap()
    }

    /// The stored hash is exactly the pure module's SHA-256 of the key, and the lookup
    /// by that hash returns the issued row with every output column filled from it.
    #[pg_test]
    fn stored_hash_and_result_row() {
        let t = tenant("{agents:*}");
        let (id, key) = issue(t, "{agents:orchestration}");
        let stored = Spi::get_one_with_args::<Vec<u8>>(
            "SELECT key_hash FROM api_key_mgmt.api_keys WHERE id = $1",
            &[DatumWithOid::from(id)],
        )
        .unwrap()
        .unwrap();
        assert_eq!(stored, keys::hash(&key).to_vec());

        let (valid, key_id) = Spi::get_two_with_args::<bool, pgrx::Uuid>(
            "SELECT valid, key_id FROM api_key_mgmt.validate_api_key($1, 'agents:orchestration')",
            &[DatumWithOid::from(key.as_str())],
        )
        .unwrap();
        assert_eq!(valid, Some(true));
        assert_eq!(key_id, Some(id));
        let (env, scopes) = Spi::get_two_with_args::<String, Vec<String>>(
            "SELECT environment, scopes FROM api_key_mgmt.validate_api_key($1)",
            &[DatumWithOid::from(key.as_str())],
        )
        .unwrap();
        assert_eq!(env.as_deref(), Some("live"));
        assert_eq!(scopes, Some(vec!["agents:orchestration".to_string()]));
    }

    /// Many keys: each validates ok, and each single-character change is refused by
    /// the checksum (or the shape) without being looked up.
    #[pg_test]
    fn every_issued_key_validates_and_mutations_do_not() {
        let t = tenant("{*}");
        for _ in 0..50 {
            let (_, key) = issue(t, "{voice:synthesis}");
            assert_eq!(code(&key, Some("voice:synthesis")), "ok");
            let mut bytes = key.clone().into_bytes();
            let pos = 10 + (bytes[20] as usize % 40);
            bytes[pos] = if bytes[pos] == b'x' { b'y' } else { b'x' };
            let changed = String::from_utf8(bytes).unwrap();
            assert_eq!(code(&changed, None), "bad_checksum");
        }
    }

    /// The Rust side and the SQL side agree on the key shape, including the setting.
    #[pg_test]
    fn key_shape_follows_the_import_setting() {
        let shape = |k: &str| {
            Spi::get_one_with_args::<String>(
                "SELECT api_key_mgmt_internal.key_shape($1)",
                &[DatumWithOid::from(k)],
            )
            .unwrap()
            .unwrap()
        };
        let legacy = "legacy_abcdefghijklmnopqrstuvwxyz";
        assert_eq!(shape(legacy), "malformed");
        Spi::run("SET LOCAL api_key_mgmt.import_prefixes = 'legacy_'").unwrap();
        assert_eq!(shape(legacy), "imported");
        assert_eq!(code(legacy, None), "not_found");
        let native = keys::generate("sk", keys::Environment::Test);
        assert_eq!(shape(&native), "native");
    }

    /// Revocation, rotation and expiry seen through the direct lookups, in one
    /// transaction (each statement sees the previous ones).
    #[pg_test]
    fn lifecycle_codes() {
        let t = tenant("{*}");
        let (id, key) = issue(t, "{agents:*}");
        Spi::run_with_args(
            "SELECT api_key_mgmt.rotate_api_key($1, '0')",
            &[DatumWithOid::from(id)],
        )
        .unwrap();
        assert_eq!(code(&key, None), "rotated");

        let (id, key) = issue(t, "{agents:*}");
        Spi::run_with_args(
            "SELECT api_key_mgmt.revoke_api_key($1)",
            &[DatumWithOid::from(id)],
        )
        .unwrap();
        assert_eq!(code(&key, None), "revoked");

        let (id, key) = issue(t, "{agents:*}");
        Spi::run_with_args(
            "UPDATE api_key_mgmt.api_keys SET expires_at = now() WHERE id = $1",
            &[DatumWithOid::from(id)],
        )
        .unwrap();
        assert_eq!(code(&key, None), "expired");
    }

    /// Oversized input is refused before it is detoasted or hashed.
    #[pg_test]
    fn huge_input_is_malformed() {
        let c = Spi::get_one::<String>(
            "SELECT (api_key_mgmt.validate_api_key(repeat('sk_live_', 200000))).code",
        )
        .unwrap();
        assert_eq!(c.as_deref(), Some("malformed"));
    }

    /// The extension's tables cannot be read through validation by a name collision:
    /// the probes always target schema api_key_mgmt, whatever the search_path holds.
    #[pg_test]
    fn lookups_ignore_search_path() {
        let t = tenant("{*}");
        let (_, key) = issue(t, "{agents:*}");
        Spi::run(
            "CREATE SCHEMA evil; CREATE TABLE evil.api_keys (key_hash bytea);
             SET LOCAL search_path = evil, public",
        )
        .unwrap();
        assert_eq!(code(&key, Some("agents:x")), "ok");
    }

    /// A key file written by the backend itself (it runs as the server's OS user).
    fn key_file(name: &str, content: &str) -> String {
        let path = format!(
            "{}/akm-pgtest-{}-{name}",
            std::env::temp_dir().display(),
            std::process::id()
        );
        std::fs::write(&path, content).unwrap();
        path
    }

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f";

    /// Seal through the SQL API, open through the read path; the stored bytes are the
    /// pure module's AES-256-GCM under the tenant's derived key and the row's AAD.
    #[pg_test]
    fn secret_round_trip_matches_the_pure_module() {
        let path = key_file("rt", &format!("1 {K1}\n"));
        Spi::run(&format!(
            "SET LOCAL api_key_mgmt.master_key_file = '{path}'"
        ))
        .unwrap();
        let t = tenant("{*}");
        let id = Spi::get_one_with_args::<pgrx::Uuid>(
            "SELECT api_key_mgmt.put_tenant_secret($1, 'huggingface', $2)",
            &[
                DatumWithOid::from(t),
                DatumWithOid::from("hf_abcdefghijklmnopqrstuvwxyz"),
            ],
        )
        .unwrap()
        .unwrap();
        let (nonce, ct) = Spi::get_two_with_args::<Vec<u8>, Vec<u8>>(
            "SELECT nonce, ciphertext FROM api_key_mgmt.tenant_secrets WHERE id = $1",
            &[DatumWithOid::from(id)],
        )
        .unwrap();
        let keys = crate::crypto::MasterKeys::parse(&format!("1 {K1}\n")).unwrap();
        let dek = crate::crypto::derive_data_key(keys.get(1).unwrap(), Some(t.as_bytes()));
        let aad = crate::crypto::aad(Some(t.as_bytes()), id.as_bytes(), "huggingface", 1);
        let plain = crate::crypto::decrypt(&dek, &nonce.unwrap(), &ct.unwrap(), &aad).unwrap();
        assert_eq!(plain, b"hf_abcdefghijklmnopqrstuvwxyz");
        let got = Spi::get_one_with_args::<String>(
            "SELECT api_key_mgmt.get_tenant_secret($1, 'huggingface', 'agents:x')",
            &[DatumWithOid::from(t)],
        )
        .unwrap();
        assert_eq!(got.as_deref(), Some("hf_abcdefghijklmnopqrstuvwxyz"));
        std::fs::remove_file(path).unwrap();
    }

    /// Rewriting the key file in place is seen by the running backend at once.
    #[pg_test]
    fn key_file_is_reread_when_it_changes() {
        let path = key_file("reload", &format!("1 {K1}\n"));
        Spi::run(&format!(
            "SET LOCAL api_key_mgmt.master_key_file = '{path}'"
        ))
        .unwrap();
        let v = Spi::get_one::<i32>("SELECT api_key_mgmt.rotate_master_key()").unwrap();
        assert_eq!(v, Some(1));
        std::fs::write(&path, format!("1 {K1}\n2 {K2} active\n")).unwrap();
        let v = Spi::get_one::<i32>("SELECT api_key_mgmt.rotate_master_key()").unwrap();
        assert_eq!(v, Some(2));
        let active = Spi::get_one::<i32>(
            "SELECT version FROM api_key_mgmt_internal.master_keys() WHERE active",
        )
        .unwrap();
        assert_eq!(active, Some(2));
        std::fs::remove_file(path).unwrap();
    }
}
