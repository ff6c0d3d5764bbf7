//! Gives freed heap memory back to the operating system.
//!
//! glibc's malloc serves blocks under its mmap threshold (128 KiB, raised up to 32 MiB as
//! larger blocks are freed) from per-thread arenas, and hands memory back only from the top
//! of an arena. A burst of 60 KB signal payloads left the server at 200 MiB resident with
//! 1 MiB of it live (heaptrack, docs/benchmarks.md "Memory and disk after a burst"): freed
//! blocks sat below live ones. `malloc_trim(0)` also releases the whole free pages inside
//! every arena (`madvise(MADV_DONTNEED)`), which brought that server down to 38 MiB.
//!
//! [`spawn`] runs it every [`TRIM_INTERVAL`] when the arenas hold at least [`TRIM_FLOOR`]
//! free. Other allocators (musl, macOS, Windows) return memory themselves: there it does
//! nothing.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How often the arenas' free memory is checked.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Free arena memory below which a trim is not worth its walk over the arenas.
pub const TRIM_FLOOR: usize = 16 << 20;

/// What one trim found and did.
#[derive(Debug, Clone, Copy)]
pub struct Trim {
    /// Free bytes inside the arenas when it started (resident or not).
    pub free_bytes: usize,
    /// Whether the allocator released any memory.
    pub released: bool,
    /// How long it held the arenas.
    pub took: Duration,
}

/// Gives free arena memory back if at least `floor` bytes of it are free; `None` if not, or
/// off glibc.
pub fn trim_if_over(floor: usize) -> Option<Trim> {
    let free_bytes = glibc::free_bytes();
    if free_bytes < floor {
        return None;
    }
    let started = Instant::now();
    let released = glibc::trim();
    Some(Trim {
        free_bytes,
        released,
        took: started.elapsed(),
    })
}

/// Trims every [`TRIM_INTERVAL`] on a blocking thread (a trim locks each arena in turn and
/// can take milliseconds on a large heap). The caller aborts the task on shutdown.
pub fn spawn() -> JoinHandle<()> {
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match tokio::task::spawn_blocking(|| trim_if_over(TRIM_FLOOR)).await {
                Ok(Some(t)) => tracing::debug!(
                    free_bytes = t.free_bytes,
                    released = t.released,
                    micros = t.took.as_micros(),
                    "trimmed the heap"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(cause = %e, "heap trim failed"),
            }
        }
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "glibc's malloc statistics and trim have no Rust API"
)]
mod glibc {
    /// Free bytes in every arena (`mallinfo2().fordblks`, glibc 2.33+).
    pub(super) fn free_bytes() -> usize {
        // SAFETY: takes no arguments and returns a plain struct; glibc locks each arena.
        unsafe { libc::mallinfo2() }.fordblks
    }

    /// `malloc_trim(0)`: whether memory was released.
    pub(super) fn trim() -> bool {
        // SAFETY: takes no pointers; glibc serializes it with every other allocator call.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    /// Nothing to trim: reports no free memory, so no trim runs.
    pub(super) fn free_bytes() -> usize {
        0
    }

    pub(super) fn trim() -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident set size of this process, from `/proc/self/statm` (pages of 4 KiB).
    fn rss_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("procfs");
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("statm's second field");
        pages * 4096
    }

    /// The fault of the burst, in small: 64 MiB of 60 KB blocks, each followed by a small
    /// block that stays live, so glibc cannot give the freed ones back from an arena's top.
    #[test]
    fn freed_blocks_below_live_ones_are_given_back() {
        const BLOCK: usize = 60_000;
        const COUNT: usize = (64 << 20) / BLOCK;
        let mut pinned = Vec::with_capacity(COUNT);
        let mut big = Vec::with_capacity(COUNT);
        for i in 0..COUNT {
            big.push(vec![u8::try_from(i % 251).unwrap_or(1); BLOCK]);
            pinned.push(Box::new(i));
        }
        let loaded = rss_bytes();
        drop(big);
        let freed = rss_bytes();
        let trim = trim_if_over(TRIM_FLOOR).expect("64 MiB free is over the floor");
        let trimmed = rss_bytes();
        assert!(trim.free_bytes >= 48 << 20, "{trim:?}");
        assert!(trim.released, "{trim:?}");
        assert!(
            freed > loaded - (16 << 20),
            "glibc kept the freed blocks by itself: {loaded} -> {freed}"
        );
        assert!(
            trimmed + (48 << 20) <= freed,
            "RSS {loaded} loaded, {freed} freed, {trimmed} after the trim"
        );
        assert_eq!(pinned.len(), COUNT);
    }

    #[test]
    fn a_heap_with_little_free_is_left_alone() {
        assert!(trim_if_over(usize::MAX).is_none());
    }
}
