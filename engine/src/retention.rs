//! Bucketized index of the retention ring by transfer id, with age-based staleness: evicting
//! the oldest record touches no index memory at all.
//!
//! # Layout
//! Buckets are one 64-byte cache line: eight `u32` fingerprints, then eight `u32` sequences.
//! Lanes 0-6 are entries: a fingerprint (32 bits of the id hash, never zero, so zero means
//! empty) and the ring sequence of the record mod 2^32. Lane 7's fingerprint stays zero (it
//! never matches) and its sequence lane is the bucket's overflow word. The home bucket comes
//! from the hash's high bits (multiply-shift range reduction, so any bucket count works), the
//! fingerprint from its low bits. Lanes are compared eight at a time (the loops are written so
//! that the compiler turns them into vector compares and a bit mask).
//!
//! # Liveness instead of removal
//! An entry is live iff its sequence lies in the ring's live range `head_seq..next_seq`,
//! computed as `(seq - head_seq) mod 2^32 < len` (the ring holds fewer than 2^31 records): once
//! the ring moves its head past a record (eviction), the entry is stale and free for reuse,
//! with no write. A stale entry whose truncated sequence aliases a live one (possible only
//! after 2^32 transfers without being overwritten) costs at most a wasted lane and a full-id
//! comparison that fails: every hit is confirmed by the caller against the id stored in the
//! ring record, so no id is ever reported retained unless its live record says so.
//!
//! # Full buckets
//! An insert takes the first empty or stale entry of its home bucket, else of the following
//! buckets (linear probing by bucket, cyclic); every bucket it passes records the new sequence
//! plus one in its overflow word. A look-up goes on to the next bucket only while the overflow
//! word may name a live sequence, so no live id is ever lost, and look-ups of absent ids stop
//! at the home bucket unless it overflowed recently (a stale word that aliases a live
//! sequence costs one extra bucket, nothing else). The table is sized at
//! [`IDS_PER_BUCKET_MEAN`] ids per bucket of seven entries (load 4/7), so a few percent of
//! buckets overflow. Everything depends only on the operations applied, so the layout is
//! deterministic.

use crate::lanes::{equal as lanes_equal, offset_below, LANES};

/// Words (`u32`) per bucket: fingerprint lanes, then sequence lanes.
const WORDS: usize = 2 * LANES;
/// Bytes per bucket: one cache line.
const BUCKET_BYTES: usize = WORDS * 4;
/// Lane mask of the entries (lanes 0-6; lane 7 holds the overflow word).
const ENTRY_LANES: u32 = 0x7f;
/// Lane of the overflow word among the sequences.
const OVERFLOW: usize = LANES - 1;
/// Mean live ids per bucket the table is sized for (of seven entries).
const IDS_PER_BUCKET_MEAN: usize = 4;

/// The live range of the ring: sequences `head_seq..head_seq + len`, `len < 2^31`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Live {
    pub(crate) head_seq: u64,
    pub(crate) len: u64,
}

/// Bit `i` set iff entry lane `i` is empty or outside the live range.
#[inline(always)]
fn lanes_free(fps: &[u32; LANES], seqs: &[u32; LANES], head: u32, len: u32) -> u32 {
    (lanes_equal(fps, 0) | !offset_below(seqs, head, len)) & ENTRY_LANES
}

#[derive(Clone)]
pub(crate) struct RetentionIndex {
    /// Bucket `b` is `words[first + b * WORDS..][..WORDS]`; `first` aligns buckets to lines.
    words: Vec<u32>,
    first: usize,
    buckets: u64,
    /// Whether anything was ever inserted (a clean table is left untouched by `clear`).
    dirty: bool,
}

impl RetentionIndex {
    /// An index for up to `ids_max` (below 2^31) live ids.
    pub(crate) fn with_capacity(ids_max: usize) -> RetentionIndex {
        assert!(ids_max < 1 << 31, "retention index sized beyond 2^31 ids");
        let buckets = ids_max.div_ceil(IDS_PER_BUCKET_MEAN).max(2);
        // One bucket of slack so that the first bucket can start on a cache-line boundary
        // (large allocations are page-aligned plus a small header).
        let words = vec![0u32; (buckets + 1) * WORDS];
        crate::prefetch::advise_huge_pages(&words);
        crate::prefetch::populate(&words);
        let misalign = (words.as_ptr() as usize) % BUCKET_BYTES;
        let first = ((BUCKET_BYTES - misalign) % BUCKET_BYTES) / 4;
        RetentionIndex {
            words,
            first,
            buckets: buckets as u64,
            dirty: false,
        }
    }

    #[inline]
    fn home(&self, hash: u64) -> u64 {
        ((u128::from(hash) * u128::from(self.buckets)) >> 64) as u64
    }

    #[inline]
    fn fingerprint(hash: u64) -> u32 {
        hash as u32 | 1
    }

    #[inline]
    fn start(&self, b: u64) -> usize {
        self.first + b as usize * WORDS
    }

    /// Fingerprint lanes and sequence lanes of bucket `b`.
    #[inline]
    fn bucket(&self, b: u64) -> (&[u32; LANES], &[u32; LANES]) {
        let start = self.start(b);
        let line: &[u32; WORDS] = self.words[start..start + WORDS]
            .try_into()
            .expect("bucket is one line");
        let (fps, seqs) = line.split_at(LANES);
        (
            fps.try_into().expect("eight lanes"),
            seqs.try_into().expect("eight lanes"),
        )
    }

    #[inline]
    fn next(&self, b: u64) -> u64 {
        if b + 1 == self.buckets {
            0
        } else {
            b + 1
        }
    }

    /// Whether a look-up must go on past a bucket with this overflow word.
    #[inline]
    fn overflowed(word: u32, live: Live) -> bool {
        u64::from(word.wrapping_sub(1).wrapping_sub(live.head_seq as u32)) < live.len
    }

    /// Asks the CPU to fetch the home bucket of `hash` ahead of a look-up.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        crate::prefetch::read(&self.words[self.start(self.home(hash))]);
    }

    /// Offset from `live.head_seq` of the live entry with `hash` whose record satisfies
    /// `is_key` (given that offset).
    #[inline(always)]
    pub(crate) fn find(
        &self,
        hash: u64,
        live: Live,
        mut is_key: impl FnMut(u64) -> bool,
    ) -> Option<u64> {
        let fp = Self::fingerprint(hash);
        let head = live.head_seq as u32;
        let mut b = self.home(hash);
        for _ in 0..self.buckets {
            let (fps, seqs) = self.bucket(b);
            let mut hits = lanes_equal(fps, fp);
            while hits != 0 {
                let lane = hits.trailing_zeros() as usize;
                hits &= hits - 1;
                let offset = u64::from(seqs[lane].wrapping_sub(head));
                if offset < live.len && is_key(offset) {
                    return Some(offset);
                }
            }
            if !Self::overflowed(seqs[OVERFLOW], live) {
                return None;
            }
            b = self.next(b);
        }
        None
    }

    /// Adds the record with `seq` under `hash` (the caller guarantees the id is absent and
    /// that `live`, which includes `seq`, holds fewer ids than the table is sized for).
    #[inline]
    pub(crate) fn insert(&mut self, hash: u64, seq: u64, live: Live) {
        let fp = Self::fingerprint(hash);
        let (head, len) = (live.head_seq as u32, live.len as u32);
        self.dirty = true;
        let mut b = self.home(hash);
        for _ in 0..self.buckets {
            let (fps, seqs) = self.bucket(b);
            let free = lanes_free(fps, seqs, head, len);
            let start = self.start(b);
            if free != 0 {
                let lane = free.trailing_zeros() as usize;
                self.words[start + lane] = fp;
                self.words[start + LANES + lane] = seq as u32;
                return;
            }
            // Only ever raised: a later sequence supersedes an earlier one.
            self.words[start + LANES + OVERFLOW] = (seq + 1) as u32;
            b = self.next(b);
        }
        panic!("retention index full: sized for fewer live ids");
    }

    /// Empties the entry for `seq` (inserted under `hash`), if there is one.
    pub(crate) fn remove(&mut self, hash: u64, seq: u64, live: Live) {
        let fp = Self::fingerprint(hash);
        let mut b = self.home(hash);
        for _ in 0..self.buckets {
            let (fps, seqs) = self.bucket(b);
            let hits = lanes_equal(fps, fp) & lanes_equal(seqs, seq as u32) & ENTRY_LANES;
            let overflowed = Self::overflowed(seqs[OVERFLOW], live);
            if hits != 0 {
                let start = self.start(b);
                self.words[start + hits.trailing_zeros() as usize] = 0;
                return;
            }
            if !overflowed {
                return;
            }
            b = self.next(b);
        }
    }

    /// Empties the index (a table never written to is left untouched, its pages unmapped).
    pub(crate) fn clear(&mut self) {
        if self.dirty {
            self.words.fill(0);
            self.dirty = false;
        }
    }

    /// Bytes allocated for buckets.
    pub(crate) fn size_bytes(&self) -> usize {
        self.words.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A FIFO model: ids by sequence, oldest first, at most `max` live.
    fn check_ring(max: usize, first_seq: u64, hash: impl Fn(u64) -> u64) {
        let mut index = RetentionIndex::with_capacity(max);
        let mut ring: VecDeque<u64> = VecDeque::new();
        let mut head_seq = first_seq;
        for seq in first_seq..first_seq + 5_000 {
            let id = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            ring.push_back(id);
            let live = Live {
                head_seq,
                len: ring.len() as u64,
            };
            index.insert(hash(id), seq, live);
            while ring.len() > max {
                ring.pop_front();
                head_seq += 1;
            }
            let live = Live {
                head_seq,
                len: ring.len() as u64,
            };
            for (offset, &id) in ring.iter().enumerate() {
                let found = index.find(hash(id), live, |o| ring[o as usize] == id);
                assert_eq!(found, Some(offset as u64));
            }
            let evicted = seq
                .wrapping_sub(max as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            if seq >= first_seq + max as u64 {
                assert_eq!(
                    index.find(hash(evicted), live, |o| ring[o as usize] == evicted),
                    None
                );
            }
        }
    }

    #[test]
    fn finds_every_live_id_and_no_evicted_one_with_a_good_hash() {
        check_ring(100, 0, crate::index::hash64);
    }

    #[test]
    fn sequences_wrapping_past_32_bits_stay_live_and_go_stale_in_order() {
        check_ring(100, (1 << 32) - 2_000, crate::index::hash64);
    }

    #[test]
    fn finds_every_live_id_when_buckets_overflow_under_a_colliding_hash() {
        // Four distinct hashes for every id: whole runs of buckets overflow.
        check_ring(60, 0, |id| crate::index::hash64(id % 4));
    }

    #[test]
    fn removes_the_newest_entry_so_its_sequence_can_be_reused() {
        let mut index = RetentionIndex::with_capacity(16);
        let live = Live {
            head_seq: 0,
            len: 1,
        };
        index.insert(7, 0, live);
        assert_eq!(index.find(7, live, |_| true), Some(0));
        index.remove(7, 0, live);
        assert_eq!(index.find(7, live, |_| true), None);
    }
}
