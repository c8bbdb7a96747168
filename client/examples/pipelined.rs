//! Pipelined deposits through one session, with the poll API: keeps up to `--in-flight`
//! requests outstanding and prints the throughput and the client's retry counters.
//!
//! ```text
//! tally node --data /tmp/tally-demo &
//! tally client create-account --id 1 --ledger 1 --flags external
//! tally client create-account --id 10 --ledger 1
//! cargo run --release -p client --example pipelined -- --connect 127.0.0.1:7400 --account 10 --count 100000
//! ```

use std::time::Instant;

use client::{Client, ClientConfig, Request, ResultCode};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a value")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let node = arg(&args, "--connect", "127.0.0.1:7400".parse()?)?;
    let account: u64 = arg(&args, "--account", 10)?;
    let count: u64 = arg(&args, "--count", 10_000)?;
    let in_flight: usize = arg(&args, "--in-flight", 256)?;

    let mut client = Client::connect(ClientConfig {
        in_flight_max: in_flight,
        ..ClientConfig::new(node)
    })?;
    let start = Instant::now();
    let (mut sent, mut done, mut rejected, mut failed) = (0u64, 0u64, 0u64, 0u64);
    while done < count {
        // Start as many as the in-flight window allows; they share datagrams.
        while sent < count {
            let id = client.new_transfer_id();
            let deposit = Request::Deposit {
                id,
                account_id: account,
                amount: 1,
            };
            if client.try_send(&deposit).is_err() {
                break; // back-pressured: poll first
            }
            sent += 1;
        }
        // With the window full, sleep until a reply arrives (at most 1 ms); otherwise just
        // take what has completed and go back to sending.
        let wait = if sent - done >= in_flight as u64 || sent == count {
            std::time::Duration::from_millis(1)
        } else {
            std::time::Duration::ZERO
        };
        done += client.poll_wait(
            |_, result| match result {
                Ok(r) if r.result() == Some(ResultCode::Ok) => {}
                Ok(_) => rejected += 1,
                Err(_) => failed += 1,
            },
            usize::MAX,
            wait,
        ) as u64;
    }
    let elapsed = start.elapsed();
    println!(
        "{count} deposits in {:.3} s: {:.0}/s, {rejected} rejected, {failed} failed, {:?}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        client.stats()
    );
    client.close();
    Ok(())
}
