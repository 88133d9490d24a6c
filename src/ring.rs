//! A bounded ring of fixed-size values in one block of memory, for many producers and
//! one consumer, without a lock (the secret-read audit queue, `src/audit_pg.rs`, puts
//! one in shared memory; the tests here put one in a heap buffer).
//!
//! Every slot carries a sequence number saying whose turn it is, as in Dmitry Vyukov's
//! bounded queue: for the value of ring position `pos` (slot `pos % capacity`), the slot
//! is free while its sequence is `2 * pos` and holds that value once it is `2 * pos + 1`.
//! A producer claims the next position with one compare-and-swap on `head`, copies its
//! value in and publishes it; the consumer copies published values out in order and
//! later *releases* them (sequence `2 * (pos + capacity)`: free for the next lap) and
//! moves `tail`. Producers never wait for one another or for the consumer: a full ring
//! refuses the value. Positions only grow (a `u64` does not wrap in practice).
//!
//! A claimed slot is published a few instructions later by a plain copy that cannot
//! fail; the consumer stops at the first unpublished one, so values come out in
//! position order.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

#[repr(C)]
struct Header {
    capacity: u64,
    /// The next position a producer claims.
    head: AtomicU64,
    /// The first position not yet released by the consumer.
    tail: AtomicU64,
}

#[repr(C)]
struct Slot<T> {
    seq: AtomicU64,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// A ring laid out in memory someone else owns (see [`Ring::size`], [`Ring::init`]).
pub struct Ring<T> {
    header: *const Header,
    slots: *const Slot<T>,
}

/// What a successful [`Ring::push`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The value's ring position (it is released when the consumer's `tail` passes it).
    pub pos: u64,
    /// Nothing was queued before this value (nothing unreleased).
    pub was_empty: bool,
    /// This value made the ring half full.
    pub half_full: bool,
}

impl<T: Copy> Ring<T> {
    /// Bytes needed for `capacity` values.
    pub const fn size(capacity: u64) -> usize {
        std::mem::size_of::<Header>() + capacity as usize * std::mem::size_of::<Slot<T>>()
    }

    /// Lay out an empty ring of `capacity` (at least 1) values in `mem`.
    ///
    /// # Safety
    /// `mem` is writable for [`Ring::size`] bytes, aligned to 8, and no one uses it yet.
    pub unsafe fn init(mem: *mut u8, capacity: u64) {
        assert!(capacity > 0, "a ring holds at least one value");
        unsafe {
            let h = mem as *mut Header;
            h.write(Header {
                capacity,
                head: AtomicU64::new(0),
                tail: AtomicU64::new(0),
            });
            let slots = mem.add(std::mem::size_of::<Header>()) as *mut Slot<T>;
            for i in 0..capacity {
                (&raw mut (*slots.add(i as usize)).seq).write(AtomicU64::new(2 * i));
            }
        }
    }

    /// The ring [`Ring::init`] laid out in `mem`.
    ///
    /// # Safety
    /// `mem` was initialised by [`Ring::init`] for this `T` and outlives the result.
    pub unsafe fn attach(mem: *mut u8) -> Ring<T> {
        Ring {
            header: mem as *const Header,
            slots: unsafe { mem.add(std::mem::size_of::<Header>()) } as *const Slot<T>,
        }
    }

    fn header(&self) -> &Header {
        unsafe { &*self.header }
    }

    pub fn capacity(&self) -> u64 {
        self.header().capacity
    }

    fn slot(&self, pos: u64) -> &Slot<T> {
        unsafe { &*self.slots.add((pos % self.capacity()) as usize) }
    }

    /// Values pushed and not yet released (a moment's view).
    pub fn len(&self) -> u64 {
        let h = self.header();
        let tail = h.tail.load(Ordering::SeqCst);
        h.head.load(Ordering::SeqCst).saturating_sub(tail)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append a copy of `value`; `None` when the ring is full.
    pub fn push(&self, value: &T) -> Option<Pushed> {
        let h = self.header();
        let mut pos = h.head.load(Ordering::Relaxed);
        let slot = loop {
            let slot = self.slot(pos);
            let seq = slot.seq.load(Ordering::Acquire);
            if seq == 2 * pos {
                match h.head.compare_exchange_weak(
                    pos,
                    pos + 1,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break slot,
                    Err(now) => pos = now,
                }
            } else if seq < 2 * pos {
                // It still holds the value of `pos - capacity`: the ring is full.
                return None;
            } else {
                // Another producer claimed `pos` first.
                pos = h.head.load(Ordering::Relaxed);
            }
        };
        unsafe { (*slot.value.get()).write(*value) };
        slot.seq.store(2 * pos + 1, Ordering::Release);
        let tail = h.tail.load(Ordering::SeqCst);
        Some(Pushed {
            pos,
            was_empty: pos == tail,
            half_full: (pos + 1).saturating_sub(tail) == self.capacity().div_ceil(2),
        })
    }

    /// Consumer only: copies of up to `max` published values from the first unreleased
    /// position on, and that position. They stay in the ring until [`Ring::release`].
    pub fn peek(&self, max: usize) -> (u64, Vec<T>) {
        let tail = self.header().tail.load(Ordering::SeqCst);
        let mut out = Vec::new();
        for pos in tail..tail + max.min(self.capacity() as usize) as u64 {
            let slot = self.slot(pos);
            if slot.seq.load(Ordering::Acquire) != 2 * pos + 1 {
                break;
            }
            out.push(unsafe { (*slot.value.get()).assume_init_read() });
        }
        (tail, out)
    }

    /// Consumer only: the `n` values from position `from` (as [`Ring::peek`] returned
    /// them) are done; their slots take new values.
    pub fn release(&self, from: u64, n: usize) {
        let h = self.header();
        assert_eq!(
            h.tail.load(Ordering::SeqCst),
            from,
            "values are released in order"
        );
        for pos in from..from + n as u64 {
            let slot = self.slot(pos);
            debug_assert_eq!(slot.seq.load(Ordering::Relaxed), 2 * pos + 1);
            slot.seq
                .store(2 * (pos + self.capacity()), Ordering::Release);
        }
        h.tail.store(from + n as u64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A ring in a heap buffer (8-aligned).
    struct Owned<T> {
        _mem: Vec<u64>,
        ring: Ring<T>,
    }
    unsafe impl<T> Send for Owned<T> {}
    unsafe impl<T> Sync for Owned<T> {}

    fn ring<T: Copy>(capacity: u64) -> Owned<T> {
        let mut mem = vec![0u64; Ring::<T>::size(capacity).div_ceil(8)];
        let p = mem.as_mut_ptr() as *mut u8;
        unsafe { Ring::<T>::init(p, capacity) };
        Owned {
            ring: unsafe { Ring::attach(p) },
            _mem: mem,
        }
    }

    #[test]
    fn fifo_full_and_release() {
        let r = ring::<[u8; 3]>(3);
        let r = &r.ring;
        assert!(r.is_empty());
        assert_eq!(
            r.push(&[1, 1, 1]),
            Some(Pushed {
                pos: 0,
                was_empty: true,
                half_full: false
            })
        );
        assert_eq!(
            r.push(&[2, 2, 2]),
            Some(Pushed {
                pos: 1,
                was_empty: false,
                half_full: true
            })
        );
        assert!(r.push(&[3, 3, 3]).is_some());
        assert_eq!(r.push(&[4, 4, 4]), None, "full");
        assert_eq!(r.len(), 3);
        let (from, got) = r.peek(2);
        assert_eq!((from, got), (0, vec![[1, 1, 1], [2, 2, 2]]));
        // Peeked values stay queued (and keep their slots) until released.
        assert_eq!(r.push(&[4, 4, 4]), None);
        assert_eq!(r.peek(10).1.len(), 3);
        r.release(0, 2);
        assert_eq!(r.len(), 1);
        assert!(r.push(&[4, 4, 4]).is_some());
        assert!(r.push(&[5, 5, 5]).is_some());
        assert_eq!(r.push(&[6, 6, 6]), None);
        let (from, got) = r.peek(10);
        assert_eq!((from, got), (2, vec![[3, 3, 3], [4, 4, 4], [5, 5, 5]]));
        r.release(2, 3);
        assert!(r.is_empty());
        assert_eq!(r.peek(10), (5, vec![]));
        let p = r.push(&[7, 7, 7]).unwrap();
        assert!(p.was_empty);
        assert_eq!(p.pos, 5, "positions keep growing across laps");
    }

    #[test]
    fn capacity_one() {
        let r = ring::<u32>(1);
        let r = &r.ring;
        assert_eq!(
            r.push(&7),
            Some(Pushed {
                pos: 0,
                was_empty: true,
                half_full: true
            })
        );
        assert_eq!(r.push(&8), None);
        assert_eq!(r.peek(5), (0, vec![7]));
        r.release(0, 1);
        assert!(r.push(&8).is_some());
        assert_eq!(r.peek(5), (1, vec![8]));
    }

    #[test]
    #[should_panic(expected = "in order")]
    fn release_out_of_order_panics() {
        let r = ring::<u32>(4);
        r.ring.push(&1);
        r.ring.release(1, 1);
    }

    /// Producers on several threads, one consumer: every value comes out exactly once,
    /// each producer's in its order, and a full ring only ever refuses.
    #[test]
    fn concurrent_producers_lose_nothing() {
        const PRODUCERS: u64 = 4;
        const EACH: u64 = 20_000;
        let owned = Arc::new(ring::<(u64, u64, [u8; 40])>(64));
        let handles: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let owned = owned.clone();
                std::thread::spawn(move || {
                    let mut refused = 0u64;
                    for i in 0..EACH {
                        while owned.ring.push(&(p, i, [p as u8; 40])).is_none() {
                            refused += 1;
                            std::thread::yield_now();
                        }
                    }
                    refused
                })
            })
            .collect();
        let mut next = [0u64; PRODUCERS as usize];
        let mut got = 0;
        while got < PRODUCERS * EACH {
            let (from, values) = owned.ring.peek(16);
            for (p, i, pad) in &values {
                assert_eq!(*i, next[*p as usize], "producer {p}'s values in order");
                assert_eq!(*pad, [*p as u8; 40], "a value is never torn");
                next[*p as usize] += 1;
            }
            got += values.len() as u64;
            owned.ring.release(from, values.len());
            if values.is_empty() {
                std::thread::yield_now();
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(next, [EACH; PRODUCERS as usize]);
        assert!(owned.ring.is_empty());
        assert_eq!(owned.ring.peek(16).1.len(), 0);
    }
}
