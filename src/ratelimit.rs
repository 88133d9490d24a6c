//! Rate limiting, pure Rust: the GCRA decision and the fixed-capacity slot table that
//! holds limiter state in shared memory (`src/ratelimit_pg.rs` only adds the locks and
//! the memory). The table-based fallback (`sql/007_metering.sql`) calls the same
//! [`gcra`] through `api_key_mgmt_internal.gcra`.
//!
//! GCRA (generic cell rate algorithm): a limit of `max_requests` per `period` with a
//! burst of `burst` has emission interval `T = period / max_requests` and keeps one
//! number per limit, the theoretical arrival time `tat`. A request of `cost` tokens at
//! `now` is admitted when `max(tat, now) + cost·T − burst·T <= now`, and then moves
//! `tat` to `max(tat, now) + cost·T`. A state with `tat <= now` carries no information
//! (it equals a fresh limiter), which makes idle entries free to evict.

use crate::validation::Micros;

/// One limit's parameters, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Emission interval `T` (period / max_requests, rounded up: never more permissive).
    pub interval: Micros,
    /// Requests that may arrive at once.
    pub burst: i64,
}

impl Limit {
    /// `max_requests` per `period_us` with a burst (default: `max_requests`). `None`
    /// for non-positive values.
    pub fn new(max_requests: i64, period_us: i64, burst: Option<i64>) -> Option<Limit> {
        if max_requests <= 0 || period_us <= 0 {
            return None;
        }
        let burst = burst.unwrap_or(max_requests);
        if burst <= 0 {
            return None;
        }
        let interval = (period_us + max_requests - 1) / max_requests;
        Some(Limit {
            interval: interval.max(1),
            burst,
        })
    }
}

/// The outcome for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The state to store when admitted (unchanged when refused).
    pub tat: Micros,
    /// Whole requests still admissible right after this one.
    pub remaining: i64,
    /// Microseconds until the request would be admitted; `None` when admitted, or
    /// never (cost above the burst).
    pub retry_after: Option<Micros>,
}

/// Decide a request of `cost` tokens (`cost` 0: would one token be admitted, without
/// consuming) against state `tat` (`None`: fresh).
pub fn gcra(tat: Option<Micros>, now: Micros, limit: Limit, cost: i64) -> Decision {
    let base = tat.map_or(now, |t| t.max(now));
    let want = cost.max(1);
    let t = limit.interval as i128;
    let capacity = t * limit.burst as i128;
    let new_tat = base as i128 + t * want as i128;
    let allow_at = new_tat - capacity;
    if want > limit.burst || allow_at > now as i128 {
        let retry = (want <= limit.burst).then(|| (allow_at - now as i128) as Micros);
        let remaining = ((capacity - (base as i128 - now as i128)) / t).max(0) as i64;
        return Decision {
            allowed: false,
            tat: tat.unwrap_or(now),
            remaining,
            retry_after: retry,
        };
    }
    let stored = if cost == 0 { base as i128 } else { new_tat };
    let remaining = ((capacity - (stored - now as i128)) / t).max(0) as i64;
    Decision {
        allowed: true,
        tat: if cost == 0 {
            tat.unwrap_or(now)
        } else {
            new_tat as Micros
        },
        remaining,
        retry_after: None,
    }
}

/// One slot of the shared table: a limit's id (16 bytes of its uuid) and its `tat`.
/// A zero id marks a slot never used; slots are never emptied again (an idle slot is
/// reused in place), so probe sequences stay intact without tombstones.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub id: [u8; 16],
    pub tat: Micros,
    pub _pad: i64,
}

/// Slots examined from a key's home position.
pub const PROBE: usize = 32;

/// Home position of `id` in a partition of `n` slots (FNV-1a over the id).
pub fn home(id: &[u8; 16], n: usize) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % n as u64) as usize
}

/// Partition (lock) of `id` among `parts`.
pub fn partition(id: &[u8; 16], parts: usize) -> usize {
    let mut h: u64 = 0x9e3779b97f4a7c15;
    for b in id.iter().rev() {
        h = (h ^ *b as u64).wrapping_mul(0xff51afd7ed558ccd);
    }
    (h >> 17) as usize % parts
}

/// Where `id` lives in `slots`, or the slot to take for it: the first never-used or
/// idle (`tat <= now`) slot of its probe window, else the one with the smallest `tat`
/// (an eviction that loses that limit's state: it may admit one extra burst).
/// Returns `(index, found, evicted_busy)`.
pub fn find_slot(slots: &[Slot], id: &[u8; 16], now: Micros) -> (usize, bool, bool) {
    let n = slots.len();
    let start = home(id, n);
    let mut free: Option<usize> = None;
    let mut oldest = start;
    for i in 0..PROBE.min(n) {
        let j = (start + i) % n;
        let s = &slots[j];
        if s.id == *id {
            return (j, true, false);
        }
        if s.id == [0; 16] {
            return (free.unwrap_or(j), false, false);
        }
        if s.tat <= now && free.is_none() {
            free = Some(j);
        }
        if s.tat < slots[oldest].tat {
            oldest = j;
        }
    }
    match free {
        Some(j) => (j, false, false),
        None => (oldest, false, true),
    }
}

/// Decide several limits at once against the whole table `slots`, split into `parts`
/// partitions of equal size (each limit lives in the partition [`partition`] gives):
/// every limit must admit, or nothing is consumed.
pub fn consume_all(
    slots: &mut [Slot],
    parts: usize,
    reqs: &[([u8; 16], Limit)],
    now: Micros,
    cost: i64,
) -> (bool, Vec<Decision>) {
    let per = slots.len() / parts;
    let range = |id: &[u8; 16]| {
        let p = partition(id, parts);
        p * per..(p + 1) * per
    };
    let decisions: Vec<Decision> = reqs
        .iter()
        .map(|(id, limit)| {
            let part = &slots[range(id)];
            let (j, hit, _) = find_slot(part, id, now);
            gcra(hit.then(|| part[j].tat), now, *limit, cost)
        })
        .collect();
    let all = decisions.iter().all(|d| d.allowed);
    if all && cost > 0 {
        for ((id, _), d) in reqs.iter().zip(&decisions) {
            let part = &mut slots[range(id)];
            let (j, _, _) = find_slot(part, id, now);
            part[j] = Slot {
                id: *id,
                tat: d.tat,
                _pad: 0,
            };
        }
    }
    (all, decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Micros = 1_000_000;

    #[test]
    fn burst_refusal_recovery() {
        // 10 per second, burst 5.
        let l = Limit::new(10, SEC, Some(5)).unwrap();
        assert_eq!(l.interval, 100_000);
        let mut tat = None;
        for i in 0..5 {
            let d = gcra(tat, 0, l, 1);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
            tat = Some(d.tat);
        }
        let d = gcra(tat, 0, l, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(100_000));
        assert_eq!(d.tat, tat.unwrap());
        // Check-only says the same without consuming.
        assert!(!gcra(tat, 0, l, 0).allowed);
        // One interval later, one more.
        assert!(gcra(tat, 100_000, l, 1).allowed);
        assert!(!gcra(tat, 99_999, l, 1).allowed);
        // Long idle: a whole burst again.
        let d = gcra(tat, 10 * SEC, l, 5);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn cost_above_burst_never_admitted() {
        let l = Limit::new(10, SEC, Some(2)).unwrap();
        let d = gcra(None, 0, l, 3);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, None);
    }

    #[test]
    fn check_only_does_not_move_state() {
        let l = Limit::new(1, SEC, None).unwrap();
        let d = gcra(None, 7, l, 0);
        assert!(d.allowed);
        assert_eq!(d.tat, 7);
        assert_eq!(d.remaining, 1);
    }

    #[test]
    fn bad_limits() {
        assert_eq!(Limit::new(0, SEC, None), None);
        assert_eq!(Limit::new(1, 0, None), None);
        assert_eq!(Limit::new(1, SEC, Some(0)), None);
        // Rounded up: 3 per second is one per 333334 us.
        assert_eq!(Limit::new(3, SEC, None).unwrap().interval, 333_334);
    }

    fn id(n: u32) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_le_bytes());
        b[15] = 1;
        b
    }

    #[test]
    fn slots_reuse_idle_and_evict_oldest() {
        let mut slots = vec![Slot::default(); 8];
        let l = Limit::new(1, SEC, Some(1)).unwrap();
        for n in 0..8 {
            let (ok, _) = consume_all(&mut slots, 1, &[(id(n), l)], 0, 1);
            assert!(ok);
        }
        // All busy (tat = 1 s): a ninth id evicts the smallest tat.
        let (j, found, evicted) = find_slot(&slots, &id(99), 0);
        assert!(!found && evicted);
        assert!(j < 8);
        // Later every entry is idle: reused without eviction, and existing ids found.
        let (_, found, evicted) = find_slot(&slots, &id(99), 2 * SEC);
        assert!(!found && !evicted);
        assert!(find_slot(&slots, &id(3), 2 * SEC).1);
    }

    #[test]
    fn all_or_nothing() {
        let mut a = vec![Slot::default(); 128];
        let per_sec = Limit::new(100, SEC, None).unwrap();
        let tight = Limit::new(1, 3600 * SEC, Some(1)).unwrap();
        let reqs = [(id(1), per_sec), (id(2), tight)];
        let (ok, _) = consume_all(&mut a, 2, &reqs, 0, 1);
        assert!(ok);
        let (ok, d) = consume_all(&mut a, 2, &reqs, 0, 1);
        assert!(!ok);
        assert!(d[0].allowed && !d[1].allowed);
        // The refused call consumed nothing from the per-second limit.
        let (ok, d) = consume_all(&mut a, 2, &reqs[..1], 0, 0);
        assert!(ok);
        assert_eq!(d[0].remaining, 99);
    }

    proptest! {
        /// Over any arrival pattern, admitted requests in any window of length w never
        /// exceed burst + w / T (the GCRA guarantee), and a request is refused only
        /// when that bound would be broken by admitting it at its arrival time.
        #[test]
        fn never_more_than_burst_plus_rate(
            max in 1i64..50, burst in 1i64..20,
            gaps in proptest::collection::vec(0i64..200_000, 1..200),
        ) {
            let l = Limit::new(max, SEC, Some(burst)).unwrap();
            let mut tat = None;
            let mut now = 0;
            let mut admitted = Vec::new();
            for g in gaps {
                now += g;
                let d = gcra(tat, now, l, 1);
                if d.allowed {
                    tat = Some(d.tat);
                    admitted.push(now);
                } else {
                    prop_assert!(d.retry_after.unwrap() > 0);
                }
            }
            for (i, &start) in admitted.iter().enumerate() {
                for (k, &end) in admitted[i..].iter().enumerate() {
                    let window = end - start;
                    prop_assert!((k as i64 + 1) <= burst + window / l.interval,
                        "{} admitted in {} us", k + 1, window);
                }
            }
        }
    }
}
