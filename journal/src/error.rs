//! The journal's error type: every variant names the file (and offset, where there is one) and
//! its message says what to do.

use std::io;
use std::path::PathBuf;

use crate::recovery::RefuseReason;
use crate::Position;

/// Everything that can go wrong opening, writing, reading or trimming a journal.
#[derive(Debug)]
pub enum Error {
    /// An I/O call failed. `op` says which (e.g. `"fdatasync"`).
    Io {
        /// The operation.
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The filesystem is full (ENOSPC / EDQUOT) while preparing or writing `path`. Batches
    /// already durable are intact; free space or trim old segments with
    /// [`crate::Journal::retain_from`], then append again.
    NoSpace {
        /// The file being written.
        path: PathBuf,
        /// The operation.
        op: &'static str,
    },
    /// Another process (or another `Journal` in this process) holds the writer lock.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The filesystem refuses O_DIRECT and [`crate::DirectIo::Required`] was asked for.
    DirectIoUnsupported {
        /// The file that could not be opened with O_DIRECT.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Recovery found damage it must not repair by itself.
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad block in it.
        offset: u64,
        /// Which recovery case.
        reason: RefuseReason,
        /// The failed check, in words.
        detail: String,
        /// Where valid data was found after it, if that is why it is not a torn tail.
        valid_at: Option<(PathBuf, u64)>,
    },
    /// A segment between the first and last present segments is missing.
    MissingSegment {
        /// The path the segment should have.
        path: PathBuf,
    },
    /// A segment file's length is not the segment size.
    SegmentSizeMismatch {
        /// The segment file.
        path: PathBuf,
        /// Its length.
        length: u64,
        /// The expected length.
        expected: u64,
    },
    /// A configuration value is out of range.
    InvalidOption {
        /// The option's name.
        key: &'static str,
        /// Its value.
        value: u64,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The batch given to `append` does not continue the journal (a caller bug).
    OutOfSequence {
        /// Position the next batch must start at.
        expected_position: Position,
        /// Checksum the next batch must name as `prev_checksum`.
        expected_prev_checksum: u32,
        /// The batch's first position.
        position: Position,
        /// The batch's `prev_checksum`.
        prev_checksum: u32,
    },
    /// The batch's term is lower than the last batch's (a caller bug: terms never decrease).
    TermDecreased {
        /// The batch's term.
        term: u64,
        /// The last batch's term.
        last_term: u64,
    },
    /// An earlier write or sync failed; what reached the disk is unknown. Reopen the journal
    /// (recovery decides) before writing again.
    Poisoned,
    /// A reader asked for a position before the first one still in the journal.
    PositionRetained {
        /// The position asked for.
        position: Position,
        /// The first position still present, if any.
        first_available: Option<Position>,
    },
}

impl Error {
    /// Wraps an I/O error, turning ENOSPC/EDQUOT into [`Error::NoSpace`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::NoSpace { path, op },
            _ => Error::Io { op, path, source },
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            Error::NoSpace { path, op } => write!(
                f,
                "no space left on the filesystem while {op} {}; batches already durable are intact: \
                 free space or trim old segments (retain_from), then retry",
                path.display()
            ),
            Error::Locked { path } => write!(
                f,
                "journal is locked for writing by another process ({}); stop that process, or read \
                 it with a JournalReader",
                path.display()
            ),
            Error::DirectIoUnsupported { path, source } => write!(
                f,
                "the filesystem holding {} refuses O_DIRECT ({source}), e.g. tmpfs; put the journal \
                 on ext4 or xfs, or set direct_io = optional (durability then relies on fdatasync \
                 through the page cache)",
                path.display()
            ),
            Error::Corrupt { segment, offset, reason, detail, valid_at } => {
                write!(
                    f,
                    "journal corrupt in {} at offset {offset}: {detail} ({reason:?})",
                    segment.display()
                )?;
                if let Some((path, at)) = valid_at {
                    write!(f, "; valid data follows in {} at offset {at}", path.display())?;
                }
                write!(
                    f,
                    "; refusing to open: restore the segment from a replica or backup (data after \
                     this point is not skipped silently)"
                )
            }
            Error::MissingSegment { path } => write!(
                f,
                "journal segment {} is missing while segments before and after it exist; restore \
                 it from a replica or backup",
                path.display()
            ),
            Error::SegmentSizeMismatch { path, length, expected } => write!(
                f,
                "segment {} is {length} bytes, expected {expected}: it was truncated, or the journal \
                 was created with another segment_size (open with segment_size = {length} if so). \
                 If it is the last segment and losing its tail is acceptable, extend it with zeros \
                 (`truncate -s {expected}`) and recovery will treat the cut as a torn write",
                path.display()
            ),
            Error::InvalidOption { key, value, rule } => {
                write!(f, "invalid journal option {key} = {value}: must be {rule}")
            }
            Error::OutOfSequence { expected_position, expected_prev_checksum, position, prev_checksum } => {
                write!(
                    f,
                    "batch does not continue the journal: starts at {position} with prev_checksum \
                     {prev_checksum:#010x}, expected {expected_position} and {expected_prev_checksum:#010x}"
                )
            }
            Error::TermDecreased { term, last_term } => write!(
                f,
                "batch term {term} is lower than the journal's last term {last_term}; terms never decrease"
            ),
            Error::Poisoned => write!(
                f,
                "an earlier journal write or fdatasync failed, so what is on disk is unknown; reopen \
                 the journal to recover before writing again"
            ),
            Error::PositionRetained { position, first_available } => match first_available {
                Some(first) => write!(
                    f,
                    "position {position} is no longer in the journal (retained from {first}); catch \
                     up from a snapshot"
                ),
                None => write!(f, "position {position} is not in the journal (it is empty)"),
            },
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::DirectIoUnsupported { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result with the journal's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
