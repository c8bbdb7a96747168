//! End to end: a `tally node` process on loopback, driven by the `tally client` CLI and by the
//! client library. Covers the ledger operations, exit codes, restart, and SIGKILL under load.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use client::{Client, ClientConfig, Request, Response, Transfer};
use serde_json::Value;

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = base.join(format!("cli-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node process; SIGKILLed on drop if still running.
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
}

impl NodeProcess {
    fn start(data: &Path) -> NodeProcess {
        // Pick a free port (bind, read, release): the node needs a fixed one to restart on.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(data, format!("127.0.0.1:{port}").parse().unwrap())
    }

    fn start_on(data: &Path, addr: SocketAddr) -> NodeProcess {
        let child = Command::new(TALLY)
            .args([
                "node",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                &addr.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let node = NodeProcess { child, addr };
        // Ready once it answers status.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = node.cli(&["status", "--json"]);
            if out.status.code() == Some(0) {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "node did not come up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(TALLY)
            .args([
                "client",
                "--connect",
                &self.addr.to_string(),
                "--timeout-ms",
                "1000",
                "--retries",
                "2",
            ])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a CLI command with `--json`; returns (exit code, reply).
    fn json(&self, args: &[&str]) -> (i32, Value) {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or("null");
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| {
            panic!(
                "{args:?}: not JSON: {stdout} / {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    fn terminate(mut self) {
        // SIGTERM: clean shutdown.
        unsafe_free_kill(self.child.id(), "TERM");
        let _ = self.child.wait();
    }

    fn kill9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with the `kill` command (no unsafe code in tests).
fn unsafe_free_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status();
}

fn balance(node: &NodeProcess, account: u64) -> Value {
    let (code, v) = node.json(&["account", &account.to_string()]);
    assert_eq!(code, 0, "{v}");
    v
}

#[test]
fn the_cli_drives_every_ledger_operation_with_meaningful_exit_codes() {
    let dir = TempDir::new("ops");
    let node = NodeProcess::start(&dir.0);
    let ok = |args: &[&str]| {
        let (code, v) = node.json(args);
        assert_eq!(
            (code, v["result"].as_str()),
            (0, Some("ok")),
            "{args:?} -> {v}"
        );
        v
    };
    ok(&[
        "create-account",
        "--id",
        "99",
        "--ledger",
        "1",
        "--flags",
        "external",
    ]);
    ok(&["create-account", "--id", "1", "--ledger", "1"]);
    ok(&["create-account", "--id", "2", "--ledger", "1"]);
    ok(&["deposit", "--account", "1", "--amount", "1000"]);
    ok(&["withdraw", "--account", "1", "--amount", "100"]);
    assert_eq!(balance(&node, 1)["balance"], 900);

    // Overdraft: refused with exit 1, and nothing moves.
    let (code, v) = node.json(&[
        "transfer", "--id", "5", "--from", "1", "--to", "2", "--amount", "2000",
    ]);
    assert_eq!(
        (code, v["result"].as_str()),
        (1, Some("insufficient_funds")),
        "{v}"
    );
    assert_eq!(balance(&node, 1)["balance"], 900);

    // The same transfer id twice is applied once.
    ok(&[
        "transfer", "--id", "77", "--from", "1", "--to", "2", "--amount", "100",
    ]);
    let (code, v) = node.json(&[
        "transfer", "--id", "77", "--from", "1", "--to", "2", "--amount", "100",
    ]);
    assert_eq!(
        (code, v["result"].as_str()),
        (1, Some("transfer_exists")),
        "{v}"
    );
    assert_eq!(balance(&node, 1)["balance"], 800);
    assert_eq!(balance(&node, 2)["balance"], 100);

    // Two-phase: post part of one, void another, let a third expire.
    ok(&[
        "transfer",
        "--id",
        "80",
        "--from",
        "1",
        "--to",
        "2",
        "--amount",
        "300",
        "--pending",
    ]);
    assert_eq!(balance(&node, 1)["debits_pending"], 300);
    ok(&[
        "post",
        "--pending-id",
        "80",
        "--id",
        "81",
        "--amount",
        "200",
    ]);
    let a1 = balance(&node, 1);
    assert_eq!(
        (a1["debits_pending"].as_u64(), a1["balance"].as_i64()),
        (Some(0), Some(600))
    );
    ok(&[
        "transfer",
        "--id",
        "82",
        "--from",
        "1",
        "--to",
        "2",
        "--amount",
        "100",
        "--pending",
    ]);
    ok(&["void", "--pending-id", "82", "--id", "83"]);
    let (code, v) = node.json(&["post", "--pending-id", "82", "--id", "86"]);
    assert_eq!(
        (code, v["result"].as_str()),
        (1, Some("pending_already_voided")),
        "{v}"
    );
    ok(&[
        "transfer",
        "--id",
        "84",
        "--from",
        "1",
        "--to",
        "2",
        "--amount",
        "50",
        "--pending",
        "--timeout-s",
        "1",
    ]);
    std::thread::sleep(Duration::from_millis(1_300));
    ok(&["deposit", "--account", "2", "--amount", "1"]); // advances log time past the deadline
    let (code, v) = node.json(&["post", "--pending-id", "84", "--id", "85"]);
    assert_eq!(
        (code, v["result"].as_str()),
        (1, Some("pending_expired")),
        "{v}"
    );
    assert_eq!(balance(&node, 1)["debits_pending"], 0);

    // Queries.
    let (code, v) = node.json(&["accounts", "--ledger", "1", "--limit", "10"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["accounts"].as_array().map(Vec::len), Some(3));
    let (code, v) = node.json(&["transfer-get", "77"]);
    assert_eq!((code, v["amount"].as_u64()), (0, Some(100)), "{v}");
    let (code, v) = node.json(&["status"]);
    assert_eq!((code, v["role"].as_str()), (0, Some("leader")), "{v}");
    assert!(v["durable_position"].as_u64().unwrap() >= v["position"].as_u64().unwrap() - 1);
    for key in ["position", "durable_position", "state_hash", "sessions"] {
        assert!(v.get(key).is_some(), "status lacks {key}: {v}");
    }

    // The journal as JSON lines, read-only while the node runs.
    let out = Command::new(TALLY)
        .args([
            "log",
            "dump",
            "--data",
            dir.0.to_str().unwrap(),
            "--from",
            "2",
            "--limit",
            "3",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["position"], 2);
    assert_eq!(lines[0]["command"]["message"], "CreateAccount");
    assert_eq!(lines[0]["command"]["id"], 1);
    assert_eq!(lines[2]["command"]["message"], "Deposit");
    assert_eq!(lines[2]["command"]["amount"], 1000);

    // Usage errors exit 2.
    let out = node.cli(&["deposit", "--account", "1"]);
    assert_eq!(out.status.code(), Some(2));

    // A clean restart keeps every acknowledged effect.
    let addr = node.addr;
    let before = (balance(&node, 1), balance(&node, 2));
    node.terminate();
    let node = NodeProcess::start_on(&dir.0, addr);
    let after = (balance(&node, 1), balance(&node, 2));
    assert_eq!(before.0["balance"], after.0["balance"]);
    assert_eq!(before.1["balance"], after.1["balance"]);
}

#[test]
fn a_client_without_a_node_gets_exit_2_and_a_hint() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(TALLY)
        .args([
            "client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--timeout-ms",
            "200",
            "--retries",
            "0",
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tally node"),
        "the message says what to do: {err}"
    );
}

#[test]
fn an_atomic_group_with_one_bad_member_applies_none() {
    let dir = TempDir::new("atomic");
    let node = NodeProcess::start(&dir.0);
    let mut c = Client::connect(ClientConfig::new(node.addr)).unwrap();
    let create = |id: u64, external: bool| Request::CreateAccount {
        id,
        ledger: 1,
        debits_must_not_exceed_credits: !external,
        credits_must_not_exceed_debits: false,
        external,
        code: 0,
    };
    for r in [
        create(99, true),
        create(1, false),
        create(2, false),
        create(3, false),
    ] {
        assert_eq!(
            c.request(&r).unwrap().result(),
            Some(client::ResultCode::Ok)
        );
    }
    c.request(&Request::Deposit {
        id: 1,
        account_id: 1,
        amount: 100,
    })
    .unwrap();
    let t = |id, from, to, amount| Transfer {
        id,
        debit_account_id: from,
        credit_account_id: to,
        amount,
        ledger: 1,
        pending: false,
        timeout_s: 0,
        code: 0,
    };
    let r = c
        .request(&Request::Transfers {
            atomic: true,
            transfers: vec![t(10, 1, 2, 50), t(11, 2, 3, 500)],
        })
        .unwrap();
    let Response::Command { results, .. } = &r else {
        panic!("{r:?}")
    };
    assert_ne!(r.result(), Some(client::ResultCode::Ok));
    assert_eq!(results[0], Some(client::ResultCode::LinkedTransferFailed));
    assert_eq!(results[1], Some(client::ResultCode::InsufficientFunds));
    let Response::Account { account, .. } = c
        .request(&Request::GetAccount {
            id: 1,
            min_position: 0,
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        account.credits_posted - account.debits_posted,
        100,
        "the good member left no trace"
    );
    // A transfer without --ledger from an account that does not exist says so by name.
    let out = node.cli(&[
        "transfer", "--id", "12", "--from", "4242", "--to", "1", "--amount", "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("debit account 4242 was not found"), "{err}");
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_deposit() {
    let dir = TempDir::new("sigkill");
    let node = NodeProcess::start(&dir.0);
    let addr = node.addr;
    let mut config = ClientConfig::new(addr);
    config.timeout = Duration::from_millis(300);
    config.retries = 1;
    let mut c = Client::connect(config).unwrap();
    for r in [
        Request::CreateAccount {
            id: 99,
            ledger: 1,
            debits_must_not_exceed_credits: false,
            credits_must_not_exceed_debits: false,
            external: true,
            code: 0,
        },
        Request::CreateAccount {
            id: 1,
            ledger: 1,
            debits_must_not_exceed_credits: true,
            credits_must_not_exceed_debits: false,
            external: false,
            code: 0,
        },
    ] {
        assert_eq!(
            c.request(&r).unwrap().result(),
            Some(client::ResultCode::Ok)
        );
    }
    // Pipelined deposits of 1 until the node dies.
    let loader = std::thread::spawn(move || {
        let (mut sent, mut acked) = (0u64, 0u64);
        let started = Instant::now();
        let mut next_id = 1_000u128;
        'outer: while started.elapsed() < Duration::from_secs(10) {
            while c.in_flight() < 256 {
                match c.try_send(&Request::Deposit {
                    id: next_id,
                    account_id: 1,
                    amount: 1,
                }) {
                    Ok(_) => {
                        sent += 1;
                        next_id += 1;
                    }
                    Err(client::ClientError::BackPressured { .. }) => break,
                    Err(_) => break 'outer,
                }
            }
            let mut dead = false;
            c.poll(
                |_, r| match r {
                    Ok(r) if r.result() == Some(client::ResultCode::Ok) => acked += 1,
                    Ok(_) => {}
                    Err(_) => dead = true,
                },
                usize::MAX,
            );
            if dead {
                break;
            }
        }
        (sent, acked)
    });
    std::thread::sleep(Duration::from_millis(700));
    node.kill9();
    let (sent, acked) = loader.join().unwrap();
    assert!(
        acked > 0,
        "nothing was acknowledged before the kill: the test tested nothing"
    );
    let node = NodeProcess::start_on(&dir.0, addr);
    let credits = balance(&node, 1)["credits_posted"].as_u64().unwrap();
    assert!(
        acked <= credits && credits <= sent,
        "acknowledged {acked} <= balance {credits} <= sent {sent}"
    );
}

#[test]
fn demo_arguments_out_of_range_are_refused_by_name_not_a_panic() {
    for (flag, value) in [
        ("--seconds", u64::MAX),
        ("--accounts", u64::from(u32::MAX)),
        ("--clients", 100_000),
        ("--in-flight", 0),
    ] {
        let out = output_within(
            Command::new(TALLY).args(["demo", flag, &value.to_string()]),
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(
            err.contains(flag),
            "{flag} {value}: the message names it: {err}"
        );
        assert!(!err.contains("panicked"), "{flag} {value}: {err}");
    }
}

/// Runs a command to completion, killing it (and failing) past `limit`.
fn output_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_bad_config_value_stops_start_up_naming_its_key() {
    let dir = TempDir::new("config");
    for (toml, key) in [
        ("[node]\nsessions_max = 0\n", "node.sessions_max"),
        ("[journal]\nsegment_bytes = 4096\n", "journal.segment_bytes"),
        ("[snapshot]\nkept = 0\n", "snapshot.kept"),
        // No machine this runs on has a core 100,000: pinning would skip it silently.
        (
            "[threads]\npin_sequencer = 100000\npin_engine = 0\n",
            "threads.pin_sequencer",
        ),
    ] {
        let file = dir.0.join("tally.toml");
        std::fs::write(&file, toml).unwrap();
        let out = output_within(
            Command::new(TALLY).args([
                "node",
                "--config",
                file.to_str().unwrap(),
                "--data",
                dir.0.join("data").to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ]),
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(key), "{toml}: the message names {key}: {err}");
    }
}

#[test]
fn log_dump_of_a_journal_damaged_before_its_end_exits_1_naming_the_damage() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new("dump-damaged");
    let journal_dir = dir.0.join("journal");
    let options = journal::Options {
        segment_size: 1 << 20,
        direct_io: journal::DirectIo::Optional,
    };
    let (mut journal, _) = journal::Journal::open(&journal_dir, options).unwrap();
    let mut offsets = Vec::new();
    for _ in 0..20 {
        let mut builder = journal::BatchBuilder::new(journal.next_position());
        for _ in 0..10 {
            let position = builder.next_position();
            let meta = journal::EntryMeta {
                timestamp_ns: position,
                session_id: 1,
                client_seq: position,
            };
            builder.try_append(meta, &[0xab; 40]).unwrap();
        }
        let batch = builder.seal(1, journal.next_position(), journal.last_checksum());
        journal.append(&batch).unwrap();
    }
    drop(journal);
    let mut reader = journal::JournalReader::open(&journal_dir).unwrap();
    while let Some(batch) = reader.next_batch().unwrap() {
        offsets.push((batch.segment_index(), batch.offset()));
    }
    let dump = || {
        output_within(
            Command::new(TALLY).args(["log", "dump", "--data", dir.0.to_str().unwrap()]),
            Duration::from_secs(20),
        )
    };
    let out = dump();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 200);
    // One byte of the fourth batch flipped: the dump stops there and says the log goes on.
    let (segment, offset) = offsets[3];
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(journal_dir.join(journal::segment_file_name(segment)))
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset + 100).unwrap();
    file.write_all_at(&[byte[0] ^ 0xff], offset + 100).unwrap();
    let out = dump();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 30);
    assert!(err.contains("damaged") && err.contains("segment"), "{err}");
}
