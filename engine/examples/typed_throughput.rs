//! Rough single-thread throughput of the typed path (no SBE): `cargo run --release -p engine
//! --example typed_throughput -- ACCOUNTS`. The real measurement is `bench engine`.
use engine::{account_flags, Command, Engine, EngineConfig, EntryMeta, TransferSpec};

fn main() {
    let accounts: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let total: usize = 20_000_000;
    let batch = 256;
    let mut e = Engine::new(EngineConfig {
        accounts_max: accounts as u32 + 1,
        ..EngineConfig::default()
    })
    .unwrap();
    let mut pos = 0;
    let meta = |pos: &mut u64| {
        *pos += 1;
        EntryMeta {
            position: *pos,
            timestamp_ns: *pos,
            session_id: 0,
            client_seq: 0,
        }
    };
    let m = meta(&mut pos);
    e.apply_command(
        &m,
        &Command::CreateAccount {
            id: u64::MAX,
            ledger: 1,
            flags: account_flags::EXTERNAL,
            code: 0,
        },
    );
    for id in 1..=accounts {
        let m = meta(&mut pos);
        e.apply_command(
            &m,
            &Command::CreateAccount {
                id,
                ledger: 1,
                flags: account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                code: 0,
            },
        );
        let m = meta(&mut pos);
        e.apply_command(
            &m,
            &Command::Deposit {
                transfer_id: u128::from(id) << 64,
                account_id: id,
                amount: 1 << 40,
            },
        );
    }
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let specs: Vec<TransferSpec> = (0..total)
        .map(|i| {
            let d = rnd() % accounts + 1;
            let mut c = rnd() % accounts + 1;
            if c == d {
                c = d % accounts + 1;
            }
            let fail = rnd() % 10 == 0;
            TransferSpec {
                id: i as u128 + 1,
                debit_account_id: d,
                credit_account_id: c,
                amount: if fail { 1 << 50 } else { 1 },
                ledger: 1,
                flags: 0,
                code: 0,
                timeout_s: 0,
            }
        })
        .collect();
    let t0 = std::time::Instant::now();
    let mut ok = 0usize;
    for chunk in specs.chunks(batch) {
        let m = meta(&mut pos);
        let o = e.apply_command(
            &m,
            &Command::Transfers {
                flags: 0,
                transfers: chunk,
            },
        );
        ok += o
            .results
            .iter()
            .filter(|r| **r == engine::ResultCode::Ok)
            .count();
    }
    let dt = t0.elapsed();
    println!(
        "{accounts} accounts: {:.2} M transfers/s, ok {ok}",
        total as f64 / dt.as_secs_f64() / 1e6
    );
}
