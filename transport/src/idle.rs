//! Idle strategies and the agent trait: how a thread waits when its agents found no work.
//!
//! Owns: [`IdleStrategy`] (busy-spin, yield, back-off) and [`Agent`]. Does not spawn threads:
//! the crates that wire threads (`sequencer`, `replicas`) run agents in a loop of
//! `let work = agent.do_work(now); idle.idle(work);` (DESIGN §3). Several agents can be
//! composed onto one thread by summing their work counts.
//!
//! Invariant: `idle(n)` with `n > 0` resets the back-off; `idle(0)` never blocks longer than
//! the strategy's maximum park time.

use std::time::Duration;

/// Spins before a back-off strategy starts yielding.
pub const BACKOFF_SPINS_DEFAULT: u32 = 100;
/// Yields before a back-off strategy starts parking.
pub const BACKOFF_YIELDS_DEFAULT: u32 = 10;
/// First park of a back-off strategy, in nanoseconds.
pub const BACKOFF_PARK_MIN_NS_DEFAULT: u64 = 1_000;
/// Longest park of a back-off strategy, in nanoseconds (bounds the added latency when idle).
pub const BACKOFF_PARK_MAX_NS_DEFAULT: u64 = 1_000_000;

/// A unit of work run by a duty-cycle loop.
pub trait Agent {
    /// Does a bounded amount of work and returns how much was done (0 = idle).
    fn do_work(&mut self, now_ns: u64) -> usize;
    /// A short name for logs and thread names.
    fn name(&self) -> &str;
}

/// What a thread does when its agents report no work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleKind {
    /// Spin with a CPU hint; lowest latency, burns a core (choose explicitly, DESIGN §3).
    BusySpin,
    /// `std::thread::yield_now()`.
    Yield,
    /// Spin, then yield, then park with sleeps doubling up to a maximum. The default.
    BackOff {
        /// Spins before yielding.
        spins_max: u32,
        /// Yields before parking.
        yields_max: u32,
        /// First park, in nanoseconds.
        park_min_ns: u64,
        /// Longest park, in nanoseconds.
        park_max_ns: u64,
    },
}

impl Default for IdleKind {
    fn default() -> Self {
        IdleKind::BackOff {
            spins_max: BACKOFF_SPINS_DEFAULT,
            yields_max: BACKOFF_YIELDS_DEFAULT,
            park_min_ns: BACKOFF_PARK_MIN_NS_DEFAULT,
            park_max_ns: BACKOFF_PARK_MAX_NS_DEFAULT,
        }
    }
}

/// An idle strategy with its back-off state.
#[derive(Debug, Clone)]
pub struct IdleStrategy {
    kind: IdleKind,
    spins: u32,
    yields: u32,
    park_ns: u64,
}

impl Default for IdleStrategy {
    fn default() -> Self {
        IdleStrategy::new(IdleKind::default())
    }
}

impl IdleStrategy {
    /// A strategy of the given kind.
    pub fn new(kind: IdleKind) -> Self {
        let mut s = IdleStrategy {
            kind,
            spins: 0,
            yields: 0,
            park_ns: 0,
        };
        s.reset();
        s
    }

    /// The first park of a back-off: its minimum, but never 0 (a zero park returns at once,
    /// and doubling it stays 0: the back-off would spin for good) nor over the maximum.
    fn park_first_ns(park_min_ns: u64, park_max_ns: u64) -> u64 {
        park_min_ns.min(park_max_ns).max(1)
    }

    /// Busy-spin.
    pub fn busy_spin() -> Self {
        IdleStrategy::new(IdleKind::BusySpin)
    }

    /// Yield.
    pub fn yielding() -> Self {
        IdleStrategy::new(IdleKind::Yield)
    }

    /// Back-off with the default limits.
    pub fn backoff() -> Self {
        IdleStrategy::default()
    }

    /// The kind of this strategy.
    pub fn kind(&self) -> IdleKind {
        self.kind
    }

    /// Called after each duty cycle with the work it did; waits only when `work_count == 0`.
    pub fn idle(&mut self, work_count: usize) {
        if work_count > 0 {
            self.reset();
            return;
        }
        match self.kind {
            IdleKind::BusySpin => std::hint::spin_loop(),
            IdleKind::Yield => std::thread::yield_now(),
            IdleKind::BackOff {
                spins_max,
                yields_max,
                park_min_ns,
                park_max_ns,
            } => {
                if self.spins < spins_max {
                    self.spins += 1;
                    std::hint::spin_loop();
                } else if self.yields < yields_max {
                    self.yields += 1;
                    std::thread::yield_now();
                } else {
                    // `park_timeout`, not `sleep`: a producer that hands this thread work can
                    // wake it at once with `Thread::unpark` instead of waiting out the park.
                    std::thread::park_timeout(Duration::from_nanos(self.park_ns));
                    // Not `clamp`, which panics on a minimum over the maximum.
                    self.park_ns = self
                        .park_ns
                        .saturating_mul(2)
                        .min(park_max_ns)
                        .max(Self::park_first_ns(park_min_ns, park_max_ns));
                }
            }
        }
    }

    /// Forgets the back-off progress (the next idle spins again).
    pub fn reset(&mut self) {
        self.spins = 0;
        self.yields = 0;
        if let IdleKind::BackOff {
            park_min_ns,
            park_max_ns,
            ..
        } = self.kind
        {
            self.park_ns = Self::park_first_ns(park_min_ns, park_max_ns);
        }
    }

    /// The next park duration of a back-off strategy, in nanoseconds (0 for other kinds).
    pub fn park_ns(&self) -> u64 {
        self.park_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A back-off strategy: spins, yields, then parks from `park_min_ns` up to `park_max_ns`.
    fn backoff(
        spins_max: u32,
        yields_max: u32,
        park_min_ns: u64,
        park_max_ns: u64,
    ) -> IdleStrategy {
        IdleStrategy::new(IdleKind::BackOff {
            spins_max,
            yields_max,
            park_min_ns,
            park_max_ns,
        })
    }

    #[test]
    fn backoff_parks_with_growing_sleeps_up_to_the_max_and_reset_restarts_it() {
        let mut s = backoff(2, 1, 1_000, 4_000);
        for _ in 0..3 {
            s.idle(0);
        }
        assert_eq!(s.park_ns(), 1_000, "spins and yields come before parking");
        s.idle(0);
        assert_eq!(s.park_ns(), 2_000);
        s.idle(0);
        s.idle(0);
        s.idle(0);
        assert_eq!(s.park_ns(), 4_000, "capped at the max");
        s.idle(1);
        assert_eq!(s.park_ns(), 1_000, "work resets the back-off");
    }

    #[test]
    fn a_backoff_with_a_zero_or_inverted_park_range_still_parks_and_never_panics() {
        let mut s = backoff(0, 0, 0, 4_000);
        for _ in 0..3 {
            s.idle(0);
        }
        assert_eq!(
            s.park_ns(),
            8,
            "a zero minimum parks 1 ns first, then doubles"
        );
        let mut s = backoff(0, 0, 2_000, 1_000);
        s.idle(0);
        s.idle(0);
        assert_eq!(s.park_ns(), 1_000, "the maximum wins over a larger minimum");
    }

    #[test]
    fn the_default_strategy_is_backoff() {
        assert!(matches!(
            IdleStrategy::default().kind(),
            IdleKind::BackOff { .. }
        ));
    }

    struct Counter(usize);
    impl Agent for Counter {
        fn do_work(&mut self, _now_ns: u64) -> usize {
            self.0 += 1;
            usize::from(self.0.is_multiple_of(2))
        }
        fn name(&self) -> &str {
            "counter"
        }
    }

    #[test]
    fn agents_compose_by_summing_work_counts() {
        let mut agents: Vec<Box<dyn Agent>> = vec![Box::new(Counter(0)), Box::new(Counter(1))];
        let work: usize = agents.iter_mut().map(|a| a.do_work(0)).sum();
        assert_eq!(work, 1);
        assert_eq!(agents[0].name(), "counter");
    }
}
