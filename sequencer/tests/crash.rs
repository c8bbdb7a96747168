//! Crash test: a child process runs the pipeline under load and reports every durable
//! acknowledgement to the parent over a pipe; the parent kills it with SIGKILL at a random
//! moment, restarts it on the same folder, and checks after each kill that
//! - every acknowledged deposit is in the recovered state (in the journal, and counted in the
//!   balance), and the balance is no more than what was sent;
//! - the state hash after recovery (snapshot + journal) equals a fresh replay of the journal.
//!
//! `cargo test -p sequencer --release --test crash` runs a short version (3 kills). The long
//! version: `TALLY_CRASH_KILLS=100 cargo test -p sequencer --release --test crash -- --ignored`.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use schemas::ledger::{self, ResultCode};
use sequencer::Pipeline;

const CHILD_ENV: &str = "TALLY_CRASH_CHILD_DIR";
const ROUND_ENV: &str = "TALLY_CRASH_ROUND";
const ACCOUNT: u64 = 1;

/// The child's body: only does anything when started by the parent.
#[test]
#[ignore = "child process of the crash test; started by it"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let mut config = test_config(std::path::Path::new(&dir));
    config.snapshot_interval_commands = 2_000;
    // Keep the whole journal: the check compares with a replay from position 1.
    config.retain_journal = false;
    let (mut pipeline, _) = Pipeline::start(config).expect("child start");
    let mut replies = pipeline.take_replies().unwrap();
    let mut producer = pipeline.producer().unwrap();
    // One session per round; sequence numbers restart with it.
    let session = 1_000 + round;
    offer(&mut producer, session, 1, &create_external(99, 1));
    offer(&mut producer, session, 2, &create_account(ACCOUNT, 1, true));
    let mut seq = 2u64;
    let mut sent = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        // Keep a bounded number in flight; the parent kills us at some point.
        while sent < seq + 2_000 {
            sent += 1;
            let id = u128::from(round) << 64 | u128::from(sent);
            // Report before offering, so the parent's sum of sent amounts is an upper bound
            // even when the kill lands between the two (a refused offer is re-sent and
            // counted twice, which keeps it an upper bound).
            writeln!(out, "sent {id}").unwrap();
            out.flush().unwrap();
            if producer
                .offer(session, sent + 2, &deposit(id, ACCOUNT, amount_of(id)))
                .is_err()
            {
                sent -= 1;
                break;
            }
        }
        let mut n = 0;
        replies.poll(usize::MAX, |r| {
            n += 1;
            seq = seq.max(r.client_seq);
            let reply = ledger::CommandReplyDecoder::wrap_with_header(r.bytes).unwrap();
            if r.client_seq >= 3 && reply.result() == Some(ResultCode::Ok) {
                let id = u128::from(round) << 64 | u128::from(r.client_seq - 2);
                writeln!(out, "ack {id}").unwrap();
            }
        });
        out.flush().unwrap();
        if n == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

fn amount_of(id: u128) -> u64 {
    1 + (id as u64 % 7)
}

fn run_kills(kills: u64) {
    let dir = TempDir::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut acked: HashSet<u128> = HashSet::new();
    let mut sent_total = 0u64;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            let mut sent = 0u64;
            // The test harness may print "test crash_child ... " without a newline before the
            // child's first line: look for the markers anywhere in a line.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let field = |marker: &str| {
                    line.find(marker)
                        .map(|i| line[i + marker.len()..].trim().parse::<u128>())
                };
                if let Some(Ok(id)) = field("ack ") {
                    acks.push(id);
                } else if let Some(Ok(id)) = field("sent ") {
                    sent += amount_of(id);
                }
            }
            (acks, sent)
        });
        // Kill at a random moment between 50 and 400 ms, once it has acknowledged something.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 350));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (acks, sent) = reader.join().unwrap();
        acked.extend(acks);
        sent_total += sent;
        check_recovery(dir.path(), &acked, sent_total, round, seed);
    }
    assert!(
        !acked.is_empty(),
        "the children acknowledged nothing: the test tested nothing"
    );
    eprintln!(
        "crash test: {kills} kills, {} acknowledged deposits all recovered",
        acked.len()
    );
}

fn check_recovery(dir: &std::path::Path, acked: &HashSet<u128>, sent: u64, round: u64, seed: u64) {
    let context = format!("after kill {round} (seed {seed})");
    // Recover the way a node does: snapshot + journal.
    let (pipeline, report) =
        Pipeline::start(test_config(dir)).unwrap_or_else(|e| panic!("{context}: {e}"));
    let recovered_hash = pipeline.status().state_hash;
    pipeline.shutdown();
    // Snapshots are renamed into place only once synced, so a kill never leaves one that is
    // torn: a refusal here would be restore refusing a good snapshot.
    assert!(
        report.snapshot.refused.is_empty(),
        "{context}: a snapshot was refused: {:?}",
        report.snapshot
    );

    // A fresh replay of the whole journal, and the deposits it holds.
    let mut engine = engine::Engine::new(test_config(dir).engine).unwrap();
    let mut reader = journal::JournalReader::open(dir.join("journal")).unwrap();
    let mut scratch = vec![0u8; engine::REPLY_LEN_MAX];
    let mut in_journal = HashSet::new();
    while let Some(batch) = reader.next_batch().unwrap() {
        for entry in batch.entries() {
            if let Ok(ledger::Decoded::Deposit(d)) = ledger::decode(entry.command) {
                in_journal.insert(
                    u128::from(d.transfer_id().hi()) << 64 | u128::from(d.transfer_id().lo()),
                );
            }
            let meta = sequencer::pipeline::entry_meta(&entry);
            engine.apply(&meta, entry.command, &mut scratch);
        }
    }
    assert_eq!(
        engine.position(),
        report.position,
        "{context}: replay reaches the recovered position"
    );
    assert_eq!(
        engine.state_hash(),
        recovered_hash,
        "{context}: snapshot + replay equals a fresh replay"
    );
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !in_journal.contains(id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{context}: acknowledged deposits lost: {missing:?}"
    );
    let acked_sum: u64 = acked.iter().map(|&id| amount_of(id)).sum();
    let balance = engine.account(ACCOUNT).map_or(0, |a| a.credits_posted);
    assert!(
        acked_sum <= balance && balance <= sent,
        "{context}: acked {acked_sum} <= balance {balance} <= sent {sent}"
    );
}

#[test]
fn acknowledged_commands_survive_sigkill() {
    let started = Instant::now();
    run_kills(3);
    eprintln!("short crash test took {:?}", started.elapsed());
}

#[test]
#[ignore = "long: TALLY_CRASH_KILLS=100 cargo test -p sequencer --release --test crash -- --ignored"]
fn acknowledged_commands_survive_many_sigkills() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let kills = std::env::var("TALLY_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    run_kills(kills);
}
