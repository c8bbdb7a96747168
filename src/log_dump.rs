//! `tally log dump`: the journal as JSON lines, decoded by the schema-driven decoder.
//!
//! One line per entry: `{"position", "timestamp_ns", "session_id", "client_seq", "command"}`
//! where `command` is the SBE message as `codec-gen decode` prints it (or
//! `{"undecodable": HEX, "error": …}` for bytes that are not a valid message: the log keeps
//! whatever was sequenced, and the engine answered it `invalid_command`). Takes no lock: safe on
//! a live node's folder, where it stops at the last complete batch.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Value};

#[derive(Args)]
pub struct DumpArgs {
    /// The node's data folder (the one given to `tally node --data`).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// First position to print (positions are command indexes from 1).
    #[arg(long, value_name = "POS", default_value_t = 1)]
    from: u64,
    /// Print at most this many entries.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

pub fn run(args: DumpArgs) -> ExitCode {
    match dump(&args, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally log dump: {e}");
            ExitCode::from(2)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dump(args: &DumpArgs, out: &mut impl Write) -> Result<(), String> {
    let dir = args.data.join("journal");
    if !dir.is_dir() {
        return Err(format!(
            "{} has no journal/ folder: give the data folder of a node (tally node --data DIR)",
            args.data.display()
        ));
    }
    let schema =
        codec_gen::parse(schemas::LEDGER_XML).map_err(|e| format!("embedded schema: {e}"))?;
    let mut reader = journal::JournalReader::open(&dir).map_err(|e| e.to_string())?;
    reader.seek(args.from.max(1)).map_err(|e| e.to_string())?;
    let mut printed = 0u64;
    let limit = args.limit.unwrap_or(u64::MAX);
    while printed < limit {
        let Some(batch) = reader.next_batch().map_err(|e| e.to_string())? else {
            break;
        };
        for entry in batch.entries_from(args.from.max(1)) {
            if printed >= limit {
                break;
            }
            let command: Value = match codec_gen::json::decode_message(&schema, entry.command, 0) {
                Ok((v, _)) => v,
                Err(e) => json!({ "undecodable": hex(entry.command), "error": e.to_string() }),
            };
            let line = json!({
                "position": entry.position,
                "timestamp_ns": entry.timestamp_ns,
                "session_id": entry.session_id,
                "client_seq": entry.client_seq,
                "command": command,
            });
            if writeln!(out, "{line}").is_err() {
                return Ok(()); // stdout closed (e.g. piped into head)
            }
            printed += 1;
        }
    }
    Ok(())
}
