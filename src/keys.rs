//! The key format, pure Rust (no Postgres types).
//!
//! A native key reads `<type>_<env>_<body><checksum>`:
//! - `type`: the tenant's type prefix, 2–10 characters `[a-z][a-z0-9]*` (default `sk`);
//! - `env`: `live` or `test`;
//! - `body`: 43 base62 characters from the OS CSPRNG (62^43 > 2^256, so 256 bits);
//! - `checksum`: CRC32 (IEEE) of everything before it, base62, 6 characters, zero-padded.
//!
//! The checksum lets a mistyped or made-up key be refused before any table is read;
//! it is not a secret and proves nothing about a key's validity.
//!
//! Only SHA-256 of the whole key string is stored.

use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};

pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const BODY_LEN: usize = 43;
pub const CHECKSUM_LEN: usize = 6;
pub const TYPE_MIN: usize = 2;
pub const TYPE_MAX: usize = 10;
/// No native key is longer than this; anything longer is refused before any work.
pub const NATIVE_MAX_LEN: usize = TYPE_MAX + 1 + 4 + 1 + BODY_LEN + CHECKSUM_LEN;
/// Imported (foreign-format) keys: bounds on what we accept and look up.
pub const IMPORTED_MIN_LEN: usize = 16;
pub const IMPORTED_MAX_LEN: usize = 512;

/// `live` or `test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "live" => Some(Self::Live),
            "test" => Some(Self::Test),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }
}

/// What a string presented as a key turned out to be, before any table is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A native key whose checksum matches.
    Native,
    /// Native shape but the checksum does not match: a typo or a made-up key.
    BadChecksum,
    /// Not a native key, but it starts with a configured import prefix.
    Imported,
    /// Anything else.
    Malformed,
}

/// `[a-z][a-z0-9]{1,9}`: the type prefix of a native key.
pub fn valid_type_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    (TYPE_MIN..=TYPE_MAX).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// CRC32 of `data`, as 6 base62 characters (62^6 > 2^32), most significant first.
pub fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(data) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn is_base62(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// Classify a presented string without touching any table. `import_prefixes` is the
/// configured list of prefixes under which foreign keys were imported.
pub fn classify(key: &str, import_prefixes: &[&str]) -> Shape {
    if let Some(ok) = native_checksum_ok(key) {
        return if ok {
            Shape::Native
        } else {
            Shape::BadChecksum
        };
    }
    if is_importable(key, import_prefixes) {
        Shape::Imported
    } else {
        Shape::Malformed
    }
}

/// `Some(true|false)` when `key` has the native shape (and whether its checksum
/// matches), `None` when it does not have the native shape at all.
pub fn native_checksum_ok(key: &str) -> Option<bool> {
    let b = key.as_bytes();
    if b.len() > NATIVE_MAX_LEN {
        return None;
    }
    let first = key.find('_')?;
    if !valid_type_prefix(&key[..first]) {
        return None;
    }
    let rest = &key[first + 1..];
    let second = rest.find('_')?;
    Environment::parse(&rest[..second])?;
    let tail = &rest[second + 1..];
    if tail.len() != BODY_LEN + CHECKSUM_LEN || !tail.bytes().all(is_base62) {
        return None;
    }
    let split = b.len() - CHECKSUM_LEN;
    Some(checksum(&b[..split]) == b[split..])
}

/// Whether a foreign-format key may be imported (and later looked up): it starts with
/// one of `prefixes`, has a sane length and only visible ASCII.
pub fn is_importable(key: &str, prefixes: &[&str]) -> bool {
    (IMPORTED_MIN_LEN..=IMPORTED_MAX_LEN).contains(&key.len())
        && key.bytes().all(|c| c.is_ascii_graphic())
        && prefixes.iter().any(|p| !p.is_empty() && key.starts_with(p))
}

/// Parse a comma-separated list of import prefixes (the `api_key_mgmt.import_prefixes`
/// setting); blanks are ignored.
pub fn parse_prefix_list(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// The environment a native key names (`None` for anything else).
pub fn native_environment(key: &str) -> Option<Environment> {
    let mut parts = key.splitn(3, '_');
    parts.next()?;
    Environment::parse(parts.next()?)
}

/// SHA-256 of the whole key string: the only thing stored.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The non-secret display form: the first characters up to 4 of the body, then `...`
/// and the last 4 characters. For a native key: `sk_live_AbCd...wxyz`.
pub fn display_prefix(key: &str) -> String {
    let head_len = match native_checksum_ok(key) {
        Some(_) => key.len() - BODY_LEN - CHECKSUM_LEN + 4,
        None => 6.min(key.len() / 4),
    };
    let tail_len = 4.min(key.len() / 4);
    format!("{}...{}", &key[..head_len], &key[key.len() - tail_len..])
}

/// A new native key for `type_prefix` and `env`. The caller validated the prefix.
pub fn generate(type_prefix: &str, env: Environment) -> String {
    generate_with(&mut OsRng, type_prefix, env)
}

/// As [`generate`], with the random source given (tests use a seeded one).
pub fn generate_with<R: Rng + ?Sized>(rng: &mut R, type_prefix: &str, env: Environment) -> String {
    debug_assert!(valid_type_prefix(type_prefix));
    let mut s = String::with_capacity(NATIVE_MAX_LEN);
    s.push_str(type_prefix);
    s.push('_');
    s.push_str(env.as_str());
    s.push('_');
    for _ in 0..BODY_LEN {
        // gen_range is unbiased (rejection sampling), so every character is uniform.
        s.push(BASE62[rng.gen_range(0..62)] as char);
    }
    let sum = checksum(s.as_bytes());
    s.push_str(std::str::from_utf8(&sum).expect("base62 is ASCII"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn generated_key_has_the_documented_shape() {
        let k = generate("sk", Environment::Live);
        assert_eq!(k.len(), 3 + 5 + BODY_LEN + CHECKSUM_LEN);
        assert!(k.starts_with("sk_live_"));
        assert_eq!(classify(&k, &[]), Shape::Native);
        assert_eq!(native_environment(&k), Some(Environment::Live));
    }

    #[test]
    fn keys_are_unique() {
        let a = generate("sk", Environment::Test);
        let b = generate("sk", Environment::Test);
        assert_ne!(a, b);
    }

    #[test]
    fn checksum_is_fixed_width_crc32() {
        // CRC32("") = 0 -> all zeros; CRC32("123456789") = 0xCBF43926, the standard
        // check value, which is "3jZRME" in base62 (computed independently, with Python's
        // zlib.crc32).
        assert_eq!(&checksum(b""), b"000000");
        assert_eq!(&checksum(b"123456789"), b"3jZRME");
    }

    #[test]
    fn shapes() {
        let k = generate("vito", Environment::Test);
        assert_eq!(classify(&k, &[]), Shape::Native);
        assert_eq!(classify("", &[]), Shape::Malformed);
        assert_eq!(classify("sk_live_short", &[]), Shape::Malformed);
        assert_eq!(classify("sk_prod_", &[]), Shape::Malformed);
        let mut bad = k.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            classify(std::str::from_utf8(&bad).unwrap(), &[]),
            Shape::BadChecksum
        );
        // Upper case type prefix, missing env, too long.
        assert_eq!(
            classify(&k.replacen("vito", "VITO", 1), &[]),
            Shape::Malformed
        );
        assert_eq!(classify(&format!("{k}x"), &[]), Shape::Malformed);
        assert_eq!(classify(&"a".repeat(10_000), &[]), Shape::Malformed);
    }

    #[test]
    fn imported_keys_need_a_configured_prefix() {
        let legacy = "unkey_3ZkQm8PpR1t9vXy2";
        assert_eq!(classify(legacy, &[]), Shape::Malformed);
        assert_eq!(classify(legacy, &["unkey_"]), Shape::Imported);
        assert_eq!(classify(legacy, &["other_"]), Shape::Malformed);
        assert_eq!(classify("unkey_short", &["unkey_"]), Shape::Malformed);
        assert_eq!(
            classify("unkey_ with space 1234", &["unkey_"]),
            Shape::Malformed
        );
        assert_eq!(
            parse_prefix_list(" unkey_, ,sk-old-"),
            vec!["unkey_", "sk-old-"]
        );
        assert!(parse_prefix_list("").is_empty());
    }

    #[test]
    fn display_prefix_shows_type_env_and_little_else() {
        let k = generate("sk", Environment::Live);
        let d = display_prefix(&k);
        assert_eq!(d.len(), 8 + 4 + 3 + 4);
        assert!(d.starts_with(&k[..12]));
        assert!(d.ends_with(&k[k.len() - 4..]));
        // Foreign keys: at most a quarter of the key is shown, at most 6 + 4 characters.
        assert_eq!(display_prefix("unkey_3ZkQm8PpR1t9vXy2"), "unkey...vXy2");
        assert_eq!(
            display_prefix(&format!("sk-proj-{}", "a".repeat(40))),
            "sk-pro...aaaa"
        );
    }

    #[test]
    fn hash_is_sha256_of_the_text() {
        assert_eq!(
            hash("abc")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every issued key parses, for any prefix and environment.
        #[test]
        fn every_issued_key_parses(seed: u64, prefix in "[a-z][a-z0-9]{1,9}", live: bool) {
            let env = if live { Environment::Live } else { Environment::Test };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let k = generate_with(&mut rng, &prefix, env);
            prop_assert_eq!(classify(&k, &[]), Shape::Native);
            prop_assert_eq!(native_environment(&k), Some(env));
        }

        /// Every single-character change of a key is refused before any lookup.
        #[test]
        fn every_single_character_change_is_rejected(seed: u64, pos in 0usize..57, repl in 0usize..62) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let k = generate_with(&mut rng, "sk", Environment::Live);
            let mut b = k.clone().into_bytes();
            let new = BASE62[repl];
            prop_assume!(b[pos] != new);
            b[pos] = new;
            let changed = String::from_utf8(b).unwrap();
            prop_assert_ne!(classify(&changed, &[]), Shape::Native);
        }

        /// Deleting or inserting a character is refused too.
        #[test]
        fn length_changes_are_rejected(seed: u64, pos in 0usize..57) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let k = generate_with(&mut rng, "sk", Environment::Live);
            let mut shorter = k.clone();
            shorter.remove(pos);
            prop_assert_ne!(classify(&shorter, &[]), Shape::Native);
            let mut longer = k.clone();
            longer.insert(pos, 'x');
            prop_assert_ne!(classify(&longer, &[]), Shape::Native);
        }

        /// Arbitrary text never panics and is never taken for a native key by accident
        /// unless it really carries a valid checksum.
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let shape = classify(&s, &["x"]);
            if shape == Shape::Native {
                prop_assert_eq!(native_checksum_ok(&s), Some(true));
            }
        }
    }
}
