//! Envelope encryption for tenant secrets, pure Rust (no Postgres types).
//!
//! Master keys come from a file named by a superuser-only setting. Each tenant (and the
//! platform, for platform-wide default secrets) gets its own AES-256 data key, derived
//! from a master key version with HKDF-SHA256; secrets are sealed with AES-256-GCM under
//! associated data that binds the ciphertext to its row.
//!
//! # Master key file
//!
//! UTF-8 text. Blank lines and lines whose first non-blank character is `#` are ignored.
//! Every other line is `<version> <key> [active]`, fields separated by spaces or tabs:
//! - `version`: decimal digits, 1 to 2147483647, unique in the file;
//! - `key`: exactly 32 bytes, as 64 hex characters (either case) or as standard base64
//!   with padding (44 characters, canonical);
//! - `active` (optional, at most one line): the version used for new encryptions. When
//!   no line says `active`, the highest version is active.
//!
//! ```text
//! # example keys only: generate real ones with `openssl rand -hex 32`
//! 1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
//! 2 ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8= active
//! ```
//!
//! Anything else is an error, reported with its line number only: no error message and
//! no `Debug` output here ever contains key material. Key bytes are wiped on drop.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use std::hint::black_box;
use zeroize::{Zeroize, Zeroizing};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Secrets are 1 to 64 KiB.
pub const MAX_PLAINTEXT: usize = 64 * 1024;
pub const HKDF_SALT: &[u8] = b"api_key_mgmt/secrets/v1";
pub const KCV_LABEL: &[u8] = b"api_key_mgmt key check v1";
/// First bytes of every associated-data string.
pub const AAD_TAG: &[u8] = b"api_key_mgmt/aad/v1";

/// One version of the master key. `Debug` shows the version only.
#[derive(Clone)]
pub struct MasterKey {
    version: i32,
    bytes: [u8; KEY_LEN],
}

impl MasterKey {
    pub fn version(&self) -> i32 {
        self.version
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("version", &self.version)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

/// All versions from a key file, sorted by version, and which one is active.
#[derive(Clone)]
pub struct MasterKeys {
    keys: Vec<MasterKey>,
    active: i32,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeys")
            .field("versions", &self.versions())
            .field("active", &self.active)
            .finish()
    }
}

/// What is wrong with a key file. Messages carry line numbers, never key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFileError {
    /// No key lines at all.
    Empty,
    BadVersion {
        line: usize,
    },
    MissingKey {
        line: usize,
    },
    BadKey {
        line: usize,
    },
    /// Something other than `active` after the key, or more than one word after it.
    TrailingText {
        line: usize,
    },
    DuplicateVersion {
        line: usize,
        version: i32,
        first_line: usize,
    },
    TwoActive {
        line: usize,
        first_line: usize,
    },
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "the master key file holds no key"),
            Self::BadVersion { line } => write!(
                f,
                "line {line}: version must be an integer from 1 to {}",
                i32::MAX
            ),
            Self::MissingKey { line } => write!(f, "line {line}: a key must follow the version"),
            Self::BadKey { line } => write!(
                f,
                "line {line}: key must be 32 bytes as 64 hex characters or base64"
            ),
            Self::TrailingText { line } => {
                write!(f, "line {line}: only the word `active` may follow the key")
            }
            Self::DuplicateVersion {
                line,
                version,
                first_line,
            } => write!(
                f,
                "line {line}: version {version} already appears on line {first_line}"
            ),
            Self::TwoActive { line, first_line } => write!(
                f,
                "line {line}: only one version may be active (line {first_line} already is)"
            ),
        }
    }
}

impl std::error::Error for KeyFileError {}

impl MasterKeys {
    /// Parse a key file (format in the module documentation).
    pub fn parse(text: &str) -> Result<MasterKeys, KeyFileError> {
        let mut keys: Vec<MasterKey> = Vec::new();
        let mut seen: Vec<(i32, usize)> = Vec::new(); // (version, line)
        let mut active: Option<(i32, usize)> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut words = trimmed.split_ascii_whitespace();
            let version = words.next().and_then(parse_version);
            let version = version.ok_or(KeyFileError::BadVersion { line })?;
            let word = words.next().ok_or(KeyFileError::MissingKey { line })?;
            let bytes = decode_key(word.as_bytes()).ok_or(KeyFileError::BadKey { line })?;
            let is_active = match (words.next(), words.next()) {
                (None, _) => false,
                (Some("active"), None) => true,
                _ => return Err(KeyFileError::TrailingText { line }),
            };
            if let Some(&(_, first_line)) = seen.iter().find(|(v, _)| *v == version) {
                return Err(KeyFileError::DuplicateVersion {
                    line,
                    version,
                    first_line,
                });
            }
            if is_active {
                if let Some((_, first_line)) = active {
                    return Err(KeyFileError::TwoActive { line, first_line });
                }
                active = Some((version, line));
            }
            seen.push((version, line));
            keys.push(MasterKey {
                version,
                bytes: *bytes,
            });
        }
        keys.sort_by_key(|k| k.version);
        let highest = keys.last().ok_or(KeyFileError::Empty)?.version;
        let active = active.map_or(highest, |(v, _)| v);
        Ok(MasterKeys { keys, active })
    }

    /// The version new secrets are encrypted with.
    pub fn active_version(&self) -> i32 {
        self.active
    }

    /// The key of the active version.
    pub fn active(&self) -> &MasterKey {
        self.get(self.active)
            .expect("the active version is in the file")
    }

    pub fn get(&self, version: i32) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.version == version)
    }

    /// All versions, ascending.
    pub fn versions(&self) -> Vec<i32> {
        self.keys.iter().map(|k| k.version).collect()
    }
}

/// Decimal digits only (no sign), 1..=i32::MAX.
fn parse_version(s: &str) -> Option<i32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<i32>().ok().filter(|v| *v >= 1)
}

/// 64 hex characters or 44 characters of padded standard base64, canonical.
fn decode_key(s: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    match s.len() {
        64 => {
            for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
                *o = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
            }
        }
        44 if s[43] == b'=' => {
            let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
            for &c in &s[..43] {
                acc = (acc << 6) | base64_digit(c)?;
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    out[n] = (acc >> bits) as u8;
                    n += 1;
                    acc &= (1 << bits) - 1;
                }
            }
            // 43 characters carry 258 bits: the 2 left over must be zero.
            if acc != 0 {
                return None;
            }
        }
        _ => return None,
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn base64_digit(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The AES-256 key of one tenant (or of the platform) under one master key version.
pub struct DataKey([u8; KEY_LEN]);

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// HKDF-SHA256 (salt [`HKDF_SALT`]) of the master key, with info `b"tenant:"` + the 16
/// bytes of the tenant's UUID, or `b"platform"` for platform-wide secrets.
pub fn derive_data_key(master: &MasterKey, tenant: Option<&[u8; 16]>) -> DataKey {
    let mut info = Vec::with_capacity(7 + 16);
    match tenant {
        Some(t) => {
            info.extend_from_slice(b"tenant:");
            info.extend_from_slice(t);
        }
        None => info.extend_from_slice(b"platform"),
    }
    let mut key = DataKey([0; KEY_LEN]);
    Hkdf::<Sha256>::new(Some(HKDF_SALT), &master.bytes)
        .expand(&info, &mut key.0)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// A sealed secret: the nonce and the ciphertext with its 16-byte tag appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

/// Why a secret could not be sealed or opened. Messages carry no plaintext or key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoError {
    PlaintextLength {
        len: usize,
    },
    NonceLength {
        len: usize,
    },
    CiphertextLength {
        len: usize,
    },
    /// Wrong key, or the ciphertext, nonce or associated data was altered.
    Authentication,
    /// The operating system's random source failed.
    Random,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PlaintextLength { len } => {
                write!(f, "a secret must be 1 to {MAX_PLAINTEXT} bytes, not {len}")
            }
            Self::NonceLength { len } => write!(f, "nonce must be {NONCE_LEN} bytes, not {len}"),
            Self::CiphertextLength { len } => write!(
                f,
                "ciphertext must be {} to {} bytes (tag included), not {len}",
                1 + TAG_LEN,
                MAX_PLAINTEXT + TAG_LEN
            ),
            Self::Authentication => write!(
                f,
                "decryption failed: wrong key, or the ciphertext, nonce or associated data was altered"
            ),
            Self::Random => write!(f, "the operating system's random source failed"),
        }
    }
}

impl std::error::Error for CryptoError {}

/// AES-256-GCM with a fresh random 96-bit nonce from the OS on every call.
pub fn encrypt(key: &DataKey, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, CryptoError> {
    if !(1..=MAX_PLAINTEXT).contains(&plaintext.len()) {
        return Err(CryptoError::PlaintextLength {
            len: plaintext.len(),
        });
    }
    let mut nonce = [0u8; NONCE_LEN];
    OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|_| CryptoError::Random)?;
    let payload = Payload {
        msg: plaintext,
        aad,
    };
    let ciphertext = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key.0))
        .encrypt(Nonce::from_slice(&nonce), payload)
        // Only fails for plaintexts far beyond MAX_PLAINTEXT.
        .map_err(|_| CryptoError::PlaintextLength {
            len: plaintext.len(),
        })?;
    Ok(Sealed { nonce, ciphertext })
}

/// Open what [`encrypt`] sealed, under the same key and associated data.
pub fn decrypt(
    key: &DataKey,
    nonce: &[u8],
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if nonce.len() != NONCE_LEN {
        return Err(CryptoError::NonceLength { len: nonce.len() });
    }
    if !(1 + TAG_LEN..=MAX_PLAINTEXT + TAG_LEN).contains(&ciphertext.len()) {
        return Err(CryptoError::CiphertextLength {
            len: ciphertext.len(),
        });
    }
    let payload = Payload {
        msg: ciphertext,
        aad,
    };
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key.0))
        .decrypt(Nonce::from_slice(nonce), payload)
        .map_err(|_| CryptoError::Authentication)
}

/// The associated data binding a ciphertext to its row:
/// [`AAD_TAG`], then `0x00` (platform) or `0x01` + the 16 tenant UUID bytes, the 16
/// bytes of the secret's id, the provider's UTF-8 length (u32 big-endian) and bytes, and
/// the key version (i32 big-endian). Every field has a fixed length or a length prefix,
/// so two different rows never give the same bytes.
pub fn aad(
    tenant: Option<&[u8; 16]>,
    secret_id: &[u8; 16],
    provider: &str,
    key_version: i32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(AAD_TAG.len() + 1 + 16 + 16 + 4 + provider.len() + 4);
    out.extend_from_slice(AAD_TAG);
    match tenant {
        Some(t) => {
            out.push(1);
            out.extend_from_slice(t);
        }
        None => out.push(0),
    }
    out.extend_from_slice(secret_id);
    // Postgres text is at most 1 GB, well within u32.
    out.extend_from_slice(&(provider.len() as u32).to_be_bytes());
    out.extend_from_slice(provider.as_bytes());
    out.extend_from_slice(&key_version.to_be_bytes());
    out
}

/// HMAC-SHA256 of [`KCV_LABEL`] under the master key: stored per version, so that a wrong
/// key file is detected at first use instead of as a pile of authentication errors.
pub fn key_check_value(master: &MasterKey) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&master.bytes)
        .expect("HMAC takes keys of any length");
    mac.update(KCV_LABEL);
    mac.finalize().into_bytes().into()
}

/// Constant-time equality: every byte is compared; different lengths are unequal.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| black_box(acc | (x ^ y)));
    black_box(diff) == 0
}

/// A non-secret preview, counted in characters (`n`), never showing more than `n / 4`:
/// - `n >= 20`: a head, `...`, the last 4 characters. The head is the leading text up to
///   and including the first `-` or `_` if one is among the first 8 characters, else the
///   first 3 characters, cut to `n / 4 - 4` characters if longer
///   (`sk-proj-...` of 164 characters gives `sk-...wxyz`);
/// - `8 <= n < 20`: `...` and the last 2 characters;
/// - shorter: `...`.
pub fn preview(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let n = chars.len();
    let (head, tail) = if n >= 20 {
        let head = chars[..8]
            .iter()
            .position(|c| *c == '-' || *c == '_')
            .map_or(3, |i| i + 1);
        (head.min(n / 4 - 4), 4)
    } else if n >= 8 {
        (0, 2)
    } else {
        (0, 0)
    };
    let mut out: String = chars[..head].iter().collect();
    out.push_str("...");
    out.extend(&chars[n - tail..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B64_1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const B64_2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    const T_A: [u8; 16] = [0xA; 16];
    const T_B: [u8; 16] = [0xB; 16];
    const ID: [u8; 16] = [7; 16];
    const AUTH: Result<Vec<u8>, CryptoError> = Err(CryptoError::Authentication);

    fn master(version: i32, fill: u8) -> MasterKey {
        let bytes = [fill; KEY_LEN];
        MasterKey { version, bytes }
    }

    fn key(tenant: Option<&[u8; 16]>) -> DataKey {
        derive_data_key(&master(1, 42), tenant)
    }

    fn open(k: &DataKey, s: &Sealed, ad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        decrypt(k, &s.nonce, &s.ciphertext, ad)
    }

    fn kcv(m: &MasterKeys, version: i32) -> [u8; 32] {
        key_check_value(m.get(version).unwrap())
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let k = key(Some(&T_A));
        let ad = aad(Some(&T_A), &ID, "openai", 1);
        let a = encrypt(&k, b"sk-secret", &ad).unwrap();
        let b = encrypt(&k, b"sk-secret", &ad).unwrap();
        assert_eq!(a.ciphertext.len(), 9 + TAG_LEN);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(open(&k, &a, &ad).unwrap(), b"sk-secret");
        assert_eq!(open(&k, &b, &ad).unwrap(), b"sk-secret");
    }

    #[test]
    fn every_altered_byte_of_nonce_or_ciphertext_fails() {
        let k = key(None);
        let ad = aad(None, &ID, "anthropic", 3);
        let s = encrypt(&k, b"0123456789abcdefghij", &ad).unwrap();
        for mask in [0x01u8, 0x80, 0xff] {
            for i in 0..s.ciphertext.len() + NONCE_LEN {
                let mut t = s.clone();
                match i.checked_sub(NONCE_LEN) {
                    None => t.nonce[i] ^= mask,
                    Some(j) => t.ciphertext[j] ^= mask, // the tag is the last 16
                }
                assert_eq!(open(&k, &t, &ad), AUTH, "byte {i}");
            }
        }
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_fails() {
        let k = key(Some(&T_A));
        let s = encrypt(&k, b"secret", &aad(Some(&T_A), &ID, "openai", 1)).unwrap();
        for other in [
            aad(Some(&T_A), &[8; 16], "openai", 1),
            aad(Some(&T_B), &ID, "openai", 1),
            aad(Some(&T_A), &ID, "anthropic", 1),
            aad(Some(&T_A), &ID, "cohere", 1), // as long as "openai"
            aad(Some(&T_A), &ID, "openai", 2),
            aad(None, &ID, "openai", 1),
            Vec::new(),
        ] {
            assert_eq!(open(&k, &s, &other), AUTH);
        }
    }

    #[test]
    fn one_tenants_key_never_opens_anothers_data() {
        let ad = aad(Some(&T_B), &ID, "openai", 1);
        let s = encrypt(&key(Some(&T_B)), b"secret", &ad).unwrap();
        let other_master = derive_data_key(&master(2, 43), Some(&T_B));
        for wrong in [key(Some(&T_A)), key(None), other_master] {
            assert_eq!(open(&wrong, &s, &ad), AUTH);
        }
    }

    #[test]
    fn hkdf_and_kcv_match_an_independent_computation() {
        // Expected values computed with Python's hmac/hashlib (RFC 5869 by hand).
        let keys = MasterKeys::parse(&format!("1 {HEX1}")).unwrap();
        let m = keys.get(1).unwrap();
        let tenant: [u8; 16] = std::array::from_fn(|i| i as u8);
        let platform = "8df05f10e30f8b7d86b8a686358dff4efddf712436863d59a42a48bcb2e12d67";
        let of_tenant = "29958e4b258de6057e8fcf2a53f1594a6d4e850237c011be279e38420aad1c0b";
        let check = "e48affe538a185df1db20d78fa166fd9fc2d061a8593f6e3e83ebe4ae0c46b1d";
        assert_eq!(hex(&derive_data_key(m, None).0), platform);
        assert_eq!(hex(&derive_data_key(m, Some(&tenant)).0), of_tenant);
        assert_eq!(hex(&key_check_value(m)), check);
        let a = derive_data_key(m, Some(&T_A)).0;
        assert_eq!(a, derive_data_key(m, Some(&T_A)).0);
        assert_ne!(a, derive_data_key(m, Some(&T_B)).0);
    }

    #[test]
    fn length_errors() {
        use CryptoError::*;
        let k = key(None);
        let big = vec![0u8; MAX_PLAINTEXT + 1];
        assert_eq!(encrypt(&k, b"", b""), Err(PlaintextLength { len: 0 }));
        assert_eq!(
            encrypt(&k, &big, b""),
            Err(PlaintextLength { len: big.len() })
        );
        assert!(encrypt(&k, &big[1..], b"").is_ok());
        let s = encrypt(&k, b"x", b"").unwrap();
        let (n, c) = (&s.nonce[..], &s.ciphertext[..]);
        assert_eq!(decrypt(&k, &n[..11], c, b""), Err(NonceLength { len: 11 }));
        assert_eq!(
            decrypt(&k, n, &c[..16], b""),
            Err(CiphertextLength { len: 16 })
        );
        assert_eq!(decrypt(&k, n, c, b"").unwrap(), b"x");
        let msg = PlaintextLength { len: 3 }.to_string();
        assert_eq!(msg, "a secret must be 1 to 65536 bytes, not 3");
    }

    #[test]
    fn key_files_parse() {
        let upper = HEX1.to_uppercase();
        let text = format!("# c\n\n  # c2\n1 {HEX1}\r\n\t3\t{B64_2}  \n2 {upper}\n");
        let m = MasterKeys::parse(&text).unwrap();
        assert_eq!(m.versions(), vec![1, 2, 3]);
        assert_eq!(m.active_version(), 3);
        assert_eq!(m.active().version(), 3);
        assert!(m.get(4).is_none());
        // Hex and base64 of the same bytes are the same key.
        let b = MasterKeys::parse(&format!("7 {B64_1} active\n9 {B64_2}")).unwrap();
        assert_eq!(b.active_version(), 7);
        assert_eq!(kcv(&b, 7), kcv(&m, 1));
        assert_eq!(kcv(&b, 9), kcv(&m, 3));
        assert_eq!(kcv(&m, 2), kcv(&m, 1));
        assert_ne!(kcv(&m, 1), kcv(&m, 3));
        assert!(MasterKeys::parse(&format!("2147483647 {HEX1}")).is_ok());
    }

    #[test]
    fn key_file_errors_name_the_line_and_never_the_key() {
        use KeyFileError::*;
        let bad_b64 = B64_1.replace('A', "*");
        let noncanonical = B64_1.replace("Hh8=", "Hh9=");
        let dup = DuplicateVersion {
            line: 3,
            version: 1,
            first_line: 1,
        };
        let cases: Vec<(String, KeyFileError)> = vec![
            (String::new(), Empty),
            ("# only\n\n".into(), Empty),
            (format!("1 {HEX1}\n# x\n1 {B64_2}"), dup),
            (
                format!("1 {HEX1} active\n2 {B64_2} active"),
                TwoActive {
                    line: 2,
                    first_line: 1,
                },
            ),
            (format!("1 {HEX1}\n\n2 {}", &HEX1[1..]), BadKey { line: 3 }),
            (format!("1 {HEX1}0"), BadKey { line: 1 }),
            (format!("1 {}g", &HEX1[1..]), BadKey { line: 1 }),
            (format!("1 {bad_b64}"), BadKey { line: 1 }),
            (format!("1 {noncanonical}"), BadKey { line: 1 }),
            (format!("1 {}", B64_1.replace('=', "A")), BadKey { line: 1 }),
            (format!("0 {HEX1}"), BadVersion { line: 1 }),
            (format!("\n-1 {HEX1}"), BadVersion { line: 2 }),
            (format!("+1 {HEX1}"), BadVersion { line: 1 }),
            (format!("2147483648 {HEX1}"), BadVersion { line: 1 }),
            (format!("{HEX1} 1"), BadVersion { line: 1 }),
            ("1".into(), MissingKey { line: 1 }),
            (format!("1 {HEX1} junk"), TrailingText { line: 1 }),
            (format!("1 {HEX1} active # c"), TrailingText { line: 1 }),
            (format!("1 {HEX1} ACTIVE"), TrailingText { line: 1 }),
        ];
        for (text, want) in cases {
            let got = MasterKeys::parse(&text).unwrap_err();
            assert_eq!(got, want, "{text:?}");
            let msg = format!("{got} {got:?}");
            assert!(want == Empty || msg.starts_with("line "), "{msg}");
            for secret in [HEX1, &HEX1[1..], B64_1, B64_2, &bad_b64, "0102030405"] {
                assert!(!msg.contains(secret), "{msg}");
            }
        }
        let msg = MasterKeys::parse("1 abc").unwrap_err().to_string();
        assert_eq!(
            msg,
            "line 1: key must be 32 bytes as 64 hex characters or base64"
        );
    }

    #[test]
    fn debug_output_is_redacted() {
        let m = MasterKeys::parse(&format!("1 {HEX1}\n2 {B64_2}")).unwrap();
        let dk = derive_data_key(m.active(), None);
        let out = format!("{m:?} {:?} {dk:?} {m:#?}", m.get(1).unwrap());
        assert!(out.starts_with("MasterKeys { versions: [1, 2], active: 2 } MasterKey {"));
        for secret in [HEX1, B64_1, B64_2, "0102030405", "1, 2, 3, 4", "32, 33, 34"] {
            assert!(!out.contains(secret), "{out}");
        }
    }

    #[test]
    fn kcv_and_ct_eq() {
        let a = key_check_value(&master(1, 1));
        let b = key_check_value(&master(1, 2));
        assert_ne!(a, b);
        assert_eq!(a, key_check_value(&master(5, 1)), "depends on the key only");
        assert!(ct_eq(&a, &a) && ct_eq(b"", b""));
        assert!(!ct_eq(&a, &b) && !ct_eq(&a, &a[..31]) && !ct_eq(b"", b"x"));
        let mut c = a;
        c[31] ^= 1;
        assert!(!ct_eq(&a, &c));
    }

    #[test]
    fn preview_cases() {
        let cases = [
            (String::new(), "..."),
            ("1234567".into(), "..."),
            ("12345678".into(), "...78"),
            ("sk-abcdefghijklmnop".into(), "...op"),     // 19
            ("sk-abcdefghijklmnopq".into(), "s...nopq"), // 20: 5 may be shown
            (format!("sk-proj-{}wxyz", "A".repeat(152)), "sk-...wxyz"),
            (format!("ghp_{}wxyz", "B".repeat(32)), "ghp_...wxyz"),
            (format!("abcdefg_{}wxyz", "C".repeat(40)), "abcdefg_...wxyz"),
            (format!("abcdefgh_{}wxyz", "C".repeat(40)), "abc...wxyz"),
            (format!("AIza{}wxyz", "D".repeat(31)), "AIz...wxyz"),
            (format!("ключ-{}ёжик", "é".repeat(40)), "ключ-...ёжик"),
        ];
        for (secret, want) in cases {
            assert_eq!(preview(&secret), want, "{secret}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn round_trip_any(pt in proptest::collection::vec(any::<u8>(), 1..2048),
                          provider in "\\PC{0,20}", v: i32) {
            let k = key(Some(&T_A));
            let ad = aad(Some(&T_A), &ID, &provider, v);
            let s = encrypt(&k, &pt, &ad).unwrap();
            prop_assert_eq!(open(&k, &s, &ad).unwrap(), pt);
        }

        /// Different rows never share associated data (the encoding is unambiguous).
        #[test]
        fn aad_is_injective(ta in proptest::option::of(0u8..2), tb in proptest::option::of(0u8..2),
                            ia in 0u8..2, ib in 0u8..2, pa in "[ab]{0,2}", pb in "[ab]{0,2}",
                            va in 0i32..2, vb in 0i32..2) {
            // Small domains, so that rows differing in a single field come up often.
            let (ta, tb) = (ta.map(|t| [t; 16]), tb.map(|t| [t; 16]));
            let same = (ta, ia, &pa, va) == (tb, ib, &pb, vb);
            let (aa, ab) = (aad(ta.as_ref(), &[ia; 16], &pa, va), aad(tb.as_ref(), &[ib; 16], &pb, vb));
            prop_assert_eq!(aa == ab, same);
        }

        /// A preview is a prefix, `...` and a suffix of at most a quarter of the secret.
        #[test]
        fn preview_shows_at_most_a_quarter(s in "\\PC{0,120}") {
            let p = preview(&s);
            let n = s.chars().count();
            // The secret may contain dots itself: some split of the preview must fit.
            let mut splits = p.char_indices().filter(|&(i, _)| p[i..].starts_with("..."));
            let fits = splits.any(|(i, _)| {
                let (head, tail) = (&p[..i], &p[i + 3..]);
                let (h, t) = (head.chars().count(), tail.chars().count());
                s.starts_with(head) && s.ends_with(tail) && h <= 8 && t <= 4 && h + t <= n / 4
            });
            prop_assert!(fits, "{:?} -> {:?}", s, p);
        }

        /// No 5 consecutive characters of the middle (past the first 8, before the last 4)
        /// appear. The prefix alphabet is disjoint from the body's, so matches by chance
        /// are impossible and the test is exact.
        #[test]
        fn preview_hides_the_middle(prefix in "([a-z]{1,7}[-_])?", body in "[A-Z0-9]{0,200}") {
            let s = format!("{prefix}{body}");
            let p = preview(&s);
            for i in 8..s.len().saturating_sub(8) {
                prop_assert!(!p.contains(&s[i..i + 5]), "{} in {}", &s[i..i + 5], p);
            }
        }
    }
}
