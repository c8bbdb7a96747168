//! Snapshots that are consistent byte for byte (their checksum matches) but not as a ledger,
//! as a writer bug would leave them, are refused with `SnapshotError::Invalid`, or, where the
//! snapshot itself can be trusted (its retention index is only a faster way to its records),
//! restored with the index rebuilt. Each case here was accepted before its check existed, into
//! an engine that later lost money, applied a transfer twice or panicked.

use engine::snapshot::{ACCOUNT_SIZE, HEADER_SIZE, PENDING_SIZE, RETAINED_SIZE, TRAILER_SIZE};
use engine::{
    account_flags as af, transfer_flags, Command, Engine, EngineConfig, EntryMeta, ResultCode as R,
    SnapshotError, TransferSpec,
};

const CONFIG: EngineConfig = EngineConfig {
    accounts_max: 8,
    transfers_retained_max: 32,
    pending_max: 4,
    sessions_max: 2,
    ledgers_max: 2,
};

struct Ledger {
    engine: Engine,
    position: u64,
}

impl Ledger {
    fn run(&mut self, command: &Command<'_>) -> R {
        self.position += 1;
        let meta = EntryMeta {
            position: self.position,
            timestamp_ns: self.position * 1_000_000_000,
            session_id: 0,
            client_seq: 0,
        };
        let result = self.engine.apply_command(&meta, command).result;
        assert_eq!(self.engine.check_invariants(), Ok(()));
        result
    }
}

/// Accounts 2 and 3 on ledger 1 and 12 and 13 on ledger 2 (1 and 11 the externals), funded,
/// twenty posted transfers, and two open pending transfers: 500 (2 to 3, 50, with a
/// timeout) and 501 (12 to 13, 20, without).
fn ledger() -> Ledger {
    let mut l = Ledger {
        engine: Engine::new(CONFIG).unwrap(),
        position: 0,
    };
    for (id, ledger, flags) in [
        (1, 1, af::EXTERNAL),
        (2, 1, af::DEBITS_MUST_NOT_EXCEED_CREDITS),
        (3, 1, 0),
        (11, 2, af::EXTERNAL),
        (12, 2, 0),
        (13, 2, 0),
    ] {
        let c = Command::CreateAccount {
            id,
            ledger,
            flags,
            code: 0,
        };
        assert_eq!(l.run(&c), R::Ok);
    }
    for (id, account, amount) in [(100, 2, 1_000), (101, 12, 500)] {
        let c = Command::Deposit {
            transfer_id: id,
            account_id: account,
            amount,
        };
        assert_eq!(l.run(&c), R::Ok);
    }
    let posted: Vec<TransferSpec> = (0..20)
        .map(|k| TransferSpec::posted(1_000 + k, 2, 3, 1, 1))
        .collect();
    let c = Command::Transfers {
        flags: 0,
        transfers: &posted,
    };
    assert_eq!(l.run(&c), R::Ok);
    let pending = [
        TransferSpec {
            flags: transfer_flags::PENDING,
            timeout_s: 60,
            ..TransferSpec::posted(500, 2, 3, 50, 1)
        },
        TransferSpec {
            flags: transfer_flags::PENDING,
            ..TransferSpec::posted(501, 12, 13, 20, 2)
        },
    ];
    let c = Command::Transfers {
        flags: 0,
        transfers: &pending,
    };
    assert_eq!(l.run(&c), R::Ok);
    l
}

fn snapshot(e: &Engine) -> Vec<u8> {
    let mut bytes = Vec::new();
    e.snapshot(&mut bytes).unwrap();
    bytes
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Byte offsets of the sections: accounts, retained transfers, index words, pending
/// transfers.
fn sections(b: &[u8]) -> [usize; 4] {
    let count = |at: usize| le64(b, at) as usize;
    let retained = HEADER_SIZE + count(48) * ACCOUNT_SIZE;
    let index = retained + count(56) * RETAINED_SIZE;
    let pending = index + count(80) * 4;
    [HEADER_SIZE, retained, index, pending]
}

/// The retained record of transfer `id`.
fn retained_at(b: &[u8], id: u128) -> usize {
    let at = sections(b)[1];
    (0..le64(b, 56) as usize)
        .map(|k| at + k * RETAINED_SIZE)
        .find(|&r| u128::from(le64(b, r)) | u128::from(le64(b, r + 8)) << 64 == id)
        .expect("a retained record")
}

/// The pending record of transfer `id`.
fn pending_at(b: &[u8], id: u128) -> usize {
    let at = sections(b)[3];
    (0..le64(b, 64) as usize)
        .map(|k| at + k * PENDING_SIZE)
        .find(|&r| u128::from(le64(b, r)) | u128::from(le64(b, r + 8)) << 64 == id)
        .expect("a pending record")
}

/// Makes the trailer match the bytes again, as a writer would have.
fn forge_trailer(b: &mut [u8]) {
    let body = b.len() - TRAILER_SIZE;
    let crc = crc32c::crc32c(&b[..body]);
    b[body..body + 4].copy_from_slice(&crc.to_le_bytes());
}

/// `change` applied to the snapshot of [`ledger`], with a trailer to match, is refused as
/// inconsistent.
fn assert_refused(change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = snapshot(&ledger().engine);
    assert!(Engine::restore_from_bytes(CONFIG, &bytes).is_ok());
    change(&mut bytes);
    forge_trailer(&mut bytes);
    match Engine::restore_from_bytes(CONFIG, &bytes) {
        Err(SnapshotError::Invalid(why)) => assert!(!why.is_empty()),
        other => panic!("restored: {other:?}"),
    }
}

#[test]
fn a_snapshot_retaining_one_id_twice_is_refused_also_when_its_index_is_loaded() {
    // The index the snapshot carries is loaded as it is (same configuration); it has an
    // entry for each record, under the id each had.
    assert_refused(|b| {
        let (first, second) = (retained_at(b, 1_000), retained_at(b, 1_001));
        b.copy_within(first..first + 16, second);
    });
}

#[test]
fn a_loaded_index_that_lost_its_entries_is_rebuilt_and_every_retained_id_still_refused() {
    let l = ledger();
    let mut bytes = snapshot(&l.engine);
    let [_, _, index, pending] = sections(&bytes);
    bytes[index..pending].fill(0);
    forge_trailer(&mut bytes);
    let mut restored = Ledger {
        engine: Engine::restore_from_bytes(CONFIG, &bytes).unwrap(),
        position: l.position,
    };
    assert_eq!(restored.engine.state_hash(), l.engine.state_hash());
    for id in (1_000..1_020).chain([100, 101, 500, 501]) {
        assert!(restored.engine.transfer(id).is_some(), "transfer {id}");
    }
    let again = [TransferSpec::posted(1_005, 2, 3, 1, 1)];
    let c = Command::Transfers {
        flags: 0,
        transfers: &again,
    };
    assert_eq!(restored.run(&c), R::TransferExists);
    assert_eq!(restored.engine.account(2).unwrap().debits_posted, 20);
}

#[test]
fn a_pending_transfer_reserving_other_amounts_than_its_accounts_show_is_refused() {
    // The sums still agree (50 + 20 = 60 + 10): only per account do they differ, and voiding
    // 500 would take 60 from the 50 that account 2 has pending.
    assert_refused(|b| {
        let (p, q) = (pending_at(b, 500), pending_at(b, 501));
        put64(b, p + 32, 60);
        put64(b, q + 32, 10);
        let (p, q) = (retained_at(b, 500), retained_at(b, 501));
        put64(b, p + 16, 60);
        put64(b, q + 16, 10);
    });
}

#[test]
fn a_pending_transfer_across_ledgers_is_refused() {
    // 501 credits account 3 (ledger 1) instead of 13: posting it would unbalance both ledgers.
    assert_refused(|b| {
        let q = pending_at(b, 501);
        put64(b, q + 24, 3);
    });
}

#[test]
fn a_pending_transfer_naming_another_transfers_record_is_refused() {
    // Settling 500 would mark transfer 1,000's record as a settled pending transfer.
    assert_refused(|b| {
        let ring_head = le64(b, 40);
        let offset = (retained_at(b, 1_000) - sections(b)[1]) / RETAINED_SIZE;
        let p = pending_at(b, 500);
        put64(b, p + 48, ring_head + offset as u64);
    });
}

#[test]
fn a_pending_transfer_created_elsewhere_than_its_record_says_or_after_the_snapshot_is_refused() {
    // Its position (offset 64) and log time (72) are its retained record's while that is
    // retained.
    assert_refused(|b| {
        let p = pending_at(b, 500);
        let position = le64(b, p + 64);
        put64(b, p + 64, position - 1);
    });
    assert_refused(|b| {
        let p = pending_at(b, 500);
        let now = le64(b, p + 72);
        put64(b, p + 72, now + 1);
    });
    // Nor past the snapshot's, even with its record (position at 24, log time at 32) agreeing.
    for (pending, record, header) in [(64, 24, 16), (72, 32, 24)] {
        assert_refused(|b| {
            let later = le64(b, header) + 1;
            let (q, r) = (pending_at(b, 501), retained_at(b, 501));
            put64(b, q + pending, later);
            put64(b, r + record, later);
        });
    }
}

#[test]
fn a_retained_record_of_a_pending_transfer_that_is_not_open_is_refused() {
    assert_refused(|b| {
        let r = retained_at(b, 1_003);
        b[r + 61] = 1; // state: pending
    });
}

#[test]
fn a_retained_record_of_unknown_kind_or_state_is_refused() {
    assert_refused(|b| {
        let r = retained_at(b, 1_004);
        b[r + 60] = 9;
    });
    assert_refused(|b| {
        let r = retained_at(b, 1_004);
        b[r + 61] = 200;
    });
}

#[test]
fn an_account_with_undefined_flags_is_refused() {
    assert_refused(|b| {
        let at = sections(b)[0] + 2 * ACCOUNT_SIZE; // account 3
        b[at + 12..at + 14].copy_from_slice(&(1u16 << 9).to_le_bytes());
    });
}

#[test]
fn ring_sequences_beyond_what_the_position_allows_are_refused() {
    // Near the end of the sequence space the ring's arithmetic would overflow a few commands
    // on; and no log position allows more than 256 retained transfers per command.
    assert_refused(|b| put64(b, 40, u64::MAX - 1_000));
    assert_refused(|b| {
        let position = le64(b, 16);
        put64(b, 40, position * 256);
    });
}
