//! Times `Engine::restore` from a snapshot file (in the page cache), as `bench engine` does,
//! several times: `cargo run --release -p engine --example restore_file -- PATH [ACCOUNTS
//! [RETAINED [RUNS]]]`. When PATH does not exist, a state of ACCOUNTS accounts (default 1M) and
//! RETAINED retained transfers (default 10M) is built and snapshotted there first. For
//! profiling the restore alone; the real measurement is `bench engine`.
use engine::{account_flags, Command, Engine, EngineConfig, EntryMeta, TransferSpec};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = std::path::PathBuf::from(args.next().expect("PATH"));
    let mut num = |default: u64| args.next().and_then(|a| a.parse().ok()).unwrap_or(default);
    let accounts = num(1_000_000);
    let retained = num(10_000_000);
    let runs = num(3);
    let config = EngineConfig {
        accounts_max: accounts as u32 + 1,
        transfers_retained_max: retained as u32,
        ..EngineConfig::default()
    };
    if !path.exists() {
        let e = build(config, accounts, retained);
        let mut w =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
        let n = e.snapshot(&mut w).unwrap();
        drop(w);
        println!("wrote {} MB, state hash {:#x}", n >> 20, e.state_hash());
    }
    for _ in 0..runs {
        let t0 = Instant::now();
        let file = std::fs::File::open(&path).unwrap();
        let r = Engine::restore(config, file).unwrap();
        let restore_s = t0.elapsed().as_secs_f64();
        println!(
            "restore {:.0} ms (state hash {:#x}, {} retained)",
            restore_s * 1e3,
            r.state_hash(),
            r.retained_count()
        );
        drop(r);
    }
}

/// An engine with `accounts` accounts and `retained` transfers among them (also used by the
/// `restore_timing` example).
pub fn build(config: EngineConfig, accounts: u64, retained: u64) -> Engine {
    let mut e = Engine::new(config).unwrap();
    let mut pos = 0;
    let mut meta = || {
        pos += 1;
        EntryMeta {
            position: pos,
            timestamp_ns: pos,
            session_id: 0,
            client_seq: 0,
        }
    };
    let external = Command::CreateAccount {
        id: u64::MAX,
        ledger: 1,
        flags: account_flags::EXTERNAL,
        code: 0,
    };
    e.apply_command(&meta(), &external);
    for id in 1..=accounts {
        let create = Command::CreateAccount {
            id,
            ledger: 1,
            flags: 0,
            code: 0,
        };
        e.apply_command(&meta(), &create);
    }
    let mut specs = vec![TransferSpec::default(); 256];
    let mut next = 1u128;
    let mut x = 0x1234_5678_9abc_def0u64;
    while (next as u64) <= retained {
        for t in specs.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = x % accounts + 1;
            let c = d % accounts + 1;
            *t = TransferSpec {
                id: next,
                debit_account_id: d,
                credit_account_id: c,
                amount: 1,
                ledger: 1,
                ..TransferSpec::default()
            };
            next += 1;
        }
        e.apply_command(
            &meta(),
            &Command::Transfers {
                flags: 0,
                transfers: &specs,
            },
        );
    }
    e
}
