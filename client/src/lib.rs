//! The tally client library: sessions with a node over the transport.
//!
//! - [`message`]: typed requests (every command and query, encoded over the generated SBE
//!   codecs) and typed responses (decoded, printable as the JSON `tally client --json` prints).
//! - [`wire`]: the session envelope (stream ids, `SessionConnect`/`SessionEvent`,
//!   `RequestHeader`/`ReplyHeader`), shared with the node.
//! - [`tracker`]: requests in flight, sans-IO: sequence numbers, correlation, timeouts and
//!   retries that keep the same `clientSeq` and transfer ids, so a retry is never applied twice.
//! - [`session`]: [`Client`], which drives the transport: a blocking API
//!   ([`Client::request`]) and a pipelined one ([`Client::try_send`] + [`Client::poll`], or
//!   [`Client::poll_wait`], which sleeps in the kernel until a reply arrives instead of
//!   spinning: the better choice when the client shares a small machine with the node).
//! - [`ids`]: random session and transfer ids.
//!
//! Examples: `examples/pipelined.rs` (the poll API at full speed), `tests/fake_node.rs` (a
//! node written against [`wire`] alone), `tests/node_e2e.rs` (the real node).
//!
//! Business rejections (`insufficient_funds`, `account_not_found`, ...) are not errors: they
//! are responses whose [`Response::result`] is not `ok`. [`ClientError`] is for everything
//! else, and its messages say what to do.
//!
//! ```no_run
//! use client::{Client, ClientConfig, Request, ResultCode};
//!
//! let mut client = Client::connect(ClientConfig::new("127.0.0.1:7400".parse()?))?;
//! let id = client.new_transfer_id();
//! let reply = client.request(&Request::Deposit { id, account_id: 10, amount: 500 })?;
//! if reply.result() != Some(ResultCode::Ok) {
//!     eprintln!("rejected: {}", reply.to_json()["result"]);
//! }
//! client.close();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod error;
pub mod ids;
pub mod message;
pub mod session;
pub mod tracker;
pub mod wire;

pub use error::ClientError;
pub use ids::{random_transfer_id, IdSource};
pub use message::{Balance, Request, Response, ResponseError, Transfer};
pub use schemas::ledger::{AccountFlags, ResultCode};
pub use session::{Client, ClientConfig, IDLE_DEFAULT};
pub use tracker::{RequestId, Stats};
