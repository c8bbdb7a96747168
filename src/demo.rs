//! `tally demo`: one process, embedded defaults, a temporary data folder. Starts a leader node
//! on loopback, opens client sessions over UDP, creates accounts, runs a few seconds of mixed
//! load (deposits, withdrawals, transfers, some of them overdraft attempts), posts one pending
//! transfer and voids another, then prints throughput, a latency table, a few balances and the
//! conservation check (per ledger, debits = credits), and cleans up.
//!
//! Replicas join the demo once the replica issue lands.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use client::{Client, ClientConfig, Request, Response, Transfer};
use hdrhistogram::Histogram;
use schemas::ledger::ResultCode;

#[derive(Args)]
pub struct DemoArgs {
    /// Seconds of mixed load (1 to 86,400).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: u64,
    /// Client sessions, one thread each (1 to 64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    clients: u64,
    /// Accounts the load moves money between (2 to 10,000,000).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    accounts: u64,
    /// Requests each client keeps in flight, pipelining (1 to 65,536).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    in_flight: u64,
}

const LEDGER: u32 = 1;
const EXTERNAL_ID: u64 = 1 << 62;
const OPENING_DEPOSIT: u64 = 10_000;

/// Removes the demo's data folder on drop, also on error paths.
struct Scratch(std::path::PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: DemoArgs) -> ExitCode {
    match demo(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(what: &str, r: Response) -> Result<Response, String> {
    match r.result() {
        Some(ResultCode::Ok) => Ok(r),
        other => Err(format!("{what}: {}", other.map_or("unknown", |c| c.name()))),
    }
}

fn demo(args: &DemoArgs) -> Result<(), String> {
    // The flags' ranges are checked by clap (see `DemoArgs`): these cannot fail.
    let accounts_max = u32::try_from(args.accounts + 1_000)
        .map_err(|_| format!("--accounts {}: too many", args.accounts))?;
    let load_time = Duration::from_secs(args.seconds);
    let load_deadline = || {
        Instant::now()
            .checked_add(load_time)
            .ok_or(format!("--seconds {}: too long", args.seconds))
    };
    let dir = std::env::temp_dir().join(format!("tally-demo-{}", std::process::id()));
    let _scratch = Scratch(dir.clone());
    let mut config = sequencer::node::NodeConfig::new(&dir);
    config.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    config.pipeline.journal.segment_size = 16 << 20;
    config.pipeline.journal.direct_io = journal::DirectIo::Optional;
    config.pipeline.engine.accounts_max = accounts_max;
    config.pipeline.engine.transfers_retained_max = 2_000_000;
    config.pipeline.engine.pending_max = 10_000;
    config.pipeline.snapshot_interval_commands = 0;
    let started = Instant::now();
    let (node, _) = sequencer::node::Node::start(config)?;
    let addr = node.local_addr();
    println!(
        "tally demo: leader listening on {addr} (data in {}), started in {:?}",
        dir.display(),
        started.elapsed()
    );

    // Set-up: the ledger's external account, then accounts with an opening deposit.
    let mut setup = Client::connect(ClientConfig::new(addr)).map_err(|e| e.to_string())?;
    check(
        "create external account",
        setup
            .request(&Request::CreateAccount {
                id: EXTERNAL_ID,
                ledger: LEDGER,
                debits_must_not_exceed_credits: false,
                credits_must_not_exceed_debits: false,
                external: true,
                code: 0,
            })
            .map_err(|e| e.to_string())?,
    )?;
    let creates = (1..=args.accounts).map(|id| Request::CreateAccount {
        id,
        ledger: LEDGER,
        debits_must_not_exceed_credits: true,
        credits_must_not_exceed_debits: false,
        external: false,
        code: 0,
    });
    setup.send_all_ok(creates)?;
    let mut ids = client::IdSource::new();
    let deposits: Vec<Request> = (1..=args.accounts)
        .map(|id| Request::Deposit {
            id: ids.next_u128(),
            account_id: id,
            amount: OPENING_DEPOSIT,
        })
        .collect();
    setup.send_all_ok(deposits)?;
    println!(
        "created {} accounts (no overdraft) with {OPENING_DEPOSIT} each",
        args.accounts
    );

    // Mixed load, one thread per client session.
    let deadline = load_deadline()?;
    let load_started = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|w| {
            let (accounts, in_flight_max) = (args.accounts, args.in_flight as usize);
            std::thread::spawn(move || load(addr, w, accounts, in_flight_max, deadline))
        })
        .collect();
    let mut hist =
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut results: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        let (h, r) = w
            .join()
            .map_err(|_| "a client thread panicked".to_string())??;
        hist.add(h).map_err(|e| e.to_string())?;
        for (k, v) in r {
            *results.entry(k).or_default() += v;
        }
    }
    let elapsed = load_started.elapsed();
    let total: u64 = results.values().sum();

    // Two-phase: one pending transfer posted, one voided.
    let two_phase = two_phase(&mut setup)?;

    println!();
    println!(
        "load: {total} commands from {} clients in {:.2} s = {:.0} commands/s (acknowledged durable)",
        args.clients,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "results: {}",
        results
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("round-trip latency (send -> durable reply), microseconds:");
    println!(
        "  {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        us(0.9999),
        hist.max() as f64 / 1000.0
    );
    println!();
    println!("{two_phase}");
    println!();
    println!("balances (credits - debits posted):");
    for id in [1, 2, 3, EXTERNAL_ID] {
        let r = setup
            .request(&Request::GetAccount {
                id,
                min_position: 0,
            })
            .map_err(|e| e.to_string())?;
        if let Response::Account { account, .. } = r {
            let name = if id == EXTERNAL_ID {
                "external".to_string()
            } else {
                format!("account {id}")
            };
            println!(
                "  {name:>12}: {:>10}   (debits {}, credits {}, pending {}/{})",
                account.balance(),
                account.debits_posted,
                account.credits_posted,
                account.debits_pending,
                account.credits_pending
            );
        }
    }
    conservation(&mut setup)?;
    setup.close();
    let status = node.shutdown();
    println!();
    println!(
        "leader stopped at position {} (durable {}), state hash {:016x}; data folder removed",
        status.applied_position, status.durable_position, status.state_hash
    );
    Ok(())
}

type LoadResult = Result<(Histogram<u64>, BTreeMap<String, u64>), String>;

/// One client session's mixed load until `deadline`.
fn load(
    addr: SocketAddr,
    worker: u64,
    accounts: u64,
    in_flight_max: usize,
    deadline: Instant,
) -> LoadResult {
    let mut config = ClientConfig::new(addr);
    config.in_flight_max = in_flight_max;
    let mut client = Client::connect(config).map_err(|e| e.to_string())?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut results: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent_at: HashMap<u64, Instant> = HashMap::with_capacity(in_flight_max * 2);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (worker + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut ids = client::IdSource::with_seed(worker ^ 0xDE40);
    loop {
        let now = Instant::now();
        if now < deadline {
            while sent_at.len() < in_flight_max {
                let r = next();
                let a = 1 + r % accounts;
                let b = 1 + (a + (r >> 20) % (accounts - 1)) % accounts;
                let transfer = |id, amount| Request::Transfers {
                    atomic: false,
                    transfers: vec![Transfer {
                        id,
                        debit_account_id: a,
                        credit_account_id: b,
                        amount,
                        ledger: LEDGER,
                        pending: false,
                        timeout_s: 0,
                        code: 0,
                    }],
                };
                // A second draw picks the kind: with `r % 100` the kind would follow the
                // account's last two digits (some accounts only ever withdrawing).
                let request = match next() % 100 {
                    // Small amounts against 10,000 opening balances keep most accounts
                    // solvent; 2 % are deliberate overdraft attempts that the no-overdraft
                    // rule refuses with insufficient_funds.
                    0..=1 => transfer(ids.next_u128(), 1_000_000_000),
                    2..=69 => transfer(ids.next_u128(), 1 + (r >> 40) % 100),
                    70..=84 => Request::Deposit {
                        id: ids.next_u128(),
                        account_id: a,
                        amount: 1 + (r >> 40) % 200,
                    },
                    _ => Request::Withdraw {
                        id: ids.next_u128(),
                        account_id: a,
                        amount: 1 + (r >> 40) % 100,
                    },
                };
                match client.try_send(&request) {
                    Ok(id) => {
                        sent_at.insert(id.0, Instant::now());
                    }
                    Err(client::ClientError::BackPressured { .. }) => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
        } else if sent_at.is_empty() {
            break;
        }
        // The window is full (or the run is over): sleep until a reply arrives, at most 1 ms.
        let wait = if sent_at.len() >= in_flight_max || now >= deadline {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        client.poll_wait(
            |id, result| {
                if let Some(t) = sent_at.remove(&id.0) {
                    let _ = hist.record(t.elapsed().as_nanos() as u64);
                }
                let name = match result {
                    Ok(r) => r.result().map_or("unknown", |c| c.name()).to_string(),
                    Err(e) => format!("error: {e}"),
                };
                *results.entry(name).or_default() += 1;
            },
            usize::MAX,
            wait,
        );
    }
    client.close();
    Ok((hist, results))
}

fn two_phase(client: &mut Client) -> Result<String, String> {
    let send = |client: &mut Client, r: &Request| client.request(r).map_err(|e| e.to_string());
    let pending = |id: u128, amount: u64| Request::Transfers {
        atomic: false,
        transfers: vec![Transfer {
            id,
            debit_account_id: 1,
            credit_account_id: 2,
            amount,
            ledger: LEDGER,
            pending: true,
            timeout_s: 60,
            code: 0,
        }],
    };
    let (p1, p2, funding, posting, voiding) = (
        client.new_transfer_id(),
        client.new_transfer_id(),
        client.new_transfer_id(),
        client.new_transfer_id(),
        client.new_transfer_id(),
    );
    // Fund account 1 so both reservations fit whatever the load did to it.
    check(
        "deposit",
        send(
            client,
            &Request::Deposit {
                id: funding,
                account_id: 1,
                amount: 1_000,
            },
        )?,
    )?;
    check("pending transfer", send(client, &pending(p1, 300))?)?;
    check("pending transfer", send(client, &pending(p2, 200))?)?;
    let post = send(
        client,
        &Request::PostPending {
            id: posting,
            pending_id: p1,
            amount: Some(250),
        },
    )?;
    let void = send(
        client,
        &Request::VoidPending {
            id: voiding,
            pending_id: p2,
        },
    )?;
    let name = |r: &Response| r.result().map_or("unknown", |c| c.name()).to_string();
    Ok(format!(
        "two-phase: pending 300 then posted 250 of it -> {}; pending 200 then voided -> {}",
        name(&post),
        name(&void)
    ))
}

/// Pages through every account of the ledger and checks that debits equal credits.
fn conservation(client: &mut Client) -> Result<(), String> {
    let (mut debits, mut credits, mut pending_d, mut pending_c, mut count) =
        (0u128, 0u128, 0u128, 0u128, 0u64);
    let mut after = 0u64;
    loop {
        let r = client
            .request(&Request::ListAccounts {
                ledger: Some(LEDGER),
                after_id: after,
                limit: 256,
                min_position: 0,
            })
            .map_err(|e| e.to_string())?;
        let Response::Accounts { accounts, .. } = r else {
            return Err("unexpected reply to list accounts".into());
        };
        if accounts.is_empty() {
            break;
        }
        for a in &accounts {
            debits += u128::from(a.debits_posted);
            credits += u128::from(a.credits_posted);
            pending_d += u128::from(a.debits_pending);
            pending_c += u128::from(a.credits_pending);
            count += 1;
            after = a.account_id;
        }
    }
    let ok = debits == credits && pending_d == pending_c;
    println!();
    println!(
        "conservation over {count} accounts of ledger {LEDGER}: debits {debits} {} credits {credits}, pending {pending_d} {} {pending_c} -> {}",
        if debits == credits { "=" } else { "!=" },
        if pending_d == pending_c { "=" } else { "!=" },
        if ok { "money neither created nor lost" } else { "VIOLATED" }
    );
    if ok {
        Ok(())
    } else {
        Err("conservation check failed".into())
    }
}
