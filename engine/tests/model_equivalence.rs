//! Property tests: long random command sequences (invalid ones, duplicates, session retries,
//! atomic groups with failing members, pending/post/void/expiry races, full tables, overflow)
//! through the engine and the reference model; every reply, the invariants after every
//! command, the final state, replay determinism and snapshot/restore equivalence are checked.
//!
//! `TALLY_PROPTEST_CASES=5000 cargo test -p engine --release --test model_equivalence` runs a
//! long version; the default keeps the suite fast.

mod model;

use engine::snapshot::SnapshotWriter;
use engine::{
    account_flags as af, batch_flags, transfer_flags, Account, Command, Engine, EngineConfig,
    EntryMeta, TransferSpec, LIST_LIMIT_MAX,
};
use model::{Kind, Model, Reply, State};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Create {
        id: u64,
        ledger: u32,
        flags: u16,
        code: u16,
    },
    Deposit {
        tid: u128,
        account: u64,
        amount: u64,
    },
    Withdraw {
        tid: u128,
        account: u64,
        amount: u64,
    },
    Transfers {
        flags: u16,
        transfers: Vec<TransferSpec>,
    },
    Post {
        id: u128,
        pending_id: u128,
        amount: Option<u64>,
    },
    Void {
        id: u128,
        pending_id: u128,
    },
    Invalid,
}

impl Op {
    fn command(&self) -> Command<'_> {
        match self {
            Op::Create {
                id,
                ledger,
                flags,
                code,
            } => Command::CreateAccount {
                id: *id,
                ledger: *ledger,
                flags: *flags,
                code: *code,
            },
            Op::Deposit {
                tid,
                account,
                amount,
            } => Command::Deposit {
                transfer_id: *tid,
                account_id: *account,
                amount: *amount,
            },
            Op::Withdraw {
                tid,
                account,
                amount,
            } => Command::Withdraw {
                transfer_id: *tid,
                account_id: *account,
                amount: *amount,
            },
            Op::Transfers { flags, transfers } => Command::Transfers {
                flags: *flags,
                transfers,
            },
            // u64::MAX is the schema's null ("all of it"), so it cannot travel as an amount.
            Op::Post {
                id,
                pending_id,
                amount,
            } => Command::PostPending {
                id: *id,
                pending_id: *pending_id,
                amount: amount.filter(|&a| a != u64::MAX),
            },
            Op::Void { id, pending_id } => Command::VoidPending {
                id: *id,
                pending_id: *pending_id,
            },
            Op::Invalid => Command::Invalid,
        }
    }
}

#[derive(Clone, Debug)]
struct Step {
    op: Op,
    /// Log time since the previous entry; negative when the leader's clock stepped back (a
    /// new leader whose clock is behind), which the engine's time must not follow.
    dt_ns: i64,
    session: u64,
    /// Resend one of the session's earlier commands instead: 0 = its last, k = k before.
    retry: Option<u64>,
}

const TRANSFER_IDS: u128 = 16;

fn config() -> EngineConfig {
    EngineConfig {
        accounts_max: 5,
        transfers_retained_max: 8,
        pending_max: 3,
        sessions_max: 2,
        ledgers_max: 2,
    }
}

fn account_id() -> impl Strategy<Value = u64> {
    model::gen::account_id(6)
}

fn transfer_id() -> impl Strategy<Value = u128> {
    prop_oneof![1 => Just(0u128), 40 => 1..=TRANSFER_IDS, 2 => Just((1u128 << 100) | 7)]
}

fn amount() -> impl Strategy<Value = u64> {
    model::gen::amount(12, 1)
}

fn ledger() -> impl Strategy<Value = u32> {
    model::gen::ledger(6)
}

fn transfer_spec() -> impl Strategy<Value = TransferSpec> {
    let flags = prop_oneof![30 => Just(0u16), 20 => Just(transfer_flags::PENDING), 1 => Just(2u16)];
    let timeout = prop_oneof![12 => Just(0u32), 1 => 1..=3u32, 1 => Just(u32::MAX)];
    (
        transfer_id(),
        account_id(),
        account_id(),
        amount(),
        ledger(),
        flags,
        0..2u16,
        timeout,
    )
        .prop_map(
            |(id, debit_account_id, credit_account_id, amount, ledger, flags, code, timeout_s)| {
                TransferSpec {
                    id,
                    debit_account_id,
                    credit_account_id,
                    amount,
                    ledger,
                    flags,
                    code,
                    timeout_s,
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let account_flags = prop_oneof![
        8 => Just(0u16),
        5 => Just(af::DEBITS_MUST_NOT_EXCEED_CREDITS),
        2 => Just(af::CREDITS_MUST_NOT_EXCEED_DEBITS),
        4 => Just(af::EXTERNAL),
        1 => Just(3u16),
        1 => Just(8u16),
    ];
    let batch = prop_oneof![15 => Just(0u16), 12 => Just(batch_flags::ATOMIC), 1 => Just(4u16)];
    prop_oneof![
        3 => (account_id(), ledger(), account_flags, 0..2u16)
            .prop_map(|(id, ledger, flags, code)| Op::Create { id, ledger, flags, code }),
        3 => (transfer_id(), account_id(), amount())
            .prop_map(|(tid, account, amount)| Op::Deposit { tid, account, amount }),
        2 => (transfer_id(), account_id(), amount())
            .prop_map(|(tid, account, amount)| Op::Withdraw { tid, account, amount }),
        6 => (batch, prop::collection::vec(transfer_spec(), 1..5))
            .prop_map(|(flags, transfers)| Op::Transfers { flags, transfers }),
        2 => (transfer_id(), transfer_id(), prop::option::of(amount()))
            .prop_map(|(id, pending_id, amount)| Op::Post { id, pending_id, amount }),
        1 => (transfer_id(), transfer_id()).prop_map(|(id, pending_id)| Op::Void { id, pending_id }),
        1 => Just(Op::Invalid),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let dt = prop_oneof![
        4 => Just(0i64),
        2 => Just(500_000_000i64),
        2 => Just(1_000_000_000i64),
        1 => Just(2_000_000_000i64),
        1 => Just(-1_500_000_000i64),
    ];
    let retry = prop_oneof![8 => Just(None), 1 => Just(Some(0u64)), 1 => (1..3u64).prop_map(Some)];
    (op(), dt, 0..4u64, retry).prop_map(|(op, dt_ns, session, retry)| Step {
        op,
        dt_ns,
        session,
        retry,
    })
}

/// Turns steps into log entries: positions 1.., increasing time, per-session sequence numbers,
/// retries resending an earlier (session, seq) with its original command.
fn log(steps: &[Step]) -> Vec<(EntryMeta, Op)> {
    let mut out: Vec<(EntryMeta, Op)> = Vec::new();
    let mut history: std::collections::BTreeMap<u64, Vec<(u64, Op)>> = Default::default();
    let mut now = 1_000_000_000_000u64;
    for (i, s) in steps.iter().enumerate() {
        now = now
            .checked_add_signed(s.dt_ns)
            .expect("log time stays positive");
        let h = history.entry(s.session).or_default();
        let (seq, op) = match (s.retry, s.session) {
            (Some(back), sid) if sid != 0 && !h.is_empty() => {
                let k = h.len().saturating_sub(1 + back as usize);
                h[k].clone()
            }
            _ => {
                let seq = h.last().map_or(1, |(seq, _)| seq + 1);
                h.push((seq, s.op.clone()));
                (seq, s.op.clone())
            }
        };
        let meta = EntryMeta {
            position: i as u64 + 1,
            timestamp_ns: now,
            session_id: s.session,
            client_seq: seq,
        };
        out.push((meta, op));
    }
    out
}

/// Applies `op` through the byte path: generated encoder, `Engine::apply`, generated decoder.
fn engine_reply(e: &mut Engine, meta: &EntryMeta, op: &Op) -> Reply {
    let mut command = vec![0u8; 64 * 1024];
    let n = model::sbe::encode_command(&op.command(), &mut command);
    let mut reply = vec![0u8; engine::REPLY_LEN_MAX];
    let len = e.apply(meta, &command[..n], &mut reply);
    model::sbe::decode_reply(&reply[..len])
}

/// Applies `op` through the typed path.
fn engine_reply_typed(e: &mut Engine, meta: &EntryMeta, op: &Op) -> Reply {
    let o = e.apply_command(meta, &op.command());
    Reply {
        position: o.position,
        timestamp_ns: o.timestamp_ns,
        client_seq: o.client_seq,
        result: o.result,
        results: o.results.to_vec(),
        balances: o.balances.to_vec(),
    }
}

fn all_transfer_ids() -> impl Iterator<Item = u128> {
    (1..=TRANSFER_IDS).chain(std::iter::once((1u128 << 100) | 7))
}

/// `GetTransfer` answers the model's for every id the tests use: a retained transfer, or an
/// open pending transfer whose record may have been evicted; none for others.
fn compare_transfers(e: &Engine, m: &Model) -> Result<(), TestCaseError> {
    for id in all_transfer_ids() {
        let got = e.transfer(id);
        let want = m.existing(id);
        prop_assert_eq!(got.is_some(), want.is_some(), "transfer {} presence", id);
        if let (Some(g), Some(w)) = (got, want.as_ref()) {
            prop_assert_eq!(
                (g.debit_account_id, g.credit_account_id, g.amount, g.ledger),
                (w.debit, w.credit, w.amount, w.ledger)
            );
            prop_assert_eq!(
                (g.applied_position, g.timestamp_ns),
                (w.position, w.timestamp_ns)
            );
            let kind = match w.kind {
                Kind::Transfer => engine::TransferKind::Transfer,
                Kind::Deposit => engine::TransferKind::Deposit,
                Kind::Withdraw => engine::TransferKind::Withdraw,
                Kind::Post => engine::TransferKind::PostPending,
                Kind::Void => engine::TransferKind::VoidPending,
            };
            let state = match w.state {
                State::Posted => engine::TransferState::Posted,
                State::Pending => engine::TransferState::Pending,
                State::PendingPosted => engine::TransferState::PendingPosted,
                State::PendingVoided => engine::TransferState::PendingVoided,
                State::PendingExpired => engine::TransferState::PendingExpired,
            };
            prop_assert_eq!((g.kind, g.state, g.timeout_s), (kind, state, w.timeout_s));
        }
    }
    Ok(())
}

fn compare_state(e: &Engine, m: &Model) -> Result<(), TestCaseError> {
    let mut accounts: Vec<Account> = e.accounts().copied().collect();
    accounts.sort_by_key(|a| a.id);
    let expected: Vec<Account> = m.accounts.values().copied().collect();
    prop_assert_eq!(&accounts, &expected);
    compare_transfers(e, m)?;
    for ledger in [None, Some(1), Some(2)] {
        for after in [0u64, 2] {
            let mut page = [Account::default(); LIST_LIMIT_MAX];
            let n = e.list_accounts(ledger, after, 3, &mut page);
            let want: Vec<Account> = m
                .accounts
                .range(after + 1..)
                .map(|(_, a)| *a)
                .filter(|a| ledger.is_none_or(|l| l == a.ledger))
                .take(3)
                .collect();
            prop_assert_eq!(&page[..n], &want[..]);
        }
    }
    Ok(())
}

/// The queries' answers of two engines agree (`GetTransfer` for every id the tests use,
/// open pending transfers whose records were evicted among them; every `ListAccounts` page).
fn same_answers(a: &Engine, b: &Engine) -> Result<(), TestCaseError> {
    for id in all_transfer_ids() {
        prop_assert_eq!(a.transfer(id), b.transfer(id), "transfer {}", id);
    }
    for ledger in [None, Some(1), Some(2), Some(3)] {
        for after in 0..=6u64 {
            let mut x = [Account::default(); LIST_LIMIT_MAX];
            let mut y = [Account::default(); LIST_LIMIT_MAX];
            let n = a.list_accounts(ledger, after, 2, &mut x);
            let m = b.list_accounts(ledger, after, 2, &mut y);
            prop_assert_eq!(&x[..n], &y[..m]);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: model::proptest_cases(), ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_reference_model_reply_for_reply(steps in prop::collection::vec(step(), 1..250)) {
        let entries = log(&steps);
        let mut e = Engine::new(config()).unwrap();
        let mut m = Model::new(config());
        for (meta, op) in &entries {
            let want = m.apply(meta, &op.command());
            let got = engine_reply(&mut e, meta, op);
            prop_assert_eq!(&got, &want, "at position {} applying {:?}", meta.position, op);
            if let Err(why) = e.check_invariants() {
                return Err(TestCaseError::fail(format!("after position {}: {why}", meta.position)));
            }
            compare_transfers(&e, &m)?;
        }
        compare_state(&e, &m)?;
    }

    #[test]
    fn replaying_the_same_log_gives_the_same_hash_at_every_position(steps in prop::collection::vec(step(), 1..150)) {
        let entries = log(&steps);
        let mut a = Engine::new(config()).unwrap();
        let mut b = Engine::new(config()).unwrap();
        for (meta, op) in &entries {
            let ra = engine_reply(&mut a, meta, op);
            let rb = engine_reply_typed(&mut b, meta, op);
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(a.state_hash(), b.state_hash());
            prop_assert_eq!(a.position(), meta.position);
        }
    }

    #[test]
    fn restoring_a_snapshot_then_continuing_matches_the_uninterrupted_run(
        steps in prop::collection::vec(step(), 1..200),
        cut in any::<prop::sample::Index>(),
    ) {
        let entries = log(&steps);
        let cut = cut.index(entries.len() + 1);
        let mut whole = Engine::new(config()).unwrap();
        let mut resumed = Engine::new(config()).unwrap();
        for (meta, op) in &entries[..cut] {
            engine_reply(&mut whole, meta, op);
            engine_reply(&mut resumed, meta, op);
        }
        let mut bytes = Vec::new();
        if cut % 2 == 0 {
            resumed.snapshot(&mut bytes).unwrap();
        } else {
            resumed.freeze().write_to(&mut bytes).unwrap();
        }
        let mut resumed = Engine::restore(config(), &bytes[..]).unwrap();
        prop_assert_eq!(resumed.state_hash(), whole.state_hash());
        prop_assert_eq!(resumed.position(), whole.position());
        same_answers(&whole, &resumed)?;
        // The same snapshot in format version 3 (pending records without the creating
        // command's position and log time) restores too, and goes on the same.
        let mut old = Engine::restore(config(), &model::as_version_3(&bytes)[..]).unwrap();
        prop_assert_eq!(old.state_hash(), whole.state_hash());
        for id in all_transfer_ids() {
            let (w, o) = (whole.transfer(id), old.transfer(id));
            // An open pending transfer whose record was evicted: position unknown, log time
            // from its deadline (none without a timeout).
            let evicted = w.map(|w| engine::TransferInfo {
                applied_position: 0,
                timestamp_ns: if w.timeout_s == 0 { 0 } else { w.timestamp_ns },
                ..w
            });
            prop_assert!(o == w || (o == evicted && o.unwrap().state == engine::TransferState::Pending),
                "transfer {}: {:?} from version 3, {:?} uninterrupted", id, o, w);
        }
        for (meta, op) in &entries[cut..] {
            let a = engine_reply(&mut whole, meta, op);
            let b = engine_reply(&mut resumed, meta, op);
            prop_assert_eq!(&a, &b, "at position {}", meta.position);
            prop_assert_eq!(whole.state_hash(), resumed.state_hash());
            prop_assert_eq!(engine_reply(&mut old, meta, op), a);
            prop_assert_eq!(old.state_hash(), whole.state_hash());
        }
        same_answers(&whole, &resumed)?;
        let mut x = Vec::new();
        let mut y = Vec::new();
        whole.snapshot(&mut x).unwrap();
        resumed.snapshot(&mut y).unwrap();
        // Byte-identical apart from pending-table order, which depends on slab slot reuse.
        prop_assert_eq!(x.len(), y.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: model::proptest_cases(), ..ProptestConfig::default() })]

    /// A snapshot copied a step at a time while random commands go on (`freeze_begin`, then
    /// `freeze_step_by` into memory or `freeze_pieces` streamed into a file) is byte for byte
    /// the snapshot taken where it began.
    #[test]
    fn a_snapshot_copied_while_commands_go_on_equals_the_snapshot_where_it_began(
        steps in prop::collection::vec(step(), 1..200),
        cut in any::<prop::sample::Index>(),
        every in 1usize..6,
        bytes_per_step in 1usize..9000,
        streamed in any::<bool>(),
    ) {
        let entries = log(&steps);
        let cut = cut.index(entries.len() + 1);
        let mut e = Engine::new(config()).unwrap();
        for (meta, op) in &entries[..cut] {
            engine_reply(&mut e, meta, op);
        }
        let mut at_start = Vec::new();
        e.freeze().write_to(&mut at_start).unwrap();
        prop_assert!(e.freeze_begin());
        let path = std::env::temp_dir().join(format!(
            "tally-model-streamed-{}-{:?}.snap",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut writer: Option<SnapshotWriter> = None;
        let mut frozen = None;
        let mut ended = false;
        let mut step = |e: &mut Engine, frozen: &mut Option<_>, ended: &mut bool| {
            if streamed {
                e.freeze_pieces(bytes_per_step, &mut |piece| match &mut writer {
                    None => {
                        let file = std::fs::File::create(&path).unwrap();
                        writer = Some(SnapshotWriter::start(file, piece).unwrap());
                    }
                    Some(w) => *ended |= w.write(piece).unwrap(),
                });
            } else if frozen.is_none() {
                *frozen = e.freeze_step_by(bytes_per_step);
                *ended = frozen.is_some();
            }
        };
        for (i, (meta, op)) in entries[cut..].iter().enumerate() {
            engine_reply(&mut e, meta, op);
            if !ended && i % every == 0 {
                step(&mut e, &mut frozen, &mut ended);
            }
        }
        while !ended {
            step(&mut e, &mut frozen, &mut ended);
        }
        let copied = if streamed {
            let (_, len) = writer.take().unwrap().finish().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let _ = std::fs::remove_file(&path);
            prop_assert_eq!(bytes.len() as u64, len);
            bytes
        } else {
            let mut bytes = Vec::new();
            frozen.take().unwrap().write_to(&mut bytes).unwrap();
            bytes
        };
        prop_assert!(copied == at_start, "the copy differs from the snapshot where it began");
    }
}

/// Guards the generator: a sequence set that never reached a code would test nothing about it.
#[test]
fn the_random_sequences_reach_every_command_result_code() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeMap;
    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<engine::ResultCode, u64> = BTreeMap::new();
    let mut expiries = 0u64;
    for _ in 0..64 {
        let steps = prop::collection::vec(step(), 200..250)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut e = Engine::new(config()).unwrap();
        for (meta, op) in log(&steps) {
            let o = e.apply_command(&meta, &op.command());
            *seen.entry(o.result).or_default() += 1;
            for r in o.results {
                *seen.entry(*r).or_default() += 1;
            }
        }
        for id in all_transfer_ids() {
            if e.transfer(id)
                .is_some_and(|t| t.state == engine::TransferState::PendingExpired)
            {
                expiries += 1;
            }
        }
    }
    let missing: Vec<_> = engine::ResultCode::ALL
        .iter()
        .filter(|c| !seen.contains_key(c))
        .filter(|c| {
            !matches!(
                c,
                engine::ResultCode::NotReady
                    | engine::ResultCode::TransferNotFound
                    | engine::ResultCode::Busy
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "never produced: {missing:?}; seen: {seen:?}"
    );
    assert!(expiries > 0, "no pending transfer expired");
}

/// Accounts for the listing property: ids increasing, decreasing, random or clustered (so
/// that they fill, split and interleave the listing orders' blocks), on a few ledgers (the
/// largest among them) or on one.
fn listed_accounts() -> impl Strategy<Value = Vec<(u64, u32)>> {
    let one = (0..5u8, any::<u64>(), 0..8u32);
    (prop::collection::vec(one, 0..2_500), any::<bool>()).prop_map(|(raw, one_ledger)| {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for (k, (mode, x, l)) in raw.into_iter().enumerate() {
            let k = k as u64;
            let id = match mode {
                0 | 1 => 1_000_000 + k * 3,
                2 => u64::MAX - k,
                3 => x | 1,
                _ => 1 + x % 5_000,
            };
            let ledger = match (one_ledger, l) {
                (true, _) => 9,
                (_, 0..=3) => 1,
                (_, 4 | 5) => 2,
                (_, 6) => 3,
                _ => u32::MAX,
            };
            if seen.insert(id) {
                out.push((id, ledger));
            }
        }
        out
    })
}

/// A `ListAccounts` query: ledger, after id, limit (each at its edges or from the accounts).
fn list_query() -> impl Strategy<Value = (u8, u64, u8, u32, u8)> {
    (0..6u8, any::<u64>(), 0..7u8, any::<u32>(), 0..5u8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: model::proptest_cases(), ..ProptestConfig::default() })]

    /// `ListAccounts` pages are the model's (a scan of the accounts by id): up to `limit` of
    /// the accounts with id > `after_id`, of one ledger if given, in id order, for thousands
    /// of accounts created in any order, before and after a restore (with accounts created
    /// after it), up to a full account table, without the listing orders outgrowing the
    /// memory reserved for them; with a table large enough for the orders to keep
    /// fingerprints, or exactly as large as the accounts.
    #[test]
    fn account_pages_are_the_models_scan_before_and_after_a_restore(
        accounts in listed_accounts(),
        cut in any::<prop::sample::Index>(),
        queries in prop::collection::vec(list_query(), 40),
        fingerprinted in any::<bool>(),
    ) {
        let config = EngineConfig {
            accounts_max: if fingerprinted {
                engine::LIST_FINGERPRINT_MIN_ACCOUNTS
            } else {
                accounts.len().max(1) as u32
            },
            transfers_retained_max: 4,
            pending_max: 1,
            sessions_max: 1,
            ledgers_max: 1,
        };
        let reserved = Engine::new(config).unwrap().reserved_bytes();
        let cut = cut.index(accounts.len() + 1);
        let mut e = Engine::new(config).unwrap();
        let mut m: std::collections::BTreeMap<u64, u32> = Default::default();
        let check = |e: &Engine, m: &std::collections::BTreeMap<u64, u32>| -> Result<(), TestCaseError> {
            let mut page = [Account::default(); LIST_LIMIT_MAX];
            let ids: Vec<u64> = m.keys().copied().collect();
            let pick = |x: u64| if ids.is_empty() { x } else { ids[(x % ids.len() as u64) as usize] };
            for &(l, x, a, y, n) in &queries {
                let ledger = match l {
                    0 | 1 => None,
                    2 => Some(m.get(&pick(x)).copied().unwrap_or(1)),
                    3 => Some(0),
                    4 => Some(u32::MAX),
                    _ => Some(y),
                };
                let after = match a {
                    0 => 0,
                    1 => u64::MAX,
                    2 => pick(x),
                    3 => pick(x).wrapping_sub(1),
                    4 => pick(x).wrapping_add(1),
                    5 => x,
                    _ => u64::MAX - 1,
                };
                let limit = match n {
                    0 => 0,
                    1 => 1,
                    2 => LIST_LIMIT_MAX,
                    3 => LIST_LIMIT_MAX + 1 + y as usize % 100,
                    _ => y as usize % LIST_LIMIT_MAX,
                };
                let got = e.list_accounts(ledger, after, limit, &mut page);
                let want: Vec<(u64, u32)> = m
                    .range(after.saturating_add(1)..)
                    .filter(|_| after != u64::MAX)
                    .filter(|(_, &l)| ledger.is_none_or(|w| w == l))
                    .map(|(&id, &l)| (id, l))
                    .take(limit.min(LIST_LIMIT_MAX))
                    .collect();
                let got: Vec<(u64, u32)> = page[..got].iter().map(|a| (a.id, a.ledger)).collect();
                prop_assert_eq!(got, want, "ledger {:?} after {} limit {}", ledger, after, limit);
            }
            // Every account once, walking full pages, of all ledgers and of each.
            let ledgers: std::collections::BTreeSet<u32> = m.values().copied().collect();
            for ledger in std::iter::once(None).chain(ledgers.into_iter().map(Some)) {
                let mut walked = Vec::new();
                let mut after = 0;
                loop {
                    let n = e.list_accounts(ledger, after, LIST_LIMIT_MAX, &mut page);
                    walked.extend(page[..n].iter().map(|a| a.id));
                    if n < LIST_LIMIT_MAX {
                        break;
                    }
                    after = page[n - 1].id;
                }
                let want: Vec<u64> = m
                    .iter()
                    .filter(|(_, &l)| ledger.is_none_or(|w| w == l))
                    .map(|(&id, _)| id)
                    .collect();
                prop_assert_eq!(walked, want, "all pages of {:?}", ledger);
            }
            Ok(())
        };
        let mut position = 0;
        let mut create = |e: &mut Engine, m: &mut std::collections::BTreeMap<u64, u32>, &(id, ledger): &(u64, u32)| {
            position += 1;
            let meta = EntryMeta { position, timestamp_ns: position, session_id: 0, client_seq: 0 };
            let r = e.apply_command(&meta, &Command::CreateAccount { id, ledger, flags: 0, code: 0 });
            m.insert(id, ledger);
            r.result
        };
        for a in &accounts[..cut] {
            prop_assert_eq!(create(&mut e, &mut m, a), engine::ResultCode::Ok);
        }
        check(&e, &m)?;
        let mut bytes = Vec::new();
        e.snapshot(&mut bytes).unwrap();
        let mut e = Engine::restore(config, &bytes[..]).unwrap();
        check(&e, &m)?;
        for a in &accounts[cut..] {
            prop_assert_eq!(create(&mut e, &mut m, a), engine::ResultCode::Ok);
        }
        check(&e, &m)?;
        prop_assert_eq!(e.reserved_bytes(), reserved);
    }
}
