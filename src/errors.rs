//! Typed errors with their SQLSTATEs. A message never contains a key or a secret:
//! callers pass only names, ids and limits.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// 22004 null_value_not_allowed
    NullValue(&'static str),
    /// 22023 invalid_parameter_value
    InvalidParameter(String),
}

impl Error {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            Error::NullValue(_) => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            Error::InvalidParameter(_) => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Error::NullValue(what) => format!("{what} must not be NULL"),
            Error::InvalidParameter(m) => m.clone(),
        }
    }

    /// Raise as a Postgres ERROR (does not return).
    pub fn raise(self) -> ! {
        raise(self.sqlstate(), self.message(), "")
    }
}

/// `value`, or ERROR 22004 "`what` must not be NULL".
pub fn required<T>(value: Option<T>, what: &'static str) -> T {
    value.unwrap_or_else(|| Error::NullValue(what).raise())
}

/// Raise a Postgres ERROR with `code`, `message` and a `hint` ("" for none); does not
/// return. The one way the extension's Rust raises: a message carries names, ids and
/// limits, never a key or a secret.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: &str) -> ! {
    raise_with_detail(code, message, "", hint)
}

/// [`raise`] with a DETAIL ("" for none).
pub fn raise_with_detail(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    detail: &str,
    hint: &str,
) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "api_key_mgmt");
    if !detail.is_empty() {
        report = report.set_detail(detail);
    }
    if !hint.is_empty() {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}
