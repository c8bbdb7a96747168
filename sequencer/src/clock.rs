//! Log time: the only clock the engine sees.
//!
//! The sequencer stamps every command with the leader's wall-clock time, but the log's time
//! never goes backwards: if the wall clock steps back (NTP, a VM migration), log time holds at
//! the last value until the wall clock catches up. Pending-transfer timeouts are measured in log
//! time, so a clock step can delay an expiry but never replay or reorder one.

use std::time::{SystemTime, UNIX_EPOCH};

/// A monotonic stamp source fed with wall-clock readings.
#[derive(Debug, Default, Clone)]
pub struct LogClock {
    last_ns: u64,
}

impl LogClock {
    /// A clock that will never return less than `floor_ns` (the last log time on restart).
    pub fn starting_at(floor_ns: u64) -> Self {
        LogClock { last_ns: floor_ns }
    }

    /// The log time for a command sequenced when the wall clock read `wall_ns`.
    pub fn stamp(&mut self, wall_ns: u64) -> u64 {
        self.last_ns = self.last_ns.max(wall_ns);
        self.last_ns
    }

    /// The last stamp given.
    pub fn last_ns(&self) -> u64 {
        self.last_ns
    }
}

/// Wall-clock nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_time_never_decreases_when_the_wall_clock_steps_back() {
        let mut clock = LogClock::starting_at(0);
        assert_eq!(clock.stamp(1_000), 1_000);
        assert_eq!(clock.stamp(2_000), 2_000);
        assert_eq!(clock.stamp(500), 2_000, "a step back holds log time");
        assert_eq!(clock.stamp(1_999), 2_000);
        assert_eq!(
            clock.stamp(2_500),
            2_500,
            "and it moves again once the wall clock passes it"
        );
    }

    #[test]
    fn a_restarted_clock_starts_at_the_last_logged_time() {
        let mut clock = LogClock::starting_at(5_000);
        assert_eq!(clock.stamp(4_000), 5_000);
    }
}
