//! The retention ring's memory: a fixed-size table of zero-filled records in an anonymous
//! mapping of its own (page-aligned, so every 64-byte record is exactly one cache line, mapped
//! by the kernel only when first touched), and the streaming stores that append to it. With
//! `prefetch.rs` and `lanes.rs`, the only module allowed `unsafe`.
//!
//! Why streaming stores: the ring is written once per retained transfer, in order, and read
//! back only on an idempotency hit or a query. Ordinary stores would first read each line
//! from memory (read-for-ownership) and then keep it in the core's caches, where the ring's
//! stream (64 bytes per transfer) evicts the account table a small ledger keeps there;
//! non-temporal stores write the whole line straight to memory and leave the caches alone.
//! They are weakly ordered, so [`store_fence`] ends every command that may have used them.
#![allow(unsafe_code)]

use std::ptr::NonNull;

/// A fixed-length table of `T`s, all zero bytes at first, in its own anonymous mapping.
pub(crate) struct MappedTable<T> {
    ptr: NonNull<T>,
    len: usize,
    /// Bytes mapped (a whole number of pages, at least one).
    mapped: usize,
}

// SAFETY: the table owns its mapping exclusively, like a `Vec<T>` owns its buffer: sending or
// sharing it is sending or sharing the `T`s.
unsafe impl<T: Send> Send for MappedTable<T> {}
// SAFETY: as above; `&MappedTable<T>` only hands out `&[T]`.
unsafe impl<T: Sync> Sync for MappedTable<T> {}

impl<T: zerocopy::FromZeros> MappedTable<T> {
    /// `len` zeroed `T`s (all-zero bytes are a valid `T`: `FromZeros`). Aborts, as a failed
    /// allocation does, when the kernel refuses the mapping.
    pub(crate) fn zeroed(len: usize) -> MappedTable<T> {
        const PAGE_SIZE: usize = 4096;
        assert!(std::mem::align_of::<T>() <= PAGE_SIZE);
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("table size overflows");
        let mapped = bytes.max(1).next_multiple_of(PAGE_SIZE);
        // SAFETY: a fresh private anonymous mapping: no address hint, no file; the kernel
        // returns page-aligned, zero-filled memory that nothing else refers to.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let layout = std::alloc::Layout::from_size_align(mapped, PAGE_SIZE)
                .expect("page-aligned layout");
            std::alloc::handle_alloc_error(layout);
        }
        MappedTable {
            ptr: NonNull::new(p.cast::<T>()).expect("mmap never returns null here"),
            len,
            mapped,
        }
    }
}

impl<T> std::ops::Deref for MappedTable<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialised (zero-filled, `FromZeros`, or since
        // written) `T`s inside a mapping this table owns for its whole life.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::ops::DerefMut for MappedTable<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for MappedTable<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `zeroed` created; no borrow of it can outlive
        // `self`. (`T`s are plain data here: nothing to drop in place.)
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.mapped);
        }
    }
}

/// Writes `value` to `dst`, one whole cache line, with non-temporal stores (see the module
/// docs); elsewhere than on x86_64, an ordinary store.
#[inline(always)]
pub(crate) fn store_line<T: Copy + zerocopy::IntoBytes + zerocopy::Immutable>(
    dst: &mut T,
    value: &T,
) {
    const { assert!(std::mem::size_of::<T>() == 64 && std::mem::align_of::<T>() == 64) };
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let src = value.as_bytes().as_ptr().cast::<__m128i>();
        let dst = (dst as *mut T).cast::<__m128i>();
        // SAFETY: `dst` is an exclusive borrow of 64 bytes aligned to 64 (checked above), so
        // each 16-byte store is in bounds and 16-byte aligned as `_mm_stream_si128` requires;
        // `src` reads the 64 bytes of `value` (unaligned loads allow any alignment). SSE2 is
        // in the x86_64 baseline. Every byte of `T` is written, with `T`'s own bytes.
        unsafe {
            for i in 0..4 {
                _mm_stream_si128(dst.add(i), _mm_loadu_si128(src.add(i)));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        *dst = *value;
    }
}

/// Orders every earlier [`store_line`] before any later store, so that whoever is handed the
/// engine afterwards (another thread, through a lock or channel) sees the records.
#[inline(always)]
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` only orders stores; it reads or writes no memory.
    unsafe {
        core::arch::x86_64::_mm_sfence();
    }
}
