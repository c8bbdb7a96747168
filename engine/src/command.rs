//! Typed commands and queries: the engine's input once the SBE bytes are decoded. They mirror
//! the schema's messages field for field (ids as `u128`), borrow the transfer group, and carry
//! no validation: every rule lives in the engine.

/// One transfer of a `Transfers` command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferSpec {
    /// Client-chosen id; 0 is reserved.
    pub id: u128,
    /// Account debited.
    pub debit_account_id: u64,
    /// Account credited.
    pub credit_account_id: u64,
    /// Amount in the ledger's smallest unit.
    pub amount: u64,
    /// Ledger of the transfer; both accounts must be on it.
    pub ledger: u32,
    /// `transfer_flags` bits.
    pub flags: u16,
    /// User-defined code.
    pub code: u16,
    /// For pending transfers: seconds of log time until expiry; 0 = never.
    pub timeout_s: u32,
}

impl TransferSpec {
    /// A plain (posted) transfer of `amount` from `debit` to `credit` on `ledger`: no flags,
    /// code 0.
    #[must_use]
    pub const fn posted(id: u128, debit: u64, credit: u64, amount: u64, ledger: u32) -> Self {
        TransferSpec {
            id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount,
            ledger,
            flags: 0,
            code: 0,
            timeout_s: 0,
        }
    }
}

/// A state-changing command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Create an account (idempotent for the same fields).
    CreateAccount {
        /// Account id; 0 is reserved.
        id: u64,
        /// Ledger; 0 is reserved.
        ledger: u32,
        /// `account_flags` bits.
        flags: u16,
        /// User-defined code.
        code: u16,
    },
    /// Move money from the ledger's external account into `account_id`.
    Deposit {
        /// Transfer id.
        transfer_id: u128,
        /// Account credited.
        account_id: u64,
        /// Amount.
        amount: u64,
    },
    /// Move money from `account_id` to the ledger's external account.
    Withdraw {
        /// Transfer id.
        transfer_id: u128,
        /// Account debited.
        account_id: u64,
        /// Amount.
        amount: u64,
    },
    /// One or more transfers; with `batch_flags::ATOMIC` all apply or none does.
    Transfers {
        /// `batch_flags` bits.
        flags: u16,
        /// The transfers, in order.
        transfers: &'a [TransferSpec],
    },
    /// Settle a pending transfer, fully (`amount: None`) or partially.
    PostPending {
        /// Id of this settlement.
        id: u128,
        /// Id of the pending transfer.
        pending_id: u128,
        /// Amount to post; `None` posts the whole pending amount.
        amount: Option<u64>,
    },
    /// Release a pending transfer.
    VoidPending {
        /// Id of this settlement.
        id: u128,
        /// Id of the pending transfer.
        pending_id: u128,
    },
    /// Bytes that did not decode as a command: answered with `invalid_command`.
    Invalid,
}

/// A read-only query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// One account by id.
    GetAccount {
        /// Account id.
        account_id: u64,
    },
    /// Accounts with id greater than `after_id`, in id order, optionally on one ledger.
    ListAccounts {
        /// Ledger filter; `None` = every ledger.
        ledger: Option<u32>,
        /// Exclusive lower bound on ids.
        after_id: u64,
        /// Page size (capped at `LIST_LIMIT_MAX`).
        limit: u16,
    },
    /// One retained transfer by id.
    GetTransfer {
        /// Transfer id.
        id: u128,
    },
    /// Position, state hash and session count.
    GetStatus,
}
