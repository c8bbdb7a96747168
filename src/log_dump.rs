//! `tally log dump`: the journal as JSON lines, decoded by the schema-driven decoder.
//!
//! One line per entry: `{"position", "timestamp_ns", "session_id", "client_seq", "command"}`
//! where `command` is the SBE message as `codec-gen decode` prints it (or
//! `{"undecodable": HEX, "error": …}` for bytes that are not a valid message: the log keeps
//! whatever was sequenced, and the engine answered it `invalid_command`). Takes no lock: safe on
//! a live node's folder, where it stops at the last complete batch. On a stopped node's folder,
//! the end is checked as the node's next start would check it: a torn last batch (never
//! acknowledged) is a warning, damage with valid batches after it exits 1 naming the segment
//! and offset, so a dump that is not the whole log never looks like one.

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
        Ok(Ended::Complete) => ExitCode::SUCCESS,
        Ok(Ended::Damaged(why)) => {
            eprintln!("tally log dump: {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("tally log dump: {e}");
            ExitCode::from(2)
        }
    }
}

/// How a dump ended.
enum Ended {
    /// At the limit, or at the end of the log.
    Complete,
    /// At damage with valid batches after it: the entries printed are not the whole log.
    Damaged(String),
}

/// Whether a node holds the journal's lock (it is running on this folder).
fn node_running(dir: &std::path::Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(journal::LOCK_FILE_NAME)) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dump(args: &DumpArgs, out: &mut impl Write) -> Result<Ended, String> {
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
                return Ok(Ended::Complete); // stdout closed (e.g. piped into head)
            }
            printed += 1;
        }
    }
    if printed >= limit || node_running(&dir) {
        return Ok(Ended::Complete);
    }
    // The reader stops at the first batch that is not valid: the end of the log, a torn
    // tail, or damage with valid batches after it. On a stopped node's folder, tell them
    // apart as the node's next start would.
    match journal::verify(&dir) {
        Ok(journal::Tail::Clean) => Ok(Ended::Complete),
        Ok(journal::Tail::Truncated {
            segment,
            offset,
            bytes_dropped,
            reason,
        }) => {
            eprintln!(
                "tally log dump: the journal ends with a torn batch in {} at offset {offset} \
                 ({bytes_dropped} bytes: {reason}); it was never acknowledged and the node \
                 drops it at its next start",
                segment.display()
            );
            Ok(Ended::Complete)
        }
        Err(e) => Ok(Ended::Damaged(format!(
            "stopped after {printed} entries: the journal is damaged before its end, so the \
             entries after the damage were not printed ({e})"
        ))),
    }
}
