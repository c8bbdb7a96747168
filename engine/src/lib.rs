//! The ledger state machine: accounts, transfers, two-phase transfers, idempotency, client
//! sessions, queries, a running state hash and snapshots.
//!
//! # What this crate owns
//! Everything a node knows about money is here and is a pure function of the log: the engine is
//! fed one log entry at a time ([`EntryMeta`] plus the command's SBE bytes) and answers with a
//! reply it writes into the caller's buffer. It does no I/O, reads no clock (time is the entry's
//! leader timestamp), spawns no thread, uses no randomness and allocates nothing per command once
//! [`Engine::new`] has sized every table from [`EngineConfig`]. A full table is a result code.
//!
//! # Invariants (checked by the property tests after every command)
//! - Per ledger, the sum of `debits_posted` equals the sum of `credits_posted`, and likewise for
//!   the pending columns: every effect is a double entry.
//! - No account flagged `debits_must_not_exceed_credits` has `debits_posted + debits_pending >
//!   credits_posted` (and the mirror rule for `credits_must_not_exceed_debits`).
//! - Same log in, same replies and same [`Engine::state_hash`] out.
//!
//! # Semantics worth knowing (see `ResultCode` for the precedence order)
//! - Validation happens first, in increasing result-code order, so the lowest-numbered code that
//!   applies is reported; only then is the state changed ("after this point it must succeed").
//! - Only successful transfers are retained for idempotency: a failed transfer leaves no trace
//!   and may be retried with the same id. A retained id re-sent with the same fields answers
//!   `transfer_exists`, with other fields `transfer_exists_with_different_fields`.
//! - Deposit and withdraw are transfers against the ledger's one `external` account.
//! - A partial post settles `amount` and releases the rest of the pending reservation.
//! - `GetTransfer` answers for a transfer while it is retained, and for an open pending
//!   transfer until it is posted, voided or expired, even once the retention ring has moved
//!   past its record (the pending table keeps what the record held); its id is recognised as
//!   in use for as long.
//! - Before each log entry is applied, every pending transfer whose deadline
//!   (`timestamp + timeout_s` of the entry that created it) is at or before the entry's time is
//!   expired, in (deadline, creation order) order.
//! - A retried `(session_id, client_seq)` at or below the session's last applied sequence changes
//!   nothing: the session's last command is answered with its original position, timestamp and
//!   result (without the per-transfer groups), an older one with `duplicate_request`.
//!
//! - Every command's reply lists the accounts it touched (after the command, in first-touch
//!   order); a failed atomic group touches none. `CreateAccount` lists the account, also when
//!   it answers `account_exists` / `account_exists_with_different_fields`.
//! - At most one `external` account per ledger; `external` cannot be combined with a balance
//!   rule, nor the two rules with each other (`invalid_flags`).
//! - When the session table is full, the session whose last command is oldest is forgotten;
//!   a later retry from it is then applied as new (its transfer ids still protect it while
//!   they are retained).
//!
//! # Memory
//! Tables are reserved in [`Engine::new`] (`Vec::with_capacity`, allocator-zeroed vectors for
//! hash buckets, an anonymous mapping of its own for the retention ring), so the kernel maps
//! pages only when first touched. The tables read at random (account table, account and
//! retention indexes) are advised onto transparent huge pages, against TLB misses; the
//! retention ring, written and read in order, is not: on the development VM, whose freshly
//! allocated memory is slow (the host backs it on first touch), mapping huge pages cold costs
//! about three times as much per byte as small ones (measured: 850 MB populated in 1.0-1.2 s
//! with huge pages, 0.27-0.44 s without), and the ring is three quarters of a large restore's
//! memory. Per account: a 64-byte record
//! (one cache line, `align(64)`) plus 13-27 bytes of index (load factor at most 0.6) and 8-16
//! bytes for the two listing orders (a `u32` slot in each, in blocks half to wholly full;
//! `order.rs`), and from [`LIST_FINGERPRINT_MIN_ACCOUNTS`] accounts 4-8 more for the
//! orders' fingerprints: about 93 bytes measured at one million accounts. Per retained transfer: a 64-byte record (accounts by
//! slot, not id) plus 16 bytes of index (one 64-byte bucket per 4 ids): at the default 10
//! million, 640 MB of records and 160 MB of index once the ring has filled. Per open pending
//! transfer: 80 bytes plus index and 4 bytes of heap.
//!
//! # Speed
//! A `Transfers` command is applied transfer by transfer, but the loop works ahead within the
//! batch (and `apply` first asks for every cache line of the command's bytes, which the
//! decoder then reads in order): every index hash of the batch (both accounts and the id: one
//! or two folded multiplies each) is computed once, in one pass; retention index buckets (one
//! cache line each) are prefetched 16 transfers ahead, and 8 ahead, once the line has arrived,
//! the next bucket when the home bucket's overflow word says a look-up will scan on; once the account
//! table outgrows a core's cache (`16 384` accounts), account index buckets 16 ahead and
//! account records 8 ahead, the slot found then being reused as a guess by the look-up. The
//! common transfer (posted, no pending transfer open)
//! takes a fast path that does the same checks in the same order with the table pointers
//! held in registers, and anything unusual falls back to the general path. The idempotency
//! look-up of a new id also yields the free entry its insert will take (one look at the
//! bucket for both). The reply's balances are written and folded into the state hash in one
//! pass over the touched accounts (the generated encoder writes the header, block and group
//! dimensions; the fixed-size entries are written directly, checked against the generated
//! encoder in the tests). A retained record is one cache line (`align(64)`, in a page-aligned
//! mapping) appended with non-temporal stores (`lines.rs`): it goes to memory without first
//! being read (no read-for-ownership) and without evicting from the core's caches the small
//! account table they would otherwise keep (64 bytes per transfer stream past it); a store
//! fence ends each command. The only `unsafe` in the crate is the prefetch hint, the
//! `madvise` calls and the restore helper's CPU affinity, in `prefetch.rs`, the SSE2 loads of
//! the retention index's lane compares, in `lanes.rs`, and the ring's mapping and streaming
//! stores, in `lines.rs`.
//! Evicting the oldest retained transfer writes nothing: the retention index (`retention.rs`)
//! stores each id's ring sequence and treats entries outside the ring's live
//! range as free, so a new transfer touches one random line of it plus the sequential ring
//! write. On the 2-core development VM a transfer costs about 530 instructions (callgrind,
//! 10 thousand accounts; 860 before the fast path) and about 600 with a million accounts
//! (880 before); `bench engine` reports the throughput.
//!
//! # Snapshots and threads
//! See [`snapshot`]. A node's engine thread calls [`Engine::freeze_begin`] between commands:
//! it copies the header and the small tables (pending transfers, sessions) and sets up
//! copies of the accounts, the retention ring and its index, which are all of a large state
//! (48 MB for a million accounts, 850 MB with ten million retained transfers). Those are then
//! copied a step at a time (256 KiB of each, ~50 µs) after each batch of commands, while
//! commands go on: an account's value is saved before its first change while it is still to
//! copy (a compare on every balance write; the record's spare bytes mark it saved), before
//! each command the ring's oldest records that it could overwrite are copied first, an index
//! bucket's words are saved just before its first write (and put back when its chunk is
//! copied), and a retained record changed in place (a pending transfer posted, voided or
//! expired) keeps its value from the start. The node streams the copy ([`Engine::freeze_pieces`]) to a writer thread, whose
//! [`snapshot::SnapshotWriter`] writes each piece at its place in the file as it comes, so the
//! copy is never held whole (tens of megabytes in flight, not a second copy of the state);
//! [`Engine::freeze_step`] collects it into a [`snapshot::Frozen`] in memory instead. Either
//! way the snapshot is exactly the state where the copy began (tests compare both with
//! [`Engine::freeze`] taken there, byte for byte). Why not freeze all at once: at ten million
//! retained transfers that holds the engine ~100 ms (over a second the first time, when the
//! copy's pages are fresh) and doubles the node's memory; why not `fork` or page protection:
//! both need `unsafe` process tricks and cost a page fault per first write, while the write
//! barriers here are one branch on paths that already write the line. [`Engine::freeze`]
//! (all at once, `&self`) remains for tests and
//! tools. [`Engine::snapshot`] writes straight from the live
//! tables instead (no copy, but it holds the engine for the write). [`Engine::restore`]
//! streams the file a chunk at a time straight into the tables (retained transfers are read
//! into the ring's slots as they are, and the retention index, which the snapshot carries,
//! into the index when the configuration sizes it the same; otherwise it is rebuilt in bulk,
//! sorted by hash range so that it fills in cache-sized parts), rebuilds the account index,
//! and refuses a damaged or
//! truncated file with a [`SnapshotError`] that says which; nothing is returned unless the
//! length and CRC32C check out. Restoring a large state also starts one short-lived helper
//! thread that maps the new tables' pages ahead of the restoring thread (mapping fresh pages
//! is as much work as the rest of a restore); applying commands never uses a thread.
#![deny(unsafe_code)]

mod command;
mod engine;
mod index;
mod lanes;
mod lines;
mod order;
mod prefetch;
mod retention;
pub mod snapshot;
mod wire;

pub use command::{Command, Query, TransferSpec};
#[cfg(feature = "force-general-path")]
#[doc(hidden)]
pub use engine::TransferPaths;
pub use engine::{Account, Balance, Engine, Outcome, TransferInfo};
pub use snapshot::SnapshotError;
pub use wire::REPLY_LEN_MAX;

/// Account tables from this capacity (`accounts_max`) keep a 16-bit fingerprint of each
/// account's key beside its slot in the listing orders, so that creating an account reads
/// one or two account records to find its place instead of a binary search's dozen (see
/// `order.rs`). Public for tests that cover both layouts.
pub const LIST_FINGERPRINT_MIN_ACCOUNTS: u32 = order::FINGERPRINT_MIN_CAPACITY as u32;

/// Transfers one `Transfers` command may carry. Bounds the reply (one result per transfer and
/// up to two balances per transfer) and the undo log of an atomic group.
pub const TRANSFERS_PER_COMMAND_MAX: usize = 256;

/// Accounts one `ListAccounts` page may return, so that the page fits in [`REPLY_LEN_MAX`].
pub const LIST_LIMIT_MAX: usize = 256;

/// Nanoseconds per second, for pending-transfer timeouts given in seconds.
pub const NS_PER_S: u64 = 1_000_000_000;

/// Largest value any table capacity may be configured to (values index tables as `u32`).
pub const TABLE_CAPACITY_MAX: u32 = 1 << 30;

/// Result of a command or query: mirrors the schema's `ResultCode` enum value for value, and the
/// numeric order is the precedence order (the lowest-numbered code that applies is reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum ResultCode {
    Ok = 0,
    InvalidCommand = 1,
    InvalidId = 2,
    InvalidLedger = 3,
    InvalidFlags = 4,
    InvalidAmount = 5,
    SameAccount = 6,
    AccountNotFound = 7,
    AccountExists = 8,
    AccountExistsWithDifferentFields = 9,
    LedgerMismatch = 10,
    TransferExists = 11,
    TransferExistsWithDifferentFields = 12,
    TransferNotFound = 13,
    PendingNotFound = 14,
    PendingAlreadyPosted = 15,
    PendingAlreadyVoided = 16,
    PendingExpired = 17,
    AmountExceedsPending = 18,
    Overflow = 19,
    InsufficientFunds = 20,
    ExceedsDebits = 21,
    LinkedTransferFailed = 22,
    AccountTableFull = 23,
    TransferTableFull = 24,
    DuplicateRequest = 25,
    NotReady = 26,
    /// Produced by the node (leader overloaded, request not taken), never by the engine.
    Busy = 27,
}

impl ResultCode {
    /// Every code, in numeric order.
    pub const ALL: [ResultCode; 28] = [
        Self::Ok,
        Self::InvalidCommand,
        Self::InvalidId,
        Self::InvalidLedger,
        Self::InvalidFlags,
        Self::InvalidAmount,
        Self::SameAccount,
        Self::AccountNotFound,
        Self::AccountExists,
        Self::AccountExistsWithDifferentFields,
        Self::LedgerMismatch,
        Self::TransferExists,
        Self::TransferExistsWithDifferentFields,
        Self::TransferNotFound,
        Self::PendingNotFound,
        Self::PendingAlreadyPosted,
        Self::PendingAlreadyVoided,
        Self::PendingExpired,
        Self::AmountExceedsPending,
        Self::Overflow,
        Self::InsufficientFunds,
        Self::ExceedsDebits,
        Self::LinkedTransferFailed,
        Self::AccountTableFull,
        Self::TransferTableFull,
        Self::DuplicateRequest,
        Self::NotReady,
        Self::Busy,
    ];

    /// The code with wire value `v`, if there is one.
    pub fn from_u8(v: u8) -> Option<ResultCode> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// Account flag bits (schema set `AccountFlags`).
pub mod account_flags {
    /// No overdraft: `debits_posted + debits_pending <= credits_posted`.
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 1 << 0;
    /// Mirror rule: `credits_posted + credits_pending <= debits_posted`.
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: u16 = 1 << 1;
    /// The ledger's external (world) account; at most one per ledger, no balance rule.
    pub const EXTERNAL: u16 = 1 << 2;
    /// Every defined bit.
    pub const ALL: u16 = DEBITS_MUST_NOT_EXCEED_CREDITS | CREDITS_MUST_NOT_EXCEED_DEBITS | EXTERNAL;
}

/// Transfer flag bits (schema set `TransferFlags`).
pub mod transfer_flags {
    /// Two-phase: reserve now, post or void later.
    pub const PENDING: u16 = 1 << 0;
    /// Every defined bit.
    pub const ALL: u16 = PENDING;
}

/// Command-level flag bits (schema set `BatchFlags`).
pub mod batch_flags {
    /// All transfers of the command apply, or none does.
    pub const ATOMIC: u16 = 1 << 0;
    /// Every defined bit.
    pub const ALL: u16 = ATOMIC;
}

/// Lifecycle of a retained transfer (schema enum `TransferState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum TransferState {
    Posted = 0,
    Pending = 1,
    PendingPosted = 2,
    PendingVoided = 3,
    PendingExpired = 4,
}

/// What produced a retained transfer (schema enum `TransferKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum TransferKind {
    Transfer = 0,
    Deposit = 1,
    Withdraw = 2,
    PostPending = 3,
    VoidPending = 4,
}

/// The log-entry header of one command (mirrors the schema's `LogEntry`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Command index in the log; the first command is 1. Strictly increasing.
    pub position: u64,
    /// Leader log time in nanoseconds; the engine's only clock.
    pub timestamp_ns: u64,
    /// Client session that sent the command; 0 = no session (not deduplicated).
    pub session_id: u64,
    /// The session's sequence number for this command.
    pub client_seq: u64,
}

/// Table capacities, all allocated by [`Engine::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Accounts the engine can hold (about 90-100 bytes each once touched, indexes included).
    pub accounts_max: u32,
    /// Successful transfers remembered for idempotency and `GetTransfer`, oldest evicted first
    /// (64 bytes each plus 16 bytes of index).
    pub transfers_retained_max: u32,
    /// Pending transfers that may be open at once.
    pub pending_max: u32,
    /// Client sessions tracked for exactly-once; when full, the session with the oldest last
    /// command is forgotten to make room.
    pub sessions_max: u32,
    /// Ledgers that may have an external account.
    pub ledgers_max: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            accounts_max: 1_000_000,
            transfers_retained_max: 10_000_000,
            pending_max: 1_000_000,
            sessions_max: 10_000,
            ledgers_max: 1_024,
        }
    }
}

/// A configuration value that cannot be used: names the key, the value and the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration key, e.g. `accounts_max`.
    pub key: &'static str,
    /// The value given.
    pub value: u64,
    /// What the value must satisfy.
    pub rule: &'static str,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "engine config: {}={} is invalid: {}",
            self.key, self.value, self.rule
        )
    }
}

impl std::error::Error for ConfigError {}

impl EngineConfig {
    /// Checks every capacity: each must be in `1..=TABLE_CAPACITY_MAX`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let keys = [
            ("accounts_max", self.accounts_max),
            ("transfers_retained_max", self.transfers_retained_max),
            ("pending_max", self.pending_max),
            ("sessions_max", self.sessions_max),
            ("ledgers_max", self.ledgers_max),
        ];
        for (key, value) in keys {
            if value == 0 || value > TABLE_CAPACITY_MAX {
                return Err(ConfigError {
                    key,
                    value: u64::from(value),
                    rule: "must be between 1 and 1073741824 (TABLE_CAPACITY_MAX)",
                });
            }
        }
        if self.ledgers_max > self.accounts_max {
            return Err(ConfigError {
                key: "ledgers_max",
                value: u64::from(self.ledgers_max),
                rule: "must not exceed accounts_max (each ledger's external is an account)",
            });
        }
        Ok(())
    }
}
