//! The fast path of posted transfers (`Batch::transfer`, taken while no pending transfer is
//! open) against the general path (`create_transfer` / `transfer_checked`): the same random
//! commands applied to two engines, one as it runs and one with every transfer forced through
//! the general path (`Engine::force_general_path`), must give byte-identical replies, the
//! same state hash after every command, byte-identical snapshots and the same answers.
//! The replies are also checked against the reference model.
//!
//! The commands aim at what the two paths could answer differently: transfer ids from a small
//! pool (duplicates within and across commands), resent transfers with one field changed,
//! ids crowding one retention index bucket (so that inserts overflow it and an atomic group's
//! undo must repair its overflow word), a retention of 1, 4, 9 or 24 transfers (ids wrap out
//! of it), accounts under either balance rule, amounts near `u64::MAX`, unknown accounts,
//! wrong ledgers, zero ids and amounts, atomic groups failing at every position, pending
//! transfers opening in the middle of a command (the rest of it switches paths), and
//! snapshots taken (and copied while commands go on) and restored in the middle.
//!
//! `TALLY_PROPTEST_CASES=5000 cargo test -p engine --release --test fast_path_equivalence`
//! runs a long version; the default keeps the suite fast.

mod model;

use engine::{
    account_flags as af, batch_flags, transfer_flags, Account, Command, Engine, EngineConfig,
    EntryMeta, ResultCode, TransferPaths, TransferSpec,
};
use model::Model;
use proptest::prelude::*;

/// Transfer ids of the plain pool: `1..=POOL_IDS`.
const POOL_IDS: u128 = 12;
/// Ids that share one retention index bucket (see [`crowded_ids`]).
const CROWDED_IDS: usize = 16;
/// Account ids the commands name: `0..=ACCOUNT_IDS` (0 is invalid; the setup creates 1..=8).
const ACCOUNT_IDS: u64 = 10;

/// `filler` accounts beyond the nine the commands name (see [`run`]).
fn config(retained_max: u32, filler: u64) -> EngineConfig {
    EngineConfig {
        accounts_max: 9 + filler as u32,
        transfers_retained_max: retained_max,
        pending_max: 3,
        sessions_max: 2,
        ledgers_max: 2,
    }
}

/// [`CROWDED_IDS`] ids with one home bucket (of ten entries) in `e`'s retention index, as the
/// engine itself computes it (`Engine::retention_home_bucket`): inserting them all overflows
/// it. Engines of one configuration share the layout.
fn crowded_ids(e: &Engine) -> Vec<u128> {
    let first = 1_000u128;
    let home = e.retention_home_bucket(first);
    (first..)
        .filter(|&id| e.retention_home_bucket(id) == home)
        .take(CROWDED_IDS)
        .collect()
}

/// A transfer id: zero, the small pool, a crowded id (by index), or one with high bits.
#[derive(Clone, Copy, Debug)]
enum IdGen {
    Zero,
    Pool(u128),
    Crowded(usize),
    High,
}

fn id_gen() -> impl Strategy<Value = IdGen> {
    prop_oneof![
        1 => Just(IdGen::Zero),
        24 => (1..=POOL_IDS).prop_map(IdGen::Pool),
        10 => (0..CROWDED_IDS).prop_map(IdGen::Crowded),
        1 => Just(IdGen::High),
    ]
}

fn resolve_id(g: IdGen, crowded: &[u128]) -> u128 {
    match g {
        IdGen::Zero => 0,
        IdGen::Pool(id) => id,
        IdGen::Crowded(k) => crowded[k],
        IdGen::High => (1u128 << 100) | 7,
    }
}

fn account_id() -> impl Strategy<Value = u64> {
    model::gen::account_id(ACCOUNT_IDS)
}

fn amount() -> impl Strategy<Value = u64> {
    model::gen::amount(20, 2)
}

fn ledger() -> impl Strategy<Value = u32> {
    model::gen::ledger(8)
}

/// One transfer of a command, before ids are resolved.
#[derive(Clone, Debug)]
enum TransferGen {
    /// A new transfer: `spec` with its id (0 there) drawn by `id`.
    Fresh { id: IdGen, spec: TransferSpec },
    /// The transfer `back` transfers before this one (in this command or an earlier one),
    /// resent with field `change` changed (0: none).
    Resend { back: usize, change: u8 },
}

fn transfer_gen() -> impl Strategy<Value = TransferGen> {
    let flags = prop_oneof![40 => Just(0u16), 3 => Just(transfer_flags::PENDING), 1 => Just(2u16)];
    let timeout = prop_oneof![20 => Just(0u32), 2 => 1..=3u32, 1 => Just(u32::MAX)];
    // Mostly two accounts of one ledger (so that most transfers get past the account checks).
    let accounts = prop_oneof![
        6 => (3..=6u64, 3..=6u64, Just(1u32)),
        2 => (prop_oneof![Just(2u64), 7..=8u64], 7..=8u64, Just(2u32)),
        1 => (Just(1u64), 3..=6u64, Just(1u32)),
        3 => (account_id(), account_id(), ledger()),
    ];
    let change = prop_oneof![3 => Just(0u8), 7 => 1..8u8];
    let fresh = (id_gen(), accounts, amount(), flags, 0..2u16, timeout).prop_map(
        |(id, (debit, credit, ledger), amount, flags, code, timeout_s)| TransferGen::Fresh {
            id,
            spec: TransferSpec {
                id: 0,
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                ledger,
                flags,
                code,
                timeout_s,
            },
        },
    );
    prop_oneof![
        3 => fresh,
        1 => (0..12usize, change).prop_map(|(back, change)| TransferGen::Resend { back, change }),
    ]
}

/// Why the designed member of a failing atomic group fails.
#[derive(Clone, Copy, Debug)]
enum Failure {
    ZeroId,
    ZeroAmount,
    UnknownAccount,
    SameAccount,
    LedgerMismatch,
    Overflow,
    /// The group's first member again, same fields or one changed.
    Duplicate(bool),
    /// Debits account 5 (no overdraft) beyond what it could hold.
    Overdraft,
    /// Credits account 6 (credits must not exceed debits) beyond its debits.
    ExceedsDebits,
}

fn failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        Just(Failure::ZeroId),
        Just(Failure::ZeroAmount),
        Just(Failure::UnknownAccount),
        Just(Failure::SameAccount),
        Just(Failure::LedgerMismatch),
        Just(Failure::Overflow),
        any::<bool>().prop_map(Failure::Duplicate),
        Just(Failure::Overdraft),
        Just(Failure::ExceedsDebits),
    ]
}

/// An account to create.
#[derive(Clone, Copy, Debug)]
struct NewAccount {
    id: u64,
    ledger: u32,
    flags: u16,
}

/// A deposit, or a withdrawal (`withdraw`), with an id of type `I`.
#[derive(Clone, Copy, Debug)]
struct Movement<I> {
    withdraw: bool,
    id: I,
    account: u64,
    amount: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Create(NewAccount),
    Movement(Movement<IdGen>),
    Transfers {
        flags: u16,
        transfers: Vec<TransferGen>,
    },
    /// An atomic group of `len` transfers between accounts 3 and 4 (no balance rule, ledger 1)
    /// whose member `at` fails (`at` modulo `len`), its ids fresh (crowded half the time);
    /// with `pending_first`, its first member is a pending transfer, so the rest switch paths.
    FailingGroup {
        len: usize,
        at: usize,
        why: Failure,
        crowded: bool,
        pending_first: bool,
    },
    /// Posted transfers (3 to 4, amount 1) with `count` of the crowded ids from `start` on:
    /// enough of them fill their bucket, and the rest overflow it.
    Crowd {
        start: usize,
        count: usize,
    },
    Post {
        id: IdGen,
        pending: IdGen,
        amount: Option<u64>,
    },
    Void {
        id: IdGen,
        pending: IdGen,
    },
    /// Snapshot both engines, restore both, go on with the restored ones.
    Restore {
        frozen: bool,
    },
    /// Begin copying a snapshot of both while commands go on (a step after each command).
    FreezeBegin {
        bytes_per_step: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let account_flags = prop_oneof![
        4 => Just(0u16),
        2 => Just(af::DEBITS_MUST_NOT_EXCEED_CREDITS),
        2 => Just(af::CREDITS_MUST_NOT_EXCEED_DEBITS),
        1 => Just(af::EXTERNAL),
    ];
    let batch = prop_oneof![10 => Just(0u16), 10 => Just(batch_flags::ATOMIC), 1 => Just(4u16)];
    let transfers = prop_oneof![
        4 => prop::collection::vec(transfer_gen(), 1..6),
        1 => prop::collection::vec(transfer_gen(), 6..40),
    ];
    prop_oneof![
        1 => (1..=ACCOUNT_IDS, ledger(), account_flags)
            .prop_map(|(id, ledger, flags)| Op::Create(NewAccount { id, ledger, flags })),
        5 => (prop::bool::weighted(0.4), id_gen(), account_id(), amount()).prop_map(
            |(withdraw, id, account, amount)| Op::Movement(Movement { withdraw, id, account, amount })
        ),
        14 => (batch, transfers).prop_map(|(flags, transfers)| Op::Transfers { flags, transfers }),
        4 => (1..12usize, 0..12usize, failure(), any::<bool>(), prop::bool::weighted(0.25))
            .prop_map(|(len, at, why, crowded, pending_first)| Op::FailingGroup {
                len, at, why, crowded, pending_first,
            }),
        2 => (0..CROWDED_IDS, 8..=CROWDED_IDS).prop_map(|(start, count)| Op::Crowd { start, count }),
        2 => (id_gen(), id_gen(), prop::option::weighted(0.5, 1..80u64))
            .prop_map(|(id, pending, amount)| Op::Post { id, pending, amount }),
        1 => (id_gen(), id_gen()).prop_map(|(id, pending)| Op::Void { id, pending }),
        1 => any::<bool>().prop_map(|frozen| Op::Restore { frozen }),
        1 => (64usize..4096).prop_map(|bytes_per_step| Op::FreezeBegin { bytes_per_step }),
    ]
}

#[derive(Clone, Debug)]
struct Step {
    op: Op,
    /// Log time since the previous entry, in seconds (pending timeouts are 1 to 3 s).
    dt_s: u64,
}

fn step() -> impl Strategy<Value = Step> {
    let dt = prop_oneof![6 => Just(0u64), 2 => Just(1u64), 1 => Just(2u64), 1 => Just(4u64)];
    (op(), dt).prop_map(|(op, dt_s)| Step { op, dt_s })
}

/// A whole case: the retention, the flags of accounts 3..=8 (5 is always no-overdraft, 6
/// always credits-must-not-exceed-debits) and the steps.
#[derive(Clone, Debug)]
struct Case {
    retained_max: u32,
    flags: [u16; 4],
    steps: Vec<Step>,
}

fn case(steps: std::ops::Range<usize>) -> impl Strategy<Value = Case> {
    let rule = prop_oneof![
        2 => Just(0u16),
        1 => Just(af::DEBITS_MUST_NOT_EXCEED_CREDITS),
        1 => Just(af::CREDITS_MUST_NOT_EXCEED_DEBITS),
    ];
    (
        prop_oneof![Just(1u32), Just(4u32), Just(9u32), Just(24u32)],
        [rule.clone(), rule.clone(), rule.clone(), rule],
        prop::collection::vec(step(), steps),
    )
        .prop_map(|(retained_max, flags, steps)| Case {
            retained_max,
            flags,
            steps,
        })
}

/// A command of the log, as applied.
#[derive(Clone, Debug)]
enum Entry {
    Command(OwnedCommand),
    Restore { frozen: bool },
    FreezeBegin { bytes_per_step: usize },
}

#[derive(Clone, Debug)]
enum OwnedCommand {
    Create(NewAccount),
    Movement(Movement<u128>),
    Transfers {
        flags: u16,
        transfers: Vec<TransferSpec>,
    },
    Post {
        id: u128,
        pending: u128,
        amount: Option<u64>,
    },
    Void {
        id: u128,
        pending: u128,
    },
}

impl OwnedCommand {
    fn command(&self) -> Command<'_> {
        match self {
            &OwnedCommand::Create(NewAccount { id, ledger, flags }) => Command::CreateAccount {
                id,
                ledger,
                flags,
                code: 0,
            },
            &OwnedCommand::Movement(Movement {
                withdraw,
                id: transfer_id,
                account: account_id,
                amount,
            }) => {
                if withdraw {
                    Command::Withdraw {
                        transfer_id,
                        account_id,
                        amount,
                    }
                } else {
                    Command::Deposit {
                        transfer_id,
                        account_id,
                        amount,
                    }
                }
            }
            OwnedCommand::Transfers { flags, transfers } => Command::Transfers {
                flags: *flags,
                transfers,
            },
            OwnedCommand::Post {
                id,
                pending,
                amount,
            } => Command::PostPending {
                id: *id,
                pending_id: *pending,
                amount: *amount,
            },
            OwnedCommand::Void { id, pending } => Command::VoidPending {
                id: *id,
                pending_id: *pending,
            },
        }
    }
}

/// The setup: externals 1 (ledger 1) and 2 (ledger 2); accounts 3..=6 on ledger 1 and 7, 8
/// on ledger 2 (5: no overdraft, 6: credits must not exceed debits, the others as the case
/// says); deposits into every account; account 6 and 8 are debited so that they may be
/// credited.
fn setup(case: &Case) -> Vec<OwnedCommand> {
    let mut out = vec![
        OwnedCommand::Create(NewAccount {
            id: 1,
            ledger: 1,
            flags: af::EXTERNAL,
        }),
        OwnedCommand::Create(NewAccount {
            id: 2,
            ledger: 2,
            flags: af::EXTERNAL,
        }),
    ];
    let flags = [
        0,
        0,
        af::DEBITS_MUST_NOT_EXCEED_CREDITS,
        af::CREDITS_MUST_NOT_EXCEED_DEBITS,
        case.flags[0],
        case.flags[1],
    ];
    for (k, flags) in flags.into_iter().enumerate() {
        let id = 3 + k as u64;
        let ledger = if id <= 6 { 1 } else { 2 };
        out.push(OwnedCommand::Create(NewAccount { id, ledger, flags }));
    }
    // Ids far from the pools, so that they never collide with the commands' ids.
    let mut tid = 1u128 << 64;
    for account in 3..=8u64 {
        for (withdraw, amount) in [(false, 100), (true, 40)] {
            tid += 1;
            out.push(OwnedCommand::Movement(Movement {
                withdraw,
                id: tid,
                account,
                amount,
            }));
        }
    }
    out
}

/// Turns the steps into the log: `filler` accounts created first (ids from 100, ledger 1),
/// then the setup, then the steps, with ids resolved, resent transfers looked up and
/// failing groups built.
fn log(case: &Case, filler: u64, crowded: &[u128]) -> Vec<(u64, Entry)> {
    let filler = (100..100 + filler).map(|id| {
        OwnedCommand::Create(NewAccount {
            id,
            ledger: 1,
            flags: 0,
        })
    });
    let mut out: Vec<(u64, Entry)> = filler
        .chain(setup(case))
        .map(|c| (0, Entry::Command(c)))
        .collect();
    let mut history: Vec<TransferSpec> = Vec::new();
    let mut fresh = 1u128 << 80;
    for s in &case.steps {
        let id = |g| resolve_id(g, crowded);
        let entry = match &s.op {
            Op::Create(a) => Entry::Command(OwnedCommand::Create(*a)),
            Op::Movement(m) => Entry::Command(OwnedCommand::Movement(Movement {
                withdraw: m.withdraw,
                id: id(m.id),
                account: m.account,
                amount: m.amount,
            })),
            Op::Transfers { flags, transfers } => {
                let mut specs = Vec::new();
                for t in transfers {
                    let spec = match *t {
                        TransferGen::Fresh { id: tid, spec } => TransferSpec {
                            id: id(tid),
                            ..spec
                        },
                        TransferGen::Resend { back, change } => {
                            let Some(&old) = history.iter().rev().nth(back % history.len().max(1))
                            else {
                                continue;
                            };
                            resend(old, change)
                        }
                    };
                    history.push(spec);
                    specs.push(spec);
                }
                if specs.is_empty() {
                    continue;
                }
                Entry::Command(OwnedCommand::Transfers {
                    flags: *flags,
                    transfers: specs,
                })
            }
            Op::FailingGroup {
                len,
                at,
                why,
                crowded: use_crowded,
                pending_first,
            } => {
                let mut specs: Vec<TransferSpec> = (0..*len)
                    .map(|k| {
                        fresh += 1;
                        let id = if *use_crowded {
                            crowded[(fresh as usize + k) % CROWDED_IDS]
                        } else {
                            fresh
                        };
                        TransferSpec::posted(id, 3 + (k as u64 % 2), 4 - (k as u64 % 2), 1, 1)
                    })
                    .collect();
                if *pending_first {
                    specs[0].flags = transfer_flags::PENDING;
                    specs[0].timeout_s = 2;
                }
                let at = at % len;
                let first = specs[0];
                let t = &mut specs[at];
                match why {
                    Failure::ZeroId => t.id = 0,
                    Failure::ZeroAmount => t.amount = 0,
                    Failure::UnknownAccount => t.credit_account_id = 0xdead,
                    Failure::SameAccount => t.credit_account_id = t.debit_account_id,
                    Failure::LedgerMismatch => t.ledger = 2,
                    Failure::Overflow => t.amount = u64::MAX,
                    Failure::Duplicate(same) if at > 0 => {
                        *t = first;
                        if !same {
                            t.amount += 1;
                        }
                    }
                    Failure::Duplicate(_) => t.amount = 0,
                    Failure::Overdraft => {
                        t.debit_account_id = 5;
                        t.credit_account_id = 3;
                        t.amount = 1_000;
                    }
                    Failure::ExceedsDebits => {
                        t.debit_account_id = 4;
                        t.credit_account_id = 6;
                        t.amount = 1_000;
                    }
                }
                history.extend_from_slice(&specs);
                Entry::Command(OwnedCommand::Transfers {
                    flags: batch_flags::ATOMIC,
                    transfers: specs,
                })
            }
            Op::Crowd { start, count } => {
                let specs: Vec<TransferSpec> = (0..*count)
                    .map(|k| TransferSpec::posted(crowded[(start + k) % CROWDED_IDS], 3, 4, 1, 1))
                    .collect();
                history.extend_from_slice(&specs);
                Entry::Command(OwnedCommand::Transfers {
                    flags: 0,
                    transfers: specs,
                })
            }
            Op::Post {
                id: tid,
                pending,
                amount,
            } => Entry::Command(OwnedCommand::Post {
                id: id(*tid),
                pending: id(*pending),
                amount: *amount,
            }),
            Op::Void { id: tid, pending } => Entry::Command(OwnedCommand::Void {
                id: id(*tid),
                pending: id(*pending),
            }),
            Op::Restore { frozen } => Entry::Restore { frozen: *frozen },
            Op::FreezeBegin { bytes_per_step } => Entry::FreezeBegin {
                bytes_per_step: *bytes_per_step,
            },
        };
        out.push((s.dt_s, entry));
    }
    out
}

/// `old` with field `change` changed (0: none; then debit, credit, amount, ledger, code,
/// flags, timeout).
fn resend(old: TransferSpec, change: u8) -> TransferSpec {
    let mut t = old;
    match change {
        1 => t.debit_account_id = t.debit_account_id % ACCOUNT_IDS + 1,
        2 => t.credit_account_id = t.credit_account_id % ACCOUNT_IDS + 1,
        3 => t.amount = t.amount.wrapping_add(1),
        4 => t.ledger = if t.ledger == 1 { 2 } else { 1 },
        5 => t.code ^= 1,
        6 => t.flags ^= transfer_flags::PENDING,
        7 => t.timeout_s = t.timeout_s.wrapping_add(1),
        _ => {}
    }
    t
}

/// Applies a command through the byte path; returns the reply's bytes.
fn apply(e: &mut Engine, meta: &EntryMeta, command: &Command<'_>) -> Vec<u8> {
    let mut bytes = vec![0u8; 64 * 1024];
    let n = model::sbe::encode_command(command, &mut bytes);
    let mut reply = vec![0u8; engine::REPLY_LEN_MAX];
    let len = e.apply(meta, &bytes[..n], &mut reply);
    reply.truncate(len);
    reply
}

fn all_ids(crowded: &[u128]) -> impl Iterator<Item = u128> + '_ {
    (0..=POOL_IDS)
        .chain(crowded.iter().copied())
        .chain([(1u128 << 100) | 7])
}

fn snapshot_bytes(e: &Engine) -> Vec<u8> {
    let mut bytes = Vec::new();
    e.snapshot(&mut bytes).unwrap();
    bytes
}

/// Everything the two engines answer agrees: accounts, `transfer(id)` for every id the
/// commands use, counts, position, hash and the snapshot's bytes.
fn same_state(fast: &Engine, general: &Engine, crowded: &[u128]) -> Result<(), TestCaseError> {
    let a: Vec<Account> = fast.accounts().copied().collect();
    let b: Vec<Account> = general.accounts().copied().collect();
    prop_assert_eq!(a, b);
    for id in all_ids(crowded) {
        prop_assert_eq!(fast.transfer(id), general.transfer(id), "transfer {}", id);
    }
    prop_assert_eq!(fast.retained_count(), general.retained_count());
    prop_assert_eq!(fast.pending_count(), general.pending_count());
    prop_assert_eq!(fast.position(), general.position());
    prop_assert_eq!(fast.state_hash(), general.state_hash());
    prop_assert!(
        snapshot_bytes(fast) == snapshot_bytes(general),
        "snapshots differ"
    );
    Ok(())
}

/// A snapshot being copied while commands go on, in each engine.
struct Freezing {
    bytes_per_step: usize,
    at_start: Vec<u8>,
    frozen: [Option<engine::snapshot::Frozen>; 2],
}

/// Counts, across cases, of what the generator reached (see the guard test).
#[derive(Debug, Default)]
struct Reached {
    results: std::collections::BTreeMap<ResultCode, u64>,
    /// Commands that began on the fast path and switched to the general path when a pending
    /// transfer opened.
    switched: u64,
    /// Failing atomic groups, by the failing member's position.
    failed_at: std::collections::BTreeMap<usize, u64>,
    restores: u64,
    freezes: u64,
    /// Transfers each path took in the engine as it runs, and in the one forced onto the
    /// general path (`Engine::transfer_paths`, summed over the engines a restore replaces).
    paths: TransferPaths,
    forced_paths: TransferPaths,
}

impl Reached {
    /// Adds the path counts of the two engines of a run (before they are replaced or dropped).
    fn count_paths(&mut self, fast: &Engine, general: &Engine) {
        for (sum, e) in [(&mut self.paths, fast), (&mut self.forced_paths, general)] {
            let p = e.transfer_paths();
            sum.batch += p.batch;
            sum.alone += p.alone;
            sum.general += p.general;
        }
    }
}

/// Runs a case through both engines (and the model); `Err` names the first difference.
/// With `filler` accounts created first, the account table can outgrow a core's cache, and
/// the batch loop prefetches account records and uses the slots it found as guesses.
fn run(case: &Case, filler: u64, reached: &mut Reached) -> Result<(), TestCaseError> {
    let config = config(case.retained_max, filler);
    let mut fast = Engine::new(config).unwrap();
    let mut general = Engine::new(config).unwrap();
    let crowded = crowded_ids(&fast);
    general.force_general_path(true);
    // The model and the invariants (whole-state passes per command) only for small tables:
    // the fast path's answers do not depend on the table's size, only its prefetching does.
    let mut m = (filler == 0).then(|| Model::new(config));
    let mut now = 1_000_000_000_000u64;
    let mut position = 0u64;
    let mut freezing: Option<Freezing> = None;
    for (dt_s, entry) in log(case, filler, &crowded) {
        now += dt_s * engine::NS_PER_S;
        let command = match entry {
            Entry::Command(c) => c,
            Entry::Restore { frozen } => {
                reached.restores += 1;
                let take = |e: &Engine| {
                    let mut bytes = Vec::new();
                    if frozen {
                        e.freeze().write_to(&mut bytes).unwrap();
                    } else {
                        e.snapshot(&mut bytes).unwrap();
                    }
                    bytes
                };
                let (a, b) = (take(&fast), take(&general));
                prop_assert!(a == b, "snapshots differ at position {}", position);
                reached.count_paths(&fast, &general);
                fast = Engine::restore(config, &a[..]).unwrap();
                general = Engine::restore(config, &b[..]).unwrap();
                general.force_general_path(true);
                freezing = None;
                same_state(&fast, &general, &crowded)?;
                continue;
            }
            Entry::FreezeBegin { bytes_per_step } => {
                if freezing.is_none() {
                    reached.freezes += 1;
                    let mut at_start = Vec::new();
                    fast.freeze().write_to(&mut at_start).unwrap();
                    prop_assert!(fast.freeze_begin() && general.freeze_begin());
                    freezing = Some(Freezing {
                        bytes_per_step,
                        at_start,
                        frozen: [None, None],
                    });
                }
                continue;
            }
        };
        position += 1;
        let meta = EntryMeta {
            position,
            timestamp_ns: now,
            session_id: 0,
            client_seq: 0,
        };
        let command = command.command();
        let pending_before = fast.pending_count();
        let want = m.as_mut().map(|m| m.apply(&meta, &command));
        let a = apply(&mut fast, &meta, &command);
        let b = apply(&mut general, &meta, &command);
        prop_assert!(
            a == b,
            "replies differ at position {} applying {:?}:\nfast path    {:?}\ngeneral path {:?}",
            position,
            command,
            model::sbe::decode_reply(&a),
            model::sbe::decode_reply(&b)
        );
        let got = model::sbe::decode_reply(&a);
        if let Some(want) = &want {
            prop_assert_eq!(
                &got,
                want,
                "model at position {} applying {:?}",
                position,
                command
            );
        }
        prop_assert_eq!(
            fast.state_hash(),
            general.state_hash(),
            "state hashes differ after position {} applying {:?}",
            position,
            command
        );
        if let Err(why) = m.as_ref().map_or(Ok(()), |_| fast.check_invariants()) {
            return Err(TestCaseError::fail(format!(
                "after position {position}: {why}"
            )));
        }
        // Reached: results, path switches, failing groups.
        *reached.results.entry(got.result).or_default() += 1;
        for r in &got.results {
            *reached.results.entry(*r).or_default() += 1;
        }
        if let Command::Transfers { flags, transfers } = command {
            let first_pending = transfers
                .iter()
                .position(|t| t.flags == transfer_flags::PENDING);
            if pending_before == 0 {
                if let Some(k) = first_pending.filter(|&k| got.results[k] == ResultCode::Ok) {
                    let posted_before = transfers[..k]
                        .iter()
                        .any(|t| t.flags == 0 && t.timeout_s == 0);
                    let posted_after = transfers[k + 1..]
                        .iter()
                        .any(|t| t.flags == 0 && t.timeout_s == 0);
                    if posted_before && posted_after {
                        reached.switched += 1;
                    }
                }
            }
            if flags == batch_flags::ATOMIC && got.result != ResultCode::Ok {
                if let Some(at) = got
                    .results
                    .iter()
                    .position(|&r| r != ResultCode::LinkedTransferFailed)
                {
                    *reached.failed_at.entry(at).or_default() += 1;
                }
            }
        }
        if let Some(f) = &mut freezing {
            for (e, frozen) in [&mut fast, &mut general].into_iter().zip(&mut f.frozen) {
                if frozen.is_none() {
                    *frozen = e.freeze_step_by(f.bytes_per_step);
                }
            }
            if f.frozen.iter().all(Option::is_some) {
                for frozen in &f.frozen {
                    let mut bytes = Vec::new();
                    frozen.as_ref().unwrap().write_to(&mut bytes).unwrap();
                    prop_assert!(
                        bytes == f.at_start,
                        "a snapshot copied while commands went on differs from the one where it began"
                    );
                }
                freezing = None;
            }
        }
    }
    same_state(&fast, &general, &crowded)?;
    reached.count_paths(&fast, &general);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: model::proptest_cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_fast_path_answers_as_the_general_path_reply_for_reply_and_hash_for_hash(
        case in case(1..150),
    ) {
        run(&case, 0, &mut Reached::default())?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: model::proptest_cases().div_ceil(16), ..ProptestConfig::default() })]

    /// The same with more accounts than the batch loop keeps in cache (16 384), so that it
    /// prefetches their records and tries the slots it found first.
    #[test]
    fn the_fast_path_answers_as_the_general_path_with_an_account_table_past_the_cache(
        case in case(1..150),
    ) {
        run(&case, 16_400, &mut Reached::default())?;
    }
}

/// Guards the generator: the differential test proves nothing about a case it never reaches.
#[test]
fn the_random_commands_reach_every_transfer_result_path_switches_and_group_failures() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut reached = Reached::default();
    for _ in 0..48 {
        let case = case(120..150).new_tree(&mut runner).unwrap().current();
        run(&case, 0, &mut reached).unwrap();
    }
    let wanted = [
        ResultCode::Ok,
        ResultCode::InvalidId,
        ResultCode::InvalidLedger,
        ResultCode::InvalidFlags,
        ResultCode::InvalidAmount,
        ResultCode::SameAccount,
        ResultCode::AccountNotFound,
        ResultCode::LedgerMismatch,
        ResultCode::TransferExists,
        ResultCode::TransferExistsWithDifferentFields,
        ResultCode::Overflow,
        ResultCode::InsufficientFunds,
        ResultCode::ExceedsDebits,
        ResultCode::LinkedTransferFailed,
        ResultCode::TransferTableFull,
    ];
    let missing: Vec<_> = wanted
        .iter()
        .filter(|c| !reached.results.contains_key(c))
        .collect();
    assert!(
        missing.is_empty(),
        "never produced: {missing:?}; reached: {reached:?}"
    );
    assert!(reached.switched >= 10, "too few path switches: {reached:?}");
    for at in 0..11 {
        assert!(
            reached.failed_at.contains_key(&at),
            "no atomic group failed at member {at}: {reached:?}"
        );
    }
    assert!(reached.restores > 10 && reached.freezes > 10, "{reached:?}");
    // Both paths ran: the forced engine never took the fast path, and the other took both
    // of its ways (whole batches, and one transfer at a time in a command that mixes paths).
    let (p, forced) = (reached.paths, reached.forced_paths);
    assert!(
        forced.batch == 0 && forced.alone == 0 && forced.general > 0,
        "the forced engine took the fast path: {forced:?}"
    );
    assert!(
        p.batch > 0 && p.alone > 0,
        "the fast path was not taken both ways: {p:?}"
    );
}
