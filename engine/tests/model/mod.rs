//! A reference model of the ledger: plain `BTreeMap`s, linear scans and whole-state clones for
//! atomic groups, written to be obviously correct rather than fast. The property tests run the
//! same commands through it and the engine and compare every reply and the final state.
#![allow(dead_code)]

pub mod gen;
pub mod sbe;

use std::collections::{BTreeMap, VecDeque};

use engine::{
    account_flags as af, batch_flags, snapshot, transfer_flags, Account, Balance, Command,
    EngineConfig, EntryMeta, ResultCode as R, TransferSpec,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub position: u64,
    pub timestamp_ns: u64,
    pub client_seq: u64,
    pub result: R,
    pub results: Vec<R>,
    pub balances: Vec<Balance>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Transfer,
    Deposit,
    Withdraw,
    Post,
    Void,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Posted,
    Pending,
    PendingPosted,
    PendingVoided,
    PendingExpired,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec {
    pub id: u128,
    pub kind: Kind,
    pub debit: u64,
    pub credit: u64,
    pub amount: u64,
    pub ledger: u32,
    pub pending: bool,
    pub timeout_s: u32,
    pub code: u16,
    pub pending_id: u128,
    pub amount_null: bool,
    pub state: State,
    pub position: u64,
    pub timestamp_ns: u64,
}

#[derive(Clone, Copy, Debug)]
struct Open {
    debit: u64,
    credit: u64,
    amount: u64,
    ledger: u32,
    deadline_ns: Option<u64>,
    order: u64,
    timeout_s: u32,
    code: u16,
    position: u64,
    timestamp_ns: u64,
}

#[derive(Clone, Copy, Debug)]
struct Sess {
    last_seq: u64,
    last_position: u64,
    last_timestamp_ns: u64,
    last_result: R,
}

#[derive(Clone, Debug)]
pub struct Model {
    cfg: EngineConfig,
    pub accounts: BTreeMap<u64, Account>,
    externals: BTreeMap<u32, u64>,
    pub retained: VecDeque<Rec>,
    /// Pushes minus rollbacks: the creation order of retained records.
    pushes: u64,
    open: BTreeMap<u128, Open>,
    sessions: BTreeMap<u64, Sess>,
    pub position: u64,
    now_ns: u64,
    touched: Vec<u64>,
}

impl Model {
    pub fn new(cfg: EngineConfig) -> Model {
        Model {
            cfg,
            accounts: BTreeMap::new(),
            externals: BTreeMap::new(),
            retained: VecDeque::new(),
            pushes: 0,
            open: BTreeMap::new(),
            sessions: BTreeMap::new(),
            position: 0,
            now_ns: 0,
            touched: Vec::new(),
        }
    }

    pub fn retained(&self, id: u128) -> Option<&Rec> {
        self.retained.iter().find(|r| r.id == id)
    }

    fn retained_mut(&mut self, id: u128) -> Option<&mut Rec> {
        self.retained.iter_mut().find(|r| r.id == id)
    }

    fn touch(&mut self, id: u64) {
        if !self.touched.contains(&id) {
            self.touched.push(id);
        }
    }

    pub fn apply(&mut self, meta: &EntryMeta, command: &Command<'_>) -> Reply {
        assert!(meta.position > self.position);
        self.position = meta.position;
        self.now_ns = self.now_ns.max(meta.timestamp_ns);
        self.touched.clear();
        self.expire();
        if meta.session_id != 0 {
            if let Some(s) = self.sessions.get(&meta.session_id) {
                if meta.client_seq == s.last_seq {
                    return Reply {
                        position: s.last_position,
                        timestamp_ns: s.last_timestamp_ns,
                        client_seq: meta.client_seq,
                        result: s.last_result,
                        results: vec![],
                        balances: vec![],
                    };
                }
                if meta.client_seq < s.last_seq {
                    return Reply {
                        position: meta.position,
                        timestamp_ns: meta.timestamp_ns,
                        client_seq: meta.client_seq,
                        result: R::DuplicateRequest,
                        results: vec![],
                        balances: vec![],
                    };
                }
            }
        }
        let mut results = Vec::new();
        let result = match *command {
            Command::CreateAccount {
                id,
                ledger,
                flags,
                code,
            } => self.create(id, ledger, flags, code),
            Command::Deposit {
                transfer_id,
                account_id,
                amount,
            } => self.deposit_withdraw(Kind::Deposit, transfer_id, account_id, amount),
            Command::Withdraw {
                transfer_id,
                account_id,
                amount,
            } => self.deposit_withdraw(Kind::Withdraw, transfer_id, account_id, amount),
            Command::Transfers { flags, transfers } => {
                self.transfers(flags, transfers, &mut results)
            }
            Command::PostPending {
                id,
                pending_id,
                amount,
            } => self.settle(Kind::Post, id, pending_id, amount),
            Command::VoidPending { id, pending_id } => {
                self.settle(Kind::Void, id, pending_id, None)
            }
            Command::Invalid => R::InvalidCommand,
        };
        while self.retained.len() > self.cfg.transfers_retained_max as usize {
            self.retained.pop_front();
        }
        if meta.session_id != 0 {
            let rec = Sess {
                last_seq: meta.client_seq,
                last_position: meta.position,
                last_timestamp_ns: meta.timestamp_ns,
                last_result: result,
            };
            if !self.sessions.contains_key(&meta.session_id)
                && self.sessions.len() >= self.cfg.sessions_max as usize
            {
                let victim = *self
                    .sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last_position)
                    .unwrap()
                    .0;
                self.sessions.remove(&victim);
            }
            self.sessions.insert(meta.session_id, rec);
        }
        let balances = self
            .touched
            .iter()
            .map(|id| {
                let a = self.accounts[id];
                Balance {
                    account_id: a.id,
                    ledger: a.ledger,
                    debits_posted: a.debits_posted,
                    credits_posted: a.credits_posted,
                    debits_pending: a.debits_pending,
                    credits_pending: a.credits_pending,
                }
            })
            .collect();
        Reply {
            position: meta.position,
            timestamp_ns: meta.timestamp_ns,
            client_seq: meta.client_seq,
            result,
            results,
            balances,
        }
    }

    fn expire(&mut self) {
        let mut due: Vec<(u64, u64, u128)> = self
            .open
            .iter()
            .filter_map(|(id, o)| match o.deadline_ns {
                Some(d) if d <= self.now_ns => Some((d, o.order, *id)),
                _ => None,
            })
            .collect();
        due.sort();
        for (_, _, id) in due {
            let o = self.open.remove(&id).unwrap();
            self.accounts.get_mut(&o.debit).unwrap().debits_pending -= o.amount;
            self.accounts.get_mut(&o.credit).unwrap().credits_pending -= o.amount;
            if let Some(r) = self.retained_mut(id) {
                r.state = State::PendingExpired;
            }
        }
    }

    fn create(&mut self, id: u64, ledger: u32, flags: u16, code: u16) -> R {
        if id == 0 {
            return R::InvalidId;
        }
        if ledger == 0 {
            return R::InvalidLedger;
        }
        let dm = flags & af::DEBITS_MUST_NOT_EXCEED_CREDITS != 0;
        let cm = flags & af::CREDITS_MUST_NOT_EXCEED_DEBITS != 0;
        let ext = flags & af::EXTERNAL != 0;
        if flags & !af::ALL != 0 || (dm && cm) || (ext && (dm || cm)) {
            return R::InvalidFlags;
        }
        if ext && self.externals.get(&ledger).is_some_and(|&e| e != id) {
            return R::InvalidFlags;
        }
        if let Some(a) = self.accounts.get(&id).copied() {
            self.touch(id);
            return if a.ledger == ledger && a.flags == flags && a.code == code {
                R::AccountExists
            } else {
                R::AccountExistsWithDifferentFields
            };
        }
        if self.accounts.len() >= self.cfg.accounts_max as usize
            || (ext && self.externals.len() >= self.cfg.ledgers_max as usize)
        {
            return R::AccountTableFull;
        }
        self.accounts.insert(
            id,
            Account {
                id,
                ledger,
                flags,
                code,
                ..Account::default()
            },
        );
        if ext {
            self.externals.insert(ledger, id);
        }
        self.touch(id);
        R::Ok
    }

    fn deposit_withdraw(&mut self, kind: Kind, tid: u128, account: u64, amount: u64) -> R {
        if tid == 0 || account == 0 {
            return R::InvalidId;
        }
        if amount == 0 {
            return R::InvalidAmount;
        }
        let Some(a) = self.accounts.get(&account).copied() else {
            return R::AccountNotFound;
        };
        let Some(&ext) = self.externals.get(&a.ledger) else {
            return R::AccountNotFound;
        };
        if ext == account {
            return R::SameAccount;
        }
        let (d, c) = if kind == Kind::Deposit {
            (ext, account)
        } else {
            (account, ext)
        };
        self.checked(kind, tid, d, c, amount, a.ledger, false, 0, 0)
    }

    fn transfers(&mut self, flags: u16, ts: &[TransferSpec], results: &mut Vec<R>) -> R {
        if ts.is_empty() || ts.len() > engine::TRANSFERS_PER_COMMAND_MAX {
            return R::InvalidCommand;
        }
        if flags & !batch_flags::ALL != 0 {
            results.resize(ts.len(), R::InvalidFlags);
            return R::InvalidFlags;
        }
        let atomic = flags & batch_flags::ATOMIC != 0;
        let before = self.clone();
        let mut overall = R::Ok;
        for (i, t) in ts.iter().enumerate() {
            let r = self.transfer(t);
            if r != R::Ok && atomic {
                let position = self.position;
                *self = before;
                self.position = position;
                results.clear();
                results.resize(ts.len(), R::LinkedTransferFailed);
                results[i] = r;
                self.touched.clear();
                return r;
            }
            results.push(r);
            if r != R::Ok && (overall == R::Ok || r < overall) {
                overall = r;
            }
        }
        overall
    }

    fn transfer(&mut self, t: &TransferSpec) -> R {
        if t.id == 0 || t.debit_account_id == 0 || t.credit_account_id == 0 {
            return R::InvalidId;
        }
        if t.ledger == 0 {
            return R::InvalidLedger;
        }
        let pending = t.flags & transfer_flags::PENDING != 0;
        if t.flags & !transfer_flags::ALL != 0 || (t.timeout_s != 0 && !pending) {
            return R::InvalidFlags;
        }
        if t.amount == 0 {
            return R::InvalidAmount;
        }
        if t.debit_account_id == t.credit_account_id {
            return R::SameAccount;
        }
        let (Some(d), Some(c)) = (
            self.accounts.get(&t.debit_account_id).copied(),
            self.accounts.get(&t.credit_account_id).copied(),
        ) else {
            return R::AccountNotFound;
        };
        if d.ledger != t.ledger || c.ledger != t.ledger {
            return R::LedgerMismatch;
        }
        self.checked(
            Kind::Transfer,
            t.id,
            d.id,
            c.id,
            t.amount,
            t.ledger,
            pending,
            t.timeout_s,
            t.code,
        )
    }

    /// The stored fields for an id in use (what `GetTransfer` answers): a retained record, or
    /// an open pending transfer, whether or not its record is still retained.
    pub fn existing(&self, id: u128) -> Option<Rec> {
        if let Some(r) = self.retained(id) {
            return Some(*r);
        }
        let o = self.open.get(&id)?;
        Some(Rec {
            id,
            kind: Kind::Transfer,
            debit: o.debit,
            credit: o.credit,
            amount: o.amount,
            ledger: o.ledger,
            pending: true,
            timeout_s: o.timeout_s,
            code: o.code,
            pending_id: 0,
            amount_null: false,
            state: State::Pending,
            position: o.position,
            timestamp_ns: o.timestamp_ns,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn checked(
        &mut self,
        kind: Kind,
        id: u128,
        debit: u64,
        credit: u64,
        amount: u64,
        ledger: u32,
        pending: bool,
        timeout_s: u32,
        code: u16,
    ) -> R {
        if let Some(r) = self.existing(id) {
            let same = r.kind == kind
                && r.debit == debit
                && r.credit == credit
                && r.amount == amount
                && r.ledger == ledger
                && r.pending == pending
                && r.timeout_s == timeout_s
                && r.code == code;
            return if same {
                R::TransferExists
            } else {
                R::TransferExistsWithDifferentFields
            };
        }
        let d = self.accounts[&debit];
        let c = self.accounts[&credit];
        let d_col = if pending {
            d.debits_pending
        } else {
            d.debits_posted
        };
        let c_col = if pending {
            c.credits_pending
        } else {
            c.credits_posted
        };
        let d_total =
            u128::from(d.debits_posted) + u128::from(d.debits_pending) + u128::from(amount);
        let c_total =
            u128::from(c.credits_posted) + u128::from(c.credits_pending) + u128::from(amount);
        let max = u128::from(u64::MAX);
        if d_col.checked_add(amount).is_none()
            || c_col.checked_add(amount).is_none()
            || d_total > max
            || c_total > max
        {
            return R::Overflow;
        }
        if d.flags & af::DEBITS_MUST_NOT_EXCEED_CREDITS != 0
            && d_total > u128::from(d.credits_posted)
        {
            return R::InsufficientFunds;
        }
        if c.flags & af::CREDITS_MUST_NOT_EXCEED_DEBITS != 0
            && c_total > u128::from(c.debits_posted)
        {
            return R::ExceedsDebits;
        }
        if pending && self.open.len() >= self.cfg.pending_max as usize {
            return R::TransferTableFull;
        }
        {
            let d = self.accounts.get_mut(&debit).unwrap();
            if pending {
                d.debits_pending += amount
            } else {
                d.debits_posted += amount
            }
        }
        {
            let c = self.accounts.get_mut(&credit).unwrap();
            if pending {
                c.credits_pending += amount
            } else {
                c.credits_posted += amount
            }
        }
        self.touch(debit);
        self.touch(credit);
        self.retained.push_back(Rec {
            id,
            kind,
            debit,
            credit,
            amount,
            ledger,
            pending,
            timeout_s,
            code,
            pending_id: 0,
            amount_null: false,
            state: if pending {
                State::Pending
            } else {
                State::Posted
            },
            position: self.position,
            timestamp_ns: self.now_ns,
        });
        let order = self.pushes;
        self.pushes += 1;
        if pending {
            let deadline_ns = (timeout_s != 0).then(|| {
                self.now_ns
                    .saturating_add(u64::from(timeout_s).saturating_mul(1_000_000_000))
            });
            let deadline_ns = deadline_ns.filter(|&d| d != u64::MAX);
            self.open.insert(
                id,
                Open {
                    debit,
                    credit,
                    amount,
                    ledger,
                    deadline_ns,
                    order,
                    timeout_s,
                    code,
                    position: self.position,
                    timestamp_ns: self.now_ns,
                },
            );
        }
        R::Ok
    }

    fn settle(&mut self, kind: Kind, id: u128, pending_id: u128, amount: Option<u64>) -> R {
        if id == 0 || pending_id == 0 {
            return R::InvalidId;
        }
        if amount == Some(0) {
            return R::InvalidAmount;
        }
        if let Some(r) = self.existing(id) {
            let same = r.kind == kind
                && r.pending_id == pending_id
                && r.amount_null == amount.is_none()
                && amount.is_none_or(|a| a == r.amount);
            return if same {
                R::TransferExists
            } else {
                R::TransferExistsWithDifferentFields
            };
        }
        let Some(o) = self.open.get(&pending_id).copied() else {
            return match self.retained(pending_id) {
                Some(r) if r.kind == Kind::Transfer => match r.state {
                    State::PendingPosted => R::PendingAlreadyPosted,
                    State::PendingVoided => R::PendingAlreadyVoided,
                    State::PendingExpired => R::PendingExpired,
                    _ => R::PendingNotFound,
                },
                _ => R::PendingNotFound,
            };
        };
        let settled = amount.unwrap_or(o.amount);
        if settled > o.amount {
            return R::AmountExceedsPending;
        }
        let post = kind == Kind::Post;
        let d = self.accounts[&o.debit];
        let c = self.accounts[&o.credit];
        if post
            && (d.debits_posted.checked_add(settled).is_none()
                || c.credits_posted.checked_add(settled).is_none())
        {
            return R::Overflow;
        }
        {
            let d = self.accounts.get_mut(&o.debit).unwrap();
            d.debits_pending -= o.amount;
            if post {
                d.debits_posted += settled;
            }
        }
        {
            let c = self.accounts.get_mut(&o.credit).unwrap();
            c.credits_pending -= o.amount;
            if post {
                c.credits_posted += settled;
            }
        }
        if let Some(r) = self.retained_mut(pending_id) {
            r.state = if post {
                State::PendingPosted
            } else {
                State::PendingVoided
            };
        }
        self.open.remove(&pending_id);
        self.touch(o.debit);
        self.touch(o.credit);
        self.retained.push_back(Rec {
            id,
            kind,
            debit: o.debit,
            credit: o.credit,
            amount: settled,
            ledger: o.ledger,
            pending: false,
            timeout_s: 0,
            code: 0,
            pending_id,
            amount_null: amount.is_none(),
            state: State::Posted,
            position: self.position,
            timestamp_ns: self.now_ns,
        });
        self.pushes += 1;
        R::Ok
    }
}

/// A version 3 snapshot made from a current (version 5) one: the same, but pending transfer records
/// without their last 16 bytes (the creating command's position and log time).
pub fn as_version_3(bytes: &[u8]) -> Vec<u8> {
    let le64 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let (accounts, retained, pending, index_words) = (le64(48), le64(56), le64(64), le64(80));
    let pending_at = snapshot::HEADER_SIZE
        + accounts * snapshot::ACCOUNT_SIZE
        + retained * snapshot::RETAINED_SIZE
        + index_words * 4;
    let mut v3 = bytes[..pending_at].to_vec();
    for record in bytes[pending_at..]
        .chunks_exact(snapshot::PENDING_SIZE)
        .take(pending)
    {
        v3.extend_from_slice(&record[..snapshot::PENDING_SIZE_V3]);
    }
    v3.extend_from_slice(
        &bytes[pending_at + pending * snapshot::PENDING_SIZE..bytes.len() - snapshot::TRAILER_SIZE],
    );
    v3[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32c::crc32c(&v3);
    v3.extend_from_slice(&crc.to_le_bytes());
    v3.extend_from_slice(&0u32.to_le_bytes());
    let len = (v3.len() + 8) as u64;
    v3.extend_from_slice(&len.to_le_bytes());
    v3
}

/// Cases per property test: `$TALLY_PROPTEST_CASES`, else 96 (a few seconds in release).
pub fn proptest_cases() -> u32 {
    std::env::var("TALLY_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}
