//! Open-addressing hash index from a key (held by the caller's records) to a `u32` record slot.
//!
//! Each bucket is one `u64`: the hash's upper 32 bits as a tag and `slot + 1` in the lower 32
//! (0 = empty), so a probe touches the record only when the tag matches. The home bucket is
//! taken from the tag's low bits, so moving entries during deletion never reads a record. Linear probing with
//! backward-shift deletion (no tombstones); the bucket count is the power of two at or above
//! 5/3 of the keys it is sized for, so the load factor stays at or below 0.6 (about 3.6 buckets
//! probed by a miss, mostly within one cache line): 8 bytes per bucket, 13.3 to 26.7 bytes per key. The bucket array is
//! allocated zeroed (`vec![0; n]`), which the allocator maps lazily: untouched pages cost no RSS.
//! Hashing is fixed (no random state), so layout and behaviour are deterministic.

/// A strong 64-bit mixer (splitmix64's finalizer).
#[inline]
pub(crate) fn hash64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of a 128-bit id.
#[inline]
pub(crate) fn hash128(id: u128) -> u64 {
    hash64((id as u64) ^ hash64((id >> 64) as u64 ^ 0x9e37_79b9_7f4a_7c15))
}

#[derive(Clone)]
pub(crate) struct Index {
    buckets: Vec<u64>,
    mask: usize,
    len: usize,
    keys_max: usize,
}

impl Index {
    /// An index for up to `keys_max` keys.
    pub(crate) fn with_capacity(keys_max: usize) -> Index {
        let size = (keys_max.max(8) * 5).div_ceil(3).next_power_of_two();
        let buckets = vec![0; size];
        crate::prefetch::advise_huge_pages(&buckets);
        Index {
            buckets,
            mask: size - 1,
            len: 0,
            keys_max,
        }
    }

    #[inline]
    fn tag(hash: u64) -> u64 {
        hash >> 32
    }

    #[inline]
    fn home(&self, tag: u64) -> usize {
        tag as usize & self.mask
    }

    /// Asks the CPU to fetch the home bucket of `hash` ahead of a lookup.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        crate::prefetch::read(&self.buckets[self.home(Self::tag(hash))]);
    }

    /// The slot of the first entry whose tag matches `hash` (without confirming the key), so
    /// that its record can be prefetched.
    #[inline]
    pub(crate) fn peek(&self, hash: u64) -> Option<u32> {
        let tag = Self::tag(hash);
        let mut i = self.home(tag);
        loop {
            let bucket = self.buckets[i];
            if bucket == 0 {
                return None;
            }
            if bucket >> 32 == tag {
                return Some((bucket as u32) - 1);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The slot whose key has `hash` and satisfies `is_key`.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = Self::tag(hash);
        let mut i = self.home(tag);
        loop {
            let bucket = self.buckets[i];
            if bucket == 0 {
                return None;
            }
            if bucket >> 32 == tag {
                let slot = (bucket as u32) - 1;
                if is_key(slot) {
                    return Some(slot);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds `slot` under `hash`; the caller guarantees the key is absent and capacity remains.
    pub(crate) fn insert(&mut self, hash: u64, slot: u32) {
        assert!(slot < u32::MAX);
        assert!(
            self.len < self.keys_max.max(8),
            "index sized for fewer keys"
        );
        let mut i = self.home(Self::tag(hash));
        while self.buckets[i] != 0 {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = (Self::tag(hash) << 32) | u64::from(slot + 1);
        self.len += 1;
    }

    /// Removes the entry for `slot` (inserted under `hash`), moving later entries of the probe
    /// run back over the hole.
    pub(crate) fn remove(&mut self, hash: u64, slot: u32) {
        let want = (Self::tag(hash) << 32) | u64::from(slot + 1);
        let mut hole = self.home(Self::tag(hash));
        while self.buckets[hole] != want {
            assert!(self.buckets[hole] != 0, "index entry to remove is missing");
            hole = (hole + 1) & self.mask;
        }
        let mut j = (hole + 1) & self.mask;
        loop {
            let bucket = self.buckets[j];
            if bucket == 0 {
                break;
            }
            let home = self.home(bucket >> 32);
            // Move the entry back when its home is not in the cyclic range (hole, j].
            if j.wrapping_sub(home) & self.mask >= j.wrapping_sub(hole) & self.mask {
                self.buckets[hole] = bucket;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.buckets[hole] = 0;
        self.len -= 1;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes allocated for buckets.
    pub(crate) fn size_bytes(&self) -> usize {
        self.buckets.len() * 8
    }
}

/// Marks a [`SeqIndex`] bucket as full (the tag's top bit), so that 0 can mean empty.
const SEQ_TAG_BIT: u32 = 1 << 31;

/// Buckets the [`SeqIndex`] sweeper examines per insert. Stale entries are removed within one
/// sweep of the table, i.e. within `buckets / SEQ_SWEEP_PER_INSERT` inserts (plus the few
/// inserts of one command, after which the engine sweeps), so about that many (one sixteenth
/// of the table) are ever stale: with live keys at most 2/3 of the buckets, the load stays
/// below 0.73 and every probe run ends at an empty bucket.
const SEQ_SWEEP_PER_INSERT: usize = 16;

/// Largest [`SeqIndex`] bucket count: the home bucket comes from the tag's low 31 bits.
const SEQ_BUCKETS_MAX: usize = 1 << 31;

/// Index from a retained transfer's id to its ring *sequence*, for a FIFO ring whose live
/// sequences are the window `[head, next)`; built so that eviction costs nothing.
///
/// Each bucket is one `u64`: a 32-bit tag (hash bits, top bit forced to 1 so that a full bucket
/// is never 0) and the low 32 bits of the sequence. An entry is *live* when its sequence lies
/// in the window the caller passes in, *stale* otherwise. Evicting from the ring therefore only
/// moves the window: no random access into the table. Stale entries are reclaimed in two ways:
/// an insert reuses the first stale-or-empty bucket on its probe run (like a tombstone), and a
/// sweeper walks the table sequentially, `SEQ_SWEEP_PER_INSERT` buckets per insert (in one go
/// per command: [`SeqIndex::sweep`]), removing
/// stale entries with backward-shift deletion so that probe runs stay short and end at an
/// empty bucket. Sequences are compared modulo 2^32: the window is far shorter than 2^31, and a
/// stale entry is swept long before 2^32 further inserts could make it look live again; even
/// then a lookup confirms the full id in the ring, so a stale entry can never answer wrongly.
///
/// Linear probing from the home bucket `tag & mask`; the table has at least 3/2 buckets per
/// key (live load at most 2/3), 8 bytes per bucket: 12 to 24 bytes per retained transfer. A
/// lookup of an absent id (the common case: every new transfer) reads about 3-5 consecutive
/// buckets, usually one cache line.
#[derive(Clone)]
pub(crate) struct SeqIndex {
    buckets: Vec<u64>,
    mask: usize,
    /// Next bucket the sweeper examines.
    sweep: usize,
    /// Buckets the sweeper still has to examine (`SEQ_SWEEP_PER_INSERT` per insert).
    sweep_owed: usize,
    /// Whether anything was inserted since the buckets were last zeroed.
    dirty: bool,
}

impl SeqIndex {
    /// An index for windows of up to `keys_max` sequences.
    pub(crate) fn with_capacity(keys_max: usize) -> SeqIndex {
        let size = (keys_max.max(8) * 3)
            .div_ceil(2)
            .next_power_of_two()
            .min(SEQ_BUCKETS_MAX);
        let buckets = vec![0; size];
        crate::prefetch::advise_huge_pages(&buckets);
        SeqIndex {
            buckets,
            mask: size - 1,
            sweep: 0,
            sweep_owed: 0,
            dirty: false,
        }
    }

    #[inline]
    fn tag(hash: u64) -> u64 {
        u64::from((hash >> 32) as u32 | SEQ_TAG_BIT)
    }

    #[inline]
    fn home_of_tag(&self, tag: u64) -> usize {
        tag as usize & self.mask
    }

    /// Whether `bucket` (full) holds a sequence inside the window `[head, head + len)`.
    #[inline]
    fn is_live(bucket: u64, head: u64, len: u64) -> bool {
        u64::from((bucket as u32).wrapping_sub(head as u32)) < len
    }

    /// Asks the CPU to fetch the home bucket of `hash` ahead of a lookup.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        crate::prefetch::read(&self.buckets[self.home_of_tag(Self::tag(hash))]);
    }

    /// The live sequence whose key has `hash` and satisfies `is_key`, with the window
    /// `[head, head + len)`.
    #[inline]
    pub(crate) fn find(
        &self,
        hash: u64,
        head: u64,
        len: u64,
        mut is_key: impl FnMut(u64) -> bool,
    ) -> Option<u64> {
        let tag = Self::tag(hash);
        let mut i = self.home_of_tag(tag);
        loop {
            let bucket = self.buckets[i];
            if bucket == 0 {
                return None;
            }
            if bucket >> 32 == tag && Self::is_live(bucket, head, len) {
                let seq = head + u64::from((bucket as u32).wrapping_sub(head as u32));
                if is_key(seq) {
                    return Some(seq);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds `seq` under `hash`, where `[head, head + len)` is the window *including* `seq`; the
    /// caller guarantees the key is not live, and calls [`SeqIndex::sweep`] after a few inserts.
    #[inline]
    pub(crate) fn insert(&mut self, hash: u64, seq: u64, head: u64, len: u64) {
        let tag = Self::tag(hash);
        let mut i = self.home_of_tag(tag);
        loop {
            let bucket = self.buckets[i];
            if bucket == 0 || !Self::is_live(bucket, head, len) {
                break;
            }
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = (tag << 32) | u64::from(seq as u32);
        self.dirty = true;
        self.sweep_owed = (self.sweep_owed + SEQ_SWEEP_PER_INSERT).min(self.buckets.len());
    }

    /// Examines the `SEQ_SWEEP_PER_INSERT` buckets owed per insert since the last sweep (one
    /// sequential pass over a few cache lines), removing stale entries: those outside the
    /// window `[head, head + len)`.
    pub(crate) fn sweep(&mut self, head: u64, len: u64) {
        let mut left = self.sweep_owed;
        self.sweep_owed = 0;
        let mut at = self.sweep;
        while left > 0 {
            let bucket = self.buckets[at];
            left -= 1;
            if bucket != 0 && !Self::is_live(bucket, head, len) {
                // The hole may be refilled by a later entry of the run: look at it again.
                self.delete_at(at);
            } else {
                at = (at + 1) & self.mask;
            }
        }
        self.sweep = at;
    }

    /// Forgets the sweeping owed (after a bulk load, which leaves nothing stale).
    pub(crate) fn forgive_sweep(&mut self) {
        self.sweep_owed = 0;
    }

    /// Empties bucket `hole`, moving later entries of its probe run back over it.
    fn delete_at(&mut self, mut hole: usize) {
        let mut j = (hole + 1) & self.mask;
        loop {
            let bucket = self.buckets[j];
            if bucket == 0 {
                break;
            }
            let home = self.home_of_tag(bucket >> 32);
            // Move the entry back when its home is not in the cyclic range (hole, j].
            if j.wrapping_sub(home) & self.mask >= j.wrapping_sub(hole) & self.mask {
                self.buckets[hole] = bucket;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.buckets[hole] = 0;
    }

    /// Empties the index (a no-op on a fresh one, whose zeroed pages stay untouched).
    pub(crate) fn clear(&mut self) {
        if self.dirty {
            self.buckets.fill(0);
            self.dirty = false;
        }
        self.sweep = 0;
        self.sweep_owed = 0;
    }

    #[cfg(test)]
    fn full_buckets(&self) -> usize {
        self.buckets.iter().filter(|&&b| b != 0).count()
    }

    /// Bytes allocated for buckets.
    pub(crate) fn size_bytes(&self) -> usize {
        self.buckets.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn inserts_finds_and_removes_with_colliding_homes() {
        let mut keys: Vec<u64> = Vec::new();
        let mut index = Index::with_capacity(64);
        let mut live = BTreeMap::new();
        // A weak hash on purpose, so that homes collide and backward shifts run.
        let h = |k: u64| (k % 5) << 32;
        for step in 0u64..2_000 {
            let k = step.wrapping_mul(2_654_435_761) % 97;
            if let Some(&slot) = live.get(&k) {
                index.remove(h(k), slot);
                live.remove(&k);
            } else if live.len() < 64 {
                let slot = keys.len() as u32;
                keys.push(k);
                index.insert(h(k), slot);
                live.insert(k, slot);
            }
            for (&k, &slot) in &live {
                assert_eq!(index.find(h(k), |s| keys[s as usize] == k), Some(slot));
            }
            assert_eq!(index.len(), live.len());
        }
    }

    #[test]
    fn a_sliding_window_of_sequences_stays_findable_and_stale_entries_are_reclaimed() {
        // Weak hashes (homes collide) and a window of 40 over 200_000 inserts whose sequences
        // cross 2^32: every live sequence is found, nothing outside the window is, and the
        // table never fills.
        let window = 40u64;
        let mut index = SeqIndex::with_capacity(window as usize);
        let key_hash = |seq: u64| (seq.wrapping_mul(0x9e37_79b9) % 7) << 32 | seq;
        for seq in (1u64 << 32) - 100_000..(1u64 << 32) + 100_000 {
            let head = (seq + 1).saturating_sub(window);
            index.insert(key_hash(seq), seq, head, seq + 1 - head);
            if seq % 3 == 0 {
                index.sweep(head, seq + 1 - head);
            }
            if seq % 997 == 0 {
                for probe in seq.saturating_sub(2 * window)..=seq {
                    let found = index.find(key_hash(probe), head, seq + 1 - head, |s| s == probe);
                    assert_eq!(found.is_some(), probe >= head, "seq {probe} at head {head}");
                }
            }
            assert!(index.full_buckets() < index.buckets.len());
        }
    }
}
