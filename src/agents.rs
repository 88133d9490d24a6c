//! Agent access to secrets (issue 6), pure Rust: the proxy token format, the risk
//! policy, matching requested names against what a tool declared, and the decision of
//! `resolve_proxy_token` with its SQLSTATEs. (Durations are capped in the SQL:
//! `LEAST(requested, max_session)`.)
//!
//! Proxy tokens are native keys (see [`crate::keys`]) with the type prefix `pxt`, so the
//! server-log masking covers them; their key-format environment is `live` for `prod`
//! sessions and `test` for `dev` and `staging`.

use crate::keys::{self, Environment};

/// The type prefix of proxy tokens.
pub const TOKEN_PREFIX: &str = "pxt";

/// The key-format environment of a token for a session environment.
pub fn token_env(environment: &str) -> Option<Environment> {
    match environment {
        "prod" => Some(Environment::Live),
        "dev" | "staging" => Some(Environment::Test),
        _ => None,
    }
}

/// Whether `token` has the shape of a proxy token with a matching checksum.
pub fn is_proxy_token(token: &str) -> bool {
    token.starts_with("pxt_") && keys::native_checksum_ok(token) == Some(true)
}

/// What the risk policy decides at request time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Pending,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Pending => "pending",
        }
    }
}

/// low: approved at once; medium: approved when the tenant allows it, else pending;
/// high, critical (and anything unknown): pending until a tenant admin decides.
pub fn decide(risk_level: &str, auto_approve_medium: bool) -> Decision {
    match risk_level {
        "low" => Decision::Approved,
        "medium" if auto_approve_medium => Decision::Approved,
        _ => Decision::Pending,
    }
}

/// Whether any declared pattern covers the requested name.
pub fn declared<'a>(patterns: impl IntoIterator<Item = &'a str>, name: &str) -> bool {
    // `*` matches any run of characters: the same rule as the route table's patterns.
    patterns
        .into_iter()
        .any(|p| crate::tenancy::glob_match(p, name))
}

/// Why a proxy token is refused. Messages never say more than the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, bad checksum, or no such token: 28000.
    Invalid,
    /// The session ended by time (or the token's session expired): 28000.
    Expired,
    /// The session or the token was revoked: 28000.
    Revoked,
    /// The token's tenant is disabled: 28000.
    TenantDisabled,
    /// The caller resolves for another environment than the token's: 42501.
    WrongEnvironment,
    /// No uses left: 54000.
    Exhausted,
}

impl Refusal {
    pub fn sqlstate(self) -> &'static str {
        match self {
            Refusal::Invalid | Refusal::Expired | Refusal::Revoked | Refusal::TenantDisabled => {
                "28000"
            }
            Refusal::WrongEnvironment => "42501",
            Refusal::Exhausted => "54000",
        }
    }
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Invalid => "proxy token is not valid",
            Refusal::Expired => "proxy token has expired",
            Refusal::Revoked => "proxy token was revoked",
            Refusal::TenantDisabled => "proxy token's tenant is disabled",
            Refusal::WrongEnvironment => "proxy token is not for this environment",
            Refusal::Exhausted => "proxy token has no uses left",
        }
    }
    /// The security event kind recorded for it (none for tokens we cannot attribute).
    pub fn event_kind(self) -> Option<&'static str> {
        match self {
            Refusal::Invalid => None,
            Refusal::Expired => Some("resolve_after_expiry"),
            Refusal::Revoked => Some("resolve_after_revocation"),
            Refusal::TenantDisabled => Some("resolve_tenant_disabled"),
            Refusal::WrongEnvironment => Some("resolve_wrong_environment"),
            Refusal::Exhausted => Some("resolve_exhausted"),
        }
    }
}

/// What `resolve_proxy_token` knows about a token and its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenState<'a> {
    pub tenant_disabled: bool,
    pub token_revoked: bool,
    pub session_status: &'a str,
    /// Whether the session's end lies in the past (now >= ends_at).
    pub session_over: bool,
    pub token_environment: &'a str,
    pub secret_environment: &'a str,
    pub uses: i32,
    pub max_uses: Option<i32>,
}

/// The decision before a use is counted (the count itself is re-checked atomically).
pub fn check(state: &TokenState<'_>, wanted_environment: Option<&str>) -> Result<(), Refusal> {
    if state.tenant_disabled {
        return Err(Refusal::TenantDisabled);
    }
    match state.session_status {
        "revoked" => return Err(Refusal::Revoked),
        "expired" => return Err(Refusal::Expired),
        _ => {}
    }
    if state.session_over {
        return Err(Refusal::Expired);
    }
    if state.token_revoked {
        return Err(Refusal::Revoked);
    }
    if wanted_environment.is_some_and(|e| e != state.token_environment)
        || state.secret_environment != state.token_environment
    {
        return Err(Refusal::WrongEnvironment);
    }
    if state.max_uses.is_some_and(|m| state.uses >= m) {
        return Err(Refusal::Exhausted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_state() -> TokenState<'static> {
        TokenState {
            tenant_disabled: false,
            token_revoked: false,
            session_status: "active",
            session_over: false,
            token_environment: "prod",
            secret_environment: "prod",
            uses: 0,
            max_uses: Some(2),
        }
    }

    #[test]
    fn token_format() {
        let t = keys::generate(TOKEN_PREFIX, token_env("prod").unwrap());
        assert!(t.starts_with("pxt_live_"));
        assert!(is_proxy_token(&t));
        assert!(crate::logmask::contains_key(t.as_bytes()));
        let d = keys::generate(TOKEN_PREFIX, token_env("staging").unwrap());
        assert!(d.starts_with("pxt_test_"));
        let sk = keys::generate("sk", Environment::Live);
        assert!(!is_proxy_token(&sk));
        let mut bad = t.clone();
        bad.replace_range(10..11, if &t[10..11] == "A" { "B" } else { "A" });
        assert!(!is_proxy_token(&bad));
        assert_eq!(token_env("qa"), None);
    }

    #[test]
    fn risk_policy() {
        assert_eq!(decide("low", false), Decision::Approved);
        assert_eq!(decide("medium", false), Decision::Pending);
        assert_eq!(decide("medium", true), Decision::Approved);
        assert_eq!(decide("high", true), Decision::Pending);
        assert_eq!(decide("critical", true), Decision::Pending);
        assert_eq!(decide("bogus", true), Decision::Pending);
    }

    #[test]
    fn declared_names() {
        let decl = ["stripe", "openai-*", "payments/*"];
        assert!(declared(decl, "stripe"));
        assert!(!declared(decl, "stripe2"));
        assert!(declared(decl, "openai-prod"));
        assert!(declared(decl, "openai-"));
        assert!(declared(decl, "payments/eu/live"));
        assert!(!declared(decl, "anthropic"));
        assert!(declared(["*"], "anything"));
        assert!(declared(["a*b*c"], "aXXbYYc"));
        assert!(!declared(["a*b*c"], "aXXbYY"));
    }

    #[test]
    fn resolve_decisions() {
        assert_eq!(check(&ok_state(), None), Ok(()));
        assert_eq!(check(&ok_state(), Some("prod")), Ok(()));
        assert_eq!(
            check(&ok_state(), Some("dev")),
            Err(Refusal::WrongEnvironment)
        );
        let s = TokenState {
            secret_environment: "dev",
            ..ok_state()
        };
        assert_eq!(check(&s, None), Err(Refusal::WrongEnvironment));
        let s = TokenState {
            session_status: "revoked",
            ..ok_state()
        };
        assert_eq!(check(&s, None), Err(Refusal::Revoked));
        let s = TokenState {
            session_status: "expired",
            ..ok_state()
        };
        assert_eq!(check(&s, None), Err(Refusal::Expired));
        let s = TokenState {
            session_over: true,
            ..ok_state()
        };
        assert_eq!(check(&s, None), Err(Refusal::Expired));
        let s = TokenState {
            token_revoked: true,
            ..ok_state()
        };
        assert_eq!(check(&s, None), Err(Refusal::Revoked));
        let s = TokenState {
            tenant_disabled: true,
            session_status: "revoked",
            ..ok_state()
        };
        assert_eq!(check(&s, None), Err(Refusal::TenantDisabled));
        let s = TokenState {
            uses: 2,
            ..ok_state()
        };
        assert_eq!(check(&s, None), Err(Refusal::Exhausted));
        let s = TokenState {
            uses: 1000,
            max_uses: None,
            ..ok_state()
        };
        assert_eq!(check(&s, None), Ok(()));
        assert_eq!(Refusal::Expired.sqlstate(), "28000");
        assert_eq!(Refusal::WrongEnvironment.sqlstate(), "42501");
        assert_eq!(Refusal::Exhausted.sqlstate(), "54000");
        assert_eq!(Refusal::Invalid.event_kind(), None);
    }
}
