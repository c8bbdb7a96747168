//! `codec-gen` command line.
//!
//! - `codec-gen generate SCHEMA.xml [-o FILE]`: Rust codecs (stdout unless `-o`).
//! - `codec-gen decode SCHEMA.xml [--hex HEX]`: header-prefixed messages (hex argument, else raw
//!   bytes on stdin) to JSON lines; malformed input prints one error line naming the byte offset
//!   and exits 1.
//! - `codec-gen encode SCHEMA.xml [--hex]`: JSON lines on stdin to message bytes on stdout (as
//!   one hex line per message with `--hex`).
//!
//! Exit codes: 0 success, 1 bad input (schema, bytes or JSON), 2 usage.
#![forbid(unsafe_code)]

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

const USAGE: &str = "usage:\n  codec-gen generate SCHEMA.xml [-o FILE]\n  codec-gen decode SCHEMA.xml [--hex HEX]   (else raw bytes on stdin)\n  codec-gen encode SCHEMA.xml [--hex]       (JSON lines on stdin)";

enum Failure {
    Usage(String),
    Input(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("{e}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Input(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn read_schema(path: &str) -> Result<codec_gen::Schema, Failure> {
    let xml = std::fs::read_to_string(path)
        .map_err(|e| Failure::Input(format!("cannot read {path}: {e}")))?;
    codec_gen::parse(&xml).map_err(|e| Failure::Input(format!("{path}:\n{e}")))
}

fn parse_hex(s: &str) -> Result<Vec<u8>, Failure> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(Failure::Input("--hex: odd number of hex digits".into()));
    }
    digits
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| Failure::Input(format!("--hex: byte {i} is not two hex digits")))
        })
        .collect()
}

fn run(args: &[String]) -> Result<(), Failure> {
    let cmd = args.first().map(String::as_str);
    let schema_path = args.get(1).filter(|a| !a.starts_with('-'));
    let Some(schema_path) = schema_path else {
        return Err(Failure::Usage("missing command or SCHEMA.xml".into()));
    };
    let rest = &args[2..];
    match cmd {
        Some("generate") => {
            let out = match rest {
                [] => None,
                [o, f] if o == "-o" => Some(f),
                _ => return Err(Failure::Usage(format!("unexpected arguments {rest:?}"))),
            };
            let code = codec_gen::generate(&read_schema(schema_path)?);
            match out {
                Some(f) => std::fs::write(f, code)
                    .map_err(|e| Failure::Input(format!("cannot write {f}: {e}"))),
                None => std::io::stdout()
                    .write_all(code.as_bytes())
                    .map_err(|e| Failure::Input(format!("stdout: {e}"))),
            }
        }
        Some("decode") => {
            let schema = read_schema(schema_path)?;
            let bytes = match rest {
                [] => {
                    let mut b = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut b)
                        .map_err(|e| Failure::Input(format!("stdin: {e}")))?;
                    b
                }
                [h, hex] if h == "--hex" => parse_hex(hex)?,
                _ => return Err(Failure::Usage(format!("unexpected arguments {rest:?}"))),
            };
            let (msgs, err) = codec_gen::json::decode_all(&schema, &bytes);
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for m in msgs {
                let _ = writeln!(out, "{}", codec_gen::json::to_line(&schema, &m));
            }
            let _ = out.flush();
            match err {
                Some(e) => Err(Failure::Input(e.to_string())),
                None => Ok(()),
            }
        }
        Some("encode") => {
            let hex = match rest {
                [] => false,
                [h] if h == "--hex" => true,
                _ => return Err(Failure::Usage(format!("unexpected arguments {rest:?}"))),
            };
            let schema = read_schema(schema_path)?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line.map_err(|e| Failure::Input(format!("stdin: {e}")))?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(&line)
                    .map_err(|e| Failure::Input(format!("line {}: not JSON: {e}", i + 1)))?;
                let bytes = codec_gen::json::encode_message(&schema, &v)
                    .map_err(|e| Failure::Input(format!("line {}: {e}", i + 1)))?;
                let r = if hex {
                    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    writeln!(out, "{h}")
                } else {
                    out.write_all(&bytes)
                };
                r.map_err(|e| Failure::Input(format!("stdout: {e}")))?;
            }
            out.flush()
                .map_err(|e| Failure::Input(format!("stdout: {e}")))
        }
        _ => Err(Failure::Usage(format!(
            "unknown command {:?}",
            cmd.unwrap_or("")
        ))),
    }
}
