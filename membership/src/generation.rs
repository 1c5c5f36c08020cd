//! Generations: the part of a member's identity that tells two lives of one address apart.

use std::sync::atomic::{AtomicU64, Ordering};

/// A generation for a node starting now: microseconds since the Unix epoch, and strictly greater
/// than any generation this process handed out before, so that a node restarted at the same
/// address (even within the same microsecond, in tests) always wins over its predecessor.
pub fn generation_now() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = wall.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}
