//! Software prefetch: the one place this crate uses `unsafe`.
//!
//! Batches of transfers look up accounts and ids at random in tables far larger than the
//! caches; asking for the next entries' cache lines while the current one is validated hides
//! most of that memory latency (DESIGN: "prefetch ahead within a batch").
#![allow(unsafe_code)]

/// Hints the CPU to bring the cache line holding `value` into all cache levels.
#[inline(always)]
pub(crate) fn read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is a hint: it never faults, reads nothing architecturally and
    // writes nothing; the pointer comes from a live reference anyway. SSE is part of the
    // x86_64 baseline, so the target feature is always present.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Asks the kernel to back `table`'s whole allocation with transparent huge pages (2 MiB), so
/// that random lookups in tables of hundreds of megabytes do not miss the TLB on every access.
/// Only advice: pages are still mapped lazily on first touch, and failure changes nothing.
pub(crate) fn advise_huge_pages<T>(table: &Vec<T>) {
    const HUGE_PAGE_SIZE: usize = 2 << 20;
    let bytes = table.capacity() * std::mem::size_of::<T>();
    let start = table.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE_SIZE);
    let end = (start + bytes) / HUGE_PAGE_SIZE * HUGE_PAGE_SIZE;
    if end > first {
        // SAFETY: the range lies inside an allocation this `Vec` owns; MADV_HUGEPAGE changes
        // only how the kernel backs the pages, never their contents or validity.
        let _ =
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    }
}

/// Maps every page of `table`'s allocation now (`MADV_POPULATE_WRITE`); see
/// `Engine::prefault`. Only advice: on kernels without it nothing changes.
pub(crate) fn populate<T>(table: &Vec<T>) {
    const PAGE_SIZE: usize = 4096;
    let bytes = table.capacity() * std::mem::size_of::<T>();
    let start = table.as_ptr() as usize;
    let first = start.next_multiple_of(PAGE_SIZE);
    let end = (start + bytes) / PAGE_SIZE * PAGE_SIZE;
    if end > first {
        // SAFETY: the range lies inside an allocation this `Vec` owns; MADV_POPULATE_WRITE
        // only maps the pages (zero-filled, as the allocation already reads), never changes
        // their contents.
        let _ = unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                end - first,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }
}

/// The address range of a table's allocation (its capacity, not just its length), for
/// [`populate_for_write`].
pub(crate) fn span<T>(table: &[T], capacity: usize) -> (usize, usize) {
    (table.as_ptr() as usize, capacity * std::mem::size_of::<T>())
}

/// Lets the calling thread run on the cores its creator may not use: a thread inherits its
/// creator's CPU affinity, so a helper started by a thread pinned to one core would share that
/// core with it and help nothing. The new mask is every online core outside `avoid` (the
/// creator's mask), or every online core if that leaves none. Returns whether it moved.
pub(crate) fn leave_cores(avoid: &libc::cpu_set_t) -> bool {
    // SAFETY: plain syscalls on a local, zero-initialised `cpu_set_t`.
    unsafe {
        let online = libc::sysconf(libc::_SC_NPROCESSORS_ONLN)
            .clamp(1, libc::CPU_SETSIZE as libc::c_long) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..online {
            if !libc::CPU_ISSET(cpu, avoid) {
                libc::CPU_SET(cpu, &mut set);
            }
        }
        if libc::CPU_COUNT(&set) == 0 {
            for cpu in 0..online {
                libc::CPU_SET(cpu, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The calling thread's CPU affinity mask (all zero if it cannot be read).
pub(crate) fn current_cores() -> libc::cpu_set_t {
    // SAFETY: a zero-initialised `cpu_set_t` is valid, and the kernel writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        set
    }
}

/// Asks the kernel to map (zero-filled, writable) every page of each range now, as a write
/// would on first touch, but without writing: contents never change, and a range that is
/// no longer mapped only makes the call fail. Meant for a helper thread that runs ahead of a
/// restore, so that the restoring thread finds its tables' pages mapped. Returns whether the
/// kernel supports it (Linux 5.14+); failure changes nothing.
/// Each range is mapped from its end backwards, so that a thread writing it from the start
/// meets the helper halfway instead of overtaking it. Stops early once `stop` is set.
pub(crate) fn populate_for_write(
    ranges: &[(usize, usize)],
    stop: &std::sync::atomic::AtomicBool,
) -> bool {
    const PAGE_SIZE: usize = 4096;
    /// Populated per call, so that the restoring thread, faulting on its own where it
    /// overtakes this one, waits on page-table locks for short stretches only.
    const STEP: usize = 8 << 20;
    for &(start, len) in ranges {
        let first = start.next_multiple_of(PAGE_SIZE);
        let mut end = (start + len) / PAGE_SIZE * PAGE_SIZE;
        while end > first {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return true;
            }
            let n = STEP.min(end - first);
            let at = end - n;
            // SAFETY: MADV_POPULATE_WRITE only maps pages (zero-filled for anonymous
            // memory, as a first write would); it neither reads nor writes their contents,
            // so it cannot race with the Rust code using the range, and an unmapped range
            // makes it fail with ENOMEM instead of faulting.
            let r = unsafe { libc::madvise(at as *mut libc::c_void, n, libc::MADV_POPULATE_WRITE) };
            if r != 0 {
                return false;
            }
            end = at;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_started_by_a_pinned_thread_leaves_its_core() {
        let allowed = current_cores();
        // SAFETY: reading a `cpu_set_t` the kernel filled.
        let count = unsafe { libc::CPU_COUNT(&allowed) };
        if count < 2 {
            eprintln!(
                "skipped: this process may use {count} core(s); the helper has nowhere to go"
            );
            return;
        }
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &allowed) })
            .expect("an allowed core");
        std::thread::spawn(move || {
            // SAFETY: plain syscalls on local, zero-initialised sets.
            unsafe {
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(first, &mut one);
                assert_eq!(
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one),
                    0
                );
            }
            let pinned = current_cores();
            std::thread::spawn(move || {
                assert!(leave_cores(&pinned));
                let now = current_cores();
                // SAFETY: reading sets the kernel filled.
                unsafe {
                    assert!(
                        !libc::CPU_ISSET(first, &now),
                        "the helper still runs on its creator's core"
                    );
                    assert!(libc::CPU_COUNT(&now) >= 1);
                }
            })
            .join()
            .expect("helper");
        })
        .join()
        .expect("pinned thread");
    }
}
