//! The ledger codecs against bytes written by hand from the SBE specification and
//! `ledger.xml`, and against malformed input.

use schemas::ledger::*;
use schemas::DecodeError;

/// Transfers{flags: atomic, transfers: [{id 1, debit 10, credit 20, amount 100, ledger 1,
/// flags none, code 7, timeoutS 0}]}.
const TRANSFERS: &[u8] = &[
    0x02, 0x00, 0x0d, 0x00, 0x59, 0x1b, 0x01,
    0x00, // header: blockLength 2, template 13, schema 7001, version 1
    0x01, 0x00, // flags: atomic (bit 0)
    0x34, 0x00, 0x01, 0x00, // transfers: blockLength 52, numInGroup 1
    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // id: lo 1, hi 0
    10, 0, 0, 0, 0, 0, 0, 0, // debitAccountId
    20, 0, 0, 0, 0, 0, 0, 0, // creditAccountId
    100, 0, 0, 0, 0, 0, 0, 0, // amount
    1, 0, 0, 0, // ledger
    0, 0, // flags
    7, 0, // code
    0, 0, 0, 0, // timeoutS
];

#[test]
fn a_transfers_command_encodes_to_the_golden_bytes() {
    let mut buf = [0u8; 128];
    let mut e = TransfersEncoder::wrap_with_header(&mut buf).expect("fits");
    e.set_flags(BatchFlags::ATOMIC);
    {
        let mut g = e.transfers().expect("fits");
        let mut t = g.next_entry().expect("fits");
        t.id_mut().set_lo(1);
        t.set_debit_account_id(10)
            .set_credit_account_id(20)
            .set_amount(100)
            .set_ledger(1)
            .set_code(7);
    }
    let len = e.finish().expect("fits");
    assert_eq!(&buf[..len], TRANSFERS);
}

#[test]
fn a_transfers_command_decodes_from_the_golden_bytes() {
    let d = TransfersDecoder::wrap_with_header(TRANSFERS).expect("valid");
    assert!(d.flags().atomic());
    let t = d.transfers().expect("valid").next().expect("one transfer");
    assert_eq!(
        (
            t.id().lo(),
            t.id().hi(),
            t.debit_account_id(),
            t.credit_account_id()
        ),
        (1, 0, 10, 20)
    );
    assert_eq!(
        (t.amount(), t.ledger(), t.flags(), t.code(), t.timeout_s()),
        (100, 1, TransferFlags::empty(), 7, 0)
    );
    assert_eq!(d.encoded_length(), Ok(TRANSFERS.len()));
}

#[test]
fn a_truncated_group_is_refused_when_the_group_is_reached() {
    let cut = &TRANSFERS[..TRANSFERS.len() - 1];
    let d = TransfersDecoder::wrap_with_header(cut).expect("header and block fit");
    assert_eq!(
        d.transfers().map(|g| g.count()),
        Err(DecodeError::Truncated {
            offset: 14,
            needed: 52,
            available: 51
        })
    );
}

#[test]
fn another_template_or_schema_is_refused_with_its_offset() {
    let mut bytes = TRANSFERS.to_vec();
    assert!(matches!(
        DepositDecoder::wrap_with_header(&bytes),
        Err(DecodeError::WrongTemplateId {
            offset: 2,
            expected: 11,
            actual: 13
        })
    ));
    bytes[4] = 0;
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::WrongSchemaId { offset: 4, .. })
    ));
    bytes[4] = 0x59;
    bytes[2] = 99;
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::UnknownTemplateId {
            offset: 2,
            template_id: 99
        })
    ));
}

#[test]
fn a_block_length_shorter_than_the_fields_is_refused() {
    let mut bytes = TRANSFERS.to_vec();
    bytes[10] = 51; // the group's blockLength
    let d = TransfersDecoder::wrap_with_header(&bytes).expect("valid");
    assert!(matches!(
        d.transfers(),
        Err(DecodeError::BlockLengthTooShort {
            offset: 10,
            block_length: 51,
            minimum: 52
        })
    ));
}

#[test]
fn enums_and_sets_expose_names_raw_values_and_choices() {
    assert_eq!(ResultCode::InsufficientFunds.name(), "insufficient_funds");
    assert_eq!(ResultCode::InsufficientFunds.raw(), 20);
    assert_eq!(
        ResultCode::from_raw(20),
        Some(ResultCode::InsufficientFunds)
    );
    assert_eq!(ResultCode::from_raw(200), None);
    assert!(ResultCode::try_from(200u8).is_err());
    assert_eq!(
        ResultCode::from_name("not_ready"),
        Some(ResultCode::NotReady)
    );
    assert!(
        ResultCode::ALL
            .iter()
            .enumerate()
            .all(|(i, r)| usize::from(r.raw()) == i),
        "values are 0, 1, 2, ..."
    );
    let mut f = AccountFlags::empty();
    f.set_debits_must_not_exceed_credits(true)
        .set_external(true);
    assert_eq!(f.raw(), 0b101);
    assert!(f.external() && !f.credits_must_not_exceed_debits());
    assert_eq!(AccountFlags::from_raw(0b1000).unknown_bits(), 0b1000);
    assert_eq!(AccountFlags::KNOWN_BITS, 0b111);
}

#[test]
fn optional_fields_read_null_as_none() {
    let mut buf = [0u8; 64];
    let mut e = PostPendingEncoder::wrap_with_header(&mut buf).expect("fits");
    e.id_mut().set_lo(5);
    let len = e.finish().expect("fits");
    let d = PostPendingDecoder::wrap_with_header(&buf[..len]).expect("valid");
    assert_eq!(d.amount(), None, "an unset optional field is null");
    assert_eq!(&buf[len - 8..len], &[0xff; 8], "uint64 null is u64::MAX");
}
