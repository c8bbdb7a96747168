//! The scenario table. Each scenario lives in its own module with `pub fn run(args) -> Result`.

mod codec;
mod e2e;
mod engine;
mod pipeline;
mod transport;

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&[String]) -> Result<(), String>,
}

pub const ALL: &[Scenario] = &[
    Scenario {
        name: "codec",
        about: "SBE encode and decode rates of a transfer command",
        run: codec::run,
    },
    Scenario {
        name: "e2e",
        about: "client sessions over UDP loopback to a node process, durable replies; node peak RSS",
        run: e2e::run,
    },
    Scenario {
        name: "e2e-node",
        about: "(internal) the node process the e2e scenario starts",
        run: e2e::run_node,
    },
    Scenario {
        name: "engine",
        about: "the ledger engine alone: pre-encoded transfers applied in one thread, snapshot write/restore",
        run: engine::run,
    },
    Scenario {
        name: "pipeline",
        about: "producers -> sequencer -> journal (O_DIRECT + fdatasync) -> engine -> durable replies",
        run: pipeline::run,
    },
    Scenario {
        name: "transport",
        about: "64-byte message throughput (unicast, multicast to 2) and ping-pong RTT, beside raw UDP",
        run: transport::run,
    },
];
