//! The byte-level face of the engine: commands and queries decoded with the generated
//! `schemas::ledger` decoders, replies written with its encoders into the caller's buffer.
//!
//! Decoding untrusted bytes never panics: anything that does not decode as a command (unknown
//! template, other schema, truncated block or group, bytes beyond the message's end (a group
//! count lower than its entries), more than `TRANSFERS_PER_COMMAND_MAX`
//! transfers, a query or reply in the log) becomes `Command::Invalid` and is answered with
//! `invalid_command`. Encoding cannot fail into a buffer of [`REPLY_LEN_MAX`] bytes.
//!
//! Length policy, for commands and queries alike ([`decode_exact`]): the bytes must be exactly
//! one message, as long as its header's block length and its group dimensions make it, no
//! shorter and no longer; anything else is answered with `invalid_command` (a `CommandReply`,
//! as for bytes that do not decode at all). A message of a newer schema version that appends
//! groups (or var data) after the ones this build knows is therefore refused whole rather than
//! half-read: its extra bytes are not told apart from stray ones. (A longer block, the way
//! SBE extends a block with fields, is still read: the header's block length covers it.)

use schemas::ledger::{
    self as sbe, AccountFlags, AccountReplyEncoder, AccountsPageEncoder, CommandReplyEncoder,
    Decoded, Id128, StatusReplyEncoder, TransferReplyEncoder,
};

use crate::command::{Command, TransferSpec};
use crate::engine::Outcome;
use crate::{Account, Engine, EntryMeta, ResultCode, LIST_LIMIT_MAX, TRANSFERS_PER_COMMAND_MAX};

const MESSAGE_HEADER_SIZE: usize = 8;
const GROUP_HEADER_SIZE: usize = 4;
const COMMAND_REPLY_BLOCK: usize = 25;
const RESULT_ENTRY_SIZE: usize = 1;
const BALANCE_ENTRY_SIZE: usize = 44;
const ACCOUNTS_PAGE_BLOCK: usize = 9;
const ACCOUNT_ENTRY_SIZE: usize = 48;

const COMMAND_REPLY_LEN_MAX: usize = MESSAGE_HEADER_SIZE
    + COMMAND_REPLY_BLOCK
    + GROUP_HEADER_SIZE
    + TRANSFERS_PER_COMMAND_MAX * RESULT_ENTRY_SIZE
    + GROUP_HEADER_SIZE
    + 2 * TRANSFERS_PER_COMMAND_MAX * BALANCE_ENTRY_SIZE;
const ACCOUNTS_PAGE_LEN_MAX: usize = MESSAGE_HEADER_SIZE
    + ACCOUNTS_PAGE_BLOCK
    + GROUP_HEADER_SIZE
    + LIST_LIMIT_MAX * ACCOUNT_ENTRY_SIZE;

/// Reply buffer size that always suffices for [`Engine::apply`] and [`Engine::query`] (the
/// largest `CommandReply`: every transfer's result and two balances per transfer).
pub const REPLY_LEN_MAX: usize = if COMMAND_REPLY_LEN_MAX > ACCOUNTS_PAGE_LEN_MAX {
    COMMAND_REPLY_LEN_MAX
} else {
    ACCOUNTS_PAGE_LEN_MAX
};

fn id128(id: &Id128) -> u128 {
    (u128::from(id.hi()) << 64) | u128::from(id.lo())
}

fn set_id128(target: &mut Id128, id: u128) {
    target.set_lo(id as u64).set_hi((id >> 64) as u64);
}

/// Bytes per cache line, the step of `Engine::apply`'s prefetch of a command.
const CACHE_LINE: usize = 64;

/// Decodes one header-prefixed command or query that is exactly `bytes` long (the module's
/// length policy); `None` for anything else, other messages included. The bytes are one
/// message, no more: a group count lower than the entries that follow (or stray bytes) would
/// otherwise apply, or answer, part of what the client sent.
fn decode_exact(bytes: &[u8]) -> Option<Decoded<'_>> {
    let decoded = sbe::decode(bytes).ok()?;
    let length = match &decoded {
        Decoded::CreateAccount(m) => m.encoded_length(),
        Decoded::Deposit(m) => m.encoded_length(),
        Decoded::Withdraw(m) => m.encoded_length(),
        Decoded::Transfers(m) => m.encoded_length(),
        Decoded::PostPending(m) => m.encoded_length(),
        Decoded::VoidPending(m) => m.encoded_length(),
        Decoded::GetAccount(m) => m.encoded_length(),
        Decoded::ListAccounts(m) => m.encoded_length(),
        Decoded::GetTransfer(m) => m.encoded_length(),
        Decoded::GetStatus(m) => m.encoded_length(),
        _ => return None,
    };
    (length.ok() == Some(bytes.len())).then_some(decoded)
}

/// Decodes one header-prefixed command; `scratch` receives the transfers of a `Transfers`.
pub(crate) fn decode_command<'s>(bytes: &[u8], scratch: &'s mut Vec<TransferSpec>) -> Command<'s> {
    scratch.clear();
    let Some(decoded) = decode_exact(bytes) else {
        return Command::Invalid;
    };
    match decoded {
        Decoded::CreateAccount(m) => Command::CreateAccount {
            id: m.id(),
            ledger: m.ledger(),
            flags: m.flags().raw(),
            code: m.code(),
        },
        Decoded::Deposit(m) => Command::Deposit {
            transfer_id: id128(m.transfer_id()),
            account_id: m.account_id(),
            amount: m.amount(),
        },
        Decoded::Withdraw(m) => Command::Withdraw {
            transfer_id: id128(m.transfer_id()),
            account_id: m.account_id(),
            amount: m.amount(),
        },
        Decoded::Transfers(m) => {
            let Ok(group) = m.transfers() else {
                return Command::Invalid;
            };
            if group.count() > TRANSFERS_PER_COMMAND_MAX {
                return Command::Invalid;
            }
            scratch.extend(group.map(|t| TransferSpec {
                id: id128(t.id()),
                debit_account_id: t.debit_account_id(),
                credit_account_id: t.credit_account_id(),
                amount: t.amount(),
                ledger: t.ledger(),
                flags: t.flags().raw(),
                code: t.code(),
                timeout_s: t.timeout_s(),
            }));
            Command::Transfers {
                flags: m.flags().raw(),
                transfers: scratch,
            }
        }
        Decoded::PostPending(m) => Command::PostPending {
            id: id128(m.id()),
            pending_id: id128(m.pending_id()),
            amount: m.amount(),
        },
        Decoded::VoidPending(m) => Command::VoidPending {
            id: id128(m.id()),
            pending_id: id128(m.pending_id()),
        },
        _ => Command::Invalid,
    }
}

const SHORT_BUFFER: &str = "reply buffer shorter than REPLY_LEN_MAX";

fn encode_command_reply(o: &Outcome<'_>, buf: &mut [u8]) -> usize {
    let mut enc = CommandReplyEncoder::wrap_with_header(buf).expect(SHORT_BUFFER);
    enc.set_position(o.position)
        .set_timestamp_ns(o.timestamp_ns)
        .set_client_seq(o.client_seq)
        .set_result_raw(o.result as u8);
    {
        let mut results = enc.results().expect(SHORT_BUFFER);
        for r in o.results {
            results
                .next_entry()
                .expect(SHORT_BUFFER)
                .set_result_raw(*r as u8);
        }
    }
    {
        let mut balances = enc.balances().expect(SHORT_BUFFER);
        for b in o.balances {
            balances
                .next_entry()
                .expect(SHORT_BUFFER)
                .set_account_id(b.account_id)
                .set_ledger(b.ledger)
                .set_debits_posted(b.debits_posted)
                .set_credits_posted(b.credits_posted)
                .set_debits_pending(b.debits_pending)
                .set_credits_pending(b.credits_pending);
        }
    }
    enc.finish().expect(SHORT_BUFFER)
}

impl Engine {
    /// Applies one log entry: `command` is one header-prefixed SBE command message; the
    /// header-prefixed `CommandReply` is written into `reply`, and its length returned.
    /// Bytes that do not decode are answered with `invalid_command` (never a panic).
    ///
    /// # Panics
    /// If `meta.position` does not exceed [`Engine::position`] (log order is the caller's
    /// contract) or `reply` is shorter than [`REPLY_LEN_MAX`].
    pub fn apply(&mut self, meta: &EntryMeta, command: &[u8], reply: &mut [u8]) -> usize {
        // Checked first: a reply that did not fit would panic with the command applied.
        assert!(reply.len() >= REPLY_LEN_MAX, "{SHORT_BUFFER}");
        // The decoder reads the command once, front to back: asking for all of its lines
        // first (a full `Transfers` is 13 KiB, 208 lines) lets misses on a command that is no
        // longer in cache overlap; a line that is costs one instruction.
        for line in command.iter().step_by(CACHE_LINE) {
            crate::prefetch::read(line);
        }
        let mut scratch = std::mem::take(&mut self.transfers_scratch);
        let applied = {
            let decoded = decode_command(command, &mut scratch);
            self.apply_effects(meta, &decoded)
        };
        self.transfers_scratch = scratch;
        match applied {
            Ok(result) => self.encode_applied(meta, result, reply),
            Err(retry) => encode_command_reply(&retry, reply),
        }
    }

    /// Finishes a command applied by `apply_effects`: writes its reply while the state hash
    /// takes in the same balances (one pass over the touched accounts, no copy of them).
    ///
    /// The generated encoder writes the header, the fixed block and both (empty) group
    /// dimensions; the entries, a few hundred per `Transfers` command, are then written
    /// straight into the buffer at the schema's offsets (`RESULT_ENTRY_SIZE`,
    /// `BALANCE_ENTRY_SIZE`, checked against the generated encoder's dimensions and, in this
    /// module's tests, byte for byte against its output), which costs a third of going
    /// through `next_entry` for each.
    fn encode_applied(&mut self, meta: &EntryMeta, result: ResultCode, buf: &mut [u8]) -> usize {
        let head = {
            let mut enc = CommandReplyEncoder::wrap_with_header(buf).expect(SHORT_BUFFER);
            enc.set_position(meta.position)
                .set_timestamp_ns(meta.timestamp_ns)
                .set_client_seq(meta.client_seq)
                .set_result_raw(result as u8);
            enc.results().expect(SHORT_BUFFER);
            enc.balances().expect(SHORT_BUFFER);
            enc.finish().expect(SHORT_BUFFER)
        };
        // The two dimensions (block length u16, count u16) end the message.
        let results_dim = head - 2 * GROUP_HEADER_SIZE;
        let balances_block = u16::from_le_bytes([buf[head - 4], buf[head - 3]]);
        assert_eq!(
            (usize::from(buf[results_dim]), usize::from(balances_block)),
            (RESULT_ENTRY_SIZE, BALANCE_ENTRY_SIZE),
            "reply layout differs from the schema this module was written for"
        );
        let results = self.results();
        let n = results.len();
        let count = u16::try_from(n).expect("at most TRANSFERS_PER_COMMAND_MAX results");
        buf[results_dim + 2..results_dim + 4].copy_from_slice(&count.to_le_bytes());
        let mut at = results_dim + GROUP_HEADER_SIZE;
        for (out, r) in buf[at..at + n].iter_mut().zip(results) {
            *out = *r as u8;
        }
        at += n;
        let balances_dim = at;
        buf[at..at + 2].copy_from_slice(&balances_block.to_le_bytes());
        at += GROUP_HEADER_SIZE;
        let mut entries = buf[at..].chunks_exact_mut(BALANCE_ENTRY_SIZE);
        let mut written = 0usize;
        self.finish_effects(meta, result, |a| {
            let e: &mut [u8; BALANCE_ENTRY_SIZE] = entries
                .next()
                .and_then(|e| e.try_into().ok())
                .expect(SHORT_BUFFER);
            if cfg!(target_endian = "little") {
                // Id and ledger, then the four balance columns, as they lie in the record.
                use zerocopy::IntoBytes;
                let record = a.as_bytes();
                e[0..12].copy_from_slice(&record[0..12]);
                e[12..44].copy_from_slice(&record[16..48]);
            } else {
                e[0..8].copy_from_slice(&a.id.to_le_bytes());
                e[8..12].copy_from_slice(&a.ledger.to_le_bytes());
                e[12..20].copy_from_slice(&a.debits_posted.to_le_bytes());
                e[20..28].copy_from_slice(&a.credits_posted.to_le_bytes());
                e[28..36].copy_from_slice(&a.debits_pending.to_le_bytes());
                e[36..44].copy_from_slice(&a.credits_pending.to_le_bytes());
            }
            written += 1;
        });
        let count = u16::try_from(written).expect("at most 2 * TRANSFERS_PER_COMMAND_MAX balances");
        buf[balances_dim + 2..balances_dim + 4].copy_from_slice(&count.to_le_bytes());
        at + written * BALANCE_ENTRY_SIZE
    }

    /// Answers one header-prefixed query (`GetAccount`, `ListAccounts`, `GetTransfer`,
    /// `GetStatus`) into `reply`; returns its length. Read-only. A query whose `min_position`
    /// is beyond [`Engine::position`] is answered `not_ready`; bytes that are not exactly one
    /// query (the module's length policy: a short, garbled or over-long one alike) get a
    /// `CommandReply` with `invalid_command`. `GetStatus` is answered with role `leader`,
    /// `durable_position` 0 and an empty node name: the node fills in what it knows.
    ///
    /// # Panics
    /// If `reply` is shorter than [`REPLY_LEN_MAX`].
    pub fn query(&self, query: &[u8], reply: &mut [u8]) -> usize {
        assert!(reply.len() >= REPLY_LEN_MAX, "{SHORT_BUFFER}");
        let not_ready = |min: u64| min > self.position;
        match decode_exact(query) {
            Some(Decoded::GetAccount(q)) => {
                let mut enc = AccountReplyEncoder::wrap_with_header(reply).expect(SHORT_BUFFER);
                enc.set_position(self.position);
                let found = self.account(q.account_id());
                let result = match found {
                    _ if not_ready(q.min_position()) => ResultCode::NotReady,
                    Some(a) => {
                        enc.set_id(a.id)
                            .set_ledger(a.ledger)
                            .set_flags(AccountFlags::from_raw(a.flags))
                            .set_code(a.code)
                            .set_debits_posted(a.debits_posted)
                            .set_credits_posted(a.credits_posted)
                            .set_debits_pending(a.debits_pending)
                            .set_credits_pending(a.credits_pending);
                        ResultCode::Ok
                    }
                    None => ResultCode::AccountNotFound,
                };
                enc.set_result_raw(result as u8);
                enc.finish().expect(SHORT_BUFFER)
            }
            Some(Decoded::ListAccounts(q)) => {
                let mut page = [Account::default(); LIST_LIMIT_MAX];
                let ready = !not_ready(q.min_position());
                let n = if ready {
                    self.list_accounts(q.ledger(), q.after_id(), usize::from(q.limit()), &mut page)
                } else {
                    0
                };
                let mut enc = AccountsPageEncoder::wrap_with_header(reply).expect(SHORT_BUFFER);
                let result = if ready {
                    ResultCode::Ok
                } else {
                    ResultCode::NotReady
                };
                enc.set_position(self.position).set_result_raw(result as u8);
                {
                    let mut accounts = enc.accounts().expect(SHORT_BUFFER);
                    for a in &page[..n] {
                        accounts
                            .next_entry()
                            .expect(SHORT_BUFFER)
                            .set_id(a.id)
                            .set_ledger(a.ledger)
                            .set_flags(AccountFlags::from_raw(a.flags))
                            .set_code(a.code)
                            .set_debits_posted(a.debits_posted)
                            .set_credits_posted(a.credits_posted)
                            .set_debits_pending(a.debits_pending)
                            .set_credits_pending(a.credits_pending);
                    }
                }
                enc.finish().expect(SHORT_BUFFER)
            }
            Some(Decoded::GetTransfer(q)) => {
                let id = id128(q.id());
                let mut enc = TransferReplyEncoder::wrap_with_header(reply).expect(SHORT_BUFFER);
                enc.set_position(self.position);
                set_id128(enc.id_mut(), id);
                let result = match self.transfer(id) {
                    _ if not_ready(q.min_position()) => ResultCode::NotReady,
                    Some(t) => {
                        enc.set_debit_account_id(t.debit_account_id)
                            .set_credit_account_id(t.credit_account_id)
                            .set_amount(t.amount)
                            .set_ledger(t.ledger)
                            .set_kind_raw(t.kind as u8)
                            .set_state_raw(t.state as u8)
                            .set_applied_position(t.applied_position)
                            .set_timestamp_ns(t.timestamp_ns)
                            .set_timeout_s(t.timeout_s);
                        ResultCode::Ok
                    }
                    None => ResultCode::TransferNotFound,
                };
                enc.set_result_raw(result as u8);
                enc.finish().expect(SHORT_BUFFER)
            }
            Some(Decoded::GetStatus(_)) => {
                let mut enc = StatusReplyEncoder::wrap_with_header(reply).expect(SHORT_BUFFER);
                enc.set_role_raw(0)
                    .set_position(self.position)
                    .set_durable_position(0)
                    .set_state_hash(self.hash)
                    .set_sessions(self.sessions_count() as u32);
                enc.set_node_name(b"").expect(SHORT_BUFFER);
                enc.finish().expect(SHORT_BUFFER)
            }
            _ => encode_command_reply(
                &Outcome {
                    position: self.position,
                    timestamp_ns: self.now_ns,
                    client_seq: 0,
                    result: ResultCode::InvalidCommand,
                    results: &[],
                    balances: &[],
                },
                reply,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{account_flags, Command, EngineConfig, TransferSpec};
    use schemas::ledger::{CreateAccountEncoder, TransfersEncoder};

    fn meta(position: u64) -> EntryMeta {
        EntryMeta {
            position,
            timestamp_ns: position * 10,
            session_id: 7,
            client_seq: position,
        }
    }

    /// The hand-written entries of `encode_applied` against the generated encoder, byte for
    /// byte, over the same commands applied through the typed path by a second engine.
    #[test]
    fn applied_replies_match_the_generated_encoder_byte_for_byte() {
        let config = EngineConfig {
            accounts_max: 16,
            transfers_retained_max: 16,
            pending_max: 4,
            sessions_max: 4,
            ledgers_max: 2,
        };
        let mut wire = Engine::new(config).unwrap();
        let mut typed = Engine::new(config).unwrap();
        let mut command = vec![0u8; 64 * 1024];
        let mut got = vec![0u8; REPLY_LEN_MAX];
        let mut want = vec![0u8; REPLY_LEN_MAX];
        let mut position = 0;
        for id in 1..=4u64 {
            position += 1;
            let mut enc = CreateAccountEncoder::wrap_with_header(&mut command).unwrap();
            let flags = if id == 1 {
                account_flags::EXTERNAL
            } else {
                account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS
            };
            enc.set_id(id).set_ledger(1).set_code(3);
            enc.set_flags(AccountFlags::from_raw(flags));
            let n = enc.finish().unwrap();
            let len = wire.apply(&meta(position), &command[..n], &mut got);
            let o = typed.apply_command(
                &meta(position),
                &Command::CreateAccount {
                    id,
                    ledger: 1,
                    flags,
                    code: 3,
                },
            );
            let want_len = encode_command_reply(&o, &mut want);
            assert_eq!(&got[..len], &want[..want_len]);
        }
        let specs: Vec<TransferSpec> = [(1, 2, 50), (2, 3, 20), (3, 4, 100), (1, 4, 7), (4, 2, 5)]
            .iter()
            .enumerate()
            .map(|(i, &(d, c, amount))| TransferSpec {
                id: i as u128 + 1,
                debit_account_id: d,
                credit_account_id: c,
                amount,
                ledger: 1,
                ..TransferSpec::default()
            })
            .collect();
        for round in 0..2 {
            position += 1;
            let mut enc = TransfersEncoder::wrap_with_header(&mut command).unwrap();
            enc.set_flags(sbe::BatchFlags::from_raw(0));
            {
                let mut group = enc.transfers().unwrap();
                for t in &specs {
                    let mut e = group.next_entry().unwrap();
                    set_id128(e.id_mut(), t.id);
                    e.set_debit_account_id(t.debit_account_id)
                        .set_credit_account_id(t.credit_account_id)
                        .set_amount(t.amount)
                        .set_ledger(t.ledger);
                }
            }
            let n = enc.finish().unwrap();
            let len = wire.apply(&meta(position), &command[..n], &mut got);
            let o = typed.apply_command(
                &meta(position),
                &Command::Transfers {
                    flags: 0,
                    transfers: &specs,
                },
            );
            assert!(!o.balances.is_empty() || round == 1);
            let want_len = encode_command_reply(&o, &mut want);
            assert_eq!(&got[..len], &want[..want_len], "round {round}");
            assert_eq!(wire.state_hash(), typed.state_hash());
        }
    }
}
