//! Masking native keys in text bound for the server log, pure Rust (no Postgres types).
//!
//! A native key (`<type>_<env>_<43 base62 body><6 base62 checksum>`, see [`crate::keys`])
//! is recognised anywhere inside a text: a `_live_` or `_test_` followed by 49 base62
//! characters, preceded by a type prefix (`[a-z][a-z0-9]{1,9}`) whose CRC32 checksum over
//! `<type>_<env>_<body>` matches the last 6 characters. Only checksum-verified keys are
//! masked, so ordinary text — and a look-alike with a wrong checksum — is left alone.
//!
//! The body and checksum are replaced by [`MASK`], keeping the type and environment:
//! `sk_live_y5cD...72PZ` (49 characters after `sk_live_`) becomes `sk_live_****************`.
//! The marker is fixed, so nothing of the key's secret part survives.
//!
//! Boundaries are deliberately liberal: a key glued to other letters or digits on either
//! side (`keysk_live_...`, `sk_live_<49 chars>xyz`) is still masked, because the checksum
//! (1 in 62^6 chance for made-up text) is what decides. The scan works on bytes and only
//! ever replaces ASCII with ASCII, so any ASCII-compatible encoding (every PostgreSQL
//! server encoding, UTF-8 included) stays valid.
//!
//! [`mask_in_place`] never allocates (the marker is shorter than what it replaces), which
//! is what the `emit_log_hook` in `logmask_pg` uses on the error's own strings.

use crate::keys::{checksum, BODY_LEN, CHECKSUM_LEN, TYPE_MAX, TYPE_MIN};

/// What replaces the body and checksum of a key (16 characters, none of them base62).
pub const MASK: &str = "****************";

/// Body and checksum: what is replaced.
const SECRET_LEN: usize = BODY_LEN + CHECKSUM_LEN;
/// `_live_` / `_test_`.
const ENV_LEN: usize = 6;

// The in-place masking relies on the marker being shorter than what it replaces, and on
// the marker never being part of a key.
const _: () = assert!(MASK.len() < SECRET_LEN);

fn is_base62(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

fn is_prefix_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// The start of the body of the first valid native key in `text` at or after `from`
/// (the type prefix starts at or after `from` too). The key's secret part is then
/// `start..start + 49`. Reads nothing before `from`.
pub fn find_key(text: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < text.len() {
        let p = i + text.get(i..)?.iter().position(|&c| c == b'_')?;
        i = p + 1;
        // `_live_` / `_test_`, then 49 base62 characters. When there is no room for
        // them here, there is none further on either: `?` ends the scan.
        let env = text.get(p..p + ENV_LEN)?;
        if env != b"_live_" && env != b"_test_" {
            continue;
        }
        let body = p + ENV_LEN;
        let secret = text.get(body..body + SECRET_LEN)?;
        if !secret.iter().all(|&c| is_base62(c)) {
            continue;
        }
        // The type prefix: a suffix of the [a-z0-9] run before `p`, 2 to 10 characters,
        // starting with a letter; the checksum decides which (if any) it is.
        let mut run = 0;
        while run < TYPE_MAX && p - run > from && is_prefix_char(text[p - run - 1]) {
            run += 1;
        }
        let sum_at = body + BODY_LEN;
        for len in TYPE_MIN..=run {
            let start = p - len;
            if text[start].is_ascii_lowercase()
                && checksum(&text[start..sum_at]) == text[sum_at..sum_at + CHECKSUM_LEN]
            {
                return Some(body);
            }
        }
    }
    None
}

/// Whether `text` holds at least one valid native key (no allocation).
pub fn contains_key(text: &[u8]) -> bool {
    find_key(text, 0).is_some()
}

/// Whether `text` holds a key that masking leaves alone: something shaped like a native
/// key whose checksum does not match (a mistyped key is still nearly all of a real one),
/// or a token starting with one of `import_prefixes` followed by at least
/// [`IMPORTED_MIN`] key characters (imported keys carry no checksum to recognise them
/// by). The log hook keeps a statement holding one out of the log altogether.
pub fn holds_unmasked_key(text: &[u8], import_prefixes: &[&str]) -> bool {
    native_shaped(text)
        || import_prefixes
            .iter()
            .any(|p| !p.is_empty() && imported(text, p.as_bytes()))
}

/// Characters after an import prefix that make a token an imported key for the log hook.
pub const IMPORTED_MIN: usize = 16;

fn native_shaped(text: &[u8]) -> bool {
    let mut i = 0;
    while let Some(off) = text
        .get(i..)
        .and_then(|t| t.iter().position(|&c| c == b'_'))
    {
        let p = i + off;
        i = p + 1;
        let Some(env) = text.get(p..p + ENV_LEN) else {
            return false;
        };
        if env != b"_live_" && env != b"_test_" {
            continue;
        }
        let Some(secret) = text.get(p + ENV_LEN..p + ENV_LEN + SECRET_LEN) else {
            return false;
        };
        let mut run = 0;
        while run < TYPE_MAX && p > run && is_prefix_char(text[p - run - 1]) {
            run += 1;
        }
        if run >= TYPE_MIN && secret.iter().all(|&c| is_base62(c)) {
            return true;
        }
    }
    false
}

fn imported(text: &[u8], prefix: &[u8]) -> bool {
    let key_char = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-';
    text.windows(prefix.len()).enumerate().any(|(at, w)| {
        w == prefix
            && text[at + prefix.len()..]
                .iter()
                .take_while(|c| key_char(c))
                .count()
                >= IMPORTED_MIN
    })
}

/// Mask every valid native key in `buf`, in place: the masked text is `buf[..n]` for the
/// returned `n` (never longer than `buf`). `None` when there is nothing to mask (and
/// `buf` is untouched). Never allocates.
pub fn mask_in_place(buf: &mut [u8]) -> Option<usize> {
    let mut body = find_key(buf, 0)?;
    // Bytes before `read` have been dealt with; the masked text so far is `buf[..write]`.
    // `write <= read` throughout, and `find_key` reads nothing before `read`, so the scan
    // only ever sees original bytes.
    let (mut read, mut write) = (0, 0);
    loop {
        buf.copy_within(read..body, write);
        write += body - read;
        buf[write..write + MASK.len()].copy_from_slice(MASK.as_bytes());
        write += MASK.len();
        read = body + SECRET_LEN;
        match find_key(buf, read) {
            Some(next) => body = next,
            None => break,
        }
    }
    buf.copy_within(read.., write);
    Some(write + (buf.len() - read))
}

/// `text` with every valid native key masked (`sk_live_****************`), or `None`
/// when it holds none (then nothing is allocated).
pub fn mask_keys(text: &str) -> Option<String> {
    if !contains_key(text.as_bytes()) {
        return None;
    }
    let mut bytes = text.as_bytes().to_vec();
    let n = mask_in_place(&mut bytes)?;
    bytes.truncate(n);
    // Only ASCII was replaced by ASCII, so this is still UTF-8; should it somehow not be,
    // the lossy form keeps the masking rather than giving it up.
    Some(
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate, generate_with, Environment};
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn masked_form(key: &str) -> String {
        format!("{}{MASK}", &key[..key.len() - SECRET_LEN])
    }

    fn bad_checksum(key: &str) -> String {
        let (head, last) = key.split_at(key.len() - 1);
        format!("{head}{}", if last == "A" { "B" } else { "A" })
    }

    #[test]
    fn masks_a_key_keeping_type_and_environment() {
        let k = generate("sk", Environment::Live);
        let text = format!("ERROR:  bad thing with {k} here");
        let out = mask_keys(&text).unwrap();
        assert_eq!(out, "ERROR:  bad thing with sk_live_**************** here");
        assert!(!out.contains(&k[8..]));
        let k = generate("vito2", Environment::Test);
        assert_eq!(mask_keys(&k).unwrap(), "vito2_test_****************");
    }

    #[test]
    fn leaves_ordinary_text_and_bad_checksums_alone() {
        let k = generate("sk", Environment::Live);
        for text in [
            String::new(),
            "nothing to see".into(),
            "sk_live_".into(),
            "sk_live_short and sk_test_".into(),
            bad_checksum(&k),
            format!("'{}'", bad_checksum(&k)),
            // Upper-case type prefix, unknown environment, body too short.
            k.replacen("sk", "SK", 1),
            k.replacen("live", "prod", 1),
            k[..k.len() - 1].to_string(),
            // A type prefix of one character or starting with a digit.
            format!("s{}", &k[2..]),
            "_live_".repeat(40),
        ] {
            assert_eq!(mask_keys(&text), None, "{text:?}");
            let mut buf = text.clone().into_bytes();
            assert_eq!(mask_in_place(&mut buf), None);
            assert_eq!(buf, text.as_bytes(), "untouched");
        }
    }

    #[test]
    fn several_keys_and_punctuation() {
        let a = generate("sk", Environment::Live);
        let b = generate("acme", Environment::Test);
        let c = generate("x1", Environment::Live);
        let bad = bad_checksum(&a);
        let text = format!("SELECT '{a}', \"{b}\", ({c}),{a};{b}\n$1 = '{c}' {bad} {a}{b}{c}");
        let out = mask_keys(&text).unwrap();
        for k in [&a, &b, &c] {
            assert!(!out.contains(&k[k.len() - SECRET_LEN..]), "{out}");
        }
        assert!(out.contains(&bad), "the look-alike stays: {out}");
        let (ma, mb, mc) = (masked_form(&a), masked_form(&b), masked_form(&c));
        assert_eq!(
            out,
            format!("SELECT '{ma}', \"{mb}\", ({mc}),{ma};{mb}\n$1 = '{mc}' {bad} {ma}{mb}{mc}")
        );
    }

    #[test]
    fn glued_keys_are_still_masked() {
        let k = generate("sk", Environment::Live);
        // Letters before the type prefix, base62 after the checksum.
        assert_eq!(
            mask_keys(&format!("mykeysk{}xyz", &k[2..])).unwrap(),
            "mykeysk_live_****************xyz"
        );
        assert_eq!(
            mask_keys(&format!("api_key={k}&x=1")).unwrap(),
            "api_key=sk_live_****************&x=1"
        );
        // A ten-character type prefix after a long run of letters.
        let long = generate("abcdefghij", Environment::Test);
        assert_eq!(
            mask_keys(&format!("zzzzzzzz{long}")).unwrap(),
            "zzzzzzzzabcdefghij_test_****************"
        );
    }

    #[test]
    fn utf8_around_keys() {
        let k = generate("sk", Environment::Test);
        let text = format!("ÿ€漢字{k}🔑 «{k}»");
        assert_eq!(
            mask_keys(&text).unwrap(),
            "ÿ€漢字sk_test_****************🔑 «sk_test_****************»"
        );
    }

    #[test]
    fn in_place_matches_the_allocating_form() {
        let k = generate("sk", Environment::Live);
        let text = format!("a {k} b {k} c");
        let mut buf = text.clone().into_bytes();
        let n = mask_in_place(&mut buf).unwrap();
        assert_eq!(&buf[..n], mask_keys(&text).unwrap().as_bytes());
    }

    fn arb_key() -> impl Strategy<Value = String> {
        (any::<u64>(), "[a-z][a-z0-9]{1,9}", any::<bool>()).prop_map(|(seed, prefix, live)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let env = if live {
                Environment::Live
            } else {
                Environment::Test
            };
            generate_with(&mut rng, &prefix, env)
        })
    }

    /// Text that cannot glue onto a key: no [a-z0-9] at its edges.
    fn arb_filler() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[ '\"(),;=:\\n\\t]{1,3}",
            "[ '\"]\\PC{0,30}[ '\"]",
            "[ ]ÿ€漢字🔑[ ]",
        ]
    }

    proptest! {
        #[test]
        fn embedded_keys_are_masked(
            keys in prop::collection::vec(arb_key(), 1..4),
            fillers in prop::collection::vec(arb_filler(), 5),
        ) {
            let mut text = fillers[0].clone();
            let mut expected = fillers[0].clone();
            for (i, k) in keys.iter().enumerate() {
                text.push_str(k);
                text.push_str(&fillers[i + 1]);
                expected.push_str(&masked_form(k));
                expected.push_str(&fillers[i + 1]);
            }
            let out = mask_keys(&text).unwrap();
            for k in &keys {
                prop_assert!(!out.contains(&k[k.len() - SECRET_LEN..]));
            }
            prop_assert_eq!(&out, &expected);
            // Masking is idempotent: the output holds no key.
            prop_assert_eq!(mask_keys(&out), None);
        }

        #[test]
        fn bad_checksums_are_left_alone(key in arb_key(), pos in 0usize..6, filler in arb_filler()) {
            // Change one checksum character: the native shape, a wrong checksum.
            let mut b = key.into_bytes();
            let i = b.len() - 1 - pos;
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let bad = String::from_utf8(b).unwrap();
            let text = format!("{filler}{bad}{filler}");
            prop_assert_eq!(mask_keys(&text), None);
        }

        #[test]
        fn never_panics_and_never_grows(text in "\\PC{0,200}", raw in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Some(out) = mask_keys(&text) {
                prop_assert!(out.len() < text.len());
            }
            let mut buf = raw.clone();
            if let Some(n) = mask_in_place(&mut buf) {
                prop_assert!(n < raw.len());
            } else {
                prop_assert_eq!(buf, raw);
            }
        }

        #[test]
        fn arbitrary_bytes_around_a_key(
            key in arb_key(),
            before in prop::collection::vec(any::<u8>(), 0..40),
            after in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut buf = before.clone();
            buf.push(b' ');
            buf.extend_from_slice(key.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(&after);
            let n = mask_in_place(&mut buf).unwrap();
            let out = &buf[..n];
            let secret = &key.as_bytes()[key.len() - SECRET_LEN..];
            prop_assert!(!out.windows(SECRET_LEN).any(|w| w == secret));
        }
    }

    #[test]
    fn long_text_without_keys_is_cheap_and_untouched() {
        let text = "x_live_y ".repeat(100_000);
        assert_eq!(mask_keys(&text), None);
        let k = generate("sk", Environment::Live);
        let text = format!("{}{k}", "_test_".repeat(50_000));
        assert!(mask_keys(&text)
            .unwrap()
            .ends_with("sk_live_****************"));
    }

    #[test]
    fn unmasked_keys_are_recognised() {
        let key = generate("sk", Environment::Live);
        let (head, last) = key.split_at(key.len() - 1);
        let mistyped = format!("{head}{}", if last == "A" { "B" } else { "A" });
        let imported = "legacy_9f8e7d6c5b4a39281706";
        let masked = format!("SELECT 'sk_live_{MASK}'");
        let none: [&str; 0] = [];
        assert!(holds_unmasked_key(
            format!("SELECT '{mistyped}'").as_bytes(),
            &none
        ));
        assert!(!holds_unmasked_key(masked.as_bytes(), &none));
        assert!(!holds_unmasked_key(b"SELECT 'sk_live_short'", &none));
        assert!(holds_unmasked_key(
            format!("SELECT '{imported}'").as_bytes(),
            &["legacy_"]
        ));
        assert!(!holds_unmasked_key(
            format!("SELECT '{imported}'").as_bytes(),
            &none
        ));
        assert!(!holds_unmasked_key(b"SELECT 'legacy_short'", &["legacy_"]));
        assert!(!holds_unmasked_key(b"no keys here", &["legacy_", ""]));
    }
}
