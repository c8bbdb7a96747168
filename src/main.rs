//! The `tally` binary: one entry point for every role (node, replica, client, demo, log, bench).

use clap::{Parser, Subcommand};

/// tally: a sequenced, journaled, replicated ledger.
#[derive(Parser)]
#[command(name = "tally", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an embedded leader and replicas on loopback with a short workload (the networked
    /// leader is not built yet: for now this says what runs today).
    Demo,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => {
            println!("tally demo: the networked leader is not built yet.");
            println!(
                "What runs today: `cargo run --release -p bench -- --help` lists the bench scenarios."
            );
        }
    }
}
