//! Typed requests and responses over the generated SBE codecs.
//!
//! Owns: [`Request`] (every command and query a client can send, encoded with
//! [`Request::encode`]) and [`Response`] (every reply, decoded with [`Response::decode`] and
//! printable with [`Response::to_json`], whose field names are what `tally client --json`
//! prints and scripts rely on). Does not own: sessions, sequencing or the network.

use schemas::ledger::{
    self, AccountFlags, BatchFlags, CreateAccountEncoder, DepositEncoder, GetAccountEncoder,
    GetStatusEncoder, GetTransferEncoder, ListAccountsEncoder, PostPendingEncoder, ResultCode,
    TransferFlags, TransfersEncoder, VoidPendingEncoder, WithdrawEncoder,
};
use schemas::{DecodeError, EncodeError};
use serde_json::{json, Value};

/// Bytes that always hold one encoded request (a `Transfers` command with
/// [`TRANSFERS_PER_REQUEST_MAX`] transfers is the largest).
pub const REQUEST_LEN_MAX: usize = 8 + 2 + 4 + TRANSFERS_PER_REQUEST_MAX * 64;
/// Transfers one request may carry (the engine's limit per command).
pub const TRANSFERS_PER_REQUEST_MAX: usize = 256;

/// One transfer of a [`Request::Transfers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Client-chosen id; retries must reuse it.
    pub id: u128,
    /// Account debited.
    pub debit_account_id: u64,
    /// Account credited.
    pub credit_account_id: u64,
    /// Amount in the ledger's smallest unit.
    pub amount: u64,
    /// Ledger both accounts are on.
    pub ledger: u32,
    /// Two-phase: reserve now, post or void later.
    pub pending: bool,
    /// For a pending transfer: seconds of log time until it expires; 0 = never.
    pub timeout_s: u32,
    /// User-defined code.
    pub code: u16,
}

/// Every command and query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Create an account (idempotent for the same fields).
    CreateAccount {
        /// Account id (not 0).
        id: u64,
        /// Ledger (not 0).
        ledger: u32,
        /// No overdraft: debits never exceed credits.
        debits_must_not_exceed_credits: bool,
        /// Mirror rule: credits never exceed debits.
        credits_must_not_exceed_debits: bool,
        /// The ledger's external (world) account, used by deposit and withdraw (one per
        /// ledger; may not be combined with a balance rule).
        external: bool,
        /// User-defined code.
        code: u16,
    },
    /// Money in from the ledger's external account.
    Deposit {
        /// Transfer id.
        id: u128,
        /// Account credited.
        account_id: u64,
        /// Amount.
        amount: u64,
    },
    /// Money out to the ledger's external account.
    Withdraw {
        /// Transfer id.
        id: u128,
        /// Account debited.
        account_id: u64,
        /// Amount.
        amount: u64,
    },
    /// One or more transfers; atomic: all or none.
    Transfers {
        /// All apply or none does.
        atomic: bool,
        /// The transfers, in order.
        transfers: Vec<Transfer>,
    },
    /// Settle a pending transfer.
    PostPending {
        /// Id of this (posting) transfer.
        id: u128,
        /// The pending transfer.
        pending_id: u128,
        /// Amount to post; `None` posts all of it.
        amount: Option<u64>,
    },
    /// Release a pending transfer.
    VoidPending {
        /// Id of this (voiding) transfer.
        id: u128,
        /// The pending transfer.
        pending_id: u128,
    },
    /// Query one account.
    GetAccount {
        /// Account id.
        id: u64,
        /// Answer once this position is applied.
        min_position: u64,
    },
    /// Query accounts in id order.
    ListAccounts {
        /// Only this ledger.
        ledger: Option<u32>,
        /// Ids greater than this.
        after_id: u64,
        /// At most this many.
        limit: u16,
        /// Answer once this position is applied.
        min_position: u64,
    },
    /// Query one retained transfer.
    GetTransfer {
        /// Transfer id.
        id: u128,
        /// Answer once this position is applied.
        min_position: u64,
    },
    /// Query the node's status.
    GetStatus {
        /// Answer once this position is applied.
        min_position: u64,
    },
}

fn set_id(id: &mut ledger::Id128, v: u128) {
    id.set_lo(v as u64).set_hi((v >> 64) as u64);
}

fn id_of(id: &ledger::Id128) -> u128 {
    u128::from(id.hi()) << 64 | u128::from(id.lo())
}

impl Request {
    /// Whether this is a command (goes through the log) rather than a query.
    pub fn is_command(&self) -> bool {
        !matches!(
            self,
            Request::GetAccount { .. }
                | Request::ListAccounts { .. }
                | Request::GetTransfer { .. }
                | Request::GetStatus { .. }
        )
    }

    /// Encodes the request (header-prefixed) into `buf`; returns the length.
    ///
    /// # Errors
    /// `buf` too small, or more than [`TRANSFERS_PER_REQUEST_MAX`] transfers.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match self {
            Request::CreateAccount {
                id,
                ledger,
                debits_must_not_exceed_credits,
                credits_must_not_exceed_debits,
                external,
                code,
            } => {
                let mut e = CreateAccountEncoder::wrap_with_header(buf)?;
                let flags = AccountFlags::empty()
                    .with_debits_must_not_exceed_credits(*debits_must_not_exceed_credits)
                    .with_credits_must_not_exceed_debits(*credits_must_not_exceed_debits)
                    .with_external(*external);
                e.set_id(*id)
                    .set_ledger(*ledger)
                    .set_flags(flags)
                    .set_code(*code);
                e.finish()
            }
            Request::Deposit {
                id,
                account_id,
                amount,
            } => {
                let mut e = DepositEncoder::wrap_with_header(buf)?;
                set_id(e.transfer_id_mut(), *id);
                e.set_account_id(*account_id).set_amount(*amount);
                e.finish()
            }
            Request::Withdraw {
                id,
                account_id,
                amount,
            } => {
                let mut e = WithdrawEncoder::wrap_with_header(buf)?;
                set_id(e.transfer_id_mut(), *id);
                e.set_account_id(*account_id).set_amount(*amount);
                e.finish()
            }
            Request::Transfers { atomic, transfers } => {
                if transfers.len() > TRANSFERS_PER_REQUEST_MAX {
                    return Err(EncodeError::TooManyEntries {
                        group: "transfers",
                        max: TRANSFERS_PER_REQUEST_MAX as u64,
                    });
                }
                let mut e = TransfersEncoder::wrap_with_header(buf)?;
                e.set_flags(BatchFlags::empty().with_atomic(*atomic));
                {
                    let mut group = e.transfers()?;
                    for t in transfers {
                        let mut entry = group.next_entry()?;
                        set_id(entry.id_mut(), t.id);
                        entry
                            .set_debit_account_id(t.debit_account_id)
                            .set_credit_account_id(t.credit_account_id)
                            .set_amount(t.amount)
                            .set_ledger(t.ledger)
                            .set_flags(TransferFlags::empty().with_pending(t.pending))
                            .set_code(t.code)
                            .set_timeout_s(t.timeout_s);
                    }
                }
                e.finish()
            }
            Request::PostPending {
                id,
                pending_id,
                amount,
            } => {
                let mut e = PostPendingEncoder::wrap_with_header(buf)?;
                set_id(e.id_mut(), *id);
                set_id(e.pending_id_mut(), *pending_id);
                e.set_amount(*amount);
                e.finish()
            }
            Request::VoidPending { id, pending_id } => {
                let mut e = VoidPendingEncoder::wrap_with_header(buf)?;
                set_id(e.id_mut(), *id);
                set_id(e.pending_id_mut(), *pending_id);
                e.finish()
            }
            Request::GetAccount { id, min_position } => {
                let mut e = GetAccountEncoder::wrap_with_header(buf)?;
                e.set_account_id(*id).set_min_position(*min_position);
                e.finish()
            }
            Request::ListAccounts {
                ledger,
                after_id,
                limit,
                min_position,
            } => {
                let mut e = ListAccountsEncoder::wrap_with_header(buf)?;
                e.set_ledger(*ledger)
                    .set_after_id(*after_id)
                    .set_limit(*limit)
                    .set_min_position(*min_position);
                e.finish()
            }
            Request::GetTransfer { id, min_position } => {
                let mut e = GetTransferEncoder::wrap_with_header(buf)?;
                set_id(e.id_mut(), *id);
                e.set_min_position(*min_position);
                e.finish()
            }
            Request::GetStatus { min_position } => {
                let mut e = GetStatusEncoder::wrap_with_header(buf)?;
                e.set_min_position(*min_position);
                e.finish()
            }
        }
    }

    /// Encodes into a fresh `Vec` (convenience for tools and tests).
    ///
    /// # Errors
    /// As [`Request::encode`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut buf = vec![0u8; REQUEST_LEN_MAX];
        let len = self.encode(&mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }
}

/// An account's balances, as replies carry them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Account id.
    pub account_id: u64,
    /// Ledger.
    pub ledger: u32,
    /// Posted debits.
    pub debits_posted: u64,
    /// Posted credits.
    pub credits_posted: u64,
    /// Pending debits.
    pub debits_pending: u64,
    /// Pending credits.
    pub credits_pending: u64,
}

impl Balance {
    /// Credits posted minus debits posted (may be negative, e.g. for the external account).
    pub fn balance(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }

    fn to_json(self) -> Value {
        json!({
            "id": self.account_id,
            "ledger": self.ledger,
            "debits_posted": self.debits_posted,
            "credits_posted": self.credits_posted,
            "debits_pending": self.debits_pending,
            "credits_pending": self.credits_pending,
            "balance": self.balance().to_string().parse::<serde_json::Number>().ok(),
        })
    }
}

/// A result code by its snake_case name (`"unknown(N)"` for a code this build does not know).
pub fn result_name(code: Option<ResultCode>, raw: u8) -> String {
    code.map_or_else(|| format!("unknown({raw})"), |c| c.name().to_string())
}

/// Names of the account flags set in `raw`.
pub fn flag_names(raw: u16) -> Vec<&'static str> {
    AccountFlags::CHOICES
        .iter()
        .filter(|(_, bit)| raw & (1 << bit) != 0)
        .map(|(name, _)| *name)
        .collect()
}

/// Why bytes did not decode as a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// Malformed SBE.
    Decode(DecodeError),
    /// A well-formed message that is not a reply.
    NotAReply {
        /// Its template id.
        template_id: u16,
    },
}

impl From<DecodeError> for ResponseError {
    fn from(e: DecodeError) -> Self {
        ResponseError::Decode(e)
    }
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::Decode(e) => write!(f, "malformed reply: {e}"),
            ResponseError::NotAReply { template_id } => {
                write!(f, "template id {template_id} is not a reply")
            }
        }
    }
}

impl std::error::Error for ResponseError {}

/// Every reply, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Reply to a command.
    Command {
        /// Position of the command in the log (the original one for a retried command).
        position: u64,
        /// Leader log time of the command.
        timestamp_ns: u64,
        /// The session's sequence number the reply answers.
        client_seq: u64,
        /// Overall result.
        result: Option<ResultCode>,
        /// Raw result value (meaningful when `result` is `None`).
        result_raw: u8,
        /// Per-transfer results, for a `Transfers` command.
        results: Vec<Option<ResultCode>>,
        /// Accounts touched, after the command.
        balances: Vec<Balance>,
    },
    /// Reply to `GetAccount`.
    Account {
        /// Applied position the answer reflects.
        position: u64,
        /// `ok` or why not.
        result: Option<ResultCode>,
        /// The account (zeros unless `ok`).
        account: Balance,
        /// Account flags.
        flags: u16,
        /// User-defined code.
        code: u16,
    },
    /// Reply to `ListAccounts`.
    Accounts {
        /// Applied position the answer reflects.
        position: u64,
        /// `ok` or why not.
        result: Option<ResultCode>,
        /// The page.
        accounts: Vec<Balance>,
    },
    /// Reply to `GetTransfer`.
    Transfer {
        /// Applied position the answer reflects.
        position: u64,
        /// `ok` or why not.
        result: Option<ResultCode>,
        /// The transfer, as JSON-ready fields.
        fields: Value,
    },
    /// Reply to `GetStatus`.
    Status {
        /// Role name (`leader`, `follower`, `learner`).
        role: String,
        /// Last applied position.
        position: u64,
        /// Last durable position.
        durable_position: u64,
        /// State hash at `position`.
        state_hash: u64,
        /// Client sessions known.
        sessions: u32,
        /// Node name.
        node: String,
    },
}

impl Response {
    /// Decodes one header-prefixed reply.
    ///
    /// # Errors
    /// Malformed bytes or a message that is not a reply.
    pub fn decode(bytes: &[u8]) -> Result<Response, ResponseError> {
        Ok(match ledger::decode(bytes)? {
            ledger::Decoded::CommandReply(m) => Response::Command {
                position: m.position(),
                timestamp_ns: m.timestamp_ns(),
                client_seq: m.client_seq(),
                result: m.result(),
                result_raw: m.result_raw(),
                results: m.results()?.map(|r| r.result()).collect(),
                balances: m
                    .balances()?
                    .map(|b| Balance {
                        account_id: b.account_id(),
                        ledger: b.ledger(),
                        debits_posted: b.debits_posted(),
                        credits_posted: b.credits_posted(),
                        debits_pending: b.debits_pending(),
                        credits_pending: b.credits_pending(),
                    })
                    .collect(),
            },
            ledger::Decoded::AccountReply(m) => Response::Account {
                position: m.position(),
                result: m.result(),
                account: Balance {
                    account_id: m.id(),
                    ledger: m.ledger(),
                    debits_posted: m.debits_posted(),
                    credits_posted: m.credits_posted(),
                    debits_pending: m.debits_pending(),
                    credits_pending: m.credits_pending(),
                },
                flags: m.flags().raw(),
                code: m.code(),
            },
            ledger::Decoded::AccountsPage(m) => Response::Accounts {
                position: m.position(),
                result: m.result(),
                accounts: m
                    .accounts()?
                    .map(|a| Balance {
                        account_id: a.id(),
                        ledger: a.ledger(),
                        debits_posted: a.debits_posted(),
                        credits_posted: a.credits_posted(),
                        debits_pending: a.debits_pending(),
                        credits_pending: a.credits_pending(),
                    })
                    .collect(),
            },
            ledger::Decoded::TransferReply(m) => Response::Transfer {
                position: m.position(),
                result: m.result(),
                fields: json!({
                    "id": id_of(m.id()).to_string(),
                    "debit_account_id": m.debit_account_id(),
                    "credit_account_id": m.credit_account_id(),
                    "amount": m.amount(),
                    "ledger": m.ledger(),
                    "kind": m.kind().map(|k| k.name()),
                    "state": m.state().map(|s| s.name()),
                    "applied_position": m.applied_position(),
                    "timestamp_ns": m.timestamp_ns(),
                    "timeout_s": m.timeout_s(),
                }),
            },
            ledger::Decoded::StatusReply(m) => Response::Status {
                role: m.role().map_or("unknown", |r| r.name()).to_string(),
                position: m.position(),
                durable_position: m.durable_position(),
                state_hash: m.state_hash(),
                sessions: m.sessions(),
                node: String::from_utf8_lossy(m.node_name()?).into_owned(),
            },
            _ => {
                return Err(ResponseError::NotAReply {
                    template_id: ledger::decode_header(bytes)?.template_id,
                })
            }
        })
    }

    /// The overall result code (`Status` is always `ok`).
    pub fn result(&self) -> Option<ResultCode> {
        match self {
            Response::Command { result, .. }
            | Response::Account { result, .. }
            | Response::Accounts { result, .. }
            | Response::Transfer { result, .. } => *result,
            Response::Status { .. } => Some(ResultCode::Ok),
        }
    }

    /// The reply as one JSON object: `result` (snake_case name) and `position` always, then
    /// the fields of its kind.
    pub fn to_json(&self) -> Value {
        let name = |r: &Option<ResultCode>| r.map_or("unknown", |c| c.name());
        match self {
            Response::Command {
                position,
                timestamp_ns,
                client_seq,
                result,
                result_raw,
                results,
                balances,
            } => json!({
                "result": result_name(*result, *result_raw),
                "position": position,
                "timestamp_ns": timestamp_ns,
                "client_seq": client_seq,
                "results": results.iter().map(name).collect::<Vec<_>>(),
                "balances": balances.iter().map(|b| b.to_json()).collect::<Vec<_>>(),
            }),
            Response::Account {
                position,
                result,
                account,
                flags,
                code,
            } => {
                let mut v = account.to_json();
                v["result"] = json!(name(result));
                v["position"] = json!(position);
                v["flags"] = json!(flag_names(*flags));
                v["code"] = json!(code);
                v
            }
            Response::Accounts {
                position,
                result,
                accounts,
            } => json!({
                "result": name(result),
                "position": position,
                "accounts": accounts.iter().map(|b| b.to_json()).collect::<Vec<_>>(),
            }),
            Response::Transfer {
                position,
                result,
                fields,
            } => {
                let mut v = fields.clone();
                v["result"] = json!(name(result));
                v["position"] = json!(position);
                v
            }
            Response::Status {
                role,
                position,
                durable_position,
                state_hash,
                sessions,
                node,
            } => json!({
                "result": "ok",
                "role": role,
                "position": position,
                "durable_position": durable_position,
                "state_hash": format!("{state_hash:016x}"),
                "sessions": sessions,
                "node": node,
            }),
        }
    }
}
