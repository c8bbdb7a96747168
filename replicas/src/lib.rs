//! Replicas of the tally log (not built yet).
//!
//! This crate will own the follower (replays the leader's multicast log, journals the same bytes,
//! applies them with the same engine, serves read-only queries with `min_position`) and the
//! learner (replays and writes snapshots), plus catch-up from the leader's journal for a replica
//! that fell behind the transport's retransmit window. See `DESIGN.md` §8.
#![forbid(unsafe_code)]
