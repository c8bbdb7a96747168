//! `e2e`: client sessions over UDP loopback to a leader node in its own process (this binary
//! re-run as `bench e2e-node`), replies acknowledged only once durable.
//!
//! Closed loop (no `--rate`): every client keeps `--in-flight` requests outstanding; the figure
//! is acknowledged durable throughput at saturation. Open loop (`--rate N`, total over all
//! clients): requests go out on a fixed schedule and the round trip is measured from each
//! request's scheduled time (coordinated-omission correction). The disk's own sync cost is
//! measured on the same folder, and the node's peak RSS is read from /proc after it has held
//! `--rss-accounts` accounts with its default tables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::{Client, ClientConfig, Request, Transfer};
use hdrhistogram::Histogram;
use serde_json::json;
use transport::IdleKind;

use crate::report;

const USAGE_HEAD: &str = "usage: bench e2e [--clients N] [--rate N] [--duration-s S] [--in-flight N] [--batch N] [--accounts N]
                 [--rss-accounts N] [--data DIR] [idle flags] [--json]

  --clients N       client sessions, one thread each (default 2)
  --rate N          offered transfers per second in total, open loop (default: closed loop)
  --duration-s S    measured seconds (default 5)
  --in-flight N     requests each client keeps outstanding in closed loop (default 1024)
  --batch N         transfers per request, 1 to 256 (default 1); --rate and throughput_per_s
                    count transfers, requests_per_s requests
  --accounts N      accounts transfers move between (default 10000)
  --rss-accounts N  accounts created before measuring the node's peak RSS (default 1000000; 0 = skip)
  --data DIR        folder for the node's data (default ./target/bench-e2e)
  --journal-thread  the node uses a journal writer thread (default: its sequencer thread
                    writes and syncs the journal, `journal_on_sequencer`)
  --snapshot-interval N
                    the node snapshots every N commands (default 0: never, so that snapshot
                    I/O stays out of the latency figures; peak_rss_bytes then has no snapshot
                    copy in it)
  --no-disk-model   open loop: skip the disk model (by default, after the run, the disk is
                    timed for as long again and an ideal group commit of the same requests is
                    modelled on it: `disk_model_p99_us`, `disk_model_p999_us`, ...)
  --json            print one JSON object
idle flags (the client threads and the node's threads):";

fn usage() -> String {
    format!("{USAGE_HEAD}\n{}", report::IDLE_USAGE)
}

struct Args {
    clients: usize,
    rate: Option<u64>,
    duration_s: u64,
    in_flight: usize,
    batch: usize,
    accounts: u64,
    rss_accounts: u64,
    data: PathBuf,
    idle: report::IdleFlags,
    json: bool,
    journal_thread: bool,
    disk_model: bool,
    snapshot_interval: u64,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        clients: 2,
        rate: None,
        duration_s: 5,
        in_flight: 1024,
        batch: 1,
        accounts: 10_000,
        rss_accounts: 1_000_000,
        data: PathBuf::from("target/bench-e2e"),
        idle: report::IdleFlags::default(),
        json: false,
        journal_thread: false,
        disk_model: true,
        snapshot_interval: 0,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or(format!("{name} needs a value\n\n{}", usage()))
        };
        if a.idle.take(arg, || value(arg))? {
            continue;
        }
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: '{v}' is not a number"))
        };
        match arg.as_str() {
            "--clients" => a.clients = number("--clients", value("--clients")?)? as usize,
            "--rate" => a.rate = Some(number("--rate", value("--rate")?)?),
            "--duration-s" => a.duration_s = number("--duration-s", value("--duration-s")?)?,
            "--in-flight" => a.in_flight = number("--in-flight", value("--in-flight")?)? as usize,
            "--batch" => a.batch = number("--batch", value("--batch")?)? as usize,
            "--accounts" => a.accounts = number("--accounts", value("--accounts")?)?,
            "--rss-accounts" => {
                a.rss_accounts = number("--rss-accounts", value("--rss-accounts")?)?
            }
            "--data" => a.data = PathBuf::from(value("--data")?),
            "--json" => a.json = true,
            "--journal-thread" => a.journal_thread = true,
            "--no-disk-model" => a.disk_model = false,
            "--snapshot-interval" => {
                a.snapshot_interval = number("--snapshot-interval", value("--snapshot-interval")?)?
            }
            "--help" | "-h" => return Err(usage()),
            other => return Err(format!("unknown option '{other}'\n\n{}", usage())),
        }
    }
    if a.clients == 0
        || a.accounts < 2
        || a.duration_s == 0
        || a.in_flight == 0
        || a.rate == Some(0)
    {
        return Err(format!(
            "--clients, --duration-s, --in-flight, --rate must be positive, --accounts >= 2\n\n{}",
            usage()
        ));
    }
    if a.batch == 0 || a.batch > client::message::TRANSFERS_PER_REQUEST_MAX {
        return Err(format!(
            "--batch {} must be between 1 and {}",
            a.batch,
            client::message::TRANSFERS_PER_REQUEST_MAX
        ));
    }
    Ok(a)
}

/// The node side: `bench e2e-node DIR [idle flags]` runs a leader with default tables on
/// 127.0.0.1:0, prints its address, and stops when stdin closes.
pub fn run_node(args: &[String]) -> Result<(), String> {
    let dir = args
        .first()
        .ok_or("usage: bench e2e-node DIR [idle flags]")?;
    let mut config = sequencer::node::NodeConfig::new(dir);
    let mut idle = report::IdleFlags::default();
    let mut it = args[1..].iter();
    config.pipeline.snapshot_interval_commands = 0;
    while let Some(flag) = it.next() {
        if flag == "--journal-thread" {
            config.pipeline.journal_on_sequencer = false;
            continue;
        }
        let value = it.next().cloned().ok_or(format!("{flag} needs a value"));
        if flag == "--snapshot-interval" {
            config.pipeline.snapshot_interval_commands = value?
                .parse()
                .map_err(|_| "--snapshot-interval: not a number")?;
            continue;
        }
        if !idle.take(flag, || value)? {
            return Err(format!("e2e-node: unknown option '{flag}'"));
        }
    }
    config.pipeline.idle = idle.kind()?;
    config.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    config.pipeline.batches_in_flight_max = 16;
    let (node, _) = sequencer::node::Node::start(config)?;
    println!("{}", node.local_addr());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let status = node.shutdown();
    // The parent reads this line after closing stdin: the journal's sync times in the run.
    println!(
        "{}",
        json!({
            "journal_syncs": status.journal_syncs,
            "journal_sync_p99_bucket_us": status.journal_sync_p99_us,
            "journal_sync_max_us": status.journal_sync_max_us,
            "segments_prepared_inline": status.segments_prepared_inline,
            "snapshots": status.snapshots,
            "commands_per_batch": if status.batches > 0 { (status.sequenced_position as f64 / status.batches as f64).round() } else { 0.0 },
        })
    );
    match status.fatal {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

struct NodeProcess(Child);
impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peak_rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn connect(addr: SocketAddr, in_flight: usize, idle: IdleKind) -> Result<Client, String> {
    let mut config = ClientConfig::new(addr);
    config.in_flight_max = in_flight;
    config.idle = idle;
    config.timeout = Duration::from_secs(5);
    Client::connect(config).map_err(|e| e.to_string())
}

pub fn run(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    let dir = a.data.join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = measure(&a, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let v = result?;
    report::print(a.json, &v);
    Ok(())
}

fn measure(a: &Args, dir: &std::path::Path) -> Result<serde_json::Value, String> {
    let probe = report::disk_probe(dir)?;

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["e2e-node", &dir.join("node").display().to_string()])
        .args(a.idle.args())
        .args(a.journal_thread.then_some("--journal-thread"))
        .args([
            "--snapshot-interval".to_string(),
            a.snapshot_interval.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start node process: {e}"))?;
    let mut line = String::new();
    let mut node_out = std::io::BufReader::new(child.stdout.take().ok_or("no node stdout")?);
    {
        use std::io::BufRead;
        node_out.read_line(&mut line).map_err(|e| e.to_string())?;
    }
    let node_pid = child.id();
    let mut node = NodeProcess(child);
    let addr: SocketAddr = line
        .trim()
        .parse()
        .map_err(|_| format!("node printed '{}' instead of its address", line.trim()))?;

    // Set-up: external account, accounts with opening balances (not measured).
    let idle = a.idle.kind()?;
    let mut setup = connect(addr, 4096, idle)?;
    let create = |id: u64, external: bool| Request::CreateAccount {
        id,
        ledger: 1,
        debits_must_not_exceed_credits: false,
        credits_must_not_exceed_debits: false,
        external,
        code: 0,
    };
    setup.send_all_ok(std::iter::once(create(u64::MAX, true)))?;
    // With the external account, the node holds `rss_accounts` accounts in all (the default
    // engine table holds exactly 1,000,000).
    let accounts_total = a.accounts.max(a.rss_accounts.saturating_sub(1));
    setup.send_all_ok((1..=accounts_total).map(|id| create(id, false)))?;
    let mut ids = client::IdSource::with_seed(7);
    setup.send_all_ok((1..=a.accounts).map(|id| Request::Deposit {
        id: ids.next_u128(),
        account_id: id,
        amount: 1 << 40,
    }))?;

    // The measured run.
    let start = Instant::now() + Duration::from_millis(50);
    let deadline = start + Duration::from_secs(a.duration_s);
    let workers: Vec<_> = (0..a.clients)
        .map(|w| {
            let plan = Plan {
                worker: w as u64,
                accounts: a.accounts,
                in_flight: a.in_flight,
                batch: a.batch,
                rate_per_client: a.rate.map(|r| r as f64 / a.clients as f64),
                idle,
                start,
                deadline,
            };
            std::thread::spawn(move || load(addr, &plan))
        })
        .collect();
    let mut hist =
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let (mut done, mut failed) = (0u64, 0u64);
    let mut last_reply = start;
    for w in workers {
        let r = w
            .join()
            .map_err(|_| "client thread panicked".to_string())??;
        hist.add(&r.hist).map_err(|e| e.to_string())?;
        done += r.ok;
        failed += r.failed;
        last_reply = last_reply.max(r.last_reply);
    }
    let elapsed = last_reply
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    setup.close();
    let node_peak_rss = peak_rss_of(node_pid);
    // A clean stop: the node prints its journal figures, then exits.
    drop(node.0.stdin.take());
    let mut status_line = String::new();
    {
        use std::io::BufRead;
        let _ = node_out.read_line(&mut status_line);
    }
    let node_status: serde_json::Value =
        serde_json::from_str(status_line.trim()).unwrap_or(serde_json::Value::Null);
    drop(node);

    let lat = report::latency_us(&hist);
    let mut command = format!(
        "cargo run --release -p bench -- e2e --clients {} --duration-s {} --accounts {} --rss-accounts {} {}",
        a.clients, a.duration_s, a.accounts, a.rss_accounts, a.idle.args().join(" ")
    );
    match a.rate {
        Some(r) => command.push_str(&format!(" --rate {r}")),
        None => command.push_str(&format!(" --in-flight {}", a.in_flight)),
    }
    if a.journal_thread {
        command.push_str(" --journal-thread");
    }
    if a.batch > 1 {
        command.push_str(&format!(" --batch {}", a.batch));
    }
    if !a.disk_model {
        command.push_str(" --no-disk-model");
    }
    if a.snapshot_interval > 0 {
        command.push_str(&format!(" --snapshot-interval {}", a.snapshot_interval));
    }
    let mut v = json!({
        "scenario": "e2e",
        "mode": if a.rate.is_some() { "open_loop" } else { "closed_loop" },
        "clients": a.clients,
        "offered_rate_per_s": a.rate,
        "acknowledged": done,
        "transfers_per_request": a.batch,
        "requests_per_s": (done as f64 / elapsed / a.batch as f64).round(),
        "failed": failed,
        "throughput_per_s": (done as f64 / elapsed).round(),
        "rtt_p50_us": lat["p50_us"], "rtt_p99_us": lat["p99_us"], "rtt_p999_us": lat["p999_us"], "rtt_max_us": lat["max_us"],
        "node_accounts": accounts_total + 1,
        "peak_rss_bytes": node_peak_rss,
        "journal_syncs": node_status["journal_syncs"],
        "journal_sync_p99_bucket_us": node_status["journal_sync_p99_bucket_us"],
        "journal_sync_max_us": node_status["journal_sync_max_us"],
        "segments_prepared_inline": node_status["segments_prepared_inline"],
        "commands_per_batch": node_status["commands_per_batch"],
        "machine": report::machine(),
        "journal_on_sequencer": !a.journal_thread,
        "snapshot_interval_commands": a.snapshot_interval,
        "node_snapshots": node_status["snapshots"],
        "command": command,
    });
    report::merge(&mut v, &probe);
    if let Some(rate) = a.rate {
        if a.disk_model {
            let requests_per_s = (rate / a.batch as u64).max(1);
            let model = report::disk_model(dir, requests_per_s, a.duration_s)?;
            report::merge(&mut v, &model);
        }
        report::latency_limits(&mut v, ("rtt_p99_us", "rtt_p999_us"), (200.0, 1000.0));
    }
    Ok(v)
}

struct LoadResult {
    hist: Histogram<u64>,
    ok: u64,
    failed: u64,
    last_reply: Instant,
}

/// One client thread's share of the load.
struct Plan {
    worker: u64,
    accounts: u64,
    in_flight: usize,
    batch: usize,
    rate_per_client: Option<f64>,
    idle: IdleKind,
    start: Instant,
    deadline: Instant,
}

fn load(addr: SocketAddr, plan: &Plan) -> Result<LoadResult, String> {
    let (accounts, start, deadline) = (plan.accounts, plan.start, plan.deadline);
    let in_flight = plan.in_flight.max(64);
    let mut client = connect(addr, in_flight, plan.idle)?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    // Scheduled (open loop) or actual (closed loop) send time per request, by request id:
    // ids are consecutive and at most `in_flight` are outstanding, so a ring of twice that
    // many slots never has two live requests in one slot.
    let slots = (in_flight * 2).next_power_of_two();
    let mut sent_at = vec![start; slots];
    let mut ids = client::IdSource::with_seed(0xE2E0 + plan.worker);
    let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ (plan.worker + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut failed, mut sent) = (0u64, 0u64, 0u64);
    let mut last_reply = start;
    // One request value, rewritten in place for every send (no allocation per request).
    let batch = plan.batch;
    let mut request = Request::Transfers {
        atomic: false,
        transfers: vec![
            Transfer {
                id: 0,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 1,
                ledger: 1,
                pending: false,
                timeout_s: 0,
                code: 0,
            };
            batch
        ],
    };
    while Instant::now() < start {
        std::thread::sleep(Duration::from_micros(200));
    }
    loop {
        let now = Instant::now();
        if now < deadline {
            loop {
                // The rate counts transfers: request k is due when its first transfer is.
                let due = match plan.rate_per_client {
                    Some(r) => start + Duration::from_secs_f64((sent * batch as u64) as f64 / r),
                    None => now,
                };
                if due > now || (plan.rate_per_client.is_none() && client.in_flight() >= in_flight)
                {
                    break;
                }
                if let Request::Transfers { transfers, .. } = &mut request {
                    for t in transfers.iter_mut() {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let from = 1 + rng % accounts;
                        t.id = ids.next_u128();
                        t.debit_account_id = from;
                        t.credit_account_id = 1 + (from + (rng >> 24) % (accounts - 1)) % accounts;
                    }
                }
                match client.try_send(&request) {
                    Ok(id) => {
                        sent_at[id.0 as usize & (slots - 1)] = due;
                        sent += 1;
                    }
                    Err(client::ClientError::BackPressured { .. }) => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
        } else if client.in_flight() == 0 {
            break;
        }
        // Nothing to send before the next due time (open loop) or the window is full (closed
        // loop): sleep in the kernel until a reply arrives or it is time to send, rather than
        // spinning or parking on a fixed period (either takes CPU the node needs).
        let now = Instant::now();
        let wait = if now >= deadline {
            Duration::from_millis(1)
        } else {
            match plan.rate_per_client {
                Some(r) => (start + Duration::from_secs_f64((sent * batch as u64) as f64 / r))
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(1)),
                None if client.in_flight() >= in_flight => Duration::from_millis(1),
                None => Duration::ZERO,
            }
        };
        // The clock is read once per poll that completes requests, at the first completion.
        let mut reply_now = None;
        client.poll_wait(
            |id, result| {
                let now = *reply_now.get_or_insert_with(Instant::now);
                let t = sent_at[id.0 as usize & (slots - 1)];
                let _ = hist.record(now.saturating_duration_since(t).as_nanos() as u64);
                // Counted per transfer: each has its own result.
                match result {
                    Ok(client::Response::Command { results, .. }) if !results.is_empty() => {
                        let good = results
                            .iter()
                            .filter(|c| **c == Some(client::ResultCode::Ok))
                            .count() as u64;
                        ok += good;
                        failed += results.len() as u64 - good;
                    }
                    Ok(r) if r.result() == Some(client::ResultCode::Ok) => ok += batch as u64,
                    _ => failed += batch as u64,
                }
            },
            usize::MAX,
            wait,
        );
        if let Some(now) = reply_now {
            last_reply = now;
        }
    }
    client.close();
    Ok(LoadResult {
        hist,
        ok,
        failed,
        last_reply,
    })
}
