//! Times `Engine::snapshot` and `Engine::restore_from_bytes` of a large state (default: 1M
//! accounts, 10M retained transfers), three times each: `cargo run --release -p engine
//! --example restore_timing -- ACCOUNTS RETAINED`. The real measurement is `bench engine`.
#[path = "restore_file.rs"]
#[allow(dead_code)]
mod restore_file;
use engine::{Engine, EngineConfig};
use restore_file::build;
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
    let e = build(config, accounts, retained);
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
