//! The `codec-gen` command line: `generate`, `decode` and `encode`, with the golden messages of
//! `tests/schemas/versioned-v*.xml` (the same bytes as `conformance/tests/golden.rs`).

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_codec-gen");
const V1: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/schemas/versioned-v1.xml"
);
const V2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/schemas/versioned-v2.xml"
);

/// Order{orderId 7, qty 100, fills [{price 1234}], note "hi"} written by version 1.
const ORDER_V1_HEX: &str =
    "0c00050085030100 0700000000000000 64000000 08000100 d204000000000000 0200 6869";
/// The same order written by version 2 (limit -5, venue 3, tag "x").
const ORDER_V2_HEX: &str = "1000050085030200 0700000000000000 64000000 fbffffff 0a000100 d204000000000000 0300 0200 6869 0100 78";

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("codec-gen runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin)
        .expect("stdin accepts");
    child.wait_with_output().expect("codec-gen exits")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8")
}

#[test]
fn decode_prints_one_json_line_per_message_in_schema_order() {
    let two = format!("{ORDER_V1_HEX}{ORDER_V2_HEX}");
    let o = run(&["decode", V2, "--hex", &two], b"");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        concat!(
            r#"{"message":"Order","templateId":5,"version":1,"orderId":7,"qty":100,"limit":null,"fills":[{"price":1234,"venue":null}],"note":"hi","tag":null}"#,
            "\n",
            r#"{"message":"Order","templateId":5,"version":2,"orderId":7,"qty":100,"limit":-5,"fills":[{"price":1234,"venue":3}],"note":"hi","tag":"x"}"#,
            "\n"
        )
    );
}

#[test]
fn decode_reads_raw_bytes_from_stdin_with_an_older_schema() {
    let bytes: Vec<u8> = ORDER_V1_HEX
        .split_whitespace()
        .collect::<String>()
        .as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
        .collect();
    let o = run(&["decode", V1], &bytes);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        r#"{"message":"Order","templateId":5,"version":1,"orderId":7,"qty":100,"fills":[{"price":1234}],"note":"hi"}"#
    );
}

#[test]
fn malformed_input_is_one_error_line_naming_the_byte_offset_and_exit_code_1() {
    // Cut inside the fills entry (which starts at byte 24).
    let cut: String = ORDER_V1_HEX.split_whitespace().collect::<String>()[..60].to_string();
    let o = run(&["decode", V1, "--hex", &cut], b"");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("byte offset 24"), "{err}");
    assert_eq!(stdout(&o), "");
}

#[test]
fn encode_then_decode_round_trips_through_the_command_line() {
    let line = r#"{"message":"Order","templateId":5,"version":2,"orderId":7,"qty":100,"limit":-5,"fills":[{"price":1234,"venue":3}],"note":"hi","tag":"x"}"#;
    let o = run(&["encode", V2, "--hex"], format!("{line}\n").as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        ORDER_V2_HEX.split_whitespace().collect::<String>()
    );
    let raw = run(&["encode", V2], format!("{line}\n{line}\n").as_bytes());
    assert!(raw.status.success(), "{}", stderr(&raw));
    let back = run(&["decode", V2], &raw.stdout);
    assert!(back.status.success(), "{}", stderr(&back));
    assert_eq!(stdout(&back), format!("{line}\n{line}\n"));
}

#[test]
fn encode_refuses_unknown_fields_naming_the_line() {
    let o = run(&["encode", V2], b"{\"message\":\"Order\",\"orderID\":7}\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("line 1") && stderr(&o).contains("orderID"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn generate_writes_rust_and_refuses_an_invalid_schema_listing_every_error() {
    let dir = std::env::temp_dir().join(format!("codec-gen-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = dir.join("v2.rs");
    let o = run(&["generate", V2, "-o", out.to_str().expect("utf-8")], b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let code = std::fs::read_to_string(&out).expect("written");
    assert!(code.contains("pub struct OrderDecoder<'a>"));

    let bad = dir.join("bad.xml");
    let xml = std::fs::read_to_string(V2)
        .expect("readable")
        .replace(r#"type="int64"/>"#, r#"type="int65"/>"#)
        .replace(r#"id="6" type="int32""#, r#"id="6" type="Nope""#);
    std::fs::write(&bad, xml).expect("written");
    let o = run(&["generate", bad.to_str().expect("utf-8")], b"");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("\"int65\"") && err.contains("\"Nope\""),
        "{err}"
    );
    assert!(err.trim_end().ends_with("had 2 errors"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_with_code_2() {
    let o = run(&["frobnicate", V1], b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("usage"));
}
