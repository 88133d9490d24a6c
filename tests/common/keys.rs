//! The native key format, rebuilt independently of the extension's code:
//! `<type>_<env>_<43 base62 body><6 base62 CRC32 checksum>`.

use rand::distributions::Alphanumeric;
use rand::Rng;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const BODY_LEN: usize = 43;
pub const CHECKSUM_LEN: usize = 6;

/// `n` random ASCII letters and digits.
pub fn random_alnum(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// CRC32 (IEEE) of `data` as 6 base62 characters, most significant first.
fn checksum(data: &str) -> String {
    let mut n = crc32fast::hash(data.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).unwrap()
}

/// A well-formed native key with a correct checksum that nobody ever issued.
pub fn unissued_native_key(type_prefix: &str, env: &str) -> String {
    let head = format!("{type_prefix}_{env}_{}", random_alnum(BODY_LEN));
    let sum = checksum(&head);
    head + &sum
}

/// The 43-character random body of a native key.
pub fn body(key: &str) -> &str {
    let end = key.len() - CHECKSUM_LEN;
    &key[end - BODY_LEN..end]
}

/// `key` with its last checksum character changed: the native shape, a bad checksum.
pub fn with_bad_checksum(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}{}", if last == "A" { "B" } else { "A" })
}
