//! The tally client library (not built yet).
//!
//! This crate will own client sessions over the transport: pipelined requests, correlation of
//! replies, timeouts and retries that keep the session sequence number and transfer id (so a retry
//! is never applied twice), typed results, and blocking plus poll-based APIs.
#![forbid(unsafe_code)]
