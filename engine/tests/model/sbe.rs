//! Test-side SBE helpers: typed commands to bytes (generated encoders), reply bytes to the
//! model's `Reply` (generated decoders).

use engine::{Balance, Command, ResultCode};
use schemas::ledger::{
    BatchFlags, CommandReplyDecoder, CreateAccountEncoder, DepositEncoder, Id128,
    PostPendingEncoder, TransferFlags, TransfersEncoder, VoidPendingEncoder, WithdrawEncoder,
};

use super::Reply;

fn set(target: &mut Id128, id: u128) {
    target.set_lo(id as u64).set_hi((id >> 64) as u64);
}

/// Encodes `command` (header included) into `buf`; returns its length.
pub fn encode_command(command: &Command<'_>, buf: &mut [u8]) -> usize {
    match *command {
        Command::CreateAccount {
            id,
            ledger,
            flags,
            code,
        } => {
            let mut e = CreateAccountEncoder::wrap_with_header(buf).unwrap();
            e.set_id(id).set_ledger(ledger).set_code(code);
            e.set_flags(schemas::ledger::AccountFlags::from_raw(flags));
            e.finish().unwrap()
        }
        Command::Deposit {
            transfer_id,
            account_id,
            amount,
        } => {
            let mut e = DepositEncoder::wrap_with_header(buf).unwrap();
            set(e.transfer_id_mut(), transfer_id);
            e.set_account_id(account_id).set_amount(amount);
            e.finish().unwrap()
        }
        Command::Withdraw {
            transfer_id,
            account_id,
            amount,
        } => {
            let mut e = WithdrawEncoder::wrap_with_header(buf).unwrap();
            set(e.transfer_id_mut(), transfer_id);
            e.set_account_id(account_id).set_amount(amount);
            e.finish().unwrap()
        }
        Command::Transfers { flags, transfers } => {
            let mut e = TransfersEncoder::wrap_with_header(buf).unwrap();
            e.set_flags(BatchFlags::from_raw(flags));
            {
                let mut g = e.transfers().unwrap();
                for t in transfers {
                    let mut x = g.next_entry().unwrap();
                    set(x.id_mut(), t.id);
                    x.set_debit_account_id(t.debit_account_id)
                        .set_credit_account_id(t.credit_account_id)
                        .set_amount(t.amount)
                        .set_ledger(t.ledger)
                        .set_flags(TransferFlags::from_raw(t.flags))
                        .set_code(t.code)
                        .set_timeout_s(t.timeout_s);
                }
            }
            e.finish().unwrap()
        }
        Command::PostPending {
            id,
            pending_id,
            amount,
        } => {
            let mut e = PostPendingEncoder::wrap_with_header(buf).unwrap();
            set(e.id_mut(), id);
            set(e.pending_id_mut(), pending_id);
            e.set_amount(amount);
            e.finish().unwrap()
        }
        Command::VoidPending { id, pending_id } => {
            let mut e = VoidPendingEncoder::wrap_with_header(buf).unwrap();
            set(e.id_mut(), id);
            set(e.pending_id_mut(), pending_id);
            e.finish().unwrap()
        }
        Command::Invalid => {
            // A header naming an unknown template.
            buf[..8].copy_from_slice(&[0, 0, 99, 0, 0x59, 0x1b, 1, 0]);
            8
        }
    }
}

/// Decodes a `CommandReply`.
pub fn decode_reply(bytes: &[u8]) -> Reply {
    let d = CommandReplyDecoder::wrap_with_header(bytes).unwrap();
    assert_eq!(d.encoded_length().unwrap(), bytes.len(), "reply length");
    Reply {
        position: d.position(),
        timestamp_ns: d.timestamp_ns(),
        client_seq: d.client_seq(),
        result: ResultCode::from_u8(d.result_raw()).unwrap(),
        results: d
            .results()
            .unwrap()
            .map(|r| ResultCode::from_u8(r.result_raw()).unwrap())
            .collect(),
        balances: d
            .balances()
            .unwrap()
            .map(|b| Balance {
                account_id: b.account_id(),
                ledger: b.ledger(),
                debits_posted: b.debits_posted(),
                credits_posted: b.credits_posted(),
                debits_pending: b.debits_pending(),
                credits_pending: b.credits_pending(),
            })
            .collect(),
    }
}
