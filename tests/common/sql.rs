//! Small SQL helpers. Keys and ids always travel as bind parameters (text, cast in
//! SQL), never inside the statement text.

use postgres::{Client, Error, GenericClient};
use std::fmt::Debug;

/// The SQLSTATE of a failed statement (or a description of a non-SQL failure).
pub fn sqlstate(err: &Error) -> String {
    match err.code() {
        Some(code) => code.code().to_owned(),
        None => format!("<no SQLSTATE: {err}>"),
    }
}

/// Assert that `result` is an error with SQLSTATE `expected`.
#[track_caller]
pub fn assert_sqlstate<T: Debug>(result: Result<T, Error>, expected: &str, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected SQLSTATE {expected}, but it succeeded: {v:?}"),
        Err(e) => assert_eq!(sqlstate(&e), expected, "{what}: {e:?}"),
    }
}

/// Run `sql` (no parameters, no result) and expect SQLSTATE `expected`.
#[track_caller]
pub fn assert_fails(c: &mut impl GenericClient, sql: &str, expected: &str) {
    assert_sqlstate(c.batch_execute(sql), expected, sql);
}

/// A key as issued: its id (uuid as text) and the plaintext key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub id: String,
    pub key: String,
}

pub fn create_tenant(c: &mut impl GenericClient, name: &str) -> String {
    try_create_tenant(c, name).unwrap_or_else(|e| panic!("create_tenant: {e:?}"))
}

pub fn try_create_tenant(c: &mut impl GenericClient, name: &str) -> Result<String, Error> {
    c.query_one("SELECT api_key_mgmt.create_tenant($1)::text", &[&name])
        .map(|r| r.get(0))
}

/// `issue_api_key(tenant, name, '{*}')`.
pub fn try_issue(c: &mut impl GenericClient, tenant: &str, name: &str) -> Result<Issued, Error> {
    let row = c.query_one(
        "SELECT key_id::text, api_key \
           FROM api_key_mgmt.issue_api_key($1::text::uuid, $2, ARRAY['*'])",
        &[&tenant, &name],
    )?;
    Ok(Issued {
        id: row.get(0),
        key: row.get(1),
    })
}

#[track_caller]
pub fn issue(c: &mut impl GenericClient, tenant: &str, name: &str) -> Issued {
    try_issue(c, tenant, name).unwrap_or_else(|e| panic!("issue_api_key: {e:?}"))
}

/// `issue_api_key` with an expiry given as an interval from now.
pub fn issue_expiring(c: &mut impl GenericClient, tenant: &str, name: &str, ttl: &str) -> Issued {
    let row = c
        .query_one(
            "SELECT key_id::text, api_key \
               FROM api_key_mgmt.issue_api_key($1::text::uuid, $2, ARRAY['*'], \
                                               now() + $3::text::interval)",
            &[&tenant, &name, &ttl],
        )
        .unwrap_or_else(|e| panic!("issue_api_key with expiry: {e:?}"));
    Issued {
        id: row.get(0),
        key: row.get(1),
    }
}

/// `rotate_api_key(id, grace)`: the successor.
pub fn try_rotate(c: &mut impl GenericClient, id: &str, grace: &str) -> Result<Issued, Error> {
    let row = c.query_one(
        "SELECT new_key_id::text, api_key \
           FROM api_key_mgmt.rotate_api_key($1::text::uuid, $2::text::interval)",
        &[&id, &grace],
    )?;
    Ok(Issued {
        id: row.get(0),
        key: row.get(1),
    })
}

#[track_caller]
pub fn rotate(c: &mut impl GenericClient, id: &str, grace: &str) -> Issued {
    try_rotate(c, id, grace).unwrap_or_else(|e| panic!("rotate_api_key: {e:?}"))
}

pub fn try_revoke(c: &mut impl GenericClient, id: &str) -> Result<bool, Error> {
    c.query_one("SELECT api_key_mgmt.revoke_api_key($1::text::uuid)", &[&id])
        .map(|r| r.get(0))
}

#[track_caller]
pub fn revoke(c: &mut impl GenericClient, id: &str) -> bool {
    try_revoke(c, id).unwrap_or_else(|e| panic!("revoke_api_key: {e:?}"))
}

/// `import_api_key(tenant, key, name, '{*}')`: the new key id.
pub fn try_import(c: &mut impl GenericClient, tenant: &str, key: &str) -> Result<String, Error> {
    c.query_one(
        "SELECT key_id::text \
           FROM api_key_mgmt.import_api_key($1::text::uuid, $2, 'imported', ARRAY['*'])",
        &[&tenant, &key],
    )
    .map(|r| r.get(0))
}

/// What `validate_api_key` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    pub code: String,
    pub key_id: Option<String>,
}

/// `validate_api_key(key, scope)`; also checks that `valid` agrees with `code`.
pub fn try_validate_scoped(
    c: &mut impl GenericClient,
    key: Option<&str>,
    scope: Option<&str>,
) -> Result<Validation, Error> {
    let row = c.query_one(
        "SELECT v.valid, v.code, v.key_id::text FROM api_key_mgmt.validate_api_key($1, $2) v",
        &[&key, &scope],
    )?;
    let valid: Option<bool> = row.get(0);
    let v = Validation {
        code: row.get(1),
        key_id: row.get(2),
    };
    assert_eq!(
        valid,
        Some(v.code == "ok"),
        "valid must be true exactly for code ok: {v:?}"
    );
    Ok(v)
}

#[track_caller]
pub fn validate(c: &mut impl GenericClient, key: &str) -> Validation {
    try_validate_scoped(c, Some(key), None).unwrap_or_else(|e| panic!("validate_api_key: {e:?}"))
}

/// The validation code of `key`.
#[track_caller]
pub fn code(c: &mut impl GenericClient, key: &str) -> String {
    validate(c, key).code
}

/// Assert `key` answers `expected`, and (when found) that it is the row `id`.
#[track_caller]
pub fn assert_code(c: &mut impl GenericClient, key: &Issued, expected: &str) {
    let v = validate(c, &key.key);
    assert_eq!(v.code, expected, "validation of key {}", key.id);
    assert_eq!(
        v.key_id.as_deref(),
        Some(key.id.as_str()),
        "key_id of {v:?}"
    );
}

/// `SELECT count(*)` of a query (given as the FROM ... part).
pub fn count(c: &mut Client, from_where: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) {from_where}"), &[])
        .unwrap_or_else(|e| panic!("count {from_where}: {e:?}"))
        .get(0)
}
