//! SQL-callable helpers over the pure key and scope logic, for the extension's own
//! plpgsql (schema `api_key_mgmt_internal`, EXECUTE revoked from PUBLIC). Their
//! `CREATE FUNCTION` statements are hand-written in `sql/`.

use crate::errors::Error;
use crate::keys::{self, Environment, Shape};
use crate::scopes;
use pgrx::prelude::*;

fn all_some(xs: &Array<'_, &str>, ok: impl Fn(&str) -> bool) -> bool {
    xs.iter().all(|x| x.is_some_and(&ok))
}

/// `scopes_valid(scopes text[]) RETURNS boolean` — every element grantable, no NULLs.
#[pg_extern(sql = false, immutable, parallel_safe)]
fn scopes_valid(scopes: Array<&str>) -> bool {
    all_some(&scopes, scopes::is_grantable)
}

/// `providers_valid(providers text[]) RETURNS boolean`
#[pg_extern(sql = false, immutable, parallel_safe)]
fn providers_valid(providers: Array<&str>) -> bool {
    all_some(&providers, scopes::valid_provider)
}

/// `models_valid(models text[]) RETURNS boolean`
#[pg_extern(sql = false, immutable, parallel_safe)]
fn models_valid(models: Array<&str>) -> bool {
    all_some(&models, scopes::valid_model_pattern)
}

/// `first_uncovered(allowed text[], wanted text[]) RETURNS text` — the first element of
/// `wanted` that no element of `allowed` covers, or NULL.
#[pg_extern(sql = false, immutable, parallel_safe)]
fn first_uncovered(allowed: Array<&str>, wanted: Array<&str>) -> Option<String> {
    let allowed: Vec<&str> = allowed.iter().flatten().collect();
    let wanted: Vec<&str> = wanted.iter().flatten().collect();
    scopes::first_not_covered(&allowed, &wanted).map(str::to_owned)
}

/// `new_key(type_prefix text, environment text) RETURNS TABLE (api_key text, key_hash bytea, display_prefix text)`
#[pg_extern(sql = false, volatile)]
fn new_key(
    type_prefix: &str,
    environment: &str,
) -> TableIterator<
    'static,
    (
        name!(api_key, String),
        name!(key_hash, Vec<u8>),
        name!(display_prefix, String),
    ),
> {
    if !keys::valid_type_prefix(type_prefix) {
        Error::InvalidParameter(format!(
            "key type prefix \"{type_prefix}\" is invalid: 2 to 10 characters, a lower-case letter then lower-case letters or digits"
        ))
        .raise();
    }
    let Some(env) = Environment::parse(environment) else {
        Error::InvalidParameter(format!(
            "environment \"{environment}\" is invalid: use 'live' or 'test'"
        ))
        .raise();
    };
    let key = keys::generate(type_prefix, env);
    let hash = keys::hash(&key).to_vec();
    let display = keys::display_prefix(&key);
    TableIterator::once((key, hash, display))
}

/// `key_shape(api_key text) RETURNS text` — `native`, `bad_checksum`, `imported` (under a
/// configured import prefix) or `malformed`; reads no table.
#[pg_extern(sql = false, stable, parallel_safe)]
fn key_shape(api_key: &str) -> &'static str {
    let prefixes = crate::gucs::import_prefixes();
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    match keys::classify(api_key, &prefixes) {
        Shape::Native => "native",
        Shape::BadChecksum => "bad_checksum",
        Shape::Imported => "imported",
        Shape::Malformed => "malformed",
    }
}

/// `key_environment(api_key text) RETURNS text` — `live`/`test` for a native key, else NULL.
#[pg_extern(sql = false, immutable, parallel_safe)]
fn key_environment(api_key: &str) -> Option<&'static str> {
    keys::native_environment(api_key).map(Environment::as_str)
}

/// `hash_key(api_key text) RETURNS bytea` — SHA-256 of the key text.
#[pg_extern(sql = false, immutable, parallel_safe)]
fn hash_key(api_key: &str) -> Vec<u8> {
    keys::hash(api_key).to_vec()
}

/// `display_prefix(api_key text) RETURNS text` — the non-secret display form.
#[pg_extern(sql = false, immutable, parallel_safe)]
fn display_prefix(api_key: &str) -> String {
    keys::display_prefix(api_key)
}
