//! `tally node` configuration: a TOML file (`--config FILE`) whose every key is optional and
//! documented with its default in `tally.example.toml`, overridden by command-line flags.
//!
//! Unknown keys stop start-up with a message naming them; values are checked once, here and
//! by each crate's own `validate`, and errors name the key and the value.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub node: NodeSection,
    pub replication: ReplicationSection,
    pub threads: ThreadsSection,
    pub engine: EngineSection,
    pub journal: JournalSection,
    pub pipeline: PipelineSection,
    pub snapshot: SnapshotSection,
    pub transport: TransportSection,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    pub data: PathBuf,
    pub listen: String,
    pub name: String,
    pub sessions_max: usize,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            data: PathBuf::from("tally-data"),
            listen: sequencer::node::LISTEN_DEFAULT.into(),
            name: "tally".into(),
            sessions_max: 1_024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSection {
    pub multicast: String,
    pub interface: String,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            multicast: String::new(),
            interface: "127.0.0.1".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThreadsSection {
    pub idle: String,
    pub pin_sequencer: Option<usize>,
    pub pin_engine: Option<usize>,
}

impl Default for ThreadsSection {
    fn default() -> Self {
        ThreadsSection {
            idle: "backoff".into(),
            pin_sequencer: None,
            pin_engine: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    pub accounts_max: u32,
    pub transfers_retained_max: u32,
    pub pending_max: u32,
    pub sessions_max: u32,
    pub ledgers_max: u32,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = engine::EngineConfig::default();
        EngineSection {
            accounts_max: d.accounts_max,
            transfers_retained_max: d.transfers_retained_max,
            pending_max: d.pending_max,
            sessions_max: d.sessions_max,
            ledgers_max: d.ledgers_max,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalSection {
    pub segment_bytes: u64,
    pub direct_io: String,
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            segment_bytes: journal::SEGMENT_SIZE_DEFAULT,
            direct_io: "required".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSection {
    pub batches_in_flight_max: usize,
    pub reply_ring_bytes: usize,
    pub query_ring_bytes: usize,
    pub journal_on_sequencer: bool,
}

impl Default for PipelineSection {
    fn default() -> Self {
        let d = sequencer::PipelineConfig::new(".");
        PipelineSection {
            batches_in_flight_max: d.batches_in_flight_max,
            reply_ring_bytes: d.reply_ring_bytes,
            query_ring_bytes: d.query_ring_bytes,
            journal_on_sequencer: d.journal_on_sequencer,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSection {
    pub interval_commands: u64,
    pub kept: usize,
    pub retain_journal: bool,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        let d = sequencer::PipelineConfig::new(".");
        SnapshotSection {
            interval_commands: d.snapshot_interval_commands,
            kept: d.snapshots_kept,
            retain_journal: d.retain_journal,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSection {
    pub mtu: usize,
    pub term_length: usize,
}

impl Default for TransportSection {
    fn default() -> Self {
        let d = transport::Config::default();
        TransportSection {
            mtu: d.mtu,
            term_length: d.term_length,
        }
    }
}

/// Reads and parses a config file.
pub fn load(path: &std::path::Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
}

/// Parses an idle strategy name.
pub fn idle_kind(key: &str, value: &str) -> Result<transport::IdleKind, String> {
    match value {
        "busy-spin" | "busy_spin" | "spin" => Ok(transport::IdleKind::BusySpin),
        "yield" => Ok(transport::IdleKind::Yield),
        "backoff" | "back-off" => Ok(sequencer::pipeline::IDLE_DEFAULT),
        other => Err(format!(
            "{key} = '{other}': must be one of busy-spin, yield, backoff"
        )),
    }
}

/// Parses `ADDR:PORT` (IPv4).
pub fn socket_v4(key: &str, value: &str) -> Result<SocketAddrV4, String> {
    value.parse().map_err(|_| {
        format!("{key} = '{value}': expected an IPv4 ADDR:PORT such as 127.0.0.1:7400")
    })
}

/// Builds the node's configuration from the file and flag overrides.
pub fn node_config(file: FileConfig) -> Result<sequencer::node::NodeConfig, String> {
    let mut n = sequencer::node::NodeConfig::new(&file.node.data);
    n.listen = socket_v4("node.listen", &file.node.listen)?;
    n.name = file.node.name;
    if file.node.sessions_max == 0 {
        return Err("node.sessions_max = 0: must be at least 1".into());
    }
    n.sessions_max = file.node.sessions_max;
    if !file.replication.multicast.is_empty() {
        let group = socket_v4("replication.multicast", &file.replication.multicast)?;
        if !group.ip().is_multicast() {
            return Err(format!(
                "replication.multicast = '{group}': not a multicast group (224.0.0.0/4)"
            ));
        }
        let _: Ipv4Addr = file.replication.interface.parse().map_err(|_| {
            format!(
                "replication.interface = '{}': expected an IPv4 address",
                file.replication.interface
            )
        })?;
        return Err(
            "replication.multicast is set, but replicas are not built yet (a later issue): unset it to run a single node"
                .into(),
        );
    }
    let p = &mut n.pipeline;
    p.idle = idle_kind("threads.idle", &file.threads.idle)?;
    p.pin_cores = match (file.threads.pin_sequencer, file.threads.pin_engine) {
        (None, None) => None,
        (Some(s), Some(e)) => {
            // A core this process may not run on would be skipped silently by the pinning:
            // refuse it here instead (when the allowed cores can be read at all).
            if let Some(ids) = core_affinity::get_core_ids() {
                let allowed: Vec<usize> = ids.iter().map(|c| c.id).collect();
                for (key, core) in [("threads.pin_sequencer", s), ("threads.pin_engine", e)] {
                    if !allowed.contains(&core) {
                        return Err(format!(
                            "{key} = {core} (or --pin): no such core for this process (it may use {allowed:?})"
                        ));
                    }
                }
            }
            Some((s, e))
        }
        _ => {
            return Err("threads.pin_sequencer and threads.pin_engine: set both or neither".into())
        }
    };
    p.engine.accounts_max = file.engine.accounts_max;
    p.engine.transfers_retained_max = file.engine.transfers_retained_max;
    p.engine.pending_max = file.engine.pending_max;
    p.engine.sessions_max = file.engine.sessions_max;
    p.engine.ledgers_max = file.engine.ledgers_max;
    p.journal.segment_size = file.journal.segment_bytes;
    p.journal.direct_io = match file.journal.direct_io.as_str() {
        "required" => journal::DirectIo::Required,
        "optional" => journal::DirectIo::Optional,
        "disabled" => journal::DirectIo::Disabled,
        other => {
            return Err(format!(
                "journal.direct_io = '{other}': must be required, optional or disabled"
            ))
        }
    };
    p.batches_in_flight_max = file.pipeline.batches_in_flight_max;
    p.reply_ring_bytes = file.pipeline.reply_ring_bytes;
    p.query_ring_bytes = file.pipeline.query_ring_bytes;
    p.journal_on_sequencer = file.pipeline.journal_on_sequencer;
    p.snapshot_interval_commands = file.snapshot.interval_commands;
    if file.snapshot.kept == 0 {
        return Err("snapshot.kept = 0: must be at least 1".into());
    }
    p.snapshots_kept = file.snapshot.kept;
    p.retain_journal = file.snapshot.retain_journal;
    n.transport.mtu = file.transport.mtu;
    n.transport.term_length = file.transport.term_length;
    n.transport.image_term_length_max =
        transport::config::IMAGE_TERM_LENGTH_MAX_DEFAULT.max(file.transport.term_length);
    n.transport.message_length_max = file.transport.term_length / 4;
    n.transport.publication_window = file.transport.term_length / 2;
    n.transport.receiver_window = file.transport.term_length / 2;
    n.transport
        .validate()
        .map_err(|e| format!("transport: {e}"))?;
    n.pipeline
        .journal
        .validate()
        .map_err(|e| format!("journal.segment_bytes: {e}"))?;
    n.pipeline.validate()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_equals_the_defaults() {
        let example: FileConfig = toml::from_str(include_str!("../tally.example.toml")).unwrap();
        let from_example = node_config(example).unwrap();
        let from_defaults = node_config(FileConfig::default()).unwrap();
        assert_eq!(format!("{from_example:?}"), format!("{from_defaults:?}"));
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = toml::from_str::<FileConfig>("[engine]\naccount_max = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("account_max"), "{err}");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let mut f = FileConfig::default();
        f.threads.idle = "sleepy".into();
        assert!(node_config(f).unwrap_err().contains("threads.idle"));
        let mut f = FileConfig::default();
        f.node.listen = "localhost".into();
        assert!(node_config(f).unwrap_err().contains("node.listen"));
        let mut f = FileConfig::default();
        f.engine.accounts_max = 0;
        assert!(node_config(f).unwrap_err().contains("accounts_max"));
    }
}
