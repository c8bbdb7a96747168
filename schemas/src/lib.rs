//! tally's SBE schemas and their generated codecs.
//!
//! `build.rs` runs `codec-gen` over `ledger.xml`, so the codecs always match the schema. The
//! naming conventions of generated code are in the `codec_gen` crate docs ("Generated API").
//!
//! Encode a `Transfers` command with two transfers, then decode it:
//!
//! ```
//! use schemas::ledger::{self, BatchFlags, TransferFlags, TransfersDecoder, TransfersEncoder};
//!
//! let mut buf = [0u8; 256];
//! let mut enc = TransfersEncoder::wrap_with_header(&mut buf)?; // header + zeroed block
//! enc.set_flags(BatchFlags::empty().with_atomic(true));
//! {
//!     let mut transfers = enc.transfers()?;
//!     for (i, amount) in [(1u64, 100u64), (2, 250)] {
//!         let mut t = transfers.next_entry()?; // numInGroup follows every entry
//!         t.id_mut().set_lo(i).set_hi(0);
//!         t.set_debit_account_id(10).set_credit_account_id(20).set_amount(amount);
//!         t.set_ledger(1).set_flags(TransferFlags::empty()).set_code(7).set_timeout_s(0);
//!     }
//! }
//! let len = enc.finish()?; // bytes written, header included
//!
//! // Either wrap the expected message directly ...
//! let msg = TransfersDecoder::wrap_with_header(&buf[..len])?;
//! assert!(msg.flags().atomic());
//! let transfers = msg.transfers()?; // checks the whole group's length once
//! assert_eq!(transfers.count(), 2);
//! let amounts: Vec<u64> = transfers.map(|t| t.amount()).collect();
//! assert_eq!(amounts, [100, 250]);
//! // ... or dispatch on the template id.
//! match ledger::decode(&buf[..len])? {
//!     ledger::Decoded::Transfers(m) => assert_eq!(m.transfers()?.get(1).map(|t| t.id().lo()), Some(2)),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A `CommandReply` with a result per transfer and a balance:
//!
//! ```
//! use schemas::ledger::{CommandReplyDecoder, CommandReplyEncoder, ResultCode};
//!
//! let mut buf = [0u8; 256];
//! let mut enc = CommandReplyEncoder::wrap_with_header(&mut buf)?;
//! enc.set_position(42).set_timestamp_ns(1_700_000_000).set_client_seq(9);
//! enc.set_result(ResultCode::LinkedTransferFailed);
//! {
//!     let mut results = enc.results()?;
//!     results.next_entry()?.set_result(ResultCode::InsufficientFunds);
//!     results.next_entry()?.set_result(ResultCode::LinkedTransferFailed);
//! }
//! {
//!     let mut balances = enc.balances()?; // groups in schema order; a skipped one is written empty
//!     balances.next_entry()?.set_account_id(10).set_ledger(1).set_credits_posted(500);
//! }
//! let len = enc.finish()?;
//!
//! let reply = CommandReplyDecoder::wrap_with_header(&buf[..len])?;
//! assert_eq!(reply.position(), 42);
//! assert_eq!(reply.result(), Some(ResultCode::LinkedTransferFailed));
//! let first = reply.results()?.next().and_then(|r| r.result());
//! assert_eq!(first.map(ResultCode::name), Some("insufficient_funds"));
//! assert_eq!(ResultCode::try_from(20u8), Ok(ResultCode::InsufficientFunds));
//! let balance = reply.balances()?.next().map(|b| (b.account_id(), b.credits_posted()));
//! assert_eq!(balance, Some((10, 500)));
//! assert_eq!(reply.encoded_length()?, len);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

/// Codecs for `schemas/ledger.xml` (schema id 7001, version 1).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod ledger {
    include!(concat!(env!("OUT_DIR"), "/ledger.rs"));
}

pub use codec_gen::runtime::{DecodeError, EncodeError, Header};

/// The text of `ledger.xml`, for tools that decode without generated code (`tally log dump`).
pub const LEDGER_XML: &str = include_str!("../ledger.xml");

/// The session envelope's transport constants, shared by the node (`sequencer::node`) and the
/// client (`client::wire`) so the two ends cannot disagree.
pub mod envelope {
    /// Transport stream id the node's ingress subscription listens on (client → node).
    pub const INGRESS_STREAM_ID: i32 = 1001;
    /// Transport stream id of the replies (node → client).
    pub const REPLY_STREAM_ID: i32 = 1002;
    /// Bytes of a header-prefixed `RequestHeader` or `ReplyHeader`: the SBE header plus the
    /// 16-byte block (clientSessionId, clientSeq). The request or reply message follows.
    pub const ENVELOPE_HEADER_LENGTH: usize = crate::ledger::HEADER_LENGTH + 16;
}
