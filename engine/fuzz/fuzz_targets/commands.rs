//! A script of commands (see the README) never panics, keeps every ledger invariant after every
//! command, and a snapshot restored mid-way answers every later command as the original does.
#![no_main]
use engine::{Command, Engine, EntryMeta, TransferSpec, REPLY_LEN_MAX};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::{Input as Script, CONFIG};

/// Draws of the script's command fields.
impl Script<'_> {
    /// A small id (so that they collide), 0 now and then, or an extreme.
    fn id(&mut self) -> u64 {
        match self.u8() {
            0..=239 => u64::from(self.u8() % 12),
            240..=247 => u64::MAX,
            _ => u64::from(self.u8()) << 56,
        }
    }

    fn id128(&mut self) -> u128 {
        let lo = self.id();
        if self.u8() < 16 {
            u128::from(lo) | (1 << 64)
        } else {
            u128::from(lo)
        }
    }

    fn ledger(&mut self) -> u32 {
        u32::from(self.u8() % 3)
    }

    fn amount(&mut self) -> u64 {
        match self.u8() {
            0..=199 => u64::from(self.u8()),
            200..=229 => 0,
            230..=249 => u64::MAX - u64::from(self.u8()),
            _ => 1 << (self.u8() % 64),
        }
    }

    fn transfer(&mut self) -> TransferSpec {
        TransferSpec {
            id: self.id128(),
            debit_account_id: self.id(),
            credit_account_id: self.id(),
            amount: self.amount(),
            ledger: self.ledger(),
            flags: match self.u8() {
                0..=159 => 0,
                160..=239 => u16::from(self.u8() % 8),
                _ => self.u16(),
            },
            code: u16::from(self.u8() % 3),
            timeout_s: match self.u8() {
                0..=199 => 0,
                200..=249 => u32::from(self.u8() % 4),
                _ => u32::MAX,
            },
        }
    }
}

/// Schema id and version of the ledger schema, as a command header carries them.
const SCHEMA_ID_AND_VERSION: [u8; 4] = [0x59, 0x1b, 1, 0];

fuzz_target!(|data: &[u8]| {
    let mut s = Script(data);
    let mut engine = Engine::new(CONFIG).unwrap();
    let mut restored: Option<Engine> = None;
    let mut reply = vec![0u8; REPLY_LEN_MAX];
    let mut restored_reply = vec![0u8; REPLY_LEN_MAX];
    let mut specs = Vec::new();
    let mut meta = EntryMeta {
        position: 0,
        timestamp_ns: 1_000_000_000,
        session_id: 0,
        client_seq: 0,
    };
    while !s.is_empty() {
        let op = s.u8();
        meta.position += 1;
        meta.timestamp_ns = match s.u8() {
            step @ 0..=199 => meta.timestamp_ns + u64::from(step) * 100_000_000,
            200..=249 => meta.timestamp_ns,
            _ => meta.timestamp_ns.saturating_sub(1_000_000_000),
        };
        meta.session_id = u64::from(s.u8() % 4);
        meta.client_seq = u64::from(s.u8() % 8);
        match op % 9 {
            0 => {
                // Raw bytes behind a header naming a command template.
                let mut bytes = vec![0u8; 8];
                bytes[..2].copy_from_slice(&s.u16().to_le_bytes());
                bytes[2] = 10 + s.u8() % 6;
                bytes[4..8].copy_from_slice(&SCHEMA_ID_AND_VERSION);
                let n = usize::from(s.u8());
                bytes.extend_from_slice(s.bytes(n));
                let n = engine.apply(&meta, &bytes, &mut reply);
                assert!(n <= REPLY_LEN_MAX);
                if let Some(r) = &mut restored {
                    let m = r.apply(&meta, &bytes, &mut restored_reply);
                    assert_eq!(
                        reply[..n],
                        restored_reply[..m],
                        "replies differ after restore"
                    );
                }
            }
            8 => {
                // Snapshot now; a second engine restored from it follows from here on.
                let mut bytes = Vec::new();
                engine.snapshot(&mut bytes).unwrap();
                let r = Engine::restore_from_bytes(CONFIG, &bytes).unwrap();
                assert_eq!(r.state_hash(), engine.state_hash());
                restored = Some(r);
                meta.position -= 1; // a snapshot is not a command
            }
            kind => {
                specs.clear();
                let command = match kind {
                    1 => Command::CreateAccount {
                        id: s.id(),
                        ledger: s.ledger(),
                        flags: match s.u8() {
                            0..=199 => u16::from(s.u8() % 8),
                            _ => s.u16(),
                        },
                        code: u16::from(s.u8() % 3),
                    },
                    2 => Command::Deposit {
                        transfer_id: s.id128(),
                        account_id: s.id(),
                        amount: s.amount(),
                    },
                    3 => Command::Withdraw {
                        transfer_id: s.id128(),
                        account_id: s.id(),
                        amount: s.amount(),
                    },
                    4 | 5 => {
                        let n = 1 + usize::from(s.u8() % 6);
                        for _ in 0..n {
                            specs.push(s.transfer());
                        }
                        Command::Transfers {
                            flags: match s.u8() {
                                0..=219 => u16::from(s.u8() % 2),
                                _ => s.u16(),
                            },
                            transfers: &specs,
                        }
                    }
                    6 => Command::PostPending {
                        id: s.id128(),
                        pending_id: s.id128(),
                        amount: match s.u8() {
                            0..=127 => None,
                            _ => Some(s.amount()),
                        },
                    },
                    _ => Command::VoidPending {
                        id: s.id128(),
                        pending_id: s.id128(),
                    },
                };
                let outcome = engine.apply_command(&meta, &command);
                let outcome = format!("{outcome:?}");
                if let Some(r) = &mut restored {
                    let theirs = format!("{:?}", r.apply_command(&meta, &command));
                    assert_eq!(outcome, theirs, "outcomes differ after restore");
                }
            }
        }
        if let Err(broken) = engine.check_invariants() {
            panic!("after {meta:?}: {broken}");
        }
        if let Some(r) = &restored {
            assert_eq!(
                r.state_hash(),
                engine.state_hash(),
                "state hash after restore"
            );
            same_answers(&engine, r);
        }
    }
});

/// The restored engine answers queries as the original: `GetTransfer` for the ids the script
/// draws (open pending transfers whose records were evicted among them), `ListAccounts` pages.
fn same_answers(a: &Engine, b: &Engine) {
    for lo in (0..12).chain([u64::MAX]) {
        for id in [u128::from(lo), u128::from(lo) | (1 << 64)] {
            assert_eq!(
                a.transfer(id),
                b.transfer(id),
                "transfer {id:#x} after restore"
            );
        }
    }
    let mut x = [engine::Account::default(); engine::LIST_LIMIT_MAX];
    let mut y = x;
    for ledger in [None, Some(0), Some(1), Some(2), Some(u32::MAX)] {
        for after in [0, 3, 7, u64::MAX - 1, u64::MAX] {
            let n = a.list_accounts(ledger, after, 5, &mut x);
            let m = b.list_accounts(ledger, after, 5, &mut y);
            assert_eq!(x[..n], y[..m], "accounts page after restore");
        }
    }
}
