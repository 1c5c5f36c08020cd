/* This Source Code Form is subject to the terms of the Mozilla Public
 * License, v. 2.0. If a copy of the MPL was not distributed with this
 * file, You can obtain one at https://mozilla.org/MPL/2.0/. */
// mesh fork: Lifeguard's local health awareness, after memberlist's
// `awareness.go`.
//
// A node that misses acks may be the one at fault: starved of CPU,
// its socket buffer overflowing, its own link lossy. Probing others
// on the usual schedule it would suspect healthy members, and they
// would be declared down. So every probe that ends without an ack
// raises a health score, every probe answered lowers it, and so does
// (raises it) having to refute a suspicion about ourselves; the probe
// interval and the probe timeout are stretched by `score + 1`. A
// healthy node keeps score 0 and the configured timings.
use core::time::Duration;

/// A health score in `0..max`: 0 is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Awareness {
    score: u8,
    max: u8,
}

impl Awareness {
    /// `max` is memberlist's `AwarenessMaxMultiplier`: timeouts are
    /// stretched at most `max` times. 0 or 1 turns awareness off.
    pub(crate) const fn new(max: u8) -> Self {
        Self { score: 0, max }
    }

    /// Changes the limit, keeping the score within it.
    pub(crate) fn set_max(&mut self, max: u8) {
        self.max = max;
        self.score = self.score.min(max.saturating_sub(1));
    }

    /// Adds `delta` to the score, kept in `0..max`.
    pub(crate) fn apply_delta(&mut self, delta: i8) {
        let top = i16::from(self.max.saturating_sub(1));
        let score = (i16::from(self.score) + i16::from(delta)).clamp(0, top);
        // In 0..=254 after the clamp.
        self.score = u8::try_from(score).unwrap_or(0);
    }

    pub(crate) const fn score(&self) -> u8 {
        self.score
    }

    /// `timeout` stretched by `score + 1`.
    pub(crate) fn scale(&self, timeout: Duration) -> Duration {
        timeout.saturating_mul(u32::from(self.score) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_stays_within_bounds_and_scales_timeouts() {
        let mut a = Awareness::new(8);
        let t = Duration::from_millis(500);
        assert_eq!(a.scale(t), t);
        a.apply_delta(-1);
        assert_eq!(a.score(), 0, "never below 0");
        for _ in 0..20 {
            a.apply_delta(1);
        }
        assert_eq!(a.score(), 7, "at most max - 1");
        assert_eq!(a.scale(t), t * 8);
        a.apply_delta(-3);
        assert_eq!(a.score(), 4);
        assert_eq!(a.scale(t), t * 5);
        a.set_max(3);
        assert_eq!(a.score(), 2, "a lower limit clamps the score");
    }

    #[test]
    fn zero_or_one_turns_it_off() {
        for max in [0, 1] {
            let mut a = Awareness::new(max);
            a.apply_delta(5);
            assert_eq!(a.score(), 0);
            assert_eq!(a.scale(Duration::from_secs(1)), Duration::from_secs(1));
        }
    }
}
