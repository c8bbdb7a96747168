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

/// The 128-bit product of `a` and `b`, its halves folded together with xor: one `mul`
/// instruction that mixes every input bit into the middle bits of the result.
#[inline(always)]
pub(crate) fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Index hash of an account id (the account index's key): one folded multiply, a third of the
/// instructions of [`hash64`] on the hottest path. Fixed constants, so layouts are
/// deterministic; the index reads its tag and home bucket from the well-mixed upper half.
#[inline(always)]
pub(crate) fn account_hash(id: u64) -> u64 {
    fold_mul(id ^ 0x243f_6a88_85a3_08d3, 0x9e37_79b9_7f4a_7c15)
}

/// Index hash of a transfer id (the retention index's key): two folded multiplies.
#[inline(always)]
pub(crate) fn id_hash(id: u128) -> u64 {
    let h = fold_mul(
        (id as u64) ^ 0x1319_8a2e_0370_7344,
        ((id >> 64) as u64) ^ 0xa409_3822_299f_31d0,
    );
    fold_mul(h ^ 0x082e_fa98_ec4e_6c89, 0x9e37_79b9_7f4a_7c15)
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

    /// Asks the CPU to fetch the home bucket of `hash` ahead of a lookup, and the next cache
    /// line too when the home bucket is in the second half of its line: a probe run (about
    /// 2-4 buckets at this load) that crosses into a line nobody prefetched would stall the
    /// lookup, the insert or the backward shift of a removal on a full memory round trip.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        const LINE_BYTES: usize = 64;
        let home = self.home(Self::tag(hash));
        let bucket = &self.buckets[home];
        crate::prefetch::read(bucket);
        let offset_in_line = (bucket as *const u64 as usize) % LINE_BYTES;
        if offset_in_line >= LINE_BYTES / 2 {
            crate::prefetch::read(&self.buckets[(home + LINE_BYTES / 8) & self.mask]);
        }
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

    /// Adds `slot` under `hash` unless a key already there satisfies `is_key`, in which case it
    /// returns false and changes nothing: the check and the insert in one probe run (restore).
    pub(crate) fn insert_unique(
        &mut self,
        hash: u64,
        slot: u32,
        mut is_key: impl FnMut(u32) -> bool,
    ) -> bool {
        assert!(slot < u32::MAX);
        assert!(
            self.len < self.keys_max.max(8),
            "index sized for fewer keys"
        );
        let tag = Self::tag(hash);
        let mut i = self.home(tag);
        loop {
            let bucket = self.buckets[i];
            if bucket == 0 {
                break;
            }
            if bucket >> 32 == tag && is_key((bucket as u32) - 1) {
                return false;
            }
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = (tag << 32) | u64::from(slot + 1);
        self.len += 1;
        true
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

    /// Maps every page of the buckets now (see `prefetch::populate`).
    pub(crate) fn populate(&self) {
        crate::prefetch::populate(&self.buckets);
    }

    /// Address range of the buckets (see `prefetch::populate_for_write`).
    pub(crate) fn span(&self) -> (usize, usize) {
        crate::prefetch::span(&self.buckets, self.buckets.len())
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
}
