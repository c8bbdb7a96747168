//! Segment files: names, listing, opening with O_DIRECT, and preparing new segments.
//!
//! Owns: the folder layout. A journal folder holds `segment-<index>.tlj` files (index in 20
//! decimal digits, consecutive), a `journal.lock` file, and transiently
//! `segment-<index>.tlj.prep-<pid>-<n>` files being prepared.
//!
//! Invariant: a file with a final segment name always has the full segment size and was synced
//! before it got that name. Preparation writes zeros into a temporary file, `fdatasync`s it, then
//! `link`s it to the final name (which fails if the name exists, so two preparers never replace a
//! segment the writer already uses) and syncs the folder. Zeros are written rather than
//! `fallocate`d because a durable write into unwritten extents, or one that grows a file, also
//! commits metadata on every `fdatasync`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};
use crate::{DirectIo, PACED_CHUNK_SIZE, PREPARE_CHUNK_SIZE};

const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".tlj";
const PREPARE_MARK: &str = ".prep-";
/// Name of the writer lock file inside the journal folder.
pub const LOCK_FILE_NAME: &str = "journal.lock";

/// The file name of segment `index`.
pub fn segment_file_name(index: u64) -> String {
    format!("{SEGMENT_PREFIX}{index:020}{SEGMENT_SUFFIX}")
}

/// The path of segment `index` in `dir`.
pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(segment_file_name(index))
}

fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a journal folder holds.
#[derive(Debug, Default)]
pub struct Listing {
    /// Segment indexes, ascending.
    pub segments: Vec<u64>,
    /// Leftover preparation files (from a crash during preparation).
    pub temporary: Vec<PathBuf>,
}

/// Lists the segments of `dir`.
///
/// # Errors
/// I/O errors reading the folder.
pub fn list(dir: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("read folder", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read folder", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(index) = parse_segment_file_name(name) {
            listing.segments.push(index);
        } else if name.starts_with(SEGMENT_PREFIX) && name.contains(PREPARE_MARK) {
            listing.temporary.push(entry.path());
        }
    }
    listing.segments.sort_unstable();
    Ok(listing)
}

/// Checks that `segments` (ascending) has no gap.
///
/// # Errors
/// [`Error::MissingSegment`] naming the first missing one.
pub fn check_contiguous(dir: &Path, segments: &[u64]) -> Result<()> {
    for pair in segments.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(Error::MissingSegment {
                path: segment_path(dir, pair[0] + 1),
            });
        }
    }
    Ok(())
}

/// Opens `path` for reading and writing with O_DIRECT according to `direct_io`. Returns the
/// file and whether O_DIRECT is in effect.
///
/// # Errors
/// [`Error::DirectIoUnsupported`] when required and refused; I/O errors.
pub fn open_for_write(path: &Path, direct_io: DirectIo, create_new: bool) -> Result<(File, bool)> {
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create_new)
            .custom_flags(flags)
            .open(path)
    };
    if direct_io == DirectIo::Disabled {
        return open(0)
            .map(|f| (f, false))
            .map_err(|e| Error::io("open", path, e));
    }
    match open(libc::O_DIRECT) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => match direct_io {
            DirectIo::Required => Err(Error::DirectIoUnsupported {
                path: path.to_path_buf(),
                source: e,
            }),
            _ => open(0)
                .map(|f| (f, false))
                .map_err(|e| Error::io("open", path, e)),
        },
        Err(e) => Err(Error::io("open", path, e)),
    }
}

/// Fsyncs a folder, so that names created or removed in it are durable.
///
/// # Errors
/// I/O errors.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync folder", dir, e))
}

/// What [`SegmentPreparer::prepare`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The segment was written full of zeros, synced and named.
    Created,
    /// A segment with that index already existed; nothing was changed.
    AlreadyExisted,
}

static PREPARE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates segment `index` in `dir`: `size` bytes of zeros, synced, then linked into place.
/// Safe to call from any thread or process concurrently with the writer.
///
/// # Errors
/// [`Error::NoSpace`] when the filesystem is full (the temporary file is removed);
/// [`Error::DirectIoUnsupported`]; I/O errors.
pub fn prepare_segment(dir: &Path, index: u64, size: u64, direct_io: DirectIo) -> Result<Prepared> {
    prepare_segment_with(dir, index, size, direct_io, None)
}

/// [`prepare_segment`], optionally paced: with `pace`, zeros go out in
/// [`crate::PACED_CHUNK_SIZE`] pieces, each made durable before `pace` is called (it may
/// sleep), so the device never holds more than one small chunk that the writer's next
/// `fdatasync` would have to flush with its own batch.
fn prepare_segment_with(
    dir: &Path,
    index: u64,
    size: u64,
    direct_io: DirectIo,
    pace: Option<&mut dyn FnMut(u64)>,
) -> Result<Prepared> {
    let target = segment_path(dir, index);
    if target.exists() {
        return Ok(Prepared::AlreadyExisted);
    }
    let n = PREPARE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(
        "{}{PREPARE_MARK}{}-{n}",
        segment_file_name(index),
        std::process::id()
    ));
    let result = write_zeros(&temp, size, direct_io, pace).and_then(|()| {
        match fs::hard_link(&temp, &target) {
            Ok(()) => Ok(Prepared::Created),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Prepared::AlreadyExisted),
            Err(e) => Err(Error::io("link prepared segment to", &target, e)),
        }
    });
    // The temporary name goes in every case (on success the data lives on under `target`).
    let removed = fs::remove_file(&temp);
    let prepared = result?;
    removed.map_err(|e| Error::io("remove", &temp, e))?;
    sync_dir(dir)?;
    Ok(prepared)
}

fn write_zeros(
    path: &Path,
    size: u64,
    direct_io: DirectIo,
    mut pace: Option<&mut dyn FnMut(u64)>,
) -> Result<()> {
    let (file, _) = open_for_write(path, direct_io, true)?;
    let chunk_size = if pace.is_some() {
        PACED_CHUNK_SIZE
    } else {
        PREPARE_CHUNK_SIZE
    };
    let zeros = AlignedBuf::zeroed(chunk_size);
    let mut offset = 0u64;
    while offset < size {
        let chunk = (size - offset).min(chunk_size as u64) as usize;
        file.write_all_at(&zeros.as_slice()[..chunk], offset)
            .map_err(|e| Error::io("write zeros to", path, e))?;
        offset += chunk as u64;
        if let Some(pace) = pace.as_mut() {
            file.sync_data()
                .map_err(|e| Error::io("fdatasync", path, e))?;
            pace(offset);
        }
    }
    file.sync_data()
        .map_err(|e| Error::io("fdatasync", path, e))
}

/// A handle that prepares segments off the writer's hot path. `Clone + Send`: give it to
/// another thread and feed it the indexes from [`crate::Journal::take_spare_request`].
#[derive(Clone, Debug)]
pub struct SegmentPreparer {
    pub(crate) dir: PathBuf,
    pub(crate) segment_size: u64,
    pub(crate) direct_io: DirectIo,
}

impl SegmentPreparer {
    /// Makes sure segment `index` exists, full size and zero-filled. Idempotent.
    ///
    /// # Errors
    /// [`Error::NoSpace`] when the filesystem is full (the temporary file is removed);
    /// [`Error::DirectIoUnsupported`]; I/O errors.
    pub fn prepare(&self, index: u64) -> Result<Prepared> {
        prepare_segment(&self.dir, index, self.segment_size, self.direct_io)
    }

    /// [`SegmentPreparer::prepare`] spread out for a journal that is being written: the zeros
    /// go out in [`crate::PACED_CHUNK_SIZE`] pieces, each synced, and `pace(bytes_done)` runs
    /// after each one (sleep in it to leave the disk to the writer). A big unsynced burst of
    /// zeros would otherwise be flushed by the writer's next `fdatasync` and stall it for
    /// milliseconds.
    ///
    /// # Errors
    /// As [`SegmentPreparer::prepare`].
    pub fn prepare_paced(&self, index: u64, mut pace: impl FnMut(u64)) -> Result<Prepared> {
        prepare_segment_with(
            &self.dir,
            index,
            self.segment_size,
            self.direct_io,
            Some(&mut pace),
        )
    }

    /// The segment size this preparer writes, in bytes.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_other_files_are_ignored() {
        assert_eq!(segment_file_name(42), "segment-00000000000000000042.tlj");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("segment-42.tlj"), None);
        assert_eq!(
            parse_segment_file_name("segment-0000000000000000004x.tlj"),
            None
        );
        assert_eq!(parse_segment_file_name("journal.lock"), None);
    }
}
