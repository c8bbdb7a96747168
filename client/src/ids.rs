//! Random identifiers: client session ids and default transfer ids.
//!
//! Owns: [`IdSource`], a SplitMix64 ([`transport::rng::Rng`]) seeded once from
//! `/dev/urandom` when readable, else from the wall clock, the process id and a process-wide
//! counter. Not cryptographic: ids only need to be unique with overwhelming probability, and
//! 128 random bits (two draws) make a collision between transfer ids practically impossible.
//!
//! Invariant: ids are never 0 (0 is reserved in the schema).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use transport::rng::Rng;

static SOURCES: AtomicU64 = AtomicU64::new(0);

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = clock
        ^ (u64::from(std::process::id()) << 32)
        ^ SOURCES
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if from_os {
        u64::from_le_bytes(bytes) ^ mixed.rotate_left(29)
    } else {
        mixed
    }
}

/// A source of random non-zero ids.
#[derive(Debug, Clone)]
pub struct IdSource {
    rng: Rng,
}

impl Default for IdSource {
    fn default() -> Self {
        IdSource::new()
    }
}

impl IdSource {
    /// A source seeded from the OS (or the clock, pid and a counter).
    pub fn new() -> Self {
        IdSource {
            rng: Rng::new(seed()),
        }
    }

    /// A source with a fixed seed (tests, reproducible runs).
    pub fn with_seed(seed: u64) -> Self {
        IdSource {
            rng: Rng::new(seed),
        }
    }

    /// A random non-zero u64 (client session ids).
    pub fn next_u64(&mut self) -> u64 {
        loop {
            let v = self.rng.next_u64();
            if v != 0 {
                return v;
            }
        }
    }

    /// A random non-zero u128 (transfer ids).
    pub fn next_u128(&mut self) -> u128 {
        loop {
            let v = u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64());
            if v != 0 {
                return v;
            }
        }
    }
}

/// A fresh random transfer id (a new [`IdSource`] per call; keep one source for many ids).
pub fn random_transfer_id() -> u128 {
    IdSource::new().next_u128()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sources_made_back_to_back_give_different_ids() {
        assert_ne!(random_transfer_id(), random_transfer_id());
        assert_ne!(IdSource::new().next_u64(), IdSource::new().next_u64());
    }

    #[test]
    fn a_seeded_source_is_reproducible_and_never_yields_zero() {
        let mut a = IdSource::with_seed(5);
        let mut b = IdSource::with_seed(5);
        for _ in 0..1000 {
            let x = a.next_u128();
            assert_eq!(x, b.next_u128());
            assert_ne!(x, 0);
        }
    }
}
