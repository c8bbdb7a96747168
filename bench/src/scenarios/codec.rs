//! Scenario `codec`: encode and decode rates of a `Transfers` command (one transfer, 66 bytes
//! with header) through the generated SBE codecs of `schemas::ledger`, on one core.
//!
//! Each iteration encodes (or decodes) one whole command: header, block, group dimension and
//! every field of the transfer. Inputs vary per iteration and every result goes through
//! `std::hint::black_box`, so the compiler can neither hoist the work out of the loop nor drop
//! it. A `harness` loop (the same counter and `black_box` calls, no codec) measures the loop's
//! own cost, reported beside the figures (not subtracted).
//!
//! `cargo run --release -p bench -- codec [--seconds S] [--core N] [--json]`

use schemas::ledger::{BatchFlags, TransferFlags, TransfersDecoder, TransfersEncoder};
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Default measuring time per phase, seconds.
const SECONDS_DEFAULT: f64 = 1.0;
/// Iterations between clock reads: large enough that reading the clock costs nothing.
const BATCH_ITERATIONS: u64 = 1 << 16;
/// Buffer for one command; the command needs 66 bytes.
const BUFFER_BYTES: usize = 128;

fn encode(buf: &mut [u8], i: u64) -> usize {
    let Ok(mut e) = TransfersEncoder::wrap_with_header(buf) else {
        return 0;
    };
    e.set_flags(BatchFlags::empty().with_atomic(i & 1 == 1));
    if let Ok(mut g) = e.transfers() {
        if let Ok(mut t) = g.next_entry() {
            t.id_mut().set_lo(i).set_hi(i >> 32);
            t.set_debit_account_id(i + 1)
                .set_credit_account_id(i + 2)
                .set_amount(i.wrapping_mul(7))
                .set_ledger(1)
                .set_flags(TransferFlags::empty())
                .set_code(i as u16)
                .set_timeout_s(0);
        }
    }
    e.finish().unwrap_or(0)
}

/// Sums every field of every transfer (so that nothing can be skipped).
fn decode(buf: &[u8]) -> u64 {
    let Ok(d) = TransfersDecoder::wrap_with_header(buf) else {
        return 0;
    };
    let mut sum = u64::from(d.flags().raw());
    if let Ok(transfers) = d.transfers() {
        for t in transfers {
            let id = t.id();
            sum = sum
                .wrapping_add(id.lo())
                .wrapping_add(id.hi())
                .wrapping_add(t.debit_account_id())
                .wrapping_add(t.credit_account_id())
                .wrapping_add(t.amount())
                .wrapping_add(u64::from(t.ledger()))
                .wrapping_add(u64::from(t.flags().raw()))
                .wrapping_add(u64::from(t.code()))
                .wrapping_add(u64::from(t.timeout_s()));
        }
    }
    sum
}

/// Runs `step` in batches until `duration` has passed; returns iterations per second.
fn rate(duration: Duration, mut step: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..BATCH_ITERATIONS {
            step(n);
            n += 1;
        }
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return n as f64 / elapsed.as_secs_f64();
        }
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut json_out = false;
    let mut seconds = SECONDS_DEFAULT;
    let mut core: Option<usize> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json_out = true,
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a value")?;
                seconds = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && s.is_finite())
                    .ok_or(format!("--seconds {v}: expected a positive number"))?;
            }
            "--core" => {
                let v = it.next().ok_or("--core needs a value")?;
                core = Some(
                    v.parse()
                        .map_err(|_| format!("--core {v}: expected a core number"))?,
                );
            }
            "--help" | "-h" => {
                println!("bench codec [--seconds S (default {SECONDS_DEFAULT})] [--core N] [--json]\n  encode and decode rates of a Transfers command (1 transfer) on one core");
                return Ok(());
            }
            other => return Err(format!("unknown option {other} (try --help)")),
        }
    }
    let pinned = core.map(crate::report::pin_to);
    let duration = Duration::from_secs_f64(seconds);
    let mut buf = [0u8; BUFFER_BYTES];
    let len = encode(&mut buf, 1);
    if len == 0 || decode(&buf[..len]) == 0 {
        return Err("the Transfers command did not encode and decode".into());
    }

    let harness_per_s = rate(duration, |i| {
        black_box(black_box(&mut buf)[0] as u64 + i);
    });
    let encode_per_s = rate(duration, |i| {
        black_box(encode(black_box(&mut buf), i));
        black_box(&buf);
    });
    // Decode a few distinct commands in turn so the inputs vary.
    let mut inputs = [[0u8; BUFFER_BYTES]; 4];
    for (i, b) in inputs.iter_mut().enumerate() {
        encode(b, i as u64 * 1_000_003);
    }
    let decode_per_s = rate(duration, |i| {
        let b = &inputs[(i & 3) as usize][..len];
        black_box(decode(black_box(b)));
    });

    let v = json!({
        "scenario": "codec",
        "message": "Transfers command with 1 transfer, header included",
        "message_bytes": len,
        "encode_per_s": encode_per_s.round(),
        "decode_per_s": decode_per_s.round(),
        "encode_ns": 1e9 / encode_per_s,
        "decode_ns": 1e9 / decode_per_s,
        "harness_per_s": harness_per_s.round(),
        "target_per_s": 50_000_000,
        "seconds_per_phase": seconds,
        "pinned_core": match (core, pinned) { (Some(c), Some(true)) => json!(c), _ => json!(null) },
        "machine": crate::report::machine(),
        "command": format!("cargo run --release -p bench -- codec --seconds {seconds}{} --json", core.map_or(String::new(), |c| format!(" --core {c}"))),
    });
    crate::report::print(json_out, &v);
    Ok(())
}
