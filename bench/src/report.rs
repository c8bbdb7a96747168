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
/// Idle strategy flags shared by the pipeline and e2e scenarios: `--idle KIND`, `--spins N`,
/// `--yields N`, `--park-max-us N`. Defaults: the leader's own default back-off
/// ([`sequencer::pipeline::IDLE_DEFAULT`]).
#[derive(Clone, Debug)]
pub struct IdleFlags {
    pub name: String,
    pub spins: u32,
    pub yields: u32,
    pub park_max_us: u64,
}

/// Help text of [`IdleFlags`].
pub const IDLE_USAGE: &str =
    "  --idle KIND      idle strategy of every thread in the run: backoff (default), yield or
                   busy-spin (never more spinning threads than cores)
  --spins N        back-off: spins before parking (default 10)
  --yields N       back-off: yields before parking (default 0)
  --park-max-us N  back-off: longest park, in microseconds (default 50)";

impl Default for IdleFlags {
    fn default() -> Self {
        match sequencer::pipeline::IDLE_DEFAULT {
            transport::IdleKind::BackOff {
                spins_max,
                yields_max,
                park_max_ns,
                ..
            } => IdleFlags {
                name: "backoff".into(),
                spins: spins_max,
                yields: yields_max,
                park_max_us: park_max_ns / 1_000,
            },
            _ => IdleFlags {
                name: "backoff".into(),
                spins: 10,
                yields: 0,
                park_max_us: 50,
            },
        }
    }
}

impl IdleFlags {
    /// Takes `flag` (with its `value`) if it is one of the idle flags; `Ok(false)` if not.
    pub fn take(
        &mut self,
        flag: &str,
        value: impl FnOnce() -> Result<String, String>,
    ) -> Result<bool, String> {
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: '{v}' is not a number"))
        };
        match flag {
            "--idle" => self.name = value()?,
            "--spins" => self.spins = number(value()?)?.min(u64::from(u32::MAX)) as u32,
            "--yields" => self.yields = number(value()?)?.min(u64::from(u32::MAX)) as u32,
            "--park-max-us" => self.park_max_us = number(value()?)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The strategy these flags name.
    pub fn kind(&self) -> Result<transport::IdleKind, String> {
        match self.name.as_str() {
            "backoff" => Ok(transport::IdleKind::BackOff {
                spins_max: self.spins,
                yields_max: self.yields,
                park_min_ns: transport::idle::BACKOFF_PARK_MIN_NS_DEFAULT,
                park_max_ns: self.park_max_us.max(1) * 1_000,
            }),
            "yield" => Ok(transport::IdleKind::Yield),
            "busy-spin" => Ok(transport::IdleKind::BusySpin),
            other => Err(format!(
                "--idle '{other}': must be backoff, yield or busy-spin"
            )),
        }
    }

    /// The flags as command-line arguments (to hand to a child process or print).
    pub fn args(&self) -> Vec<String> {
        vec![
            "--idle".into(),
            self.name.clone(),
            "--spins".into(),
            self.spins.to_string(),
            "--yields".into(),
            self.yields.to_string(),
            "--park-max-us".into(),
            self.park_max_us.to_string(),
        ]
    }
}

/// Bytes of each write of the disk probe: one 4 KiB block, what a group commit holds at an
/// offered 100,000 commands/s (a few commands per `fdatasync`), so the latency targets are
/// judged against the cost of the writes the run actually makes.
pub const DISK_PROBE_WRITE_BYTES: usize = 4096;
/// Write+sync samples of the disk probe: enough for its 99th percentile to rest on ten.
pub const DISK_PROBE_SYNCS: usize = 1000;

/// The disk's own durable-write cost on the run's folder (a `probe` folder under `dir`,
/// removed afterwards), measured before the run: `disk_sync_p50_us`, `disk_sync_p99_us`,
/// `disk_write_mb_per_s`, `disk_probe_write_bytes`, `disk_probe_syncs`.
pub fn disk_probe(dir: &std::path::Path) -> Result<Value, String> {
    let probe_dir = dir.join("probe");
    std::fs::create_dir_all(&probe_dir)
        .map_err(|e| format!("create {}: {e}", probe_dir.display()))?;
    let probe = journal::disk_probe(&probe_dir, DISK_PROBE_WRITE_BYTES, DISK_PROBE_SYNCS)
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&probe_dir);
    let probe = probe?;
    Ok(json!({
        "disk_sync_p50_us": probe.sync_p50_us,
        "disk_sync_p99_us": probe.sync_p99_us,
        "disk_write_mb_per_s": probe.write_mb_per_s,
        "disk_probe_write_bytes": DISK_PROBE_WRITE_BYTES,
        "disk_probe_syncs": DISK_PROBE_SYNCS,
    }))
}

/// Adds every field of `extra` (an object) to `v` (an object).
pub fn merge(v: &mut Value, extra: &Value) {
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            v.insert(k.clone(), x.clone());
        }
    }
}

/// What the disk alone allows an open-loop run: the latencies an ideal group commit would give
/// commands offered every `1 / rate_per_s` seconds for `duration_s` seconds, on syncs timed on
/// this disk for as long as the run (a `model` folder under `dir`, removed afterwards).
///
/// The model is a journal with no CPU cost at all: one write + `fdatasync` at a time (the
/// disk serves one flush at a time), each started the moment the previous one ends if a
/// command is waiting (or when the next command arrives), covering every command that arrived
/// before it started, and taking the next measured duration, in the order measured (so a stall
/// lasts as long as it did and delays every command that arrived during it). A command's
/// latency is from its arrival to the end of the sync that covers it. Because commands arrive
/// uniformly in time, a stall weighs by its length: a 3 ms sync delays 300 commands at
/// 100,000/s, while it is one sample in the probe's `disk_sync_p99_us`. Fields:
/// `disk_model_p50_us`, `disk_model_p99_us`, `disk_model_p999_us`, `disk_model_max_us`,
/// `disk_model_syncs`, `disk_model_sync_max_us`. A run's own latency cannot be below these
/// (up to the difference between two stretches of the same disk's time).
pub fn disk_model(
    dir: &std::path::Path,
    rate_per_s: u64,
    duration_s: u64,
) -> Result<Value, String> {
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir)
        .map_err(|e| format!("create {}: {e}", model_dir.display()))?;
    let probe = journal::disk_probe_for(
        &model_dir,
        DISK_PROBE_WRITE_BYTES,
        std::time::Duration::from_secs(duration_s),
    )
    .map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&model_dir);
    let probe = probe?;
    let hist = ideal_group_commit(&probe.samples_ns, rate_per_s, rate_per_s * duration_s);
    let lat = latency_us(&hist);
    Ok(json!({
        "disk_model_p50_us": lat["p50_us"],
        "disk_model_p99_us": lat["p99_us"],
        "disk_model_p999_us": lat["p999_us"],
        "disk_model_max_us": lat["max_us"],
        "disk_model_syncs": probe.samples_ns.len(),
        "disk_model_sync_max_us": probe.sync_max_us,
    }))
}

/// Latencies (ns) of `commands` offered every `1 / rate_per_s` s to an ideal group commit whose
/// syncs take `syncs_ns` in turn (cycled if the commands outlast them). See [`disk_model`].
fn ideal_group_commit(syncs_ns: &[u64], rate_per_s: u64, commands: u64) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("bounds");
    if syncs_ns.is_empty() || rate_per_s == 0 {
        return hist;
    }
    let arrival = |k: u64| (u128::from(k) * 1_000_000_000 / u128::from(rate_per_s)) as u64;
    let (mut free_at, mut next, mut sync) = (0u64, 0u64, 0usize);
    while next < commands {
        let start = free_at.max(arrival(next));
        let end = start + syncs_ns[sync % syncs_ns.len()];
        while next < commands && arrival(next) <= start {
            let _ = hist.record((end - arrival(next)).max(1));
            next += 1;
        }
        free_at = end;
        sync += 1;
    }
    hist
}

/// Adds the latency targets of an open-loop run to `v` (which holds the run's percentiles
/// under `keys` = (p99, p99.9) and the probe's `disk_sync_p99_us`): `p99_limit_us` =
/// 2 × `disk_sync_p99_us` + `extra_us.0`, `p999_limit_us` = 3 × `disk_sync_p99_us` +
/// `extra_us.1`, and whether the run (`p99_within_limit`, `p999_within_limit`) and the disk
/// model (when present) are within them.
pub fn latency_limits(v: &mut Value, keys: (&str, &str), extra_us: (f64, f64)) {
    let get = |k: &str| v.get(k).and_then(Value::as_f64);
    let Some(disk_p99) = get("disk_sync_p99_us") else {
        return;
    };
    let p99_limit = 2.0 * disk_p99 + extra_us.0;
    let p999_limit = 3.0 * disk_p99 + extra_us.1;
    let within = |k: &str, limit: f64| get(k).map(|x| x <= limit);
    let extra = json!({
        "p99_limit_us": p99_limit,
        "p999_limit_us": p999_limit,
        "p99_within_limit": within(keys.0, p99_limit),
        "p999_within_limit": within(keys.1, p999_limit),
        "disk_model_p99_within_limit": within("disk_model_p99_us", p99_limit),
        "disk_model_p999_within_limit": within("disk_model_p999_us", p999_limit),
    });
    merge(v, &extra);
}

#[cfg(test)]
mod tests {
    use super::ideal_group_commit;

    #[test]
    fn an_ideal_group_commit_charges_a_stall_to_every_command_that_arrives_during_it() {
        // 100,000 commands/s (one every 10 us); syncs of 50 us, then one of 3 ms, then 50 us.
        let mut syncs = vec![50_000u64; 100];
        syncs[10] = 3_000_000;
        let hist = ideal_group_commit(&syncs, 100_000, 2_000);
        // The stall's sync covers the commands that arrived during the sync before it, and
        // every command arriving during the stall waits for the rest of it plus one more sync.
        assert!(hist.max() >= 3_000_000, "max {}", hist.max());
        assert!(
            hist.count_between(1_000_000, u64::MAX) >= 150,
            "a stall weighs by its length"
        );
        // Without the stall no command waits more than two syncs.
        let calm = ideal_group_commit(&[50_000], 100_000, 2_000);
        assert!(calm.max() <= 100_000 + 100, "max {}", calm.max());
        assert_eq!(calm.len(), 2_000);
    }
}
