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
//! Data leaves a publication straight from its term log, and a run of equal datagrams lying
//! back to back there goes to the kernel in one segmented send (`UDP_SEGMENT`,
//! [`config::Config::udp_segmentation`], on by default; it turns itself off when the kernel
//! or the route refuses it); a subscription reads such runs coalesced (`UDP_GRO`,
//! [`config::Config::udp_coalescing`], on by default), in order straight into its log. On
//! the wire they are the same datagrams, so peers without offload (Aeron in other languages)
//! see no difference; the per-datagram system cost, most of a loopback datagram's, is paid
//! once per run (up to 64 datagrams or 64 KiB). When traffic is sparse (request/response),
//! the other end of the scale, an idle subscription polls with `recvfrom` and a single
//! datagram goes out with `send`: the calls with no message header for the kernel to walk,
//! which a busy-spinning agent makes over and over.
//!
//! Positions are byte positions in a session's stream (Aeron's), computed from term id and
//! term offset.
//!
//! The frames ([`frame`]): a publication sends DATA (PAD to fill a term's end, an empty DATA
//! frame as heartbeat) and SETUP until a receiver answers; a subscription answers with status
//! messages (SM: its consumption position and window, or a request for a SETUP), NAKs for
//! gaps and RTT measurements (RTTM, which the publication echoes). A subscription that
//! refuses a SETUP (a term longer than [`Config::image_term_length_max`], or already
//! [`config::IMAGES_MAX`] images) answers with an ERR frame naming the reason, at most one
//! per publication per `setup_interval_ns` and a few in all; the publication keeps retrying
//! and shows the latest as [`Sender::last_refusal`] (its offers still fail with
//! [`OfferError::NotConnected`]).
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
pub use frame::RefusalReason;
pub use idle::{Agent, IdleKind, IdleStrategy};
pub use receiver::{ImageEnd, ImageEvent, MessageHeader, Receiver};
pub use sender::{Claim, OfferError, Refusal, Sender, Transmit};
