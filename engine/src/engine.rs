//! The state machine proper over typed commands: tables, validation in precedence order, effects,
//! atomic groups with an undo log, pending expiry, sessions and the state hash.
//!
//! Tables (all sized in [`Engine::new`], none grows afterwards):
//! - accounts: a `Vec<AccountRecord>` (64-byte aligned, one cache line each) in creation order,
//!   with an [`Index`] by id. `Vec::with_capacity` reserves without touching pages.
//! - retained transfers: a FIFO ring of `Retained` records (64 bytes) with a
//!   [`RetentionIndex`] by id, whose entries go stale when the ring's head passes them (eviction
//!   writes nothing). The ring has `TRANSFERS_PER_COMMAND_MAX` slots of slack beyond the configured retention and is
//!   trimmed only after a command completes, so that an atomic group can be undone without losing
//!   evicted records.
//! - pending transfers: a slab with a free list, an index by id and an indexed binary min-heap of
//!   deadlines ordered by (deadline, creation sequence): expiry order is deterministic.
//! - sessions: a table with an index by session id; when full, the session whose last command
//!   is oldest is forgotten.

use crate::command::{Command, TransferSpec};
use crate::index::{account_hash, hash128, hash64, id_hash, Index};
use crate::lines::MappedTable;
use crate::order::Order;
use crate::retention::{Live, RetentionIndex};
use crate::{
    account_flags as af, batch_flags, transfer_flags, ConfigError, EngineConfig, EntryMeta,
    ResultCode, TransferKind, TransferState, LIST_LIMIT_MAX, NS_PER_S, TRANSFERS_PER_COMMAND_MAX,
};

/// An account as clients see it. `repr(C)`, no padding: the reply's balance entries copy
/// its id, ledger and balance columns as they lie.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, zerocopy::IntoBytes, zerocopy::Immutable)]
#[repr(C)]
pub struct Account {
    /// Account id (never 0).
    pub id: u64,
    /// Ledger (never 0).
    pub ledger: u32,
    /// `account_flags` bits.
    pub flags: u16,
    /// User-defined code.
    pub code: u16,
    /// Posted debits.
    pub debits_posted: u64,
    /// Posted credits.
    pub credits_posted: u64,
    /// Debits reserved by pending transfers.
    pub debits_pending: u64,
    /// Credits reserved by pending transfers.
    pub credits_pending: u64,
}

/// One account's balances after a command (the reply's `balances` group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Account id.
    pub account_id: u64,
    /// Its ledger.
    pub ledger: u32,
    /// Posted debits.
    pub debits_posted: u64,
    /// Posted credits.
    pub credits_posted: u64,
    /// Pending debits.
    pub debits_pending: u64,
    /// Pending credits.
    pub credits_pending: u64,
}

/// A transfer as `GetTransfer` answers it (retained, or open pending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferInfo {
    /// Transfer id.
    pub id: u128,
    /// Account debited.
    pub debit_account_id: u64,
    /// Account credited.
    pub credit_account_id: u64,
    /// Amount moved (posted amount for a post, released amount for a void).
    pub amount: u64,
    /// Ledger.
    pub ledger: u32,
    /// What produced it.
    pub kind: TransferKind,
    /// Lifecycle state.
    pub state: TransferState,
    /// Position of the command that created it.
    pub applied_position: u64,
    /// Log time of that command.
    pub timestamp_ns: u64,
    /// Timeout of a pending transfer in seconds (0 otherwise).
    pub timeout_s: u32,
}

/// What a command did: borrowed from the engine until the next command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome<'a> {
    /// Position the reply answers for (a retried last command: its original position).
    pub position: u64,
    /// Log time of that position.
    pub timestamp_ns: u64,
    /// The client's sequence number, echoed.
    pub client_seq: u64,
    /// Overall result: `ok`, or the lowest-numbered non-ok member result.
    pub result: ResultCode,
    /// One result per transfer of a `Transfers` command, in order; empty otherwise.
    pub results: &'a [ResultCode],
    /// Accounts touched by the command, after it, in first-touch order.
    pub balances: &'a [Balance],
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct AccountRecord {
    pub(crate) account: Account,
    /// Position of the last command that listed this account in its reply (dedup marker).
    touched_position: u64,
    /// The [`AccountsCopy`] epoch in which this record's value at the copy's start was saved
    /// (in the cache line's spare bytes).
    saved_epoch: u64,
}

const _: () = assert!(std::mem::size_of::<AccountRecord>() == 64);

/// A retained transfer: 64 bytes. Accounts are named by slot (accounts are never deleted and
/// snapshots keep creation order, so a slot is as stable as an id and half the size). `extra`
/// holds `timeout_s | code << 32` for transfers, the settled pending id's hash (low bit: the
/// amount was null) for posts and voids, and 0 for deposits and withdrawals.
///
/// `repr(C)` without implicit padding, in the snapshot's field order: on a little-endian
/// machine its bytes are the snapshot record, so snapshots copy the ring in bulk. Aligned to
/// its size, so that it is exactly one cache line, written whole by a streaming store.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::KnownLayout,
    zerocopy::Immutable,
)]
#[repr(C, align(64))]
pub(crate) struct Retained {
    pub(crate) id_lo: u64,
    pub(crate) id_hi: u64,
    pub(crate) amount: u64,
    pub(crate) position: u64,
    pub(crate) timestamp_ns: u64,
    pub(crate) extra: u64,
    pub(crate) debit: u32,
    pub(crate) credit: u32,
    pub(crate) ledger: u32,
    pub(crate) kind: u8,
    pub(crate) state: u8,
    /// Always zero (the snapshot's reserved bytes).
    pub(crate) reserved: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<Retained>() == 64);

impl Retained {
    pub(crate) fn id(&self) -> u128 {
        (u128::from(self.id_hi) << 64) | u128::from(self.id_lo)
    }

    /// Turns a record whose bytes were copied from a snapshot (little-endian) into native
    /// order: nothing to do on a little-endian machine.
    #[inline]
    pub(crate) fn make_native_endian(&mut self) {
        #[cfg(target_endian = "big")]
        {
            for v in [
                &mut self.id_lo,
                &mut self.id_hi,
                &mut self.amount,
                &mut self.position,
                &mut self.timestamp_ns,
                &mut self.extra,
            ] {
                *v = u64::from_le(*v);
            }
            for v in [&mut self.debit, &mut self.credit, &mut self.ledger] {
                *v = u32::from_le(*v);
            }
        }
    }
}

/// An open pending transfer. `deadline_ns == u64::MAX` means no timeout (not in the heap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) id_lo: u64,
    pub(crate) id_hi: u64,
    pub(crate) amount: u64,
    pub(crate) deadline_ns: u64,
    /// Ring sequence of its retained record: unique, increasing, the expiry tie-break.
    pub(crate) ring_seq: u64,
    pub(crate) extra: u64,
    /// Position and log time of the command that created it: `GetTransfer` answers for an
    /// open pending transfer from here once its retained record has been evicted.
    pub(crate) position: u64,
    pub(crate) timestamp_ns: u64,
    pub(crate) debit: u32,
    pub(crate) credit: u32,
    heap_pos: u32,
}

impl Pending {
    pub(crate) fn id(&self) -> u128 {
        (u128::from(self.id_hi) << 64) | u128::from(self.id_lo)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) last_seq: u64,
    pub(crate) last_position: u64,
    pub(crate) last_timestamp_ns: u64,
    pub(crate) last_result: u8,
}

const HEAP_NONE: u32 = u32::MAX;

/// Index hashes of one transfer of a batch, computed once and used by both prefetch stages
/// and the lookups.
#[derive(Clone, Copy, Debug)]
struct Keys {
    debit: u64,
    credit: u64,
    id: u64,
    /// Slots that the debit and credit accounts' index buckets named when their records were
    /// prefetched ([`NO_SLOT`]: none yet); a guess, used only once the record's id confirms it.
    debit_slot: u32,
    credit_slot: u32,
}

/// [`Keys`] slot guess meaning "look it up".
const NO_SLOT: u32 = u32::MAX;

/// How many transfers ahead of the one being applied the batch loop prefetches index buckets
/// (records are prefetched at half this distance, once their buckets have arrived).
const PREFETCH_DISTANCE: usize = 16;

/// Accounts up to which the batch loop does not prefetch account index buckets and records:
/// 16384 records (1 MiB) and their index stay in a core's L2 cache between batches.
const ACCOUNTS_CACHE_RESIDENT: usize = 16_384;

/// FIFO ring of retained transfers with an index by id. Evicting the oldest record only moves
/// the head: the index treats entries outside the live range as free (see `retention.rs`).
#[derive(Clone)]
/// The two-stage prefetch of a batch of transfers, shared by the fast path ([`Batch`]) and the
/// general one: `PREFETCH_DISTANCE` entries ahead, the index buckets of the transfer's
/// accounts and id; half as far ahead (the buckets are in cache by then), the account records,
/// whose slots are kept in the keys as guesses for the look-ups, and the retention buckets
/// past an overflowed pair (`RetentionIndex::prefetch_overflow`).
struct Prefetch<'t> {
    account_index: &'t Index,
    accounts: &'t [AccountRecord],
    ring: &'t Ring,
    /// Whether the account tables are worth prefetching (not when they stay in cache).
    accounts_too: bool,
}

impl Prefetch<'_> {
    /// Starts the pipeline for the first entries.
    #[inline(always)]
    fn start(&self, keys: &mut [Keys]) {
        for k in keys.iter().take(PREFETCH_DISTANCE) {
            self.buckets(k);
        }
        if self.accounts_too {
            for k in keys.iter_mut().take(PREFETCH_DISTANCE / 2) {
                self.records(k);
            }
        }
    }

    /// Keeps it going while entry `i` is applied.
    #[inline(always)]
    fn ahead(&self, keys: &mut [Keys], i: usize) {
        if let Some(k) = keys.get(i + PREFETCH_DISTANCE) {
            self.buckets(k);
        }
        if let Some(k) = keys.get(i + PREFETCH_DISTANCE / 2) {
            self.ring.index.prefetch_overflow(k.id, self.ring.live());
        }
        if self.accounts_too {
            if let Some(k) = keys.get_mut(i + PREFETCH_DISTANCE / 2) {
                self.records(k);
            }
        }
    }

    #[inline(always)]
    fn buckets(&self, k: &Keys) {
        if self.accounts_too {
            self.account_index.prefetch(k.debit);
            self.account_index.prefetch(k.credit);
        }
        self.ring.index.prefetch(k.id);
    }

    #[inline(always)]
    fn records(&self, k: &mut Keys) {
        for (hash, guess) in [(k.debit, &mut k.debit_slot), (k.credit, &mut k.credit_slot)] {
            if let Some(slot) = self.account_index.peek(hash) {
                if let Some(rec) = self.accounts.get(slot as usize) {
                    crate::prefetch::read(rec);
                    *guess = slot;
                }
            }
        }
    }
}

pub(crate) struct Ring {
    pub(crate) records: MappedTable<Retained>,
    capacity: u64,
    retained_max: u64,
    /// Sequence stored in slot 0 on the first lap (0, or the head after a restore).
    pub(crate) base_seq: u64,
    /// Sequence of the oldest live record.
    pub(crate) head_seq: u64,
    /// Sequence the next record gets.
    pub(crate) next_seq: u64,
    /// `slot(head_seq)` and `slot(next_seq)`, kept incrementally (no division on the hot path).
    head_slot: u64,
    next_slot: u64,
    pub(crate) index: RetentionIndex,
    /// A copy of the live records being taken while the ring keeps changing (see
    /// [`RingCopy`]); `None` almost always.
    copy: Option<Box<RingCopy>>,
}

/// A copy of the ring's live records as they were when it began, taken oldest first while
/// commands go on. Records are written in two ways only: appended into the slot of a record
/// `capacity` sequences older (the oldest, evicted), and changed in place when a pending
/// transfer is posted, voided or expires. So the copy stays ahead of the first
/// ([`Ring::copy_ahead`] before every command), and keeps the value, as it was at the start,
/// of any record changed before it was copied (`originals`, put back when drained).
#[derive(Clone)]
struct RingCopy {
    /// Records copied and not yet drained (the first is sequence `start + drained`).
    records: Vec<Retained>,
    start: u64,
    /// Records drained so far.
    drained: u64,
    /// Next sequence to copy.
    next: u64,
    /// First sequence not in the copy.
    end: u64,
    /// Records changed in place before they were copied, as they were at the start.
    originals: Vec<(u64, Retained)>,
}

/// A copy of the accounts table as it was when it began, taken a step at a time while
/// commands go on (slots `next..end` are still to copy). Balances are changed in place, so
/// every write to an account goes through [`AccountsCopy::before_write`] first: while the
/// account is still to copy, its value is saved once (the record's `saved_epoch` says it was)
/// and copied in its place when the copy reaches it. When no copy is in progress `next` and
/// `end` are equal and the barrier costs one compare. Accounts created during the copy lie at
/// or beyond `end` and are not part of it.
#[derive(Clone, Debug, Default)]
pub(crate) struct AccountsCopy {
    next: u32,
    end: u32,
    /// Distinguishes this copy's saved records from earlier copies' (starts at 1).
    epoch: u64,
    active: bool,
    /// Accounts copied and not yet drained (the first is slot `drained`).
    copied: Vec<Account>,
    drained: u32,
    /// Values at the start of accounts changed before they were copied, by slot.
    originals: std::collections::HashMap<u32, Account>,
}

impl AccountsCopy {
    /// Call before changing account `slot` (`rec`).
    #[inline(always)]
    fn before_write(&mut self, slot: u32, rec: &mut AccountRecord) {
        if slot.wrapping_sub(self.next) < self.end.wrapping_sub(self.next)
            && rec.saved_epoch != self.epoch
        {
            self.save(slot, rec);
        }
    }

    #[cold]
    #[inline(never)]
    fn save(&mut self, slot: u32, rec: &mut AccountRecord) {
        rec.saved_epoch = self.epoch;
        self.originals.insert(slot, rec.account);
    }

    /// Begins a copy of the first `len` accounts.
    pub(crate) fn begin(&mut self, len: usize) {
        self.epoch += 1;
        self.next = 0;
        self.end = len as u32;
        self.active = true;
        self.copied.clear();
        self.drained = 0;
        self.originals.clear();
    }

    /// Whether a copy is in progress (until its last accounts are drained).
    pub(crate) fn copying(&self) -> bool {
        self.active
    }

    /// Copies up to `n` more accounts from `table`.
    pub(crate) fn step(&mut self, table: &[AccountRecord], n: usize) {
        let from = self.next as usize;
        let to = (from + n).min(self.end as usize);
        let epoch = self.epoch;
        for (slot, rec) in (from..to).zip(&table[from..to]) {
            let account = if rec.saved_epoch == epoch {
                self.originals.remove(&(slot as u32)).unwrap_or(rec.account)
            } else {
                rec.account
            };
            self.copied.push(account);
        }
        self.next = to as u32;
    }

    /// Takes the accounts copied since the last drain, as `(slot of the first, accounts)`;
    /// ends the copy once all are drained. `None` when no copy is in progress.
    pub(crate) fn drain(&mut self) -> Option<(u64, Vec<Account>)> {
        if !self.active {
            return None;
        }
        let offset = self.drained;
        let copied = std::mem::take(&mut self.copied);
        self.drained += copied.len() as u32;
        if self.next == self.end {
            // Done: the barrier's range becomes empty.
            self.active = false;
            self.next = 0;
            self.end = 0;
            self.originals = Default::default();
        }
        Some((u64::from(offset), copied))
    }
}

impl Ring {
    fn new(retained_max: u32) -> Ring {
        let capacity = retained_max as usize + TRANSFERS_PER_COMMAND_MAX;
        // Every slot exists from the start, zeroed by the kernel (an anonymous mapping of its
        // own, mapped on first touch, page-aligned so that each record is one cache line, and
        // on small pages: see the crate docs): no first-lap special case, and restore reads
        // straight into place.
        let records = MappedTable::zeroed(capacity);
        Ring {
            records,
            capacity: capacity as u64,
            retained_max: u64::from(retained_max),
            base_seq: 0,
            head_seq: 0,
            next_seq: 0,
            head_slot: 0,
            next_slot: 0,
            index: RetentionIndex::with_capacity(capacity),
            copy: None,
        }
    }

    /// Slot of a live `seq` (a division: off the hot path, which keeps slots incrementally).
    fn slot(&self, seq: u64) -> usize {
        ((seq - self.base_seq) % self.capacity) as usize
    }

    /// Slot of the live record `offset` records after the head (no division).
    #[inline]
    fn slot_at(&self, offset: u64) -> usize {
        let slot = self.head_slot + offset;
        (if slot >= self.capacity {
            slot - self.capacity
        } else {
            slot
        }) as usize
    }

    fn wrap_forward(&self, slot: u64) -> u64 {
        if slot + 1 == self.capacity {
            0
        } else {
            slot + 1
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.next_seq - self.head_seq
    }

    #[inline]
    fn live(&self) -> Live {
        Live {
            head_seq: self.head_seq,
            len: self.len(),
        }
    }

    fn find(&self, id: u128) -> Option<u64> {
        self.find_hashed(id, id_hash(id))
    }

    /// The sequence of the live record with `id` (`Ok`), else where its index entry would go
    /// (`Err`, a hint for [`Ring::push_hinted`]); `hash` is `id_hash(id)`.
    #[inline(always)]
    fn probe(&self, id: u128, hash: u64) -> Result<u64, usize> {
        let offset = self.index.probe(hash, self.live(), |offset| {
            self.records[self.slot_at(offset)].id() == id
        })?;
        Ok(self.head_seq + offset)
    }

    /// [`Ring::find`] with `id_hash(id)` already computed.
    #[inline]
    fn find_hashed(&self, id: u128, hash: u64) -> Option<u64> {
        let offset = self.index.find(hash, self.live(), |offset| {
            self.records[self.slot_at(offset)].id() == id
        })?;
        Some(self.head_seq + offset)
    }

    fn get(&self, seq: u64) -> Option<&Retained> {
        (seq >= self.head_seq && seq < self.next_seq).then(|| &self.records[self.slot(seq)])
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Retained> {
        if seq < self.head_seq || seq >= self.next_seq {
            return None;
        }
        let slot = self.slot(seq);
        if let Some(copy) = self.copy.as_deref_mut() {
            if (copy.next..copy.end).contains(&seq) {
                copy.originals.push((seq, self.records[slot]));
            }
        }
        Some(&mut self.records[slot])
    }

    /// Begins a copy of the live records ([`RingCopy`]).
    pub(crate) fn copy_begin(&mut self) {
        self.copy = Some(Box::new(RingCopy {
            records: Vec::new(),
            start: self.head_seq,
            drained: 0,
            next: self.head_seq,
            end: self.next_seq,
            originals: Vec::new(),
        }));
    }

    /// Records in the copy in progress (or 0).
    pub(crate) fn copy_len(&self) -> u64 {
        self.copy.as_deref().map_or(0, |c| c.end - c.start)
    }

    /// Copies the records of the copy in progress up to (not including) sequence `upto`.
    fn copy_upto(&mut self, upto: u64) {
        let Some(mut copy) = self.copy.take() else {
            return;
        };
        let upto = upto.min(copy.end);
        while copy.next < upto {
            let slot = self.slot(copy.next);
            let run = (upto - copy.next).min(self.capacity - slot as u64) as usize;
            copy.records
                .extend_from_slice(&self.records[slot..slot + run]);
            copy.next += run as u64;
        }
        self.copy = Some(copy);
    }

    /// Before a command: copies every record of the copy in progress that the command could
    /// overwrite (it appends at most `TRANSFERS_PER_COMMAND_MAX` records, each into the slot of
    /// the record `capacity` sequences older).
    #[inline]
    fn copy_ahead(&mut self) {
        if self.copy.is_some() {
            let reach =
                (self.next_seq + TRANSFERS_PER_COMMAND_MAX as u64).saturating_sub(self.capacity);
            self.copy_upto(reach);
        }
    }

    /// Whether a copy is in progress.
    pub(crate) fn copying(&self) -> bool {
        self.copy.is_some()
    }

    /// Copies up to `records` more records of the copy in progress; returns whether all
    /// have been copied (the copy then ends once drained).
    pub(crate) fn copy_step(&mut self, records: u64) -> bool {
        let Some(next) = self.copy.as_deref().map(|c| c.next) else {
            return true;
        };
        self.copy_upto(next.saturating_add(records));
        self.copy.as_deref().is_none_or(|c| c.next == c.end)
    }

    /// Takes the records copied since the last drain, as `(offset from the first record,
    /// records)`, with those changed since the copy began put back as they were; ends the
    /// copy once it is complete.
    pub(crate) fn copy_drain(&mut self) -> Option<(u64, Vec<Retained>)> {
        let copy = self.copy.as_deref_mut()?;
        let offset = copy.drained;
        let mut records = std::mem::take(&mut copy.records);
        let (from, to) = (
            copy.start + offset,
            copy.start + offset + records.len() as u64,
        );
        // Newest first, so that a record changed twice ends as it was at the start.
        for &(seq, original) in copy.originals.iter().rev() {
            if (from..to).contains(&seq) {
                records[(seq - from) as usize] = original;
            }
        }
        copy.originals.retain(|&(seq, _)| seq >= to);
        copy.drained += records.len() as u64;
        if copy.next == copy.end {
            self.copy = None;
        }
        Some((offset, records))
    }

    /// [`Ring::push_hashed`] with the index hint that [`Ring::probe`] returned for the record's
    /// id (nothing pushed since).
    #[inline(always)]
    fn push_hinted(&mut self, record: Retained, hash: u64, hint: usize) -> u64 {
        let seq = self.push_unindexed(record);
        let live = self.live();
        self.index.insert_hinted(hint, hash, seq, live);
        seq
    }

    /// Appends `record` and indexes it by `hash`, its id's `id_hash`; returns its sequence.
    #[inline]
    fn push_hashed(&mut self, record: Retained, hash: u64) -> u64 {
        let seq = self.push_unindexed(record);
        let live = self.live();
        self.index.insert(hash, seq, live);
        seq
    }

    /// Takes out the newest record, one of the records `floor..top` that an atomic group's
    /// undo takes out, newest first (see [`RetentionIndex::remove`]).
    fn pop_newest(&mut self, floor: u64, top: u64) {
        assert!(self.len() > 0 && floor < self.next_seq && self.next_seq <= top);
        self.next_slot = if self.next_slot == 0 {
            self.capacity - 1
        } else {
            self.next_slot - 1
        };
        let hash = id_hash(self.records[self.next_slot as usize].id());
        let live = Live {
            head_seq: self.head_seq,
            len: top - self.head_seq,
        };
        self.index.remove(hash, self.next_seq - 1, live, floor);
        self.next_seq -= 1;
    }

    /// Evicts the oldest records down to `retained_max`: the head moves, nothing else is
    /// written (their index entries become stale).
    fn trim(&mut self) {
        let excess = self.len().saturating_sub(self.retained_max);
        self.head_seq += excess;
        self.head_slot += excess;
        if self.head_slot >= self.capacity {
            self.head_slot -= self.capacity;
        }
    }

    /// Live records, oldest first, as at most two slices.
    pub(crate) fn live_records(&self) -> (&[Retained], &[Retained]) {
        if self.len() == 0 {
            return (&[], &[]);
        }
        let head = self.head_slot as usize;
        let end = head + self.len() as usize;
        if end <= self.records.len() {
            (&self.records[head..end], &[])
        } else {
            let wrapped = end - self.capacity as usize;
            (&self.records[head..], &self.records[..wrapped])
        }
    }

    /// Appends a record without indexing it; returns its sequence.
    #[inline(always)]
    fn push_unindexed(&mut self, record: Retained) -> u64 {
        assert!(self.len() < self.capacity, "ring slack exhausted");
        let seq = self.next_seq;
        let slot = self.next_slot as usize;
        crate::lines::store_line(&mut self.records[slot], &record);
        self.next_seq += 1;
        self.next_slot = self.wrap_forward(self.next_slot);
        seq
    }

    /// Restore: takes the `n` records already copied into the slots from `next_slot` on as
    /// the newest ones (oldest first), whose id hashes `RestoreScratch::note` has
    /// collected, and indexes them. Ids must be distinct.
    ///
    /// A bulk build: inserting ids in ring order would touch a random line of the index
    /// (hundreds of megabytes) per id, a cache and TLB miss each, which prefetching hides
    /// poorly; instead the ids are first sorted by hash range (`scratch`, a counting sort
    /// into `RESTORE_PARTS` ranges), then inserted range after range, so that each range's
    /// part of the index stays in cache. Out-of-order inserts are allowed by the index (it
    /// keeps the latest overflow sequence), and the layout does not change any answer.
    fn adopt_restored(
        &mut self,
        n: usize,
        scratch: &mut RestoreScratch,
    ) -> Result<(), &'static str> {
        const PARTS: usize = RESTORE_PARTS;
        assert!(self.len() + n as u64 <= self.capacity && scratch.hashes.len() == n);
        let base = self.next_seq - self.head_seq;
        let counts = &mut scratch.counts;
        for p in 1..=PARTS {
            counts[p] += counts[p - 1];
        }
        scratch.sorted.clear();
        scratch.sorted.resize(n, (0, 0));
        for (i, &hash) in scratch.hashes.iter().enumerate() {
            let at = &mut counts[RetentionIndex::part(hash, PARTS as u64)];
            scratch.sorted[*at as usize] = (hash, i as u64);
            *at += 1;
        }
        scratch.hashes.clear();
        counts.clear();
        counts.resize(PARTS + 1, 0);
        // Every record of the block is live from now on (its slot holds it), so that
        // duplicates within the block are found whatever the insert order.
        self.next_seq += n as u64;
        self.next_slot += n as u64;
        if self.next_slot == self.capacity {
            self.next_slot = 0;
        }
        let live = self.live();
        const AHEAD: usize = 16;
        for (k, &(hash, i)) in scratch.sorted.iter().enumerate() {
            // Within a part, ids hit the part's share of the index (under a megabyte, few
            // pages) at random: fetched ahead, that is a cache miss without a TLB miss.
            if let Some(&(ahead, _)) = scratch.sorted.get(k + AHEAD) {
                self.index.prefetch(ahead);
            }
            let offset = base + i;
            // Records are read only on a fingerprint match (rare): the sorted order is
            // random in the ring.
            let records = &self.records;
            let hint = match self.index.probe(hash, live, |o| {
                records[self.slot_at(o)].id() == records[self.slot_at(offset)].id()
            }) {
                Ok(_) => return Err("duplicate retained transfer id"),
                Err(hint) => hint,
            };
            self.index
                .insert_hinted(hint, hash, self.head_seq + offset, live);
        }
        Ok(())
    }

    /// Restore: takes the `n` records already copied into the slots from `next_slot` on as
    /// the newest ones, the index having been restored with them.
    fn adopt_indexed(&mut self, n: usize) {
        assert!(self.len() + n as u64 <= self.capacity);
        self.next_seq += n as u64;
        self.next_slot = (self.next_slot + n as u64) % self.capacity;
    }

    /// Restore: indexes the live records afresh, in bulk as [`Ring::adopt_restored`] does
    /// (the index loaded with them did not check out). Ids must be distinct.
    fn reindex(&mut self) -> Result<(), &'static str> {
        let len = self.len();
        self.index.clear();
        self.next_seq = self.head_seq;
        self.next_slot = self.head_slot;
        let mut scratch = RestoreScratch::default();
        scratch.counts.resize(RESTORE_PARTS + 1, 0);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(RESTORE_BLOCK as u64);
            for offset in done..done + n {
                scratch.add_hash(id_hash(self.records[self.slot_at(offset)].id()));
            }
            self.adopt_restored(n as usize, &mut scratch)?;
            done += n;
        }
        Ok(())
    }

    /// Empties the ring and makes `head_seq` its first sequence (restore).
    fn reset(&mut self, head_seq: u64) {
        self.base_seq = head_seq;
        self.head_seq = head_seq;
        self.next_seq = head_seq;
        self.head_slot = 0;
        self.next_slot = 0;
        self.index.clear();
    }
}

/// What [`Engine::restore_retained`] found in the records besides their checks.
#[derive(Clone, Debug, Default)]
pub(crate) struct RestoredRing {
    /// Records of open pending transfers (kind transfer, state pending).
    pub(crate) pending_records: u64,
    /// Sum of the digests of their index entries and the low bytes of their home buckets
    /// (when the index is loaded, not built), for its check.
    pub(crate) digest: u64,
    pub(crate) homes: Vec<u8>,
}

/// Retained records a restore indexes at once (64 MiB of ring, 24 MiB of scratch).
const RESTORE_BLOCK: usize = 1 << 20;

/// Parts a restore's bulk index build sorts retained ids into (see `Ring::adopt_restored`):
/// each part's share of a ten-million-id index (160 MiB) is under a megabyte.
const RESTORE_PARTS: usize = 256;

/// Reusable buffers of `Ring::adopt_restored`.
#[derive(Default)]
struct RestoreScratch {
    /// Per part: records counted, then where the next one goes.
    counts: Vec<u32>,
    /// Id hashes of the records not yet indexed, in ring order.
    hashes: Vec<u64>,
    /// `(hash, index in the block)`, by part.
    sorted: Vec<(u64, u64)>,
    /// Records of open pending transfers (kind transfer, state pending) seen.
    pending_records: u64,
    /// Sum of the records' index entry digests, and the low bytes of their home buckets
    /// (`Indexing::Check`).
    digest: u64,
    homes: Vec<u8>,
}

/// What a restore does with each retained record's id (see `RestoreScratch::note`).
#[derive(Clone, Copy)]
enum Indexing<'a> {
    /// Collect its hash for the bulk build of the index.
    Build,
    /// Add its entry's digest, to check the index the snapshot carries (this one, loaded).
    Check(&'a RetentionIndex),
}

impl RestoreScratch {
    /// Notes the id hash of the next record to index.
    #[inline]
    fn add_hash(&mut self, hash: u64) {
        self.counts[RetentionIndex::part(hash, RESTORE_PARTS as u64) + 1] += 1;
        self.hashes.push(hash);
    }

    /// Takes in restored records read into the ring, `first` records after its head (in
    /// native order already): checks their account slots (below `slots`), kinds, states and
    /// reserved bytes, counts those of open pending transfers, and notes their id hashes and
    /// parts for a build of the index, or adds up their entries' digests to check a loaded one.
    fn note(
        &mut self,
        records: &[Retained],
        first: u64,
        slots: u32,
        indexing: Indexing<'_>,
    ) -> Result<(), &'static str> {
        if self.counts.is_empty() {
            self.counts.resize(RESTORE_PARTS + 1, 0);
        }
        for (r, offset) in records.iter().zip(first..) {
            if r.debit >= slots || r.credit >= slots {
                return Err("retained transfer names an unknown account slot");
            }
            if r.kind > TransferKind::VoidPending as u8
                || r.state > TransferState::PendingExpired as u8
                || r.reserved != [0; 2]
            {
                return Err("retained transfer of unknown kind or state");
            }
            if r.kind == TransferKind::Transfer as u8 && r.state == TransferState::Pending as u8 {
                self.pending_records += 1;
            }
            let hash = id_hash(r.id());
            match indexing {
                Indexing::Build => self.add_hash(hash),
                Indexing::Check(index) => {
                    let (digest, home) = index.entry_digest(hash, offset);
                    self.digest = self.digest.wrapping_add(digest);
                    self.homes.push(home);
                }
            }
        }
        Ok(())
    }
}

/// The tables a run of posted transfers works on, borrowed apart from the [`Engine`] so
/// that the compiler keeps their pointers in registers across the loop.
struct Batch<'a> {
    accounts: &'a mut [AccountRecord],
    accounts_copy: &'a mut AccountsCopy,
    account_index: &'a Index,
    ring: &'a mut Ring,
    touched: &'a mut Vec<u32>,
    results: &'a mut Vec<ResultCode>,
    undo: &'a mut Vec<Undo>,
    undo_active: bool,
    position: u64,
    now_ns: u64,
    /// [`Engine::pushed_hash`], carried by value (in a register across [`Batch::run`]'s
    /// loop) and written back once by whoever made the batch.
    pushed_hash: u64,
}

impl Batch<'_> {
    /// Applies a batch of posted transfers (flags and timeouts zero, no pending transfer
    /// open), pushing each result; returns the set of results seen (bit `r` for result `r`),
    /// or, in an atomic batch, the first failure (index and result; the caller undoes).
    /// Works ahead as [`Engine::transfers`] describes.
    #[inline(always)]
    fn run(
        &mut self,
        transfers: &[TransferSpec],
        keys: &mut [Keys],
        prefetch_accounts: bool,
        atomic: bool,
    ) -> Result<u32, (usize, ResultCode)> {
        self.prefetch(prefetch_accounts).start(keys);
        let mut seen = 0u32;
        for (i, t) in transfers.iter().enumerate() {
            self.prefetch(prefetch_accounts).ahead(keys, i);
            let r = self.transfer(t, &keys[i]);
            if r != ResultCode::Ok && atomic {
                return Err((i, r));
            }
            self.results.push(r);
            seen |= 1 << r as u32;
        }
        Ok(seen)
    }

    /// [`Batch::transfer`] of one transfer outside [`Batch::run`]; returns its result and
    /// the batch's `pushed_hash`, for the engine to take back.
    #[inline(always)]
    fn transfer_alone(mut self, t: &TransferSpec, k: &Keys) -> (ResultCode, u64) {
        let r = self.transfer(t, k);
        (r, self.pushed_hash)
    }

    #[inline(always)]
    fn prefetch(&self, accounts_too: bool) -> Prefetch<'_> {
        Prefetch {
            account_index: self.account_index,
            accounts: self.accounts,
            ring: &*self.ring,
            accounts_too,
        }
    }

    /// [`Engine::create_transfer`] for a posted transfer (`flags` and `timeout_s` zero)
    /// while no pending transfer is open, so that an id in use can only be in the retention
    /// ring: the same checks in the same order, and the same answers.
    #[inline(always)]
    fn transfer(&mut self, t: &TransferSpec, k: &Keys) -> ResultCode {
        debug_assert!(t.flags == 0 && t.timeout_s == 0);
        if (t.id == 0)
            | (t.debit_account_id == 0)
            | (t.credit_account_id == 0)
            | (t.ledger == 0)
            | (t.amount == 0)
            | (t.debit_account_id == t.credit_account_id)
        {
            return invalid_transfer(t);
        }
        let accounts = &*self.accounts;
        let index = self.account_index;
        let (Some(debit), Some(credit)) = (
            resolve_account(accounts, index, t.debit_account_id, k.debit, k.debit_slot),
            resolve_account(
                accounts,
                index,
                t.credit_account_id,
                k.credit,
                k.credit_slot,
            ),
        ) else {
            return ResultCode::AccountNotFound;
        };
        let (di, ci) = (debit as usize, credit as usize);
        let (d, c) = (&accounts[di].account, &accounts[ci].account);
        if d.ledger != t.ledger || c.ledger != t.ledger {
            return ResultCode::LedgerMismatch;
        }
        let amount = t.amount;
        let extra = u64::from(t.code) << 32;
        let hint = match self.ring.probe(t.id, k.id) {
            Ok(seq) => {
                let r = self.ring.get(seq).expect("indexed records are live");
                let same = r.kind == TransferKind::Transfer as u8
                    && r.debit == debit
                    && r.credit == credit
                    && r.amount == amount
                    && r.ledger == t.ledger
                    && r.extra == extra
                    && r.state == TransferState::Posted as u8;
                return if same {
                    ResultCode::TransferExists
                } else {
                    ResultCode::TransferExistsWithDifferentFields
                };
            }
            Err(hint) => hint,
        };
        // `posted + amount <= posted + pending + amount`: when the totals do not overflow,
        // neither do the new posted columns (the general path checks all four).
        let (Some(d_total), Some(c_total)) = (
            d.debits_posted
                .checked_add(d.debits_pending)
                .and_then(|v| v.checked_add(amount)),
            c.credits_posted
                .checked_add(c.credits_pending)
                .and_then(|v| v.checked_add(amount)),
        ) else {
            return ResultCode::Overflow;
        };
        let (d_new, c_new) = (d.debits_posted + amount, c.credits_posted + amount);
        if d.flags & af::DEBITS_MUST_NOT_EXCEED_CREDITS != 0 && d_total > d.credits_posted {
            return ResultCode::InsufficientFunds;
        }
        if c.flags & af::CREDITS_MUST_NOT_EXCEED_DEBITS != 0 && c_total > c.debits_posted {
            return ResultCode::ExceedsDebits;
        }
        // After this point the transfer must succeed.
        if self.undo_active {
            push_transfer_undo(self.undo, (debit, *d), (credit, *c));
        }
        let position = self.position;
        {
            let d = &mut self.accounts[di];
            self.accounts_copy.before_write(debit, d);
            d.account.debits_posted = d_new;
            if d.touched_position != position {
                d.touched_position = position;
                self.touched.push(debit);
            }
        }
        {
            let c = &mut self.accounts[ci];
            self.accounts_copy.before_write(credit, c);
            c.account.credits_posted = c_new;
            if c.touched_position != position {
                c.touched_position = position;
                self.touched.push(credit);
            }
        }
        let record = Retained {
            id_lo: t.id as u64,
            id_hi: (t.id >> 64) as u64,
            debit,
            credit,
            amount,
            position,
            timestamp_ns: self.now_ns,
            extra,
            ledger: t.ledger,
            kind: TransferKind::Transfer as u8,
            state: TransferState::Posted as u8,
            reserved: [0; 2],
        };
        self.pushed_hash = pushed_record_hash(self.pushed_hash, k.id, &record);
        self.ring.push_hinted(record, k.id, hint);
        ResultCode::Ok
    }
}

/// [`Batch::run`] over tables passed one by one: as separate arguments they are known not to
/// overlap, so the compiler keeps their pointers in registers across the loop. `pushed_hash`
/// is [`Engine::pushed_hash`], read once and written back once.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn run_posted(
    (accounts, accounts_copy): (&mut [AccountRecord], &mut AccountsCopy),
    account_index: &Index,
    (ring, pushed_hash): (&mut Ring, &mut u64),
    touched: &mut Vec<u32>,
    results: &mut Vec<ResultCode>,
    undo: &mut Vec<Undo>,
    (position, now_ns, atomic): (u64, u64, bool),
    transfers: &[TransferSpec],
    keys: &mut [Keys],
    prefetch_accounts: bool,
) -> Result<u32, (usize, ResultCode)> {
    let mut batch = Batch {
        accounts,
        accounts_copy,
        account_index,
        ring,
        touched,
        results,
        undo,
        undo_active: atomic,
        position,
        now_ns,
        pushed_hash: *pushed_hash,
    };
    let ran = batch.run(transfers, keys, prefetch_accounts, atomic);
    *pushed_hash = batch.pushed_hash;
    ran
}

/// Folds what a pushed record holds beyond the balances the reply shows (its id, kind and
/// `extra`) into `h` (see [`Engine::pushed_hash`]), each a [`lane`] step of its own (two words
/// xor-ed into one could cancel: id `2^64 + 7` with code 0 and id 7 with code 1 did). The id
/// goes in as its index hash `id_hash` (which every push site has at hand): a lane step keeps
/// a difference in bit 63 alone in bit 63, so the two halves of the id, folded as they are,
/// cancelled in pairs (ids `2^63` and `2^127` did). `extra`'s and the kind's bit 63 are not
/// the user's to choose (a transfer's code and timeout lie below it; a post's or void's
/// `extra` is a hash).
#[inline(always)]
fn pushed_record_hash(h: u64, id_hash: u64, r: &Retained) -> u64 {
    lane(lane(lane(h, id_hash), r.extra), u64::from(r.kind))
}

enum Undo {
    Balances { account: u32, old: Account },
    RingPush,
    PendingInsert { slot: u32 },
}

/// Records how to undo one transfer of an atomic group: both accounts' balances before it
/// (`(slot, old account)` each) and the ring push that retained it.
fn push_transfer_undo(undo: &mut Vec<Undo>, debit: (u32, Account), credit: (u32, Account)) {
    undo.push(Undo::Balances {
        account: debit.0,
        old: debit.1,
    });
    undo.push(Undo::Balances {
        account: credit.0,
        old: credit.1,
    });
    undo.push(Undo::RingPush);
}

/// The ledger state machine. See the crate docs for semantics and invariants.
pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) accounts: Vec<AccountRecord>,
    account_index: Index,
    /// Account slots by id, and by (ledger, id), for `ListAccounts` pages.
    by_id: Order,
    by_ledger: Order,
    /// `(ledger, account slot)` of each ledger's external account.
    pub(crate) externals: Vec<(u32, u32)>,
    external_index: Index,
    pub(crate) ring: Ring,
    pub(crate) pending: Vec<Pending>,
    pending_free: Vec<u32>,
    pending_index: Index,
    pending_open: usize,
    heap: Vec<u32>,
    pub(crate) sessions: Vec<Session>,
    session_index: Index,
    pub(crate) position: u64,
    pub(crate) now_ns: u64,
    pub(crate) hash: u64,
    /// The fields of the records pushed by the command being applied that its reply's
    /// balances do not show (id, kind, `extra`), folded with [`pushed_record_hash`] at each
    /// push (`transfer_checked`, `post_or_void`, `Batch::transfer`; the ring's pushes do not
    /// hash): the state hash takes it in and sets it back to 0 ([`Engine::finish_effects`]),
    /// and an atomic group's undo sets it back to 0 ([`Engine::rollback`]).
    pushed_hash: u64,
    // Per-command scratch, preallocated.
    pub(crate) transfers_scratch: Vec<TransferSpec>,
    keys: Vec<Keys>,
    results: Vec<ResultCode>,
    touched: Vec<u32>,
    balances: Vec<Balance>,
    undo: Vec<Undo>,
    undo_active: bool,
    /// Buffers of the last dropped [`crate::snapshot::Frozen`], for the next freeze.
    pub(crate) frozen_spare: crate::snapshot::Spare,
    /// A snapshot being copied while commands go on ([`Engine::freeze_begin`]): its header
    /// and small tables, taken at the start (the accounts are copied by `accounts_copy`, the
    /// ring and its index by the ring).
    pub(crate) freezing: Option<Box<crate::snapshot::Freezing>>,
    /// The accounts table's part of that copy.
    pub(crate) accounts_copy: AccountsCopy,
    /// Test-only ([`Engine::force_general_path`]): no transfer takes the fast path.
    #[cfg(feature = "force-general-path")]
    general_path_only: bool,
    /// Test-only ([`Engine::transfer_paths`]): the transfers each path took.
    #[cfg(feature = "force-general-path")]
    paths: TransferPaths,
}

/// Test-only (feature `force-general-path`, [`Engine::transfer_paths`]): how many transfers
/// of `Transfers` commands each path took since the engine was made or restored, so that a
/// test comparing the paths can tell that both ran.
#[cfg(feature = "force-general-path")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferPaths {
    /// Taken by the fast path's batch loop (`run_posted`; in an atomic group that failed, up
    /// to and including the failing member).
    pub batch: u64,
    /// Taken by the fast path one at a time (`Batch::transfer_alone`, in a command that mixes
    /// paths).
    pub alone: u64,
    /// Taken by the general path (`create_transfer`).
    pub general: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("position", &self.position)
            .field("state_hash", &format_args!("{:#018x}", self.hash))
            .field("accounts", &self.accounts.len())
            .field("retained", &self.ring.len())
            .field("pending", &self.pending_open)
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

/// One cheap step of a hash lane: xor, then multiply by an odd constant (fully mixed later
/// by [`mix`]). Both are bijections of the lane, so a difference in any one word always
/// changes the lane, and so the hash. Not a cryptographic hash: a difference in a word's bit
/// 63 alone stays in bit 63 through the multiply, so two such differences in one lane cancel
/// (words a caller may choose freely go in hashed: see [`pushed_record_hash`]; two account
/// ids or balances differing in bit 63 alone at once go undetected).
#[inline]
fn lane(hash: u64, word: u64) -> u64 {
    (hash ^ word).wrapping_mul(0x9fb2_1c65_1e98_df25)
}

#[inline]
fn mix(hash: u64, word: u64) -> u64 {
    hash64(hash ^ word).wrapping_add(0x9e37_79b9_7f4a_7c15)
}

impl Engine {
    /// An empty engine with every table allocated (lazily mapped) from `config`.
    pub fn new(config: EngineConfig) -> Result<Engine, ConfigError> {
        config.validate()?;
        let accounts_max = config.accounts_max as usize;
        let pending_max = config.pending_max as usize;
        let sessions_max = config.sessions_max as usize;
        let ledgers_max = config.ledgers_max as usize;
        let accounts = Vec::with_capacity(accounts_max);
        crate::prefetch::advise_huge_pages(&accounts);
        Ok(Engine {
            config,
            accounts,
            account_index: Index::with_capacity(accounts_max),
            by_id: Order::with_capacity(accounts_max),
            by_ledger: Order::with_capacity(accounts_max),
            externals: Vec::with_capacity(ledgers_max),
            external_index: Index::with_capacity(ledgers_max),
            ring: Ring::new(config.transfers_retained_max),
            pending: Vec::with_capacity(pending_max),
            pending_free: Vec::with_capacity(pending_max),
            pending_index: Index::with_capacity(pending_max),
            pending_open: 0,
            heap: Vec::with_capacity(pending_max),
            sessions: Vec::with_capacity(sessions_max),
            session_index: Index::with_capacity(sessions_max),
            position: 0,
            now_ns: 0,
            hash: 0,
            pushed_hash: 0,
            transfers_scratch: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX),
            keys: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX),
            results: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX),
            touched: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX * 2),
            balances: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX * 2),
            undo: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX * 4),
            undo_active: false,
            frozen_spare: Default::default(),
            freezing: None,
            accounts_copy: AccountsCopy::default(),
            #[cfg(feature = "force-general-path")]
            general_path_only: false,
            #[cfg(feature = "force-general-path")]
            paths: TransferPaths::default(),
        })
    }

    /// Test-only (feature `force-general-path`): with `on`, every transfer of a `Transfers`
    /// command goes through the general path (`create_transfer`), none through the fast path
    /// ([`Batch`]), so that a test can check that both give the same answers, state and hash.
    /// Not part of the state (a restored engine starts with it off).
    #[cfg(feature = "force-general-path")]
    #[doc(hidden)]
    pub fn force_general_path(&mut self, on: bool) {
        self.general_path_only = on;
    }

    /// Test-only (feature `force-general-path`): the transfers each path took since the
    /// engine was made or restored.
    #[cfg(feature = "force-general-path")]
    #[doc(hidden)]
    pub fn transfer_paths(&self) -> TransferPaths {
        self.paths
    }

    /// Test-only (feature `force-general-path`): the home bucket of transfer id `id` in the
    /// retention index, so that a test can pick ids that crowd one bucket.
    #[cfg(feature = "force-general-path")]
    #[doc(hidden)]
    pub fn retention_home_bucket(&self, id: u128) -> u64 {
        self.ring.index.home_bucket(id_hash(id))
    }

    /// Whether transfers may take the fast path: always, but in tests that forced them off it
    /// ([`Engine::force_general_path`]); a constant outside those.
    #[inline(always)]
    fn fast_path_allowed(&self) -> bool {
        #[cfg(feature = "force-general-path")]
        {
            !self.general_path_only
        }
        #[cfg(not(feature = "force-general-path"))]
        {
            true
        }
    }

    /// The configuration the tables were sized from.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Last applied position (0 before the first command).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Running checksum of every applied effect, covering positions `1..=position()`.
    pub fn state_hash(&self) -> u64 {
        self.hash
    }

    /// Log time of the last applied entry (the maximum seen: time never goes backwards).
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Number of accounts.
    pub fn accounts_count(&self) -> usize {
        self.accounts.len()
    }

    /// Every account, in creation order.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> + '_ {
        self.accounts.iter().map(|r| &r.account)
    }

    /// Open pending transfers.
    pub fn pending_count(&self) -> usize {
        self.pending_open
    }

    /// Retained transfers.
    pub fn retained_count(&self) -> u64 {
        self.ring.len()
    }

    /// Tracked client sessions.
    pub fn sessions_count(&self) -> usize {
        self.sessions.len()
    }

    /// Maps every page of the tables probed at random (the account, retention, pending and
    /// session indexes) now, so that commands never take a page fault there: a first touch
    /// costs microseconds (a fraction of a millisecond for a huge page), and random inserts
    /// into fresh tables would pay it on most commands until every page had been touched.
    /// Tables filled in order (account records, the retention ring) fault in as they grow.
    /// Call once before serving (the leader does, after recovery); it
    /// raises resident memory to the indexes' full configured size.
    pub fn prefault(&self) {
        self.account_index.populate();
        self.ring.index.populate();
        self.pending_index.populate();
        self.session_index.populate();
    }

    /// Bytes of table memory reserved at start-up (virtual; pages count toward RSS only once
    /// touched, or after [`Engine::prefault`] for the indexes).
    pub fn reserved_bytes(&self) -> usize {
        self.accounts.capacity() * 64
            + self.account_index.size_bytes()
            + self.by_id.size_bytes()
            + self.by_ledger.size_bytes()
            + self.ring.records.len() * std::mem::size_of::<Retained>()
            + self.ring.index.size_bytes()
            + self.pending.capacity() * std::mem::size_of::<Pending>()
            + self.pending_index.size_bytes()
            + self.heap.capacity() * 4
            + self.pending_free.capacity() * 4
            + self.sessions.capacity() * std::mem::size_of::<Session>()
            + self.session_index.size_bytes()
    }

    // ----- lookups -----

    #[inline]
    fn find_account(&self, id: u64) -> Option<u32> {
        self.find_account_hashed(id, account_hash(id))
    }

    /// [`Engine::find_account`] with `account_hash(id)` already computed.
    #[inline]
    fn find_account_hashed(&self, id: u64, hash: u64) -> Option<u32> {
        let accounts = &self.accounts;
        self.account_index
            .find(hash, |s| accounts[s as usize].account.id == id)
    }

    #[inline(always)]
    fn prefetch(&self, accounts_too: bool) -> Prefetch<'_> {
        Prefetch {
            account_index: &self.account_index,
            accounts: &self.accounts,
            ring: &self.ring,
            accounts_too,
        }
    }

    /// An atomic group of `len` transfers failed at member `i` with `r`: undoes the members
    /// applied, reports `r` for that one and `linked_transfer_failed` for the others, and
    /// returns the set of results seen.
    fn fail_group(&mut self, len: usize, i: usize, r: ResultCode) -> u32 {
        self.rollback();
        self.results.clear();
        self.results.resize(len, ResultCode::LinkedTransferFailed);
        self.results[i] = r;
        self.touched.clear();
        1 << r as u32
    }

    fn find_external(&self, ledger: u32) -> Option<u32> {
        let externals = &self.externals;
        let i = self.external_index.find(hash64(u64::from(ledger)), |s| {
            externals[s as usize].0 == ledger
        })?;
        Some(self.externals[i as usize].1)
    }

    fn find_pending(&self, id: u128) -> Option<u32> {
        let pending = &self.pending;
        self.pending_index
            .find(hash128(id), |s| pending[s as usize].id() == id)
    }

    /// The record an open pending transfer was retained as (what its retained record holds
    /// while it is open, whether or not the ring still has it).
    fn pending_record(&self, p: &Pending) -> Retained {
        Retained {
            id_lo: p.id_lo,
            id_hi: p.id_hi,
            debit: p.debit,
            credit: p.credit,
            amount: p.amount,
            position: p.position,
            timestamp_ns: p.timestamp_ns,
            extra: p.extra,
            ledger: self.accounts[p.debit as usize].account.ledger,
            kind: TransferKind::Transfer as u8,
            state: TransferState::Pending as u8,
            reserved: [0; 2],
        }
    }

    /// The account with `id`.
    pub fn account(&self, id: u64) -> Option<Account> {
        self.find_account(id)
            .map(|i| self.accounts[i as usize].account)
    }

    /// The transfer with `id`: retained, or an open pending transfer whose retained record
    /// has been evicted (it stays answerable, and settleable, until posted, voided or expired).
    pub fn transfer(&self, id: u128) -> Option<TransferInfo> {
        let rec = match self.ring.find(id).and_then(|seq| self.ring.get(seq)) {
            Some(rec) => *rec,
            None => self.pending_record(&self.pending[self.find_pending(id)? as usize]),
        };
        let kind = kind_from_u8(rec.kind);
        Some(TransferInfo {
            id,
            debit_account_id: self.accounts[rec.debit as usize].account.id,
            credit_account_id: self.accounts[rec.credit as usize].account.id,
            amount: rec.amount,
            ledger: rec.ledger,
            kind,
            state: state_from_u8(rec.state),
            applied_position: rec.position,
            timestamp_ns: rec.timestamp_ns,
            timeout_s: if kind == TransferKind::Transfer {
                rec.extra as u32
            } else {
                0
            },
        })
    }

    /// Up to `limit` (at most [`LIST_LIMIT_MAX`]) accounts with id > `after_id`, on `ledger` if
    /// given, in id order, written into `out`; returns how many. A seek in the accounts' id
    /// (or ledger, id) order and a walk of at most `limit` entries (`order.rs`), no allocation.
    pub fn list_accounts(
        &self,
        ledger: Option<u32>,
        after_id: u64,
        limit: usize,
        out: &mut [Account; LIST_LIMIT_MAX],
    ) -> usize {
        let limit = limit.min(LIST_LIMIT_MAX);
        let records = &self.accounts;
        let mut n = 0usize;
        let mut put = |slot: u32| {
            out[n] = records[slot as usize].account;
            n += 1;
        };
        // `after_id + 1` may carry into the ledger's bits: past every id (of the ledger).
        let start = u128::from(after_id) + 1;
        match ledger {
            None => self
                .by_id
                .from(start, |s| id_key(records, s))
                .take(limit)
                .for_each(&mut put),
            Some(l) => self
                .by_ledger
                .from((u128::from(l) << 64) + start, |s| ledger_key(records, s))
                .take_while(|&s| records[s as usize].account.ledger == l)
                .take(limit)
                .for_each(&mut put),
        }
        n
    }

    // ----- apply -----

    /// Applies one typed command at `meta.position` (which must exceed [`Engine::position`]).
    ///
    /// # Panics
    /// If `meta.position <= self.position()`: the caller broke log order (a bug, not input).
    pub fn apply_command(&mut self, meta: &EntryMeta, command: &Command<'_>) -> Outcome<'_> {
        let result = match self.apply_effects(meta, command) {
            Ok(result) => result,
            Err(retry) => return retry,
        };
        let mut balances = std::mem::take(&mut self.balances);
        balances.clear();
        self.finish_effects(meta, result, |a| {
            balances.push(Balance {
                account_id: a.id,
                ledger: a.ledger,
                debits_posted: a.debits_posted,
                credits_posted: a.credits_posted,
                debits_pending: a.debits_pending,
                credits_pending: a.credits_pending,
            })
        });
        self.balances = balances;
        Outcome {
            position: meta.position,
            timestamp_ns: meta.timestamp_ns,
            client_seq: meta.client_seq,
            result,
            results: &self.results,
            balances: &self.balances,
        }
    }

    /// Applies one command's effects (everything but the state hash): `Ok` with the overall
    /// result, after which [`Engine::finish_effects`] must be called, or `Err` with the answer
    /// to a retried command (hash already updated).
    pub(crate) fn apply_effects(
        &mut self,
        meta: &EntryMeta,
        command: &Command<'_>,
    ) -> Result<ResultCode, Outcome<'static>> {
        assert!(
            meta.position > self.position,
            "position {} applied after {}",
            meta.position,
            self.position
        );
        self.position = meta.position;
        self.now_ns = self.now_ns.max(meta.timestamp_ns);
        // A snapshot copy in progress must have what this command could overwrite.
        self.ring.copy_ahead();
        self.results.clear();
        self.touched.clear();
        self.expire_due();

        if let Some(retry) = self.session_retry(meta) {
            // The log time (the engine's clock, which the entry may move) and the answer.
            self.hash = mix(
                mix(mix(self.hash, meta.position), meta.timestamp_ns),
                retry.result as u64,
            );
            return Err(retry);
        }

        let result = match *command {
            Command::CreateAccount {
                id,
                ledger,
                flags,
                code,
            } => self.create_account(id, ledger, flags, code),
            Command::Deposit {
                transfer_id,
                account_id,
                amount,
            } => self.deposit_or_withdraw(TransferKind::Deposit, transfer_id, account_id, amount),
            Command::Withdraw {
                transfer_id,
                account_id,
                amount,
            } => self.deposit_or_withdraw(TransferKind::Withdraw, transfer_id, account_id, amount),
            Command::Transfers { flags, transfers } => self.transfers(flags, transfers),
            Command::PostPending {
                id,
                pending_id,
                amount,
            } => self.post_or_void(TransferKind::PostPending, id, pending_id, amount),
            Command::VoidPending { id, pending_id } => {
                self.post_or_void(TransferKind::VoidPending, id, pending_id, None)
            }
            Command::Invalid => ResultCode::InvalidCommand,
        };
        // The ring's records were appended with streaming stores (see `lines.rs`).
        crate::lines::store_fence();
        self.ring.trim();
        self.session_record(meta, result);
        Ok(result)
    }

    /// The per-transfer results of the command just applied.
    pub(crate) fn results(&self) -> &[ResultCode] {
        &self.results
    }

    /// Second half of applying a command: hands each touched account (after the command, in
    /// first-touch order) to `balance` while folding the command's effects (its results, those
    /// balances and what else its retained records hold, [`Engine::pushed_hash`]) into the state
    /// hash, in four independent lanes so that the multiplies overlap. One pass serves the
    /// hash and the reply.
    #[inline]
    pub(crate) fn finish_effects(
        &mut self,
        meta: &EntryMeta,
        result: ResultCode,
        mut balance: impl FnMut(&Account),
    ) {
        // The entry's log time moves the engine's clock and is what the retained records and
        // the session record (its id and sequence number, when it has one) hold.
        let session = if meta.session_id == 0 {
            result as u64
        } else {
            lane(lane(result as u64, meta.session_id), meta.client_seq)
        };
        let mut lanes = [
            self.hash,
            lane(meta.position, meta.timestamp_ns),
            session,
            lane(
                self.results.len() as u64,
                std::mem::take(&mut self.pushed_hash),
            ),
        ];
        for chunk in self.results.chunks(8) {
            let mut w = 0u64;
            for (i, r) in chunk.iter().enumerate() {
                w |= (*r as u64) << (i * 8);
            }
            lanes[0] = lane(lanes[0], w);
        }
        let accounts = &self.accounts[..];
        for &i in &self.touched {
            let a = &accounts[i as usize].account;
            lanes[0] = lane(lanes[0], a.id);
            lanes[1] = lane(lanes[1], a.debits_posted);
            lanes[2] = lane(lanes[2], a.credits_posted);
            lanes[3] = lane(
                lanes[3],
                a.debits_pending ^ a.credits_pending.rotate_left(32),
            );
            balance(a);
        }
        self.hash = mix(mix(mix(mix(0, lanes[0]), lanes[1]), lanes[2]), lanes[3]);
    }

    fn session_retry(&self, meta: &EntryMeta) -> Option<Outcome<'static>> {
        if meta.session_id == 0 {
            return None;
        }
        let sessions = &self.sessions;
        let s = self.session_index.find(hash64(meta.session_id), |s| {
            sessions[s as usize].id == meta.session_id
        })?;
        let s = &self.sessions[s as usize];
        if meta.client_seq > s.last_seq {
            return None;
        }
        Some(if meta.client_seq == s.last_seq {
            Outcome {
                position: s.last_position,
                timestamp_ns: s.last_timestamp_ns,
                client_seq: meta.client_seq,
                result: ResultCode::from_u8(s.last_result).unwrap_or(ResultCode::Ok),
                results: &[],
                balances: &[],
            }
        } else {
            Outcome {
                position: meta.position,
                timestamp_ns: meta.timestamp_ns,
                client_seq: meta.client_seq,
                result: ResultCode::DuplicateRequest,
                results: &[],
                balances: &[],
            }
        })
    }

    fn session_record(&mut self, meta: &EntryMeta, result: ResultCode) {
        if meta.session_id == 0 {
            return;
        }
        let record = Session {
            id: meta.session_id,
            last_seq: meta.client_seq,
            last_position: meta.position,
            last_timestamp_ns: meta.timestamp_ns,
            last_result: result as u8,
        };
        let sessions = &self.sessions;
        let hash = hash64(meta.session_id);
        if let Some(s) = self
            .session_index
            .find(hash, |s| sessions[s as usize].id == meta.session_id)
        {
            self.sessions[s as usize] = record;
        } else if self.sessions.len() < self.config.sessions_max as usize {
            self.session_index.insert(hash, self.sessions.len() as u32);
            self.sessions.push(record);
        } else {
            // Full: forget the session whose last command is oldest (deterministic).
            let (victim, _) = self
                .sessions
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.last_position)
                .expect("sessions_max >= 1");
            self.session_index
                .remove(hash64(self.sessions[victim].id), victim as u32);
            self.sessions[victim] = record;
            self.session_index.insert(hash, victim as u32);
        }
    }

    /// Account `slot` to change (through the snapshot copy's barrier, [`AccountsCopy`]).
    #[inline]
    fn account_mut(&mut self, slot: u32) -> &mut Account {
        let rec = &mut self.accounts[slot as usize];
        self.accounts_copy.before_write(slot, rec);
        &mut rec.account
    }

    fn touch(&mut self, account: u32) {
        let rec = &mut self.accounts[account as usize];
        if rec.touched_position != self.position {
            rec.touched_position = self.position;
            self.touched.push(account);
        }
    }

    fn create_account(&mut self, id: u64, ledger: u32, flags: u16, code: u16) -> ResultCode {
        if id == 0 {
            return ResultCode::InvalidId;
        }
        if ledger == 0 {
            return ResultCode::InvalidLedger;
        }
        let rules = af::DEBITS_MUST_NOT_EXCEED_CREDITS | af::CREDITS_MUST_NOT_EXCEED_DEBITS;
        if flags & !af::ALL != 0
            || flags & rules == rules
            || (flags & af::EXTERNAL != 0 && flags & rules != 0)
        {
            return ResultCode::InvalidFlags;
        }
        let external = flags & af::EXTERNAL != 0;
        if external {
            if let Some(e) = self.find_external(ledger) {
                if self.accounts[e as usize].account.id != id {
                    return ResultCode::InvalidFlags;
                }
            }
        }
        if let Some(i) = self.find_account(id) {
            let a = self.accounts[i as usize].account;
            self.touch(i);
            return if a.ledger == ledger && a.flags == flags && a.code == code {
                ResultCode::AccountExists
            } else {
                ResultCode::AccountExistsWithDifferentFields
            };
        }
        if self.accounts.len() >= self.config.accounts_max as usize
            || (external && self.externals.len() >= self.config.ledgers_max as usize)
        {
            return ResultCode::AccountTableFull;
        }
        // After this point the command must succeed.
        let slot = self.accounts.len() as u32;
        self.accounts.push(AccountRecord {
            account: Account {
                id,
                ledger,
                flags,
                code,
                ..Account::default()
            },
            touched_position: 0,
            saved_epoch: 0,
        });
        self.account_index.insert(account_hash(id), slot);
        let records = &self.accounts;
        self.by_id.insert(slot, |s| id_key(records, s));
        self.by_ledger.insert(slot, |s| ledger_key(records, s));
        if external {
            self.external_index
                .insert(hash64(u64::from(ledger)), self.externals.len() as u32);
            self.externals.push((ledger, slot));
        }
        self.touch(slot);
        // The reply's balances (hashed with it) hold the id, not the fields set here.
        self.hash = mix(
            self.hash,
            u64::from(ledger) | (u64::from(flags) << 32) | (u64::from(code) << 48),
        );
        ResultCode::Ok
    }

    fn deposit_or_withdraw(
        &mut self,
        kind: TransferKind,
        transfer_id: u128,
        account_id: u64,
        amount: u64,
    ) -> ResultCode {
        if transfer_id == 0 || account_id == 0 {
            return ResultCode::InvalidId;
        }
        if amount == 0 {
            return ResultCode::InvalidAmount;
        }
        let Some(account) = self.find_account(account_id) else {
            return ResultCode::AccountNotFound;
        };
        let ledger = self.accounts[account as usize].account.ledger;
        let Some(external) = self.find_external(ledger) else {
            return ResultCode::AccountNotFound;
        };
        if external == account {
            return ResultCode::SameAccount;
        }
        let (debit, credit) = if kind == TransferKind::Deposit {
            (external, account)
        } else {
            (account, external)
        };
        self.transfer_checked(
            kind,
            transfer_id,
            id_hash(transfer_id),
            debit,
            credit,
            amount,
            ledger,
            false,
            0,
            0,
        )
    }

    fn transfers(&mut self, flags: u16, transfers: &[TransferSpec]) -> ResultCode {
        if transfers.is_empty() || transfers.len() > TRANSFERS_PER_COMMAND_MAX {
            return ResultCode::InvalidCommand;
        }
        if flags & !batch_flags::ALL != 0 {
            self.results
                .resize(transfers.len(), ResultCode::InvalidFlags);
            return ResultCode::InvalidFlags;
        }
        let atomic = flags & batch_flags::ATOMIC != 0;
        self.undo.clear();
        self.undo_active = atomic;
        // Every hash once, in one pass (independent multiplies overlap), then two prefetch
        // stages ahead of the transfer being applied.
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(transfers.iter().map(|t| Keys {
            debit: account_hash(t.debit_account_id),
            credit: account_hash(t.credit_account_id),
            id: id_hash(t.id),
            debit_slot: NO_SLOT,
            credit_slot: NO_SLOT,
        }));
        // Account tables small enough to stay in the core's cache are not worth prefetching
        // (the retention index, sized by retention, always is).
        let prefetch_accounts = self.accounts.len() > ACCOUNTS_CACHE_RESIDENT;
        // Only posted transfers and no pending transfer open (none can open then): the
        // whole batch runs on the fast path, over tables borrowed apart.
        let fast = self.fast_path_allowed();
        let all_posted = fast
            && self.pending_open == 0
            && transfers.iter().all(|t| t.flags == 0 && t.timeout_s == 0);
        if !all_posted {
            self.prefetch(prefetch_accounts).start(&mut keys);
        }
        // Bit `r` set for every result `r` seen: the overall result is the lowest non-ok one.
        let mut seen = 0u32;
        let first_failure = if all_posted {
            let run = run_posted(
                (&mut self.accounts[..], &mut self.accounts_copy),
                &self.account_index,
                (&mut self.ring, &mut self.pushed_hash),
                &mut self.touched,
                &mut self.results,
                &mut self.undo,
                (self.position, self.now_ns, atomic),
                transfers,
                &mut keys,
                prefetch_accounts,
            );
            #[cfg(feature = "force-general-path")]
            {
                self.paths.batch += match run {
                    Ok(_) => transfers.len(),
                    Err((i, _)) => i + 1,
                } as u64;
            }
            match run {
                Ok(s) => {
                    seen = s;
                    None
                }
                Err(failure) => Some(failure),
            }
        } else {
            None
        };
        if let Some((i, r)) = first_failure {
            seen = self.fail_group(transfers.len(), i, r);
        }
        for i in 0..transfers.len() {
            if all_posted {
                break;
            }
            self.prefetch(prefetch_accounts).ahead(&mut keys, i);
            let t = &transfers[i];
            let r = if fast && t.flags == 0 && t.timeout_s == 0 && self.pending_open == 0 {
                #[cfg(feature = "force-general-path")]
                {
                    self.paths.alone += 1;
                }
                let (r, pushed_hash) = self.batch().transfer_alone(t, &keys[i]);
                self.pushed_hash = pushed_hash;
                r
            } else {
                #[cfg(feature = "force-general-path")]
                {
                    self.paths.general += 1;
                }
                self.create_transfer(t, &keys[i])
            };
            if r != ResultCode::Ok && atomic {
                seen = self.fail_group(transfers.len(), i, r);
                break;
            }
            self.results.push(r);
            seen |= 1 << r as u32;
        }
        self.keys = keys;
        self.undo_active = false;
        self.undo.clear();
        let failed = seen & !1;
        if failed == 0 {
            ResultCode::Ok
        } else {
            ResultCode::from_u8(failed.trailing_zeros() as u8).unwrap_or(ResultCode::Ok)
        }
    }

    fn rollback(&mut self) {
        // The ring's records that the group pushed: `floor..top`.
        let pushed = self
            .undo
            .iter()
            .filter(|u| matches!(u, Undo::RingPush))
            .count() as u64;
        let top = self.ring.next_seq;
        let floor = top - pushed;
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Balances { account, old } => *self.account_mut(account) = old,
                Undo::RingPush => self.ring.pop_newest(floor, top),
                Undo::PendingInsert { slot } => self.pending_remove(slot),
            }
        }
        // The group pushed every record of its command, and took them all out.
        self.pushed_hash = 0;
    }

    /// The tables a batch of posted transfers works on, borrowed apart (see [`Batch`]).
    #[inline(always)]
    fn batch(&mut self) -> Batch<'_> {
        Batch {
            accounts: &mut self.accounts[..],
            accounts_copy: &mut self.accounts_copy,
            account_index: &self.account_index,
            ring: &mut self.ring,
            touched: &mut self.touched,
            results: &mut self.results,
            undo: &mut self.undo,
            undo_active: self.undo_active,
            position: self.position,
            now_ns: self.now_ns,
            pushed_hash: self.pushed_hash,
        }
    }

    #[inline(never)]
    fn create_transfer(&mut self, t: &TransferSpec, k: &Keys) -> ResultCode {
        let pending = t.flags & transfer_flags::PENDING != 0;
        // One test for the common, valid case; the precedence order is worked out only when
        // something is wrong.
        if (t.id == 0)
            | (t.debit_account_id == 0)
            | (t.credit_account_id == 0)
            | (t.ledger == 0)
            | (t.flags & !transfer_flags::ALL != 0)
            | (t.timeout_s != 0 && !pending)
            | (t.amount == 0)
            | (t.debit_account_id == t.credit_account_id)
        {
            return invalid_transfer(t);
        }
        let (Some(debit), Some(credit)) = (
            resolve_account(
                &self.accounts,
                &self.account_index,
                t.debit_account_id,
                k.debit,
                k.debit_slot,
            ),
            resolve_account(
                &self.accounts,
                &self.account_index,
                t.credit_account_id,
                k.credit,
                k.credit_slot,
            ),
        ) else {
            return ResultCode::AccountNotFound;
        };
        if self.accounts[debit as usize].account.ledger != t.ledger
            || self.accounts[credit as usize].account.ledger != t.ledger
        {
            return ResultCode::LedgerMismatch;
        }
        let extra = u64::from(t.timeout_s) | (u64::from(t.code) << 32);
        self.transfer_checked(
            TransferKind::Transfer,
            t.id,
            k.id,
            debit,
            credit,
            t.amount,
            t.ledger,
            pending,
            t.timeout_s,
            extra,
        )
    }

    /// Checks an id already in use: the retained record, or an open pending transfer whose
    /// record has been evicted. `same` compares the stored fields with the request. When the
    /// id is free, returns the retention index hint for pushing its record.
    #[inline(always)]
    fn existing(
        &self,
        id: u128,
        id_hash: u64,
        same: impl Fn(&Retained) -> bool,
    ) -> Result<usize, ResultCode> {
        let rec = match self.ring.probe(id, id_hash) {
            Ok(seq) => *self.ring.get(seq).expect("indexed records are live"),
            Err(hint) => {
                if self.pending_open == 0 {
                    return Ok(hint);
                }
                let Some(slot) = self.find_pending(id) else {
                    return Ok(hint);
                };
                self.pending_record(&self.pending[slot as usize])
            }
        };
        Err(if same(&rec) {
            ResultCode::TransferExists
        } else {
            ResultCode::TransferExistsWithDifferentFields
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn transfer_checked(
        &mut self,
        kind: TransferKind,
        id: u128,
        id_hash: u64,
        debit: u32,
        credit: u32,
        amount: u64,
        ledger: u32,
        pending: bool,
        timeout_s: u32,
        extra: u64,
    ) -> ResultCode {
        // Borrowed, not copied: the undo log copies the old balances only inside atomic groups.
        let d = &self.accounts[debit as usize].account;
        let c = &self.accounts[credit as usize].account;
        let same = |r: &Retained| {
            r.kind == kind as u8
                && r.debit == debit
                && r.credit == credit
                && r.amount == amount
                && r.ledger == ledger
                && r.extra == extra
                && (r.state != TransferState::Posted as u8) == pending
        };
        let hint = match self.existing(id, id_hash, same) {
            Ok(hint) => hint,
            Err(r) => return r,
        };
        let (d_new, c_new) = if pending {
            (
                d.debits_pending.checked_add(amount),
                c.credits_pending.checked_add(amount),
            )
        } else {
            (
                d.debits_posted.checked_add(amount),
                c.credits_posted.checked_add(amount),
            )
        };
        let d_total = d.debits_posted.checked_add(d.debits_pending);
        let c_total = c.credits_posted.checked_add(c.credits_pending);
        let (Some(d_new), Some(c_new), Some(d_total), Some(c_total)) = (
            d_new,
            c_new,
            d_total.and_then(|t| t.checked_add(amount)),
            c_total.and_then(|t| t.checked_add(amount)),
        ) else {
            return ResultCode::Overflow;
        };
        if d.flags & af::DEBITS_MUST_NOT_EXCEED_CREDITS != 0 && d_total > d.credits_posted {
            return ResultCode::InsufficientFunds;
        }
        if c.flags & af::CREDITS_MUST_NOT_EXCEED_DEBITS != 0 && c_total > c.debits_posted {
            return ResultCode::ExceedsDebits;
        }
        if pending && self.pending_open >= self.config.pending_max as usize {
            return ResultCode::TransferTableFull;
        }
        // After this point the transfer must succeed.
        if self.undo_active {
            push_transfer_undo(&mut self.undo, (debit, *d), (credit, *c));
        }
        {
            let d = self.account_mut(debit);
            if pending {
                d.debits_pending = d_new;
            } else {
                d.debits_posted = d_new;
            }
        }
        {
            let c = self.account_mut(credit);
            if pending {
                c.credits_pending = c_new;
            } else {
                c.credits_posted = c_new;
            }
        }
        self.touch(debit);
        self.touch(credit);
        let record = Retained {
            id_lo: id as u64,
            id_hi: (id >> 64) as u64,
            debit,
            credit,
            amount,
            position: self.position,
            timestamp_ns: self.now_ns,
            extra,
            ledger,
            kind: kind as u8,
            state: if pending {
                TransferState::Pending
            } else {
                TransferState::Posted
            } as u8,
            reserved: [0; 2],
        };
        self.pushed_hash = pushed_record_hash(self.pushed_hash, id_hash, &record);
        let seq = self.ring.push_hinted(record, id_hash, hint);
        if pending {
            let deadline_ns = if timeout_s == 0 {
                u64::MAX
            } else {
                self.now_ns
                    .saturating_add(u64::from(timeout_s).saturating_mul(NS_PER_S))
            };
            let slot = self.pending_insert(Pending {
                id_lo: id as u64,
                id_hi: (id >> 64) as u64,
                amount,
                deadline_ns,
                ring_seq: seq,
                extra,
                position: self.position,
                timestamp_ns: self.now_ns,
                debit,
                credit,
                heap_pos: HEAP_NONE,
            });
            if self.undo_active {
                self.undo.push(Undo::PendingInsert { slot });
            }
        }
        ResultCode::Ok
    }

    fn post_or_void(
        &mut self,
        kind: TransferKind,
        id: u128,
        pending_id: u128,
        amount: Option<u64>,
    ) -> ResultCode {
        if id == 0 || pending_id == 0 {
            return ResultCode::InvalidId;
        }
        if amount == Some(0) {
            return ResultCode::InvalidAmount;
        }
        let extra = (hash128(pending_id) & !1) | u64::from(amount.is_none());
        let same = |r: &Retained| {
            r.kind == kind as u8 && r.extra == extra && amount.is_none_or(|a| a == r.amount)
        };
        if let Err(r) = self.existing(id, id_hash(id), same) {
            return r;
        }
        let Some(slot) = self.find_pending(pending_id) else {
            let state = self
                .ring
                .find(pending_id)
                .and_then(|seq| self.ring.get(seq))
                .map(|r| (r.kind, r.state));
            return match state {
                Some((k, s)) if k == TransferKind::Transfer as u8 => match state_from_u8(s) {
                    TransferState::PendingPosted => ResultCode::PendingAlreadyPosted,
                    TransferState::PendingVoided => ResultCode::PendingAlreadyVoided,
                    TransferState::PendingExpired => ResultCode::PendingExpired,
                    _ => ResultCode::PendingNotFound,
                },
                _ => ResultCode::PendingNotFound,
            };
        };
        let p = self.pending[slot as usize];
        let settled = amount.unwrap_or(p.amount);
        if settled > p.amount {
            return ResultCode::AmountExceedsPending;
        }
        let post = kind == TransferKind::PostPending;
        let d = self.accounts[p.debit as usize].account;
        let c = self.accounts[p.credit as usize].account;
        let (d_posted, c_posted) = if post {
            match (
                d.debits_posted.checked_add(settled),
                c.credits_posted.checked_add(settled),
            ) {
                (Some(dp), Some(cp)) => (dp, cp),
                _ => return ResultCode::Overflow,
            }
        } else {
            (d.debits_posted, c.credits_posted)
        };
        // After this point the command must succeed. Totals cannot overflow: posted grows by at
        // most what pending shrinks by.
        {
            let d = self.account_mut(p.debit);
            d.debits_pending -= p.amount;
            d.debits_posted = d_posted;
        }
        {
            let c = self.account_mut(p.credit);
            c.credits_pending -= p.amount;
            c.credits_posted = c_posted;
        }
        let new_state = if post {
            TransferState::PendingPosted
        } else {
            TransferState::PendingVoided
        };
        if let Some(r) = self.ring.get_mut(p.ring_seq) {
            r.state = new_state as u8;
        }
        self.pending_remove(slot);
        self.touch(p.debit);
        self.touch(p.credit);
        let record = Retained {
            id_lo: id as u64,
            id_hi: (id >> 64) as u64,
            debit: p.debit,
            credit: p.credit,
            amount: settled,
            position: self.position,
            timestamp_ns: self.now_ns,
            extra,
            ledger: d.ledger,
            kind: kind as u8,
            state: TransferState::Posted as u8,
            reserved: [0; 2],
        };
        let hash = id_hash(id);
        self.pushed_hash = pushed_record_hash(self.pushed_hash, hash, &record);
        self.ring.push_hashed(record, hash);
        ResultCode::Ok
    }

    /// Expires every pending transfer whose deadline is at or before `now_ns`.
    fn expire_due(&mut self) {
        while let Some(&top) = self.heap.first() {
            let p = self.pending[top as usize];
            if p.deadline_ns > self.now_ns {
                break;
            }
            {
                let d = self.account_mut(p.debit);
                d.debits_pending -= p.amount;
            }
            {
                let c = self.account_mut(p.credit);
                c.credits_pending -= p.amount;
            }
            if let Some(r) = self.ring.get_mut(p.ring_seq) {
                r.state = TransferState::PendingExpired as u8;
            }
            self.pending_remove(top);
            self.hash = mix(mix(mix(self.hash, 0xe1), p.id_lo), p.id_hi);
        }
    }

    // ----- pending slab and deadline heap -----

    fn pending_insert(&mut self, p: Pending) -> u32 {
        let slot = if let Some(slot) = self.pending_free.pop() {
            self.pending[slot as usize] = p;
            slot
        } else {
            self.pending.push(p);
            (self.pending.len() - 1) as u32
        };
        self.pending_index.insert(hash128(p.id()), slot);
        self.pending_open += 1;
        if p.deadline_ns != u64::MAX {
            let pos = self.heap.len();
            self.heap.push(slot);
            self.pending[slot as usize].heap_pos = pos as u32;
            self.sift_up(pos);
        }
        slot
    }

    fn pending_remove(&mut self, slot: u32) {
        let p = self.pending[slot as usize];
        self.pending_index.remove(hash128(p.id()), slot);
        if p.heap_pos != HEAP_NONE {
            let pos = p.heap_pos as usize;
            let last = self.heap.pop().expect("heap holds this entry");
            if pos < self.heap.len() {
                self.heap[pos] = last;
                self.pending[last as usize].heap_pos = pos as u32;
                self.sift_down(pos);
                self.sift_up(pos);
            }
        }
        self.pending[slot as usize] = Pending {
            heap_pos: HEAP_NONE,
            ..Pending::default()
        };
        self.pending_free.push(slot);
        self.pending_open -= 1;
    }

    fn heap_key(&self, pos: usize) -> (u64, u64) {
        let p = &self.pending[self.heap[pos] as usize];
        (p.deadline_ns, p.ring_seq)
    }

    fn heap_swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pending[self.heap[a] as usize].heap_pos = a as u32;
        self.pending[self.heap[b] as usize].heap_pos = b as u32;
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heap_key(pos) >= self.heap_key(parent) {
                break;
            }
            self.heap_swap(pos, parent);
            pos = parent;
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        loop {
            let left = 2 * pos + 1;
            if left >= self.heap.len() {
                break;
            }
            let right = left + 1;
            let child = if right < self.heap.len() && self.heap_key(right) < self.heap_key(left) {
                right
            } else {
                left
            };
            if self.heap_key(child) >= self.heap_key(pos) {
                break;
            }
            self.heap_swap(pos, child);
            pos = child;
        }
    }

    // ----- checks and restore support -----

    /// Checks the ledger invariants over the whole state (O(accounts)); tests call it after
    /// every command. Returns what is broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut sums: std::collections::BTreeMap<u32, [u128; 4]> = Default::default();
        // Sums of the current run of accounts on one ledger (accounts mostly come in runs),
        // added to `sums` when the ledger changes: one map update per run, not per account.
        let mut run: Option<(u32, [u128; 4])> = None;
        let mut debits_pending = 0u128;
        for a in self.accounts() {
            match &mut run {
                Some((ledger, _)) if *ledger == a.ledger => {}
                _ => {
                    if let Some((ledger, s)) = run.take() {
                        let total = sums.entry(ledger).or_default();
                        for (t, v) in total.iter_mut().zip(s) {
                            *t += v;
                        }
                    }
                    run = Some((a.ledger, [0; 4]));
                }
            }
            if let Some((_, s)) = &mut run {
                s[0] += u128::from(a.debits_posted);
                s[1] += u128::from(a.credits_posted);
                s[2] += u128::from(a.debits_pending);
                s[3] += u128::from(a.credits_pending);
            }
            debits_pending += u128::from(a.debits_pending);
            let debits = u128::from(a.debits_posted) + u128::from(a.debits_pending);
            let credits = u128::from(a.credits_posted) + u128::from(a.credits_pending);
            if a.flags & af::DEBITS_MUST_NOT_EXCEED_CREDITS != 0
                && debits > u128::from(a.credits_posted)
            {
                return Err(format!("account {} overdrawn: {a:?}", a.id));
            }
            if a.flags & af::CREDITS_MUST_NOT_EXCEED_DEBITS != 0
                && credits > u128::from(a.debits_posted)
            {
                return Err(format!("account {} credits exceed debits: {a:?}", a.id));
            }
        }
        if let Some((ledger, s)) = run {
            let total = sums.entry(ledger).or_default();
            for (t, v) in total.iter_mut().zip(s) {
                *t += v;
            }
        }
        for (ledger, s) in sums {
            if s[0] != s[1] || s[2] != s[3] {
                return Err(format!("ledger {ledger} unbalanced: {s:?}"));
            }
        }
        let mut pending_sum = 0u128;
        for (i, p) in self.pending.iter().enumerate() {
            if p.id() != 0 {
                pending_sum += u128::from(p.amount);
                if p.heap_pos != HEAP_NONE && self.heap[p.heap_pos as usize] as usize != i {
                    return Err(format!("pending slot {i} heap position broken"));
                }
            }
        }
        if pending_sum != debits_pending {
            return Err(format!(
                "pending table {pending_sum} != pending debits {debits_pending}"
            ));
        }
        Ok(())
    }

    // ----- restore: a snapshot's sections are fed in order into an empty engine -----

    /// Restore: the address ranges that restoring `accounts` accounts and `retained`
    /// retained transfers will write, in the order a helper mapping them should take them
    /// (each from its end, see `prefetch::populate_for_write`) so as to stay ahead of the
    /// restoring thread, or meet it halfway: the listing orders' blocks (small, and so mapped
    /// long before the end, when they are built), the account index (small, written at
    /// random from the start), the account table, the retention index (written last), then
    /// the ring's records (written in order, after the accounts).
    pub(crate) fn restore_spans(&self, accounts: u64, retained: u64) -> Vec<(usize, usize)> {
        let accounts = (accounts as usize).min(self.accounts.capacity());
        let retained = (retained as usize).min(self.ring.records.len());
        let [id_slots, id_prints] = self.by_id.build_spans(accounts);
        let [ledger_slots, ledger_prints] = self.by_ledger.build_spans(accounts);
        vec![
            // The listing orders are built last, from mapped pages if these go first.
            id_slots,
            id_prints,
            ledger_slots,
            ledger_prints,
            self.account_index.span(),
            crate::prefetch::span(&self.accounts, accounts),
            self.ring.index.span(),
            crate::prefetch::span(&self.ring.records, retained),
        ]
    }

    /// The retention index's bucket words (snapshots save them).
    pub(crate) fn retention_index_words(&self) -> &[u32] {
        self.ring.index.bucket_words()
    }

    /// Restore, first step: makes `head_seq` the ring's first sequence (the engine is new).
    pub(crate) fn restore_ring_head(&mut self, head_seq: u64) {
        self.ring.reset(head_seq);
    }

    /// Restore: appends accounts in creation order (the caller has checked the capacity).
    /// Prefetches index buckets ahead, and checks for duplicates in the same probe run that
    /// inserts.
    pub(crate) fn restore_accounts(&mut self, accounts: &[Account]) -> Result<(), &'static str> {
        const AHEAD: usize = 16;
        for (i, &a) in accounts.iter().enumerate() {
            if let Some(ahead) = accounts.get(i + AHEAD) {
                self.account_index.prefetch(account_hash(ahead.id));
            }
            if a.id == 0 {
                return Err("zero account id");
            }
            // What creating it checked.
            let rules = af::DEBITS_MUST_NOT_EXCEED_CREDITS | af::CREDITS_MUST_NOT_EXCEED_DEBITS;
            if a.ledger == 0
                || a.flags & !af::ALL != 0
                || a.flags & rules == rules
                || (a.flags & af::EXTERNAL != 0 && a.flags & rules != 0)
            {
                return Err("account with ledger zero or invalid flags");
            }
            let slot = self.accounts.len() as u32;
            let records = &self.accounts;
            if !self
                .account_index
                .insert_unique(account_hash(a.id), slot, |s| {
                    records[s as usize].account.id == a.id
                })
            {
                return Err("duplicate account id");
            }
            self.accounts.push(AccountRecord {
                account: a,
                touched_position: 0,
                saved_epoch: 0,
            });
            if a.flags & af::EXTERNAL != 0 {
                if self.find_external(a.ledger).is_some()
                    || self.externals.len() >= self.config.ledgers_max as usize
                {
                    return Err("second external account on a ledger or too many ledgers");
                }
                self.external_index
                    .insert(hash64(u64::from(a.ledger)), self.externals.len() as u32);
                self.externals.push((a.ledger, slot));
            }
        }
        Ok(())
    }

    /// Restore: reads `count` retained transfers (the caller has checked the capacity),
    /// oldest first, after every account, with `read` straight into the ring's slots, a
    /// chunk at a time, and checks and indexes each chunk while it is in cache (or, with
    /// `build_index` false, adds up the digests their index entries must have, for
    /// [`Engine::restore_index`] once the snapshot's index is loaded). `check`
    /// false (the snapshot is already known to be inconsistent) only reads. The outer error
    /// is `read`'s; the inner one says what is inconsistent.
    pub(crate) fn restore_retained<E>(
        &mut self,
        count: u64,
        mut check: bool,
        build_index: bool,
        mut read: impl FnMut(&mut [u8]) -> Result<(), E>,
    ) -> Result<Result<RestoredRing, &'static str>, E> {
        use zerocopy::IntoBytes;
        /// Records per read: 1 MiB.
        const CHUNK: usize = 16_384;
        let slots = self.accounts.len() as u32;
        let mut left = count as usize;
        let mut outcome = Ok(());
        let ring = &mut self.ring;
        assert_eq!(ring.len(), 0, "restore fills an empty ring");
        let mut scratch = RestoreScratch::default();
        if !build_index {
            scratch.homes.reserve_exact(left);
        }
        let mut at = ring.next_slot as usize;
        let mut done = 0u64;
        let mut unindexed = 0;
        while left > 0 {
            let n = left.min(CHUNK);
            read(ring.records[at..at + n].as_mut_bytes())?;
            if check {
                // While the chunk is in cache: checks, and its ids' hashes for the index.
                for r in &mut ring.records[at..at + n] {
                    r.make_native_endian();
                }
                let indexing = if build_index {
                    Indexing::Build
                } else {
                    Indexing::Check(&ring.index)
                };
                if let Err(why) = scratch.note(&ring.records[at..at + n], done, slots, indexing) {
                    outcome = Err(why);
                    check = false;
                }
            }
            at += n;
            done += n as u64;
            left -= n;
            unindexed += n;
            if check && (unindexed >= RESTORE_BLOCK || left == 0) {
                if build_index {
                    if let Err(why) = ring.adopt_restored(unindexed, &mut scratch) {
                        outcome = Err(why);
                        check = false;
                    }
                } else {
                    ring.adopt_indexed(unindexed);
                }
                unindexed = 0;
            }
        }
        Ok(outcome.map(|()| RestoredRing {
            pending_records: scratch.pending_records,
            digest: scratch.digest,
            homes: scratch.homes,
        }))
    }

    /// Restore: loads the retention index the snapshot carries (sized as this one), with
    /// `fill` a chunk of `chunk_words` words at a time, checking each chunk while it is in
    /// cache against the records ([`crate::retention::LoadCheck`], given the `digest` that
    /// [`Engine::restore_retained`] added up), and rebuilds the index from the records if it
    /// does not check out, so that no retained id is ever missed (a retry would apply twice)
    /// and none is retained twice. `check` false (the snapshot is already known to be
    /// inconsistent) only loads. The outer error is `fill`'s; the inner one says what is
    /// inconsistent.
    pub(crate) fn restore_index<E>(
        &mut self,
        check: bool,
        (digest, homes): (u64, Vec<u8>),
        chunk_words: usize,
        mut fill: impl FnMut(&mut [u32]) -> Result<(), E>,
    ) -> Result<Result<(), &'static str>, E> {
        const WORDS: usize = crate::retention::BUCKET_WORDS;
        assert!(chunk_words.is_multiple_of(WORDS), "chunks of whole buckets");
        let live = self.ring.live();
        let Ring {
            records,
            index,
            head_slot,
            capacity,
            ..
        } = &mut self.ring;
        let (head_slot, capacity) = (*head_slot, *capacity);
        let records = &*records;
        let id_of = |offset: u64| {
            let slot = head_slot + offset;
            records[(if slot >= capacity {
                slot - capacity
            } else {
                slot
            }) as usize]
                .id()
        };
        let mut state = crate::retention::LoadCheck::new(live, homes);
        let len = index.bucket_words_mut().len();
        for start in (0..len).step_by(chunk_words) {
            let end = (start + chunk_words).min(len);
            fill(&mut index.bucket_words_mut()[start..end])?;
            if !check {
                continue;
            }
            let buckets = ((start / WORDS) as u64, (end / WORDS) as u64);
            index.check_loaded(&mut state, buckets, &id_of);
        }
        if !check || index.check_end(&mut state, digest, &id_of) {
            return Ok(Ok(()));
        }
        Ok(self.ring.reindex())
    }

    /// Restore: adds one open pending transfer (after the retained ones).
    pub(crate) fn restore_pending(
        &mut self,
        p: &crate::snapshot::PendingPart,
    ) -> Result<(), &'static str> {
        let (Some(debit), Some(credit)) = (
            self.find_account(p.debit_id),
            self.find_account(p.credit_id),
        ) else {
            return Err("pending transfer names an unknown account");
        };
        if p.id == 0 || self.find_pending(p.id).is_some() {
            return Err("duplicate or zero pending transfer id");
        }
        // What creating it checked: settling it moves `amount` within one ledger.
        let ledger = self.accounts[debit as usize].account.ledger;
        if debit == credit || self.accounts[credit as usize].account.ledger != ledger {
            return Err("pending transfer within one account or across ledgers");
        }
        let timeout_s = p.extra as u32;
        if p.amount == 0 || (timeout_s == 0 && p.deadline_ns != u64::MAX) {
            return Err("pending transfer of nothing, or with a deadline but no timeout");
        }
        // Its record, while retained, is the one its settlement marks (and the record of no
        // other transfer); once evicted, its id is retained for no other.
        if p.ring_seq >= self.ring.next_seq {
            return Err("pending transfer's record lies beyond the ring");
        }
        let created = match self.ring.get(p.ring_seq) {
            Some(r) => {
                let deadline_ns = if timeout_s == 0 {
                    u64::MAX
                } else {
                    r.timestamp_ns
                        .saturating_add(u64::from(timeout_s).saturating_mul(NS_PER_S))
                };
                if r.id() != p.id
                    || r.kind != TransferKind::Transfer as u8
                    || r.state != TransferState::Pending as u8
                    || (r.debit, r.credit, r.amount, r.ledger) != (debit, credit, p.amount, ledger)
                    || r.extra != p.extra
                    || deadline_ns != p.deadline_ns
                    || p.created.is_some_and(|c| c != (r.position, r.timestamp_ns))
                {
                    return Err("pending transfer differs from its retained record");
                }
                (r.position, r.timestamp_ns)
            }
            None => {
                if self.ring.find(p.id).is_some() {
                    return Err("pending transfer's id is retained for another transfer");
                }
                // A version 1-3 snapshot did not keep them: the log time follows from a
                // deadline, the position is unknown (0).
                p.created.unwrap_or_else(|| {
                    let timeout_ns = u64::from(timeout_s) * NS_PER_S;
                    let timestamp_ns = if timeout_s == 0 || p.deadline_ns == u64::MAX {
                        0
                    } else {
                        p.deadline_ns - timeout_ns.min(p.deadline_ns)
                    };
                    (0, timestamp_ns)
                })
            }
        };
        self.pending_insert(Pending {
            id_lo: p.id as u64,
            id_hi: (p.id >> 64) as u64,
            amount: p.amount,
            deadline_ns: p.deadline_ns,
            ring_seq: p.ring_seq,
            extra: p.extra,
            position: created.0,
            timestamp_ns: created.1,
            debit,
            credit,
            heap_pos: HEAP_NONE,
        });
        Ok(())
    }

    /// Restore: adds one client session.
    pub(crate) fn restore_session(&mut self, s: Session) -> Result<(), &'static str> {
        let hash = hash64(s.id);
        let sessions = &self.sessions;
        if s.id == 0
            || self
                .session_index
                .find(hash, |i| sessions[i as usize].id == s.id)
                .is_some()
        {
            return Err("duplicate or zero session id");
        }
        self.session_index.insert(hash, self.sessions.len() as u32);
        self.sessions.push(s);
        Ok(())
    }

    /// Restore, last step: the position, clock and hash, then what ties the tables together
    /// (`pending_records`: the retained records of open pending transfers, which
    /// [`Engine::restore_retained`] counted) and the invariants over the whole restored
    /// state. O(accounts) for the invariants, O(p log p) for p open pending transfers.
    pub(crate) fn restore_finish(
        &mut self,
        position: u64,
        now_ns: u64,
        hash: u64,
        pending_records: u64,
    ) -> Result<(), &'static str> {
        self.position = position;
        self.now_ns = now_ns;
        self.hash = hash;
        self.build_orders();
        let open = self.pending.iter().filter(|p| p.id() != 0);
        if open
            .clone()
            .any(|p| p.position > position || p.timestamp_ns > now_ns)
        {
            return Err("pending transfer created after the snapshot's position or log time");
        }
        // Every retained record of an open pending transfer is its (`restore_pending` checked
        // the other way round).
        if open
            .clone()
            .filter(|p| self.ring.get(p.ring_seq).is_some())
            .count() as u64
            != pending_records
        {
            return Err("retained record of a pending transfer that is not open");
        }
        // Ring sequences order expiries at one deadline: one each.
        let mut seqs: Vec<u64> = open.clone().map(|p| p.ring_seq).collect();
        seqs.sort_unstable();
        if seqs.windows(2).any(|w| w[0] == w[1]) {
            return Err("two pending transfers with one ring sequence");
        }
        drop(seqs);
        // Each account's pending columns are what its open pending transfers reserve (settling
        // one subtracts its amount from both): per account named, as the invariants check
        // only sums, whose equality then leaves the accounts not named at zero.
        let mut reserved: Vec<(u32, u64, u64)> = open
            .flat_map(|p| [(p.debit, p.amount, 0), (p.credit, 0, p.amount)])
            .collect();
        reserved.sort_unstable_by_key(|r| r.0);
        for run in reserved.chunk_by(|a, b| a.0 == b.0) {
            let a = &self.accounts[run[0].0 as usize].account;
            let debits: u128 = run.iter().map(|r| u128::from(r.1)).sum();
            let credits: u128 = run.iter().map(|r| u128::from(r.2)).sum();
            if debits != u128::from(a.debits_pending) || credits != u128::from(a.credits_pending) {
                return Err("an account's pending balances differ from its pending transfers");
            }
        }
        self.check_invariants()
            .map_err(|_| "restored balances break an invariant")
    }

    /// Restore: the account orders (ids are unique, checked as they loaded). Two sorts, or
    /// none when the accounts were created in increasing id order on one ledger (time-ordered
    /// ids, as many systems assign them): one pass finds out.
    fn build_orders(&mut self) {
        let records = &self.accounts;
        let (mut increasing, mut one_ledger) = (true, true);
        for w in records.windows(2) {
            increasing &= w[0].account.id < w[1].account.id;
            one_ledger &= w[0].account.ledger == w[1].account.ledger;
        }
        let n = records.len() as u32;
        // (id, slot) by rank in id order.
        let sorted: Option<Vec<(u64, u32)>> = (!increasing).then(|| {
            let mut by_id: Vec<(u64, u32)> = records
                .iter()
                .enumerate()
                .map(|(slot, r)| (r.account.id, slot as u32))
                .collect();
            by_id.sort_unstable_by_key(|p| p.0);
            by_id
        });
        let by_rank = |rank: u32| {
            sorted.as_ref().map_or_else(
                || (records[rank as usize].account.id, rank),
                |v| v[rank as usize],
            )
        };
        self.by_id.build((0..n).map(|rank| {
            let (id, slot) = by_rank(rank);
            (u128::from(id), slot)
        }));
        let ledger_entry = |ledger: u32, (id, slot): (u64, u32)| {
            ((u128::from(ledger) << 64) | u128::from(id), slot)
        };
        if one_ledger {
            let ledger = records.first().map_or(0, |r| r.account.ledger);
            self.by_ledger
                .build((0..n).map(|rank| ledger_entry(ledger, by_rank(rank))));
            return;
        }
        // (ledger, rank in id order): sorted, the (ledger, id) order.
        let mut by_ledger: Vec<u64> = (0..n)
            .map(|rank| {
                let ledger = records[by_rank(rank).1 as usize].account.ledger;
                (u64::from(ledger) << 32) | u64::from(rank)
            })
            .collect();
        by_ledger.sort_unstable();
        self.by_ledger.build(
            by_ledger
                .iter()
                .map(|v| ledger_entry((v >> 32) as u32, by_rank(*v as u32))),
        );
    }

    /// Open pending transfers in slab order, for snapshots. Restore rebuilds the deadline heap
    /// from them; expiry order depends only on the unique (deadline, creation) keys, never on
    /// slab or heap layout.
    pub(crate) fn pending_for_snapshot(
        &self,
    ) -> impl Iterator<Item = crate::snapshot::PendingPart> + Clone + '_ {
        self.pending
            .iter()
            .filter(|p| p.id() != 0)
            .map(|p| crate::snapshot::PendingPart {
                id: p.id(),
                debit_id: self.accounts[p.debit as usize].account.id,
                credit_id: self.accounts[p.credit as usize].account.id,
                amount: p.amount,
                deadline_ns: p.deadline_ns,
                ring_seq: p.ring_seq,
                extra: p.extra,
                created: Some((p.position, p.timestamp_ns)),
            })
    }
}

/// [`Order`] key of the account at `slot` in id order.
fn id_key(records: &[AccountRecord], slot: u32) -> u128 {
    u128::from(records[slot as usize].account.id)
}

/// [`Order`] key of the account at `slot` in (ledger, id) order.
fn ledger_key(records: &[AccountRecord], slot: u32) -> u128 {
    let a = &records[slot as usize].account;
    (u128::from(a.ledger) << 64) | u128::from(a.id)
}

/// The slot of account `id` (`hash` is `account_hash(id)`), trying the prefetch stage's
/// `guess` first: a slot whose record holds `id` is that account's (ids are unique).
#[inline(always)]
fn resolve_account(
    accounts: &[AccountRecord],
    index: &Index,
    id: u64,
    hash: u64,
    guess: u32,
) -> Option<u32> {
    if let Some(rec) = accounts.get(guess as usize) {
        if rec.account.id == id {
            return Some(guess);
        }
    }
    index.find(hash, |s| accounts[s as usize].account.id == id)
}

/// The result of a transfer that fails one of the field checks, in precedence order.
#[cold]
#[inline(never)]
fn invalid_transfer(t: &TransferSpec) -> ResultCode {
    let pending = t.flags & transfer_flags::PENDING != 0;
    if t.id == 0 || t.debit_account_id == 0 || t.credit_account_id == 0 {
        ResultCode::InvalidId
    } else if t.ledger == 0 {
        ResultCode::InvalidLedger
    } else if t.flags & !transfer_flags::ALL != 0 || (t.timeout_s != 0 && !pending) {
        ResultCode::InvalidFlags
    } else if t.amount == 0 {
        ResultCode::InvalidAmount
    } else {
        debug_assert_eq!(t.debit_account_id, t.credit_account_id);
        ResultCode::SameAccount
    }
}

pub(crate) fn kind_from_u8(v: u8) -> TransferKind {
    match v {
        1 => TransferKind::Deposit,
        2 => TransferKind::Withdraw,
        3 => TransferKind::PostPending,
        4 => TransferKind::VoidPending,
        _ => TransferKind::Transfer,
    }
}

pub(crate) fn state_from_u8(v: u8) -> TransferState {
    match v {
        1 => TransferState::Pending,
        2 => TransferState::PendingPosted,
        3 => TransferState::PendingVoided,
        4 => TransferState::PendingExpired,
        _ => TransferState::Posted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(position: u64) -> EntryMeta {
        EntryMeta {
            position,
            timestamp_ns: position * NS_PER_S,
            session_id: 0,
            client_seq: 0,
        }
    }

    fn transfer(id: u128, amount: u64) -> TransferSpec {
        TransferSpec {
            id,
            debit_account_id: 2,
            credit_account_id: 3,
            amount,
            ledger: 1,
            ..TransferSpec::default()
        }
    }

    /// An engine with external account 1 and accounts 2 and 3 on ledger 1, 2 funded with 1000.
    fn funded(config: EngineConfig) -> (Engine, u64) {
        let mut e = Engine::new(config).unwrap();
        let mut position = 0;
        for (id, flags) in [(1, af::EXTERNAL), (2, 0), (3, 0)] {
            position += 1;
            let command = Command::CreateAccount {
                id,
                ledger: 1,
                flags,
                code: 0,
            };
            assert_eq!(
                e.apply_command(&meta(position), &command).result,
                ResultCode::Ok
            );
        }
        position += 1;
        let deposit = Command::Deposit {
            transfer_id: 1 << 100,
            account_id: 2,
            amount: 1000,
        };
        assert_eq!(
            e.apply_command(&meta(position), &deposit).result,
            ResultCode::Ok
        );
        (e, position)
    }

    #[test]
    fn a_failed_atomic_group_keeps_ids_that_overflowed_their_bucket_retained() {
        let config = EngineConfig {
            accounts_max: 8,
            transfers_retained_max: 64,
            pending_max: 4,
            sessions_max: 2,
            ledgers_max: 2,
        };
        let (mut e, mut position) = funded(config);
        // Twelve ids with the same home bucket (ten entries): the eleventh and twelfth go to
        // the next bucket and mark the home bucket as overflowed.
        let index = &e.ring.index;
        let home = index.home_bucket(id_hash(1));
        let ids: Vec<u128> = (1..)
            .filter(|&id| index.home_bucket(id_hash(id)) == home)
            .take(12)
            .collect();
        assert_ne!(index.home_bucket(id_hash(1 << 100)), home);
        let other = (2..)
            .find(|&id| index.home_bucket(id_hash(id)) != home)
            .unwrap();
        let first: Vec<TransferSpec> = ids[..11].iter().map(|&id| transfer(id, 1)).collect();
        position += 1;
        let command = Command::Transfers {
            flags: 0,
            transfers: &first,
        };
        assert_eq!(
            e.apply_command(&meta(position), &command).result,
            ResultCode::Ok
        );
        // An atomic group whose second member overflows too and whose third fails: undone
        // (the first, undone last, lands elsewhere).
        let group = [
            transfer(other, 1),
            transfer(ids[11], 1),
            transfer(ids[11] + (1 << 64), 0),
        ];
        position += 1;
        let command = Command::Transfers {
            flags: batch_flags::ATOMIC,
            transfers: &group,
        };
        let o = e.apply_command(&meta(position), &command);
        assert_eq!(o.result, ResultCode::InvalidAmount);
        // The eleventh transfer, retried, is recognised and moves nothing.
        position += 1;
        let retry = [transfer(ids[10], 1)];
        let command = Command::Transfers {
            flags: 0,
            transfers: &retry,
        };
        let o = e.apply_command(&meta(position), &command);
        assert_eq!(o.result, ResultCode::TransferExists);
        assert_eq!(e.account(3).unwrap().credits_posted, 11);
        assert!(e.transfer(ids[10]).is_some());
    }
}
