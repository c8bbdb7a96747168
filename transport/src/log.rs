//! Term buffer arithmetic shared by senders and receivers: three rotating terms of a
//! power-of-two length, positions computed from term id and term offset (DESIGN §5a).
//!
//! Invariant: a position is `(term_id - initial_term_id) * term_length + term_offset`, the term
//! count being `term_id.wrapping_sub(initial_term_id)` read as a signed i32 (term ids wrap; a
//! term before the initial one gives a negative position, which callers reject); position ↦
//! partition is `term_count % 3`.

use crate::config::TERM_COUNT;

/// Bytes per page touched when a log is created, so that no page faults on the hot path.
const PAGE_LENGTH: usize = 4096;

/// Reads one byte of every cache line of `bytes`. The loads are independent, so their cache
/// misses overlap; a walk over frame headers that follows (a chain of dependent loads: each
/// frame's length gives the next header's place) then finds every line in the L1 cache
/// instead of waiting on each in turn.
#[inline]
pub(crate) fn touch_lines(bytes: &[u8]) {
    // Not a plain XOR fold: the compiler would vectorise that into slow byte gathers.
    let mut x = 0u64;
    for b in bytes.iter().step_by(64) {
        x = x.wrapping_add(u64::from(*b)).rotate_left(1);
    }
    std::hint::black_box(x);
}

/// Geometry and storage of a log of three terms.
#[derive(Debug)]
pub(crate) struct TermLog {
    pub buf: Vec<u8>,
    pub term_length: usize,
    pub shift: u32,
    pub initial_term_id: i32,
}

impl TermLog {
    /// A zeroed log. `term_length` must already be validated as a power of two.
    pub fn new(term_length: usize, initial_term_id: i32) -> Self {
        assert!(term_length.is_power_of_two());
        let mut buf = vec![0u8; term_length * TERM_COUNT];
        // A zeroed allocation is mapped lazily: without this, the first pass over the log
        // takes a page fault every few messages, which shows in round-trip tail latency.
        for page in buf.chunks_mut(PAGE_LENGTH) {
            page[0] = std::hint::black_box(0);
        }
        TermLog {
            buf,
            term_length,
            shift: term_length.trailing_zeros(),
            initial_term_id,
        }
    }

    /// Position of `(term_id, term_offset)`.
    pub fn position(&self, term_id: i32, term_offset: i32) -> i64 {
        Self::position_in(self.shift, self.initial_term_id, term_id, term_offset)
    }

    /// Position of `(term_id, term_offset)` in a stream of terms of `1 << shift` bytes from
    /// `initial_term_id`, without a log (a SETUP's join, before the log is allocated).
    pub fn position_in(shift: u32, initial_term_id: i32, term_id: i32, term_offset: i32) -> i64 {
        let count = term_id.wrapping_sub(initial_term_id) as i64;
        (count << shift) + term_offset as i64
    }

    /// Term id of a position.
    pub fn term_id(&self, position: i64) -> i32 {
        self.initial_term_id
            .wrapping_add((position >> self.shift) as i32)
    }

    /// Offset of a position within its term.
    pub fn term_offset(&self, position: i64) -> usize {
        (position as usize) & (self.term_length - 1)
    }

    /// Start of the term holding `position`.
    pub fn term_start(&self, position: i64) -> i64 {
        position & !((self.term_length as i64) - 1)
    }

    /// Byte index in `buf` of `position`.
    pub fn index(&self, position: i64) -> usize {
        let partition = ((position >> self.shift) as u64 % TERM_COUNT as u64) as usize;
        partition * self.term_length + self.term_offset(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_term_id_and_offset_across_term_id_wrap() {
        let log = TermLog::new(65536, i32::MAX - 1);
        let p = log.position(i32::MIN, 96);
        assert_eq!(
            log.position(i32::MAX - 2, 0),
            -65536,
            "a term before the initial one is negative"
        );
        assert_eq!(p, 2 * 65536 + 96);
        assert_eq!(log.term_id(p), i32::MIN);
        assert_eq!(log.term_offset(p), 96);
        assert_eq!(log.index(p), 2 * 65536 + 96);
        assert_eq!(
            log.index(p + 65536),
            96,
            "the fourth term reuses the first partition"
        );
    }
}
