//! Giving the heap's free pages back to the system while a node runs (glibc only).
//!
//! glibc's allocator returns freed memory to the system only from the top of each arena. A node
//! frees most of what a burst allocated (a cluster forming: hundreds of records pulled, syncs
//! answered, connections opened and closed), but the freed pages sit between live allocations
//! and stay resident. Measured on 250 `mesh-node` processes on one machine (docs/BENCHMARKS.md):
//! a node's anonymous memory was 7-8 MiB, and `malloc_trim(0)` brought it to 3.1-3.3 MiB
//! (resident 15.5 -> 11.5 MiB), with nothing freed that was in use. So a running node trims every
//! [`TRIM_EVERY`]: `malloc_trim` releases whole free pages of every arena (`madvise`), a walk of
//! free chunks that takes well under a millisecond on a node's heap.

use std::time::Duration;

/// How often a running node hands free heap pages back.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims every [`TRIM_EVERY`] until the runtime stops; a no-op where the allocator is not glibc's.
pub(crate) async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        trim();
    }
}

/// Returns free heap pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn trim() {
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's own free lists under
    // the allocator's locks; it is safe to call at any time from any thread (glibc >= 2.8).
    // Its result (whether any memory was released) is not needed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns free heap pages to the system: nothing to do off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn trim() {}

#[cfg(test)]
mod tests {
    #[test]
    fn trimming_after_freeing_a_burst_leaves_live_allocations_intact() {
        // Allocate a burst of small blocks, keep every other one (the pattern that strands free
        // pages between live ones), and trim: it must not disturb what is live.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![(i % 251) as u8; 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks.drain(..).step_by(2).collect();
        super::trim();
        for (k, b) in kept.iter().enumerate() {
            assert!(b.iter().all(|&x| x == ((2 * k) % 251) as u8));
        }
    }
}
