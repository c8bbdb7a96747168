//! The journal: a folder of preallocated, fixed-size segment files holding the log as
//! checksummed, hash-chained batches, written with O_DIRECT and `fdatasync`.
//!
//! It moves and stores bytes and knows nothing of ledgers. The sequencer's journal writer
//! thread owns a [`Journal`] and runs group commit; replay, catch-up and `tally log dump` use a
//! [`JournalReader`]. Nothing here spawns threads.
//!
//! # On-disk format
//!
//! A journal folder holds `segment-<index>.tlj` files (20-digit decimal index, consecutive, all
//! [`Options::segment_size`] bytes, written full of zeros and synced before use) and
//! `journal.lock`. Each segment holds batches back to back, each starting at a
//! [`BLOCK_SIZE`] (4 KiB) boundary and padded with zeros to a whole number of blocks. A batch
//! never spans segments: one that does not fit in the rest of a segment goes to the start of the
//! next segment and the rest stays zero. All integers are little-endian.
//!
//! Batch header (64 bytes, schema message `BatchHeader`, [`format::BatchHeader`]):
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | magic u32 | `0x594C4C54` ("TLLY") |
//! | 4 | formatVersion u16 | 1 |
//! | 6 | headerLength u16 | 64 |
//! | 8 | term u64 | leader term |
//! | 16 | firstPosition u64 | position of the first entry (positions are command indexes from 1) |
//! | 24 | entryCount u32 | at least 1; the batch covers `[firstPosition, firstPosition + entryCount)` |
//! | 28 | byteLength u32 | header + entries, before padding; at most [`BATCH_SIZE_MAX`] |
//! | 32 | checksum u32 | CRC32C of bytes `[0, byteLength)` with this field zeroed |
//! | 36 | prevChecksum u32 | checksum of the previous batch; 0 for the first batch of a journal started at position 1 |
//! | 40 | timestampNs u64 | leader time at sealing |
//! | 48, 56 | reserved u64 ×2 | zero |
//!
//! Then `entryCount` entries, each a 40-byte entry header (schema message `LogEntry`,
//! [`format::EntryHeader`]: position u64 @0, timestampNs u64 @8, sessionId u64 @16, clientSeq
//! u64 @24, length u32 @32, reserved u32 @36), `length` bytes of command, and zero padding to
//! 8 bytes. Entries are opaque to the journal except for this header: it checks that positions
//! are consecutive and the entries tile the batch exactly, and uses positions for reads from any
//! position.
//!
//! # Durability rule
//!
//! [`Journal::append`] writes one batch with a single aligned `pwrite` at the tail and then
//! `fdatasync`s; only then does [`Journal::durable_position`] move. Because segments were
//! written full of zeros and synced beforehand, that `fdatasync` commits no metadata (a write
//! that grows a file or lands in unwritten `fallocate`d extents would). One write is in flight
//! at a time, so a crash can tear only the last batch. Group commit is the caller's loop: seal
//! whatever accumulated while the previous append ran, append it. Two [`BatchBuilder`]s (one
//! being filled, one being written; [`SealedBatch::into_builder`] recycles the buffer) let the
//! next batch fill while the previous one is written.
//!
//! Segment preparation happens off the hot path: [`Journal::open`] prepares one spare segment;
//! after each roll into a new segment, [`Journal::take_spare_request`] yields the next index to
//! prepare, which the caller hands to a [`SegmentPreparer`] on another thread. If the spare is
//! not ready at the next roll, the writer prepares it inline and counts it
//! ([`JournalStats::segments_prepared_inline`]).
//!
//! ```
//! use journal::{BatchBuilder, DirectIo, EntryMeta, Journal, JournalReader, Options};
//!
//! # let dir = std::env::temp_dir().join(format!("journal-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let options = Options { segment_size: journal::SEGMENT_SIZE_MIN, direct_io: DirectIo::Optional };
//! let (mut journal, report) = Journal::open(&dir, options)?;
//! println!("{report}");
//! // The group-commit loop: fill a builder, seal it (chaining to the previous checksum),
//! // append it (write + fdatasync), recycle the buffer for the batch after next.
//! let mut builder = BatchBuilder::new(journal.next_position());
//! let mut prev_checksum = journal.last_checksum();
//! for round in 0..3u64 {
//!     for client_seq in 0..10 {
//!         let meta = EntryMeta { timestamp_ns: round, session_id: 1, client_seq };
//!         builder.try_append(meta, b"command bytes")?;
//!     }
//!     let sealed = builder.seal(1, round, prev_checksum);
//!     prev_checksum = sealed.checksum();
//!     let durable = journal.append(&sealed)?; // replies up to `durable` may now leave
//!     builder = sealed.into_builder(durable + 1);
//! }
//! assert_eq!(journal.durable_position(), 30);
//!
//! let mut reader = JournalReader::open(&dir)?;
//! reader.seek(15)?;
//! let batch = reader.next_batch()?.expect("the batch holding 15");
//! assert_eq!(batch.entries_from(15).next().map(|e| e.position), Some(15));
//! # drop(journal);
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Recovery
//!
//! [`Journal::open`] scans every batch from the first segment, checking each batch and the
//! chain (consecutive positions, `prevChecksum`, non-decreasing term). At the first block that
//! is not a continuing batch, the table [`recovery::RECOVERY_CASES`] decides:
//!
//! | at the stop block | valid batch later? | decision |
//! |---|---|---|
//! | zeros after a batch, rest of segment zero, next segment's first block written | either | padding (the writer rolled): its first block is the next stop candidate |
//! | zeros, nothing non-zero later | no | clean end |
//! | zeros, then non-zero garbage | no | torn write: zero it, report bytes dropped |
//! | zeros | yes | refuse: a batch is missing (hole) |
//! | bad header or bad checksum | no | torn write: zero it, report bytes dropped |
//! | bad header or bad checksum | yes | refuse: corruption, naming segment file and offset |
//! | valid checksum, but breaks the chain or has malformed entries | either | refuse |
//!
//! Also refused: a missing segment between present ones (named), a segment whose length is not
//! the segment size (named; see [`Error::SegmentSizeMismatch`] for what to do), a journal locked
//! by another writer. Corruption of the very last batch cannot be told from a torn write and is
//! truncated and reported (recovering it needs a peer). The folder alone cannot reveal a
//! missing *first* segment (it looks like retention) or a missing last segment together with
//! the spare after it; a gap anywhere else is refused. Opening reads the whole journal; keep it
//! trimmed with [`Journal::retain_from`].
//!
//! # Errors and panics
//!
//! Every fallible operation returns [`Error`], whose variants name the file and offset and whose
//! messages say what to do. Parsing bytes never panics. Panics are reserved for caller bugs,
//! documented per method (sealing an empty batch, position 0).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod batch;
mod buffer;
mod error;
pub mod format;
mod journal;
mod probe;
mod reader;
pub mod recovery;
mod segment;

pub use batch::{AppendRefusal, BatchBuilder, EntryMeta, SealedBatch};
pub use error::{Error, Result};
pub use format::{Entry, FormatError};
pub use journal::{
    verify, DirectIoStatus, DurableWatch, Journal, JournalStats, RecoveryReport, Retention, Tail,
};
pub use probe::{disk_probe, disk_probe_for, DiskProbe, PROBE_FILE_SIZE_MAX};
pub use reader::{BatchView, JournalReader};
pub use segment::{segment_file_name, Prepared, SegmentPreparer, LOCK_FILE_NAME};

/// A log position: the index of a command, starting at 1 (0 means "none").
pub type Position = u64;

/// Alignment and granularity of every journal write and of batch starts, in bytes: the page
/// size and the logical block size O_DIRECT needs on the disks we target.
pub const BLOCK_SIZE: usize = 4096;
/// Size of the batch header, in bytes.
pub const HEADER_SIZE: usize = 64;
/// Size of the entry header, in bytes.
pub const ENTRY_HEADER_SIZE: usize = 40;
/// Entries are padded to this many bytes, so entry headers are 8-byte aligned.
pub const ENTRY_ALIGN: usize = 8;
/// Largest batch, header and entries, in bytes. Bounds the builder's and reader's buffers
/// (allocated once) and the latency of one group commit. At ~120-byte entries it holds ~8,700
/// commands: on this VM's disk a sync takes 0.05–4 ms (the host rate-limits bursts of syncs),
/// and at 5 M commands/s ~20,000 commands arrive during a 4 ms sync, which two or three
/// batches written before one `fdatasync` cover.
pub const BATCH_SIZE_MAX: usize = 1024 * 1024;
/// Largest command one entry can carry, in bytes: what fits in a batch with one entry.
pub const COMMAND_SIZE_MAX: usize =
    (BATCH_SIZE_MAX - HEADER_SIZE - ENTRY_HEADER_SIZE) / ENTRY_ALIGN * ENTRY_ALIGN;
/// Smallest segment, in bytes: one largest batch must fit.
pub const SEGMENT_SIZE_MIN: u64 = BATCH_SIZE_MAX as u64;
/// Largest segment, in bytes: preparing one (writing it full of zeros) must stay quick.
pub const SEGMENT_SIZE_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Default segment size, in bytes: prepared in well under a second on an SSD.
pub const SEGMENT_SIZE_DEFAULT: u64 = 64 * 1024 * 1024;
/// Size of one zero-fill write when preparing a segment or truncating a torn tail, in bytes.
pub const PREPARE_CHUNK_SIZE: usize = 1024 * 1024;
/// Size of one zero-fill write of a paced preparation
/// ([`SegmentPreparer::prepare_paced`]), in bytes: each is synced on its own, so the most a
/// concurrent writer's `fdatasync` can find unflushed from the preparer is this much.
pub const PACED_CHUNK_SIZE: usize = 128 * 1024;

const _: () = assert!(BLOCK_SIZE.is_power_of_two());
const _: () = assert!(BATCH_SIZE_MAX.is_multiple_of(BLOCK_SIZE));
const _: () = assert!(BATCH_SIZE_MAX <= u32::MAX as usize, "byteLength is a u32");
const _: () = assert!(
    HEADER_SIZE.is_multiple_of(ENTRY_ALIGN) && ENTRY_HEADER_SIZE.is_multiple_of(ENTRY_ALIGN)
);
const _: () = assert!(HEADER_SIZE + ENTRY_HEADER_SIZE + COMMAND_SIZE_MAX <= BATCH_SIZE_MAX);
const _: () = assert!(
    SEGMENT_SIZE_MIN >= BATCH_SIZE_MAX as u64,
    "a batch never spans segments"
);
const _: () = assert!(SEGMENT_SIZE_DEFAULT.is_multiple_of(BLOCK_SIZE as u64));
const _: () =
    assert!(SEGMENT_SIZE_MIN <= SEGMENT_SIZE_DEFAULT && SEGMENT_SIZE_DEFAULT <= SEGMENT_SIZE_MAX);
const _: () = assert!(PREPARE_CHUNK_SIZE.is_multiple_of(BLOCK_SIZE));
const _: () = assert!(PACED_CHUNK_SIZE.is_multiple_of(BLOCK_SIZE));

/// Whether the journal's writes use O_DIRECT. A three-way choice, not a bool: production wants
/// `Required`, tests and laptops on tmpfs want `Optional`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirectIo {
    /// Use O_DIRECT; refuse to open on a filesystem that does not support it.
    #[default]
    Required,
    /// Use O_DIRECT where supported, else fall back to buffered writes (still `fdatasync`ed)
    /// and report [`DirectIoStatus::FellBack`] so the caller can warn.
    Optional,
    /// Buffered writes, `fdatasync`ed.
    Disabled,
}

/// Journal configuration, checked once at [`Journal::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Size of each segment file, in bytes: a multiple of [`BLOCK_SIZE`] between
    /// [`SEGMENT_SIZE_MIN`] and [`SEGMENT_SIZE_MAX`]. Default [`SEGMENT_SIZE_DEFAULT`]. Must
    /// match the existing segments of a journal.
    pub segment_size: u64,
    /// O_DIRECT policy. Default [`DirectIo::Required`].
    pub direct_io: DirectIo,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: SEGMENT_SIZE_DEFAULT,
            direct_io: DirectIo::Required,
        }
    }
}

impl Options {
    /// Checks the values and how they relate.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the key, the value and the rule.
    pub fn validate(&self) -> Result<()> {
        let size = self.segment_size;
        if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&size) {
            return Err(Error::InvalidOption {
                key: "segment_size",
                value: size,
                rule: "between SEGMENT_SIZE_MIN (1 MiB, one largest batch) and SEGMENT_SIZE_MAX (4 GiB)",
            });
        }
        if !size.is_multiple_of(BLOCK_SIZE as u64) {
            return Err(Error::InvalidOption {
                key: "segment_size",
                value: size,
                rule: "a multiple of BLOCK_SIZE (4096)",
            });
        }
        Ok(())
    }
}
