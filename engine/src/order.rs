//! Account slots in key order, for paged listing (`ListAccounts`) without a scan of the whole
//! table.
//!
//! A listing query runs on the engine thread between commands, so its cost is a stall of the
//! ledger: a scan of every account took 10-12 ms per page at one million accounts on the
//! development VM, and listing them all (4,000 pages) would have held the engine for most of a
//! minute. With an order, a page costs a seek (binary searches) and a walk of `limit` entries.
//!
//! # Layout
//! Blocks of account slots (`u32`), each sorted by the slots' keys, and a directory of the
//! blocks in key order (the first key of each, its block number and length). A block holds
//! 512 to 16,384 slots, about the square root of the table's capacity (`block_len_for`), so
//! that neither the slots an insert moves nor the directory entries a split moves grow
//! large. The keys themselves live in the account records, so an entry costs 4 bytes (about
//! 5.7 per account at the 70 % fill of random inserts).
//!
//! # Fingerprints
//! Finding a key's place in a block by the records alone reads 10-14 of them (a binary
//! search), and at a million accounts with random ids each read is a cache miss: about 2 µs
//! per created account, in two orders. Orders of at least [`FINGERPRINT_MIN_CAPACITY`] slots
//! therefore keep beside each slot a 16-bit fingerprint of its key: `(key - base) >> shift`,
//! saturated to `0..=u16::MAX`, with `base` and `shift` chosen per block so that the block's
//! keys spread over the 16 bits (`Fit`). The fingerprint never decreases as the key grows, so a
//! binary search over a block's fingerprints (2 bytes each, contiguous) narrows a key's place
//! to the slots whose fingerprint equals the key's, usually none or one, and only those
//! records are read. Keys outside the block's range when its fit was chosen (inserted later
//! below `base` or far above the last key) share the end fingerprints and are told apart by
//! their records, as before; every split fits both halves afresh. Smaller orders keep no
//! fingerprints: their records stay in cache, and the 2 bytes a slot would count against the
//! memory per account.
//!
//! Accounts are never removed, so blocks only split: a full block gives its upper half to a
//! new block, except the last block, which splits where the new key goes when that is in its
//! upper half: ids created in increasing order (also before a larger one created first, such
//! as an external account's) then fill their blocks, where halves would leave them half
//! empty. Every block but the last is at least half full, which bounds the blocks. Block
//! storage and directory are reserved at start-up for the worst case (every block half full)
//! and touched only as blocks are allocated, so no command allocates. Everything depends only
//! on the keys inserted and their order, so the layout is deterministic, though nothing
//! outside this module sees it (a restored engine's blocks differ from the original's, its
//! answers do not). A restore builds the order from the accounts in one pass or sort
//! ([`Order::build`]) instead of inserting one at a time.

/// Fewest slots per block (2 KiB).
const BLOCK_MIN: usize = 512;
/// Most slots per block (64 KiB).
const BLOCK_MAX: usize = 16 << 10;
/// Capacity from which an order keeps fingerprints (see the module docs): below it the
/// records (64 bytes each, 4 MiB at this size) mostly stay in cache.
pub(crate) const FINGERPRINT_MIN_CAPACITY: usize = 1 << 16;

/// Slots per block for `capacity` slots: the power of two at or above `√capacity`, within
/// [`BLOCK_MIN`]..=[`BLOCK_MAX`]. An insert moves up to a block's slots, and a split moves
/// the directory entries after it (one per block), so both stay near `√capacity`: 1,024-slot
/// blocks for a million accounts (about 1,400 directory entries), 16,384 for a billion (where
/// 512-slot blocks would have made a split move tens of megabytes of directory).
fn block_len_for(capacity: usize) -> usize {
    capacity
        .isqrt()
        .next_power_of_two()
        .clamp(BLOCK_MIN, BLOCK_MAX)
}

/// How a block maps keys to fingerprints: `(key - base) >> shift`, saturated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Fit {
    base: u128,
    shift: u8,
}

impl Fit {
    /// The fit that spreads keys `lo..=hi` over the 16 bits.
    fn spanning(lo: u128, hi: u128) -> Fit {
        let span = hi.saturating_sub(lo);
        Fit {
            base: lo,
            shift: (u128::BITS - span.leading_zeros()).saturating_sub(u16::BITS) as u8,
        }
    }

    /// Never decreases as `key` grows.
    #[inline]
    fn fingerprint(self, key: u128) -> u16 {
        (key.saturating_sub(self.base) >> self.shift).min(u128::from(u16::MAX)) as u16
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Key of the block's first slot.
    first: u128,
    /// The block's fingerprints' fit, its two halves kept here (not as a [`Fit`], which
    /// would pad the entry to 64 bytes): the directory is searched on every insert and seek.
    base: u128,
    block: u32,
    len: u32,
    shift: u8,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 48);

impl Entry {
    fn fit(&self) -> Fit {
        Fit {
            base: self.base,
            shift: self.shift,
        }
    }

    fn set_fit(&mut self, fit: Fit) {
        self.base = fit.base;
        self.shift = fit.shift;
    }
}

/// Account slots in the order of a key that the caller computes from a slot (see the module
/// docs). Keys must be unique.
#[derive(Clone, Debug, Default)]
pub(crate) struct Order {
    directory: Vec<Entry>,
    /// Block `b` is `slots[b * block_len..(b + 1) * block_len]`, of which the first `len`
    /// are used.
    slots: Vec<u32>,
    /// The fingerprint of each slot's key, laid out as `slots`; empty in orders without
    /// fingerprints.
    fingerprints: Vec<u16>,
    /// Whether this order keeps fingerprints.
    fingerprinted: bool,
    /// Slots per block ([`block_len_for`] the capacity).
    block_len: usize,
}

impl Order {
    /// An empty order with room for `capacity` slots, however the blocks split.
    pub(crate) fn with_capacity(capacity: usize) -> Order {
        Order::new(capacity, capacity >= FINGERPRINT_MIN_CAPACITY)
    }

    /// [`Order::with_capacity`], with or without fingerprints whatever the capacity.
    fn new(capacity: usize, fingerprinted: bool) -> Order {
        let block_len = block_len_for(capacity);
        let blocks = capacity.div_ceil(block_len / 2) + 1;
        Order {
            directory: Vec::with_capacity(blocks),
            slots: Vec::with_capacity(blocks * block_len),
            fingerprints: Vec::with_capacity(if fingerprinted { blocks * block_len } else { 0 }),
            fingerprinted,
            block_len,
        }
    }

    /// Slots held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.directory.iter().map(|e| e.len as usize).sum()
    }

    fn fingerprinted(&self) -> bool {
        self.fingerprinted
    }

    /// Bytes reserved.
    pub(crate) fn size_bytes(&self) -> usize {
        self.directory.capacity() * std::mem::size_of::<Entry>()
            + self.slots.capacity() * 4
            + self.fingerprints.capacity() * 2
    }

    /// `(address, bytes)` of the block storage (slots, then fingerprints) that
    /// [`Order::build`] of `slots` slots fills (within the reservation), for a restore to have
    /// mapped ahead.
    pub(crate) fn build_spans(&self, slots: usize) -> [(usize, usize); 2] {
        let entries = slots.div_ceil(self.build_fill()) * self.block_len;
        [
            (
                self.slots.as_ptr() as usize,
                entries.min(self.slots.capacity()) * 4,
            ),
            (
                self.fingerprints.as_ptr() as usize,
                entries.min(self.fingerprints.capacity()) * 2,
            ),
        ]
    }

    /// How full [`Order::build`] packs its blocks (7/8), leaving room for later inserts.
    fn build_fill(&self) -> usize {
        self.block_len - self.block_len / 8
    }

    fn block(&self, e: &Entry) -> &[u32] {
        let at = e.block as usize * self.block_len;
        &self.slots[at..at + e.len as usize]
    }

    /// Where `key` goes in block `e`: the number of its slots whose keys are below `key`.
    fn place(&self, e: &Entry, key: u128, key_of: impl Fn(u32) -> u128) -> usize {
        let block = self.block(e);
        if !self.fingerprinted() {
            return block.partition_point(|&s| key_of(s) < key);
        }
        let at = e.block as usize * self.block_len;
        let prints = &self.fingerprints[at..at + e.len as usize];
        let f = e.fit().fingerprint(key);
        // Slots with a smaller fingerprint have smaller keys, those with a larger one larger
        // keys: only equal fingerprints need their records read.
        let lo = prints.partition_point(|&p| p < f);
        let ties = prints[lo..].partition_point(|&p| p == f);
        lo + block[lo..lo + ties].partition_point(|&s| key_of(s) < key)
    }

    /// Chooses directory entry `d`'s fit from its first and last keys and fingerprints its
    /// slots afresh.
    fn refit(&mut self, d: usize, key_of: &impl Fn(u32) -> u128) {
        let e = self.directory[d];
        if !self.fingerprinted() || e.len == 0 {
            return;
        }
        let at = e.block as usize * self.block_len;
        let len = e.len as usize;
        let fit = Fit::spanning(key_of(self.slots[at]), key_of(self.slots[at + len - 1]));
        self.directory[d].set_fit(fit);
        for (p, &s) in self.fingerprints[at..at + len]
            .iter_mut()
            .zip(&self.slots[at..at + len])
        {
            *p = fit.fingerprint(key_of(s));
        }
    }

    /// Directory entry of the block where `key` belongs: the last whose first key is at most
    /// `key`, or the first block. `None` when empty.
    fn find_block(&self, key: u128) -> Option<usize> {
        if self.directory.is_empty() {
            return None;
        }
        Some(
            self.directory
                .partition_point(|e| e.first <= key)
                .saturating_sub(1),
        )
    }

    fn new_block(&mut self) -> u32 {
        let block = self.slots.len() / self.block_len;
        debug_assert!(self.slots.len() + self.block_len <= self.slots.capacity());
        self.slots.resize(self.slots.len() + self.block_len, 0);
        if self.fingerprinted() {
            self.fingerprints.resize(self.slots.len(), 0);
        }
        block as u32
    }

    /// Moves block storage `from..to` (slots and fingerprints) to start at `dst`.
    fn move_within(&mut self, from: usize, to: usize, dst: usize) {
        self.slots.copy_within(from..to, dst);
        if self.fingerprinted() {
            self.fingerprints.copy_within(from..to, dst);
        }
    }

    /// Adds `slot`, whose key is `key(slot)` (not yet in the order).
    pub(crate) fn insert(&mut self, slot: u32, key: impl Fn(u32) -> u128) {
        let k = key(slot);
        let Some(mut d) = self.find_block(k) else {
            let block = self.new_block();
            self.directory.push(Entry {
                first: k,
                base: k,
                block,
                len: 0,
                shift: 0,
            });
            self.put(0, 0, slot, k);
            return;
        };
        let mut pos = self.place(&self.directory[d], k, &key);
        if self.directory[d].len as usize == self.block_len {
            let last = d + 1 == self.directory.len();
            let block = self.new_block();
            // Only the last block may be left less than half full, so a split at the new
            // key's place is for it alone.
            let from = if last && pos >= self.block_len / 2 {
                pos
            } else {
                self.block_len / 2
            };
            let moved = self.block_len - from;
            let src = self.directory[d].block as usize * self.block_len;
            self.move_within(
                src + from,
                src + self.block_len,
                block as usize * self.block_len,
            );
            self.directory[d].len = from as u32;
            let first = if moved == 0 {
                k
            } else {
                key(self.slots[block as usize * self.block_len])
            };
            self.directory.insert(
                d + 1,
                Entry {
                    first,
                    // An empty block (the last, split where increasing keys arrive) starts
                    // at the new key with the spacing of the keys before it.
                    base: first,
                    block,
                    len: moved as u32,
                    shift: self.directory[d].shift,
                },
            );
            // A split at the end of the last block moved nothing: both fits still hold.
            if moved > 0 {
                self.refit(d, &key);
                self.refit(d + 1, &key);
            }
            if pos >= from {
                d += 1;
                pos -= from;
            }
        }
        self.put(d, pos, slot, k);
    }

    /// Puts `slot` (key `k`) at `pos` of directory entry `d`'s block, which has room.
    fn put(&mut self, d: usize, pos: usize, slot: u32, k: u128) {
        let e = self.directory[d];
        let at = e.block as usize * self.block_len;
        let len = e.len as usize;
        self.move_within(at + pos, at + len, at + pos + 1);
        self.slots[at + pos] = slot;
        if self.fingerprinted() {
            self.fingerprints[at + pos] = e.fit().fingerprint(k);
        }
        let e = &mut self.directory[d];
        e.len += 1;
        if pos == 0 {
            e.first = k;
        }
    }

    /// The slots whose keys are at least `start`, in key order.
    pub(crate) fn from(
        &self,
        start: u128,
        key: impl Fn(u32) -> u128,
    ) -> impl Iterator<Item = u32> + '_ {
        let (d, pos) = match self.find_block(start) {
            Some(d) => (d, self.place(&self.directory[d], start, key)),
            None => (0, 0),
        };
        self.directory[d.min(self.directory.len())..]
            .iter()
            .enumerate()
            .flat_map(move |(i, e)| {
                self.block(e)[if i == 0 { pos } else { 0 }..]
                    .iter()
                    .copied()
            })
    }

    /// Replaces the contents with `entries` (key, slot), which must be in strictly increasing
    /// key order, packed 7/8 full (`build_fill`).
    pub(crate) fn build(&mut self, entries: impl IntoIterator<Item = (u128, u32)>) {
        self.directory.clear();
        self.slots.clear();
        self.fingerprints.clear();
        let fill = self.build_fill();
        let fingerprinted = self.fingerprinted();
        // The keys of the block being filled, for its fit.
        let mut keys: Vec<u128> = Vec::with_capacity(if fingerprinted { fill } else { 0 });
        let mut entries = entries.into_iter().peekable();
        while let Some(&(first, _)) = entries.peek() {
            let block = self.new_block();
            let at = block as usize * self.block_len;
            let mut len = 0;
            keys.clear();
            for (dst, (key, slot)) in self.slots[at..at + fill].iter_mut().zip(&mut entries) {
                *dst = slot;
                len += 1;
                if fingerprinted {
                    keys.push(key);
                }
            }
            let fit = Fit::spanning(first, keys.last().copied().unwrap_or(first));
            if fingerprinted {
                for (p, &key) in self.fingerprints[at..].iter_mut().zip(&keys) {
                    *p = fit.fingerprint(key);
                }
            }
            self.directory.push(Entry {
                first,
                base: fit.base,
                block,
                len,
                shift: fit.shift,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Keys of slots: `keys[slot]`.
    fn check(order: &Order, keys: &[u128], model: &BTreeMap<u128, u32>) {
        assert_eq!(order.len(), model.len());
        let key = |s: u32| keys[s as usize];
        let all: Vec<u32> = order.from(0, key).collect();
        assert_eq!(all, model.values().copied().collect::<Vec<_>>());
        for e in &order.directory {
            assert!(e.len as usize <= order.block_len && e.len > 0);
            assert_eq!(e.first, key(order.block(e)[0]));
            if order.fingerprinted() {
                // Each slot's fingerprint is its key's under the block's fit.
                let at = e.block as usize * order.block_len;
                let prints = &order.fingerprints[at..at + e.len as usize];
                for (&p, &s) in prints.iter().zip(order.block(e)) {
                    assert_eq!(p, e.fit().fingerprint(key(s)));
                }
            }
        }
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    #[test]
    fn random_increasing_and_decreasing_inserts_keep_key_order_and_seeks_find_the_next_key() {
        for (pattern, fingerprinted) in (0..5).flat_map(|p| [(p, false), (p, true)]) {
            let n = 5_000usize;
            let mut order = Order::new(n, fingerprinted);
            let mut keys = Vec::new();
            let mut model = BTreeMap::new();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for slot in 0..n as u32 {
                let k = match pattern {
                    0 => u128::from(xorshift(&mut x) >> 20),
                    1 => u128::from(slot) * 3 + 1,
                    2 => u128::from(u32::MAX - slot) << 64,
                    // Clustered: runs of close keys far apart, so that blocks' fits differ
                    // and later keys fall outside them.
                    4 => {
                        (u128::from(xorshift(&mut x) % 8) << 100)
                            | (u128::from(xorshift(&mut x) >> 40) << 16)
                            | u128::from(slot)
                    }
                    // Increasing, after a larger key first.
                    _ if slot == 0 => u128::MAX,
                    _ => u128::from(slot),
                };
                keys.push(k);
                model.insert(k, slot);
                order.insert(slot, |s| keys[s as usize]);
                if slot % 997 == 0 {
                    check(&order, &keys, &model);
                }
            }
            check(&order, &keys, &model);
            // Never more blocks than half-full ones would take (the reservation).
            let block = order.block_len;
            assert_eq!(block, BLOCK_MIN);
            assert!(order.directory.len() <= n.div_ceil(block / 2) + 1);
            if pattern == 1 || pattern == 3 {
                // Increasing keys fill their blocks.
                assert!(order.directory.len() <= n.div_ceil(block - 1));
            }
            let key = |s: u32| keys[s as usize];
            let near: Vec<u128> = model
                .keys()
                .step_by(97)
                .flat_map(|&k| [k, k.saturating_add(1), k.saturating_sub(1)])
                .collect();
            for probe in (0..50)
                .map(|_| u128::from(xorshift(&mut x) >> 20))
                .chain([0, u128::MAX])
                .chain(near)
            {
                let got: Vec<u32> = order.from(probe, key).take(3).collect();
                let want: Vec<u32> = model.range(probe..).map(|(_, &s)| s).take(3).collect();
                assert_eq!(got, want, "from {probe}");
            }
            // A rebuilt order holds the same, and takes inserts after.
            let sorted: Vec<u32> = model.values().copied().collect();
            order.build(sorted.iter().map(|&s| (key(s), s)));
            check(&order, &keys, &model);
        }
    }

    #[test]
    fn blocks_grow_with_the_square_root_of_the_capacity_within_bounds() {
        assert_eq!(block_len_for(0), BLOCK_MIN);
        assert_eq!(block_len_for(10_000), BLOCK_MIN);
        assert_eq!(block_len_for(1_000_000), 1_024);
        assert_eq!(block_len_for(100_000_000), 16_384);
        assert_eq!(block_len_for(1 << 30), BLOCK_MAX);
        // A larger block still splits and seeks like a small one.
        let n = 70_000usize;
        let mut order = Order::with_capacity(n);
        assert_eq!(order.block_len, 512);
        let mut big = Order::with_capacity(5_000_000);
        assert_eq!(big.block_len, 4_096);
        let keys: Vec<u128> = (0..n as u128).map(|k| (k * 7919) % 70_001).collect();
        for slot in 0..n as u32 {
            order.insert(slot, |s| keys[s as usize]);
            big.insert(slot, |s| keys[s as usize]);
        }
        let key = |s: u32| keys[s as usize];
        assert!(order.from(0, key).eq(big.from(0, key)));
        assert!(order
            .from(35_000, key)
            .take(10)
            .eq(big.from(35_000, key).take(10)));
        assert!(big.directory.len() > 1);
    }

    #[test]
    fn orders_keep_fingerprints_from_their_threshold_capacity_and_fill_them() {
        // The search would give the same answers without them: only this says they are on.
        assert!(!Order::with_capacity(FINGERPRINT_MIN_CAPACITY - 1).fingerprinted());
        let mut order = Order::with_capacity(FINGERPRINT_MIN_CAPACITY);
        assert!(order.fingerprinted());
        let keys: Vec<u128> = (0..2_000u128).map(|k| (k * 7_919) % 2_003).collect();
        for slot in 0..keys.len() as u32 {
            order.insert(slot, |s| keys[s as usize]);
        }
        // Distinct keys spread over each block's fit: most fingerprints differ from their
        // neighbour's, so a look-up reads few records.
        let prints = order.directory.iter().flat_map(|e| {
            let at = e.block as usize * order.block_len;
            order.fingerprints[at..at + e.len as usize].windows(2)
        });
        let (distinct, all) =
            prints.fold((0, 0), |(d, a), w| (d + usize::from(w[0] < w[1]), a + 1));
        assert!(
            distinct * 10 >= all * 9,
            "{distinct} of {all} neighbours differ"
        );
    }

    #[test]
    fn an_empty_order_yields_nothing() {
        let order = Order::with_capacity(10);
        assert_eq!(order.from(0, |_| 0).count(), 0);
    }
}
