//! Sixteen-lane `u32` compares for the retention index's buckets, as bit masks (bit `i` for lane
//! `i`): four SSE2 compares and `movemask`s on x86_64 (SSE2 is part of its baseline), a
//! plain loop elsewhere. With `prefetch.rs`, the only module allowed `unsafe`: unaligned
//! 16-byte loads from a borrowed `[u32; 8]`.
#![allow(unsafe_code)]

/// Lanes per compare.
pub(crate) const LANES: usize = 16;

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::LANES;
    use core::arch::x86_64::{
        __m128i, _mm_castsi128_ps, _mm_cmpeq_epi32, _mm_cmpgt_epi32, _mm_loadu_si128,
        _mm_movemask_ps, _mm_set1_epi32, _mm_sub_epi32, _mm_xor_si128,
    };

    /// Vectors of four lanes each.
    const VECTORS: usize = LANES / 4;

    /// `lanes` as vectors of four.
    #[inline(always)]
    fn load(lanes: &[u32; LANES]) -> [__m128i; VECTORS] {
        // SAFETY: each pointer comes from a live borrow of four `u32`s (16 bytes), exactly
        // what `_mm_loadu_si128` reads; it allows any alignment. SSE2 is in the x86_64
        // baseline, so the instructions always exist.
        std::array::from_fn(|i| unsafe { _mm_loadu_si128(lanes[4 * i..].as_ptr().cast()) })
    }

    /// Bit mask of the lanes where the 32-bit comparison vectors are all ones.
    #[inline(always)]
    fn mask(v: [__m128i; VECTORS]) -> u32 {
        let mut m = 0;
        for (i, v) in v.into_iter().enumerate() {
            // SAFETY: register-only SSE (baseline on x86_64) operations, no memory access.
            m |= (unsafe { _mm_movemask_ps(_mm_castsi128_ps(v)) } as u32) << (4 * i);
        }
        m
    }

    #[inline(always)]
    pub(crate) fn equal(lanes: &[u32; LANES], value: u32) -> u32 {
        // SAFETY: register-only SSE2 operations (baseline on x86_64), no memory access.
        unsafe {
            let v = _mm_set1_epi32(value as i32);
            mask(load(lanes).map(|l| _mm_cmpeq_epi32(l, v)))
        }
    }

    #[inline(always)]
    pub(crate) fn offset_below(lanes: &[u32; LANES], base: u32, len: u32) -> u32 {
        // SAFETY: register-only SSE2 operations (baseline on x86_64), no memory access.
        unsafe {
            // Unsigned `lane - base < len` as a signed compare with both sides biased.
            let bias = _mm_set1_epi32(i32::MIN);
            let base = _mm_set1_epi32(base as i32);
            let len = _mm_xor_si128(_mm_set1_epi32(len as i32), bias);
            mask(
                load(lanes)
                    .map(|l| _mm_cmpgt_epi32(len, _mm_xor_si128(_mm_sub_epi32(l, base), bias))),
            )
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::LANES;

    #[inline(always)]
    pub(crate) fn equal(lanes: &[u32; LANES], value: u32) -> u32 {
        let mut mask = 0;
        for (i, &lane) in lanes.iter().enumerate() {
            mask |= u32::from(lane == value) << i;
        }
        mask
    }

    #[inline(always)]
    pub(crate) fn offset_below(lanes: &[u32; LANES], base: u32, len: u32) -> u32 {
        let mut mask = 0;
        for (i, &lane) in lanes.iter().enumerate() {
            mask |= u32::from(lane.wrapping_sub(base) < len) << i;
        }
        mask
    }
}

/// Bit `i` set iff `lanes[i] == value`.
#[inline(always)]
pub(crate) fn equal(lanes: &[u32; LANES], value: u32) -> u32 {
    imp::equal(lanes, value)
}

/// Bit `i` set iff `lanes[i].wrapping_sub(base) < len` (unsigned).
#[inline(always)]
pub(crate) fn offset_below(lanes: &[u32; LANES], base: u32, len: u32) -> u32 {
    imp::offset_below(lanes, base, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_a_plain_loop_on_every_lane() {
        let lanes = [
            0,
            1,
            u32::MAX,
            7,
            0x8000_0000,
            7,
            0x7fff_ffff,
            3,
            5,
            0,
            u32::MAX - 1,
            0x8000_0001,
            2,
            7,
            1,
            0x7fff_fff5,
        ];
        for value in [0, 1, 3, 7, u32::MAX, 0x8000_0000] {
            let want = (0..LANES).fold(0, |m, i| m | u32::from(lanes[i] == value) << i);
            assert_eq!(equal(&lanes, value), want);
        }
        for base in [0, 1, 5, u32::MAX, 0x7fff_fff0, 0x8000_0000] {
            for len in [0, 1, 2, 8, 0x7fff_ffff, 0x8000_0000, u32::MAX] {
                let want = (0..LANES).fold(0, |m, i| {
                    m | u32::from(lanes[i].wrapping_sub(base) < len) << i
                });
                assert_eq!(offset_below(&lanes, base, len), want, "{base} {len}");
            }
        }
    }
}
