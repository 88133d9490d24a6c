//! The validation decision, pure Rust: given what the tables say about a key and its
//! tenant, which code does a request get. The order of checks is the contract
//! documented in the README.

use crate::scopes;

/// Validation codes. `as_str` values are the SQL-visible contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok,
    /// NULL or empty key.
    Missing,
    Malformed,
    BadChecksum,
    NotFound,
    TenantDisabled,
    Revoked,
    /// Replaced by rotation and past its grace period.
    Rotated,
    Expired,
    /// The scope asked for is not of the form `area:action`.
    InvalidScope,
    ScopeDenied,
    ProviderDenied,
    ModelDenied,
    /// Metering (after every check above): the key's or tenant's daily cap is spent.
    DailyCapExceeded,
    MonthlyCapExceeded,
    CreditsExhausted,
    /// A rate limit of the key or tenant has no token left (`retry_after` says when).
    RateLimited,
}

impl Code {
    /// Every code, in a fixed order (the monitoring counters are indexed by it).
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Missing,
        Code::Malformed,
        Code::BadChecksum,
        Code::NotFound,
        Code::TenantDisabled,
        Code::Revoked,
        Code::Rotated,
        Code::Expired,
        Code::InvalidScope,
        Code::ScopeDenied,
        Code::ProviderDenied,
        Code::ModelDenied,
        Code::DailyCapExceeded,
        Code::MonthlyCapExceeded,
        Code::CreditsExhausted,
        Code::RateLimited,
    ];

    /// Position in [`Code::ALL`].
    pub fn index(self) -> usize {
        Code::ALL.iter().position(|c| *c == self).expect("listed")
    }

    /// The code of an `as_str` value.
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Missing => "missing",
            Code::Malformed => "malformed",
            Code::BadChecksum => "bad_checksum",
            Code::NotFound => "not_found",
            Code::TenantDisabled => "tenant_disabled",
            Code::Revoked => "revoked",
            Code::Rotated => "rotated",
            Code::Expired => "expired",
            Code::InvalidScope => "invalid_scope",
            Code::ScopeDenied => "scope_denied",
            Code::ProviderDenied => "provider_denied",
            Code::ModelDenied => "model_denied",
            Code::DailyCapExceeded => "daily_cap_exceeded",
            Code::MonthlyCapExceeded => "monthly_cap_exceeded",
            Code::CreditsExhausted => "credits_exhausted",
            Code::RateLimited => "rate_limited",
        }
    }
}

/// Timestamps are Postgres `timestamptz` values: microseconds since 2000-01-01 UTC.
pub type Micros = i64;

/// The columns of a key row that the decision needs.
#[derive(Debug, Clone, Default)]
pub struct KeyFacts {
    pub scopes: Vec<String>,
    pub allowed_providers: Option<Vec<String>>,
    pub allowed_models: Option<Vec<String>>,
    pub expires_at: Option<Micros>,
    pub revoked_at: Option<Micros>,
    /// Set when the key was rotated: the moment it stops validating.
    pub grace_until: Option<Micros>,
}

/// The columns of a tenant row that the decision needs.
#[derive(Debug, Clone, Default)]
pub struct TenantFacts {
    pub disabled: bool,
    pub allowed_scopes: Vec<String>,
}

/// What the caller asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub scope: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
}

/// A request's own arguments are checked before any table is read.
pub fn check_request(req: &Request) -> Option<Code> {
    match req.scope {
        Some(s) if !scopes::is_concrete(s) => Some(Code::InvalidScope),
        _ => None,
    }
}

/// The decision for a key that was found. Order: tenant disabled, revoked, rotated
/// (grace over), expired, scope (key grant and tenant plan), provider, model.
pub fn decide(key: &KeyFacts, tenant: &TenantFacts, req: &Request, now: Micros) -> Code {
    if tenant.disabled {
        return Code::TenantDisabled;
    }
    if key.revoked_at.is_some_and(|t| t <= now) {
        return Code::Revoked;
    }
    if key.grace_until.is_some_and(|t| t <= now) {
        return Code::Rotated;
    }
    if key.expires_at.is_some_and(|t| t <= now) {
        return Code::Expired;
    }
    if let Some(scope) = req.scope {
        // A scope must be granted by the key and still be in the tenant's plan: a plan
        // downgrade takes effect on existing keys at once.
        if !scopes::any_covers(&key.scopes, scope)
            || !scopes::any_covers(&tenant.allowed_scopes, scope)
        {
            return Code::ScopeDenied;
        }
    }
    if let (Some(p), Some(allowed)) = (req.provider, &key.allowed_providers) {
        if !allowed.iter().any(|a| a == p) {
            return Code::ProviderDenied;
        }
    }
    if let (Some(m), Some(allowed)) = (req.model, &key.allowed_models) {
        if !scopes::model_allowed(allowed, m) {
            return Code::ModelDenied;
        }
    }
    Code::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    fn key() -> KeyFacts {
        KeyFacts {
            scopes: v(&["agents:*", "voice:synthesis"]),
            ..Default::default()
        }
    }

    fn tenant() -> TenantFacts {
        TenantFacts {
            disabled: false,
            allowed_scopes: v(&["*"]),
        }
    }

    fn req(scope: Option<&'static str>) -> Request<'static> {
        Request {
            scope,
            provider: None,
            model: None,
        }
    }

    #[test]
    fn ok_and_scopes() {
        let t = tenant();
        assert_eq!(decide(&key(), &t, &req(None), 0), Code::Ok);
        assert_eq!(decide(&key(), &t, &req(Some("agents:voice")), 0), Code::Ok);
        assert_eq!(
            decide(&key(), &t, &req(Some("voice:synthesis")), 0),
            Code::Ok
        );
        assert_eq!(
            decide(&key(), &t, &req(Some("voice:cloning")), 0),
            Code::ScopeDenied
        );
    }

    #[test]
    fn tenant_plan_limits_existing_keys() {
        let t = TenantFacts {
            disabled: false,
            allowed_scopes: v(&["voice:*"]),
        };
        assert_eq!(
            decide(&key(), &t, &req(Some("agents:voice")), 0),
            Code::ScopeDenied
        );
        assert_eq!(
            decide(&key(), &t, &req(Some("voice:synthesis")), 0),
            Code::Ok
        );
    }

    #[test]
    fn order_of_checks() {
        let mut k = key();
        k.revoked_at = Some(5);
        k.expires_at = Some(5);
        k.grace_until = Some(5);
        let mut t = tenant();
        t.disabled = true;
        assert_eq!(decide(&k, &t, &req(None), 10), Code::TenantDisabled);
        t.disabled = false;
        assert_eq!(decide(&k, &t, &req(None), 10), Code::Revoked);
        k.revoked_at = None;
        assert_eq!(decide(&k, &t, &req(None), 10), Code::Rotated);
        k.grace_until = None;
        assert_eq!(decide(&k, &t, &req(None), 10), Code::Expired);
        // Exactly at the instant: expired; one microsecond before: fine.
        assert_eq!(decide(&k, &t, &req(None), 5), Code::Expired);
        assert_eq!(decide(&k, &t, &req(None), 4), Code::Ok);
        // A rotated key inside its grace validates.
        k.expires_at = None;
        k.grace_until = Some(100);
        assert_eq!(decide(&k, &t, &req(None), 10), Code::Ok);
    }

    #[test]
    fn providers_and_models() {
        let mut k = key();
        k.allowed_providers = Some(v(&["openai", "anthropic"]));
        k.allowed_models = Some(v(&["gpt-4o*", "claude-3-5-sonnet"]));
        let t = tenant();
        let r = |p, m| Request {
            scope: Some("agents:orchestration"),
            provider: p,
            model: m,
        };
        assert_eq!(
            decide(&k, &t, &r(Some("openai"), Some("gpt-4o-mini")), 0),
            Code::Ok
        );
        assert_eq!(
            decide(&k, &t, &r(Some("elevenlabs"), None), 0),
            Code::ProviderDenied
        );
        assert_eq!(
            decide(&k, &t, &r(Some("openai"), Some("o1")), 0),
            Code::ModelDenied
        );
        // No provider asked for: no provider check.
        assert_eq!(
            decide(&k, &t, &r(None, Some("claude-3-5-sonnet")), 0),
            Code::Ok
        );
        // NULL allowlists admit anything.
        assert_eq!(decide(&key(), &t, &r(Some("x"), Some("y")), 0), Code::Ok);
    }

    #[test]
    fn request_syntax() {
        assert_eq!(
            check_request(&req(Some("agents:*"))),
            Some(Code::InvalidScope)
        );
        assert_eq!(
            check_request(&req(Some("nonsense"))),
            Some(Code::InvalidScope)
        );
        assert_eq!(check_request(&req(Some("agents:voice"))), None);
        assert_eq!(check_request(&req(None)), None);
    }
}
