//! The snapshot folder: atomic writes of engine snapshots and loading the newest valid one.
//!
//! Owns: the files `snapshot-<position>.tsnap` in one folder. A snapshot is written to a
//! `.tmp` file, synced, renamed into place, and the folder synced, so a crash leaves either the
//! old set or the new one, never a half file under the final name. Does not own: when to take a
//! snapshot (the pipeline decides) or what is in it (the engine's format, with its own checksum
//! and version).
//!
//! Invariant: a snapshot is only written for a position that is already durable in the journal
//! (the pipeline waits for it), so restart never starts from state the journal does not have.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use engine::{Engine, EngineConfig};

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".tsnap";
const TMP_SUFFIX: &str = ".tmp";
/// Added to the name of a snapshot that start-up refused (see [`load_newest`]).
pub const REFUSED_SUFFIX: &str = ".refused";

/// File name of the snapshot at `position` (20 digits, so names sort by position).
pub fn file_name(position: u64) -> String {
    format!("{PREFIX}{position:020}{SUFFIX}")
}

/// Positions of the snapshots in `dir`, newest first. Temporary files are ignored.
pub fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut positions = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(positions),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name
            .strip_prefix(PREFIX)
            .and_then(|n| n.strip_suffix(SUFFIX))
        else {
            continue;
        };
        // Only the names this module writes: another spelling of a position (`snapshot-7`)
        // would be listed under a name that `prune` could not find.
        match digits.parse::<u64>() {
            Ok(position) if file_name(position) == name => positions.push(position),
            _ => {}
        }
    }
    positions.sort_unstable_by(|a, b| b.cmp(a));
    Ok(positions)
}

/// Bytes a [`Writeback`] lets the page cache hold before it asks the kernel to start writing
/// them out (and how far the writer may run ahead of the disk: see [`Writeback`]).
pub const WRITEBACK_WINDOW: u64 = 16 << 20;

/// A buffered file writer that keeps the disk busy while the snapshot is being encoded.
///
/// A plain buffered write of a large snapshot leaves every byte dirty in the page cache until
/// the final `fsync`, so the time to write it is the time to copy it into the cache *plus* the
/// time to write it all out. Here, after every [`WRITEBACK_WINDOW`] bytes the writer asks the
/// kernel to start writing that window out (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which
/// does not wait) and waits for the window before it (`SYNC_FILE_RANGE_WAIT_BEFORE`), so
/// copying and writing overlap, at most two windows are dirty at a time, and the final
/// `fsync` has little left to do. The file stays in the page cache (a restart soon after reads
/// it from there). `sync_file_range` is only a hint about timing, not about durability: the
/// caller still syncs the file ([`Writeback::finish`] does, and [`commit`] again).
pub struct Writeback {
    out: BufWriter<File>,
    /// Bytes handed to the file so far (what has reached the kernel is at most this).
    written: u64,
    /// End of the last window whose writeback was started.
    started: u64,
}

impl Writeback {
    /// Wraps `file` (written from its start) with a 1 MiB buffer.
    #[must_use]
    pub fn new(file: File) -> Writeback {
        Writeback {
            out: BufWriter::with_capacity(1 << 20, file),
            written: 0,
            started: 0,
        }
    }

    /// Starts writeback of the full windows the kernel has and waits for the ones before.
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let in_kernel = self.written - self.out.buffer().len() as u64;
        while in_kernel >= self.started + WRITEBACK_WINDOW {
            let fd = self.out.get_ref().as_raw_fd();
            let window = |start: u64| (start as libc::off64_t, WRITEBACK_WINDOW as libc::off64_t);
            let (at, len) = window(self.started);
            // SAFETY: plain syscalls on an open descriptor we own; errors only mean the hint
            // was not taken (the final fsync reports real I/O errors).
            unsafe {
                libc::sync_file_range(fd, at, len, libc::SYNC_FILE_RANGE_WRITE);
                if let Some(previous) = self.started.checked_sub(WRITEBACK_WINDOW) {
                    let (at, len) = window(previous);
                    libc::sync_file_range(fd, at, len, libc::SYNC_FILE_RANGE_WAIT_BEFORE);
                }
            }
            self.started += WRITEBACK_WINDOW;
        }
    }

    /// Flushes the buffer and syncs the file (data and metadata); returns the file.
    ///
    /// # Errors
    /// Write or sync errors.
    pub fn finish(self) -> std::io::Result<File> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file)
    }
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        self.start_writeback();
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.start_writeback();
        Ok(())
    }
}

/// The temporary file a snapshot at `position` is written to before [`commit`].
pub fn tmp_path(dir: &Path, position: u64) -> PathBuf {
    dir.join(format!("{}{TMP_SUFFIX}", file_name(position)))
}

/// Makes the snapshot written to `tmp` (its open `file`) the snapshot at `position`: syncs it,
/// renames it into place and syncs the folder; returns its path.
///
/// # Errors
/// I/O errors, naming the file.
pub fn commit(dir: &Path, position: u64, tmp: &Path, file: &File) -> Result<PathBuf, String> {
    let fail = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    file.sync_all().map_err(|e| fail("fsync", tmp, e))?;
    let path = dir.join(file_name(position));
    fs::rename(tmp, &path).map_err(|e| fail("rename", tmp, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("fsync folder", dir, e))?;
    Ok(path)
}

/// Removes all but the newest `keep` snapshots (and stale temporary files).
///
/// # Errors
/// I/O errors, naming the file.
pub fn prune(dir: &Path, keep: usize) -> Result<(), String> {
    let positions = list(dir).map_err(|e| format!("list {}: {e}", dir.display()))?;
    for position in positions.into_iter().skip(keep) {
        let path = dir.join(file_name(position));
        fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
    }
    // Temporary files are from snapshots a crash interrupted (the one being written when this
    // runs has just been committed).
    let entries = fs::read_dir(dir).map_err(|e| format!("list {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("list {}: {e}", dir.display()))?
            .path();
        let stale = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.starts_with(PREFIX) && n.ends_with(&format!("{SUFFIX}{TMP_SUFFIX}"))
        });
        if stale {
            fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// What loading found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The newest snapshot that restored, if any: (position, path).
    pub used: Option<(u64, PathBuf)>,
    /// Newer snapshots that were refused, with the reason. Each is renamed with
    /// [`REFUSED_SUFFIX`] (the path given is the new name): left on disk for a person to look
    /// at, it no longer counts among the snapshots kept, so pruning never deletes a good
    /// snapshot to keep a refused one, nor trims the journal to match it.
    pub refused: Vec<(PathBuf, String)>,
}

/// Renames a refused snapshot with [`REFUSED_SUFFIX`]; returns its new path (or the old one,
/// with the rename's failure added to `why`).
fn set_aside(path: PathBuf, why: String) -> (PathBuf, String) {
    let mut name = path.clone().into_os_string();
    name.push(REFUSED_SUFFIX);
    let aside = PathBuf::from(name);
    match fs::rename(&path, &aside) {
        Ok(()) => (aside, why),
        Err(e) => (path, format!("{why} (and renaming it failed: {e})")),
    }
}

/// Restores the newest valid snapshot in `dir`, or a fresh engine when there is none.
///
/// # Errors
/// When the engine configuration is invalid or the folder cannot be listed.
pub fn load_newest(dir: &Path, config: &EngineConfig) -> Result<(Engine, Loaded), String> {
    let mut loaded = Loaded::default();
    let positions = list(dir).map_err(|e| format!("list {}: {e}", dir.display()))?;
    for position in positions {
        let path = dir.join(file_name(position));
        let restored = File::open(&path).map_err(|e| e.to_string()).and_then(|f| {
            Engine::restore(*config, BufReader::with_capacity(1 << 20, f))
                .map_err(|e| e.to_string())
        });
        match restored {
            Ok(engine) if engine.position() == position => {
                loaded.used = Some((position, path));
                return Ok((engine, loaded));
            }
            Ok(engine) => loaded.refused.push(set_aside(
                path,
                format!(
                    "file name says position {position}, contents say {}",
                    engine.position()
                ),
            )),
            Err(e) => loaded.refused.push(set_aside(path, e)),
        }
    }
    let engine = Engine::new(*config).map_err(|e| e.to_string())?;
    Ok((engine, loaded))
}
