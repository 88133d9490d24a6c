//! Tenant context and request parsing, pure Rust: member roles, JWT claim paths,
//! the API key in PostgREST's request headers, and the route table's matching rule.

use serde_json::Value;

/// A member's role within a tenant, ordered by what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

/// The string at a dot-separated `path` in a JSON object (`app_metadata.tenant_id`).
pub fn claim_at<'a>(claims: &'a Value, path: &str) -> Option<&'a str> {
    let mut v = claims;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    v.as_str()
}

/// A canonical lower-case UUID string, if `s` is one (hyphenated, 36 characters).
pub fn canonical_uuid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    for (i, c) in b.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        };
        if !ok {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// The tenant named by the first of `paths` that holds a UUID in the JWT `claims`.
pub fn tenant_from_claims(claims: &Value, paths: &[&str]) -> Option<String> {
    paths
        .iter()
        .find_map(|p| claim_at(claims, p).and_then(canonical_uuid))
}

/// The caller's user id: the JWT `sub` claim.
pub fn subject(claims: &Value) -> Option<&str> {
    claims.get("sub")?.as_str().filter(|s| !s.is_empty())
}

/// The API key of a request from PostgREST's `request.headers` (names lower-cased):
/// the configured header, else `Authorization: Bearer <token>` unless the token is a
/// JWT (three dot-separated parts: PostgREST verified that already).
pub fn api_key_from_headers(headers: &Value, header: &str) -> Option<String> {
    let header = header.to_ascii_lowercase();
    if let Some(k) = headers.get(&header).and_then(Value::as_str) {
        let k = k.trim();
        if !k.is_empty() {
            return Some(k.to_owned());
        }
    }
    let auth = headers.get("authorization")?.as_str()?.trim();
    let (scheme, token) = auth.split_once(' ')?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.split('.').count() == 3 {
        return None;
    }
    Some(token.to_owned())
}

/// Whether glob `pattern` (`*` matches any run of characters, including `/`) matches `path`.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), path.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: String,
    pub path_pattern: String,
}

/// The route that governs `method` `path`: among the matching ones, an exact method
/// beats `*`, then more literal characters in the pattern win, then the pattern's text
/// decides (so the choice never depends on row order).
pub fn best_route(routes: &[Route], method: &str, path: &str) -> Option<usize> {
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            (r.method == "*" || r.method.eq_ignore_ascii_case(method))
                && glob_match(&r.path_pattern, path)
        })
        .max_by(|(_, a), (_, b)| {
            let key = |r: &Route| {
                (
                    r.method != "*",
                    r.path_pattern.bytes().filter(|c| *c != b'*').count(),
                )
            };
            key(a)
                .cmp(&key(b))
                .then_with(|| b.path_pattern.cmp(&a.path_pattern))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn roles_are_ordered() {
        assert!(
            Role::Owner > Role::Admin && Role::Admin > Role::Member && Role::Member > Role::Viewer
        );
        for r in ["viewer", "member", "admin", "owner"] {
            assert_eq!(Role::parse(r).unwrap().as_str(), r);
        }
        assert_eq!(Role::parse("Owner"), None);
    }

    #[test]
    fn claims() {
        let t = "0b7c3a3e-8f4e-4a3c-9f0e-1d2c3b4a5f6e";
        let c = json!({"sub": "user-1", "tenant_id": t, "app_metadata": {"tenant_id": t.to_uppercase()}});
        assert_eq!(subject(&c), Some("user-1"));
        assert_eq!(tenant_from_claims(&c, &["tenant_id"]), Some(t.to_owned()));
        let supa = json!({"sub": "u", "app_metadata": {"tenant_id": t.to_uppercase()}});
        assert_eq!(
            tenant_from_claims(&supa, &["tenant_id", "app_metadata.tenant_id"]),
            Some(t.to_owned())
        );
        assert_eq!(
            tenant_from_claims(&json!({"tenant_id": "acme"}), &["tenant_id"]),
            None
        );
        assert_eq!(
            tenant_from_claims(&json!({"tenant_id": 5}), &["tenant_id"]),
            None
        );
        assert_eq!(subject(&json!({"sub": ""})), None);
        assert_eq!(canonical_uuid("0b7c3a3e8f4e4a3c9f0e1d2c3b4a5f6e"), None);
    }

    #[test]
    fn api_key_headers() {
        let h = json!({"x-api-key": " sk_live_abc ", "authorization": "Bearer other"});
        assert_eq!(
            api_key_from_headers(&h, "X-API-Key"),
            Some("sk_live_abc".into())
        );
        let h = json!({"authorization": "Bearer sk_live_abc"});
        assert_eq!(
            api_key_from_headers(&h, "x-api-key"),
            Some("sk_live_abc".into())
        );
        let jwt = json!({"authorization": "Bearer aaa.bbb.ccc"});
        assert_eq!(api_key_from_headers(&jwt, "x-api-key"), None);
        let basic = json!({"authorization": "Basic dXNlcjpwYXNz"});
        assert_eq!(api_key_from_headers(&basic, "x-api-key"), None);
        assert_eq!(api_key_from_headers(&json!({}), "x-api-key"), None);
        assert_eq!(
            api_key_from_headers(&json!({"x-api-key": ""}), "x-api-key"),
            None
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("/rpc/synthesize", "/rpc/synthesize"));
        assert!(!glob_match("/rpc/synthesize", "/rpc/synthesize2"));
        assert!(glob_match("/documents*", "/documents"));
        assert!(glob_match("/documents*", "/documents/42/pages"));
        assert!(glob_match("*", "/anything"));
        assert!(glob_match("/a/*/c", "/a/b/c"));
        assert!(!glob_match("/a/*/c", "/a/b/d"));
        assert!(glob_match("/a*b*c", "/a__b__c"));
    }

    #[test]
    fn route_specificity() {
        let r = |m: &str, p: &str| Route {
            method: m.into(),
            path_pattern: p.into(),
        };
        let routes = vec![
            r("*", "*"),
            r("*", "/rpc/*"),
            r("POST", "/rpc/*"),
            r("*", "/rpc/synthesize"),
        ];
        assert_eq!(best_route(&routes, "POST", "/rpc/clone_voice"), Some(2));
        assert_eq!(best_route(&routes, "GET", "/rpc/clone_voice"), Some(1));
        assert_eq!(best_route(&routes, "POST", "/rpc/synthesize"), Some(2));
        assert_eq!(best_route(&routes, "GET", "/rpc/synthesize"), Some(3));
        assert_eq!(best_route(&routes, "GET", "/tables"), Some(0));
        assert_eq!(best_route(&routes[1..], "GET", "/tables"), None);
    }

    proptest! {
        #[test]
        fn literal_patterns_match_only_themselves(a in "/[a-z/]{0,12}", b in "/[a-z/]{0,12}") {
            prop_assert_eq!(glob_match(&a, &b), a == b);
            let prefix = format!("{a}*");
            prop_assert_eq!(glob_match(&prefix, &b), b.starts_with(&a));
        }
    }
}
