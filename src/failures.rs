//! Failed-validation counters, pure Rust: a fixed table of per-key slots (found keys
//! that were refused) with least-recently-failed eviction, and global per-code counts
//! for strings that are not keys at all. Counting, never one row per attempt: an
//! attacker spraying bad keys cannot fill a disk, only bump counters.

/// The codes counted, by index. Anything else falls into `other`.
pub const CODES: [&str; 16] = [
    "missing",
    "malformed",
    "bad_checksum",
    "not_found",
    "invalid_scope",
    "tenant_disabled",
    "revoked",
    "rotated",
    "expired",
    "scope_denied",
    "provider_denied",
    "model_denied",
    "daily_cap_exceeded",
    "monthly_cap_exceeded",
    "credits_exhausted",
    "rate_limited",
];
pub const OTHER: usize = CODES.len();
pub const N_CODES: usize = CODES.len() + 1;

pub fn code_index(code: &str) -> usize {
    CODES.iter().position(|c| *c == code).unwrap_or(OTHER)
}

pub fn code_name(i: usize) -> &'static str {
    CODES.get(i).copied().unwrap_or("other")
}

/// One key's counts. `used == 0` marks a free slot. Plain data (`repr(C)`, no
/// pointers) so it can live in shared memory.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub used: u32,
    /// The database the key lives in (tenants and keys are per database).
    pub db: u32,
    pub key: [u8; 16],
    pub tenant: [u8; 16],
    pub total: u64,
    pub first_at: i64,
    pub last_at: i64,
    pub by_code: [u32; N_CODES],
}

/// Slots a key may occupy: a window starting at its hash, so a lookup touches at most
/// this many slots whatever the table's size.
pub const WINDOW: usize = 32;

fn home(key: &[u8; 16], n: usize) -> usize {
    // Keys are random uuids: their first bytes are already uniform.
    (u64::from_le_bytes(key[..8].try_into().expect("8 bytes")) % n as u64) as usize
}

/// Count one failure of `key` (of `tenant`) with `code` at `now`. A new key takes a free
/// slot of its window, else the window's slot whose last failure is oldest. Returns
/// whether another key's counts were evicted.
pub fn record(
    slots: &mut [Slot],
    db: u32,
    key: [u8; 16],
    tenant: [u8; 16],
    code: usize,
    now: i64,
) -> bool {
    let n = slots.len();
    if n == 0 {
        return false;
    }
    let start = home(&key, n);
    let window = WINDOW.min(n);
    let (mut found, mut free, mut oldest) = (None, None, start);
    for j in 0..window {
        let i = (start + j) % n;
        let s = &slots[i];
        if s.used != 0 && s.key == key && s.db == db {
            found = Some(i);
            break;
        }
        if s.used == 0 {
            free.get_or_insert(i);
        } else if s.last_at < slots[oldest].last_at || slots[oldest].used == 0 {
            oldest = i;
        }
    }
    let mut evicted = false;
    let i = match found {
        Some(i) => i,
        None => {
            let i = free.unwrap_or_else(|| {
                evicted = true;
                oldest
            });
            slots[i] = Slot {
                used: 1,
                db,
                key,
                tenant,
                first_at: now,
                ..Slot::default()
            };
            i
        }
    };
    let s = &mut slots[i];
    s.total = s.total.saturating_add(1);
    s.by_code[code.min(OTHER)] = s.by_code[code.min(OTHER)].saturating_add(1);
    s.last_at = now;
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(n: u8) -> [u8; 16] {
        [n; 16]
    }

    #[test]
    fn counts_per_key_and_code() {
        let mut t = vec![Slot::default(); 4];
        record(&mut t, 1, k(1), k(9), code_index("revoked"), 10);
        record(&mut t, 1, k(1), k(9), code_index("revoked"), 11);
        record(&mut t, 1, k(1), k(9), code_index("scope_denied"), 12);
        record(&mut t, 1, k(2), k(9), code_index("expired"), 13);
        let s1 = t.iter().find(|s| s.key == k(1)).unwrap();
        assert_eq!(s1.total, 3);
        assert_eq!(s1.by_code[code_index("revoked")], 2);
        assert_eq!(s1.by_code[code_index("scope_denied")], 1);
        assert_eq!((s1.first_at, s1.last_at), (10, 12));
        assert_eq!(t.iter().filter(|s| s.used != 0).count(), 2);
        assert_eq!(code_index("nonsense"), OTHER);
        assert_eq!(code_name(OTHER), "other");
    }

    #[test]
    fn evicts_the_least_recently_failed() {
        let mut t = vec![Slot::default(); 2];
        assert!(!record(&mut t, 1, k(1), k(9), 0, 10));
        assert!(!record(&mut t, 1, k(2), k(9), 0, 20));
        assert!(!record(&mut t, 1, k(1), k(9), 0, 30)); // key 1 is now the most recent
        assert!(record(&mut t, 1, k(3), k(9), 0, 40)); // evicts key 2
        let keys: Vec<_> = t.iter().map(|s| s.key[0]).collect();
        assert!(keys.contains(&1) && keys.contains(&3) && !keys.contains(&2));
        assert_eq!(t.iter().find(|s| s.key == k(1)).unwrap().total, 2);
        assert_eq!(t.iter().find(|s| s.key == k(3)).unwrap().total, 1);
    }

    proptest! {
        /// With room for every key, the counts are exact.
        #[test]
        fn exact_with_room(events in proptest::collection::vec((0u8..8, 0usize..N_CODES), 0..200)) {
            let mut t = vec![Slot::default(); 8];
            for (i, (key, code)) in events.iter().enumerate() {
                record(&mut t, 1, k(*key), k(0), *code, i as i64);
            }
            for key in 0u8..8 {
                let want = events.iter().filter(|(x, _)| *x == key).count() as u64;
                let got = t.iter().find(|s| s.used != 0 && s.key == k(key)).map_or(0, |s| s.total);
                prop_assert_eq!(got, want);
            }
        }
    }
}
