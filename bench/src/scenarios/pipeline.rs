//! `pipeline`: producers → sequencer → journal (real O_DIRECT + fdatasync) → engine → durable
//! replies, in one process, with the disk's own sync cost measured on the same folder.
//!
//! Closed loop (no `--rate`): the producer offers as fast as back-pressure allows; the figure
//! is durable throughput at saturation. Open loop (`--rate N`): commands are offered on a fixed
//! schedule and latency is measured from each command's *scheduled* time, so a stall that
//! delays later offers is charged to them (coordinated-omission correction).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use schemas::ledger::{CreateAccountEncoder, DepositEncoder, TransferFlags, TransfersEncoder};
use sequencer::{OfferError, Pipeline, PipelineConfig};
use serde_json::json;
use transport::idle::{IdleKind, IdleStrategy};

use crate::report;

const USAGE_HEAD: &str = "usage: bench pipeline [--rate N] [--duration-s S] [--accounts N] [--batch N] [--data DIR] [idle flags] [--json]

  --rate N         offered commands per second, open loop (default: closed loop, as fast as possible)
  --duration-s S   measured seconds (default 5)
  --accounts N     accounts transfers move between (default 10000)
  --batch N        transfers per command, 1 to 256 (default 1); throughput_per_s counts
                   transfers, commands_per_s commands (--rate is in commands)
  --data DIR       folder for the journal (default: a fresh folder under ./target/bench-pipeline);
                   it must be on the disk you want to measure (O_DIRECT is required)
  --segment-mb N   journal segment size in MiB (default: the journal's default, 64)
  --journal-thread a journal writer thread writes and syncs batches (default: the sequencer
                   thread does, `journal_on_sequencer`)
  --no-disk-model  open loop: skip the disk model (by default, after the run, the disk is timed
                   for as long again and an ideal group commit at the same rate is modelled on
                   it: `disk_model_p99_us`, `disk_model_p999_us`, ...)
  --json           print one JSON object
idle flags (the pipeline threads, the producer on back-pressure and the reply reader):";

fn usage() -> String {
    format!("{USAGE_HEAD}\n{}", report::IDLE_USAGE)
}

struct Args {
    rate: Option<u64>,
    duration_s: u64,
    accounts: u64,
    data: Option<PathBuf>,
    batch: usize,
    segment_mb: Option<u64>,
    idle_flags: report::IdleFlags,
    idle: IdleKind,
    json: bool,
    journal_thread: bool,
    disk_model: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        rate: None,
        duration_s: 5,
        accounts: 10_000,
        data: None,
        batch: 1,
        segment_mb: None,
        idle_flags: report::IdleFlags::default(),
        idle: sequencer::pipeline::IDLE_DEFAULT,
        json: false,
        journal_thread: false,
        disk_model: true,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or(format!("{name} needs a value\n\n{}", usage()))
        };
        if a.idle_flags.take(arg, || value(arg))? {
            continue;
        }
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: '{v}' is not a number"))
        };
        match arg.as_str() {
            "--rate" => a.rate = Some(number("--rate", value("--rate")?)?),
            "--duration-s" => a.duration_s = number("--duration-s", value("--duration-s")?)?,
            "--accounts" => a.accounts = number("--accounts", value("--accounts")?)?,
            "--batch" => a.batch = number("--batch", value("--batch")?)? as usize,
            "--data" => a.data = Some(PathBuf::from(value("--data")?)),
            "--segment-mb" => a.segment_mb = Some(number("--segment-mb", value("--segment-mb")?)?),
            "--json" => a.json = true,
            "--journal-thread" => a.journal_thread = true,
            "--no-disk-model" => a.disk_model = false,
            "--help" | "-h" => return Err(usage()),
            other => return Err(format!("unknown option '{other}'\n\n{}", usage())),
        }
    }
    a.idle = a.idle_flags.kind()?;
    if a.accounts < 2 {
        return Err("--accounts must be at least 2".into());
    }
    if a.batch == 0 || a.batch > engine::TRANSFERS_PER_COMMAND_MAX {
        return Err(format!(
            "--batch {} must be between 1 and {}",
            a.batch,
            engine::TRANSFERS_PER_COMMAND_MAX
        ));
    }
    if a.rate == Some(0) || a.duration_s == 0 {
        return Err("--rate and --duration-s must be positive".into());
    }
    Ok(a)
}

fn encode(f: impl FnOnce(&mut [u8]) -> usize) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let len = f(&mut buf);
    buf.truncate(len);
    buf
}

fn create_account(id: u64) -> Vec<u8> {
    encode(|b| {
        let mut e = CreateAccountEncoder::wrap_with_header(b).expect("fits");
        e.set_id(id).set_ledger(1);
        e.finish().expect("fits")
    })
}

fn deposit(id: u128, account: u64, amount: u64) -> Vec<u8> {
    encode(|b| {
        let mut e = DepositEncoder::wrap_with_header(b).expect("fits");
        e.transfer_id_mut()
            .set_lo(id as u64)
            .set_hi((id >> 64) as u64);
        e.set_account_id(account).set_amount(amount);
        e.finish().expect("fits")
    })
}

/// A `Transfers` command of one transfer per `(from, to)` pair, amount 1, ids patched later.
fn transfers(pairs: &[(u64, u64)]) -> Vec<u8> {
    let mut buf = vec![0u8; 64 + pairs.len() * 64];
    let len = {
        let mut e = TransfersEncoder::wrap_with_header(&mut buf).expect("fits");
        {
            let mut g = e.transfers().expect("fits");
            for &(from, to) in pairs {
                let mut t = g.next_entry().expect("fits");
                t.set_debit_account_id(from)
                    .set_credit_account_id(to)
                    .set_amount(1);
                t.set_ledger(1).set_flags(TransferFlags::empty());
            }
        }
        e.finish().expect("fits")
    };
    buf.truncate(len);
    buf
}

/// Remove-on-drop folder.
struct Folder(PathBuf, bool);
impl Drop for Folder {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    let folder = match &a.data {
        Some(d) => Folder(
            d.join(format!("bench-pipeline-{}", std::process::id())),
            true,
        ),
        None => Folder(
            PathBuf::from("target/bench-pipeline").join(std::process::id().to_string()),
            true,
        ),
    };
    std::fs::create_dir_all(&folder.0)
        .map_err(|e| format!("create {}: {e}", folder.0.display()))?;

    // The disk's own cost, on the same folder, before the run.
    let probe = report::disk_probe(&folder.0)?;

    let mut config = PipelineConfig::new(folder.0.join("node"));
    config.snapshot_interval_commands = 0;
    config.engine.accounts_max = (a.accounts + 16) as u32;
    config.engine.transfers_retained_max = 20_000_000;
    config.batches_in_flight_max = 16;
    config.journal_on_sequencer = !a.journal_thread;
    if let Some(mb) = a.segment_mb {
        config.journal.segment_size = mb.saturating_mul(1 << 20);
    }
    config.idle = a.idle;
    let (mut pipeline, _) = Pipeline::start(config)?;
    let mut replies = pipeline.take_replies().ok_or("no replies")?;
    let mut producer = pipeline.producer().ok_or("no producer")?;

    // Set-up: accounts, each funded; not measured.
    let mut seq = 0u64;
    let offer = |producer: &mut sequencer::Producer, seq: u64, cmd: &[u8]| loop {
        match producer.offer(1, seq, cmd) {
            Ok(()) => return Ok(()),
            Err(OfferError::BackPressured) => std::thread::yield_now(),
            Err(e) => return Err(format!("offer: {e:?}")),
        }
    };
    for id in 1..=a.accounts {
        seq += 1;
        offer(&mut producer, seq, &create_account(id))?;
        seq += 1;
        offer(
            &mut producer,
            seq,
            &deposit(u128::from(id) << 64, id, 1_000_000_000),
        )?;
    }
    let setup_last = seq;
    while replies.poll(usize::MAX, |_| {}) > 0 || pipeline.status().applied_position < setup_last {
        std::thread::sleep(Duration::from_millis(1));
    }
    while replies.poll(usize::MAX, |_| {}) > 0 {}

    // Pre-encode the measured commands: random pairs (xorshift, fixed seed).
    let count_max: u64 = match a.rate {
        Some(r) => r * a.duration_s,
        None => u64::MAX,
    };
    let batch = a.batch;
    let pool = ((1usize << 16) / batch).max(64);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let commands: Vec<Vec<u8>> = (0..pool)
        .map(|_| {
            let pairs: Vec<(u64, u64)> = (0..batch)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let from = 1 + rng % a.accounts;
                    let to = 1 + (from + rng / a.accounts % (a.accounts - 1)) % a.accounts;
                    (from, to)
                })
                .collect();
            transfers(&pairs)
        })
        .collect();
    // The id patching below relies on this layout: header, block, group header, entries.
    let layout_ok = commands.iter().all(|c| {
        let word = |at: usize| usize::from(u16::from_le_bytes([c[at], c[at + 1]]));
        word(10 + 2) == batch && c.len() == 10 + 4 + batch * word(10)
    });
    if !layout_ok {
        return Err("bench: unexpected Transfers command layout (schema changed?)".into());
    }

    let first_seq = setup_last + 1;
    // Scheduled send times by sequence number, in a ring larger than anything in flight (the
    // ingress ring and batch buffers bound that far below it).
    const SCHED_SLOTS: usize = 1 << 20;
    let sched: Arc<Vec<AtomicU64>> =
        Arc::new((0..SCHED_SLOTS).map(|_| AtomicU64::new(0)).collect());
    let sent_count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let duration = Duration::from_secs(a.duration_s);
    let rate = a.rate;
    let (sched_p, sent_p) = (sched.clone(), sent_count.clone());
    let idle_kind = a.idle;
    let producer_thread = std::thread::spawn(move || -> Result<u64, String> {
        let mut sent = 0u64;
        let mut buf = vec![0u8; commands.iter().map(Vec::len).max().unwrap_or(0)];
        // Back-pressure parks this thread (spin, yield, then sleep): a load generator that
        // spins or yields on a full ring takes a core from the pipeline on this 2-core
        // machine. In closed loop the clock is read once per 256 commands.
        let mut idle = IdleStrategy::new(idle_kind);
        let mut now = 0u64;
        while sent < count_max {
            if rate.is_some() || sent.is_multiple_of(256) {
                now = start.elapsed().as_nanos() as u64;
            }
            if rate.is_none() && now >= duration.as_nanos() as u64 {
                break;
            }
            let due_ns = match rate {
                Some(r) => sent * 1_000_000_000 / r,
                None => now,
            };
            if now < due_ns {
                // Sleep until the next send is due (in open loop, lateness is charged to the
                // command's latency, since it is measured from the scheduled time).
                std::thread::sleep(Duration::from_nanos((due_ns - now).min(1_000_000)));
                continue;
            }
            // Each command needs its own transfer id: patch it into a copy of a template.
            let template = &commands[(sent % pool as u64) as usize];
            let cmd = &mut buf[..template.len()];
            cmd.copy_from_slice(template);
            patch_transfer_ids(cmd, batch, sent * batch as u64 + 1 + (1 << 40));
            sched_p[(sent as usize) % SCHED_SLOTS].store(due_ns, Ordering::Relaxed);
            loop {
                match producer.offer(1, first_seq + sent, cmd) {
                    Ok(()) => break,
                    Err(OfferError::BackPressured) => idle.idle(0),
                    Err(e) => return Err(format!("offer: {e:?}")),
                }
            }
            idle.reset();
            sent += 1;
            if sent.is_multiple_of(64) || rate.is_some() {
                sent_p.store(sent, Ordering::Release);
            }
        }
        sent_p.store(sent, Ordering::Release);
        Ok(sent)
    });

    let mut hist =
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut received = 0u64;
    let mut last_reply = start;
    let mut idle = IdleStrategy::new(a.idle);
    let mut empty_polls = 0u32;
    let (mut sampled, mut sampled_not_ok, mut undecodable) = (0u64, 0u64, 0u64);
    loop {
        // The clock is read once per poll that hands over replies, at the first of them (so
        // it is never earlier than any reply's release), not on every empty poll.
        let mut now_ns = None;
        let n = replies.poll(4096, |r| {
            let now = *now_ns.get_or_insert_with(|| start.elapsed().as_nanos() as u64);
            let i = (r.client_seq - first_seq) as usize % SCHED_SLOTS;
            let due = sched[i].load(Ordering::Relaxed);
            let _ = hist.record(now.saturating_sub(due).max(1_000));
            // A sample of the replies is decoded to check that the transfers were applied.
            if received.is_multiple_of(64) {
                match client::Response::decode(r.bytes) {
                    Ok(client::Response::Command { results, .. }) => {
                        sampled += results.len() as u64;
                        sampled_not_ok += results
                            .iter()
                            .filter(|c| **c != Some(client::ResultCode::Ok))
                            .count() as u64;
                    }
                    _ => undecodable += 1,
                }
            }
            received += 1;
        });
        if let Some(now) = now_ns {
            last_reply = start + Duration::from_nanos(now);
            empty_polls = 0;
            idle.reset();
            continue;
        }
        if producer_thread.is_finished() && received >= sent_count.load(Ordering::Acquire) {
            break;
        }
        empty_polls = empty_polls.wrapping_add(1);
        if empty_polls.is_multiple_of(1024) && last_reply.elapsed() > Duration::from_secs(10) {
            return Err("no reply for 10 s".into());
        }
        let _ = n;
        // Back-off: sleep until the pipeline says replies may be ready (it wakes this thread
        // after each sync and each applied batch); other strategies poll as configured.
        if matches!(a.idle, IdleKind::BackOff { .. }) {
            replies.wait(Duration::from_millis(1));
        } else {
            idle.idle(0);
        }
    }
    let elapsed = last_reply.duration_since(start);
    let sent = producer_thread.join().map_err(|_| "producer panicked")??;
    let status = pipeline.shutdown();
    if let Some(f) = status.fatal {
        return Err(f);
    }
    let commands_per_s = sent as f64 / elapsed.as_secs_f64();
    let throughput = commands_per_s * batch as f64;
    let lat = report::latency_us(&hist);
    let mut command = format!(
        "cargo run --release -p bench -- pipeline --duration-s {} --accounts {}",
        a.duration_s, a.accounts
    );
    if let Some(r) = a.rate {
        command.push_str(&format!(" --rate {r}"));
    }
    if let Some(mb) = a.segment_mb {
        command.push_str(&format!(" --segment-mb {mb}"));
    }
    if a.journal_thread {
        command.push_str(" --journal-thread");
    }
    if !a.disk_model {
        command.push_str(" --no-disk-model");
    }
    command.push(' ');
    command.push_str(&a.idle_flags.args().join(" "));
    let mut v = json!({
        "scenario": "pipeline",
        "mode": if a.rate.is_some() { "open_loop" } else { "closed_loop" },
        "offered_rate_per_s": a.rate,
        "commands": sent,
        "transfers_per_command": batch,
        "throughput_per_s": throughput.round(),
        "commands_per_s": commands_per_s.round(),
        "transfers_sampled": sampled,
        "transfers_sampled_not_ok": sampled_not_ok,
        "replies_undecodable": undecodable,
        "p50_us": lat["p50_us"], "p99_us": lat["p99_us"], "p999_us": lat["p999_us"], "max_us": lat["max_us"],
        "idle": format!("{:?}", a.idle),
        "journal_on_sequencer": !a.journal_thread,
        "batches": status.batches,
        "commands_per_batch": if status.batches > 0 { (status.sequenced_position as f64 / status.batches as f64).round() } else { 0.0 },
        "journal_syncs": status.journal_syncs,
        "journal_sync_p99_bucket_us": status.journal_sync_p99_us,
        "journal_sync_max_us": status.journal_sync_max_us,
        "segments_prepared_inline": status.segments_prepared_inline,
        "peak_rss_bytes": report::peak_rss_bytes(),
        "machine": report::machine(),
        "command": command,
    });
    report::merge(&mut v, &probe);
    if let Some(rate) = a.rate {
        if a.disk_model {
            let model = report::disk_model(&folder.0, rate, a.duration_s)?;
            report::merge(&mut v, &model);
        }
        report::latency_limits(&mut v, ("p99_us", "p999_us"), (100.0, 500.0));
    }
    report::print(a.json, &v);
    Ok(())
}

/// Writes transfer ids `first..first + count` (lo halves; hi = 0) into the entries of a
/// `Transfers` command.
fn patch_transfer_ids(cmd: &mut [u8], count: usize, first: u64) {
    // Message header (8) + block (flags u16 = 2), then the group header: blockLength (u16)
    // and numInGroup (u16); each entry starts with its id.
    const GROUP_AT: usize = 8 + 2;
    let entry_len = usize::from(u16::from_le_bytes([cmd[GROUP_AT], cmd[GROUP_AT + 1]]));
    for i in 0..count {
        let at = GROUP_AT + 4 + i * entry_len;
        cmd[at..at + 8].copy_from_slice(&(first + i as u64).to_le_bytes());
        cmd[at + 8..at + 16].copy_from_slice(&0u64.to_le_bytes());
    }
}
