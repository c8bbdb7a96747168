//! The leader pipeline: ingress → sequencer (and, by default, its journal writes) → engine → egress, in one process.
//!
//! See [`pipeline`] for the threads and the durability rule, [`ring`] for the hand-off rings,
//! [`clock`] for log time, [`snapshots`] for the snapshot folder. The network (transport
//! sessions feeding the ingress and carrying replies) is wired on top of this by the node.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod clock;
pub mod node;
pub mod pipeline;
pub mod ring;
pub mod snapshots;

pub use pipeline::{
    OfferError, Pipeline, PipelineConfig, Producer, Replies, Reply, StartReport, Status,
};
