//! The journal on real files: append and reopen, rolls, lock, readers, crashes simulated by
//! editing segment files directly, retention.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use common::*;
use journal::recovery::RefuseReason;
use journal::{segment_file_name, Error, Journal, JournalReader, Retention, Tail};

/// (segment path, offset, byte_length) of the last batch of the journal in `dir`.
fn last_batch_location(dir: &std::path::Path) -> (PathBuf, u64, usize) {
    let mut reader = JournalReader::open(dir).expect("reader");
    let mut last = None;
    while let Some(batch) = reader.next_batch().expect("read") {
        last = Some((
            dir.join(segment_file_name(batch.segment_index())),
            batch.offset(),
            batch.as_bytes().len(),
        ));
    }
    last.expect("journal has a batch")
}

fn batch_locations(dir: &std::path::Path) -> Vec<(PathBuf, u64, u64)> {
    let mut reader = JournalReader::open(dir).expect("reader");
    let mut all = Vec::new();
    while let Some(batch) = reader.next_batch().expect("read") {
        all.push((
            dir.join(segment_file_name(batch.segment_index())),
            batch.offset(),
            batch.first_position(),
        ));
    }
    all
}

fn edit(path: &std::path::Path, offset: u64, edit: impl FnOnce(&mut Vec<u8>), length: usize) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut bytes = vec![0u8; length];
    file.read_exact_at(&mut bytes, offset).expect("read");
    edit(&mut bytes);
    file.write_all_at(&bytes, offset).expect("write");
    file.sync_all().expect("sync");
}

#[test]
fn appended_batches_survive_reopen_across_segment_rolls() {
    let dir = TempDir::new("reopen");
    let (mut journal, report) = Journal::open(dir.path(), options()).expect("open");
    assert!(report.created);
    assert_eq!(report.last_position, None);
    // ~80 KiB batches: a 1 MiB segment holds 12, so 40 batches roll three times.
    let durable = append_batches(&mut journal, 40, 10, 8000);
    assert_eq!(durable, 400);
    assert_eq!(journal.durable_position(), 400);
    assert!(journal.stats().segments_rolled >= 3);
    let checksum = journal.last_checksum();
    drop(journal);

    let (journal, report) = Journal::open(dir.path(), options()).expect("reopen");
    assert_eq!(report.tail, Tail::Clean);
    assert_eq!(report.batch_count, 40);
    assert_eq!(report.first_position, Some(1));
    assert_eq!(report.last_position, Some(400));
    assert_eq!(journal.last_checksum(), checksum);
    assert_eq!(journal.next_position(), 401);
    assert_eq!(
        read_all_positions(dir.path()),
        (1..=400).collect::<Vec<_>>()
    );
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
    let dir = TempDir::new("lock");
    let (journal, _) = Journal::open(dir.path(), options()).expect("open");
    let second = Journal::open(dir.path(), options());
    assert!(
        matches!(&second, Err(Error::Locked { path }) if path.ends_with("journal.lock")),
        "{second:?}"
    );
    let message = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("locked for writing"), "{message}");
    // Readers need no lock.
    assert!(JournalReader::open(dir.path()).is_ok());
    drop(journal);
    assert!(Journal::open(dir.path(), options()).is_ok());
}

#[test]
fn a_reader_starts_at_the_batch_holding_any_position() {
    let dir = TempDir::new("seek");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    append_batches(&mut journal, 30, 7, 3000);
    let last = journal.last_position();
    let mut reader = JournalReader::open(dir.path()).expect("reader");
    for position in [1, 2, 7, 8, 100, 101, last - 1, last] {
        reader.seek(position).expect("seek");
        let batch = reader.next_batch().expect("read").expect("a batch");
        assert!(batch.first_position() <= position && position <= batch.last_position());
        let first = batch.entries_from(position).next().expect("entry");
        assert_eq!(first.position, position);
        let mut next = position;
        let mut positions = batch
            .entries_from(position)
            .map(|e| e.position)
            .collect::<Vec<_>>();
        while let Some(batch) = reader.next_batch().expect("read") {
            positions.extend(batch.entries().map(|e| e.position));
        }
        for p in positions {
            assert_eq!(p, next);
            next += 1;
        }
        assert_eq!(next, last + 1);
    }
    reader.seek(last + 1).expect("seek past the end");
    assert!(reader.next_batch().expect("read").is_none());
    append_batches(&mut journal, 1, 1, 10);
    let batch = reader.next_batch().expect("read").expect("the new batch");
    assert_eq!(batch.first_position(), last + 1);
}

#[test]
fn a_live_reader_stops_at_a_partially_written_batch_and_resumes_when_it_completes() {
    let dir = TempDir::new("live");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    append_batches(&mut journal, 3, 2, 100);
    let mut reader = JournalReader::open(dir.path()).expect("reader");
    for _ in 0..3 {
        assert!(reader.next_batch().expect("read").is_some());
    }
    // Simulate a write in flight: only the first half of the next batch is in the file.
    let batch = next_batch(&journal, 50, 150);
    let bytes = batch.as_bytes().to_vec();
    let (path, offset, length) = last_batch_location(dir.path());
    let tail = offset + (length as u64).div_ceil(4096) * 4096;
    edit(
        &path,
        tail,
        |b| b[..bytes.len() / 2].copy_from_slice(&bytes[..bytes.len() / 2]),
        bytes.len(),
    );
    assert!(reader.next_batch().expect("read").is_none());
    assert!(reader.next_batch().expect("read").is_none());
    journal.append(&batch).expect("append completes the write");
    let read = reader.next_batch().expect("read").expect("completed batch");
    assert_eq!(read.first_position(), 7);
    assert_eq!(read.as_bytes(), bytes.as_slice());
}

#[test]
fn a_torn_last_batch_is_truncated_on_reopen_and_writing_continues() {
    let dir = TempDir::new("torn");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    append_batches(&mut journal, 4, 3, 3000); // 9 KiB batches: three blocks each
    drop(journal);
    let (path, offset, length) = last_batch_location(dir.path());
    let pristine = std::fs::read(&path).expect("read segment");
    // Real-file variant of the in-memory every-byte test: a sample of cut points.
    for cut in [1, 31, 32, 63, 64, 4095, 4096, 4097, 8192, length - 1] {
        std::fs::write(&path, &pristine).expect("restore");
        edit(&path, offset + cut as u64, |b| b.fill(0), length - cut);
        let (mut journal, report) = Journal::open(dir.path(), options()).expect("reopen");
        match &report.tail {
            Tail::Truncated {
                segment,
                offset: at,
                bytes_dropped,
                ..
            } => {
                assert_eq!(segment, &path);
                assert_eq!(*at, offset);
                assert!(*bytes_dropped >= 4096, "cut {cut}");
            }
            Tail::Clean => panic!("cut {cut}: torn tail not detected"),
        }
        assert_eq!(report.last_position, Some(9), "cut {cut}");
        assert_eq!(journal.next_position(), 10);
        append_batches(&mut journal, 1, 1, 10);
        drop(journal);
        assert_eq!(
            read_all_positions(dir.path()),
            (1..=10).collect::<Vec<_>>(),
            "cut {cut}"
        );
        let (_, report) = Journal::open(dir.path(), options()).expect("reopen after repair");
        assert_eq!(report.tail, Tail::Clean);
    }
}

#[test]
fn a_bit_flip_in_a_middle_batch_refuses_to_open_naming_segment_and_offset() {
    let dir = TempDir::new("flip");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    append_batches(&mut journal, 20, 10, 8000); // rolls once
    drop(journal);
    let batches = batch_locations(dir.path());
    let (path, offset, _) = batches[5].clone();
    edit(&path, offset + 700, |b| b[0] ^= 0x10, 1);
    let error = Journal::open(dir.path(), options()).expect_err("must refuse");
    match &error {
        Error::Corrupt {
            segment,
            offset: at,
            reason,
            valid_at,
            ..
        } => {
            assert_eq!(segment, &path);
            assert_eq!(*at, offset);
            assert_eq!(*reason, RefuseReason::CorruptionBeforeValidData);
            assert_eq!(valid_at.as_ref().map(|v| v.1), Some(batches[6].1));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&segment_file_name(0)) && message.contains(&format!("offset {offset}")),
        "{message}"
    );
    // Nothing was changed: the damaged batch is still there for a repair.
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(
        &bytes[offset as usize..offset as usize + 4],
        &0x594C_4C54u32.to_le_bytes()
    );
}

#[test]
fn a_missing_segment_refuses_to_open_naming_it() {
    let dir = TempDir::new("missing");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    append_batches(&mut journal, 40, 10, 8000);
    drop(journal);
    let missing = dir.path().join(segment_file_name(1));
    std::fs::remove_file(&missing).expect("remove");
    let error = Journal::open(dir.path(), options()).expect_err("must refuse");
    assert!(
        matches!(&error, Error::MissingSegment { path } if path == &missing),
        "{error:?}"
    );
    assert!(error.to_string().contains(&segment_file_name(1)));
}

#[test]
fn a_truncated_segment_refuses_to_open_until_extended_then_its_cut_is_a_torn_tail() {
    let dir = TempDir::new("short");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    append_batches(&mut journal, 5, 3, 3000);
    drop(journal);
    let (path, offset, _) = last_batch_location(dir.path());
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(offset + 4096 + 100)
        .expect("truncate mid-batch");
    let error = Journal::open(dir.path(), options()).expect_err("must refuse");
    assert!(
        matches!(&error, Error::SegmentSizeMismatch { path: p, .. } if p == &path),
        "{error:?}"
    );
    assert!(error.to_string().contains("truncate -s"));
    file.set_len(SEGMENT_SIZE)
        .expect("extend with zeros as the message says");
    let (_, report) = Journal::open(dir.path(), options()).expect("reopen");
    assert!(matches!(report.tail, Tail::Truncated { .. }));
    assert_eq!(report.last_position, Some(12));
}

#[test]
fn an_out_of_sequence_batch_is_refused_and_nothing_is_written() {
    let dir = TempDir::new("sequence");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    append_batches(&mut journal, 2, 2, 10);
    let good = next_batch(&journal, 1, 10);
    let mut builder = journal::BatchBuilder::new(journal.next_position() + 1);
    builder
        .try_append(journal::EntryMeta::default(), b"x")
        .expect("fits");
    let gap = builder.seal(1, 0, journal.last_checksum());
    assert!(matches!(
        journal.append(&gap),
        Err(Error::OutOfSequence {
            expected_position: 5,
            ..
        })
    ));
    let mut builder = journal::BatchBuilder::new(journal.next_position());
    builder
        .try_append(journal::EntryMeta::default(), b"x")
        .expect("fits");
    let wrong_chain = builder.seal(1, 0, journal.last_checksum() ^ 1);
    assert!(matches!(
        journal.append(&wrong_chain),
        Err(Error::OutOfSequence { .. })
    ));
    assert_eq!(
        journal
            .append(&good)
            .expect("the right batch still goes in"),
        5
    );
}

#[test]
fn retention_deletes_or_archives_whole_segments_before_a_position() {
    let dir = TempDir::new("retain");
    let archive = TempDir::new("archive");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    append_batches(&mut journal, 50, 10, 8000); // ~12 batches per segment: 5 segments
    let segments_before = batch_locations(dir.path());
    let second_segment_first = segments_before
        .iter()
        .find(|b| b.0.ends_with(segment_file_name(1)))
        .expect("seg 1")
        .2;
    // A position inside segment 1 keeps segment 1 and removes only segment 0.
    assert_eq!(
        journal
            .retain_from(second_segment_first + 5, &Retention::Delete)
            .expect("retain"),
        1
    );
    assert!(!dir.path().join(segment_file_name(0)).exists());
    assert_eq!(journal.first_position(), Some(second_segment_first));
    let mut reader = JournalReader::open(dir.path()).expect("reader");
    assert!(
        matches!(reader.seek(1), Err(Error::PositionRetained { first_available: Some(p), .. }) if p == second_segment_first)
    );
    reader
        .seek(second_segment_first)
        .expect("seek to the new first position");
    // Archive everything before the last position: the tail segment always stays.
    let last = journal.last_position();
    let archived = journal
        .retain_from(last, &Retention::Archive(archive.path().to_path_buf()))
        .expect("archive");
    assert!(archived >= 2);
    assert!(archive.path().join(segment_file_name(1)).exists());
    drop(journal);
    let (_, report) = Journal::open(dir.path(), options()).expect("reopen after retention");
    assert_eq!(report.last_position, Some(last));
    assert_eq!(read_all_positions(dir.path()).last(), Some(&last));
}

#[test]
fn a_spare_prepared_off_the_hot_path_is_used_at_the_next_roll() {
    let dir = TempDir::new("spare");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    assert_eq!(
        journal.take_spare_request(),
        None,
        "open prepares the first spare"
    );
    let preparer = journal.preparer();
    let mut rolls = 0;
    while rolls < 3 {
        append_batches(&mut journal, 1, 10, 2000);
        if let Some(index) = journal.take_spare_request() {
            let p = preparer.clone();
            std::thread::spawn(move || p.prepare(index))
                .join()
                .expect("thread")
                .expect("prepare");
            rolls += 1;
        }
    }
    assert_eq!(journal.stats().segments_rolled, 3);
    assert_eq!(journal.stats().segments_prepared_inline, 0);
}

#[test]
fn a_paced_preparation_writes_the_whole_segment_in_synced_chunks_and_the_writer_uses_it() {
    let dir = TempDir::new("paced");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    let preparer = journal.preparer();
    let size = preparer.segment_size();
    let mut rolls = 0;
    while rolls < 2 {
        append_batches(&mut journal, 1, 10, 2000);
        if let Some(index) = journal.take_spare_request() {
            let mut paces = Vec::new();
            let prepared = preparer
                .prepare_paced(index, |done| paces.push(done))
                .expect("prepare");
            assert_eq!(prepared, journal::Prepared::Created);
            let chunk = journal::PACED_CHUNK_SIZE as u64;
            assert_eq!(
                paces.len() as u64,
                size.div_ceil(chunk),
                "one pause per chunk"
            );
            assert!(paces.windows(2).all(|w| w[0] < w[1]), "progress only grows");
            assert_eq!(
                paces.last(),
                Some(&size),
                "the last pause sees the whole segment"
            );
            let file = dir.path().join(segment_file_name(index));
            assert_eq!(std::fs::metadata(&file).expect("segment").len(), size);
            assert_eq!(
                preparer
                    .prepare_paced(index, |_| panic!("no work"))
                    .expect("again"),
                journal::Prepared::AlreadyExisted
            );
            rolls += 1;
        }
    }
    assert_eq!(journal.stats().segments_prepared_inline, 0);
    drop(journal);
    let (_, report) = Journal::open(dir.path(), options()).expect("reopen");
    assert_eq!(
        read_all_positions(dir.path()).last().copied(),
        Some(report.last_position.expect("some"))
    );
}

/// A tmpfs folder where O_DIRECT is refused, or None (tmpfs supports O_DIRECT since Linux 6.6).
fn folder_refusing_o_direct() -> Option<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir =
        std::path::Path::new("/dev/shm").join(format!("journal-test-tmpfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let probe = dir.join("probe");
    let refused = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_err();
    let _ = std::fs::remove_dir_all(&dir);
    refused.then_some(dir)
}

#[test]
fn a_filesystem_refusing_o_direct_is_an_error_when_required_and_a_warning_when_optional() {
    let Some(dir) = folder_refusing_o_direct() else {
        eprintln!(
            "skipped: no filesystem here refuses O_DIRECT (/dev/shm accepts it on Linux >= 6.6)"
        );
        return;
    };
    let required = journal::Options {
        direct_io: journal::DirectIo::Required,
        ..options()
    };
    let error = Journal::open(&dir, required).expect_err("tmpfs refuses O_DIRECT");
    assert!(
        matches!(error, Error::DirectIoUnsupported { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("direct_io = optional"));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut journal, report) = Journal::open(&dir, options()).expect("optional falls back");
    assert_eq!(report.direct_io, journal::DirectIoStatus::FellBack);
    assert!(report.to_string().contains("WARNING"));
    append_batches(&mut journal, 2, 2, 10);
    drop(journal);
    assert_eq!(read_all_positions(&dir), vec![1, 2, 3, 4]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_journal_with_direct_io_disabled_is_still_durable_and_readable() {
    let dir = TempDir::new("buffered");
    let disabled = journal::Options {
        direct_io: journal::DirectIo::Disabled,
        ..options()
    };
    let (mut journal, report) = Journal::open(dir.path(), disabled).expect("open");
    assert_eq!(report.direct_io, journal::DirectIoStatus::Disabled);
    append_batches(&mut journal, 30, 10, 2000);
    assert_eq!(journal.stats().syncs, 30);
    drop(journal);
    let (_, report) = Journal::open(dir.path(), options()).expect("reopen with O_DIRECT");
    assert_eq!(report.direct_io, journal::DirectIoStatus::Active);
    assert_eq!(read_all_positions(dir.path()).len(), 300);
}

#[test]
fn disk_probe_measures_durable_writes() {
    let dir = TempDir::new("probe");
    let probe = journal::disk_probe(dir.path(), 4096, 20).expect("probe");
    assert!(probe.sync_p50_us > 0.0 && probe.sync_p50_us <= probe.sync_p99_us);
    assert!(probe.sync_p99_us <= probe.sync_max_us && probe.write_mb_per_s > 0.0);
    assert_eq!(
        probe.samples_ns.len(),
        20,
        "every write+sync kept, in order"
    );
    let max_ns = *probe.samples_ns.iter().max().expect("samples");
    assert_eq!(max_ns as f64 / 1000.0, probe.sync_max_us);
    assert!(
        std::fs::read_dir(dir.path()).expect("dir").next().is_none(),
        "probe file removed"
    );
}

#[test]
fn a_timed_disk_probe_runs_for_its_duration() {
    let dir = TempDir::new("probe-timed");
    let wanted = std::time::Duration::from_millis(50);
    let t = std::time::Instant::now();
    let probe = journal::disk_probe_for(dir.path(), 4096, wanted).expect("probe");
    assert!(t.elapsed() >= wanted);
    let total_ns: u64 = probe.samples_ns.iter().sum();
    assert!(!probe.samples_ns.is_empty() && total_ns > 0);
    assert!(probe.sync_p50_us <= probe.sync_max_us);
    assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none());
}

#[test]
fn a_zeroed_first_segment_before_valid_batches_is_a_hole_and_is_refused() {
    // The writer never rolls out of an empty segment, so a first segment that is all zeros
    // while the next one holds batches lost its batches: positions 1.. are gone. Recovery
    // must refuse (it cannot check the chain into the first batch it sees), not start the
    // journal at the next segment as if nothing were missing.
    let dir = TempDir::new("zeroed-first");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    append_batches(&mut journal, 20, 10, 8000); // rolls once
    drop(journal);
    let batches = batch_locations(dir.path());
    assert!(batches.iter().any(|b| b.0.ends_with(segment_file_name(1))));
    let first = dir.path().join(segment_file_name(0));
    edit(&first, 0, |b| b.fill(0), SEGMENT_SIZE as usize);
    let error = Journal::open(dir.path(), options()).expect_err("must refuse");
    assert!(
        matches!(
            &error,
            Error::Corrupt { segment, offset: 0, reason: RefuseReason::HoleBeforeValidData, .. }
                if segment == &first
        ),
        "{error:?}"
    );
}

#[test]
fn verify_tells_a_torn_tail_from_damage_before_valid_data_and_writes_nothing() {
    let dir = TempDir::new("verify");
    let (mut journal, _) = Journal::open(dir.path(), options()).expect("open");
    append_batches(&mut journal, 20, 10, 8000); // rolls once
    drop(journal);
    assert_eq!(journal::verify(dir.path()).expect("verify"), Tail::Clean);
    let batches = batch_locations(dir.path());
    let snapshot = |path: &std::path::Path| std::fs::read(path).expect("read segment");

    // The last batch torn: a warning-level tail, left as it is.
    let (last, offset, _) = batches.last().unwrap().clone();
    edit(&last, offset + 100, |b| b[0] ^= 0xff, 1);
    let before = snapshot(&last);
    assert!(matches!(
        journal::verify(dir.path()).expect("verify"),
        Tail::Truncated { segment, offset: o, .. } if segment == last && o == offset
    ));
    assert_eq!(snapshot(&last), before, "verify wrote to the journal");
    edit(&last, offset + 100, |b| b[0] ^= 0xff, 1);

    // A batch in the middle damaged: what an open refuses, verify reports.
    let (middle, offset, _) = batches[3].clone();
    edit(&middle, offset + 100, |b| b[0] ^= 0xff, 1);
    let before = snapshot(&middle);
    let error = journal::verify(dir.path()).expect_err("damage before valid data");
    assert!(
        matches!(&error, Error::Corrupt { segment, offset: o, .. } if segment == &middle && *o == offset),
        "{error:?}"
    );
    assert_eq!(snapshot(&middle), before, "verify wrote to the journal");
    assert!(matches!(
        Journal::open(dir.path(), options()),
        Err(Error::Corrupt { .. })
    ));
}
