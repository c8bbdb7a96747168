//! Randomized stress of snapshots copied while commands go on, with a larger ring than the
//! model tests (so that the ring and its index are copied over many steps and wrap during the
//! copy), big batches, expiries, posts, voids and failing atomic groups; consecutive copies.

use engine::snapshot::{
    Frozen, SnapshotWriter, ACCOUNT_SIZE, HEADER_SIZE, PENDING_SIZE, RETAINED_SIZE,
};
use engine::{
    account_flags as af, batch_flags, transfer_flags, Command, Engine, EngineConfig, EntryMeta,
    TransferSpec,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create(u64, u32, u16),
    Deposit(u128, u64, u64),
    Withdraw(u128, u64, u64),
    Transfers(u16, Vec<TransferSpec>),
    Post(u128, u128, Option<u64>),
    Void(u128, u128),
}

impl Op {
    fn command(&self) -> Command<'_> {
        match self {
            Op::Create(id, ledger, flags) => Command::CreateAccount {
                id: *id,
                ledger: *ledger,
                flags: *flags,
                code: 0,
            },
            Op::Deposit(t, a, n) => Command::Deposit {
                transfer_id: *t,
                account_id: *a,
                amount: *n,
            },
            Op::Withdraw(t, a, n) => Command::Withdraw {
                transfer_id: *t,
                account_id: *a,
                amount: *n,
            },
            Op::Transfers(flags, transfers) => Command::Transfers {
                flags: *flags,
                transfers,
            },
            Op::Post(id, p, amount) => Command::PostPending {
                id: *id,
                pending_id: *p,
                amount: *amount,
            },
            Op::Void(id, p) => Command::VoidPending {
                id: *id,
                pending_id: *p,
            },
        }
    }
}

struct Gen {
    rng: Rng,
    next_id: u128,
    /// Recent transfer ids (for retries, posts and voids).
    recent: Vec<u128>,
    big: bool,
}

impl Gen {
    fn tid(&mut self) -> u128 {
        if !self.recent.is_empty() && self.rng.chance(10) {
            let i = self.rng.below(self.recent.len() as u64) as usize;
            return self.recent[i];
        }
        self.next_id += 1;
        let id = self.next_id;
        self.recent.push(id);
        if self.recent.len() > 64 {
            self.recent.remove(0);
        }
        id
    }
    fn account(&mut self) -> u64 {
        1 + self.rng.below(24)
    }
    fn spec(&mut self) -> TransferSpec {
        let pending = self.rng.chance(25);
        let mut debit = self.account();
        let credit = self.account();
        if debit == credit && self.rng.chance(90) {
            debit = if debit == 1 { 2 } else { 1 };
        }
        let big = self.rng.chance(5);
        TransferSpec {
            id: self.tid(),
            debit_account_id: debit,
            credit_account_id: credit,
            amount: 1 + self.rng.below(if big { 1_000_000 } else { 50 }),
            ledger: if self.rng.chance(3) { 2 } else { 1 },
            flags: if pending { transfer_flags::PENDING } else { 0 },
            code: 0,
            timeout_s: if pending { self.rng.below(4) as u32 } else { 0 },
        }
    }
    fn op(&mut self) -> Op {
        match self.rng.below(20) {
            0 => {
                let id = 1 + self.rng.below(30);
                let flags = match self.rng.below(4) {
                    0 => af::DEBITS_MUST_NOT_EXCEED_CREDITS,
                    1 => af::CREDITS_MUST_NOT_EXCEED_DEBITS,
                    _ => 0,
                };
                Op::Create(id, 1, flags)
            }
            1..=3 => {
                let (t, a) = (self.tid(), self.account());
                Op::Deposit(t, a, 1 + self.rng.below(1000))
            }
            4 => {
                let (t, a) = (self.tid(), self.account());
                Op::Withdraw(t, a, 1 + self.rng.below(100))
            }
            5..=6 => {
                let (id, p) = (self.tid(), self.tid());
                let some = self.rng.chance(50);
                let amount = 1 + self.rng.below(50);
                let amount = some.then_some(amount);
                Op::Post(id, p, amount)
            }
            7 => {
                let (id, p) = (self.tid(), self.tid());
                Op::Void(id, p)
            }
            _ => {
                let full = self.big && self.rng.chance(10);
                let n = if full {
                    1 + self.rng.below(engine::TRANSFERS_PER_COMMAND_MAX as u64)
                } else {
                    1 + self.rng.below(6)
                } as usize;
                let atomic = self.rng.chance(40);
                let flags = if atomic { batch_flags::ATOMIC } else { 0 };
                let transfers = (0..n).map(|_| self.spec()).collect();
                Op::Transfers(flags, transfers)
            }
        }
    }
}

struct Driver {
    position: u64,
    now_ns: u64,
}

impl Driver {
    fn apply(&mut self, e: &mut Engine, op: &Op, rng: &mut Rng) -> (EntryMeta, u64) {
        self.position += 1;
        self.now_ns += match rng.below(4) {
            0 => 0,
            1 => 300_000_000,
            2 => 1_000_000_000,
            _ => 2_500_000_000,
        };
        let meta = EntryMeta {
            position: self.position,
            timestamp_ns: self.now_ns,
            session_id: 0,
            client_seq: 0,
        };
        e.apply_command(&meta, &op.command());
        (meta, e.state_hash())
    }
}

fn step(
    e: &mut Engine,
    streamed: bool,
    writer: &mut Option<SnapshotWriter>,
    frozen: &mut Option<Frozen>,
    path: &std::path::Path,
    bytes: usize,
) -> bool {
    if streamed {
        let mut ended = false;
        e.freeze_pieces(bytes, &mut |piece| match writer {
            None => {
                let file = std::fs::File::create(path).unwrap();
                *writer = Some(SnapshotWriter::start(file, piece).unwrap());
            }
            Some(w) => ended |= w.write(piece).unwrap(),
        });
        ended
    } else {
        *frozen = e.freeze_step_by(bytes);
        frozen.is_some()
    }
}

fn run(seed: u64, retained: u32) {
    let config = EngineConfig {
        accounts_max: 40,
        transfers_retained_max: retained,
        pending_max: 16,
        sessions_max: 3,
        ledgers_max: 2,
    };
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut gen = Gen {
        rng: Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1),
        next_id: 0,
        recent: Vec::new(),
        big: rng.chance(50),
    };
    let mut e = Engine::new(config).unwrap();
    let mut d = Driver {
        position: 0,
        now_ns: 1_000_000_000_000,
    };
    d.apply(&mut e, &Op::Create(1, 1, af::EXTERNAL), &mut rng);
    d.apply(&mut e, &Op::Create(2, 2, af::EXTERNAL), &mut rng);
    for id in 3..16 {
        d.apply(&mut e, &Op::Create(id, 1, 0), &mut rng);
    }
    let path = std::env::temp_dir().join(format!(
        "tally-copy-stress-{}-{seed}-{retained}.snap",
        std::process::id()
    ));
    for _copy in 0..3 {
        let warm = rng.below(300);
        for _ in 0..warm {
            let op = gen.op();
            d.apply(&mut e, &op, &mut rng);
        }
        let mut at_start = Vec::new();
        e.freeze().write_to(&mut at_start).unwrap();
        let start_hash = e.state_hash();
        assert!(e.freeze_begin());
        let streamed = rng.chance(50);
        let bytes = match rng.below(3) {
            0 => 1,
            1 => 1 + rng.below(2000) as usize,
            _ => 1 + rng.below(20_000) as usize,
        };
        let every = 1 + rng.below(4);
        let mut writer = None;
        let mut frozen = None;
        let mut ended = false;
        let mut later: Vec<(EntryMeta, Op, u64)> = Vec::new();
        let mut i = 0u64;
        while !ended {
            let op = gen.op();
            let (meta, hash) = d.apply(&mut e, &op, &mut rng);
            later.push((meta, op, hash));
            if i.is_multiple_of(every) {
                ended = step(&mut e, streamed, &mut writer, &mut frozen, &path, bytes);
            }
            if !ended && rng.chance(3) {
                // A whole snapshot taken while the copy is in progress is the live state.
                let (mut direct, mut frozen_now) = (Vec::new(), Vec::new());
                e.snapshot(&mut direct).unwrap();
                e.freeze().write_to(&mut frozen_now).unwrap();
                assert!(direct == frozen_now);
                let now = Engine::restore(config, &direct[..]).unwrap();
                assert_eq!(now.state_hash(), e.state_hash());
            }
            i += 1;
        }
        let copied = if streamed {
            let (_, len) = writer.take().unwrap().finish().unwrap();
            let b = std::fs::read(&path).unwrap();
            assert_eq!(b.len() as u64, len);
            b
        } else {
            let mut b = Vec::new();
            frozen.take().unwrap().write_to(&mut b).unwrap();
            b
        };
        assert!(
            copied == at_start,
            "seed {seed} retained {retained}: copy differs (streamed {streamed}, bytes {bytes}, every {every}, {} commands during)",
            later.len()
        );
        // The copy restores and replays the later commands to the same hashes.
        let mut restored = Engine::restore(config, &copied[..]).unwrap();
        assert_eq!(restored.state_hash(), start_hash);
        for (meta, op, hash) in &later {
            restored.apply_command(meta, &op.command());
            assert_eq!(
                restored.state_hash(),
                *hash,
                "seed {seed} retained {retained}: replay diverged at {}",
                meta.position
            );
        }
        let (mut x, mut y) = (Vec::new(), Vec::new());
        e.freeze().write_to(&mut x).unwrap();
        restored.freeze().write_to(&mut y).unwrap();
        assert_eq!(x.len(), y.len());
        // Byte for byte up to the pending section (its order depends on slab slot reuse),
        // and the sessions after it.
        let count = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let pending_at = HEADER_SIZE
            + count(&x, 48) as usize * ACCOUNT_SIZE
            + count(&x, 56) as usize * RETAINED_SIZE
            + count(&x, 80) as usize * 4;
        let sessions_at = pending_at + count(&x, 64) as usize * PENDING_SIZE;
        assert!(
            x[..pending_at] == y[..pending_at],
            "seed {seed} retained {retained}: replayed state differs"
        );
        assert!(x[sessions_at..x.len() - 16] == y[sessions_at..y.len() - 16]);
        for id in 1..=gen.next_id {
            assert_eq!(e.transfer(id), restored.transfer(id));
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Three consecutive copies per seed, each with commands applied between its steps; each copy
/// is byte for byte the freeze where it began, restores, and replays the commands applied
/// during it to the same hash after each and to the same state. Rings of 1 to 3000 retained
/// ids (the larger ones are copied over many steps, wrap under full batches before the copy
/// is done, and have an index of several chunks). `COPY_STRESS_SEEDS=N` runs more seeds.
#[test]
fn copies_while_commands_go_on_equal_the_state_where_they_began() {
    let seeds: u64 = std::env::var("COPY_STRESS_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for seed in 1..=seeds {
        for retained in [1, 7, 60, 400, 3000] {
            run(seed, retained);
        }
    }
}
