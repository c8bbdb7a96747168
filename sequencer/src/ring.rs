//! A single-producer/single-consumer ring of variable-length byte records.
//!
//! Owns: a preallocated byte buffer and two cache-padded cursors (`head`, read by the consumer;
//! `tail`, written by the producer). Does not own: threads or waiting — callers poll and idle.
//!
//! Invariants:
//! - Cursors are byte counts that only grow; `tail - head <= capacity` always.
//! - Every record starts on an 8-byte boundary with an 8-byte header: `len: u32`, `reserved: u32`.
//!   A header with `len == PAD_MARKER` means "the rest of the buffer up to the wrap point is
//!   padding"; a record never straddles the end of the buffer.
//! - The producer writes the payload, then publishes `tail` with `Release`; the consumer reads
//!   `tail` with `Acquire` before touching the bytes, and publishes `head` with `Release` after it
//!   is done, so the producer never overwrites bytes being read.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

/// Size of the per-record header in bytes.
const RECORD_HEADER_SIZE: usize = 8;
/// Record alignment in bytes.
const RECORD_ALIGN: usize = 8;
/// `len` value marking padding to the end of the buffer.
const PAD_MARKER: u32 = u32::MAX;
/// Smallest ring accepted, in bytes.
pub const RING_CAPACITY_MIN: usize = 1024;

const _: () = assert!(RECORD_HEADER_SIZE.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(RING_CAPACITY_MIN.is_power_of_two());

fn align_up(n: usize) -> usize {
    (n + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

struct Shared {
    buf: Box<[UnsafeCell<u8>]>,
    mask: usize,
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
}

// SAFETY: the buffer is only written by the single `Producer` in the region [tail, head+cap)
// that the consumer does not read, and only read by the single `Consumer` in [head, tail), which
// the producer does not write; the Acquire/Release pairs on the cursors order the accesses.
unsafe impl Sync for Shared {}
// SAFETY: see `Sync`; the raw bytes have no thread affinity.
unsafe impl Send for Shared {}

impl Shared {
    fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Raw pointer to byte `index` (already masked) of the buffer.
    fn ptr(&self, index: usize) -> *mut u8 {
        self.buf[index].get()
    }
}

/// Why a record could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryClaimError {
    /// The consumer has not freed enough space yet: retry later.
    Full,
    /// The record can never fit in this ring (payload larger than `max_record_len`).
    TooLarge,
}

/// Creates a ring of `capacity` bytes (a power of two, at least [`RING_CAPACITY_MIN`]).
///
/// # Panics
/// If `capacity` is not a power of two or is below the minimum: ring sizes are checked when the
/// configuration is validated, so a bad size here is a bug.
pub fn ring(capacity: usize) -> (Producer, Consumer) {
    assert!(
        capacity.is_power_of_two() && capacity >= RING_CAPACITY_MIN,
        "ring capacity {capacity} must be a power of two >= {RING_CAPACITY_MIN}"
    );
    let buf: Box<[UnsafeCell<u8>]> = (0..capacity).map(|_| UnsafeCell::new(0)).collect();
    let shared = Arc::new(Shared {
        buf,
        mask: capacity - 1,
        head: CachePadded::new(AtomicU64::new(0)),
        tail: CachePadded::new(AtomicU64::new(0)),
    });
    (
        Producer {
            shared: shared.clone(),
            tail: 0,
            head_cache: 0,
        },
        Consumer { shared, head: 0 },
    )
}

/// The writing end. Not `Clone`: there is exactly one producer.
pub struct Producer {
    shared: Arc<Shared>,
    /// Local copy of the published tail (only this side writes it).
    tail: u64,
    /// Last head value read; refreshed only when the cached one says the ring is full.
    head_cache: u64,
}

impl Producer {
    /// Largest payload that can ever be written: half the ring, so a record plus a wrap pad fit.
    pub fn max_record_len(&self) -> usize {
        self.shared.capacity() / 2 - RECORD_HEADER_SIZE
    }

    /// Writes one record of `len` bytes filled by `fill`, or refuses without blocking.
    pub fn try_write(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), TryClaimError> {
        if len > self.max_record_len() {
            return Err(TryClaimError::TooLarge);
        }
        let cap = self.shared.capacity();
        let record = RECORD_HEADER_SIZE + align_up(len);
        let index = (self.tail as usize) & self.shared.mask;
        let to_end = cap - index;
        let needed = if record > to_end {
            to_end + record
        } else {
            record
        };
        if !self.has_space(needed) {
            return Err(TryClaimError::Full);
        }
        let mut at = self.tail;
        if record > to_end {
            // Pad to the end of the buffer so the record starts at index 0.
            self.write_header(index, PAD_MARKER);
            at += to_end as u64;
        }
        let start = (at as usize) & self.shared.mask;
        self.write_header(start, len as u32);
        // SAFETY: [start+8, start+8+len) lies inside the buffer (no straddling, checked above)
        // and inside the free region [tail, head+cap) that the consumer does not read until we
        // publish `tail` below. Only this producer writes there.
        let payload = unsafe {
            std::slice::from_raw_parts_mut(self.shared.ptr(start + RECORD_HEADER_SIZE), len)
        };
        fill(payload);
        self.tail = at + record as u64;
        self.shared.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Copies `bytes` in as one record.
    pub fn try_push(&mut self, bytes: &[u8]) -> Result<(), TryClaimError> {
        self.try_write(bytes.len(), |dst| dst.copy_from_slice(bytes))
    }

    fn has_space(&mut self, needed: usize) -> bool {
        let cap = self.shared.capacity() as u64;
        if self.tail + needed as u64 - self.head_cache <= cap {
            return true;
        }
        self.head_cache = self.shared.head.load(Ordering::Acquire);
        self.tail + needed as u64 - self.head_cache <= cap
    }

    fn write_header(&self, index: usize, len: u32) {
        let mut header = [0u8; RECORD_HEADER_SIZE];
        header[..4].copy_from_slice(&len.to_le_bytes());
        // SAFETY: `index` is 8-aligned and at least 8 bytes before the end (capacity and
        // records are multiples of 8), inside the producer-owned free region.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(self.shared.ptr(index), RECORD_HEADER_SIZE) };
        dst.copy_from_slice(&header);
    }
}

/// The reading end. Not `Clone`: there is exactly one consumer.
pub struct Consumer {
    shared: Arc<Shared>,
    head: u64,
}

impl Consumer {
    /// Calls `handler` on up to `limit` records in order; returns how many were consumed.
    /// The slice is only valid during the call: the space is released after `poll` returns.
    pub fn poll(&mut self, limit: usize, mut handler: impl FnMut(&[u8])) -> usize {
        self.poll_while(limit, |record| {
            handler(record);
            true
        })
    }

    /// Like [`Consumer::poll`], but `handler` may refuse a record by returning `false`: that
    /// record and everything after it stay in the ring for a later call. Returns how many were
    /// consumed.
    pub fn poll_while(&mut self, limit: usize, mut handler: impl FnMut(&[u8]) -> bool) -> usize {
        let tail = self.shared.tail.load(Ordering::Acquire);
        let mut count = 0;
        let mut head = self.head;
        while head < tail && count < limit {
            let index = (head as usize) & self.shared.mask;
            // SAFETY: [index, index+8) is inside [head, tail), published by the producer
            // (Acquire above) and not rewritten until we publish a head past it.
            let header =
                unsafe { std::slice::from_raw_parts(self.shared.ptr(index), RECORD_HEADER_SIZE) };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            if len == PAD_MARKER {
                head += (self.shared.capacity() - index) as u64;
                continue;
            }
            let len = len as usize;
            // SAFETY: the producer wrote `len` payload bytes after the header before
            // publishing `tail`; the record does not straddle the end of the buffer.
            let payload = unsafe {
                std::slice::from_raw_parts(self.shared.ptr(index + RECORD_HEADER_SIZE), len)
            };
            if !handler(payload) {
                break;
            }
            head += (RECORD_HEADER_SIZE + align_up(len)) as u64;
            count += 1;
        }
        if head != self.head {
            self.head = head;
            self.shared.head.store(head, Ordering::Release);
        }
        count
    }

    /// Whether the producer has published records not yet consumed.
    pub fn is_empty(&self) -> bool {
        self.shared.tail.load(Ordering::Acquire) == self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_out_in_order_with_their_bytes_across_many_wraps() {
        let (mut p, mut c) = ring(1024);
        let mut next_out = 0u32;
        let mut next_in = 0u32;
        while next_out < 5000 {
            // Vary sizes so records land at every offset and wrap with padding.
            while next_in < 5000 {
                let len = 4 + (next_in as usize * 37) % 200;
                let ok = p.try_write(len, |b| {
                    b.fill(next_in as u8);
                    b[..4].copy_from_slice(&next_in.to_le_bytes());
                });
                if ok.is_err() {
                    break;
                }
                next_in += 1;
            }
            c.poll(7, |rec| {
                let n = u32::from_le_bytes(rec[..4].try_into().unwrap());
                assert_eq!(n, next_out);
                assert_eq!(rec.len(), 4 + (n as usize * 37) % 200);
                assert!(rec[4..].iter().all(|&b| b == n as u8));
                next_out += 1;
            });
        }
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_ring_refuses_and_a_too_large_record_is_named() {
        let (mut p, mut c) = ring(1024);
        assert_eq!(p.try_push(&[0; 600]), Err(TryClaimError::TooLarge));
        let mut pushed = 0;
        while p.try_push(&[1; 100]).is_ok() {
            pushed += 1;
        }
        assert_eq!(pushed, 1024 / 112);
        assert_eq!(p.try_push(&[1; 100]), Err(TryClaimError::Full));
        assert_eq!(c.poll(usize::MAX, |_| {}), pushed);
        assert!(p.try_push(&[1; 100]).is_ok());
    }

    #[test]
    fn records_cross_threads_intact() {
        let (mut p, mut c) = ring(4096);
        const N: u64 = 200_000;
        let t = std::thread::spawn(move || {
            let mut i = 0u64;
            while i < N {
                let len = 8 + (i % 50) as usize;
                match p.try_write(len, |b| b[..8].copy_from_slice(&i.to_le_bytes())) {
                    Ok(()) => i += 1,
                    Err(_) => std::thread::yield_now(),
                }
            }
        });
        let mut expect = 0u64;
        while expect < N {
            let n = c.poll(64, |rec| {
                assert_eq!(u64::from_le_bytes(rec[..8].try_into().unwrap()), expect);
                assert_eq!(rec.len(), 8 + (expect % 50) as usize);
                expect += 1;
            });
            if n == 0 {
                std::thread::yield_now();
            }
        }
        t.join().unwrap();
    }
}
