//! The pipeline end to end in one process: offer → sequence → journal → engine → durable reply.

mod common;

use common::*;
use schemas::ledger::ResultCode;
use sequencer::Pipeline;

#[test]
fn commands_are_applied_in_order_and_replied_only_once_durable() {
    let dir = TempDir::new("pipeline-order");
    let (mut pipeline, report) = Pipeline::start(test_config(dir.path())).unwrap();
    assert_eq!(report.position, 0);
    let mut replies = pipeline.take_replies().unwrap();
    let mut producer = pipeline.producer().unwrap();

    offer(&mut producer, 7, 1, &create_external(99, 1));
    offer(&mut producer, 7, 2, &create_account(1, 1, true));
    offer(&mut producer, 7, 3, &create_account(2, 1, true));
    let n = 500u64;
    for i in 0..n {
        offer(
            &mut producer,
            7,
            4 + i,
            &deposit(1000 + u128::from(i), 1, 10),
        );
    }
    offer(&mut producer, 7, 4 + n, &transfer(9, 1, 2, 10 * n, 1));
    offer(&mut producer, 7, 5 + n, &transfer(10, 1, 2, 1, 1));

    let got = collect(&mut replies, (n + 5) as usize);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            g.position,
            i as u64 + 1,
            "positions are command indexes in order"
        );
        assert_eq!(g.reply_position, g.position);
        assert_eq!(g.client_seq, i as u64 + 1);
        assert_eq!(g.session_id, 7);
    }
    assert!(
        got[..got.len() - 1]
            .iter()
            .all(|g| g.result == ResultCode::Ok),
        "{got:?}"
    );
    assert_eq!(got.last().unwrap().result, ResultCode::InsufficientFunds);

    let status = pipeline.status();
    assert!(status.durable_position >= n + 5);
    assert!(status.batches >= 1);
    let status = pipeline.shutdown();
    assert_eq!(status.applied_position, n + 5);
    assert_eq!(status.fatal, None);
}

#[test]
fn several_producers_interleave_and_every_command_gets_one_reply() {
    let dir = TempDir::new("pipeline-producers");
    let (mut pipeline, _) = Pipeline::start(test_config(dir.path())).unwrap();
    let mut replies = pipeline.take_replies().unwrap();
    let mut setup = pipeline.producer().unwrap();
    offer(&mut setup, 1, 1, &create_external(99, 1));
    offer(&mut setup, 1, 2, &create_account(1, 1, false));
    collect(&mut replies, 2);

    let per = 2_000u64;
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let mut producer = pipeline.producer().unwrap();
            std::thread::spawn(move || {
                for i in 0..per {
                    let id = u128::from(t) << 64 | u128::from(i + 1);
                    offer(&mut producer, 100 + t, i + 1, &deposit(id, 1, 1));
                }
            })
        })
        .collect();
    let got = collect(&mut replies, (3 * per) as usize);
    for t in threads {
        t.join().unwrap();
    }
    assert!(got.iter().all(|g| g.result == ResultCode::Ok));
    for t in 0..3u64 {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|g| g.session_id == 100 + t)
            .map(|g| g.client_seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=per).collect::<Vec<_>>(),
            "each session's commands stay in its order"
        );
    }
    assert!(got.windows(2).all(|w| w[0].position + 1 == w[1].position));
    pipeline.shutdown();
}

#[test]
fn a_restart_recovers_the_same_state_from_snapshot_and_journal() {
    let dir = TempDir::new("pipeline-restart");
    let mut config = test_config(dir.path());
    config.snapshot_interval_commands = 300;
    let (hash, position) = {
        let (mut pipeline, _) = Pipeline::start(config.clone()).unwrap();
        let mut replies = pipeline.take_replies().unwrap();
        let mut producer = pipeline.producer().unwrap();
        offer(&mut producer, 3, 1, &create_external(99, 1));
        offer(&mut producer, 3, 2, &create_account(1, 1, true));
        for i in 0..999u64 {
            offer(&mut producer, 3, 3 + i, &deposit(u128::from(i) + 1, 1, 5));
        }
        collect(&mut replies, 1_001);
        wait_applied(&pipeline, 1_001);
        let status = pipeline.shutdown();
        assert!(status.snapshots >= 1, "snapshots were taken: {status:?}");
        (status.state_hash, status.applied_position)
    };
    let snapshots = sequencer::snapshots::list(&dir.path().join("snapshots")).unwrap();
    assert!(!snapshots.is_empty() && snapshots.len() <= config.snapshots_kept);

    let (mut pipeline, report) = Pipeline::start(config.clone()).unwrap();
    assert_eq!(report.position, position);
    assert!(report.snapshot.used.is_some(), "restart used a snapshot");
    assert_eq!(
        report.replayed,
        position - report.snapshot.used.as_ref().unwrap().0
    );
    assert_eq!(pipeline.status().state_hash, hash);

    // The same session's retry of an old command changes nothing; new commands continue.
    let mut replies = pipeline.take_replies().unwrap();
    let mut producer = pipeline.producer().unwrap();
    offer(&mut producer, 3, 1_001, &deposit(999, 1, 5));
    offer(&mut producer, 3, 1_002, &deposit(5_000, 1, 5));
    let got = collect(&mut replies, 2);
    assert_eq!(got[0].position, position + 1);
    assert_eq!(
        got[0].reply_position, position,
        "a retry is answered with the original position"
    );
    assert_eq!(got[0].result, ResultCode::Ok);
    assert_eq!(got[1].result, ResultCode::Ok);
    let status = pipeline.shutdown();
    assert_eq!(status.applied_position, position + 2);

    // Without snapshots, a replay of the whole journal reaches the same hash.
    std::fs::remove_dir_all(dir.path().join("snapshots")).unwrap();
    let (pipeline, report) = Pipeline::start(config).unwrap();
    assert_eq!(report.replayed, position + 2);
    assert_eq!(pipeline.status().state_hash, status.state_hash);
    pipeline.shutdown();
}

#[test]
fn a_bad_configuration_names_the_key() {
    let dir = TempDir::new("pipeline-config");
    let mut config = test_config(dir.path());
    config.ingress_ring_bytes = 1000;
    let err = Pipeline::start(config).err().unwrap();
    assert!(err.contains("ingress_ring_bytes = 1000"), "{err}");
    let mut config = test_config(dir.path());
    config.batches_in_flight_max = 1;
    let err = Pipeline::start(config).err().unwrap();
    assert!(err.contains("batches_in_flight_max"), "{err}");
}

#[test]
fn a_second_pipeline_on_the_same_folder_is_refused() {
    let dir = TempDir::new("pipeline-lock");
    let (pipeline, _) = Pipeline::start(test_config(dir.path())).unwrap();
    let err = Pipeline::start(test_config(dir.path())).err().unwrap();
    assert!(err.to_lowercase().contains("lock"), "{err}");
    pipeline.shutdown();
}

#[test]
fn journal_segments_before_the_oldest_kept_snapshot_are_retired_and_restart_still_recovers() {
    let dir = TempDir::new("pipeline-retention");
    let mut config = test_config(dir.path());
    config.snapshot_interval_commands = 4_000;
    config.snapshots_kept = 2;
    let (hash, position, retired) = {
        let (mut pipeline, _) = Pipeline::start(config.clone()).unwrap();
        let mut replies = pipeline.take_replies().unwrap();
        let mut producer = pipeline.producer().unwrap();
        offer(&mut producer, 5, 1, &create_external(99, 1));
        offer(&mut producer, 5, 2, &create_account(1, 1, true));
        assert_eq!(collect(&mut replies, 2).len(), 2);
        // Deposits in chunks until at least 40,000 are applied and a segment has been
        // retired. A snapshot is skipped while the one before is still being written, so how
        // many land in a given run depends on the machine's speed: keep the load going (more
        // snapshots) rather than assume a number.
        let (chunk, mut n) = (2_000u64, 0u64);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while n < 40_000 || pipeline.status().segments_retired == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no segment retired after {n} deposits: {:?}",
                pipeline.status()
            );
            for i in n..n + chunk {
                offer(&mut producer, 5, 3 + i, &deposit(u128::from(i) + 1, 1, 1));
            }
            n += chunk;
            assert_eq!(collect(&mut replies, chunk as usize).len(), chunk as usize);
            wait_applied(&pipeline, n + 2);
        }
        let status = pipeline.shutdown();
        (
            status.state_hash,
            status.applied_position,
            status.segments_retired,
        )
    };
    assert!(retired > 0, "some segments were retired");
    let first = std::fs::read_dir(dir.path().join("journal"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("segment-"))
        .min()
        .unwrap();
    assert_ne!(
        first,
        journal::segment_file_name(0),
        "the first segment is gone"
    );
    let (pipeline, report) = Pipeline::start(config).unwrap();
    assert_eq!(report.position, position);
    assert_eq!(pipeline.status().state_hash, hash);
    pipeline.shutdown();
}

#[test]
fn replies_wait_returns_when_a_reply_is_ready_not_at_its_timeout() {
    let dir = TempDir::new("pipeline-wait");
    let (mut pipeline, _) = Pipeline::start(test_config(dir.path())).unwrap();
    let mut replies = pipeline.take_replies().unwrap();
    let mut producer = pipeline.producer().unwrap();
    // Nothing is ready: a short wait registers this thread and times out.
    assert_eq!(replies.poll(16, |_| {}), 0);
    replies.wait(std::time::Duration::from_millis(1));
    let offerer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        offer(&mut producer, 7, 1, &create_external(99, 1));
        producer
    });
    let started = std::time::Instant::now();
    let mut got = 0;
    while got == 0 {
        got = replies.poll(16, |_| {});
        if got == 0 {
            // A wait far longer than the test: only a wake-up ends it in time.
            replies.wait(std::time::Duration::from_secs(60));
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no wake-up"
        );
    }
    assert_eq!(got, 1);
    drop(offerer.join().unwrap());
    assert_eq!(pipeline.shutdown().fatal, None);
}

#[test]
fn a_journal_writer_thread_and_the_inline_journal_reach_the_same_state() {
    let mut hashes = Vec::new();
    for inline in [true, false] {
        let dir = TempDir::new(if inline {
            "pipeline-inline"
        } else {
            "pipeline-thread"
        });
        let mut config = test_config(dir.path());
        config.journal_on_sequencer = inline;
        let (mut pipeline, _) = Pipeline::start(config.clone()).unwrap();
        let mut replies = pipeline.take_replies().unwrap();
        let mut producer = pipeline.producer().unwrap();
        offer(&mut producer, 7, 1, &create_external(99, 1));
        offer(&mut producer, 7, 2, &create_account(1, 1, true));
        offer(&mut producer, 7, 3, &create_account(2, 1, true));
        for i in 0..300u64 {
            offer(
                &mut producer,
                7,
                4 + i,
                &deposit(1000 + u128::from(i), 1, 3),
            );
        }
        offer(&mut producer, 7, 304, &transfer(9, 1, 2, 500, 1));
        let got = collect(&mut replies, 304);
        // Only the writer-thread mode has a journal thread (no other test here starts one).
        assert_eq!(journal_threads() > 0, !inline);
        let not_ok: Vec<_> = got.iter().filter(|g| g.result != ResultCode::Ok).collect();
        assert!(not_ok.is_empty(), "{not_ok:?}");
        let status = pipeline.shutdown();
        assert_eq!(status.fatal, None);
        assert_eq!(status.durable_position, 304);
        assert!(
            status.journal_syncs > 0,
            "the syncs are counted in both modes"
        );
        // A restart recovers the same state from the journal either way.
        let (pipeline, report) = Pipeline::start(config.clone()).unwrap();
        assert_eq!(report.position, 304);
        let restarted = pipeline.shutdown();
        assert_eq!(restarted.state_hash, status.state_hash);
        // The two runs stamped their entries at different log times, which the state hash
        // covers: replayed with each entry's time set to its position, the journals give the
        // same state.
        hashes.push(replay_with_times_from_positions(&config));
    }
    assert_eq!(hashes[0], hashes[1]);
}

/// The state hash of a fresh engine that applies every entry of `config`'s journal, each at
/// log time = its position.
fn replay_with_times_from_positions(config: &sequencer::PipelineConfig) -> u64 {
    let mut engine = engine::Engine::new(config.engine).unwrap();
    let mut reader = journal::JournalReader::open(config.data_dir.join("journal")).unwrap();
    let mut scratch = vec![0u8; engine::REPLY_LEN_MAX];
    while let Some(batch) = reader.next_batch().unwrap() {
        for entry in batch.entries() {
            let mut meta = sequencer::pipeline::entry_meta(&entry);
            meta.timestamp_ns = meta.position;
            engine.apply(&meta, entry.command, &mut scratch);
        }
    }
    assert_eq!(engine.position(), 304);
    engine.state_hash()
}

/// Threads of this process named `tally-journal` (Linux `/proc`).
fn journal_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == "tally-journal")
                .count()
        })
        .unwrap_or(0)
}

/// The snapshot writer that starts writeback as it goes writes exactly the bytes it was given,
/// across several writeback windows and in writes of every size (smaller than its buffer,
/// larger than it, and a tail shorter than a window), and `commit` puts the file in place.
#[test]
fn a_snapshot_written_with_writeback_reads_back_byte_for_byte() {
    use std::io::Write;
    let dir = TempDir::new("writeback");
    let window = sequencer::snapshots::WRITEBACK_WINDOW as usize;
    let bytes: Vec<u8> = (0..2 * window + 12_345)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let tmp = sequencer::snapshots::tmp_path(dir.path(), 42);
    let mut w = sequencer::snapshots::Writeback::new(std::fs::File::create(&tmp).unwrap());
    let (mut at, mut size) = (0usize, 1usize);
    while at < bytes.len() {
        let end = (at + size).min(bytes.len());
        w.write_all(&bytes[at..end]).unwrap();
        at = end;
        size = size * 3 % (3 << 20) + 1;
    }
    let file = w.finish().unwrap();
    let path = sequencer::snapshots::commit(dir.path(), 42, &tmp, &file).unwrap();
    assert!(!tmp.exists());
    assert_eq!(
        path.file_name().unwrap(),
        &*sequencer::snapshots::file_name(42)
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(sequencer::snapshots::list(dir.path()).unwrap(), vec![42]);
}

/// A crash while a snapshot is being written leaves its temporary file behind (as big as a
/// snapshot); pruning after the next snapshot removes it, as `prune` documents, and keeps
/// the newest snapshots.
#[test]
fn pruning_removes_temporary_files_left_by_a_crash() {
    use sequencer::snapshots::{file_name, list, prune, tmp_path};
    let dir = TempDir::new("prune-tmp");
    for position in [100u64, 200, 300] {
        std::fs::write(dir.path().join(file_name(position)), b"snapshot").unwrap();
    }
    let stale = tmp_path(dir.path(), 250);
    std::fs::write(&stale, b"half a snapshot").unwrap();
    prune(dir.path(), 2).unwrap();
    assert_eq!(list(dir.path()).unwrap(), vec![300, 200]);
    assert!(!stale.exists(), "the stale temporary file was removed");
}

/// Offers deposits of 1 to account 1 in chunks (from client sequence `*seq` on) until `done`
/// says so, collecting every reply; at most 30 s.
fn deposit_until(
    pipeline: &Pipeline,
    producer: &mut sequencer::pipeline::Producer,
    replies: &mut sequencer::pipeline::Replies,
    seq: &mut u64,
    mut done: impl FnMut(&Pipeline) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done(pipeline) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            pipeline.status()
        );
        for _ in 0..300 {
            offer(producer, 3, *seq, &deposit(u128::from(*seq), 1, 1));
            *seq += 1;
        }
        assert_eq!(collect(replies, 300).len(), 300);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_refused_snapshot_is_set_aside_and_never_counts_among_the_kept() {
    let dir = TempDir::new("pipeline-refused-snapshot");
    let snapshots_dir = dir.path().join("snapshots");
    let mut config = test_config(dir.path());
    config.snapshot_interval_commands = 300;
    config.snapshots_kept = 2;
    let listed = || sequencer::snapshots::list(&snapshots_dir).unwrap();
    let mut seq = 3;
    {
        let (mut pipeline, _) = Pipeline::start(config.clone()).unwrap();
        let mut replies = pipeline.take_replies().unwrap();
        let mut producer = pipeline.producer().unwrap();
        offer(&mut producer, 3, 1, &create_external(99, 1));
        offer(&mut producer, 3, 2, &create_account(1, 1, true));
        collect(&mut replies, 2);
        deposit_until(&pipeline, &mut producer, &mut replies, &mut seq, |_| {
            listed().len() == 2
        });
        pipeline.shutdown();
    }
    let kept = listed();
    let (newest, older) = (kept[0], kept[1]);
    let newest_path = snapshots_dir.join(sequencer::snapshots::file_name(newest));
    let mut bytes = std::fs::read(&newest_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&newest_path, bytes).unwrap();

    let (mut pipeline, report) = Pipeline::start(config.clone()).unwrap();
    assert_eq!(report.snapshot.used.as_ref().map(|u| u.0), Some(older));
    assert_eq!(report.snapshot.refused.len(), 1, "{:?}", report.snapshot);
    let aside = &report.snapshot.refused[0].0;
    assert!(aside.to_string_lossy().ends_with(".refused") && aside.exists());
    assert_eq!(listed(), vec![older]);
    // The next snapshot is kept with the good one it started from, not with the refused one.
    let mut replies = pipeline.take_replies().unwrap();
    let mut producer = pipeline.producer().unwrap();
    deposit_until(&pipeline, &mut producer, &mut replies, &mut seq, |p| {
        p.status().snapshots >= 1
    });
    pipeline.shutdown();
    // New ones may be taken while the journal is replayed from the older snapshot (the first
    // run may have journaled several intervals past its last snapshot), so at positions
    // before, at or after the refused one's, and the older one may have been pruned by then.
    let kept = listed();
    assert!(
        kept.len() == 2 && kept[0] > older && kept[1] >= older,
        "{kept:?} (refused: {newest}, older: {older})"
    );
    assert!(
        aside.exists(),
        "the refused snapshot is left for a person to look at"
    );
    // And the new one is a good one: the next start restores from it.
    let (pipeline, report) = Pipeline::start(config).unwrap();
    assert_eq!(report.snapshot.used.as_ref().map(|u| u.0), Some(kept[0]));
    assert!(report.snapshot.refused.is_empty(), "{:?}", report.snapshot);
    pipeline.shutdown();
}

#[test]
fn only_snapshots_named_as_written_are_listed_and_pruned() {
    // Another spelling of a position was listed, then `prune` looked for it under the
    // written name, failed, and the snapshot thread stopped the pipeline.
    let dir = TempDir::new("snapshot-names");
    let d = dir.path();
    use sequencer::snapshots::{file_name, list, prune, REFUSED_SUFFIX};
    for name in [
        "snapshot-7.tsnap".to_string(),
        file_name(9),
        file_name(8),
        format!("{}{REFUSED_SUFFIX}", file_name(11)),
    ] {
        std::fs::write(d.join(name), b"x").unwrap();
    }
    assert_eq!(list(d).unwrap(), vec![9, 8]);
    prune(d, 1).unwrap();
    assert_eq!(list(d).unwrap(), vec![9]);
    assert!(d.join("snapshot-7.tsnap").exists());
}
