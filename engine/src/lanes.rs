//! Lane compares for the retention index's buckets, as bit masks (bit `i` for lane `i`):
//! sixteen `u16` lanes packed in eight `u32` words (lane `2w` in the low half of word `w`,
//! lane `2w + 1` in its high half), and twelve `u32` lanes. SSE2 compares and `movemask`s on
//! x86_64 (SSE2 is part of its baseline), a plain loop elsewhere. With `prefetch.rs` and
//! `lines.rs`, the only modules allowed `unsafe`: unaligned 16-byte loads from borrowed words.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod imp {
    use core::arch::x86_64::{
        __m128i, _mm_castsi128_ps, _mm_cmpeq_epi16, _mm_cmpgt_epi32, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_movemask_ps, _mm_packs_epi16, _mm_set1_epi16, _mm_set1_epi32,
        _mm_sub_epi32, _mm_xor_si128,
    };

    /// Words `4 * i..4 * i + 4` of `words` as a vector.
    #[inline(always)]
    fn load<const N: usize>(words: &[u32; N], i: usize) -> __m128i {
        let four: &[u32; 4] = words[4 * i..4 * i + 4].try_into().expect("four words");
        // SAFETY: the pointer comes from a live borrow of four `u32`s (16 bytes), exactly
        // what `_mm_loadu_si128` reads; it allows any alignment. SSE2 is in the x86_64
        // baseline, so the instruction always exists.
        unsafe { _mm_loadu_si128(four.as_ptr().cast()) }
    }

    #[inline(always)]
    pub(crate) fn equal_u16(words: &[u32; 8], value: u16) -> u32 {
        let (lo, hi) = (load(words, 0), load(words, 1));
        // SAFETY: register-only SSE2 operations (baseline on x86_64), no memory access.
        unsafe {
            let v = _mm_set1_epi16(value as i16);
            // Each lane's all-ones or zero, saturated to a byte: bit `i` of the byte mask.
            let bytes = _mm_packs_epi16(_mm_cmpeq_epi16(lo, v), _mm_cmpeq_epi16(hi, v));
            _mm_movemask_epi8(bytes) as u32
        }
    }

    #[inline(always)]
    pub(crate) fn offset_below_u32(words: &[u32; 12], base: u32, len: u32) -> u32 {
        // SAFETY: register-only SSE2 operations (baseline on x86_64), no memory access.
        unsafe {
            // Unsigned `lane - base < len` as a signed compare with both sides biased.
            let bias = _mm_set1_epi32(i32::MIN);
            let base = _mm_set1_epi32(base as i32);
            let len = _mm_xor_si128(_mm_set1_epi32(len as i32), bias);
            let mut mask = 0;
            for i in 0..3 {
                let lanes = _mm_xor_si128(_mm_sub_epi32(load(words, i), base), bias);
                let below = _mm_cmpgt_epi32(len, lanes);
                mask |= (_mm_movemask_ps(_mm_castsi128_ps(below)) as u32) << (4 * i);
            }
            mask
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    #[inline(always)]
    pub(crate) fn equal_u16(words: &[u32; 8], value: u16) -> u32 {
        let mut mask = 0;
        for i in 0..16 {
            let lane = (words[i / 2] >> (16 * (i % 2))) as u16;
            mask |= u32::from(lane == value) << i;
        }
        mask
    }

    #[inline(always)]
    pub(crate) fn offset_below_u32(words: &[u32; 12], base: u32, len: u32) -> u32 {
        let mut mask = 0;
        for (i, &lane) in words.iter().enumerate() {
            mask |= u32::from(lane.wrapping_sub(base) < len) << i;
        }
        mask
    }
}

/// Bit `i` (of 16) set iff `u16` lane `i` of `words` equals `value`.
#[inline(always)]
pub(crate) fn equal_u16(words: &[u32; 8], value: u16) -> u32 {
    imp::equal_u16(words, value)
}

/// Bit `i` (of 12) set iff `words[i].wrapping_sub(base) < len` (unsigned).
#[inline(always)]
pub(crate) fn offset_below_u32(words: &[u32; 12], base: u32, len: u32) -> u32 {
    imp::offset_below_u32(words, base, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_a_plain_loop_on_every_lane() {
        let words: [u32; 12] = [
            0,
            1,
            u32::MAX,
            7,
            0x8000_0000,
            0x0007_0007,
            0x7fff_ffff,
            0x0003_8000,
            5,
            0xffff_0000,
            u32::MAX - 1,
            0x8000_0001,
        ];
        let halves: [u32; 8] = words[..8].try_into().unwrap();
        for value in [0u16, 1, 3, 7, u16::MAX, 0x8000] {
            let want = (0..16).fold(0, |m, i| {
                let lane = (halves[i / 2] >> (16 * (i % 2))) as u16;
                m | u32::from(lane == value) << i
            });
            assert_eq!(equal_u16(&halves, value), want, "{value}");
        }
        for base in [0, 1, 5, u32::MAX, 0x7fff_fff0, 0x8000_0000] {
            for len in [0, 1, 2, 8, 0x7fff_ffff, 0x8000_0000, u32::MAX] {
                let want = (0..12).fold(0, |m, i| {
                    m | u32::from(words[i].wrapping_sub(base) < len) << i
                });
                assert_eq!(offset_below_u32(&words, base, len), want, "{base} {len}");
            }
        }
    }
}
