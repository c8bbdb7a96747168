//! The `tally` binary: one entry point for every role.
//!
//! Exit codes: 0 success; 1 a business rejection (`tally client`) or a failure at run time;
//! 2 usage, configuration, connection or timeout errors — with a message saying what to do.

mod cli_client;
mod config;
mod demo;
mod log_dump;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// tally: a sequenced, journaled, replicated ledger.
#[derive(Parser)]
#[command(name = "tally", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the leader node: UDP ingress -> sequencer -> journal -> engine -> durable replies.
    Node(NodeArgs),
    /// Read the journal.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Talk to a node: commands, queries, status (`tally client --help`).
    Client(cli_client::ClientArgs),
    /// Run an embedded leader on loopback with a short workload and print the results.
    Demo(demo::DemoArgs),
}

#[derive(Args)]
struct NodeArgs {
    /// TOML config file; every key and its default is in tally.example.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data folder (journal/ and snapshots/). Default: tally-data.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// UDP address clients send to. Default: 127.0.0.1:7400.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Multicast log channel for replicas (replicas are a later issue; setting it is refused).
    #[arg(long, value_name = "GROUP:PORT")]
    multicast: Option<String>,
    /// Interface for the multicast channel. Default: 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    interface: Option<String>,
    /// Idle strategy of the sequencer and engine threads: busy-spin, yield or backoff (default).
    #[arg(long, value_name = "STRATEGY")]
    idle: Option<String>,
    /// Pin the sequencer and engine threads to these cores, e.g. `--pin 0,1`.
    #[arg(long, value_name = "SEQ,ENGINE")]
    pin: Option<String>,
    /// Print the start-up report and the final status as JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print journal entries as JSON lines (works on a stopped node's folder, and read-only on a
    /// live one).
    Dump(log_dump::DumpArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Node(_)) {
        // Like other Unix tools, a command whose reader goes away (`tally log dump | head`)
        // ends quietly instead of failing on its next line. The node keeps Rust's default
        // (SIGPIPE ignored) and never fails on its own output: see `say`.
        // SAFETY: restoring a signal's default disposition at start-up, before any thread.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Node(args) => run_node(args),
        Command::Log {
            command: LogCommand::Dump(args),
        } => log_dump::run(args),
        Command::Client(args) => cli_client::run(args),
        Command::Demo(args) => demo::run(args),
    }
}

/// A line on the node's standard output. A node must not fail because whoever read its
/// output went away (a closed pipe): the line is then lost, nothing else.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn usage_error(message: String) -> ExitCode {
    eprintln!("tally: {message}");
    ExitCode::from(2)
}

fn run_node(args: NodeArgs) -> ExitCode {
    let mut file = match &args.config {
        Some(path) => match config::load(path) {
            Ok(f) => f,
            Err(e) => return usage_error(e),
        },
        None => config::FileConfig::default(),
    };
    if let Some(d) = args.data {
        file.node.data = d;
    }
    if let Some(l) = args.listen {
        file.node.listen = l;
    }
    if let Some(m) = args.multicast {
        file.replication.multicast = m;
    }
    if let Some(i) = args.interface {
        file.replication.interface = i;
    }
    if let Some(i) = args.idle {
        file.threads.idle = i;
    }
    if let Some(pin) = args.pin {
        let cores: Vec<Option<usize>> = pin.split(',').map(|c| c.trim().parse().ok()).collect();
        match cores.as_slice() {
            [Some(s), Some(e)] => {
                file.threads.pin_sequencer = Some(*s);
                file.threads.pin_engine = Some(*e);
            }
            _ => {
                return usage_error(format!(
                    "--pin '{pin}': expected two core numbers, e.g. --pin 0,1"
                ))
            }
        }
    }
    let node_config = match config::node_config(file) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let data = node_config.pipeline.data_dir.clone();
    let (node, report) = match sequencer::node::Node::start(node_config) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("tally node: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("tally node: cannot handle signal {signal}: {e}");
            return ExitCode::from(1);
        }
    }
    let started = serde_json::json!({
        "event": "started",
        "listen": node.local_addr().to_string(),
        "data": data.display().to_string(),
        "position": report.position,
        "replayed": report.replayed,
        "snapshot": report.snapshot.used.as_ref().map(|(p, _)| *p),
        "snapshots_refused": report.snapshot.refused.iter().map(|(p, why)| format!("{}: {why}", p.display())).collect::<Vec<_>>(),
        "journal_tail": format!("{:?}", report.journal.tail),
        "direct_io": format!("{:?}", report.journal.direct_io),
    });
    if args.json {
        say(format_args!("{started}"));
    } else {
        say(format_args!(
            "tally node listening on {} (data {}, position {}, replayed {} commands{})",
            node.local_addr(),
            data.display(),
            report.position,
            report.replayed,
            report
                .snapshot
                .used
                .as_ref()
                .map(|(p, _)| format!(" after snapshot {p}"))
                .unwrap_or_default()
        ));
        for (path, why) in &report.snapshot.refused {
            eprintln!(
                "warning: snapshot refused and set aside as {}: {why}",
                path.display()
            );
        }
        if let journal::Tail::Truncated {
            segment,
            offset,
            bytes_dropped,
            reason,
        } = &report.journal.tail
        {
            eprintln!(
                "warning: torn journal tail in {} at offset {offset}: {bytes_dropped} bytes dropped ({reason})",
                segment.display()
            );
        }
    }
    while !stop.load(Ordering::Acquire) {
        if let Some(fatal) = node.status().fatal {
            eprintln!("tally node: stopping: {fatal}");
            node.shutdown();
            return ExitCode::from(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = node.shutdown();
    let done = serde_json::json!({
        "event": "stopped",
        "position": status.applied_position,
        "durable_position": status.durable_position,
        "state_hash": format!("{:016x}", status.state_hash),
    });
    if args.json {
        say(format_args!("{done}"));
    } else {
        say(format_args!(
            "tally node stopped at position {} (durable {}, state hash {:016x})",
            status.applied_position, status.durable_position, status.state_hash
        ));
    }
    match status.fatal {
        Some(f) => {
            eprintln!("tally node: {f}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    }
}
