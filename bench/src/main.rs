//! The tally benchmark harness.
//!
//! `cargo run --release -p bench -- SCENARIO [options] [--json]` runs one scenario. With `--json`
//! a scenario prints exactly one JSON object of figures on stdout (the bench's convention, read by
//! scripts); without it, a human-readable summary. Every report names the machine it ran on.
//! Performance targets are checked here, never by timed unit tests.
// The transport report is one `json!` object of many fields.
#![recursion_limit = "256"]

mod report;
mod scenarios;

fn usage() -> String {
    let mut s = String::from("usage: bench SCENARIO [options] [--json]\n\nscenarios:\n");
    for sc in scenarios::ALL {
        s.push_str(&format!("  {:<10} {}\n", sc.name, sc.about));
    }
    s.push_str("\n`bench SCENARIO --help` shows a scenario's options.\n");
    s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        eprint!("{}", usage());
        std::process::exit(2);
    };
    if name == "--help" || name == "-h" || name == "help" {
        print!("{}", usage());
        return;
    }
    let Some(sc) = scenarios::ALL.iter().find(|s| s.name == name) else {
        eprintln!("bench: unknown scenario '{name}'\n");
        eprint!("{}", usage());
        std::process::exit(2);
    };
    if let Err(e) = (sc.run)(&args[1..]) {
        eprintln!("bench {}: {e}", sc.name);
        std::process::exit(1);
    }
}
