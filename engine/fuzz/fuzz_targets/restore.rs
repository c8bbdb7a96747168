//! A snapshot of an engine holding some of everything, mutated (see the README) and given a
//! valid checksum again, is refused with an error or restores into an engine that keeps every
//! ledger invariant, finds every transfer it retains, survives more commands and snapshots
//! and restores again.
#![no_main]
use engine::snapshot::{
    ACCOUNT_SIZE, HEADER_SIZE, PENDING_SIZE, RETAINED_SIZE, SESSION_SIZE, TRAILER_SIZE,
};
use engine::{
    account_flags as af, transfer_flags, Command, Engine, EngineConfig, EntryMeta, ResultCode,
    TransferSpec,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "common.rs"]
mod common;
use common::{Input, CONFIG};

/// A `Transfers` command of `specs`, not atomic.
fn batch(specs: &[TransferSpec]) -> Command<'_> {
    Command::Transfers {
        flags: 0,
        transfers: specs,
    }
}

/// The `(offset, width)` fields of a record: `head`, then `words` 8-byte fields from
/// `words_at`, then `tail` (`N` in all). The tables below are the format's (version 5; see
/// `engine/src/snapshot.rs`).
const fn fields<const N: usize>(
    head: &[(usize, usize)],
    words_at: usize,
    words: usize,
    tail: &[(usize, usize)],
) -> [(usize, usize); N] {
    assert!(head.len() + words + tail.len() == N);
    let mut f = [(0, 0); N];
    let mut i = 0;
    while i < head.len() {
        f[i] = head[i];
        i += 1;
    }
    let mut w = 0;
    while w < words {
        f[i] = (words_at + 8 * w, 8);
        i += 1;
        w += 1;
    }
    let mut t = 0;
    while t < tail.len() {
        f[i] = tail[t];
        i += 1;
        t += 1;
    }
    f
}

/// Header fields: version, then position, log time, hash, ring head, the five counts and the
/// reserved word.
const HEADER_FIELDS: [(usize, usize); 12] = fields(&[(8, 4)], 16, 10, &[(12, 4)]);
const ACCOUNT_FIELDS: [(usize, usize); 8] = fields(&[(0, 8), (8, 4), (12, 2), (14, 2)], 16, 4, &[]);
const RETAINED_FIELDS: [(usize, usize); 12] = fields(
    &[],
    0,
    6,
    &[(48, 4), (52, 4), (56, 4), (60, 1), (61, 1), (62, 2)],
);
const INDEX_FIELDS: [(usize, usize); 3] = [(0, 4), (0, 2), (2, 2)];
const PENDING_FIELDS: [(usize, usize); 10] = fields(&[], 0, 10, &[]);
const SESSION_FIELDS: [(usize, usize); 5] = fields(&[], 0, 5, &[]);

fn le(b: &[u8], at: usize, width: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(&b[at..at + width]);
    u64::from_le_bytes(v)
}

fn put(b: &mut [u8], at: usize, width: usize, v: u64) {
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

/// Where the sections of a snapshot lie, from its header's counts (which may lie).
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// `(offset, record size, records)` of accounts, retained, index words, pending, sessions.
    sections: [(usize, usize, usize); 5],
}

impl Layout {
    fn of(b: &[u8]) -> Option<Layout> {
        if b.len() < HEADER_SIZE {
            return None;
        }
        let mut sections = [(0, 0, 0); 5];
        let mut at = HEADER_SIZE;
        for (i, (size, count_at)) in [
            (ACCOUNT_SIZE, 48),
            (RETAINED_SIZE, 56),
            (4, 80),
            (PENDING_SIZE, 64),
            (SESSION_SIZE, 72),
        ]
        .into_iter()
        .enumerate()
        {
            let count = usize::try_from(le(b, count_at, 8)).ok()?.min(1 << 20);
            sections[i] = (at, size, count);
            at = at.checked_add(size * count)?;
        }
        Some(Layout { sections })
    }

    /// The records of section `i` that lie within `len` bytes.
    fn records(&self, i: usize, len: usize) -> usize {
        let (at, size, count) = self.sections[i];
        count.min(len.saturating_sub(at) / size)
    }
}

/// What a well-formed snapshot holds, read back for the checks.
struct Contents {
    accounts: Vec<(u64, u32)>,
    /// `(id, debit slot, credit slot, amount, ledger, extra, kind, state, position)`.
    retained: Vec<(u128, u32, u32, u64, u32, u64, u8, u8, u64)>,
    pending: Vec<u128>,
}

fn contents(b: &[u8]) -> Contents {
    let l = Layout::of(b).expect("a snapshot has a header");
    let record = |i: usize, k: usize| {
        let (at, size, _) = l.sections[i];
        &b[at + k * size..at + (k + 1) * size]
    };
    let id128 = |r: &[u8], at: usize| u128::from(le(r, at, 8)) | u128::from(le(r, at + 8, 8)) << 64;
    Contents {
        accounts: (0..l.sections[0].2)
            .map(|k| {
                let r = record(0, k);
                (le(r, 0, 8), le(r, 8, 4) as u32)
            })
            .collect(),
        retained: (0..l.sections[1].2)
            .map(|k| {
                let r = record(1, k);
                (
                    id128(r, 0),
                    le(r, 48, 4) as u32,
                    le(r, 52, 4) as u32,
                    le(r, 16, 8),
                    le(r, 56, 4) as u32,
                    le(r, 40, 8),
                    r[60],
                    r[61],
                    le(r, 24, 8),
                )
            })
            .collect(),
        pending: (0..l.sections[3].2)
            .map(|k| id128(record(3, k), 0))
            .collect(),
    }
}

/// Makes the trailer match the bytes before it, as the writer would: the file has one
/// checksum, the CRC32C of everything before the trailer, and its total length.
fn fix_trailer(b: &mut [u8]) {
    if b.len() < TRAILER_SIZE {
        return;
    }
    let body = b.len() - TRAILER_SIZE;
    let (crc, len) = (crc32c::crc32c(&b[..body]), b.len() as u64);
    b[body..body + 4].copy_from_slice(&crc.to_le_bytes());
    b[body + 8..body + 16].copy_from_slice(&len.to_le_bytes());
}

/// Applies commands at the next positions, a second apart.
struct Driver {
    meta: EntryMeta,
}

impl Driver {
    fn new(e: &Engine) -> Option<Driver> {
        // A restored position or clock at the very end leaves no room for commands.
        (e.position() < u64::MAX - 1_000_000 && e.now_ns() < u64::MAX / 2).then(|| Driver {
            meta: EntryMeta {
                position: e.position(),
                timestamp_ns: e.now_ns(),
                session_id: 0,
                client_seq: 0,
            },
        })
    }

    fn apply(&mut self, e: &mut Engine, command: &Command<'_>, step_ns: u64) -> ResultCode {
        self.meta.position += 1;
        self.meta.timestamp_ns += step_ns;
        let result = e.apply_command(&self.meta, command).result;
        if let Err(broken) = e.check_invariants() {
            panic!("after {command:?} at {:?}: {broken}", self.meta);
        }
        result
    }
}

fn pending(id: u128, debit: u64, credit: u64, amount: u64, timeout_s: u32) -> TransferSpec {
    TransferSpec {
        flags: transfer_flags::PENDING,
        timeout_s,
        ..TransferSpec::posted(id, debit, credit, amount, 1)
    }
}

/// The engine every input starts from: accounts on two ledgers with each balance rule,
/// posted transfers that have wrapped the ring, open pending transfers (with and without
/// timeouts, one whose record was evicted), settled and expired ones, and a full session
/// table.
fn base() -> Engine {
    let mut e = Engine::new(CONFIG).unwrap();
    let mut d = Driver::new(&e).unwrap();
    d.meta.timestamp_ns = 1_000_000_000;
    let mut next_session = 0u64;
    let mut run = |e: &mut Engine, d: &mut Driver, c: Command<'_>| {
        next_session += 1;
        d.meta.session_id = next_session % 5 + 1;
        d.meta.client_seq = next_session;
        let r = d.apply(e, &c, 100_000_000);
        assert!(
            matches!(r, ResultCode::Ok),
            "building the base state: {c:?} gave {r:?}"
        );
    };
    for (id, ledger, flags) in [
        (1, 1, af::EXTERNAL),
        (2, 1, af::DEBITS_MUST_NOT_EXCEED_CREDITS),
        (3, 1, 0),
        (4, 1, af::CREDITS_MUST_NOT_EXCEED_DEBITS),
        (11, 2, af::EXTERNAL),
        (12, 2, af::DEBITS_MUST_NOT_EXCEED_CREDITS),
        (13, 2, 0),
    ] {
        let c = Command::CreateAccount {
            id,
            ledger,
            flags,
            code: 0,
        };
        run(&mut e, &mut d, c);
    }
    for (id, account, amount) in [
        (100, 2, 1_000),
        (101, 3, 500),
        (102, 12, 700),
        (103, 13, 50),
    ] {
        let c = Command::Deposit {
            transfer_id: id,
            account_id: account,
            amount,
        };
        run(&mut e, &mut d, c);
    }
    let c = Command::Withdraw {
        transfer_id: 104,
        account_id: 4,
        amount: 100,
    };
    run(&mut e, &mut d, c);
    // Open before the ring wraps: its record is evicted, the pending transfer stays open.
    let early = [pending(200, 3, 2, 9, 0)];
    run(&mut e, &mut d, batch(&early));
    // 300 posted transfers: more than the ring's slots (24 retained + 256 slack).
    for batch in 0..3u128 {
        let specs: Vec<TransferSpec> = (0..100u128)
            .map(|k| {
                let (from, to) = if k % 2 == 0 { (3, 2) } else { (2, 3) };
                TransferSpec::posted(1_000 + batch * 100 + k, from, to, 1, 1)
            })
            .collect();
        run(
            &mut e,
            &mut d,
            Command::Transfers {
                flags: 1,
                transfers: &specs,
            },
        );
    }
    let specs = [
        pending(300, 2, 3, 10, 3_600),
        pending(301, 3, 2, 20, 0),
        pending(302, 2, 4, 5, 1),
        pending(303, 3, 4, 8, 7_200),
        TransferSpec {
            ledger: 2,
            ..pending(304, 13, 12, 7, 0)
        },
    ];
    run(&mut e, &mut d, batch(&specs));
    let c = Command::PostPending {
        id: 400,
        pending_id: 301,
        amount: Some(5),
    };
    run(&mut e, &mut d, c);
    let c = Command::VoidPending {
        id: 401,
        pending_id: 304,
    };
    run(&mut e, &mut d, c);
    let specs = [TransferSpec {
        ledger: 2,
        ..pending(305, 12, 13, 30, 60)
    }];
    run(&mut e, &mut d, batch(&specs));
    // A second later: 302 expires before this one applies.
    d.meta.timestamp_ns += 1_000_000_000;
    let specs = [
        TransferSpec::posted(500, 12, 13, 3, 2),
        TransferSpec::posted(501, 2, 3, 4, 1),
    ];
    run(&mut e, &mut d, batch(&specs));
    assert_eq!(e.pending_count(), 4, "open: 200, 300, 303, 305");
    assert_eq!(e.sessions_count(), 3);
    e
}

fn snapshot(e: &Engine) -> Vec<u8> {
    let mut bytes = Vec::new();
    e.snapshot(&mut bytes).unwrap();
    bytes
}

/// The base engine's snapshot, taken once.
fn original() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| snapshot(&base()))
}

/// A value for a field of `width` bytes that held `old`, from the input: the extremes, a
/// step from the old value, small numbers, powers of two, or `other` (the field's value in
/// another record, so that ids and slots collide).
fn value(s: &mut Input<'_>, width: usize, old: u64, other: u64) -> u64 {
    let v = match s.u8() % 8 {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => old.wrapping_add(s.u8() as i8 as u64),
        4 => u64::from(s.u8()),
        5 => 1 << (s.u8() % 64),
        6 => other,
        _ => s.u64(),
    };
    if width == 8 {
        v
    } else {
        v & ((1 << (8 * width)) - 1)
    }
}

/// Changes the snapshot as the input says.
fn mutate(s: &mut Input<'_>, b: &mut Vec<u8>) {
    let ops = 1 + s.u8() % 4;
    for _ in 0..ops {
        let layout = Layout::of(b);
        match s.u8() % 10 {
            0..=3 => {
                // A field of a record (or of the header), its size and place known.
                let Some(l) = layout else { continue };
                let section = usize::from(s.u8() % 6);
                let (at, size, fields): (usize, usize, &[(usize, usize)]) = match section {
                    0 => (0, HEADER_SIZE, &HEADER_FIELDS),
                    i => {
                        let (at, size, _) = l.sections[i - 1];
                        let fields: &[(usize, usize)] = match i {
                            1 => &ACCOUNT_FIELDS,
                            2 => &RETAINED_FIELDS,
                            3 => &INDEX_FIELDS,
                            4 => &PENDING_FIELDS,
                            _ => &SESSION_FIELDS,
                        };
                        (at, size, fields)
                    }
                };
                let records = if section == 0 {
                    1
                } else {
                    l.records(section - 1, b.len())
                };
                if records == 0 {
                    continue;
                }
                let k = usize::from(s.u16()) % records;
                let (offset, width) = fields[usize::from(s.u8()) % fields.len()];
                let field = at + k * size + offset;
                let other = at + (usize::from(s.u8()) % records) * size + offset;
                let old = le(b, field, width);
                let v = value(s, width, old, le(b, other, width));
                put(b, field, width, v);
            }
            4 => {
                // Raw bytes anywhere.
                if b.is_empty() {
                    continue;
                }
                let at = usize::from(s.u16()) % b.len();
                let n = usize::from(s.u8() % 16);
                let bytes = s.bytes(n).to_vec();
                let end = (at + bytes.len()).min(b.len());
                b[at..end].copy_from_slice(&bytes[..end - at]);
            }
            5 => {
                // A whole record copied over another of its section (duplicates).
                let Some(l) = layout else { continue };
                let i = usize::from(s.u8() % 5);
                let records = l.records(i, b.len());
                if records == 0 {
                    continue;
                }
                let (at, size, _) = l.sections[i];
                let (from, to) = (usize::from(s.u8()) % records, usize::from(s.u8()) % records);
                b.copy_within(at + from * size..at + (from + 1) * size, at + to * size);
            }
            6 => {
                // A header count changed, the sections left where they are.
                let Some(_) = layout else { continue };
                let at = 48 + 8 * usize::from(s.u8() % 5);
                let old = le(b, at, 8);
                let v = value(s, 8, old, old.wrapping_add(1));
                put(b, at, 8, v);
            }
            7 => {
                // Records taken out of a section, or added (copies of its last one), with
                // the header's count following.
                let Some(l) = layout else { continue };
                let i = usize::from(s.u8() % 5);
                let (at, size, count) = l.sections[i];
                let count_at = [48, 56, 80, 64, 72][i];
                let n = usize::from(s.u8() % 4);
                if s.u8() % 2 == 0 {
                    let n = n.min(l.records(i, b.len()));
                    let from = at + (count - n) * size;
                    if from + n * size <= b.len() {
                        b.drain(from..from + n * size);
                        put(b, count_at, 8, (count - n) as u64);
                    }
                } else if count > 0 && at + count * size <= b.len() {
                    let last = b[at + (count - 1) * size..at + count * size].to_vec();
                    for _ in 0..n {
                        let end = at + count * size;
                        b.splice(end..end, last.iter().copied());
                    }
                    put(b, count_at, 8, (count + n) as u64);
                }
            }
            8 => {
                let cut = usize::from(s.u16()) % (b.len() + 1);
                b.truncate(b.len() - cut.min(b.len()));
            }
            _ => {
                let n = usize::from(s.u8());
                let bytes = s.bytes(n).to_vec();
                b.extend_from_slice(&bytes);
            }
        }
    }
    // Mostly with a good checksum, so that the structural checks are reached.
    if s.u8() % 16 != 0 {
        fix_trailer(b);
    }
}

/// The configuration to restore with: each table as configured, just large enough for the
/// snapshot's count, one short of it, or larger.
fn restore_config(s: &mut Input<'_>, b: &[u8]) -> EngineConfig {
    let counts = Layout::of(b).map_or([0; 4], |l| {
        [
            l.sections[0].2,
            l.sections[1].2,
            l.sections[3].2,
            l.sections[4].2,
        ]
    });
    let mut pick = |configured: u32, count: usize| match s.u8() % 8 {
        0 => (count as u32).max(1),
        1 => (count as u32).saturating_sub(1).max(1),
        2 => configured * 2 + 1,
        _ => configured,
    };
    let accounts_max = pick(CONFIG.accounts_max, counts[0]);
    let transfers_retained_max = pick(CONFIG.transfers_retained_max, counts[1]);
    let pending_max = pick(CONFIG.pending_max, counts[2]);
    let sessions_max = pick(CONFIG.sessions_max, counts[3]);
    let ledgers_max = 1 + u32::from(s.u8() % 3);
    EngineConfig {
        accounts_max,
        transfers_retained_max,
        pending_max,
        sessions_max,
        ledgers_max,
    }
}

/// Every transfer the snapshot of `e` retains is found, and that snapshot restores into the
/// same state. Returns the snapshot.
fn check_retained(e: &Engine, config: EngineConfig) -> Vec<u8> {
    let bytes = snapshot(e);
    let c = contents(&bytes);
    let mut ids: Vec<u128> = c.retained.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), c.retained.len(), "a retained id appears twice");
    for r in &c.retained {
        let found = e.transfer(r.0);
        assert!(
            found.is_some_and(|t| t.applied_position == r.8),
            "retained transfer {:#x} not found",
            r.0
        );
    }
    let again = Engine::restore_from_bytes(config, &bytes)
        .unwrap_or_else(|err| panic!("a restored engine's snapshot is refused: {err}"));
    assert_eq!(again.state_hash(), e.state_hash());
    if let Err(broken) = again.check_invariants() {
        panic!("restored twice: {broken}");
    }
    bytes
}

/// Commands on a restored engine: a transfer, a retry of a retained one, every pending
/// transfer posted or voided, enough transfers to wrap the ring, and a jump in time.
fn exercise(e: &mut Engine, config: EngineConfig) {
    let c = contents(&check_retained(e, config));
    let Some(mut d) = Driver::new(e) else { return };
    // Two accounts on one ledger, if there are.
    let pair = c.accounts.iter().enumerate().find_map(|(i, a)| {
        c.accounts[i + 1..]
            .iter()
            .find(|b| b.1 == a.1 && b.0 != a.0)
            .map(|b| (a.0, b.0, a.1))
    });
    let fresh = 1u128 << 100;
    // A posted transfer retried first (a new one would evict the oldest): its id is
    // retained, so it must not apply again.
    let retried = c.retained.iter().rfind(|r| r.6 == 0 && r.7 == 0);
    if let Some(&(id, debit, credit, amount, ledger, extra, ..)) = retried {
        let (Some(debit), Some(credit)) = (
            c.accounts.get(debit as usize),
            c.accounts.get(credit as usize),
        ) else {
            panic!("retained transfer {id:#x} names an account slot beyond the table");
        };
        let spec = TransferSpec {
            code: (extra >> 32) as u16,
            ..TransferSpec::posted(id, debit.0, credit.0, amount, ledger)
        };
        let r = d.apply(
            e,
            &Command::Transfers {
                flags: 0,
                transfers: &[spec],
            },
            1_000,
        );
        assert!(
            r != ResultCode::Ok,
            "retained transfer {id:#x} applied twice"
        );
    }
    if let Some((x, y, ledger)) = pair {
        let specs = [
            TransferSpec::posted(fresh, x, y, 1, ledger),
            TransferSpec::posted(fresh + 1, y, x, 1, ledger),
        ];
        d.apply(
            e,
            &Command::Transfers {
                flags: 0,
                transfers: &specs,
            },
            1_000,
        );
    }
    // A snapshot copied while the commands below go on, a step after each, is the snapshot at
    // its start byte for byte (the copy barriers, on a restored engine).
    let at_begin = snapshot(e);
    assert!(e.freeze_begin());
    let mut frozen = None;
    for (k, &id) in c.pending.iter().enumerate() {
        let command = if k % 2 == 0 {
            Command::PostPending {
                id: fresh + 10 + k as u128,
                pending_id: id,
                amount: None,
            }
        } else {
            Command::VoidPending {
                id: fresh + 10 + k as u128,
                pending_id: id,
            }
        };
        d.apply(e, &command, 1_000);
        frozen = frozen.or_else(|| e.freeze_step_by(4_096));
    }
    if let Some((x, y, ledger)) = pair {
        for batch in 0..2u128 {
            let specs: Vec<TransferSpec> = (0..200u128)
                .map(|k| {
                    let (from, to) = if k % 2 == 0 { (x, y) } else { (y, x) };
                    TransferSpec::posted(fresh + 1_000 + batch * 200 + k, from, to, 1, ledger)
                })
                .collect();
            d.apply(
                e,
                &Command::Transfers {
                    flags: 0,
                    transfers: &specs,
                },
                1_000,
            );
            frozen = frozen.or_else(|| e.freeze_step_by(4_096));
        }
        d.meta.session_id = 77;
        d.meta.client_seq = 1;
        let specs = [TransferSpec::posted(fresh + 2_000, x, y, 1, ledger)];
        d.apply(
            e,
            &Command::Transfers {
                flags: 1,
                transfers: &specs,
            },
            1_000_000_000_000,
        );
    }
    let frozen = frozen.unwrap_or_else(|| loop {
        if let Some(f) = e.freeze_step() {
            break f;
        }
    });
    let mut bytes = Vec::new();
    frozen.write_to(&mut bytes).unwrap();
    assert!(
        bytes == at_begin,
        "a snapshot copied while commands went on differs"
    );
    check_retained(e, config);
}

fuzz_target!(|data: &[u8]| {
    let mut s = Input(data);
    let mut bytes = original().to_vec();
    let config = if s.u8() % 4 == 0 {
        restore_config(&mut s, &bytes)
    } else {
        CONFIG
    };
    if !s.is_empty() {
        mutate(&mut s, &mut bytes);
    }
    // The configuration is chosen before the mutation, so that it may be smaller than what
    // the mutated header says as well as smaller than the snapshot.
    if let Ok(mut e) = Engine::restore_from_bytes(config, &bytes) {
        if let Err(broken) = e.check_invariants() {
            panic!("restored: {broken}");
        }
        exercise(&mut e, config);
    }
});
