//! The writer side: opening (lock, recovery), appending sealed batches with O_DIRECT and
//! `fdatasync`, rolling into the next segment, and retention.
//!
//! Owns: the tail segment's O_DIRECT file handle, the lock, the chain state (last position,
//! checksum, term) and the published durable position. Does not own: threads (the caller runs
//! the group-commit loop and, if it wants, a preparer thread fed by
//! [`Journal::take_spare_request`]).
//!
//! Invariants: batches are written whole, block-aligned, one at a time; `durable_position` only
//! moves after `fdatasync` of every segment written so far succeeded; after any failed write or
//! sync the journal is poisoned and refuses further writes until reopened (recovery decides
//! what is on disk, instead of trusting page-cache state after a failed `fsync`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::batch::SealedBatch;
use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};
use crate::recovery::{self, LastBatch, Location, ScanEnd, SegmentSource};
use crate::segment::{self, Prepared, SegmentPreparer, LOCK_FILE_NAME};
use crate::{DirectIo, Options, Position, BLOCK_SIZE, PREPARE_CHUNK_SIZE};

/// Whether O_DIRECT is in effect for the journal's writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectIoStatus {
    /// Writes bypass the page cache.
    Active,
    /// [`DirectIo::Optional`] and the filesystem refused O_DIRECT: writes go through the page
    /// cache (still durable by `fdatasync`, but slower and with double buffering). A warning.
    FellBack,
    /// [`DirectIo::Disabled`] was asked for.
    Disabled,
}

/// How the journal's tail looked at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The last batch was complete.
    Clean,
    /// A torn write was found and zeroed.
    Truncated {
        /// The segment file where the tail now is.
        segment: PathBuf,
        /// Offset of the tail in it (where the torn batch began).
        offset: u64,
        /// Bytes zeroed (from the tail to the end of the last non-zero block).
        bytes_dropped: u64,
        /// What was wrong with the torn batch.
        reason: String,
    },
}

/// What [`Journal::open`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments holding the log (spares excluded).
    pub segment_count: usize,
    /// Batches found valid.
    pub batch_count: u64,
    /// First position in the journal.
    pub first_position: Option<Position>,
    /// Last durable position.
    pub last_position: Option<Position>,
    /// Clean or truncated.
    pub tail: Tail,
    /// O_DIRECT status.
    pub direct_io: DirectIoStatus,
    /// Preparation files left by a crash, removed.
    pub temporary_files_removed: usize,
    /// True when the folder held no journal and one was created.
    pub created: bool,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "journal: {} segment(s), {} batch(es), positions {:?}..={:?}",
            self.segment_count, self.batch_count, self.first_position, self.last_position
        )?;
        if let Tail::Truncated {
            segment,
            offset,
            bytes_dropped,
            reason,
        } = &self.tail
        {
            write!(
                f,
                "; torn tail truncated: {bytes_dropped} bytes dropped at {} offset {offset} ({reason})",
                segment.display()
            )?;
        }
        if self.direct_io == DirectIoStatus::FellBack {
            write!(
                f,
                "; WARNING: filesystem refused O_DIRECT, writing through the page cache"
            )?;
        }
        Ok(())
    }
}

/// What [`Journal::retain_from`] does with segments it no longer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Delete them.
    Delete,
    /// Move them into this folder (same filesystem; created if missing).
    Archive(PathBuf),
}

/// Counters since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Batches written.
    pub batches_written: u64,
    /// Bytes written, padding included.
    pub bytes_written: u64,
    /// `fdatasync` calls on the write path.
    pub syncs: u64,
    /// Rolls into a new segment.
    pub segments_rolled: u64,
    /// Rolls that found no prepared segment and prepared one on the hot path.
    pub segments_prepared_inline: u64,
}

/// The durable position, readable from other threads (0 = nothing durable yet).
#[derive(Clone, Debug)]
pub struct DurableWatch(Arc<AtomicU64>);

impl DurableWatch {
    /// The last durable position (acquire load: data up to it is on disk).
    pub fn get(&self) -> Position {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone, Copy, Debug)]
struct SegmentInfo {
    index: u64,
    first_position: Option<Position>,
}

/// A journal opened for writing. One per folder (enforced with a lock file).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    options: Options,
    _lock: File,
    /// Segments of the log, oldest first; the last one is being written.
    segments: VecDeque<SegmentInfo>,
    current: File,
    tail_offset: u64,
    direct_io: DirectIoStatus,
    last: Option<LastBatch>,
    written_position: Position,
    durable: Arc<AtomicU64>,
    unsynced: bool,
    poisoned: bool,
    spare_request: Option<u64>,
    stats: JournalStats,
}

struct FileSegments {
    files: Vec<(PathBuf, File)>,
    segment_size: u64,
}

impl FileSegments {
    /// Opens segments `indexes` of `dir` for reading, each checked to be `segment_size` long.
    fn open(dir: &Path, indexes: &[u64], segment_size: u64) -> Result<FileSegments> {
        let mut source = FileSegments {
            files: Vec::new(),
            segment_size,
        };
        for &index in indexes {
            let path = segment::segment_path(dir, index);
            let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
            let length = file
                .metadata()
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            if length != segment_size {
                return Err(Error::SegmentSizeMismatch {
                    path,
                    length,
                    expected: segment_size,
                });
            }
            source.files.push((path, file));
        }
        Ok(source)
    }

    /// Scans every batch and says how the journal ends: [`Error::Corrupt`] where recovery
    /// would refuse to open it, else the tail (a torn one is reported, not zeroed).
    fn scan(mut self, dir: &Path) -> Result<(FileSegments, recovery::ScanOutcome, Tail)> {
        let outcome = recovery::scan(&mut self).map_err(|e| Error::io("read", dir, e))?;
        let path_of = |l: Location| self.files[l.segment].0.clone();
        let tail = match &outcome.end {
            ScanEnd::Clean => Tail::Clean,
            ScanEnd::Refuse {
                at,
                reason,
                detail,
                valid_at,
            } => {
                return Err(Error::Corrupt {
                    segment: path_of(*at),
                    offset: at.offset,
                    reason: *reason,
                    detail: detail.clone(),
                    valid_at: valid_at.map(|l| (path_of(l), l.offset)),
                });
            }
            ScanEnd::Truncate {
                bytes_dropped,
                reason,
                ..
            } => Tail::Truncated {
                segment: path_of(outcome.tail),
                offset: outcome.tail.offset,
                bytes_dropped: *bytes_dropped,
                reason: reason.clone(),
            },
        };
        Ok((self, outcome, tail))
    }
}

/// Checks the journal in `dir` as [`Journal::open`] would, without writing anything: every
/// batch is scanned, and the answer is how the journal ends ([`Tail::Truncated`] names a torn
/// tail that an open would zero), or [`Error::Corrupt`] where an open would refuse (damage
/// before valid data). The segment size is taken from the first segment. Meant for tools on a
/// stopped node's folder: on a live node it may meet a batch being written (a torn tail).
///
/// # Errors
/// [`Error::MissingSegment`], [`Error::SegmentSizeMismatch`], [`Error::Corrupt`], I/O errors.
pub fn verify(dir: impl AsRef<Path>) -> Result<Tail> {
    let dir = dir.as_ref();
    let listing = segment::list(dir)?;
    segment::check_contiguous(dir, &listing.segments)?;
    let Some(&first) = listing.segments.first() else {
        return Ok(Tail::Clean);
    };
    let path = segment::segment_path(dir, first);
    let segment_size = fs::metadata(&path)
        .map_err(|e| Error::io("stat", &path, e))?
        .len();
    let source = FileSegments::open(dir, &listing.segments, segment_size)?;
    // The scan needs whole blocks and room for the largest batch.
    if !segment_size.is_multiple_of(crate::BLOCK_SIZE as u64)
        || segment_size < crate::BATCH_SIZE_MAX as u64
    {
        return Err(Error::SegmentSizeMismatch {
            path,
            length: segment_size,
            expected: segment_size
                .next_multiple_of(crate::BLOCK_SIZE as u64)
                .max(crate::BATCH_SIZE_MAX as u64),
        });
    }
    Ok(source.scan(dir)?.2)
}

impl SegmentSource for FileSegments {
    fn segment_count(&self) -> usize {
        self.files.len()
    }
    fn segment_size(&self) -> u64 {
        self.segment_size
    }
    fn read_at(&mut self, segment: usize, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.files[segment].1.read_exact_at(buf, offset)
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir` for writing: takes the lock, removes leftover
    /// preparation files, checks that no segment is missing or short, scans every batch,
    /// zeroes a torn tail, and prepares a spare segment.
    ///
    /// # Errors
    /// [`Error::Locked`], [`Error::MissingSegment`], [`Error::SegmentSizeMismatch`],
    /// [`Error::Corrupt`] (naming segment file and offset), [`Error::InvalidOption`],
    /// [`Error::DirectIoUnsupported`], [`Error::NoSpace`], I/O errors.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<(Journal, RecoveryReport)> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::io("create folder", &dir, e))?;
        let lock = lock(&dir)?;
        let mut listing = segment::list(&dir)?;
        let temporary_files_removed = listing.temporary.len();
        for temp in &listing.temporary {
            fs::remove_file(temp).map_err(|e| Error::io("remove", temp, e))?;
        }
        segment::check_contiguous(&dir, &listing.segments)?;
        let created = listing.segments.is_empty();
        if created {
            segment::prepare_segment(&dir, 0, options.segment_size, options.direct_io)?;
            listing.segments.push(0);
        }
        let source = FileSegments::open(&dir, &listing.segments, options.segment_size)?;
        let (source, outcome, tail) = source.scan(&dir)?;
        if let ScanEnd::Truncate {
            drop_start,
            drop_end,
            ..
        } = outcome.end
        {
            zero_range(&source, drop_start, drop_end, options.direct_io)?;
        }
        let path_of = |l: Location| source.files[l.segment].0.clone();
        let segments: VecDeque<SegmentInfo> = listing.segments[..=outcome.tail.segment]
            .iter()
            .zip(&outcome.segments)
            .map(|(&index, summary)| SegmentInfo {
                index,
                first_position: summary.first_position,
            })
            .collect();
        let current_path = path_of(outcome.tail);
        let (current, direct) = segment::open_for_write(&current_path, options.direct_io, false)?;
        let direct_io = match (options.direct_io, direct) {
            (DirectIo::Disabled, _) => DirectIoStatus::Disabled,
            (_, true) => DirectIoStatus::Active,
            (_, false) => DirectIoStatus::FellBack,
        };
        let last_position = outcome.last.map(|l| l.last_position);
        let report = RecoveryReport {
            segment_count: segments.len(),
            batch_count: outcome.batch_count,
            first_position: segments.front().and_then(|s| s.first_position),
            last_position,
            tail,
            direct_io,
            temporary_files_removed,
            created,
        };
        let mut journal = Journal {
            dir,
            options,
            _lock: lock,
            segments,
            current,
            tail_offset: outcome.tail.offset,
            direct_io,
            last: outcome.last,
            written_position: last_position.unwrap_or(0),
            durable: Arc::new(AtomicU64::new(last_position.unwrap_or(0))),
            unsynced: false,
            poisoned: false,
            spare_request: None,
            stats: JournalStats::default(),
        };
        // Start-up is off the hot path: have the spare ready now. A full disk must not stop
        // recovery or reads, so then the request is left for the caller (and the next roll).
        let spare = journal.current_index() + 1;
        match journal.preparer().prepare(spare) {
            Ok(_) => {}
            Err(Error::NoSpace { .. }) => journal.spare_request = Some(spare),
            Err(e) => return Err(e),
        }
        Ok((journal, report))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options it was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// O_DIRECT status (warn the operator on [`DirectIoStatus::FellBack`]).
    pub fn direct_io(&self) -> DirectIoStatus {
        self.direct_io
    }

    /// First position still in the journal (None when empty).
    pub fn first_position(&self) -> Option<Position> {
        self.segments.iter().find_map(|s| s.first_position)
    }

    /// Last position written (may not be durable yet if [`Journal::write`] was used without
    /// [`Journal::sync`]); 0 when empty.
    pub fn last_position(&self) -> Position {
        self.written_position
    }

    /// Last durable position; 0 when nothing is durable.
    pub fn durable_position(&self) -> Position {
        self.durable.load(Ordering::Acquire)
    }

    /// A handle other threads can read the durable position from.
    pub fn durable_watch(&self) -> DurableWatch {
        DurableWatch(Arc::clone(&self.durable))
    }

    /// Position the next batch must start at (1 for a new journal; an empty journal accepts
    /// any start, e.g. a replica that begins from a snapshot).
    pub fn next_position(&self) -> Position {
        self.last.map_or(1, |l| l.last_position + 1)
    }

    /// Checksum the next batch must carry as `prev_checksum` (0 for a new journal).
    pub fn last_checksum(&self) -> u32 {
        self.last.map_or(0, |l| l.checksum)
    }

    /// Term of the last batch (0 for a new journal).
    pub fn last_term(&self) -> u64 {
        self.last.map_or(0, |l| l.term)
    }

    /// Counters since open.
    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    fn current_index(&self) -> u64 {
        self.segments.back().map_or(0, |s| s.index)
    }

    /// Bytes of the segment being written that are used (where the next batch goes).
    pub fn segment_used(&self) -> u64 {
        self.tail_offset
    }

    /// A handle that prepares segments; run it on another thread to keep preparation off the
    /// hot path.
    pub fn preparer(&self) -> SegmentPreparer {
        SegmentPreparer {
            dir: self.dir.clone(),
            segment_size: self.options.segment_size,
            direct_io: self.options.direct_io,
        }
    }

    /// After the writer rolled into a new segment, the index of the next spare to prepare
    /// (once per roll). Hand it to a [`SegmentPreparer`] on another thread; if the spare is not
    /// ready at the next roll, the writer prepares it inline (counted in
    /// [`JournalStats::segments_prepared_inline`]).
    pub fn take_spare_request(&mut self) -> Option<u64> {
        self.spare_request.take()
    }

    /// Writes `batch` and makes it durable: [`Journal::write`] then [`Journal::sync`]. Returns
    /// the durable position (the batch's last position).
    ///
    /// # Errors
    /// As [`Journal::write`] and [`Journal::sync`].
    pub fn append(&mut self, batch: &SealedBatch) -> Result<Position> {
        self.write(batch)?;
        self.sync()
    }

    /// Writes `batch` at the tail (O_DIRECT, not yet synced), rolling into the next segment if
    /// it does not fit in this one. Returns the batch's last position.
    ///
    /// # Errors
    /// [`Error::OutOfSequence`] or [`Error::TermDecreased`] if the batch does not continue the
    /// journal (nothing written);
    /// [`Error::NoSpace`] if a segment had to be prepared and the disk is full (nothing
    /// written, the journal stays usable); [`Error::Poisoned`] after an earlier failure; I/O
    /// errors from the write itself (including ENOSPC on copy-on-write filesystems, which do
    /// not honour preallocation) poison the journal.
    pub fn write(&mut self, batch: &SealedBatch) -> Result<Position> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if let Some(last) = self.last {
            if batch.first_position() != last.last_position + 1
                || batch.prev_checksum() != last.checksum
            {
                return Err(Error::OutOfSequence {
                    expected_position: last.last_position + 1,
                    expected_prev_checksum: last.checksum,
                    position: batch.first_position(),
                    prev_checksum: batch.prev_checksum(),
                });
            }
            if batch.term() < last.term {
                return Err(Error::TermDecreased {
                    term: batch.term(),
                    last_term: last.term,
                });
            }
        }
        let bytes = batch.padded_bytes();
        if self.tail_offset + bytes.len() as u64 > self.options.segment_size {
            self.roll()?;
        }
        if let Err(e) = self.current.write_all_at(bytes, self.tail_offset) {
            self.poisoned = true;
            return Err(Error::io("write batch to", self.current_path(), e));
        }
        self.tail_offset += bytes.len() as u64;
        self.last = Some(LastBatch {
            last_position: batch.last_position(),
            checksum: batch.checksum(),
            term: batch.term(),
        });
        self.written_position = batch.last_position();
        if let Some(info) = self.segments.back_mut() {
            info.first_position.get_or_insert(batch.first_position());
        }
        self.unsynced = true;
        self.stats.batches_written += 1;
        self.stats.bytes_written += bytes.len() as u64;
        Ok(batch.last_position())
    }

    /// `fdatasync`s what was written and publishes the durable position, which it returns.
    ///
    /// # Errors
    /// [`Error::Poisoned`]; I/O errors (the journal is then poisoned).
    pub fn sync(&mut self) -> Result<Position> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if self.unsynced {
            if let Err(e) = self.current.sync_data() {
                self.poisoned = true;
                return Err(Error::io("fdatasync", self.current_path(), e));
            }
            self.unsynced = false;
            self.stats.syncs += 1;
            self.durable.store(self.written_position, Ordering::Release);
        }
        Ok(self.durable_position())
    }

    fn current_path(&self) -> PathBuf {
        segment::segment_path(&self.dir, self.current_index())
    }

    fn roll(&mut self) -> Result<()> {
        // Durability is tracked with one file: sync the old segment before leaving it.
        self.sync()?;
        let next = self.current_index() + 1;
        let path = segment::segment_path(&self.dir, next);
        if self.preparer().prepare(next)? == Prepared::Created {
            self.stats.segments_prepared_inline += 1;
        }
        let (file, _) = segment::open_for_write(&path, self.options.direct_io, false)?;
        let length = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        if length != self.options.segment_size {
            return Err(Error::SegmentSizeMismatch {
                path,
                length,
                expected: self.options.segment_size,
            });
        }
        self.current = file;
        self.tail_offset = 0;
        self.segments.push_back(SegmentInfo {
            index: next,
            first_position: None,
        });
        self.spare_request = Some(next + 1);
        self.stats.segments_rolled += 1;
        Ok(())
    }

    /// Removes (or archives) whole segments all of whose positions are before `position`.
    /// The segment being written is never removed. Returns how many segments went.
    ///
    /// Readers in other processes that have a removed segment open keep reading it (the file
    /// lives until closed); a reader that seeks before the new first position gets
    /// [`Error::PositionRetained`].
    ///
    /// # Errors
    /// I/O errors (an archive folder on another filesystem fails with EXDEV).
    pub fn retain_from(&mut self, position: Position, retention: &Retention) -> Result<usize> {
        if let Retention::Archive(archive) = retention {
            fs::create_dir_all(archive).map_err(|e| Error::io("create folder", archive, e))?;
        }
        let mut removed = 0;
        while self.segments.len() > 1 {
            let next_first = self.segments[1].first_position;
            if next_first.is_none_or(|first| first > position) {
                break;
            }
            let index = self.segments[0].index;
            let path = segment::segment_path(&self.dir, index);
            match retention {
                Retention::Delete => {
                    fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?
                }
                Retention::Archive(archive) => {
                    let target = archive.join(segment::segment_file_name(index));
                    fs::rename(&path, &target)
                        .map_err(|e| Error::io("move to archive", &path, e))?;
                }
            }
            self.segments.pop_front();
            removed += 1;
        }
        if removed > 0 {
            if let Retention::Archive(archive) = retention {
                segment::sync_dir(archive)?;
            }
            segment::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked { path }),
        Err(fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

/// Zeroes `[from, to)` across segments and syncs each touched segment.
fn zero_range(
    source: &FileSegments,
    from: Location,
    to: Location,
    direct_io: DirectIo,
) -> Result<()> {
    let zeros = AlignedBuf::zeroed(PREPARE_CHUNK_SIZE);
    for segment in from.segment..=to.segment.min(source.files.len() - 1) {
        let start = if segment == from.segment {
            from.offset
        } else {
            0
        };
        let end = if segment == to.segment {
            to.offset
        } else {
            source.segment_size
        };
        if start >= end {
            continue;
        }
        debug_assert!(start % BLOCK_SIZE as u64 == 0 && end % BLOCK_SIZE as u64 == 0);
        let path = &source.files[segment].0;
        let (file, _) = segment::open_for_write(path, direct_io, false)?;
        let mut offset = start;
        while offset < end {
            let chunk = (end - offset).min(PREPARE_CHUNK_SIZE as u64) as usize;
            file.write_all_at(&zeros.as_slice()[..chunk], offset)
                .map_err(|e| Error::io("zero torn tail of", path, e))?;
            offset += chunk as u64;
        }
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", path, e))?;
    }
    Ok(())
}
