//! The tally client library.
//!
//! Built so far: [`message`], typed requests (every command and query, encoded over the
//! generated SBE codecs) and typed responses (decoded, and printable as the JSON that
//! `tally client --json` prints). Sessions over the transport — pipelining, correlation,
//! timeouts and retries that keep the session sequence number and transfer id — come with the
//! networked node.
#![forbid(unsafe_code)]

pub mod message;

pub use message::{Balance, Request, Response, ResponseError, Transfer};
