//! Helpers shared by the journal's integration tests: temporary folders and batch builders.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use journal::{BatchBuilder, DirectIo, EntryMeta, Journal, Options, SealedBatch};

/// Segment size used by the tests: the smallest allowed, so preparation is quick.
pub const SEGMENT_SIZE: u64 = journal::SEGMENT_SIZE_MIN;

pub fn options() -> Options {
    // /tmp may be tmpfs on some machines: fall back rather than fail there.
    Options {
        segment_size: SEGMENT_SIZE,
        direct_io: DirectIo::Optional,
    }
}

/// A folder removed (with its contents) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("journal-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command whose bytes depend on its position, so reads can be checked.
pub fn command(position: u64, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (position as usize * 7 + i) as u8)
        .collect()
}

/// Seals a batch of `count` entries of `size`-byte commands continuing `journal`.
pub fn next_batch(journal: &Journal, count: usize, size: usize) -> SealedBatch {
    let mut builder = BatchBuilder::new(journal.next_position());
    for _ in 0..count {
        let position = builder.next_position();
        let meta = EntryMeta {
            timestamp_ns: position * 10,
            session_id: 1,
            client_seq: position,
        };
        builder
            .try_append(meta, &command(position, size))
            .expect("fits");
    }
    builder.seal(1, journal.next_position(), journal.last_checksum())
}

/// Appends `batches` batches of `count` entries; returns the last durable position.
pub fn append_batches(journal: &mut Journal, batches: usize, count: usize, size: usize) -> u64 {
    let mut durable = journal.durable_position();
    for _ in 0..batches {
        let batch = next_batch(journal, count, size);
        durable = journal.append(&batch).expect("append");
    }
    durable
}

/// Reads every entry of the journal in `dir` from its start; returns their positions, checking
/// each command's bytes.
pub fn read_all_positions(dir: &Path) -> Vec<u64> {
    let mut reader = journal::JournalReader::open(dir).expect("reader");
    let mut positions = Vec::new();
    while let Some(batch) = reader.next_batch().expect("read") {
        for entry in batch.entries() {
            assert_eq!(
                entry.command,
                command(entry.position, entry.command.len()).as_slice()
            );
            assert_eq!(entry.client_seq, entry.position);
            positions.push(entry.position);
        }
    }
    positions
}
