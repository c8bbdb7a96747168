//! Times `Engine::snapshot` and `Engine::restore_from_bytes` of a large state (default: 1M
//! accounts, 10M retained transfers), three times each: `cargo run --release -p engine
//! --example restore_timing -- ACCOUNTS RETAINED`. The real measurement is `bench engine`.
use engine::{account_flags, Command, Engine, EngineConfig, EntryMeta, TransferSpec};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().ok());
    let accounts = args.next().flatten().unwrap_or(1_000_000);
    let retained = args.next().flatten().unwrap_or(10_000_000);
    let config = EngineConfig {
        accounts_max: accounts as u32 + 1,
        transfers_retained_max: retained as u32,
        ..EngineConfig::default()
    };
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
        let m = meta();
        e.apply_command(
            &m,
            &Command::Transfers {
                flags: 0,
                transfers: &specs,
            },
        );
    }
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut bytes = Vec::new();
        e.snapshot(&mut bytes).unwrap();
        let write_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let r = Engine::restore_from_bytes(config, &bytes).unwrap();
        let restore_s = t0.elapsed().as_secs_f64();
        assert_eq!(r.state_hash(), e.state_hash());
        println!(
            "snapshot {} MB: encode {:.0} ms, restore {:.0} ms",
            bytes.len() >> 20,
            write_s * 1e3,
            restore_s * 1e3
        );
    }
}
