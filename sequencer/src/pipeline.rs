//! The leader pipeline in one process: ingress → sequencer (with the journal writes) → engine → egress.
//!
//! Threads (DESIGN §3), all started by [`Pipeline::start`] and joined by
//! [`Pipeline::shutdown`]:
//! - **sequencer** (pinnable, idle strategy): polls the ingress rings, stamps each command with
//!   its position and log time into the open batch, and seals the batch when the journal has
//!   nothing in flight (smart batching: whatever arrived while the previous write ran) or when
//!   it is full. A sealed batch goes, shared, to the engine and to the journal. By default
//!   ([`PipelineConfig::journal_on_sequencer`]) the sequencer thread writes it itself with
//!   O_DIRECT and `fdatasync`s it before it takes more commands; what arrives meanwhile waits
//!   in the ingress rings (or the socket buffer) and forms the next group commit.
//! - **journal writer** (only with `journal_on_sequencer = false`; blocks in the kernel, not
//!   pinned): writes every batch it has been handed, then one `fdatasync` for all of them
//!   (group commit), publishes the durable position and wakes the sequencer. The hand-offs
//!   cost two thread wake-ups per commit, which on a machine with fewer cores than busy
//!   threads are most of a command's latency beyond the disk's own; the thread pays off only
//!   where stamping commands costs about as much as the sync, so that overlapping the two
//!   matters.
//! - **segment preparer**: zero-fills the next journal segment off the hot path.
//! - **engine** (pinnable, idle strategy): applies batches in log order, reading commands in
//!   place from the sealed batch buffers, and pushes each reply with its position into the
//!   reply ring. It may run ahead of durability.
//! - **snapshot writer**: every `snapshot_interval_commands` the engine begins a copy of its
//!   state (`Engine::freeze_begin`: the small tables now, the accounts, the retention ring
//!   and its index a step of about 50-80 µs after each batch, copy-on-write keeping the copy
//!   at the starting position) and streams it here piece by piece (`Engine::freeze_pieces`); this thread
//!   writes each piece into a temporary file as it comes (`SnapshotWriter`), and once the
//!   last has come and that position is durable, finishes, syncs and renames the file. The
//!   engine never waits for the disk, is never held for a whole copy, and the copy is never
//!   held whole in memory (the engine stops copying ahead while more than
//!   `SNAPSHOT_IN_FLIGHT_MAX` bytes wait for the writer).
//!
//! Egress: [`Replies::poll`] hands out a reply only once its position is durable — the
//! durability rule of DESIGN §5: nothing is acknowledged before it is on disk.
//!
//! Batch buffers are preallocated ([`PipelineConfig::batches_in_flight_max`] of them) and
//! recycled once both the journal writer and the engine are done with them; when all are in
//! flight the sequencer stops taking commands and producers see back-pressure.
//!
//! Start-up is recovery: open the journal (torn tail truncated, corruption refused), restore the
//! newest valid snapshot, replay the journal after it, and continue at the next position.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use engine::{Engine, EngineConfig};
use journal::{
    AppendRefusal, BatchBuilder, DurableWatch, Journal, JournalReader, Retention, SealedBatch,
};
use transport::idle::{IdleKind, IdleStrategy};

use crate::clock::{wall_ns, LogClock};
use crate::ring::{self, TryClaimError};
use crate::snapshots;

/// Bytes before each ingress record: session id and client sequence number.
const INGRESS_HEADER_SIZE: usize = 16;
/// Bytes before each reply record: session id, client sequence number, position.
const REPLY_HEADER_SIZE: usize = 24;
/// Commands the sequencer takes from one producer per poll, so one busy producer cannot starve
/// the others.
const INGRESS_POLL_LIMIT: usize = 256;
/// How long a shutdown waits for the last replies to be durable and sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Polling rounds (ingress rings and frontend) the sequencer runs before a group commit when
/// it syncs the journal itself: enough to take everything that arrived during the last sync.
const INLINE_DRAIN_ROUNDS_MAX: usize = 64;
/// Queries the engine answers per round between batches.
const QUERY_POLL_LIMIT: usize = 64;
/// How long blocked threads wait before re-checking for shutdown.
const WAKE_INTERVAL: Duration = Duration::from_millis(5);
/// Buckets of the journal sync-time histogram (powers of two of microseconds, up to ~1 h).
const SYNC_BUCKETS: usize = 32;
/// Pause between chunks of a paced segment preparation while the current segment is less
/// than half used: 512 chunks of 128 KiB make a 64 MiB segment in about half a second, in
/// small synced steps that never hold the writer's `fdatasync` up for long.
const PREPARE_PAUSE: Duration = Duration::from_millis(1);

/// Spins of the pipeline threads' default back-off before they park.
pub const IDLE_SPINS_DEFAULT: u32 = 10;
/// Yields of the default back-off before parking.
pub const IDLE_YIELDS_DEFAULT: u32 = 0;
/// Longest park of the default back-off, in nanoseconds: what an idle thread adds, at most,
/// to the latency of work that arrives without waking it (a datagram on the node's socket).
pub const IDLE_PARK_MAX_NS_DEFAULT: u64 = 50_000;
/// The pipeline threads' default idle strategy: a back-off that parks almost at once. On a
/// machine with fewer cores than busy threads (2 cores here: sequencer, engine, journal
/// writer, plus clients), spinning or yielding threads take the cores from the threads with
/// work and cost milliseconds of scheduler time slices; a parked thread is woken directly
/// (`unpark`) when another pipeline thread hands it work, and wakes by itself within
/// [`IDLE_PARK_MAX_NS_DEFAULT`] for network input. Pin threads and use busy-spin on
/// dedicated cores for the lowest latency.
pub const IDLE_DEFAULT: IdleKind = IdleKind::BackOff {
    spins_max: IDLE_SPINS_DEFAULT,
    yields_max: IDLE_YIELDS_DEFAULT,
    park_min_ns: 1_000,
    park_max_ns: IDLE_PARK_MAX_NS_DEFAULT,
};

/// Configuration of the pipeline. Every value is checked by [`PipelineConfig::validate`].
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Data folder: `journal/` and `snapshots/` live under it.
    pub data_dir: PathBuf,
    /// Journal segment size and O_DIRECT policy.
    pub journal: journal::Options,
    /// Engine table sizes.
    pub engine: EngineConfig,
    /// Producers that may be registered ([`Pipeline::producer`]); each gets its own ring.
    /// Default 16.
    pub producers_max: usize,
    /// Size of each producer's ingress ring in bytes (power of two). Default 1 MiB.
    pub ingress_ring_bytes: usize,
    /// Size of the reply ring in bytes (power of two). Default 16 MiB.
    pub reply_ring_bytes: usize,
    /// Size of the query ring (frontend → engine) in bytes (power of two). Default 1 MiB.
    pub query_ring_bytes: usize,
    /// Batch buffers (each `journal::BATCH_SIZE_MAX` bytes) that can be in flight. Default 8.
    pub batches_in_flight_max: usize,
    /// What the sequencer and engine threads do when idle. Default [`IDLE_DEFAULT`].
    pub idle: IdleKind,
    /// Cores to pin the sequencer and engine threads to, if any. Default none.
    pub pin_cores: Option<(usize, usize)>,
    /// Take a snapshot every this many commands; 0 turns snapshots off. Default 1,000,000.
    pub snapshot_interval_commands: u64,
    /// Snapshots kept on disk (the newest ones). Default 2.
    pub snapshots_kept: usize,
    /// Delete journal segments wholly before the oldest kept snapshot. Default true (the
    /// journal otherwise grows without bound, and start-up scans all of it).
    pub retain_journal: bool,
    /// Leader term written into batch headers. Default 1.
    pub term: u64,
    /// Whether the sequencer thread writes and syncs the journal itself (true, the default)
    /// rather than handing batches to a journal writer thread. Inline, a batch's way to
    /// durability has no thread hand-offs (two wake-ups fewer per group commit, which on a
    /// machine with few cores are most of the latency beyond the disk's own), and commands
    /// that arrive during an `fdatasync` wait in the ingress rings (or the socket buffer) to
    /// form the next batch. With a writer thread the sequencer goes on taking commands
    /// during the sync, which helps only when stamping commands costs about as much as the
    /// sync.
    pub journal_on_sequencer: bool,
}

impl PipelineConfig {
    /// Defaults for a data folder.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        PipelineConfig {
            data_dir: data_dir.into(),
            journal: journal::Options::default(),
            engine: EngineConfig::default(),
            producers_max: 16,
            ingress_ring_bytes: 1 << 20,
            reply_ring_bytes: 16 << 20,
            query_ring_bytes: 1 << 20,
            batches_in_flight_max: 8,
            idle: IDLE_DEFAULT,
            pin_cores: None,
            snapshot_interval_commands: 1_000_000,
            snapshots_kept: 2,
            retain_journal: true,
            term: 1,
            journal_on_sequencer: true,
        }
    }

    /// Checks every value and how they relate; the error names the key and the value.
    pub fn validate(&self) -> Result<(), String> {
        let ring_ok = |v: usize| v.is_power_of_two() && v >= ring::RING_CAPACITY_MIN;
        if self.producers_max == 0 || self.producers_max > 4096 {
            return Err(format!(
                "producers_max = {}: must be 1..=4096",
                self.producers_max
            ));
        }
        if !ring_ok(self.ingress_ring_bytes)
            || self.ingress_ring_bytes / 2 < journal::COMMAND_SIZE_MAX.min(1 << 16)
        {
            return Err(format!(
                "ingress_ring_bytes = {}: must be a power of two of at least {} (twice the largest command accepted)",
                self.ingress_ring_bytes,
                2 * journal::COMMAND_SIZE_MAX.min(1 << 16)
            ));
        }
        let reply_min = (2 * (engine::REPLY_LEN_MAX + REPLY_HEADER_SIZE + 8)).next_power_of_two();
        if !ring_ok(self.reply_ring_bytes) || self.reply_ring_bytes < reply_min {
            return Err(format!(
                "reply_ring_bytes = {}: must be a power of two of at least {reply_min}",
                self.reply_ring_bytes
            ));
        }
        if !ring_ok(self.query_ring_bytes) || self.query_ring_bytes < 1 << 16 {
            return Err(format!(
                "query_ring_bytes = {}: must be a power of two of at least 65536",
                self.query_ring_bytes
            ));
        }
        if self.batches_in_flight_max < 2 || self.batches_in_flight_max > 1024 {
            return Err(format!(
                "batches_in_flight_max = {}: must be 2..=1024 (one filling while one is written)",
                self.batches_in_flight_max
            ));
        }
        if self.snapshots_kept == 0 {
            return Err("snapshots_kept = 0: must be at least 1".into());
        }
        if self.term == 0 {
            return Err("term = 0: terms start at 1".into());
        }
        self.journal.validate().map_err(|e| e.to_string())?;
        self.engine.validate().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// What start-up found and did.
#[derive(Debug)]
pub struct StartReport {
    /// The journal's recovery report (torn tail truncated, O_DIRECT status).
    pub journal: journal::RecoveryReport,
    /// The snapshot restored, if any, and newer ones that were refused.
    pub snapshot: snapshots::Loaded,
    /// Commands replayed from the journal after the snapshot.
    pub replayed: u64,
    /// Position the engine is at after recovery.
    pub position: u64,
}

/// Counters and positions, readable from any thread.
#[derive(Debug, Default)]
struct Shared {
    /// Last position stamped by the sequencer.
    sequenced: AtomicU64,
    /// Last position applied by the engine.
    applied: AtomicU64,
    /// State hash at `applied`.
    state_hash: AtomicU64,
    /// Batches sealed.
    batches: AtomicU64,
    /// Snapshots written.
    snapshots: AtomicU64,
    /// The oldest kept snapshot's position: journal segments wholly before it are no longer
    /// needed for recovery (0 = none yet).
    retain_from: AtomicU64,
    /// Journal segments removed by retention.
    segments_retired: AtomicU64,
    /// Commands refused at ingress because they could never fit in a batch.
    too_large: AtomicU64,
    /// Set to stop taking commands; the threads drain and exit.
    stopping: AtomicBool,
    /// The first fatal error of a thread (journal I/O, snapshot I/O); the pipeline stops.
    fatal: Mutex<Option<String>>,
    failed: AtomicBool,
    /// The sequencer and engine threads, so that whoever hands them work can wake them from
    /// their idle park (`IdleStrategy` parks with `park_timeout`).
    sequencer_thread: std::sync::OnceLock<std::thread::Thread>,
    engine_thread: std::sync::OnceLock<std::thread::Thread>,
    /// The thread that waits in [`Replies::wait`], if any: woken when replies may have become
    /// ready (a new durable position, or new replies from the engine).
    egress_thread: std::sync::OnceLock<std::thread::Thread>,
    /// An eventfd that wakes the sequencer thread from its kernel wait (frontend mode only).
    sequencer_wake_fd: std::sync::OnceLock<std::os::fd::OwnedFd>,
    /// Bytes used of the journal segment being written (paces the segment preparer).
    segment_used: AtomicU64,
    /// Journal `fdatasync` durations: counts per power-of-two microsecond bucket.
    sync_us_log2: [AtomicU64; SYNC_BUCKETS],
    /// Longest journal `fdatasync`, in nanoseconds.
    sync_max_ns: AtomicU64,
    /// Segment rolls that found no prepared spare and prepared one on the writer thread.
    segments_prepared_inline: AtomicU64,
}

impl Shared {
    /// Wakes the sequencer thread (new durable position or replies to release).
    fn wake_sequencer(&self) {
        if let Some(t) = self.sequencer_thread.get() {
            t.unpark();
        }
        if let Some(fd) = self.sequencer_wake_fd.get() {
            use std::os::fd::AsRawFd;
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to an eventfd this struct owns. A full
            // counter (EAGAIN) means a wake-up is pending anyway.
            let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// Wakes the thread waiting in [`Replies::wait`], if one ever did.
    fn wake_egress(&self) {
        if let Some(t) = self.egress_thread.get() {
            t.unpark();
        }
    }

    /// Wakes the engine thread (a new batch to apply).
    fn wake_engine(&self) {
        if let Some(t) = self.engine_thread.get() {
            t.unpark();
        }
    }

    fn record_sync(&self, took: Duration) {
        let ns = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        let us = ns / 1_000;
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.sync_us_log2[bucket.min(SYNC_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.sync_max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// The journal's sync-time percentile `q` (0..1), as the upper bound of its power-of-two
    /// bucket, in microseconds (0 before the first sync).
    fn sync_quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .sync_us_log2
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return 1u64 << bucket;
            }
        }
        1u64 << (SYNC_BUCKETS - 1)
    }

    fn fail(&self, message: String) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        fatal.get_or_insert(message);
        self.failed.store(true, Ordering::Release);
        self.stopping.store(true, Ordering::Release);
    }
}

/// A snapshot of the pipeline's positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Last position stamped.
    pub sequenced_position: u64,
    /// Last position durable in the journal.
    pub durable_position: u64,
    /// Last position applied by the engine.
    pub applied_position: u64,
    /// Engine state hash at `applied_position`.
    pub state_hash: u64,
    /// Batches sealed since start.
    pub batches: u64,
    /// Snapshots written since start.
    pub snapshots: u64,
    /// Commands refused as too large since start.
    pub commands_too_large: u64,
    /// Journal segments removed since start (wholly before the oldest kept snapshot).
    pub segments_retired: u64,
    /// Journal `fdatasync`s on the write path since start.
    pub journal_syncs: u64,
    /// 99th percentile of those syncs' durations, in microseconds, rounded up to a power of
    /// two (the pipeline keeps a log2 histogram).
    pub journal_sync_p99_us: u64,
    /// The longest of those syncs, in microseconds.
    pub journal_sync_max_us: u64,
    /// Segment rolls that found no prepared spare, so the writer prepared it inline (a stall
    /// of a whole segment's zero-fill: the preparer fell behind).
    pub segments_prepared_inline: u64,
    /// The fatal error that stopped the pipeline, if any.
    pub fatal: Option<String>,
}

/// Why [`Producer::offer`] did not take a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferError {
    /// The ring is full: the sequencer is behind. Retry later.
    BackPressured,
    /// The command is larger than any batch or ring can hold.
    TooLarge,
    /// The pipeline is shutting down or failed.
    Closed,
}

/// One producer's end of the ingress: any thread may own one.
pub struct Producer {
    ring: ring::Producer,
    shared: Arc<Shared>,
}

impl Producer {
    /// Offers one command (a header-prefixed SBE message) from `session_id` with its sequence
    /// number. Never blocks.
    pub fn offer(
        &mut self,
        session_id: u64,
        client_seq: u64,
        command: &[u8],
    ) -> Result<(), OfferError> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(OfferError::Closed);
        }
        if command.len() > journal::COMMAND_SIZE_MAX {
            return Err(OfferError::TooLarge);
        }
        let len = INGRESS_HEADER_SIZE + command.len();
        self.ring
            .try_write(len, |dst| {
                dst[..8].copy_from_slice(&session_id.to_le_bytes());
                dst[8..16].copy_from_slice(&client_seq.to_le_bytes());
                dst[16..].copy_from_slice(command);
            })
            .map_err(|e| match e {
                TryClaimError::Full => OfferError::BackPressured,
                TryClaimError::TooLarge => OfferError::TooLarge,
            })?;
        self.shared.wake_sequencer();
        Ok(())
    }
}

/// A reply released by egress: durable, in log order.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// Session the command came from.
    pub session_id: u64,
    /// The session's sequence number of the command.
    pub client_seq: u64,
    /// Position of the command.
    pub position: u64,
    /// The engine's reply (a header-prefixed SBE `CommandReply`).
    pub bytes: &'a [u8],
}

/// The egress: replies in log order, each released only once its position is durable.
pub struct Replies {
    ring: ring::Consumer,
    durable: DurableWatch,
    shared: Arc<Shared>,
}

impl Replies {
    /// Blocks the calling thread until replies may be ready (the journal made more commands
    /// durable, or the engine answered more) or `timeout` passes, instead of spinning or
    /// parking on a fixed period. Call it after a [`Replies::poll`] that returned 0; a wake-up
    /// that came in between is not lost (it returns at once). The first thread that waits
    /// becomes the one woken: keep the `Replies` on one thread.
    pub fn wait(&self, timeout: Duration) {
        let me = self
            .shared
            .egress_thread
            .get_or_init(std::thread::current)
            .id()
            == std::thread::current().id();
        if me {
            std::thread::park_timeout(timeout);
        } else {
            std::thread::sleep(timeout.min(Duration::from_micros(50)));
        }
    }

    /// Calls `handler` on up to `limit` durable replies; returns how many.
    pub fn poll(&mut self, limit: usize, mut handler: impl FnMut(Reply<'_>)) -> usize {
        let durable = self.durable.get();
        self.ring.poll_while(limit, |record| {
            let word = |i: usize| {
                u64::from_le_bytes(record[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]))
            };
            let position = word(2);
            if position > durable {
                return false;
            }
            handler(Reply {
                session_id: word(0),
                client_seq: word(1),
                position,
                bytes: &record[REPLY_HEADER_SIZE..],
            });
            true
        })
    }
}

/// The node's network side, run on the sequencer thread (DESIGN §1: the sequencer thread does
/// the network I/O and the sequencing): it takes requests in through [`FrontendIo`] and sends
/// the durable replies [`FrontendIo::poll_replies`] releases.
pub trait Frontend: Send {
    /// One duty cycle: bounded work; returns how much was done (0 = idle).
    fn do_work(&mut self, now_ns: u64, io: &mut FrontendIo<'_>) -> usize;
    /// Called once when the pipeline stops (shutdown or a fatal error): close sessions.
    fn on_shutdown(&mut self) {}
    /// Whether every reply handed out so far has left (nothing queued); a shutdown keeps
    /// the frontend running until it has (bounded by the drain timeout).
    fn flushed(&self) -> bool {
        true
    }
    /// A socket whose input is this frontend's work (the node's ingress). With a back-off
    /// idle strategy the sequencer thread then waits for it (and for the other pipeline
    /// threads' wake-ups) in the kernel instead of parking on a timer, so a request wakes it
    /// at once.
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// What a [`Frontend`] can do on the sequencer thread.
pub struct FrontendIo<'a> {
    s: &'a mut SequencerState,
    shared: &'a Shared,
    replies: &'a mut Replies,
    timestamp_ns: u64,
    stopping: bool,
}

impl FrontendIo<'_> {
    /// Appends a command to the open batch (it gets the next position).
    ///
    /// # Errors
    /// `BackPressured` when every batch buffer is in flight (answer the client `busy`, or hold
    /// the request); `TooLarge`; `Closed` while stopping.
    pub fn offer_command(
        &mut self,
        session_id: u64,
        client_seq: u64,
        command: &[u8],
    ) -> Result<u64, OfferError> {
        if self.stopping || self.shared.failed.load(Ordering::Acquire) {
            return Err(OfferError::Closed);
        }
        if command.len() > journal::COMMAND_SIZE_MAX {
            return Err(OfferError::TooLarge);
        }
        let meta = journal::EntryMeta {
            timestamp_ns: self.timestamp_ns,
            session_id,
            client_seq,
        };
        self.s.append(meta, command, self.shared)
    }

    /// Hands a query to the engine; its reply comes through [`FrontendIo::poll_replies`].
    ///
    /// # Errors
    /// `BackPressured` when the query ring is full; `TooLarge`; `Closed` while stopping.
    pub fn offer_query(
        &mut self,
        session_id: u64,
        client_seq: u64,
        query: &[u8],
    ) -> Result<(), OfferError> {
        if self.stopping {
            return Err(OfferError::Closed);
        }
        self.s
            .queries
            .try_write(INGRESS_HEADER_SIZE + query.len(), |dst| {
                dst[..8].copy_from_slice(&session_id.to_le_bytes());
                dst[8..16].copy_from_slice(&client_seq.to_le_bytes());
                dst[16..].copy_from_slice(query);
            })
            .map_err(|e| match e {
                TryClaimError::Full => OfferError::BackPressured,
                TryClaimError::TooLarge => OfferError::TooLarge,
            })
    }

    /// Durable replies in log order (see [`Replies::poll`]).
    pub fn poll_replies(&mut self, limit: usize, handler: impl FnMut(Reply<'_>)) -> usize {
        self.replies.poll(limit, handler)
    }

    /// Last durable position.
    pub fn durable_position(&self) -> u64 {
        self.replies.durable.get()
    }

    /// Last applied position.
    pub fn applied_position(&self) -> u64 {
        self.shared.applied.load(Ordering::Acquire)
    }

    /// Whether the pipeline is stopping (take no new sessions).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }
}

/// The running pipeline.
pub struct Pipeline {
    shared: Arc<Shared>,
    durable: DurableWatch,
    producers: Mutex<Vec<ring::Producer>>,
    replies: Option<Replies>,
    threads: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Recovers from the data folder and starts the threads.
    ///
    /// # Errors
    /// Invalid configuration (naming the key), a journal that cannot be opened (corruption,
    /// missing segment, locked by another process), a snapshot newer than the journal.
    pub fn start(config: PipelineConfig) -> Result<(Pipeline, StartReport), String> {
        Self::start_inner(config, None)
    }

    /// Like [`Pipeline::start`], with `frontend` running on the sequencer thread: it feeds
    /// commands and queries in and sends replies out (the node's network side). The egress is
    /// the frontend's ([`Pipeline::take_replies`] returns `None`); producers still work.
    ///
    /// # Errors
    /// As [`Pipeline::start`].
    pub fn start_with(
        config: PipelineConfig,
        frontend: Box<dyn Frontend>,
    ) -> Result<(Pipeline, StartReport), String> {
        Self::start_inner(config, Some(frontend))
    }

    fn start_inner(
        config: PipelineConfig,
        frontend: Option<Box<dyn Frontend>>,
    ) -> Result<(Pipeline, StartReport), String> {
        config.validate()?;
        let journal_dir = config.data_dir.join("journal");
        let snapshot_dir = config.data_dir.join("snapshots");
        for dir in [&journal_dir, &snapshot_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("create folder {}: {e}", dir.display()))?;
        }
        let (journal, journal_report) =
            Journal::open(&journal_dir, config.journal).map_err(|e| e.to_string())?;
        let (mut engine, loaded) = snapshots::load_newest(&snapshot_dir, &config.engine)?;
        let last = journal.last_position();
        if engine.position() > last {
            return Err(format!(
                "snapshot at position {} is newer than the journal, which ends at {last}: the journal in {} lost \
                 durable data; restore it (or remove the snapshots to start from the journal alone)",
                engine.position(),
                journal_dir.display()
            ));
        }
        let replayed = replay(&journal_dir, &mut engine, last)?;
        // No page faults on the command path: map the engine's random-access tables now.
        engine.prefault();
        let clock = LogClock::starting_at(engine.now_ns());

        let shared = Arc::new(Shared::default());
        if frontend.is_some() {
            // SAFETY: eventfd takes two integers; a non-negative result is a new descriptor
            // that nothing else owns.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: `fd` is a fresh descriptor owned by nobody else.
            let owned =
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let _ = shared.sequencer_wake_fd.set(owned);
        }
        shared.sequenced.store(last, Ordering::Release);
        shared.applied.store(engine.position(), Ordering::Release);
        shared
            .state_hash
            .store(engine.state_hash(), Ordering::Release);
        let durable = journal.durable_watch();
        let prev_checksum = journal.last_checksum();

        let mut ingress_consumers = Vec::with_capacity(config.producers_max);
        let mut producers = Vec::with_capacity(config.producers_max);
        for _ in 0..config.producers_max {
            let (p, c) = ring::ring(config.ingress_ring_bytes);
            producers.push(p);
            ingress_consumers.push(c);
        }
        let (reply_producer, reply_consumer) = ring::ring(config.reply_ring_bytes);
        let (query_producer, query_consumer) = ring::ring(config.query_ring_bytes);

        let (to_journal, journal_rx) =
            mpsc::sync_channel::<Arc<SealedBatch>>(config.batches_in_flight_max);
        let (to_engine, engine_rx) =
            mpsc::sync_channel::<Arc<SealedBatch>>(config.batches_in_flight_max);
        let (to_preparer, preparer_rx) = mpsc::channel::<u64>();
        let (to_snapshot, snapshot_rx) = mpsc::channel::<engine::snapshot::Piece>();
        let to_snapshot = SnapshotTx {
            tx: to_snapshot,
            in_flight: Arc::new(AtomicU64::new(0)),
        };
        let snapshot_in_flight = Arc::clone(&to_snapshot.in_flight);

        let report = StartReport {
            journal: journal_report,
            snapshot: loaded,
            replayed,
            position: engine.position(),
        };

        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| format!("spawn thread {name}: {e}"))
        };

        let preparer = journal.preparer();
        let sh = shared.clone();
        threads.push(spawn(
            "tally-prepare",
            Box::new(move || {
                let half = preparer.segment_size() / 2;
                while let Ok(index) = preparer_rx.recv() {
                    // Paced while the writer has room to spare; at full speed once the
                    // current segment is half used (the spare must be ready at the roll).
                    let pace = |_done: u64| {
                        if sh.segment_used.load(Ordering::Relaxed) < half
                            && !sh.stopping.load(Ordering::Relaxed)
                        {
                            std::thread::sleep(PREPARE_PAUSE);
                        }
                    };
                    if let Err(e) = preparer.prepare_paced(index, pace) {
                        // Not fatal: the writer prepares inline at the next roll and reports
                        // a real failure (e.g. a full disk) there.
                        let _ = (&sh, e);
                    }
                }
            }),
        )?);

        let writer = JournalWriter {
            journal,
            to_preparer,
            retained: 0,
            unsynced: false,
        };
        let journal_sink = if config.journal_on_sequencer {
            drop(journal_rx);
            JournalSink::Inline(Box::new(writer))
        } else {
            let sh = shared.clone();
            threads.push(spawn(
                "tally-journal",
                Box::new(move || journal_loop(writer, journal_rx, &sh)),
            )?);
            JournalSink::Thread(to_journal)
        };

        let sh = shared.clone();
        let snap_durable = durable.clone();
        let (snapshots_kept, retain_journal) = (config.snapshots_kept, config.retain_journal);
        threads.push(spawn(
            "tally-snapshot",
            Box::new(move || {
                snapshot_loop(
                    snapshot_rx,
                    &snapshot_in_flight,
                    snap_durable,
                    &snapshot_dir,
                    snapshots_kept,
                    retain_journal,
                    &sh,
                )
            }),
        )?);

        let sh = shared.clone();
        let (idle, pins, interval) = (
            config.idle,
            config.pin_cores,
            config.snapshot_interval_commands,
        );
        threads.push(spawn(
            "tally-engine",
            Box::new(move || {
                if let Some((_, core)) = pins {
                    pin(core);
                }
                engine_loop(
                    engine,
                    engine_rx,
                    query_consumer,
                    reply_producer,
                    to_snapshot,
                    interval,
                    idle,
                    &sh,
                )
            }),
        )?);

        let sh = shared.clone();
        let seq = SequencerState {
            free: (0..config.batches_in_flight_max)
                .map(|_| BatchBuilder::new(last + 1))
                .collect(),
            in_flight: VecDeque::new(),
            open: None,
            next_position: last + 1,
            prev_checksum,
            term: config.term,
            clock,
            durable: durable.clone(),
            journal: journal_sink,
            to_engine,
            queries: query_producer,
        };
        let replies = Replies {
            ring: reply_consumer,
            durable: durable.clone(),
            shared: shared.clone(),
        };
        let (replies, frontend) = match frontend {
            Some(f) => (None, Some((f, replies))),
            None => (Some(replies), None),
        };
        threads.push(spawn(
            "tally-sequencer",
            Box::new(move || {
                if let Some((core, _)) = pins {
                    pin(core);
                }
                sequencer_loop(seq, ingress_consumers, frontend, idle, &sh)
            }),
        )?);

        let pipeline = Pipeline {
            shared,
            durable,
            producers: Mutex::new(producers),
            replies,
            threads,
        };
        Ok((pipeline, report))
    }

    /// Registers a producer; `None` once `producers_max` have been handed out.
    pub fn producer(&self) -> Option<Producer> {
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        producers.pop().map(|ring| Producer {
            ring,
            shared: self.shared.clone(),
        })
    }

    /// Takes the egress (once).
    pub fn take_replies(&mut self) -> Option<Replies> {
        self.replies.take()
    }

    /// Current positions and counters.
    pub fn status(&self) -> Status {
        let s = &self.shared;
        Status {
            sequenced_position: s.sequenced.load(Ordering::Acquire),
            durable_position: self.durable.get(),
            applied_position: s.applied.load(Ordering::Acquire),
            state_hash: s.state_hash.load(Ordering::Acquire),
            batches: s.batches.load(Ordering::Relaxed),
            snapshots: s.snapshots.load(Ordering::Relaxed),
            commands_too_large: s.too_large.load(Ordering::Relaxed),
            segments_retired: s.segments_retired.load(Ordering::Relaxed),
            journal_syncs: s
                .sync_us_log2
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum(),
            journal_sync_p99_us: s.sync_quantile_us(0.99),
            journal_sync_max_us: s.sync_max_ns.load(Ordering::Relaxed) / 1_000,
            segments_prepared_inline: s.segments_prepared_inline.load(Ordering::Relaxed),
            fatal: s.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Stops taking commands, makes everything already taken durable and applied, and joins
    /// the threads. Returns the final status (with the fatal error, if a thread failed).
    pub fn shutdown(mut self) -> Status {
        self.shared.stopping.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.status()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn pin(core: usize) {
    if let Some(id) =
        core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == core))
    {
        core_affinity::set_for_current(id);
    }
}

/// The engine's view of a journal entry's header.
pub fn entry_meta(entry: &journal::Entry<'_>) -> engine::EntryMeta {
    engine::EntryMeta {
        position: entry.position,
        timestamp_ns: entry.timestamp_ns,
        session_id: entry.session_id,
        client_seq: entry.client_seq,
    }
}

/// Applies every journal entry after the engine's position up to `last`.
fn replay(journal_dir: &std::path::Path, engine: &mut Engine, last: u64) -> Result<u64, String> {
    let from = engine.position() + 1;
    if from > last {
        return Ok(0);
    }
    let mut reader = JournalReader::open(journal_dir).map_err(|e| e.to_string())?;
    reader.seek(from).map_err(|e| e.to_string())?;
    let mut scratch = vec![0u8; engine::REPLY_LEN_MAX];
    let mut replayed = 0;
    while engine.position() < last {
        let Some(batch) = reader.next_batch().map_err(|e| e.to_string())? else {
            return Err(format!(
                "journal in {} ends at position {} during replay, expected {last}",
                journal_dir.display(),
                engine.position()
            ));
        };
        for entry in batch.entries_from(engine.position() + 1) {
            let meta = entry_meta(&entry);
            engine.apply(&meta, entry.command, &mut scratch);
            replayed += 1;
        }
    }
    Ok(replayed)
}

/// Where sealed batches go to be made durable.
enum JournalSink {
    /// To the journal writer thread, which syncs whatever has arrived (group commit) and
    /// wakes the sequencer.
    Thread(SyncSender<Arc<SealedBatch>>),
    /// Written by the sequencer thread itself, synced before it seals the next batch.
    Inline(Box<JournalWriter>),
}

struct SequencerState {
    free: Vec<BatchBuilder>,
    in_flight: VecDeque<Arc<SealedBatch>>,
    open: Option<BatchBuilder>,
    next_position: u64,
    prev_checksum: u32,
    term: u64,
    clock: LogClock,
    durable: DurableWatch,
    journal: JournalSink,
    to_engine: SyncSender<Arc<SealedBatch>>,
    queries: ring::Producer,
}

impl SequencerState {
    /// Moves batches both consumers are done with back to the free list.
    fn recycle(&mut self) {
        while let Some(front) = self.in_flight.front() {
            if Arc::strong_count(front) != 1 {
                break;
            }
            let Some(batch) = self.in_flight.pop_front() else {
                break;
            };
            match Arc::try_unwrap(batch) {
                Ok(sealed) => self.free.push(sealed.into_builder(self.next_position)),
                Err(batch) => {
                    self.in_flight.push_front(batch);
                    break;
                }
            }
        }
    }

    fn open_batch(&mut self) -> Option<&mut BatchBuilder> {
        if self.open.is_none() {
            let mut builder = self.free.pop()?;
            builder.reset(self.next_position);
            self.open = Some(builder);
        }
        self.open.as_mut()
    }

    /// Seals the open batch and hands it to the journal writer and the engine.
    fn seal(&mut self, shared: &Shared) -> bool {
        let Some(builder) = self.open.take() else {
            return false;
        };
        if builder.is_empty() {
            self.open = Some(builder);
            return false;
        }
        let sealed = Arc::new(builder.seal(self.term, self.clock.last_ns(), self.prev_checksum));
        self.prev_checksum = sealed.checksum();
        self.in_flight.push_back(sealed.clone());
        shared.batches.fetch_add(1, Ordering::Relaxed);
        // Channels hold batches_in_flight_max: sends cannot block, as at most that many
        // batches exist. A closed channel means that thread died: stop. The engine gets the
        // batch first, so that it applies while the batch is written.
        if self.to_engine.send(sealed.clone()).is_err() {
            shared.fail("engine thread stopped".into());
        }
        shared.wake_engine();
        match &mut self.journal {
            JournalSink::Thread(to_journal) => {
                if to_journal.send(sealed).is_err() {
                    shared.fail("journal writer thread stopped".into());
                }
            }
            // A write failure is fatal (recorded in `shared`); the loop stops on it.
            JournalSink::Inline(writer) => {
                writer.write(&sealed, shared);
            }
        }
        true
    }

    /// Whether the next batch may be sealed: the journal has made everything sealed durable
    /// (smart batching), or the sequencer syncs inline (it syncs each batch it seals before
    /// it takes more commands, so there is never a write in flight to wait for).
    fn may_seal(&self) -> bool {
        matches!(self.journal, JournalSink::Inline(_))
            || self.durable.get() >= self.sealed_position()
    }

    /// With the journal inline: one `fdatasync` for the batches written since the last one
    /// (group commit: everything that arrived while the previous sync ran). Returns whether
    /// it synced.
    fn sync_inline(&mut self, shared: &Shared) -> bool {
        match &mut self.journal {
            JournalSink::Inline(writer) if writer.unsynced => writer.sync(shared),
            JournalSink::Inline(writer) => {
                writer.retire(shared);
                false
            }
            JournalSink::Thread(_) => false,
        }
    }

    fn sealed_position(&self) -> u64 {
        self.next_position - 1 - self.open.as_ref().map_or(0, |b| u64::from(b.entry_count()))
    }

    /// Takes commands from the ingress rings; returns how many.
    fn poll_ingress(&mut self, consumers: &mut [ring::Consumer], shared: &Shared) -> usize {
        let timestamp = self.clock.stamp(wall_ns());
        let mut work = 0;
        for consumer in consumers {
            work += consumer.poll_while(INGRESS_POLL_LIMIT, |record| {
                self.take(record, timestamp, shared)
            });
        }
        work
    }

    /// Appends one ingress record to the open batch; `false` leaves it for later (no batch
    /// buffer free).
    fn take(&mut self, record: &[u8], timestamp_ns: u64, shared: &Shared) -> bool {
        let word =
            |i: usize| u64::from_le_bytes(record[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let meta = journal::EntryMeta {
            timestamp_ns,
            session_id: word(0),
            client_seq: word(1),
        };
        match self.append(meta, &record[INGRESS_HEADER_SIZE..], shared) {
            Err(OfferError::BackPressured) => false,
            // Producers check the size; what slips through is counted and dropped.
            Ok(_) | Err(_) => true,
        }
    }

    /// Appends a command to the open batch, sealing a full one; returns its position.
    fn append(
        &mut self,
        meta: journal::EntryMeta,
        command: &[u8],
        shared: &Shared,
    ) -> Result<u64, OfferError> {
        loop {
            let Some(batch) = self.open_batch() else {
                return Err(OfferError::BackPressured);
            };
            match batch.try_append(meta, command) {
                Ok(position) => {
                    self.next_position = position + 1;
                    shared.sequenced.store(position, Ordering::Release);
                    return Ok(position);
                }
                Err(AppendRefusal::Full) => {
                    self.seal(shared);
                }
                Err(AppendRefusal::CommandTooLarge) => {
                    shared.too_large.fetch_add(1, Ordering::Relaxed);
                    return Err(OfferError::TooLarge);
                }
            }
        }
    }
}

/// The sequencer thread. On shutdown it drains the rings (a command offered while `stopping`
/// was being set may still be taken, or refused with `Closed`; either way it was never
/// acknowledged), seals the last batch and returns, which closes the channels and lets the
/// journal writer and the engine finish.
fn sequencer_loop(
    mut s: SequencerState,
    mut consumers: Vec<ring::Consumer>,
    mut frontend: Option<(Box<dyn Frontend>, Replies)>,
    idle: IdleKind,
    shared: &Shared,
) {
    let _ = shared.sequencer_thread.set(std::thread::current());
    let mut kernel_wait = KernelWait::new(
        idle,
        frontend.as_ref().and_then(|(f, _)| f.wait_fd()),
        shared,
    );
    let mut idle = IdleStrategy::new(idle);
    loop {
        let stopping = shared.stopping.load(Ordering::Acquire);
        if shared.failed.load(Ordering::Acquire) {
            if let Some((f, _)) = frontend.as_mut() {
                f.on_shutdown();
            }
            return;
        }
        // With the journal inline, nothing was taken during the last sync: take everything
        // that arrived meanwhile (bounded) into the next group commit.
        let rounds_max = match s.journal {
            JournalSink::Inline(_) => INLINE_DRAIN_ROUNDS_MAX,
            JournalSink::Thread(_) => 1,
        };
        let mut work = 0;
        for _ in 0..rounds_max {
            s.recycle();
            let mut round = s.poll_ingress(&mut consumers, shared);
            if let Some((f, replies)) = frontend.as_mut() {
                let now_ns = wall_ns();
                let timestamp_ns = s.clock.stamp(now_ns);
                let mut io = FrontendIo {
                    s: &mut s,
                    shared,
                    replies,
                    timestamp_ns,
                    stopping,
                };
                round += f.do_work(now_ns, &mut io);
            }
            work += round;
            if round == 0 {
                break;
            }
        }
        // Smart batching: seal when the journal has caught up with everything sealed.
        if s.may_seal() && s.seal(shared) {
            work += 1;
        }
        if s.sync_inline(shared) {
            work += 1;
        }
        if stopping && work == 0 && consumers.iter().all(|c| c.is_empty()) {
            s.seal(shared);
            s.sync_inline(shared);
            if let Some((f, replies)) = frontend.as_mut() {
                drain_frontend(&mut s, f.as_mut(), replies, &mut idle, shared);
                f.on_shutdown();
            }
            return;
        }
        match kernel_wait.as_mut() {
            Some(k) => k.idle(work),
            None => idle.idle(work),
        }
    }
}

/// The sequencer thread's back-off in frontend mode: a few spins, then a wait in the kernel
/// (`ppoll`) on the frontend's socket and the thread's wake-up eventfd, bounded by the
/// back-off's longest park (the frontend's timers still run that often).
struct KernelWait {
    fds: [libc::pollfd; 2],
    spins_max: u32,
    spins: u32,
    timeout: libc::timespec,
}

impl KernelWait {
    fn new(
        kind: IdleKind,
        socket: Option<std::os::fd::RawFd>,
        shared: &Shared,
    ) -> Option<KernelWait> {
        use std::os::fd::AsRawFd;
        let IdleKind::BackOff {
            spins_max,
            park_max_ns,
            ..
        } = kind
        else {
            return None;
        };
        let wake = shared.sequencer_wake_fd.get()?.as_raw_fd();
        let pollfd = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        Some(KernelWait {
            fds: [pollfd(socket?), pollfd(wake)],
            spins_max,
            spins: 0,
            timeout: libc::timespec {
                tv_sec: (park_max_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (park_max_ns % 1_000_000_000) as libc::c_long,
            },
        })
    }

    fn idle(&mut self, work: usize) {
        if work > 0 {
            self.spins = 0;
            return;
        }
        if self.spins < self.spins_max {
            self.spins += 1;
            std::hint::spin_loop();
            return;
        }
        for fd in &mut self.fds {
            fd.revents = 0;
        }
        // SAFETY: `fds` is a live array of two pollfds and `timeout` a valid timespec for the
        // whole call; a null signal mask keeps the thread's own.
        let n = unsafe { libc::ppoll(self.fds.as_mut_ptr(), 2, &self.timeout, std::ptr::null()) };
        if n > 0 && self.fds[1].revents & libc::POLLIN != 0 {
            let mut counter = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer from the eventfd (non-blocking).
            let _ =
                unsafe { libc::read(self.fds[1].fd, counter.as_mut_ptr().cast(), counter.len()) };
        }
    }
}

/// On shutdown, keeps the frontend running until everything sequenced is durable and applied
/// and its replies are sent (bounded by [`DRAIN_TIMEOUT`]), so clients get their last answers.
fn drain_frontend(
    s: &mut SequencerState,
    frontend: &mut dyn Frontend,
    replies: &mut Replies,
    idle: &mut IdleStrategy,
    shared: &Shared,
) {
    let sealed = s.sealed_position();
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    while !shared.failed.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
        s.recycle();
        let done = replies.durable.get() >= sealed
            && shared.applied.load(Ordering::Acquire) >= sealed
            && replies.ring.is_empty();
        let now_ns = wall_ns();
        let timestamp_ns = s.clock.stamp(now_ns);
        let mut io = FrontendIo {
            s,
            shared,
            replies,
            timestamp_ns,
            stopping: true,
        };
        let work = frontend.do_work(now_ns, &mut io);
        if done && work == 0 && frontend.flushed() {
            return;
        }
        idle.idle(work);
    }
}

/// The journal's write side: group commit, its statistics, segment preparation requests and
/// retention. Owned by the journal writer thread, or by the sequencer thread itself when
/// [`PipelineConfig::journal_on_sequencer`] is set.
struct JournalWriter {
    journal: Journal,
    to_preparer: mpsc::Sender<u64>,
    /// Position before which segments have been retired.
    retained: u64,
    /// Whether a batch has been written since the last `fdatasync`.
    unsynced: bool,
}

impl JournalWriter {
    /// Writes one sealed batch (O_DIRECT, not yet durable). False after a fatal error.
    fn write(&mut self, batch: &SealedBatch, shared: &Shared) -> bool {
        if let Err(e) = self.journal.write(batch) {
            shared.fail(format!("journal write failed: {e}"));
            return false;
        }
        self.unsynced = true;
        if let Some(index) = self.journal.take_spare_request() {
            let _ = self.to_preparer.send(index);
        }
        true
    }

    /// One `fdatasync` for everything written (group commit): publishes the durable
    /// position, then retires segments no longer needed. False after a fatal error.
    fn sync(&mut self, shared: &Shared) -> bool {
        shared
            .segment_used
            .store(self.journal.segment_used(), Ordering::Relaxed);
        let started = std::time::Instant::now();
        if let Err(e) = self.journal.sync() {
            shared.fail(format!("journal fdatasync failed: {e}"));
            return false;
        }
        self.unsynced = false;
        shared.record_sync(started.elapsed());
        shared.wake_egress();
        shared.segments_prepared_inline.store(
            self.journal.stats().segments_prepared_inline,
            Ordering::Relaxed,
        );
        self.retire(shared)
    }

    /// Removes journal segments wholly before the oldest kept snapshot (they are not needed
    /// to recover). False after a fatal error.
    fn retire(&mut self, shared: &Shared) -> bool {
        let retain = shared.retain_from.load(Ordering::Acquire);
        if retain <= self.retained {
            return true;
        }
        match self.journal.retain_from(retain, &Retention::Delete) {
            Ok(n) => {
                shared
                    .segments_retired
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.retained = retain;
                true
            }
            Err(e) => {
                shared.fail(format!("journal retention failed: {e}"));
                false
            }
        }
    }
}

/// The journal writer thread: writes every batch handed to it, then one `fdatasync` for all
/// of them, and wakes the sequencer (durable moved: replies can go, the next batch be sealed).
fn journal_loop(mut writer: JournalWriter, batches: Receiver<Arc<SealedBatch>>, shared: &Shared) {
    loop {
        let first = match batches.recv_timeout(WAKE_INTERVAL) {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => {
                if !writer.retire(shared) {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut next = Some(first);
        while let Some(batch) = next.take() {
            if !writer.write(&batch, shared) {
                return;
            }
            drop(batch);
            next = batches.try_recv().ok();
        }
        if !writer.sync(shared) {
            return;
        }
        shared.wake_sequencer();
    }
}

#[allow(clippy::too_many_arguments)]
fn engine_loop(
    mut engine: Engine,
    batches: Receiver<Arc<SealedBatch>>,
    mut queries: ring::Consumer,
    mut replies: ring::Producer,
    to_snapshot: SnapshotTx,
    snapshot_interval: u64,
    idle: IdleKind,
    shared: &Shared,
) {
    let _ = shared.engine_thread.set(std::thread::current());
    let mut idle = IdleStrategy::new(idle);
    let mut scratch = vec![0u8; engine::REPLY_LEN_MAX];
    let mut last_snapshot = engine.position();
    loop {
        let answered = answer_queries(&engine, &mut queries, &mut replies, &mut scratch);
        let batch = match batches.try_recv() {
            Ok(batch) => batch,
            Err(TryRecvError::Empty) => {
                if shared.failed.load(Ordering::Acquire) {
                    return;
                }
                // Nothing to apply: a snapshot being copied goes on at full speed (as fast
                // as the writer takes it).
                if engine.freezing() && snapshot_step(&mut engine, &to_snapshot, false) {
                    continue;
                }
                idle.idle(answered);
                continue;
            }
            Err(TryRecvError::Disconnected) => {
                // Stopping: a snapshot begun is finished and handed over, as it would have
                // been had the copy been taken all at once.
                while engine.freezing() {
                    snapshot_step(&mut engine, &to_snapshot, true);
                }
                return;
            }
        };
        for entry in batch.entries() {
            let meta = entry_meta(&entry);
            let len = engine.apply(&meta, entry.command, &mut scratch);
            let reply = &scratch[..len];
            loop {
                let pushed = replies.try_write(REPLY_HEADER_SIZE + len, |dst| {
                    dst[..8].copy_from_slice(&meta.session_id.to_le_bytes());
                    dst[8..16].copy_from_slice(&meta.client_seq.to_le_bytes());
                    dst[16..24].copy_from_slice(&meta.position.to_le_bytes());
                    dst[24..].copy_from_slice(reply);
                });
                match pushed {
                    Ok(()) => break,
                    // Egress is behind: wait for it (back-pressure up the pipeline). While
                    // stopping nobody may be reading: the reply is dropped (the effect is in
                    // the journal; the client's retry is answered by the engine).
                    Err(TryClaimError::Full) if !shared.stopping.load(Ordering::Acquire) => {
                        idle.idle(0)
                    }
                    Err(_) => break,
                }
            }
            idle.reset();
        }
        drop(batch);
        shared.applied.store(engine.position(), Ordering::Release);
        shared
            .state_hash
            .store(engine.state_hash(), Ordering::Release);
        // Replies are waiting (they leave once durable) and the batch buffer can be reused.
        shared.wake_sequencer();
        shared.wake_egress();
        if snapshot_interval > 0
            && !engine.freezing()
            && engine.position() - last_snapshot >= snapshot_interval
        {
            // The snapshot is copied a step per batch from here on (see `snapshot_step`):
            // only the small tables are copied now.
            engine.freeze_begin();
            last_snapshot = engine.position();
        }
        if engine.freezing() {
            snapshot_step(&mut engine, &to_snapshot, false);
        }
    }
}

/// Bytes of snapshot pieces the engine lets wait for the writer before it stops copying ahead
/// (what commands force it to copy is still sent): the memory a snapshot costs while the disk
/// is slower than the copy.
const SNAPSHOT_IN_FLIGHT_MAX: u64 = 32 << 20;

/// The engine's side of the snapshot stream: the pieces' channel and the bytes in it.
struct SnapshotTx {
    tx: mpsc::Sender<engine::snapshot::Piece>,
    in_flight: Arc<AtomicU64>,
}

/// Copies the next step of the snapshot in progress (256 KiB of the retention ring and of
/// its index, about 50 µs: see `Engine::freeze_pieces`) unless the writer is behind by
/// [`SNAPSHOT_IN_FLIGHT_MAX`] (or `always`), and streams every piece ready to the snapshot
/// writer. Returns whether it copied a step.
fn snapshot_step(engine: &mut Engine, to: &SnapshotTx, always: bool) -> bool {
    let ahead = always || to.in_flight.load(Ordering::Acquire) < SNAPSHOT_IN_FLIGHT_MAX;
    let bytes = if ahead {
        engine::snapshot::FREEZE_STEP_BYTES
    } else {
        0
    };
    engine.freeze_pieces(bytes, &mut |piece| {
        to.in_flight
            .fetch_add(piece.bytes() as u64, Ordering::AcqRel);
        // A writer that is gone has failed the pipeline already.
        let _ = to.tx.send(piece);
    });
    ahead
}

/// Answers waiting queries at the engine's current position; a query's reply is released
/// once that position is durable, so no one reads state that a crash could take back.
fn answer_queries(
    engine: &Engine,
    queries: &mut ring::Consumer,
    replies: &mut ring::Producer,
    scratch: &mut [u8],
) -> usize {
    queries.poll_while(QUERY_POLL_LIMIT, |record| {
        let word =
            |i: usize| u64::from_le_bytes(record[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let len = engine.query(&record[INGRESS_HEADER_SIZE..], scratch);
        let position = engine.position();
        // A full reply ring leaves the query for the next round.
        replies
            .try_write(REPLY_HEADER_SIZE + len, |dst| {
                dst[..8].copy_from_slice(&word(0).to_le_bytes());
                dst[8..16].copy_from_slice(&word(1).to_le_bytes());
                dst[16..24].copy_from_slice(&position.to_le_bytes());
                dst[24..].copy_from_slice(&scratch[..len]);
            })
            .is_ok()
    })
}

fn snapshot_loop(
    pieces: Receiver<engine::snapshot::Piece>,
    in_flight: &AtomicU64,
    durable: DurableWatch,
    dir: &std::path::Path,
    keep: usize,
    retain: bool,
    shared: &Shared,
) {
    let mut current: Option<(engine::snapshot::SnapshotWriter, std::path::PathBuf)> = None;
    while let Ok(piece) = pieces.recv() {
        in_flight.fetch_sub(piece.bytes() as u64, Ordering::AcqRel);
        let written = if let Some(position) = piece.start_position() {
            let tmp = snapshots::tmp_path(dir, position);
            std::fs::File::create(&tmp)
                .and_then(|file| engine::snapshot::SnapshotWriter::start(file, piece))
                .map(|writer| current = Some((writer, tmp.clone())))
                .map_err(|e| format!("write {}: {e}", tmp.display()))
        } else if let Some((writer, tmp)) = current.as_mut() {
            match writer.write(piece) {
                Ok(false) => Ok(()),
                Ok(true) => match current.take() {
                    Some((writer, tmp)) => {
                        finish_snapshot(writer, &tmp, &durable, dir, keep, retain, shared)
                    }
                    None => Ok(()),
                },
                Err(e) => Err(format!("write {}: {e}", tmp.display())),
            }
        } else {
            Ok(())
        };
        if let Err(e) = written {
            shared.fail(format!("snapshot failed: {e}"));
            return;
        }
    }
}

/// A snapshot fully written to its temporary file: once its position is durable (only
/// durable state may be snapshotted, see `snapshots`), the trailer, fsync, rename, then the
/// older snapshots pruned and the journal before the oldest kept released.
fn finish_snapshot(
    writer: engine::snapshot::SnapshotWriter,
    tmp: &std::path::Path,
    durable: &DurableWatch,
    dir: &std::path::Path,
    keep: usize,
    retain: bool,
    shared: &Shared,
) -> Result<(), String> {
    let position = writer.position();
    while durable.get() < position {
        if shared.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let (file, _) = writer
        .finish()
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    let kept = snapshots::commit(dir, position, tmp, &file)
        .and_then(|_| snapshots::prune(dir, keep))
        .and_then(|_| snapshots::list(dir).map_err(|e| format!("list {}: {e}", dir.display())))?;
    shared.snapshots.fetch_add(1, Ordering::Relaxed);
    // Recovery may fall back to the oldest kept snapshot: keep the log after it.
    if let (true, Some(&oldest)) = (retain, kept.last()) {
        shared.retain_from.store(oldest + 1, Ordering::Release);
    }
    Ok(())
}
