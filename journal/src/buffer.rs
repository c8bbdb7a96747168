//! Block-aligned byte buffers for O_DIRECT I/O, in safe code.
//!
//! Owns: an allocation whose usable part starts at a [`BLOCK_SIZE`]-aligned address and whose
//! length is a multiple of [`BLOCK_SIZE`]. It over-allocates a `Vec<u8>` by one block and uses the
//! aligned window inside it, so no `unsafe` (no `posix_memalign`) is needed.
//!
//! Invariant: `as_slice().as_ptr()` is `BLOCK_SIZE`-aligned and `len() % BLOCK_SIZE == 0`; the
//! vector is never reallocated after construction (it is never grown), so the window stays put.

use crate::BLOCK_SIZE;

/// A zero-initialised, [`BLOCK_SIZE`]-aligned buffer of a fixed length.
#[derive(Debug)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes, rounded up to a multiple of [`BLOCK_SIZE`].
    pub fn zeroed(len: usize) -> Self {
        let len = crate::format::padded_size(len.max(1));
        let storage = vec![0u8; len + BLOCK_SIZE];
        let start = storage.as_ptr().align_offset(BLOCK_SIZE);
        assert!(
            start < BLOCK_SIZE,
            "align_offset on u8 pointers always succeeds"
        );
        let buf = AlignedBuf {
            storage,
            start,
            len,
        };
        assert_eq!(buf.as_slice().as_ptr() as usize % BLOCK_SIZE, 0);
        buf
    }

    /// The aligned bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The aligned bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_block_aligned_and_padded_to_whole_blocks() {
        for len in [1, 100, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE] {
            let buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.as_slice().as_ptr() as usize % BLOCK_SIZE, 0);
            assert_eq!(buf.as_slice().len() % BLOCK_SIZE, 0);
            assert!(buf.as_slice().len() >= len);
            assert!(buf.as_slice().iter().all(|&b| b == 0));
        }
    }
}
