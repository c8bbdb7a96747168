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
use crate::index::{hash128, hash64, Index};
use crate::retention::{Live, RetentionIndex};
use crate::{
    account_flags as af, batch_flags, transfer_flags, ConfigError, EngineConfig, EntryMeta,
    ResultCode, TransferKind, TransferState, LIST_LIMIT_MAX, NS_PER_S, TRANSFERS_PER_COMMAND_MAX,
};

/// An account as clients see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// A retained transfer as `GetTransfer` answers it.
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
}

const _: () = assert!(std::mem::size_of::<AccountRecord>() == 64);

/// A retained transfer: 64 bytes. Accounts are named by slot (accounts are never deleted and
/// snapshots keep creation order, so a slot is as stable as an id and half the size). `extra`
/// holds `timeout_s | code << 32` for transfers, the settled pending id's hash (low bit: the
/// amount was null) for posts and voids, and 0 for deposits and withdrawals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
}

const _: () = assert!(std::mem::size_of::<Retained>() == 64);

impl Retained {
    pub(crate) fn id(&self) -> u128 {
        (u128::from(self.id_hi) << 64) | u128::from(self.id_lo)
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
#[derive(Clone, Copy, Debug, Default)]
struct Keys {
    debit: u64,
    credit: u64,
    id: u64,
}

/// How many transfers ahead of the one being applied the batch loop prefetches index buckets
/// (records are prefetched at half this distance, once their buckets have arrived).
const PREFETCH_DISTANCE: usize = 16;

/// FIFO ring of retained transfers with an index by id. Evicting the oldest record only moves
/// the head: the index treats entries outside the live range as free (see `retention.rs`).
#[derive(Clone)]
pub(crate) struct Ring {
    pub(crate) records: Vec<Retained>,
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
    index: RetentionIndex,
}

impl Ring {
    fn new(retained_max: u32) -> Ring {
        let capacity = retained_max as usize + TRANSFERS_PER_COMMAND_MAX;
        let records = Vec::with_capacity(capacity);
        crate::prefetch::advise_huge_pages(&records);
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
        self.find_hashed(id, hash128(id))
    }

    /// [`Ring::find`] with `hash128(id)` already computed.
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
        Some(&mut self.records[slot])
    }

    fn push(&mut self, record: Retained) -> u64 {
        self.push_hashed(record, hash128(record.id()))
    }

    /// [`Ring::push`] with `hash128(record.id())` already computed.
    #[inline]
    fn push_hashed(&mut self, record: Retained, hash: u64) -> u64 {
        let seq = self.push_unindexed(record);
        let live = self.live();
        self.index.insert(hash, seq, live);
        seq
    }

    fn pop_newest(&mut self) {
        assert!(self.len() > 0);
        self.next_slot = if self.next_slot == 0 {
            self.capacity - 1
        } else {
            self.next_slot - 1
        };
        let hash = hash128(self.records[self.next_slot as usize].id());
        let live = self.live();
        self.index.remove(hash, self.next_seq - 1, live);
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
    #[inline]
    fn push_unindexed(&mut self, record: Retained) -> u64 {
        assert!(self.len() < self.capacity, "ring slack exhausted");
        let seq = self.next_seq;
        let slot = self.next_slot as usize;
        if slot < self.records.len() {
            self.records[slot] = record;
        } else {
            assert_eq!(slot, self.records.len(), "the ring fills from slot 0");
            self.records.push(record);
        }
        self.next_seq += 1;
        self.next_slot = self.wrap_forward(self.next_slot);
        seq
    }

    /// Empties the ring and makes `head_seq` its first sequence (restore).
    fn reset(&mut self, head_seq: u64) {
        self.records.clear();
        self.base_seq = head_seq;
        self.head_seq = head_seq;
        self.next_seq = head_seq;
        self.head_slot = 0;
        self.next_slot = 0;
        self.index.clear();
    }
}

enum Undo {
    Balances { account: u32, old: Account },
    RingPush,
    PendingInsert { slot: u32 },
}

/// The ledger state machine. See the crate docs for semantics and invariants.
pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) accounts: Vec<AccountRecord>,
    account_index: Index,
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

/// One cheap step of a hash lane: multiply-rotate (fully mixed later by [`mix`]).
#[inline]
fn lane(hash: u64, word: u64) -> u64 {
    (hash ^ word)
        .wrapping_mul(0x9fb2_1c65_1e98_df25)
        .rotate_left(29)
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
            transfers_scratch: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX),
            keys: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX),
            results: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX),
            touched: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX * 2),
            balances: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX * 2),
            undo: Vec::with_capacity(TRANSFERS_PER_COMMAND_MAX * 4),
            undo_active: false,
            frozen_spare: Default::default(),
        })
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

    /// Bytes of table memory reserved at start-up (virtual; pages count toward RSS only once
    /// touched).
    pub fn reserved_bytes(&self) -> usize {
        self.accounts.capacity() * 64
            + self.account_index.size_bytes()
            + self.ring.records.capacity() * std::mem::size_of::<Retained>()
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
        self.find_account_hashed(id, hash64(id))
    }

    /// [`Engine::find_account`] with `hash64(id)` already computed.
    #[inline]
    fn find_account_hashed(&self, id: u64, hash: u64) -> Option<u32> {
        let accounts = &self.accounts;
        self.account_index
            .find(hash, |s| accounts[s as usize].account.id == id)
    }

    /// First prefetch stage for a transfer some entries ahead: the index buckets of its
    /// accounts and of its id.
    #[inline]
    fn prefetch_buckets(&self, k: &Keys) {
        self.account_index.prefetch(k.debit);
        self.account_index.prefetch(k.credit);
        self.ring.index.prefetch(k.id);
    }

    /// Second stage, a few entries later: the buckets are in cache, so peek the slots and
    /// prefetch the account records.
    #[inline]
    fn prefetch_records(&self, k: &Keys) {
        for hash in [k.debit, k.credit] {
            if let Some(slot) = self.account_index.peek(hash) {
                if let Some(rec) = self.accounts.get(slot as usize) {
                    crate::prefetch::read(rec);
                }
            }
        }
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

    /// The account with `id`.
    pub fn account(&self, id: u64) -> Option<Account> {
        self.find_account(id)
            .map(|i| self.accounts[i as usize].account)
    }

    /// The retained transfer with `id`.
    pub fn transfer(&self, id: u128) -> Option<TransferInfo> {
        let rec = self.ring.get(self.ring.find(id)?)?;
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
    /// given, in id order, written into `out`; returns how many. A scan of every account with
    /// a bounded sorted page: O(accounts) per page, no allocation.
    pub fn list_accounts(
        &self,
        ledger: Option<u32>,
        after_id: u64,
        limit: usize,
        out: &mut [Account; LIST_LIMIT_MAX],
    ) -> usize {
        let limit = limit.min(LIST_LIMIT_MAX);
        let mut n = 0usize;
        if limit == 0 {
            return 0;
        }
        for rec in &self.accounts {
            let a = rec.account;
            if a.id <= after_id || ledger.is_some_and(|l| l != a.ledger) {
                continue;
            }
            if n == limit && a.id > out[n - 1].id {
                continue;
            }
            let mut i = if n == limit { n - 1 } else { n };
            if n < limit {
                n += 1;
            }
            while i > 0 && out[i - 1].id > a.id {
                out[i] = out[i - 1];
                i -= 1;
            }
            out[i] = a;
        }
        n
    }

    // ----- apply -----

    /// Applies one typed command at `meta.position` (which must exceed [`Engine::position`]).
    ///
    /// # Panics
    /// If `meta.position <= self.position()`: the caller broke log order (a bug, not input).
    pub fn apply_command(&mut self, meta: &EntryMeta, command: &Command<'_>) -> Outcome<'_> {
        assert!(
            meta.position > self.position,
            "position {} applied after {}",
            meta.position,
            self.position
        );
        self.position = meta.position;
        self.now_ns = self.now_ns.max(meta.timestamp_ns);
        self.results.clear();
        self.touched.clear();
        self.balances.clear();
        self.expire_due();

        if let Some(retry) = self.session_retry(meta) {
            self.hash = mix(mix(self.hash, meta.position), retry.result as u64);
            return retry;
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
        self.ring.trim();

        for &i in &self.touched {
            let a = &self.accounts[i as usize].account;
            self.balances.push(Balance {
                account_id: a.id,
                ledger: a.ledger,
                debits_posted: a.debits_posted,
                credits_posted: a.credits_posted,
                debits_pending: a.debits_pending,
                credits_pending: a.credits_pending,
            });
        }
        self.hash = self.hash_effects(meta.position, result);
        self.session_record(meta, result);
        Outcome {
            position: meta.position,
            timestamp_ns: meta.timestamp_ns,
            client_seq: meta.client_seq,
            result,
            results: &self.results,
            balances: &self.balances,
        }
    }

    /// Folds this command's effects (result codes and the balances it left) into the hash,
    /// in four independent lanes so that the multiplies overlap.
    fn hash_effects(&self, position: u64, result: ResultCode) -> u64 {
        let mut lanes = [
            self.hash,
            position,
            result as u64,
            self.results.len() as u64,
        ];
        for chunk in self.results.chunks(8) {
            let mut w = 0u64;
            for (i, r) in chunk.iter().enumerate() {
                w |= (*r as u64) << (i * 8);
            }
            lanes[0] = lane(lanes[0], w);
        }
        for b in &self.balances {
            lanes[0] = lane(lanes[0], b.account_id);
            lanes[1] = lane(lanes[1], b.debits_posted);
            lanes[2] = lane(lanes[2], b.credits_posted);
            lanes[3] = lane(
                lanes[3],
                b.debits_pending ^ b.credits_pending.rotate_left(32),
            );
        }
        mix(mix(mix(mix(0, lanes[0]), lanes[1]), lanes[2]), lanes[3])
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
        });
        self.account_index.insert(hash64(id), slot);
        if external {
            self.external_index
                .insert(hash64(u64::from(ledger)), self.externals.len() as u32);
            self.externals.push((ledger, slot));
        }
        self.touch(slot);
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
            hash128(transfer_id),
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
        let mut overall = ResultCode::Ok;
        // Every hash once, in one pass (independent multiplies overlap), then two prefetch
        // stages ahead of the transfer being applied.
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(transfers.iter().map(|t| Keys {
            debit: hash64(t.debit_account_id),
            credit: hash64(t.credit_account_id),
            id: hash128(t.id),
        }));
        for k in keys.iter().take(PREFETCH_DISTANCE) {
            self.prefetch_buckets(k);
        }
        for k in keys.iter().take(PREFETCH_DISTANCE / 2) {
            self.prefetch_records(k);
        }
        for (i, (t, k)) in transfers.iter().zip(&keys).enumerate() {
            if let Some(ahead) = keys.get(i + PREFETCH_DISTANCE) {
                self.prefetch_buckets(ahead);
            }
            if let Some(ahead) = keys.get(i + PREFETCH_DISTANCE / 2) {
                self.prefetch_records(ahead);
            }
            let r = self.create_transfer(t, k);
            if r != ResultCode::Ok && atomic {
                self.rollback();
                self.results.clear();
                self.results
                    .resize(transfers.len(), ResultCode::LinkedTransferFailed);
                self.results[i] = r;
                self.touched.clear();
                overall = r;
                break;
            }
            self.results.push(r);
            if r != ResultCode::Ok && (overall == ResultCode::Ok || r < overall) {
                overall = r;
            }
        }
        self.keys = keys;
        self.undo_active = false;
        self.undo.clear();
        overall
    }

    fn rollback(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Balances { account, old } => self.accounts[account as usize].account = old,
                Undo::RingPush => self.ring.pop_newest(),
                Undo::PendingInsert { slot } => self.pending_remove(slot),
            }
        }
    }

    fn create_transfer(&mut self, t: &TransferSpec, k: &Keys) -> ResultCode {
        if t.id == 0 || t.debit_account_id == 0 || t.credit_account_id == 0 {
            return ResultCode::InvalidId;
        }
        if t.ledger == 0 {
            return ResultCode::InvalidLedger;
        }
        let pending = t.flags & transfer_flags::PENDING != 0;
        if t.flags & !transfer_flags::ALL != 0 || (t.timeout_s != 0 && !pending) {
            return ResultCode::InvalidFlags;
        }
        if t.amount == 0 {
            return ResultCode::InvalidAmount;
        }
        if t.debit_account_id == t.credit_account_id {
            return ResultCode::SameAccount;
        }
        let (Some(debit), Some(credit)) = (
            self.find_account_hashed(t.debit_account_id, k.debit),
            self.find_account_hashed(t.credit_account_id, k.credit),
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
    /// record has been evicted. `same` compares the stored fields with the request.
    fn existing(
        &self,
        id: u128,
        id_hash: u64,
        same: impl Fn(&Retained) -> bool,
    ) -> Option<ResultCode> {
        let rec = if let Some(seq) = self.ring.find_hashed(id, id_hash) {
            *self.ring.get(seq).expect("indexed records are live")
        } else {
            if self.pending_open == 0 {
                return None;
            }
            let p = self.pending[self.find_pending(id)? as usize];
            Retained {
                id_lo: p.id_lo,
                id_hi: p.id_hi,
                debit: p.debit,
                credit: p.credit,
                amount: p.amount,
                ledger: self.accounts[p.debit as usize].account.ledger,
                kind: TransferKind::Transfer as u8,
                state: TransferState::Pending as u8,
                extra: p.extra,
                ..Retained::default()
            }
        };
        Some(if same(&rec) {
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
        if let Some(r) = self.existing(id, id_hash, same) {
            return r;
        }
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
            let (d, c) = (*d, *c);
            self.undo.push(Undo::Balances {
                account: debit,
                old: d,
            });
            self.undo.push(Undo::Balances {
                account: credit,
                old: c,
            });
            self.undo.push(Undo::RingPush);
        }
        {
            let d = &mut self.accounts[debit as usize].account;
            if pending {
                d.debits_pending = d_new;
            } else {
                d.debits_posted = d_new;
            }
        }
        {
            let c = &mut self.accounts[credit as usize].account;
            if pending {
                c.credits_pending = c_new;
            } else {
                c.credits_posted = c_new;
            }
        }
        self.touch(debit);
        self.touch(credit);
        let seq = self.ring.push_hashed(
            Retained {
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
            },
            id_hash,
        );
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
        if let Some(r) = self.existing(id, hash128(id), same) {
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
            let d = &mut self.accounts[p.debit as usize].account;
            d.debits_pending -= p.amount;
            d.debits_posted = d_posted;
        }
        {
            let c = &mut self.accounts[p.credit as usize].account;
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
        self.ring.push(Retained {
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
        });
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
                let d = &mut self.accounts[p.debit as usize].account;
                d.debits_pending -= p.amount;
            }
            {
                let c = &mut self.accounts[p.credit as usize].account;
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
        for a in self.accounts() {
            let s = sums.entry(a.ledger).or_default();
            s[0] += u128::from(a.debits_posted);
            s[1] += u128::from(a.credits_posted);
            s[2] += u128::from(a.debits_pending);
            s[3] += u128::from(a.credits_pending);
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
        let debits_pending: u128 = self.accounts().map(|a| u128::from(a.debits_pending)).sum();
        if pending_sum != debits_pending {
            return Err(format!(
                "pending table {pending_sum} != pending debits {debits_pending}"
            ));
        }
        Ok(())
    }

    // ----- restore: a snapshot's sections are fed in order into an empty engine -----

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
                self.account_index.prefetch(hash64(ahead.id));
            }
            if a.id == 0 {
                return Err("zero account id");
            }
            let slot = self.accounts.len() as u32;
            let records = &self.accounts;
            if !self.account_index.insert_unique(hash64(a.id), slot, |s| {
                records[s as usize].account.id == a.id
            }) {
                return Err("duplicate account id");
            }
            self.accounts.push(AccountRecord {
                account: a,
                touched_position: 0,
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

    /// Restore: appends retained transfers, oldest first, after every account (the caller has
    /// checked the capacity): each record is checked for a duplicate id, copied into the ring
    /// and indexed, with index buckets prefetched ahead.
    pub(crate) fn restore_retained(&mut self, records: &[Retained]) -> Result<(), &'static str> {
        const AHEAD: usize = 16;
        let slots = self.accounts.len() as u32;
        if records
            .iter()
            .any(|r| r.debit >= slots || r.credit >= slots)
        {
            return Err("retained transfer names an unknown account slot");
        }
        let ring = &mut self.ring;
        for (i, &r) in records.iter().enumerate() {
            if let Some(ahead) = records.get(i + AHEAD) {
                ring.index.prefetch(hash128(ahead.id()));
            }
            let id = r.id();
            let hash = hash128(id);
            if ring.find_hashed(id, hash).is_some() {
                return Err("duplicate retained transfer id");
            }
            ring.push_hashed(r, hash);
        }
        Ok(())
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
        self.pending_insert(Pending {
            id_lo: p.id as u64,
            id_hi: (p.id >> 64) as u64,
            amount: p.amount,
            deadline_ns: p.deadline_ns,
            ring_seq: p.ring_seq,
            extra: p.extra,
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

    /// Restore, last step: the position, clock and hash, then the invariants over the whole
    /// restored state.
    pub(crate) fn restore_finish(
        &mut self,
        position: u64,
        now_ns: u64,
        hash: u64,
    ) -> Result<(), &'static str> {
        self.position = position;
        self.now_ns = now_ns;
        self.hash = hash;
        self.check_invariants()
            .map_err(|_| "restored balances break an invariant")
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
            })
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
