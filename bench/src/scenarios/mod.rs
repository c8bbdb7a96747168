//! The scenario table. Each scenario lives in its own module with `pub fn run(args) -> Result`.

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&[String]) -> Result<(), String>,
}

pub const ALL: &[Scenario] = &[];
