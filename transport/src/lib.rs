//! Reliable, ordered UDP unicast and multicast in the style of Aeron, speaking Aeron's wire
//! protocol byte for byte (DESIGN §2, §5a).
//!
//! The protocol core is sans-IO and deterministic: [`sender::Sender`] and
//! [`receiver::Receiver`] are state machines fed `(now_ns, datagram)` and polled for
//! datagrams and timers; they never read a clock, never touch a socket and take randomness
//! as a seed. [`driver`] wraps them in non-blocking `socket2` sockets with
//! `recvmmsg`/`sendmmsg` as [`driver::Publication`] and [`driver::Subscription`], each an
//! [`idle::Agent`] to be run by a duty-cycle loop. Nothing in this crate spawns threads.
//!
//! Positions are byte positions in a session's stream (Aeron's), computed from term id and
//! term offset.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod counters;
pub mod driver;
pub mod frame;
pub mod idle;
mod log;
mod mmsg;
pub mod receiver;
pub mod rng;
pub mod sender;

pub use config::{Config, ConfigError, FlowControl};
pub use counters::{CounterId, Counters};
pub use driver::{now_ns, Channel, ChannelError, Publication, Subscription};
pub use idle::{Agent, IdleKind, IdleStrategy};
pub use receiver::{ImageEnd, ImageEvent, MessageHeader, Receiver};
pub use sender::{Claim, OfferError, Sender, Transmit};
