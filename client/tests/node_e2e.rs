//! The client against the real node (`sequencer::node`) over UDP on loopback: the ledger's
//! life cycle through typed requests, and many requests pipelined through one session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use client::{Client, ClientConfig, Request, Response, ResultCode, Transfer};
use sequencer::node::{Node, NodeConfig};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = base.join(format!("{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_node(dir: &Path) -> Node {
    let mut config = NodeConfig::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let p = &mut config.pipeline;
    p.journal.segment_size = 1 << 20;
    p.journal.direct_io = journal::DirectIo::Optional;
    p.engine.accounts_max = 10_000;
    p.engine.transfers_retained_max = 100_000;
    p.engine.pending_max = 1_000;
    p.engine.sessions_max = 100;
    p.producers_max = 4;
    p.reply_ring_bytes = 1 << 20;
    Node::start(config).unwrap().0
}

fn connect(node: &Node) -> Client {
    Client::connect(ClientConfig {
        timeout: Duration::from_secs(5),
        retries: 2,
        ..ClientConfig::new(node.local_addr())
    })
    .unwrap()
}

fn create(id: u64, ledger: u32, no_overdraft: bool, external: bool) -> Request {
    Request::CreateAccount {
        id,
        ledger,
        debits_must_not_exceed_credits: no_overdraft,
        credits_must_not_exceed_debits: false,
        external,
        code: 0,
    }
}

fn result(r: &Response) -> &'static str {
    r.result().map_or("unknown", |c| c.name())
}

fn balance(client: &mut Client, id: u64, min_position: u64) -> i128 {
    match client
        .request(&Request::GetAccount { id, min_position })
        .unwrap()
    {
        Response::Account {
            result: Some(ResultCode::Ok),
            account,
            ..
        } => account.balance(),
        other => panic!("account {id}: {other:?}"),
    }
}

#[test]
fn a_ledger_life_cycle_through_the_real_node() {
    let dir = TempDir::new("client-e2e-life");
    let node = start_node(&dir.0);
    let mut c = connect(&node);

    assert_eq!(
        result(&c.request(&create(1, 7, false, true)).unwrap()),
        "ok"
    );
    assert_eq!(
        result(&c.request(&create(10, 7, true, false)).unwrap()),
        "ok"
    );
    assert_eq!(
        result(&c.request(&create(20, 7, true, false)).unwrap()),
        "ok"
    );
    assert_eq!(
        result(&c.request(&create(10, 7, true, false)).unwrap()),
        "account_exists"
    );

    let id = c.new_transfer_id();
    let r = c
        .request(&Request::Deposit {
            id,
            account_id: 10,
            amount: 500,
        })
        .unwrap();
    assert_eq!(result(&r), "ok");
    let Response::Command { balances, .. } = &r else {
        panic!("expected a command reply");
    };
    let of = |id| {
        balances
            .iter()
            .find(|b| b.account_id == id)
            .map(|b| b.balance())
    };
    assert_eq!(
        (of(10), of(1)),
        (Some(500), Some(-500)),
        "money is conserved"
    );

    let id = c.new_transfer_id();
    let r = c
        .request(&Request::Withdraw {
            id,
            account_id: 10,
            amount: 1000,
        })
        .unwrap();
    assert_eq!(result(&r), "insufficient_funds", "no overdraft by default");

    let pending_id = c.new_transfer_id();
    let r = c
        .request(&Request::Transfers {
            atomic: false,
            transfers: vec![Transfer {
                id: pending_id,
                debit_account_id: 10,
                credit_account_id: 20,
                amount: 100,
                ledger: 7,
                pending: true,
                timeout_s: 0,
                code: 0,
            }],
        })
        .unwrap();
    assert_eq!(result(&r), "ok");
    let id = c.new_transfer_id();
    let r = c
        .request(&Request::PostPending {
            id,
            pending_id,
            amount: Some(60),
        })
        .unwrap();
    assert_eq!(result(&r), "ok");
    let Response::Command { position, .. } = r else {
        panic!("expected a command reply");
    };

    assert_eq!(balance(&mut c, 10, position), 440);
    assert_eq!(balance(&mut c, 20, position), 60);
    let t = c
        .request(&Request::GetTransfer {
            id: pending_id,
            min_position: position,
        })
        .unwrap();
    assert_eq!(t.to_json()["state"], "pending_posted");
    let s = c
        .request(&Request::GetStatus {
            min_position: position,
        })
        .unwrap()
        .to_json();
    assert_eq!(s["role"], "leader");
    assert!(s["position"].as_u64().unwrap() >= position);
    c.close();
    node.shutdown();
}

#[test]
fn many_pipelined_deposits_through_one_session_all_apply_once() {
    let dir = TempDir::new("client-e2e-pipe");
    let node = start_node(&dir.0);
    let mut c = connect(&node);
    assert_eq!(
        result(&c.request(&create(1, 1, false, true)).unwrap()),
        "ok"
    );
    assert_eq!(
        result(&c.request(&create(10, 1, true, false)).unwrap()),
        "ok"
    );

    let total = 2_000u64;
    let (mut started, mut ok, mut last_position) = (0u64, 0u64, 0u64);
    while ok < total {
        while started < total {
            let id = c.new_transfer_id();
            if c.try_send(&Request::Deposit {
                id,
                account_id: 10,
                amount: 1,
            })
            .is_err()
            {
                break;
            }
            started += 1;
        }
        c.poll(
            |_, r| {
                let r = r.unwrap();
                assert_eq!(result(&r), "ok");
                if let Response::Command { position, .. } = r {
                    last_position = last_position.max(position);
                }
                ok += 1;
            },
            256,
        );
    }
    assert_eq!(balance(&mut c, 10, last_position), total as i128);
    c.close();
    node.shutdown();
}
