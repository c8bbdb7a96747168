//! Readable scenario tests of the byte-level API: result codes against the schema, queries,
//! sessions, atomic groups, expiry, configuration errors, snapshot corruption.

mod model;

use engine::snapshot::{
    Frozen, SnapshotWriter, ACCOUNT_SIZE, HEADER_SIZE, RETAINED_SIZE, TRAILER_SIZE,
};
use engine::{
    account_flags as af, batch_flags, transfer_flags, Command, Engine, EngineConfig, EntryMeta,
    ResultCode as R, SnapshotError, TransferSpec, REPLY_LEN_MAX,
};
use model::sbe::{decode_reply, encode_command};
use model::Reply;
use proptest::prelude::*;
use schemas::ledger::{
    AccountReplyDecoder, AccountsPageDecoder, GetAccountEncoder, GetStatusEncoder,
    GetTransferEncoder, ListAccountsEncoder, StatusReplyDecoder, TransferReplyDecoder,
};

const SECOND_NS: u64 = 1_000_000_000;

struct Ledger {
    engine: Engine,
    position: u64,
    now_ns: u64,
}

impl Ledger {
    /// A fresh engine of `config` at position 0 and log time `now_ns`.
    fn with_config(config: EngineConfig, now_ns: u64) -> Ledger {
        Ledger {
            engine: Engine::new(config).unwrap(),
            position: 0,
            now_ns,
        }
    }

    fn new() -> Ledger {
        let config = EngineConfig {
            accounts_max: 100,
            transfers_retained_max: 100,
            pending_max: 10,
            sessions_max: 4,
            ledgers_max: 4,
        };
        Ledger::with_config(config, 1_000 * SECOND_NS)
    }

    fn send(&mut self, session_id: u64, client_seq: u64, command: &Command<'_>) -> Reply {
        let mut bytes = vec![0u8; 32 * 1024];
        let n = encode_command(command, &mut bytes);
        self.position += 1;
        let meta = EntryMeta {
            position: self.position,
            timestamp_ns: self.now_ns,
            session_id,
            client_seq,
        };
        let mut reply = vec![0u8; REPLY_LEN_MAX];
        let len = self.engine.apply(&meta, &bytes[..n], &mut reply);
        decode_reply(&reply[..len])
    }

    fn run(&mut self, command: &Command<'_>) -> Reply {
        self.send(0, 0, command)
    }

    /// Applies `bytes` as they are (no session).
    fn run_bytes(&mut self, bytes: &[u8]) -> Reply {
        self.position += 1;
        let meta = EntryMeta {
            position: self.position,
            timestamp_ns: self.now_ns,
            session_id: 0,
            client_seq: 0,
        };
        let mut reply = vec![0u8; REPLY_LEN_MAX];
        let len = self.engine.apply(&meta, bytes, &mut reply);
        decode_reply(&reply[..len])
    }

    /// A small engine that retains `retained` transfer ids, with external account 1 and
    /// account 2 (no flags) on ledger 1.
    fn with_retention(retained: u32) -> Ledger {
        let config = EngineConfig {
            accounts_max: 10,
            transfers_retained_max: retained,
            pending_max: 4,
            sessions_max: 2,
            ledgers_max: 2,
        };
        let mut l = Ledger::with_config(config, SECOND_NS);
        for (id, flags) in [(1, af::EXTERNAL), (2, 0)] {
            let r = l.run(&Command::CreateAccount {
                id,
                ledger: 1,
                flags,
                code: 0,
            });
            assert_eq!(r.result, R::Ok);
        }
        l
    }

    /// External account 1 and accounts 10, 20 (no overdraft) on ledger 1, 100 deposited in 10.
    fn funded() -> Ledger {
        let mut l = Ledger::new();
        l.run(&Command::CreateAccount {
            id: 1,
            ledger: 1,
            flags: af::EXTERNAL,
            code: 0,
        });
        for id in [10, 20] {
            let r = l.run(&Command::CreateAccount {
                id,
                ledger: 1,
                flags: af::DEBITS_MUST_NOT_EXCEED_CREDITS,
                code: 0,
            });
            assert_eq!(r.result, R::Ok);
        }
        assert_eq!(
            l.run(&Command::Deposit {
                transfer_id: 1000,
                account_id: 10,
                amount: 100
            })
            .result,
            R::Ok
        );
        l
    }

    fn balance(&self, id: u64) -> (u64, u64, u64, u64) {
        let a = self.engine.account(id).unwrap();
        (
            a.debits_posted,
            a.credits_posted,
            a.debits_pending,
            a.credits_pending,
        )
    }
}

fn transfer(id: u128, debit: u64, credit: u64, amount: u64) -> TransferSpec {
    TransferSpec {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 1,
        ..TransferSpec::default()
    }
}

/// A pending transfer of `amount` from account 10 to 20 (`Ledger::funded`), timing out after
/// `timeout_s` seconds (0: never).
fn pending(id: u128, amount: u64, timeout_s: u32) -> TransferSpec {
    TransferSpec {
        flags: transfer_flags::PENDING,
        timeout_s,
        ..transfer(id, 10, 20, amount)
    }
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[test]
fn result_codes_match_the_schema_enum_value_for_value_and_name() {
    for code in R::ALL {
        let schema = schemas::ledger::ResultCode::from_raw(code as u8).expect("code in schema");
        assert_eq!(schema.name(), snake(&format!("{code:?}")));
    }
    assert!(schemas::ledger::ResultCode::from_raw(R::ALL.len() as u8).is_none());
}

#[test]
fn a_deposit_and_a_transfer_report_the_balances_they_touched() {
    let mut l = Ledger::funded();
    let r = l.run(&Command::Transfers {
        flags: 0,
        transfers: &[transfer(1, 10, 20, 30)],
    });
    assert_eq!((r.result, r.results.clone()), (R::Ok, vec![R::Ok]));
    let touched: Vec<(u64, u64, u64)> = r
        .balances
        .iter()
        .map(|b| (b.account_id, b.debits_posted, b.credits_posted))
        .collect();
    assert_eq!(touched, [(10, 30, 100), (20, 0, 30)]);
    assert_eq!(
        l.balance(1),
        (100, 0, 0, 0),
        "the external account paid the deposit"
    );
}

#[test]
fn an_atomic_group_with_a_failing_member_leaves_no_trace_and_every_member_says_why() {
    let mut l = Ledger::funded();
    let hash_before = l.engine.state_hash();
    let group = [
        transfer(1, 10, 20, 60),
        transfer(2, 10, 20, 60),
        transfer(3, 20, 10, 5),
    ];
    let r = l.run(&Command::Transfers {
        flags: batch_flags::ATOMIC,
        transfers: &group,
    });
    assert_eq!(r.result, R::InsufficientFunds);
    assert_eq!(
        r.results,
        [
            R::LinkedTransferFailed,
            R::InsufficientFunds,
            R::LinkedTransferFailed
        ]
    );
    assert!(r.balances.is_empty());
    assert_eq!(
        (l.balance(10), l.balance(20)),
        ((0, 100, 0, 0), (0, 0, 0, 0))
    );
    assert!(
        l.engine.transfer(1).is_none(),
        "the applied member was undone"
    );
    assert_ne!(
        l.engine.state_hash(),
        hash_before,
        "the hash covers every position"
    );
    // Without the atomic flag the first member applies on its own.
    let r = l.run(&Command::Transfers {
        flags: 0,
        transfers: &group,
    });
    assert_eq!(r.results, [R::Ok, R::InsufficientFunds, R::Ok]);
}

#[test]
fn a_retried_transfer_id_returns_the_original_result_and_moves_nothing() {
    let mut l = Ledger::funded();
    assert_eq!(
        l.run(&Command::Transfers {
            flags: 0,
            transfers: &[transfer(7, 10, 20, 5)]
        })
        .results,
        [R::Ok]
    );
    let again = l.run(&Command::Transfers {
        flags: 0,
        transfers: &[transfer(7, 10, 20, 5)],
    });
    assert_eq!(again.results, [R::TransferExists]);
    let other = l.run(&Command::Transfers {
        flags: 0,
        transfers: &[transfer(7, 10, 20, 6)],
    });
    assert_eq!(other.results, [R::TransferExistsWithDifferentFields]);
    assert_eq!(l.balance(20), (0, 5, 0, 0));
}

#[test]
fn a_retried_session_command_answers_the_original_result_and_changes_nothing() {
    let mut l = Ledger::funded();
    let cmd = Command::Withdraw {
        transfer_id: 50,
        account_id: 10,
        amount: 40,
    };
    let first = l.send(9, 1, &cmd);
    assert_eq!(first.result, R::Ok);
    let state = l.balance(10);
    let retry = l.send(
        9,
        1,
        &Command::Withdraw {
            transfer_id: 51,
            account_id: 10,
            amount: 40,
        },
    );
    assert_eq!(
        (retry.position, retry.result, retry.client_seq),
        (first.position, R::Ok, 1)
    );
    assert_eq!(l.balance(10), state);
    assert_eq!(l.send(9, 2, &cmd).result, R::TransferExists);
    assert_eq!(
        l.send(9, 1, &cmd).result,
        R::DuplicateRequest,
        "older than the last: not retained"
    );
}

#[test]
fn pending_transfers_post_partially_void_and_expire_in_deadline_order() {
    let mut l = Ledger::funded();
    let r = l.run(&Command::Transfers {
        flags: 0,
        transfers: &[pending(1, 10, 0), pending(2, 20, 2), pending(3, 30, 1)],
    });
    assert_eq!(r.results, [R::Ok, R::Ok, R::Ok]);
    assert_eq!(l.balance(10), (0, 100, 60, 0));
    assert_eq!(
        l.run(&Command::Transfers {
            flags: 0,
            transfers: &[transfer(4, 10, 20, 41)]
        })
        .results,
        [R::InsufficientFunds]
    );
    assert_eq!(
        l.run(&Command::PostPending {
            id: 5,
            pending_id: 1,
            amount: Some(11)
        })
        .result,
        R::AmountExceedsPending
    );
    assert_eq!(
        l.run(&Command::PostPending {
            id: 5,
            pending_id: 1,
            amount: Some(4)
        })
        .result,
        R::Ok
    );
    assert_eq!(
        l.balance(10),
        (4, 100, 50, 0),
        "the partial post released the rest"
    );
    assert_eq!(
        l.run(&Command::VoidPending {
            id: 6,
            pending_id: 1
        })
        .result,
        R::PendingAlreadyPosted
    );
    l.now_ns += SECOND_NS;
    let r = l.run(&Command::VoidPending {
        id: 6,
        pending_id: 3,
    });
    assert_eq!(
        r.result,
        R::PendingExpired,
        "transfer 3 expired at exactly its deadline"
    );
    assert_eq!(l.balance(10), (4, 100, 20, 0));
    assert_eq!(
        l.run(&Command::VoidPending {
            id: 7,
            pending_id: 2
        })
        .result,
        R::Ok
    );
    assert_eq!(
        l.run(&Command::VoidPending {
            id: 8,
            pending_id: 2
        })
        .result,
        R::PendingAlreadyVoided
    );
    assert_eq!(l.balance(10), (4, 100, 0, 0));
    assert_eq!(l.engine.pending_count(), 0);
}

#[test]
fn queries_answer_accounts_pages_transfers_and_status_and_wait_for_min_position() {
    let l = Ledger::funded();
    let mut q = [0u8; 128];
    let mut reply = vec![0u8; REPLY_LEN_MAX];

    let mut e = GetAccountEncoder::wrap_with_header(&mut q).unwrap();
    e.set_account_id(10).set_min_position(0);
    let n = e.finish().unwrap();
    let len = l.engine.query(&q[..n], &mut reply);
    let a = AccountReplyDecoder::wrap_with_header(&reply[..len]).unwrap();
    assert_eq!(
        (a.result_raw(), a.id(), a.credits_posted(), a.position()),
        (R::Ok as u8, 10, 100, l.position)
    );

    let mut e = GetAccountEncoder::wrap_with_header(&mut q).unwrap();
    e.set_account_id(10).set_min_position(l.position + 1);
    let n = e.finish().unwrap();
    let len = l.engine.query(&q[..n], &mut reply);
    assert_eq!(
        AccountReplyDecoder::wrap_with_header(&reply[..len])
            .unwrap()
            .result_raw(),
        R::NotReady as u8
    );

    let mut e = ListAccountsEncoder::wrap_with_header(&mut q).unwrap();
    e.set_ledger(Some(1))
        .set_after_id(1)
        .set_limit(10)
        .set_min_position(0);
    let n = e.finish().unwrap();
    let len = l.engine.query(&q[..n], &mut reply);
    let page = AccountsPageDecoder::wrap_with_header(&reply[..len]).unwrap();
    let ids: Vec<u64> = page.accounts().unwrap().map(|a| a.id()).collect();
    assert_eq!(ids, [10, 20]);

    let mut e = GetTransferEncoder::wrap_with_header(&mut q).unwrap();
    e.id_mut().set_lo(1000).set_hi(0);
    e.set_min_position(0);
    let n = e.finish().unwrap();
    let len = l.engine.query(&q[..n], &mut reply);
    let t = TransferReplyDecoder::wrap_with_header(&reply[..len]).unwrap();
    assert_eq!(
        (
            t.result_raw(),
            t.debit_account_id(),
            t.credit_account_id(),
            t.amount()
        ),
        (R::Ok as u8, 1, 10, 100)
    );
    assert_eq!(t.kind_raw(), engine::TransferKind::Deposit as u8);

    let mut e = GetStatusEncoder::wrap_with_header(&mut q).unwrap();
    e.set_min_position(0);
    let n = e.finish().unwrap();
    let len = l.engine.query(&q[..n], &mut reply);
    let s = StatusReplyDecoder::wrap_with_header(&reply[..len]).unwrap();
    assert_eq!(
        (s.position(), s.state_hash()),
        (l.position, l.engine.state_hash())
    );

    let len = l.engine.query(&[1, 2, 3], &mut reply);
    assert_eq!(decode_reply(&reply[..len]).result, R::InvalidCommand);

    // A query is exactly one message, as a command is: a stray byte after it is answered as
    // a short one is, `invalid_command`.
    let mut e = GetAccountEncoder::wrap_with_header(&mut q).unwrap();
    e.set_account_id(10).set_min_position(0);
    let n = e.finish().unwrap();
    for len in [n - 1, n + 1] {
        let got = l.engine.query(&q[..len], &mut reply);
        assert_eq!(
            decode_reply(&reply[..got]).result,
            R::InvalidCommand,
            "{len} bytes"
        );
    }
    let mut e = GetStatusEncoder::wrap_with_header(&mut q).unwrap();
    e.set_min_position(0);
    let n = e.finish().unwrap();
    let len = l.engine.query(&q[..n + 1], &mut reply);
    assert_eq!(decode_reply(&reply[..len]).result, R::InvalidCommand);
}

/// Every account once, in id order, paging `ListAccounts` through `e` (`LIST_LIMIT_MAX` a page).
fn all_pages(e: &Engine, ledger: Option<u32>) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut page = [engine::Account::default(); engine::LIST_LIMIT_MAX];
    let mut after = 0;
    loop {
        let n = e.list_accounts(ledger, after, engine::LIST_LIMIT_MAX, &mut page);
        assert!(page[..n]
            .iter()
            .all(|a| ledger.is_none_or(|l| a.ledger == l)));
        ids.extend(page[..n].iter().map(|a| a.id));
        if n < engine::LIST_LIMIT_MAX {
            return ids;
        }
        after = page[n - 1].id;
    }
}

/// Pages walk the accounts in id order, of one ledger or all, however many blocks of the
/// listing orders they span and in whatever order the ids were created, also after a restore
/// (which builds the orders afresh) and with accounts created after it.
#[test]
fn account_pages_list_every_account_once_in_id_order_before_and_after_a_restore() {
    // Mixed ids (increasing, random, the largest) on three ledgers; increasing ids on three
    // ledgers; increasing ids on one ledger (a restore sorts nothing then); each in a table
    // small enough for orders without fingerprints and in one large enough for them.
    for mode in 0..3u64 {
        for accounts_max in [5_000, engine::LIST_FINGERPRINT_MIN_ACCOUNTS] {
            account_pages_with_ids(mode, accounts_max);
        }
    }
}

fn account_pages_with_ids(mode: u64, accounts_max: u32) {
    let config = EngineConfig {
        accounts_max,
        transfers_retained_max: 16,
        pending_max: 4,
        sessions_max: 2,
        ledgers_max: 4,
    };
    let mut l = Ledger::with_config(config, SECOND_NS);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut created: Vec<(u64, u32)> = Vec::new();
    let mut create = |l: &mut Ledger, k: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = match (mode, k % 3) {
            (0, 0) | (1.., _) => k + 1,
            (0, 1) => x | 1,
            _ => u64::MAX - k,
        };
        let ledger = if mode == 2 { 7 } else { 1 + (x % 3) as u32 };
        let r = l.run(&Command::CreateAccount {
            id,
            ledger,
            flags: 0,
            code: 0,
        });
        assert_eq!(r.result, R::Ok, "account {id}");
        (id, ledger)
    };
    for k in 0..3_000 {
        created.push(create(&mut l, k));
    }
    let expect = |created: &[(u64, u32)], ledger: Option<u32>| {
        let mut ids: Vec<u64> = created
            .iter()
            .filter(|a| ledger.is_none_or(|l| a.1 == l))
            .map(|a| a.0)
            .collect();
        ids.sort_unstable();
        ids
    };
    let check = |e: &Engine, created: &[(u64, u32)]| {
        for ledger in [None, Some(1), Some(2), Some(3), Some(4), Some(7)] {
            assert_eq!(
                all_pages(e, ledger),
                expect(created, ledger),
                "ids {mode}, {ledger:?}"
            );
        }
        let mut page = [engine::Account::default(); engine::LIST_LIMIT_MAX];
        assert_eq!(e.list_accounts(None, u64::MAX, 10, &mut page), 0);
        assert_eq!(e.list_accounts(Some(u32::MAX), 0, 10, &mut page), 0);
    };
    check(&l.engine, &created);
    let mut bytes = Vec::new();
    l.engine.snapshot(&mut bytes).unwrap();
    l.engine = Engine::restore(config, &bytes[..]).unwrap();
    check(&l.engine, &created);
    for k in 3_000..4_000 {
        created.push(create(&mut l, k));
    }
    check(&l.engine, &created);
}

/// A command's bytes are exactly one message: a `Transfers` whose group count says fewer
/// transfers than it carries, or any command followed by stray bytes, is refused whole
/// (`invalid_command`), never applied in part.
#[test]
fn a_command_with_bytes_beyond_its_message_is_refused_whole() {
    let mut l = Ledger::funded();
    let mut bytes = vec![0u8; 1024];
    let group = [transfer(1, 10, 20, 5), transfer(2, 10, 20, 7)];
    let n = encode_command(
        &Command::Transfers {
            flags: 0,
            transfers: &group,
        },
        &mut bytes,
    );
    // Header (8), block (flags, 2), then the group's dimension: block length, count.
    assert_eq!(u16::from_le_bytes([bytes[12], bytes[13]]), 2);
    bytes[12..14].copy_from_slice(&1u16.to_le_bytes());
    let r = l.run_bytes(&bytes[..n]);
    assert_eq!((r.result, r.results.len()), (R::InvalidCommand, 0));
    assert_eq!(l.balance(20), (0, 0, 0, 0), "no transfer applied");
    assert!(l.engine.transfer(1).is_none());

    let create = Command::CreateAccount {
        id: 30,
        ledger: 1,
        flags: 0,
        code: 0,
    };
    let n = encode_command(&create, &mut bytes);
    bytes[n] = 0;
    assert_eq!(l.run_bytes(&bytes[..n + 1]).result, R::InvalidCommand);
    assert!(l.engine.account(30).is_none());
    assert_eq!(l.run_bytes(&bytes[..n]).result, R::Ok, "the exact message");
}

/// The state hashes of `commands` run on a fresh `Ledger::new`, one list per variant: they
/// must all differ (each variant leaves another state).
fn hashes_after(variants: &[&[Command<'_>]]) -> Vec<u64> {
    let hashes: Vec<u64> = variants
        .iter()
        .map(|commands| {
            let mut l = Ledger::new();
            for c in *commands {
                l.run(c);
            }
            l.engine.state_hash()
        })
        .collect();
    all_different(&hashes);
    hashes
}

#[test]
fn accounts_created_with_another_ledger_flags_or_code_change_the_state_hash() {
    let create = |ledger, flags, code| Command::CreateAccount {
        id: 5,
        ledger,
        flags,
        code,
    };
    hashes_after(&[
        &[create(1, 0, 0)],
        &[create(2, 0, 0)],
        &[create(1, af::DEBITS_MUST_NOT_EXCEED_CREDITS, 0)],
        &[create(1, af::EXTERNAL, 0)],
        &[create(1, 0, 7)],
    ]);
}

/// Creates the external account 1 and accounts 10 and 20, all on ledger 1.
fn external_and_two_accounts() -> [Command<'static>; 3] {
    [(1, af::EXTERNAL), (10, 0), (20, 0)].map(|(id, flags)| Command::CreateAccount {
        id,
        ledger: 1,
        flags,
        code: 0,
    })
}

#[test]
fn transfers_retained_with_another_id_kind_code_or_timeout_change_the_state_hash() {
    let accounts = external_and_two_accounts();
    let one = |t: TransferSpec| [t];
    let posted = [
        one(transfer(7, 10, 20, 5)),
        one(transfer(8, 10, 20, 5)),
        one(transfer((1 << 64) | 7, 10, 20, 5)),
        one(TransferSpec {
            code: 3,
            ..transfer(7, 10, 20, 5)
        }),
        one(transfer(7, 1, 10, 5)),
        one(pending(7, 5, 0)),
        one(pending(7, 5, 9)),
    ];
    let mut variants: Vec<Vec<Command<'_>>> = posted
        .iter()
        .map(|t| {
            let mut v = accounts.to_vec();
            v.push(Command::Transfers {
                flags: 0,
                transfers: t,
            });
            v
        })
        .collect();
    // A deposit moves what the transfer from the external account 1 does, as another kind.
    let mut deposit = accounts.to_vec();
    deposit.push(Command::Deposit {
        transfer_id: 7,
        account_id: 10,
        amount: 5,
    });
    variants.push(deposit);
    // Posting all of a pending transfer, by a null amount or by its amount, or with another id.
    for (id, amount) in [(8, None), (8, Some(5)), (9, None)] {
        let mut v = variants[5].clone();
        v.push(Command::PostPending {
            id,
            pending_id: 7,
            amount,
        });
        variants.push(v);
    }
    let refs: Vec<&[Command<'_>]> = variants.iter().map(|v| &v[..]).collect();
    hashes_after(&refs);
}

/// Each field of a retained record is hashed on its own, and its id through its hash: pairs
/// of transfers that differ only where a cheap fold could cancel leave different hashes.
/// - Id `2^64 + 7` with code 0 and id 7 with code 1: the high word of one id equals the
///   other's code moved to the low bits (a fold of the id's high word and `extra`, rotated by
///   32 bits, into one word could not tell them apart).
/// - Ids `2^63` and `2^127`, and a command of ids `2^127 + 1, 2` against one of `1, 2^127 + 2`:
///   a difference in bit 63 alone survives a lane step's multiply in bit 63 alone, so the id's
///   two halves folded as they are cancelled in pairs.
#[test]
fn transfers_whose_ids_and_codes_differ_in_matching_bits_leave_different_hashes() {
    let accounts = external_and_two_accounts();
    let t = |id: u128| transfer(id, 10, 20, 5);
    let pairs: [[Vec<TransferSpec>; 2]; 3] = [
        [
            vec![t((1 << 64) | 7)],
            vec![TransferSpec { code: 1, ..t(7) }],
        ],
        [vec![t(1 << 63)], vec![t(1 << 127)]],
        [vec![t((1 << 127) | 1), t(2)], vec![t(1), t((1 << 127) | 2)]],
    ];
    for pair in &pairs {
        let variants: Vec<Vec<Command<'_>>> = pair
            .iter()
            .map(|transfers| {
                let mut v = accounts.to_vec();
                v.push(Command::Transfers {
                    flags: 0,
                    transfers,
                });
                v
            })
            .collect();
        let refs: Vec<&[Command<'_>]> = variants.iter().map(|v| &v[..]).collect();
        hashes_after(&refs);
    }
}

/// The session table and the log time are state too (snapshots keep both, retries and
/// `GetTransfer` answer from them): the same commands sent by another session, with another
/// sequence number or at another time leave another hash.
#[test]
fn the_same_commands_from_another_session_or_at_another_time_change_the_state_hash() {
    let deposit = |id| Command::Deposit {
        transfer_id: id,
        account_id: 10,
        amount: 5,
    };
    // (session, first sequence number, log time of the last command). Without a session the
    // last command is not a retry but a transfer answered `transfer_exists`, whose log time
    // only the hash of an applied command's entry (not a retry's) takes in.
    let variants = [
        (0, 1, 0),
        (9, 1, 0),
        (9, 2, 0),
        (8, 1, 0),
        (9, 1, SECOND_NS),
        (9, 1, 2 * SECOND_NS),
        (0, 1, SECOND_NS),
    ];
    let hashes: Vec<u64> = variants
        .iter()
        .map(|&(session, seq, later_ns)| {
            let mut l = Ledger::funded();
            assert_eq!(l.send(session, seq, &deposit(7)).result, R::Ok);
            l.now_ns += later_ns;
            // A retry of that command (without a session: the same transfer again).
            let again = l.send(session, seq, &deposit(7));
            if session == 0 {
                assert_eq!(again.result, R::TransferExists);
            }
            l.engine.state_hash()
        })
        .collect();
    all_different(&hashes);
}

/// A reply buffer shorter than `REPLY_LEN_MAX` is the caller's bug: `apply` panics before
/// the command changes anything (never halfway, with the state changed and no reply), and
/// `query` panics too, whatever the size of the answer.
#[test]
fn a_reply_buffer_shorter_than_the_maximum_panics_before_anything_changes() {
    let mut l = Ledger::funded();
    let (position, hash) = (l.engine.position(), l.engine.state_hash());
    let mut bytes = vec![0u8; 256];
    let n = encode_command(
        &Command::CreateAccount {
            id: 30,
            ledger: 1,
            flags: 0,
            code: 0,
        },
        &mut bytes,
    );
    let meta = EntryMeta {
        position: position + 1,
        timestamp_ns: l.now_ns,
        session_id: 0,
        client_seq: 0,
    };
    for len in [64, REPLY_LEN_MAX - 1] {
        let mut reply = vec![0u8; len];
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            l.engine.apply(&meta, &bytes[..n], &mut reply)
        }));
        assert!(applied.is_err(), "a {len}-byte reply buffer was taken");
        assert_eq!(
            (l.engine.position(), l.engine.state_hash()),
            (position, hash)
        );
        assert!(l.engine.account(30).is_none());
    }
    let mut q = [0u8; 64];
    let mut e = GetStatusEncoder::wrap_with_header(&mut q).unwrap();
    e.set_min_position(0);
    let n = e.finish().unwrap();
    let mut reply = vec![0u8; REPLY_LEN_MAX - 1];
    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        l.engine.query(&q[..n], &mut reply)
    }));
    assert!(answered.is_err());
}

#[test]
fn a_full_account_table_is_a_result_code() {
    let mut l = Ledger::new();
    for id in 1..=100 {
        assert_eq!(
            l.run(&Command::CreateAccount {
                id,
                ledger: 2,
                flags: 0,
                code: 0
            })
            .result,
            R::Ok
        );
    }
    assert_eq!(
        l.run(&Command::CreateAccount {
            id: 101,
            ledger: 2,
            flags: 0,
            code: 0
        })
        .result,
        R::AccountTableFull
    );
    assert_eq!(
        l.run(&Command::CreateAccount {
            id: 100,
            ledger: 2,
            flags: 0,
            code: 0
        })
        .result,
        R::AccountExists
    );
}

#[test]
fn config_errors_name_the_key_and_the_value() {
    let bad = EngineConfig {
        pending_max: 0,
        ..EngineConfig::default()
    };
    let err = Engine::new(bad).err().unwrap();
    assert_eq!((err.key, err.value), ("pending_max", 0));
    assert!(err.to_string().contains("pending_max=0"));
    assert!(EngineConfig::default().transfers_retained_max >= 10_000_000);
}

fn small_snapshot() -> (Ledger, Vec<u8>) {
    let mut l = Ledger::funded();
    let pending = TransferSpec {
        flags: transfer_flags::PENDING,
        timeout_s: 5,
        ..transfer(2, 10, 20, 7)
    };
    l.send(
        3,
        1,
        &Command::Transfers {
            flags: 0,
            transfers: &[transfer(1, 10, 20, 5), pending],
        },
    );
    let mut bytes = Vec::new();
    l.engine.snapshot(&mut bytes).unwrap();
    (l, bytes)
}

#[test]
fn a_snapshot_with_any_single_bit_flipped_is_refused() {
    let (l, bytes) = small_snapshot();
    assert!(Engine::restore(*l.engine.config(), &bytes[..]).is_ok());
    for i in 0..bytes.len() {
        for bit in [0u8, 3, 7] {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            let err = Engine::restore(*l.engine.config(), &bad[..]).err();
            assert!(err.is_some(), "flip of bit {bit} in byte {i} was accepted");
        }
    }
}

#[test]
fn a_truncated_snapshot_is_refused_with_a_clear_error() {
    let (l, bytes) = small_snapshot();
    for len in 0..bytes.len() {
        match Engine::restore(*l.engine.config(), &bytes[..len]) {
            Err(SnapshotError::Truncated { .. }) | Err(SnapshotError::BadMagic) if len < 8 => {}
            Err(e @ SnapshotError::Truncated { .. }) => {
                assert!(e.to_string().contains("truncated"))
            }
            Err(SnapshotError::ChecksumMismatch { .. }) => {}
            other => panic!("truncation to {len} bytes gave {other:?}"),
        }
    }
}

/// CRC32C (Castagnoli), bit by bit: for tests that forge a trailer.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A snapshot whose ring head sequence is damaged so that its retained transfers' sequences
/// would run past `u64::MAX` (a torn header, all ones) is refused with an error: as a checksum
/// mismatch, and, with a trailer forged to match, as inconsistent; never with an arithmetic
/// overflow while its records are taken in (a panic where overflow checks are on).
#[test]
fn a_snapshot_whose_ring_sequences_would_overflow_is_refused() {
    let (l, bytes) = small_snapshot();
    let config = *l.engine.config();
    assert!(l.engine.retained_count() > 0);
    let mut bad = bytes.clone();
    bad[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
    match Engine::restore(config, &bad[..]) {
        Err(SnapshotError::ChecksumMismatch { .. }) => {}
        other => panic!("{other:?}"),
    }
    let body = bad.len() - 16;
    let crc = crc32c(&bad[..body]);
    bad[body..body + 4].copy_from_slice(&crc.to_le_bytes());
    match Engine::restore(config, &bad[..]) {
        Err(SnapshotError::Invalid(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_snapshot_too_big_for_the_configuration_names_the_table() {
    let (_, bytes) = small_snapshot();
    let tiny = EngineConfig {
        accounts_max: 2,
        ledgers_max: 1,
        ..EngineConfig::default()
    };
    match Engine::restore(tiny, &bytes[..]) {
        Err(
            e @ SnapshotError::CapacityExceeded {
                what: "accounts",
                count: 3,
                max: 2,
            },
        ) => {
            assert!(e.to_string().contains("raise"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_restored_engine_continues_with_the_same_replies_and_hash() {
    let (mut l, bytes) = small_snapshot();
    let mut restored = Ledger {
        engine: Engine::restore(*l.engine.config(), &bytes[..]).unwrap(),
        position: l.position,
        now_ns: l.now_ns,
    };
    assert_eq!(l.engine.freeze().state_hash(), restored.engine.state_hash());
    for ledger in [&mut l, &mut restored] {
        ledger.now_ns += 6 * SECOND_NS;
    }
    let cmd = Command::PostPending {
        id: 9,
        pending_id: 2,
        amount: None,
    };
    assert_eq!(
        l.send(3, 1, &cmd),
        restored.send(3, 1, &cmd),
        "the session survived the snapshot"
    );
    assert_eq!(l.send(3, 2, &cmd), restored.send(3, 2, &cmd));
    assert_eq!(l.engine.state_hash(), restored.engine.state_hash());
    assert_eq!(
        restored.engine.transfer(2).unwrap().state,
        engine::TransferState::PendingExpired
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_answered_with_invalid_command_or_a_result_never_a_panic(
        prefix in prop::sample::select(vec![vec![], vec![0u8, 0, 10, 0, 0x59, 0x1b, 1, 0], vec![2, 0, 13, 0, 0x59, 0x1b, 1, 0]]),
        tail in prop::collection::vec(any::<u8>(), 0..160),
    ) {
        let mut l = Ledger::funded();
        let mut bytes = prefix.clone();
        bytes.extend_from_slice(&tail);
        l.position += 1;
        let meta = EntryMeta { position: l.position, timestamp_ns: l.now_ns, session_id: 0, client_seq: 0 };
        let mut reply = vec![0u8; REPLY_LEN_MAX];
        let len = l.engine.apply(&meta, &bytes, &mut reply);
        let r = decode_reply(&reply[..len]);
        prop_assert_eq!(r.position, l.position);
        prop_assert!(l.engine.check_invariants().is_ok());
        let len = l.engine.query(&bytes, &mut reply);
        prop_assert!(len > 0);
    }
}

#[test]
fn retention_keeps_the_newest_ids_across_ring_wraps_and_snapshots() {
    let mut l = Ledger::with_retention(4);
    for id in 1..=700u128 {
        assert_eq!(
            l.run(&Command::Deposit {
                transfer_id: id,
                account_id: 2,
                amount: 1
            })
            .result,
            R::Ok
        );
        if id == 650 {
            let mut bytes = Vec::new();
            l.engine.snapshot(&mut bytes).unwrap();
            l.engine = Engine::restore(*l.engine.config(), &bytes[..]).unwrap();
        }
        assert_eq!(l.engine.retained_count(), id.min(4) as u64);
    }
    for id in 1..=696u128 {
        assert!(
            l.engine.transfer(id).is_none(),
            "transfer {id} should be evicted"
        );
    }
    for id in 697..=700u128 {
        assert_eq!(l.engine.transfer(id).unwrap().amount, 1);
        let again = l.run(&Command::Deposit {
            transfer_id: id,
            account_id: 2,
            amount: 1,
        });
        assert_eq!(again.result, R::TransferExists);
    }
    // An evicted id is forgotten: it applies again.
    assert_eq!(
        l.run(&Command::Deposit {
            transfer_id: 1,
            account_id: 2,
            amount: 1
        })
        .result,
        R::Ok
    );
    assert_eq!(l.balance(2), (0, 701, 0, 0));
}

/// A reader that hands out at most `step` bytes per `read`, like a pipe or a slow disk.
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

#[test]
fn a_snapshot_larger_than_one_read_chunk_restores_from_short_reads_and_trailing_bytes_are_refused()
{
    let config = EngineConfig {
        accounts_max: 40_000,
        transfers_retained_max: 40_000,
        pending_max: 4,
        sessions_max: 2,
        ledgers_max: 2,
    };
    let mut l = Ledger::with_config(config, SECOND_NS);
    l.run(&Command::CreateAccount {
        id: u64::MAX,
        ledger: 1,
        flags: af::EXTERNAL,
        code: 0,
    });
    // 30_000 accounts (48 bytes each) and 30_000 retained deposits (64 bytes each): both
    // sections span more than one 1 MiB restore chunk.
    for id in 1..=30_000u64 {
        l.run(&Command::CreateAccount {
            id,
            ledger: 1,
            flags: 0,
            code: 0,
        });
        let r = l.run(&Command::Deposit {
            transfer_id: u128::from(id) << 64 | 7,
            account_id: id,
            amount: id,
        });
        assert_eq!(r.result, R::Ok);
    }
    let mut bytes = Vec::new();
    l.engine.snapshot(&mut bytes).unwrap();
    assert!(bytes.len() > 3 << 20);
    let restored = Engine::restore(
        config,
        Trickle {
            bytes: &bytes,
            step: 4093,
        },
    )
    .unwrap();
    assert_eq!(restored.state_hash(), l.engine.state_hash());
    assert_eq!(restored.position(), l.engine.position());
    assert_eq!(restored.retained_count(), 30_000);
    for id in [1u64, 16_385, 30_000] {
        assert_eq!(restored.account(id), l.engine.account(id));
    }
    // The restore builds the retention index in bulk, out of ring order, with buckets
    // overflowing: every retained id must still be found.
    for id in 1..=30_000u64 {
        let t = restored.transfer(u128::from(id) << 64 | 7).unwrap();
        assert_eq!((t.credit_account_id, t.amount), (id, id));
    }
    let mut resumed = Ledger {
        engine: restored,
        position: l.position,
        now_ns: l.now_ns,
    };
    for id in [1u64, 4_097, 29_999] {
        let again = resumed.run(&Command::Deposit {
            transfer_id: u128::from(id) << 64 | 7,
            account_id: id,
            amount: id,
        });
        assert_eq!(again.result, R::TransferExists);
    }
    let restored = resumed.engine;
    assert_eq!(restored.retained_count(), 30_000);
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Engine::restore_from_bytes(config, &longer),
        Err(SnapshotError::Invalid(_))
    ));
}

/// A ledger whose 3,000-id retention ring has wrapped (5,000 deposits, ids 2,001 to 5,000
/// retained), and its snapshot.
fn ledger_past_its_retention() -> (Ledger, Vec<u8>) {
    let mut l = Ledger::with_retention(3_000);
    for id in 1..=5_000u128 {
        let r = l.run(&Command::Deposit {
            transfer_id: id * 0x1_0000_0001,
            account_id: 2,
            amount: 1,
        });
        assert_eq!(r.result, R::Ok);
    }
    let mut bytes = Vec::new();
    l.engine.snapshot(&mut bytes).unwrap();
    (l, bytes)
}

/// Restores `bytes` (a snapshot of `l` from [`ledger_past_its_retention`]) with `config` and
/// checks that it has `l`'s hash, knows exactly the retained ids and refuses them again.
fn assert_restores_the_retained_ids(l: &Ledger, bytes: &[u8], config: EngineConfig) {
    let mut resumed = Ledger {
        engine: Engine::restore(config, bytes).unwrap(),
        position: l.position,
        now_ns: l.now_ns,
    };
    assert_eq!(resumed.engine.state_hash(), l.engine.state_hash());
    assert_eq!(resumed.engine.retained_count(), 3_000);
    for id in 1..=5_000u128 {
        assert_eq!(
            resumed.engine.transfer(id * 0x1_0000_0001).is_some(),
            id > 2_000,
            "transfer {id}"
        );
    }
    for id in [2_001u128, 3_500, 5_000] {
        let again = resumed.run(&Command::Deposit {
            transfer_id: id * 0x1_0000_0001,
            account_id: 2,
            amount: 1,
        });
        assert_eq!(again.result, R::TransferExists);
    }
}

#[test]
fn a_snapshot_restores_into_a_larger_retention_by_rebuilding_its_index() {
    let (l, bytes) = ledger_past_its_retention();
    let config = *l.engine.config();
    // The same configuration takes the saved index as it is; a larger retention sizes the
    // index differently and rebuilds it from the records.
    let larger = EngineConfig {
        transfers_retained_max: 7_000,
        ..config
    };
    for config in [config, larger] {
        assert_restores_the_retained_ids(&l, &bytes, config);
    }
}

/// Version 5 changed what the state hash means, not the layout: a version 4 file (this one's
/// bytes with its version and checksum changed) is restored as it is, its retained ids
/// answering, its state hash taken as it stands; a version 6 file is refused.
#[test]
fn a_version_4_snapshot_is_restored_as_it_is_and_a_later_one_is_refused() {
    let (l, bytes) = ledger_past_its_retention();
    assert_eq!(engine::snapshot::FORMAT_VERSION, 5);
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 5);
    let as_version = |version: u32| {
        let mut b = bytes.clone();
        b[8..12].copy_from_slice(&version.to_le_bytes());
        let body = b.len() - TRAILER_SIZE;
        let crc = crc32c::crc32c(&b[..body]);
        b[body..body + 4].copy_from_slice(&crc.to_le_bytes());
        b
    };
    assert_restores_the_retained_ids(&l, &as_version(4), *l.engine.config());
    assert!(matches!(
        Engine::restore(*l.engine.config(), &as_version(6)[..]),
        Err(SnapshotError::UnsupportedVersion { found: 6 })
    ));
}

#[test]
fn a_version_2_snapshots_index_is_rebuilt_not_loaded() {
    // Version 2 saved the retention index in an older layout (seven entries with 32-bit
    // fingerprints per bucket): loading those words as they are would lose ids. A version 2
    // file whose index words are all zero (the worst a reader could be handed) must still
    // know every id.
    let (l, mut bytes) = ledger_past_its_retention();
    let le64 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let (accounts, retained, index_words) = (le64(48), le64(56), le64(80));
    assert!(index_words > 0);
    // The sections before the index: accounts and retained transfers.
    let index_at = HEADER_SIZE + accounts * ACCOUNT_SIZE + retained * RETAINED_SIZE;
    bytes[index_at..index_at + index_words * 4].fill(0);
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let body = bytes.len() - TRAILER_SIZE;
    let crc = crc32c::crc32c(&bytes[..body]);
    bytes[body..body + 4].copy_from_slice(&crc.to_le_bytes());
    assert_restores_the_retained_ids(&l, &bytes, *l.engine.config());
}

/// What `GetTransfer` answers for transfer `id`: result, state, position, log time, timeout.
fn get_transfer(e: &Engine, id: u128) -> (u8, u8, u64, u64, u32) {
    let mut q = [0u8; 128];
    let mut reply = vec![0u8; REPLY_LEN_MAX];
    let mut enc = GetTransferEncoder::wrap_with_header(&mut q).unwrap();
    enc.id_mut().set_lo(id as u64).set_hi((id >> 64) as u64);
    enc.set_min_position(0);
    let n = enc.finish().unwrap();
    let len = e.query(&q[..n], &mut reply);
    let t = TransferReplyDecoder::wrap_with_header(&reply[..len]).unwrap();
    (
        t.result_raw(),
        t.state_raw(),
        t.applied_position(),
        t.timestamp_ns(),
        t.timeout_s(),
    )
}

/// An open pending transfer outlives its retained record: `GetTransfer` answers for it, and
/// a retry of its id is recognised, until it is settled; across a snapshot too. A version 3
/// snapshot, which did not keep its creating command's position and log time, gives the log
/// time back from the deadline (position 0), or both from a record still retained.
#[test]
fn an_open_pending_transfer_is_answered_after_its_record_is_evicted() {
    let mut l = Ledger::with_retention(4);
    let spec = |id: u128, timeout_s: u32| TransferSpec {
        flags: transfer_flags::PENDING,
        timeout_s,
        ..TransferSpec {
            ledger: 1,
            ..transfer(id, 1, 2, 10 + id as u64)
        }
    };
    let create = |l: &mut Ledger, id: u128, timeout_s: u32| {
        l.run(&Command::Transfers {
            flags: 0,
            transfers: &[spec(id, timeout_s)],
        })
        .result
    };
    let mut created = Vec::new();
    for (id, timeout_s) in [(50u128, 3_600u32), (51, 0)] {
        l.now_ns += SECOND_NS;
        assert_eq!(create(&mut l, id, timeout_s), R::Ok);
        created.push((id, timeout_s, l.position, l.now_ns));
    }
    for id in 100..110u128 {
        let r = l.run(&Command::Deposit {
            transfer_id: id,
            account_id: 2,
            amount: 1,
        });
        assert_eq!(r.result, R::Ok);
    }
    // One more pending transfer whose record is still retained.
    l.now_ns += SECOND_NS;
    assert_eq!(create(&mut l, 52, 60), R::Ok);
    created.push((52, 60, l.position, l.now_ns));
    assert_eq!(l.engine.retained_count(), 4);
    let pending = engine::TransferState::Pending as u8;
    let answers = |e: &Engine| {
        created
            .iter()
            .map(|&(id, ..)| get_transfer(e, id))
            .collect::<Vec<_>>()
    };
    let expected: Vec<_> = created
        .iter()
        .map(|&(_, timeout_s, position, now_ns)| {
            (R::Ok as u8, pending, position, now_ns, timeout_s)
        })
        .collect();
    assert_eq!(answers(&l.engine), expected);
    let info = l.engine.transfer(50).unwrap();
    assert_eq!(
        (
            info.debit_account_id,
            info.credit_account_id,
            info.amount,
            info.ledger
        ),
        (1, 2, 60, 1)
    );

    let mut bytes = Vec::new();
    l.engine.snapshot(&mut bytes).unwrap();
    let restored = Engine::restore(*l.engine.config(), &bytes[..]).unwrap();
    assert_eq!(answers(&restored), expected);
    assert_eq!(restored.state_hash(), l.engine.state_hash());

    let old = Engine::restore(*l.engine.config(), &model::as_version_3(&bytes)[..]).unwrap();
    assert_eq!(old.state_hash(), l.engine.state_hash());
    let mut from_v3 = expected.clone();
    from_v3[0].2 = 0; // evicted, with a deadline: the log time is known, the position not
    from_v3[1].2 = 0; // evicted, no deadline: neither
    from_v3[1].3 = 0;
    assert_eq!(answers(&old), from_v3);

    // A retry of the evicted pending transfer's id is still recognised.
    assert_eq!(create(&mut l, 50, 3_600), R::TransferExists);
    // Settled, it is gone with its record.
    let r = l.run(&Command::PostPending {
        id: 200,
        pending_id: 50,
        amount: None,
    });
    assert_eq!(r.result, R::Ok);
    assert_eq!(get_transfer(&l.engine, 50).0, R::TransferNotFound as u8);
    assert_eq!(l.engine.transfer(200).unwrap().amount, 60);
}

#[test]
fn a_freeze_after_an_earlier_copy_was_dropped_holds_the_new_state_only() {
    let mut l = Ledger::funded();
    let first = l.engine.freeze();
    let first_hash = first.state_hash();
    drop(first);
    l.run(&Command::Transfers {
        flags: 0,
        transfers: &[transfer(77, 10, 20, 9)],
    });
    let second = l.engine.freeze();
    assert_ne!(second.state_hash(), first_hash);
    assert_eq!(second.position(), l.engine.position());
    let mut bytes = Vec::new();
    second.write_to(&mut bytes).unwrap();
    let restored = Engine::restore(*l.engine.config(), &bytes[..]).unwrap();
    assert_eq!(restored.state_hash(), l.engine.state_hash());
    assert_eq!(restored.transfer(77).unwrap().amount, 9);
    assert_eq!(restored.account(20), l.engine.account(20));
}

/// Takes a snapshot begun with `freeze_begin` a step at a time: into memory
/// (`freeze_step_by`), or streamed (`freeze_pieces`) into a file by a `SnapshotWriter`.
enum Copier {
    InMemory(Option<Frozen>),
    Streamed {
        path: std::path::PathBuf,
        writer: Option<SnapshotWriter>,
        ended: bool,
    },
}

impl Copier {
    fn new(streamed: bool) -> Copier {
        if streamed {
            let path = std::env::temp_dir().join(format!(
                "tally-engine-streamed-{}-{:?}.snap",
                std::process::id(),
                std::thread::current().id()
            ));
            Copier::Streamed {
                path,
                writer: None,
                ended: false,
            }
        } else {
            Copier::InMemory(None)
        }
    }

    /// One step of up to `bytes`; whether the copy is complete.
    fn step(&mut self, e: &mut Engine, bytes: usize) -> bool {
        match self {
            Copier::InMemory(frozen) => {
                *frozen = e.freeze_step_by(bytes);
                frozen.is_some()
            }
            Copier::Streamed {
                path,
                writer,
                ended,
            } => {
                e.freeze_pieces(bytes, &mut |piece| match writer {
                    None => {
                        let file = std::fs::File::create(&*path).unwrap();
                        *writer = Some(SnapshotWriter::start(file, piece).unwrap());
                    }
                    Some(w) => *ended |= w.write(piece).unwrap(),
                });
                *ended
            }
        }
    }

    /// The snapshot's bytes (the position and hash it covers are checked against `expect`).
    fn bytes(self, expect: (u64, u64)) -> Vec<u8> {
        match self {
            Copier::InMemory(frozen) => {
                let frozen = frozen.expect("complete");
                assert_eq!((frozen.position(), frozen.state_hash()), expect);
                let mut bytes = Vec::new();
                frozen.write_to(&mut bytes).unwrap();
                bytes
            }
            Copier::Streamed { path, writer, .. } => {
                let writer = writer.expect("started");
                assert_eq!(writer.position(), expect.0);
                let (_, len) = writer.finish().unwrap();
                let bytes = std::fs::read(&path).unwrap();
                let _ = std::fs::remove_file(&path);
                assert_eq!(bytes.len() as u64, len);
                bytes
            }
        }
    }
}

/// A snapshot copied while commands go on (`freeze_begin`, then a step at a time) is byte for
/// byte the snapshot taken at its start: even when, before the copy is done, full commands
/// wrap the ring over records not yet copied, pending transfers it holds are posted, voided
/// or expire, and an atomic group fails after inserting into the index.
#[test]
fn a_snapshot_copied_while_commands_go_on_is_the_snapshot_at_its_start() {
    snapshot_copied_while_commands_go_on(false);
}

/// The same, streamed to a file piece by piece as it is copied.
#[test]
fn a_snapshot_streamed_while_commands_go_on_is_the_snapshot_at_its_start() {
    snapshot_copied_while_commands_go_on(true);
}

fn snapshot_copied_while_commands_go_on(streamed: bool) {
    let mut l = Ledger::funded();
    // Three pending transfers (still retained at the start) and a nearly full ring.
    let r = l.run(&Command::Transfers {
        flags: 0,
        transfers: &[pending(1, 10, 0), pending(2, 20, 0), pending(3, 30, 1)],
    });
    assert_eq!(r.results, [R::Ok, R::Ok, R::Ok]);
    for id in 0..90u128 {
        l.run(&Command::Transfers {
            flags: 0,
            transfers: &[transfer(10_000 + id, 1, 20, 1)],
        });
    }
    let mut at_start = Vec::new();
    l.engine.freeze().write_to(&mut at_start).unwrap();
    let (position, hash) = (l.engine.position(), l.engine.state_hash());

    assert!(l.engine.freeze_begin());
    assert!(!l.engine.freeze_begin(), "one copy at a time");
    assert!(l.engine.freezing());
    let mut copier = Copier::new(streamed);
    // One record and one index chunk copied: the rest is still to do.
    assert!(!copier.step(&mut l.engine, 1));
    // Pending transfers change state in place (post, void, expiry by log time).
    let post = l.run(&Command::PostPending {
        id: 50,
        pending_id: 1,
        amount: None,
    });
    assert_eq!(post.result, R::Ok);
    let void = l.run(&Command::VoidPending {
        id: 51,
        pending_id: 2,
    });
    assert_eq!(void.result, R::Ok);
    // An account created (and funded) during the copy is not part of it.
    let created = l.run(&Command::CreateAccount {
        id: 30,
        ledger: 1,
        flags: 0,
        code: 0,
    });
    assert_eq!(created.result, R::Ok);
    let funded = l.run(&Command::Deposit {
        transfer_id: 52,
        account_id: 30,
        amount: 5,
    });
    assert_eq!(funded.result, R::Ok);
    l.now_ns += 2 * SECOND_NS;
    // An atomic group whose last member fails: its inserts are undone.
    let group: Vec<TransferSpec> = (0..5u128)
        .map(|i| transfer(20_000 + i, 1, 20, 1))
        .chain(std::iter::once(transfer(20_009, 10, 20, 1 << 40)))
        .collect();
    let r = l.run(&Command::Transfers {
        flags: batch_flags::ATOMIC,
        transfers: &group,
    });
    assert!(r.results.iter().all(|&x| x != R::Ok));
    // Full commands: each appends the most a command may, over the oldest records (the
    // ring has 100 + 256 slots), before most of them were copied.
    for round in 0..4u128 {
        let full: Vec<TransferSpec> = (0..engine::TRANSFERS_PER_COMMAND_MAX as u128)
            .map(|i| transfer(100_000 + round * 1000 + i, 1, 20, 1))
            .collect();
        let r = l.run(&Command::Transfers {
            flags: 0,
            transfers: &full,
        });
        assert!(r.results.iter().all(|&x| x == R::Ok));
    }
    assert!(l.engine.transfer(10_000).is_none(), "evicted by now");
    while !copier.step(&mut l.engine, 4096) {}
    assert!(!l.engine.freezing());
    let copied = copier.bytes((position, hash));
    assert!(
        copied == at_start,
        "the copy differs from the snapshot at its start"
    );

    // The live engine went on; the copy restores to the state at its start.
    let restored = Engine::restore(*l.engine.config(), &copied[..]).unwrap();
    assert_eq!(restored.position(), position);
    assert_eq!(restored.state_hash(), hash);
    assert!(restored.transfer(10_000).is_some());
    // The next copy, begun and finished between commands, is the live state.
    assert!(l.engine.freeze_begin());
    let mut copier = Copier::new(streamed);
    while !copier.step(&mut l.engine, 256 << 10) {}
    let now = copier.bytes((l.engine.position(), l.engine.state_hash()));
    let mut eager = Vec::new();
    l.engine.freeze().write_to(&mut eager).unwrap();
    assert!(now == eager);
}

/// Asserts that no two of `hashes` (of states that differ) are equal.
fn all_different(hashes: &[u64]) {
    for (i, a) in hashes.iter().enumerate() {
        for (j, b) in hashes.iter().enumerate().skip(i + 1) {
            assert_ne!(
                a, b,
                "variants {i} and {j} leave different states, same hash"
            );
        }
    }
}
