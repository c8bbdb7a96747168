//! The leader pipeline (not built yet).
//!
//! This crate will own the leader node's threads: ingress -> sequencer (stamps position and log
//! time, packs batches) -> journal writer (group commit) -> engine -> egress (replies released
//! only once durable). See `DESIGN.md` §1 and §3.
#![forbid(unsafe_code)]
