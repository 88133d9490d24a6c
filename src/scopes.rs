//! Scopes and allowlists, pure Rust.
//!
//! A scope is `area:action`, each part `[a-z0-9][a-z0-9_.-]{0,62}`, e.g. `voice:synthesis`.
//! A grant may also be `area:*` (every action of an area) or `*` (everything).
//! A scope asked for at validation time is always concrete (no wildcard).

const PART_MAX: usize = 63;

fn valid_part(p: &str) -> bool {
    let b = p.as_bytes();
    !b.is_empty()
        && b.len() <= PART_MAX
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-' || c == b'.'
        })
}

/// A concrete scope: `area:action`.
pub fn is_concrete(scope: &str) -> bool {
    match scope.split_once(':') {
        Some((area, action)) => valid_part(area) && valid_part(action),
        None => false,
    }
}

/// A scope that may be granted: concrete, `area:*` or `*`.
pub fn is_grantable(scope: &str) -> bool {
    if scope == "*" {
        return true;
    }
    match scope.split_once(':') {
        Some((area, "*")) => valid_part(area),
        Some(_) => is_concrete(scope),
        None => false,
    }
}

/// Whether grant `g` covers grant or scope `s` (both grantable). `*` covers all,
/// `a:*` covers `a:*` and every `a:x`, a concrete scope covers only itself.
pub fn covers(g: &str, s: &str) -> bool {
    if g == "*" || g == s {
        return true;
    }
    match (g.strip_suffix(":*"), s.split_once(':')) {
        (Some(area), Some((s_area, _))) => area == s_area,
        _ => false,
    }
}

/// Whether any of `grants` covers `s`.
pub fn any_covers<S: AsRef<str>>(grants: &[S], s: &str) -> bool {
    grants.iter().any(|g| covers(g.as_ref(), s))
}

/// The first of `wanted` that `allowed` does not cover, if any.
pub fn first_not_covered<'a, S: AsRef<str>>(allowed: &[S], wanted: &'a [S]) -> Option<&'a str> {
    wanted
        .iter()
        .map(AsRef::as_ref)
        .find(|w| !any_covers(allowed, w))
}

/// A provider id: `[a-z0-9][a-z0-9_.-]{0,62}` (e.g. `openai`, `google-vision`).
pub fn valid_provider(p: &str) -> bool {
    valid_part(p)
}

/// A model name: 1–200 visible ASCII characters.
pub fn valid_model(m: &str) -> bool {
    (1..=200).contains(&m.len()) && m.bytes().all(|c| c.is_ascii_graphic())
}

/// A model allowlist entry: a model name, where a trailing `*` makes it a prefix match
/// (`gpt-4o*`) and a lone `*` matches any model.
pub fn valid_model_pattern(m: &str) -> bool {
    valid_model(m)
}

/// Whether model allowlist `patterns` admits `model` (exact, or prefix for `x*`).
pub fn model_allowed<S: AsRef<str>>(patterns: &[S], model: &str) -> bool {
    patterns.iter().any(|p| {
        let p = p.as_ref();
        match p.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => p == model,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn syntax() {
        for ok in [
            "agents:orchestration",
            "agents:financial",
            "voice:synthesis",
            "document:ocr",
            "avatar:generation",
            "a1:b-2.c_d",
        ] {
            assert!(is_concrete(ok), "{ok}");
            assert!(is_grantable(ok), "{ok}");
        }
        for grant in ["*", "agents:*"] {
            assert!(!is_concrete(grant));
            assert!(is_grantable(grant));
        }
        for bad in [
            "", ":", "agents", "agents:", ":x", "Agents:x", "a:b:c", "*:x", "a:**", "a :b", "-a:b",
            "a:B", "**",
        ] {
            assert!(!is_grantable(bad), "{bad:?}");
            assert!(!is_concrete(bad), "{bad:?}");
        }
        assert!(!is_concrete(&format!("a:{}", "x".repeat(64))));
    }

    #[test]
    fn coverage() {
        assert!(covers("*", "voice:synthesis"));
        assert!(covers("*", "agents:*"));
        assert!(covers("agents:*", "agents:voice"));
        assert!(covers("agents:*", "agents:*"));
        assert!(!covers("agents:*", "voice:synthesis"));
        assert!(!covers("agents:*", "*"));
        assert!(!covers("agents:voice", "agents:*"));
        assert!(covers("voice:synthesis", "voice:synthesis"));
        assert!(!covers("voice:synthesis", "voice:cloning"));
        // "agents:*" must not match a longer area sharing the prefix.
        assert!(!covers("agent:*", "agents:voice"));
        assert_eq!(
            first_not_covered(
                &["agents:*", "document:ocr"],
                &["agents:x", "voice:cloning"]
            ),
            Some("voice:cloning")
        );
        assert_eq!(
            first_not_covered(&["*"], &["agents:*", "voice:cloning"]),
            None
        );
    }

    #[test]
    fn models() {
        assert!(model_allowed(&["gpt-4o"], "gpt-4o"));
        assert!(!model_allowed(&["gpt-4o"], "gpt-4o-mini"));
        assert!(model_allowed(&["gpt-4o*"], "gpt-4o-mini"));
        assert!(model_allowed(&["*"], "anything"));
        assert!(!model_allowed::<&str>(&[], "gpt-4o"));
        assert!(valid_model_pattern("claude-3-5-sonnet@20240620"));
        assert!(!valid_model_pattern("has space"));
        assert!(!valid_model_pattern(""));
    }

    proptest! {
        /// `*` covers every concrete scope; `area:*` covers exactly its own area.
        #[test]
        fn wildcard_laws(area in "[a-z][a-z0-9]{0,8}", other in "[a-z][a-z0-9]{0,8}", action in "[a-z][a-z0-9]{0,8}") {
            let s = format!("{area}:{action}");
            prop_assert!(is_concrete(&s));
            prop_assert!(covers("*", &s));
            let own = format!("{area}:*");
            let foreign = format!("{other}:*");
            prop_assert!(covers(&own, &s));
            prop_assert_eq!(covers(&foreign, &s), other == area);
        }
    }

    #[test]
    fn model_names_are_visible_ascii() {
        assert!(valid_model("gpt-4o") && valid_model("!") && valid_model(&"m".repeat(200)));
        assert!(!valid_model("") && !valid_model("gpt 4o") && !valid_model("modèle"));
        assert!(!valid_model(&"m".repeat(201)));
    }
}
