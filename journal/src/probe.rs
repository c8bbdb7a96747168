//! `disk_probe`: how long a durable write takes on the disk holding a folder, measured the way
//! the journal writes (aligned O_DIRECT write + `fdatasync` into a pre-written file).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};
use crate::segment;
use crate::{DirectIo, BLOCK_SIZE};

/// Upper bound on the probe file's size: the probe cycles through it.
pub const PROBE_FILE_SIZE_MAX: u64 = 64 * 1024 * 1024;

/// Result of [`disk_probe`].
#[derive(Clone, Debug, PartialEq)]
pub struct DiskProbe {
    /// Median of write + `fdatasync`, in microseconds.
    pub sync_p50_us: f64,
    /// 99th percentile of write + `fdatasync`, in microseconds.
    pub sync_p99_us: f64,
    /// Largest write + `fdatasync`, in microseconds.
    pub sync_max_us: f64,
    /// Bytes written durably per second, in MB/s (10^6 bytes).
    pub write_mb_per_s: f64,
    /// Whether O_DIRECT was in effect (false on filesystems that refuse it, e.g. tmpfs).
    pub direct_io: bool,
    /// Every write + `fdatasync`, in nanoseconds, in the order they were made (so stalls keep
    /// their place in time, for a model of what a group commit would have seen).
    pub samples_ns: Vec<u64>,
}

/// When a probe stops.
#[derive(Clone, Copy, Debug)]
enum Stop {
    After(usize),
    At(Duration),
}

/// Writes `iterations` aligned buffers of `write_size` bytes (rounded up to 4 KiB) with
/// O_DIRECT (falling back to buffered writes where refused), each followed by `fdatasync`, into
/// a file in `dir` that was written full of zeros and synced first, and times each write+sync.
/// The file is removed afterwards.
///
/// # Errors
/// [`Error::InvalidOption`] for zero `iterations` or `write_size`; I/O errors.
pub fn disk_probe(
    dir: impl AsRef<Path>,
    write_size: usize,
    iterations: usize,
) -> Result<DiskProbe> {
    if iterations == 0 {
        return Err(Error::InvalidOption {
            key: "iterations",
            value: 0,
            rule: ">= 1",
        });
    }
    probe(dir.as_ref(), write_size, Stop::After(iterations))
}

/// [`disk_probe`] that goes on for `duration` (at least one write) instead of a count: as
/// many back-to-back durable writes as the disk makes in that time, so that rare stalls show
/// up about as often as in a run of the same length.
///
/// # Errors
/// As [`disk_probe`].
pub fn disk_probe_for(
    dir: impl AsRef<Path>,
    write_size: usize,
    duration: Duration,
) -> Result<DiskProbe> {
    probe(dir.as_ref(), write_size, Stop::At(duration))
}

fn probe(dir: &Path, write_size: usize, stop: Stop) -> Result<DiskProbe> {
    if write_size == 0 || write_size as u64 > PROBE_FILE_SIZE_MAX {
        return Err(Error::InvalidOption {
            key: "write_size",
            value: write_size as u64,
            rule: "between 1 and PROBE_FILE_SIZE_MAX (64 MiB)",
        });
    }
    let write_size = crate::format::padded_size(write_size);
    let expected = match stop {
        Stop::After(n) => n as u64,
        Stop::At(_) => u64::MAX,
    };
    let slots = (PROBE_FILE_SIZE_MAX / write_size as u64).clamp(1, expected);
    let file_size = slots * write_size as u64;
    let path = dir.join(format!("disk-probe-{}.tmp", std::process::id()));
    let result = probe_file(&path, write_size, stop, file_size);
    let _ = fs::remove_file(&path);
    result
}

fn probe_file(path: &Path, write_size: usize, stop: Stop, file_size: u64) -> Result<DiskProbe> {
    let (file, direct_io) = segment::open_for_write(path, DirectIo::Optional, true)?;
    let zeros = AlignedBuf::zeroed(write_size);
    let mut offset = 0;
    while offset < file_size {
        file.write_all_at(zeros.as_slice(), offset)
            .map_err(|e| Error::io("write", path, e))?;
        offset += write_size as u64;
    }
    file.sync_all().map_err(|e| Error::io("fsync", path, e))?;
    let mut data = AlignedBuf::zeroed(write_size);
    data.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 251) as u8 | 1);
    let mut samples_ns = Vec::with_capacity(match stop {
        Stop::After(n) => n,
        Stop::At(_) => 1 << 16,
    });
    let started = Instant::now();
    for i in 0.. {
        let done = match stop {
            Stop::After(n) => i >= n,
            Stop::At(d) => i > 0 && started.elapsed() >= d,
        };
        if done {
            break;
        }
        let offset = (i as u64 * write_size as u64) % file_size;
        let t = Instant::now();
        file.write_all_at(data.as_slice(), offset)
            .map_err(|e| Error::io("write", path, e))?;
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", path, e))?;
        samples_ns.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let iterations = samples_ns.len();
    let mut sorted = samples_ns.clone();
    sorted.sort_unstable();
    let percentile = |p: f64| {
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64 / 1000.0
    };
    debug_assert!(write_size.is_multiple_of(BLOCK_SIZE));
    Ok(DiskProbe {
        sync_p50_us: percentile(0.50),
        sync_p99_us: percentile(0.99),
        sync_max_us: percentile(1.0),
        write_mb_per_s: (iterations * write_size) as f64 / elapsed_s / 1e6,
        direct_io,
        samples_ns,
    })
}
