//! The leader pipeline (being built).
//!
//! This crate will own the leader node's threads: ingress -> sequencer (stamps position and log
//! time, packs batches) -> journal writer (group commit) -> engine -> egress (replies released
//! only once durable). See `DESIGN.md` §1 and §3.
//!
//! Built so far: [`ring`], the single-producer/single-consumer byte ring used for hand-offs.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod ring;
