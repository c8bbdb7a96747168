//! Shared pieces of every bench report: the machine it ran on, memory, latency percentiles.
#![allow(dead_code)] // helpers used by scenarios as they land

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A short description of this machine: CPU model, core count, kernel.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    json!({ "cpu": model, "cores": cores, "kernel": kernel })
}

/// Peak resident set size of this process in bytes (`VmHWM`), or 0 if unknown.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Latency percentiles in microseconds from a histogram recorded in nanoseconds.
pub fn latency_us(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| ns as f64 / 1000.0;
    json!({
        "p50_us": us(h.value_at_quantile(0.50)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "p9999_us": us(h.value_at_quantile(0.9999)),
        "max_us": us(h.max()),
        "samples": h.len(),
    })
}

/// Prints a report: one JSON object when `json`, else `key: value` lines.
pub fn print(json_out: bool, v: &Value) {
    if json_out {
        println!("{v}");
    } else if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            println!("{k:>28}: {val}");
        }
    }
}

/// Pins the calling thread to `core` if the machine has it; returns whether it did. The core
/// is checked against the cores online, not the thread's current affinity mask: a thread
/// spawned by a pinned thread inherits a one-core mask, and looking the core up in it would
/// refuse every other core.
pub fn pin_to(core: usize) -> bool {
    core < cores_online() && core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// Cores online (from /sys; 1 if unknown).
pub fn cores_online() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
                .max()
        })
        .map_or(1, |last| last + 1)
}

/// An idle strategy by name (`backoff`, `yield`, `busy-spin`), back-off parking at most
/// `park_max_us` microseconds.
pub fn idle_kind(name: &str, park_max_us: u64) -> Result<transport::IdleKind, String> {
    match name {
        "backoff" => Ok(transport::IdleKind::BackOff {
            spins_max: transport::idle::BACKOFF_SPINS_DEFAULT,
            yields_max: transport::idle::BACKOFF_YIELDS_DEFAULT,
            park_min_ns: transport::idle::BACKOFF_PARK_MIN_NS_DEFAULT,
            park_max_ns: park_max_us.max(1) * 1_000,
        }),
        "yield" => Ok(transport::IdleKind::Yield),
        "busy-spin" => Ok(transport::IdleKind::BusySpin),
        other => Err(format!(
            "--idle '{other}': must be backoff, yield or busy-spin"
        )),
    }
}
