//! Membership for mesh: SWIM gossip (via [foca]) and the shared service registry.
//!
//! TODO(design doc): filled in below once the driver lands.
#![deny(missing_docs)]

pub mod config;
mod core;
pub mod driver;
pub mod registry;
pub mod swim;
pub mod transport;

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::config::MembershipConfig;
pub use crate::core::{Membership, Stats, SyncTask, Transmit};
pub use crate::driver::{MembershipHandle, Stopped};
pub use crate::registry::{Event, MemberInfo, MemberState, ServiceNode};

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
