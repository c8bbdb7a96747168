//! Snapshots: the whole engine state at a position, in a versioned, checksummed format.
//!
//! # Format (version 5, little-endian)
//! A 96-byte header (`MAGIC`, format version, reserved, position, log time, state hash, ring
//! head sequence, then the counts of accounts, retained transfers, pending transfers and
//! sessions, the count of retention index words, and 8 reserved bytes), the sections of
//! fixed-size records in that order (accounts in creation order; retained transfers oldest
//! first; the retention index's bucket words; pending transfers; sessions), and a trailer:
//! the CRC32C of every preceding byte and the total length. A pending transfer record holds
//! the position and log time of the command that created it, so that `GetTransfer` can
//! answer for an open pending transfer after its retained record has been evicted. Versions
//! 1 to 3 are still read: their pending records lack those two fields (the log time is
//! recovered from a deadline or the retained record, the position from the record or else
//! reported as 0), version 1 has no index section (its count is zero), and version 2's index
//! has an older layout (seven entries with 32-bit fingerprints per bucket); the index is then
//! rebuilt, as it is when the restoring configuration sizes the index differently from the
//! writer's. Version 4 has version 5's layout and is read as it is.
//!
//! # The state hash a snapshot carries
//! Version 5 changed no byte of the layout but what the header's state hash means: from it on,
//! the hash also covers each account's ledger, flags and code, each retained transfer's id,
//! kind and `extra`, each command's session id and sequence number, and its log time. A
//! snapshot of format 4 or older carries a hash built the older way. It is still restored,
//! and the restored engine continues from the value it carries, folding each later command in
//! the current way (and every snapshot it writes later carries that value on, version 5
//! though it is): its hash never again equals that of a node that replayed the same log from
//! the start. So compare state hashes only between nodes that started alike: both from the
//! log (or from version 5 snapshots written by nodes that did), or both from the same format
//! 4 (or older) snapshot.
//!
//! # Restore streams
//! [`Engine::restore`] reads a chunk (`RESTORE_CHUNK_SIZE`) at a time, adds it to the
//! checksum and decodes it straight into the new engine's tables. Retained records are read
//! directly into the ring's slots (`Retained` is `repr(C)` in the file's field order, so on a
//! little-endian machine there is nothing to decode) and checked while in cache; the
//! retention index's words are read straight into the new index when the configuration
//! sizes it as the writer's did (the common case: same node, same configuration), which
//! saves rebuilding it, a random write per retained id. The loaded words are checked
//! against the records as they arrive (`retention::LoadCheck`: every record has one entry,
//! reachable from its home bucket, no id twice; a sum of entry digests, with a record read
//! only for the few entries that overflowed their bucket): an index that does not check out
//! is rebuilt, as a missed id would let its retry apply twice. Otherwise (or from a version 1
//! file) the index is rebuilt a block at a time in hash order (see `Ring::adopt_restored`),
//! each id checked for a duplicate. No copy of the whole file is ever held (memory: the
//! engine, one chunk, a byte per retained transfer to check a loaded index and, for a
//! rebuild, 24 MiB of sorting scratch). What ties the tables together is checked as far as
//! it is cheap (in passes that already run, or over the pending transfers): account flags,
//! the kinds, states and account slots of retained records, every open pending transfer
//! against its retained record and its accounts' pending balances (per account), and ring
//! sequences no further on than the position allows. A structural problem met before the end (a
//! duplicate id, an unknown account slot) is held back until the trailer has been checked,
//! so a bit flip or a truncation is refused as
//! [`SnapshotError::ChecksumMismatch`] / [`SnapshotError::Truncated`], and no engine is returned
//! unless length and checksum match. Only the header is trusted before that, and only to
//! refuse a snapshot larger than the configuration ([`SnapshotError::CapacityExceeded`]).
//! When the tables to fill are large, a helper thread asks the kernel to map their pages
//! (`MADV_POPULATE_WRITE`) ahead of the restoring thread, and stops when the restore ends.
//! The accounts' listing orders (by id, by ledger and id: `order.rs`) are not in the file:
//! the restore builds them from the accounts at its end, in one pass when the accounts were
//! created in increasing id order on one ledger, else with two sorts (about 70 ms more for a
//! million accounts with random ids), into blocks the populate helper has mapped. Sorting on
//! another thread while the retained transfers load was slower here (0.77-0.82 s against
//! 0.65-0.84 s for 1M accounts and 10M retained ids): it took the populate helper's core.
//! Mapping fresh pages is the largest cost of a large restore on the development VM (its
//! host backs guest memory on first touch), which is why the ring, three quarters of the
//! bytes, is not on transparent huge pages: cold huge pages cost about three times as much
//! per byte to map there (see the crate docs), and a sequentially written ring gains nothing
//! from them. `Retained` is `align(64)` (one record per cache line); the file layout is
//! unchanged.
//!
//! # Threads: copy while commands go on, write elsewhere
//! Encoding and writing a snapshot takes time proportional to the state (hundreds of
//! megabytes with a full retention table), so the engine thread only copies it, a step at a
//! time after [`Engine::freeze_begin`] (see the crate docs for the rules that keep the copy at
//! its starting position), and another thread writes it. A node streams it:
//! [`Engine::freeze_pieces`] hands out [`Piece`]s as they are copied and a [`SnapshotWriter`]
//! writes each at its offset (the header's counts fix every section's place), with a running
//! CRC32C per section combined for the trailer, so the file is byte for byte what
//! [`Frozen::write_to`] writes and the copy is never held whole.
//! [`Engine::freeze_step`] collects the copy into a [`Frozen`] instead (tests, tools, the
//! bench), [`Engine::freeze`] copies everything at once (`&self`), and [`Engine::snapshot`]
//! encodes straight from the live tables for callers that can afford to hold the engine. An
//! incremental format (accounts dirtied since the last snapshot, plus the ring's new tail) is
//! the natural next step for learners (DESIGN §8), and the format version leaves room for it.

use std::io::{Read, Write};

use crate::engine::{Retained, Session};
use crate::{Account, ConfigError, Engine, EngineConfig};

/// First eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"TLLYSNAP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 5;
/// The first format version whose retention index has this build's layout (ten entries with
/// 16-bit fingerprints per 64-byte bucket): an older file's index is rebuilt, not loaded.
const INDEX_LAYOUT_VERSION: u32 = 3;
/// The oldest format version this build reads.
pub const FORMAT_VERSION_MIN: u32 = 1;
/// Header bytes.
pub const HEADER_SIZE: usize = 96;
/// Trailer bytes: CRC32C (u32), reserved (u32), total length (u64).
pub const TRAILER_SIZE: usize = 16;
/// Bytes per account record.
pub const ACCOUNT_SIZE: usize = 48;
/// Bytes per retained transfer record.
pub const RETAINED_SIZE: usize = 64;
/// Bytes per pending transfer record.
pub const PENDING_SIZE: usize = 80;
/// Bytes per pending transfer record in versions 1 to 3 (without the creating command's
/// position and log time).
pub const PENDING_SIZE_V3: usize = 64;
/// The first format version whose pending transfer records are [`PENDING_SIZE`] bytes.
const PENDING_CREATED_VERSION: u32 = 4;
/// Bytes per client session record.
pub const SESSION_SIZE: usize = 40;
/// Encoder buffer: large enough that writes reach the writer in big chunks.
const CHUNK_SIZE: usize = 1 << 16;
/// Bytes of retained transfers, and of the retention index, that one [`Engine::freeze_step`]
/// copies.
pub const FREEZE_STEP_BYTES: usize = 256 << 10;
/// Chunk of the bulk sections (retained transfers) handed to the writer at once.
const LARGE_CHUNK_SIZE: usize = 1 << 20;

/// Why a snapshot could not be read.
#[derive(Debug)]
pub enum SnapshotError {
    /// Reading or writing failed.
    Io(std::io::Error),
    /// Shorter than its header and trailer, or than the length its trailer records.
    Truncated {
        /// Bytes found.
        len: u64,
    },
    /// Not a snapshot: the first bytes are not `MAGIC`.
    BadMagic,
    /// Written by a format this build does not read.
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
    },
    /// The bytes were changed after writing (bit flip, torn write).
    ChecksumMismatch {
        /// CRC32C stored in the trailer.
        stored: u32,
        /// CRC32C of the bytes read.
        computed: u32,
    },
    /// The snapshot holds more than the configuration can: raise the named capacity.
    CapacityExceeded {
        /// Which table.
        what: &'static str,
        /// Entries in the snapshot.
        count: u64,
        /// Configured capacity.
        max: u64,
    },
    /// Checksum good but contents inconsistent (a bug in the writer).
    Invalid(&'static str),
    /// The configuration given to restore is invalid.
    Config(ConfigError),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "snapshot i/o error: {e}"),
            Self::Truncated { len } => write!(f, "snapshot truncated: only {len} bytes"),
            Self::BadMagic => write!(f, "not a tally snapshot (bad magic)"),
            Self::UnsupportedVersion { found } => write!(
                f,
                "snapshot format version {found} is not supported (this build reads {FORMAT_VERSION_MIN} to {FORMAT_VERSION})"
            ),
            Self::ChecksumMismatch { stored, computed } => write!(
                f,
                "snapshot corrupted: checksum {computed:#010x} does not match stored {stored:#010x}"
            ),
            Self::CapacityExceeded { what, count, max } => write!(
                f,
                "snapshot holds {count} {what} but the configuration allows {max}: raise it"
            ),
            Self::Invalid(why) => write!(f, "snapshot inconsistent: {why}"),
            Self::Config(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl From<std::io::Error> for SnapshotError {
    fn from(e: std::io::Error) -> Self {
        SnapshotError::Io(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingPart {
    pub(crate) id: u128,
    pub(crate) debit_id: u64,
    pub(crate) credit_id: u64,
    pub(crate) amount: u64,
    pub(crate) deadline_ns: u64,
    pub(crate) ring_seq: u64,
    pub(crate) extra: u64,
    /// Position and log time of the command that created it; `None` from a version 1-3
    /// file, which did not keep them.
    pub(crate) created: Option<(u64, u64)>,
}

/// The copied state: everything a snapshot holds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Parts {
    pub(crate) position: u64,
    pub(crate) now_ns: u64,
    pub(crate) hash: u64,
    pub(crate) ring_head_seq: u64,
    pub(crate) accounts: Vec<Account>,
    pub(crate) retained: Vec<Retained>,
    /// The retention index's bucket words.
    pub(crate) index: Vec<u32>,
    pub(crate) pending: Vec<PendingPart>,
    pub(crate) sessions: Vec<Session>,
}

/// Record decoders, one per section.
fn decode_account(b: &[u8]) -> Account {
    Account {
        id: le64(b, 0),
        ledger: le32(b, 8),
        flags: u16::from_le_bytes([b[12], b[13]]),
        code: u16::from_le_bytes([b[14], b[15]]),
        debits_posted: le64(b, 16),
        credits_posted: le64(b, 24),
        debits_pending: le64(b, 32),
        credits_pending: le64(b, 40),
    }
}

/// A pending transfer record: [`PENDING_SIZE`] bytes, or [`PENDING_SIZE_V3`] from a file
/// before version 4.
fn decode_pending(b: &[u8]) -> PendingPart {
    PendingPart {
        id: u128::from(le64(b, 0)) | (u128::from(le64(b, 8)) << 64),
        debit_id: le64(b, 16),
        credit_id: le64(b, 24),
        amount: le64(b, 32),
        deadline_ns: le64(b, 40),
        ring_seq: le64(b, 48),
        extra: le64(b, 56),
        created: (b.len() >= PENDING_SIZE).then(|| (le64(b, 64), le64(b, 72))),
    }
}

fn decode_session(b: &[u8]) -> Session {
    Session {
        id: le64(b, 0),
        last_seq: le64(b, 8),
        last_position: le64(b, 16),
        last_timestamp_ns: le64(b, 24),
        last_result: b[32],
    }
}

/// Where a dropped [`Frozen`] made by [`Engine::freeze`] leaves its buffers for the engine's
/// next `freeze` (at most one set is kept): copying into pages already mapped is a memcpy,
/// while a fresh copy of a large state first pays for mapping every page (over a second for
/// ten million retained transfers on the development VM), all of it holding the engine.
pub(crate) type Spare = std::sync::Arc<std::sync::Mutex<Option<Parts>>>;

/// A copy of the engine's state at one position, independent of the engine: `Send`, so another
/// thread can write it while the engine goes on. Dropping one made by [`Engine::freeze`] hands
/// its buffers back to that engine for its next `freeze`.
#[derive(Clone, Debug)]
pub struct Frozen {
    parts: Parts,
    spare: Option<Spare>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            if let Ok(mut slot) = spare.lock() {
                if slot.is_none() {
                    *slot = Some(std::mem::take(&mut self.parts));
                }
            }
        }
    }
}

impl Frozen {
    /// Position the snapshot covers.
    pub fn position(&self) -> u64 {
        self.parts.position
    }

    /// State hash at that position.
    pub fn state_hash(&self) -> u64 {
        self.parts.hash
    }

    /// Encodes the snapshot into `w`; returns the bytes written.
    pub fn write_to(&self, w: impl Write) -> std::io::Result<u64> {
        let p = &self.parts;
        write_snapshot(
            w,
            Header {
                position: p.position,
                now_ns: p.now_ns,
                hash: p.hash,
                ring_head_seq: p.ring_head_seq,
            },
            p.accounts.iter().copied(),
            (&p.retained, &[]),
            &p.index,
            p.pending.iter().copied(),
            &p.sessions,
        )
    }
}

/// A snapshot being copied while commands go on: its header and small tables until they are
/// handed out (streaming) or until the copy is complete (in memory), and its counts.
#[derive(Debug)]
pub(crate) struct Freezing {
    parts: Option<Box<Parts>>,
    counts: Counts,
}

/// One part of a snapshot streamed by [`Engine::freeze_pieces`], for a [`SnapshotWriter`].
pub struct Piece(PieceKind);

enum PieceKind {
    Start(Box<Parts>, Counts),
    Accounts { offset: u64, accounts: Vec<Account> },
    Retained { offset: u64, records: Vec<Retained> },
    Index { chunk: usize, words: Vec<u32> },
    End,
}

impl Piece {
    /// Bytes of memory the piece holds (for bounding what is in flight).
    pub fn bytes(&self) -> usize {
        match &self.0 {
            PieceKind::Start(p, _) => {
                p.accounts.len() * std::mem::size_of::<Account>()
                    + p.pending.len() * std::mem::size_of::<PendingPart>()
                    + p.sessions.len() * std::mem::size_of::<Session>()
            }
            PieceKind::Accounts { accounts, .. } => accounts.len() * std::mem::size_of::<Account>(),
            PieceKind::Retained { records, .. } => records.len() * RETAINED_SIZE,
            PieceKind::Index { words, .. } => words.len() * 4,
            PieceKind::End => 0,
        }
    }

    /// The position of the snapshot, on its first piece.
    pub fn start_position(&self) -> Option<u64> {
        match &self.0 {
            PieceKind::Start(p, _) => Some(p.position),
            _ => None,
        }
    }
}

/// Writes into a file at a position that advances (positioned writes, so that several
/// sections can be written out of order).
struct At<'f> {
    file: &'f std::fs::File,
    at: u64,
}

impl Write for At<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(buf, self.at)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of a section written between two starts of its writeback (see [`Writeback`]).
const WRITEBACK_WINDOW: u64 = 16 << 20;

/// Keeps the disk busy while a section of a streamed snapshot is written front to back: after
/// every [`WRITEBACK_WINDOW`] bytes, asks the kernel to start writing that window out
/// (`sync_file_range(WRITE)`, which does not wait) and waits for the window before it, so
/// that at most two windows per section are dirty. Without it the page cache fills with the
/// whole snapshot, the kernel throttles the writer to the disk's pace anyway, and the final
/// `fsync` has everything left to do. A hint about timing only: durability is the final
/// `fsync`'s job, and a failed call changes nothing.
#[derive(Clone, Copy, Debug)]
struct Writeback {
    /// End of the last window whose writeback was started.
    started: u64,
    /// Start of that window (waited for once the next one starts).
    previous: Option<u64>,
}

impl Writeback {
    fn new(at: u64) -> Writeback {
        Writeback {
            started: at,
            previous: None,
        }
    }

    /// The section has been written up to `end`.
    fn written(&mut self, file: &std::fs::File, end: u64) {
        while end >= self.started + WRITEBACK_WINDOW {
            sync_file_range(
                file,
                self.started,
                WRITEBACK_WINDOW,
                libc::SYNC_FILE_RANGE_WRITE,
            );
            if let Some(previous) = self.previous {
                sync_file_range(
                    file,
                    previous,
                    WRITEBACK_WINDOW,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE,
                );
            }
            self.previous = Some(self.started);
            self.started += WRITEBACK_WINDOW;
        }
    }
}

#[allow(unsafe_code)]
fn sync_file_range(file: &std::fs::File, at: u64, len: u64, flags: libc::c_uint) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `file` keeps open; it reads and writes no
    // memory of ours. Errors only mean the hint was not taken.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            flags,
        );
    }
}

/// Writes a snapshot streamed by [`Engine::freeze_pieces`] into a file as its pieces arrive:
/// the header and the small sections at once (the counts in the first piece fix every
/// section's offset), then the accounts, the retained transfers and the index, each in order,
/// with its CRC32C running on as it goes; the trailer's CRC combines the five parts', so
/// nothing is read back. The file is byte for byte what [`Frozen::write_to`] would write for the same
/// snapshot.
pub struct SnapshotWriter {
    file: std::fs::File,
    position: u64,
    layout: (u64, u64, u64, u64),
    head: (u32, u64),
    tail: (u32, u64),
    counts: Counts,
    /// CRC32C and length so far of the sections written in order ([`ACCOUNTS`], [`RETAINED`],
    /// [`INDEX`]), in file order.
    sections: [(u32, u64); 3],
    /// Their writeback.
    writeback: [Writeback; 3],
    accounts: u64,
    retained_records: u64,
    index_chunks: usize,
}

/// The sections a [`SnapshotWriter`] writes in order, as it receives them.
const ACCOUNTS: usize = 0;
const RETAINED: usize = 1;
const INDEX: usize = 2;

impl SnapshotWriter {
    /// Writes the first piece (header, pending transfers, sessions) into `file`.
    ///
    /// # Errors
    /// I/O errors; `InvalidInput` if `first` is not a snapshot's first piece.
    pub fn start(file: std::fs::File, first: Piece) -> std::io::Result<SnapshotWriter> {
        let PieceKind::Start(parts, counts) = first.0 else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a snapshot stream starts with its header piece",
            ));
        };
        let layout = counts.layout();
        let h = Header {
            position: parts.position,
            now_ns: parts.now_ns,
            hash: parts.hash,
            ring_head_seq: parts.ring_head_seq,
        };
        let mut e = encoder(At { file: &file, at: 0 });
        put_header(&mut e, &h, counts)?;
        e.flush()?;
        let head = (e.crc, e.len);
        let mut e = encoder(At {
            file: &file,
            at: layout.2,
        });
        put_tail(&mut e, parts.pending.iter().copied(), &parts.sessions)?;
        let tail = (e.crc, e.len);
        Ok(SnapshotWriter {
            file,
            position: parts.position,
            layout,
            head,
            tail,
            counts,
            sections: [(0, 0); 3],
            writeback: [
                Writeback::new(HEADER_SIZE as u64),
                Writeback::new(layout.0),
                Writeback::new(layout.1),
            ],
            accounts: 0,
            retained_records: 0,
            index_chunks: 0,
        })
    }

    /// The position the snapshot covers.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Writes one more piece; returns `true` once the end piece has come.
    ///
    /// # Errors
    /// I/O errors; `InvalidInput` for a piece out of place (a second header, retained records
    /// out of order, an index chunk beyond the table).
    pub fn write(&mut self, piece: Piece) -> std::io::Result<bool> {
        let misplaced = |what: &str| {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("snapshot stream: {what}"),
            ))
        };
        match piece.0 {
            PieceKind::Start(..) => return misplaced("a second header piece"),
            PieceKind::End => return Ok(true),
            PieceKind::Accounts { offset, accounts } => {
                if offset != self.accounts
                    || offset + accounts.len() as u64 > self.counts.accounts as u64
                {
                    return misplaced("accounts out of order");
                }
                let at = (HEADER_SIZE as u64) + offset * ACCOUNT_SIZE as u64;
                self.append(ACCOUNTS, at, |e| put_accounts(e, accounts.iter().copied()))?;
                self.accounts += accounts.len() as u64;
            }
            PieceKind::Retained { offset, records } => {
                if offset != self.retained_records
                    || offset + records.len() as u64 > self.counts.retained as u64
                {
                    return misplaced("retained records out of order");
                }
                let at = self.layout.0 + offset * RETAINED_SIZE as u64;
                self.append(RETAINED, at, |e| put_retained_records(e, &records))?;
                self.retained_records += records.len() as u64;
            }
            PieceKind::Index { chunk, words } => {
                const CHUNK_WORDS: usize = crate::retention::COPY_CHUNK_WORDS;
                if chunk != self.index_chunks
                    || chunk * CHUNK_WORDS + words.len() > self.counts.index_words
                {
                    return misplaced("index chunks out of order");
                }
                let at = self.layout.1 + (chunk * CHUNK_WORDS * 4) as u64;
                self.append(INDEX, at, |e| put_index_words(e, &words))?;
                self.index_chunks += words.len().div_ceil(CHUNK_WORDS);
            }
        }
        Ok(false)
    }

    /// Writes what `put` encodes at `at`, the next bytes of section `section` (written in
    /// order, so its CRC32C runs on from the bytes before), and starts their writeback.
    fn append(
        &mut self,
        section: usize,
        at: u64,
        put: impl FnOnce(&mut Encoder<At<'_>>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut e = encoder(At {
            file: &self.file,
            at,
        });
        e.crc = self.sections[section].0;
        put(&mut e)?;
        e.flush()?;
        self.sections[section] = (e.crc, self.sections[section].1 + e.len);
        self.writeback[section].written(&self.file, at + e.len);
        Ok(())
    }

    /// Writes the trailer once every piece is in; returns the file (not yet synced) and its
    /// length.
    ///
    /// # Errors
    /// I/O errors; `InvalidInput` if pieces are missing.
    pub fn finish(self) -> std::io::Result<(std::fs::File, u64)> {
        if self.accounts != self.counts.accounts as u64
            || self.retained_records != self.counts.retained as u64
            || self.sections[INDEX].1 != (self.counts.index_words * 4) as u64
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "snapshot stream ended with pieces missing",
            ));
        }
        let mut crc = self.head;
        for part in self.sections {
            crc = (combine(crc, part), crc.1 + part.1);
        }
        crc = (combine(crc, self.tail), crc.1 + self.tail.1);
        debug_assert_eq!(crc.1, self.layout.3);
        let t = trailer(crc.0, crc.1);
        {
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(&t, crc.1)?;
        }
        Ok((self.file, crc.1 + TRAILER_SIZE as u64))
    }
}

/// The CRC32C of `a`'s bytes followed by `b`'s, from each one's CRC and length.
fn combine(a: (u32, u64), b: (u32, u64)) -> u32 {
    if b.1 == 0 {
        a.0
    } else if a.1 == 0 {
        b.0
    } else {
        crc32c::crc32c_combine(a.0, b.0, b.1 as usize)
    }
}

/// Grows `v` to hold `len` items in one allocation backed by huge pages where possible.
pub(crate) fn reserve_huge<T>(v: &mut Vec<T>, len: usize) {
    if v.capacity() < len {
        *v = Vec::with_capacity(len);
        crate::prefetch::advise_huge_pages(v);
    }
}

struct Header {
    position: u64,
    now_ns: u64,
    hash: u64,
    ring_head_seq: u64,
}

struct Encoder<W: Write> {
    w: W,
    buf: Vec<u8>,
    crc: u32,
    len: u64,
}

impl<W: Write> Encoder<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + bytes.len() > CHUNK_SIZE {
            self.flush()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }

    /// Writes a long run of bytes past the buffer: checksummed and handed to the writer a
    /// chunk at a time (each still in cache when the writer copies it; a `BufWriter` of at
    /// most `LARGE_CHUNK_SIZE` passes chunks through without copying them).
    fn put_large(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.flush()?;
        for chunk in bytes.chunks(LARGE_CHUNK_SIZE) {
            self.crc = crc32c::crc32c_append(self.crc, chunk);
            self.len += chunk.len() as u64;
            self.w.write_all(chunk)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.len += self.buf.len() as u64;
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

/// The counts a snapshot's header carries.
#[derive(Clone, Copy, Debug)]
struct Counts {
    accounts: usize,
    retained: usize,
    pending: usize,
    sessions: usize,
    index_words: usize,
}

impl Counts {
    /// Byte offsets of the sections (retained, index, pending) and of the trailer (the
    /// accounts follow the header).
    fn layout(&self) -> (u64, u64, u64, u64) {
        let retained_at = (HEADER_SIZE + self.accounts * ACCOUNT_SIZE) as u64;
        let index_at = retained_at + (self.retained * RETAINED_SIZE) as u64;
        let pending_at = index_at + (self.index_words * 4) as u64;
        let trailer_at =
            pending_at + (self.pending * PENDING_SIZE + self.sessions * SESSION_SIZE) as u64;
        (retained_at, index_at, pending_at, trailer_at)
    }
}

/// The header.
fn put_header<W: Write>(e: &mut Encoder<W>, h: &Header, counts: Counts) -> std::io::Result<()> {
    e.put(&MAGIC)?;
    e.put(&FORMAT_VERSION.to_le_bytes())?;
    e.put(&0u32.to_le_bytes())?;
    for v in [h.position, h.now_ns, h.hash, h.ring_head_seq] {
        e.u64(v)?;
    }
    for v in [
        counts.accounts,
        counts.retained,
        counts.pending,
        counts.sessions,
        counts.index_words,
        0,
    ] {
        e.u64(v as u64)?;
    }
    Ok(())
}

/// Accounts, as the file holds them.
fn put_accounts<W: Write>(
    e: &mut Encoder<W>,
    accounts: impl Iterator<Item = Account>,
) -> std::io::Result<()> {
    for a in accounts {
        let mut b = [0u8; ACCOUNT_SIZE];
        b[0..8].copy_from_slice(&a.id.to_le_bytes());
        b[8..12].copy_from_slice(&a.ledger.to_le_bytes());
        b[12..14].copy_from_slice(&a.flags.to_le_bytes());
        b[14..16].copy_from_slice(&a.code.to_le_bytes());
        b[16..24].copy_from_slice(&a.debits_posted.to_le_bytes());
        b[24..32].copy_from_slice(&a.credits_posted.to_le_bytes());
        b[32..40].copy_from_slice(&a.debits_pending.to_le_bytes());
        b[40..48].copy_from_slice(&a.credits_pending.to_le_bytes());
        e.put(&b)?;
    }
    Ok(())
}

/// Retained records, as the file holds them.
fn put_retained_records<W: Write>(e: &mut Encoder<W>, records: &[Retained]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        // The records' bytes are the format's: no encoding, no copy.
        use zerocopy::IntoBytes;
        e.put_large(records.as_bytes())
    } else {
        records.iter().try_for_each(|r| put_retained(e, r))
    }
}

/// Retention index words, as the file holds them.
fn put_index_words<W: Write>(e: &mut Encoder<W>, words: &[u32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        use zerocopy::IntoBytes;
        e.put_large(words.as_bytes())
    } else {
        words.iter().try_for_each(|w| e.put(&w.to_le_bytes()))
    }
}

/// The pending transfers and sessions sections.
fn put_tail<W: Write>(
    e: &mut Encoder<W>,
    pending: impl Iterator<Item = PendingPart>,
    sessions: &[Session],
) -> std::io::Result<()> {
    for p in pending {
        let words = [
            p.id as u64,
            (p.id >> 64) as u64,
            p.debit_id,
            p.credit_id,
            p.amount,
            p.deadline_ns,
            p.ring_seq,
            p.extra,
            p.created.map_or(0, |c| c.0),
            p.created.map_or(0, |c| c.1),
        ];
        let mut b = [0u8; PENDING_SIZE];
        for (i, v) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        e.put(&b)?;
    }
    for s in sessions {
        let words = [
            s.id,
            s.last_seq,
            s.last_position,
            s.last_timestamp_ns,
            u64::from(s.last_result),
        ];
        let mut b = [0u8; SESSION_SIZE];
        for (i, v) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        e.put(&b)?;
    }
    e.flush()
}

/// The trailer for `crc` over `len` bytes: CRC32C, reserved, total length.
fn trailer(crc: u32, len: u64) -> [u8; TRAILER_SIZE] {
    let mut t = [0u8; TRAILER_SIZE];
    t[0..4].copy_from_slice(&crc.to_le_bytes());
    t[8..16].copy_from_slice(&(len + TRAILER_SIZE as u64).to_le_bytes());
    t
}

fn encoder<W: Write>(w: W) -> Encoder<W> {
    Encoder {
        w,
        buf: Vec::with_capacity(CHUNK_SIZE),
        crc: 0,
        len: 0,
    }
}

fn write_snapshot<W: Write>(
    w: W,
    h: Header,
    accounts: impl ExactSizeIterator<Item = Account>,
    retained: (&[Retained], &[Retained]),
    index: &[u32],
    pending: impl Iterator<Item = PendingPart> + Clone,
    sessions: &[Session],
) -> std::io::Result<u64> {
    let counts = Counts {
        accounts: accounts.len(),
        retained: retained.0.len() + retained.1.len(),
        pending: pending.clone().count(),
        sessions: sessions.len(),
        index_words: index.len(),
    };
    let mut e = encoder(w);
    put_header(&mut e, &h, counts)?;
    put_accounts(&mut e, accounts)?;
    e.flush()?;
    put_retained_records(&mut e, retained.0)?;
    put_retained_records(&mut e, retained.1)?;
    put_index_words(&mut e, index)?;
    put_tail(&mut e, pending, sessions)?;
    let t = trailer(e.crc, e.len);
    e.w.write_all(&t)?;
    e.w.flush()?;
    Ok(e.len + TRAILER_SIZE as u64)
}

/// Encodes one retained record field by field (the bulk copy's equivalent, for big-endian
/// machines).
#[cfg_attr(target_endian = "little", allow(dead_code))]
fn put_retained<W: Write>(e: &mut Encoder<W>, r: &Retained) -> std::io::Result<()> {
    let mut b = [0u8; RETAINED_SIZE];
    let words = [
        r.id_lo,
        r.id_hi,
        r.amount,
        r.position,
        r.timestamp_ns,
        r.extra,
    ];
    for (i, v) in words.iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    b[48..52].copy_from_slice(&r.debit.to_le_bytes());
    b[52..56].copy_from_slice(&r.credit.to_le_bytes());
    b[56..60].copy_from_slice(&r.ledger.to_le_bytes());
    b[60] = r.kind;
    b[61] = r.state;
    b[62..64].copy_from_slice(&r.reserved);
    e.put(&b)
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Bound on the ring sequences a snapshot may hold: 2^62 transfers (146 years at a billion
/// a second), far from where the ring's sequence arithmetic would overflow.
const RING_SEQUENCE_MAX: u64 = 1 << 62;

/// Bytes read per `read` call while restoring: large enough for few calls, small enough to
/// stay in the L2 cache while it is checksummed and decoded.
const RESTORE_CHUNK_SIZE: usize = 1 << 20;

/// Table bytes a restore must map from which a helper thread maps them ahead of it.
const POPULATE_AHEAD_MIN_BYTES: usize = 64 << 20;

/// The snapshot being read: counts and checksums every byte before the trailer.
struct Source<R: Read> {
    r: R,
    crc: u32,
    len: u64,
}

impl<R: Read> Source<R> {
    /// Fills `buf` completely (adding it to the checksum when `body`), or says how long the
    /// snapshot turned out to be.
    fn fill(&mut self, buf: &mut [u8], body: bool) -> Result<(), SnapshotError> {
        let mut at = 0;
        while at < buf.len() {
            match self.r.read(&mut buf[at..]) {
                Ok(0) => {
                    return Err(SnapshotError::Truncated {
                        len: self.len + at as u64,
                    })
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if body {
            self.crc = crc32c::crc32c_append(self.crc, buf);
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Reads `count` records of `size` bytes, a chunk at a time, handing each chunk to `f`.
    fn records(
        &mut self,
        chunk: &mut [u8],
        count: u64,
        size: usize,
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), SnapshotError> {
        let per_chunk = (chunk.len() / size) as u64;
        let mut left = count;
        while left > 0 {
            let n = left.min(per_chunk) as usize;
            let bytes = &mut chunk[..n * size];
            self.fill(bytes, true)?;
            f(bytes);
            left -= n as u64;
        }
        Ok(())
    }
}

/// Streams a snapshot into a new engine. Structural checks that fail before the checksum has
/// been verified are held back: a damaged snapshot is reported as a checksum mismatch.
fn restore_stream(config: EngineConfig, r: impl Read) -> Result<Engine, SnapshotError> {
    let mut src = Source { r, crc: 0, len: 0 };
    let mut h = [0u8; HEADER_SIZE];
    src.fill(&mut h, true)?;
    if h[0..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = le32(&h, 8);
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
        return Err(SnapshotError::UnsupportedVersion { found: version });
    }
    let (position, now_ns, hash, ring_head_seq) =
        (le64(&h, 16), le64(&h, 24), le64(&h, 32), le64(&h, 40));
    let counts = [le64(&h, 48), le64(&h, 56), le64(&h, 64), le64(&h, 72)];
    let index_words = le64(&h, 80);
    config.validate().map_err(SnapshotError::Config)?;
    let limits = [
        ("accounts", config.accounts_max),
        ("retained transfers", config.transfers_retained_max),
        ("pending transfers", config.pending_max),
        ("sessions", config.sessions_max),
    ];
    for ((what, max), count) in limits.into_iter().zip(counts) {
        if count > u64::from(max) {
            return Err(SnapshotError::CapacityExceeded {
                what,
                count,
                max: u64::from(max),
            });
        }
    }
    let mut e = Engine::new(config).map_err(SnapshotError::Config)?;
    // Mapping the fresh pages of large tables (zero-filling them) costs as much as the rest of
    // a restore together, on a virtual machine more: a helper thread maps them ahead of this
    // one (the tables are fixed-size, so their addresses hold for the whole restore).
    let spans = e.restore_spans(counts[0], counts[1]);
    let mapped: usize = spans.iter().map(|s| s.1).sum();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        if mapped >= POPULATE_AHEAD_MIN_BYTES {
            let stop = &stop;
            // A thread inherits its creator's affinity: started from a pinned thread (a
            // benchmark's, a replica's) the helper would share that one core and only slow
            // the restore down (0.49-0.61 s against 0.34-0.44 s for a 1M-account snapshot with
            // 10M retained ids here), so it moves to the other cores.
            let restoring_cores = crate::prefetch::current_cores();
            let _ = std::thread::Builder::new()
                .name("restore-populate".into())
                .spawn_scoped(scope, move || {
                    crate::prefetch::leave_cores(&restoring_cores);
                    crate::prefetch::populate_for_write(&spans, stop)
                });
        }
        let restored = restore_body(
            &mut e,
            &mut src,
            ring_head_seq,
            (counts, index_words, version),
            (position, now_ns, hash),
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        restored
    })?;
    Ok(e)
}

/// The sections and trailer of a snapshot whose header has been read, into the new engine.
fn restore_body<R: Read>(
    e: &mut Engine,
    src: &mut Source<R>,
    ring_head_seq: u64,
    (counts, index_words, version): ([u64; 4], u64, u32),
    (position, now_ns, hash): (u64, u64, u64),
) -> Result<(), SnapshotError> {
    e.restore_ring_head(ring_head_seq);
    // The first inconsistency found; once there is one, records are read but not applied.
    let mut invalid: Option<&'static str> = None;
    let mut chunk = vec![0u8; RESTORE_CHUNK_SIZE];
    let mut accounts: Vec<Account> = Vec::with_capacity(RESTORE_CHUNK_SIZE / ACCOUNT_SIZE);
    src.records(&mut chunk, counts[0], ACCOUNT_SIZE, |bytes| {
        if invalid.is_none() {
            accounts.clear();
            accounts.extend(bytes.chunks_exact(ACCOUNT_SIZE).map(decode_account));
            invalid = e.restore_accounts(&accounts).err();
        }
    })?;
    drop(accounts);
    // The retained transfers' sequences (`ring_head_seq` on) count the transfers ever
    // retained, at most `TRANSFERS_PER_COMMAND_MAX` per command, so fewer than that many per
    // position, and never near `u64::MAX` (where the ring's arithmetic would overflow).
    let seq_max = position
        .saturating_mul(crate::TRANSFERS_PER_COMMAND_MAX as u64)
        .min(RING_SEQUENCE_MAX);
    if invalid.is_none()
        && ring_head_seq
            .checked_add(counts[1])
            .is_none_or(|end| end > seq_max)
    {
        invalid = Some("retained transfer sequences beyond what the position allows");
    }
    // Retained records are read straight into the ring (their in-memory layout is the
    // record's), then checked and indexed a chunk at a time.
    // The saved retention index is used as it is when it has this build's layout and this
    // configuration sizes the index the same (the layout then depends only on the bucket
    // count); else it is rebuilt.
    let load_index = version >= INDEX_LAYOUT_VERSION
        && index_words != 0
        && index_words == e.retention_index_words().len() as u64;
    let checked = e.restore_retained(counts[1], invalid.is_none(), !load_index, |bytes| {
        src.fill(bytes, true)
    })?;
    let mut ring = match checked {
        Ok(ring) => ring,
        Err(why) => {
            invalid = invalid.or(Some(why));
            Default::default()
        }
    };
    if load_index {
        // Checked as it loads (pending transfers are checked against the ring through the
        // index, so it must be right first).
        use zerocopy::IntoBytes;
        let check = (ring.digest, std::mem::take(&mut ring.homes));
        let checked =
            e.restore_index(invalid.is_none(), check, RESTORE_CHUNK_SIZE / 4, |part| {
                src.fill(part.as_mut_bytes(), true)?;
                if cfg!(target_endian = "big") {
                    for w in part.iter_mut() {
                        *w = u32::from_le(*w);
                    }
                }
                Ok::<(), SnapshotError>(())
            })?;
        invalid = invalid.or(checked.err());
    } else {
        src.records(&mut chunk, index_words, 4, |_| {})?;
    }
    let pending_size = if version >= PENDING_CREATED_VERSION {
        PENDING_SIZE
    } else {
        PENDING_SIZE_V3
    };
    src.records(&mut chunk, counts[2], pending_size, |bytes| {
        for b in bytes.chunks_exact(pending_size) {
            if invalid.is_none() {
                invalid = e.restore_pending(&decode_pending(b)).err();
            }
        }
    })?;
    src.records(&mut chunk, counts[3], SESSION_SIZE, |bytes| {
        for b in bytes.chunks_exact(SESSION_SIZE) {
            if invalid.is_none() {
                invalid = e.restore_session(decode_session(b)).err();
            }
        }
    })?;
    let computed = src.crc;
    let mut trailer = [0u8; TRAILER_SIZE];
    src.fill(&mut trailer, false)?;
    let stored = le32(&trailer, 0);
    let recorded_len = le64(&trailer, 8);
    if recorded_len > src.len {
        return Err(SnapshotError::Truncated { len: src.len });
    }
    if recorded_len != src.len || stored != computed {
        return Err(SnapshotError::ChecksumMismatch { stored, computed });
    }
    if trailer[4..8] != [0; 4] {
        return Err(SnapshotError::Invalid(
            "reserved trailer bytes are not zero",
        ));
    }
    let mut extra = [0u8; 1];
    if src.fill(&mut extra, false).is_ok() {
        return Err(SnapshotError::Invalid("bytes after the trailer"));
    }
    if let Some(why) = invalid {
        return Err(SnapshotError::Invalid(why));
    }
    e.restore_finish(position, now_ns, hash, ring.pending_records)
        .map_err(SnapshotError::Invalid)
}

impl Engine {
    /// Copies the live state into a [`Frozen`] snapshot that another thread can write. The
    /// first freeze's pages are fresh and it pays for mapping them; once that `Frozen` has been
    /// dropped (written), the next freeze reuses its buffers, so only a memcpy holds the engine
    /// (the price: that copy's memory stays with the engine between snapshots).
    /// [`Engine::freeze_into`] reuses a `Frozen` the caller keeps instead.
    pub fn freeze(&self) -> Frozen {
        let parts = self.take_spare();
        let mut frozen = Frozen {
            parts,
            spare: Some(std::sync::Arc::clone(&self.frozen_spare)),
        };
        self.freeze_into(&mut frozen);
        frozen
    }

    /// Copies the live state into `frozen`, reusing its buffers (plain memcpy once they are
    /// large enough): the only part of a snapshot that holds the engine.
    pub fn freeze_into(&self, frozen: &mut Frozen) {
        let p = &mut frozen.parts;
        self.copy_small_tables(p);
        reserve_huge(&mut p.accounts, self.accounts.len());
        p.accounts.clear();
        p.accounts.extend(self.accounts());
        let (a, b) = self.ring.live_records();
        reserve_huge(&mut p.retained, a.len() + b.len());
        p.retained.clear();
        p.retained.extend_from_slice(a);
        p.retained.extend_from_slice(b);
        let index = self.retention_index_words();
        reserve_huge(&mut p.index, index.len());
        p.index.clear();
        p.index.extend_from_slice(index);
    }

    /// The buffers of the last dropped [`Frozen`], or empty ones.
    fn take_spare(&self) -> Parts {
        self.frozen_spare
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .unwrap_or_default()
    }

    /// Copies the header fields and the small tables (pending transfers, sessions) into `p`,
    /// reusing its buffers.
    fn copy_small_tables(&self, p: &mut Parts) {
        p.position = self.position;
        p.now_ns = self.now_ns;
        p.hash = self.hash;
        p.ring_head_seq = self.ring.head_seq;
        p.pending.clear();
        p.pending.extend(self.pending_for_snapshot());
        p.sessions.clear();
        p.sessions.extend_from_slice(&self.sessions);
    }

    /// Begins a snapshot that is copied while commands go on, and returns `true` (`false`, and
    /// nothing happens, if one is already in progress). The header and the small tables
    /// (pending transfers, sessions) are copied now; the accounts, the retention ring and its
    /// index are copied afterwards, a step at a time ([`Engine::freeze_step`] into memory, or
    /// [`Engine::freeze_pieces`] to stream them to a [`SnapshotWriter`]), with what commands
    /// are about to overwrite saved first: an account's value before its first change, the
    /// ring's oldest records before each command, an index bucket just before its first write,
    /// a record's value before a pending transfer's state changes it. The result is the same
    /// as [`Engine::freeze`] at this position (the tests compare them byte for byte), but the
    /// engine is held only for the small tables (a fraction of a millisecond, where a full
    /// freeze of a million accounts and ten million retained transfers holds it for about a
    /// tenth of a second).
    pub fn freeze_begin(&mut self) -> bool {
        if self.freezing.is_some() {
            return false;
        }
        let mut parts = self.take_spare();
        self.copy_small_tables(&mut parts);
        parts.accounts.clear();
        self.accounts_copy.begin(self.accounts.len());
        self.ring.copy_begin();
        self.ring.index.copy_begin();
        let counts = Counts {
            accounts: self.accounts.len(),
            retained: self.ring.copy_len() as usize,
            pending: parts.pending.len(),
            sessions: parts.sessions.len(),
            index_words: self.ring.index.bucket_words().len(),
        };
        self.freezing = Some(Box::new(Freezing {
            parts: Some(Box::new(parts)),
            counts,
        }));
        true
    }

    /// Whether a snapshot begun by [`Engine::freeze_begin`] is still being copied.
    pub fn freezing(&self) -> bool {
        self.freezing.is_some()
    }

    /// Copies the next part of the snapshot in progress (up to [`FREEZE_STEP_BYTES`] of
    /// accounts, as much of the retained transfers and of the retention index: about 50 µs on
    /// the development VM) into memory; returns the [`Frozen`] snapshot once it is complete (`None` before,
    /// and when none is in progress). Call it between commands, as often as latency allows.
    pub fn freeze_step(&mut self) -> Option<Frozen> {
        self.freeze_step_by(FREEZE_STEP_BYTES)
    }

    /// [`Engine::freeze_step`] copying up to `bytes` of each (at least one retained transfer
    /// and one 4 KiB chunk of the index).
    pub fn freeze_step_by(&mut self, bytes: usize) -> Option<Frozen> {
        let counts = self.freezing.as_deref()?.counts;
        self.freeze_advance(bytes.max(1));
        let accounts = self.accounts_copy.drain();
        let ring = self.ring.copy_drain();
        let index = self.ring.index.copy_drain();
        let parts = self.freezing.as_deref_mut()?.parts.as_deref_mut()?;
        if let Some((offset, accounts)) = accounts {
            if offset == 0 {
                reserve_huge(&mut parts.accounts, counts.accounts);
                parts.accounts.clear();
            }
            parts.accounts.extend_from_slice(&accounts);
        }
        if let Some((offset, records)) = ring {
            if offset == 0 {
                reserve_huge(&mut parts.retained, counts.retained);
                parts.retained.clear();
            }
            parts.retained.extend_from_slice(&records);
        }
        if parts.index.len() != counts.index_words {
            parts.index = vec![0; counts.index_words];
            crate::prefetch::advise_huge_pages(&parts.index);
        }
        for (chunk, words) in index {
            let at = chunk * crate::retention::COPY_CHUNK_WORDS;
            parts.index[at..at + words.len()].copy_from_slice(&words);
        }
        if self.freeze_copying() {
            return None;
        }
        let parts = *self.freezing.take()?.parts?;
        Some(Frozen {
            parts,
            spare: Some(std::sync::Arc::clone(&self.frozen_spare)),
        })
    }

    /// Streams the snapshot in progress instead of copying it into memory: copies up to
    /// `bytes` more of the accounts, of the retention ring and of its index (0: none, only what
    /// commands forced since the last call) and hands `out` every [`Piece`] ready: first the
    /// header and small tables, then accounts, retained records and index chunks as they are
    /// copied, and last an end
    /// piece (the snapshot is then complete and no longer in progress). A [`SnapshotWriter`]
    /// on another thread writes them as they come, so the copy never has to be held whole:
    /// what is in flight is what the writer has not written yet.
    pub fn freeze_pieces(&mut self, bytes: usize, out: &mut impl FnMut(Piece)) {
        let Some(freezing) = self.freezing.as_deref_mut() else {
            return;
        };
        if let Some(parts) = freezing.parts.take() {
            out(Piece(PieceKind::Start(parts, freezing.counts)));
        }
        if bytes > 0 {
            self.freeze_advance(bytes);
        }
        if let Some((offset, accounts)) = self.accounts_copy.drain() {
            if !accounts.is_empty() {
                out(Piece(PieceKind::Accounts { offset, accounts }));
            }
        }
        if let Some((offset, records)) = self.ring.copy_drain() {
            if !records.is_empty() {
                out(Piece(PieceKind::Retained { offset, records }));
            }
        }
        for (chunk, words) in self.ring.index.copy_drain() {
            out(Piece(PieceKind::Index { chunk, words }));
        }
        if !self.freeze_copying() {
            self.freezing = None;
            out(Piece(PieceKind::End));
        }
    }

    /// Whether a part of the snapshot in progress is still being copied.
    fn freeze_copying(&self) -> bool {
        self.accounts_copy.copying() || self.ring.copying() || self.ring.index.copying()
    }

    /// Copies up to `bytes` more of the accounts, of the ring and of the index into their
    /// copies' outboxes.
    fn freeze_advance(&mut self, bytes: usize) {
        self.accounts_copy
            .step(&self.accounts, (bytes / ACCOUNT_SIZE).max(1));
        let records = (bytes / std::mem::size_of::<Retained>()).max(1) as u64;
        self.ring.copy_step(records);
        self.ring
            .index
            .copy_step((bytes / (crate::retention::COPY_CHUNK_WORDS * 4)).max(1));
    }

    /// Writes a snapshot of the live state straight into `w` (holds the engine for the whole
    /// write; see [`Engine::freeze`] for the non-blocking path). Returns the bytes written.
    pub fn snapshot(&self, w: impl Write) -> std::io::Result<u64> {
        write_snapshot(
            w,
            Header {
                position: self.position,
                now_ns: self.now_ns,
                hash: self.hash,
                ring_head_seq: self.ring.head_seq,
            },
            self.accounts.iter().map(|r| r.account),
            self.ring.live_records(),
            self.retention_index_words(),
            self.pending_for_snapshot(),
            &self.sessions,
        )
    }

    /// Rebuilds an engine from a snapshot, with tables sized by `config` (which must hold
    /// everything the snapshot holds). Streams: reads a chunk at a time (pass the file itself;
    /// buffering adds nothing), checksums it and decodes it straight into the tables, so memory
    /// is the engine's plus one chunk and the index build's scratch (24 MiB at most). Nothing is returned unless the length and the CRC32C
    /// check out; a snapshot damaged anywhere is refused with a [`SnapshotError`] that says how
    /// (mostly `ChecksumMismatch` or `Truncated`).
    pub fn restore(config: EngineConfig, r: impl Read) -> Result<Engine, SnapshotError> {
        restore_stream(config, r)
    }

    /// [`Engine::restore`] from bytes already in memory.
    pub fn restore_from_bytes(config: EngineConfig, bytes: &[u8]) -> Result<Engine, SnapshotError> {
        restore_stream(config, bytes)
    }
}
