//! Timers: scheduling them, and running those due ([`handle_timeout`](Membership::handle_timeout)
//! dispatches foca's timers, join retries, seed rechecks and anti-entropy rounds, and ages out
//! the dead).

use std::cmp::Reverse;
use std::time::Instant;

use tracing::debug;

use crate::core::timer_entry::{TimerEntry, TimerKind};
use crate::core::Membership;

impl Membership {
    /// Runs every timer due at `now`, and forgets what has been dead for `dead_retention`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        while let Some(Reverse(t)) = self.timers.peek() {
            if t.at > now {
                break;
            }
            let Some(Reverse(t)) = self.timers.pop() else {
                break;
            };
            match t.kind {
                TimerKind::Swim(timer) => {
                    if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                        debug!(error = %e, "foca timer");
                    }
                }
                TimerKind::Join => {
                    self.join_armed = false;
                    if self.foca.num_members() == 0 && !self.leaving && !self.seeds.is_empty() {
                        self.join_backoff =
                            (self.join_backoff * 2).min(self.config.join_backoff_max);
                        debug!(seeds = ?self.seeds, "no seed answered yet: announcing again");
                        self.announce_to_seeds(now, false);
                        self.arm_join(now);
                    } else {
                        self.join_backoff = self.config.join_backoff_min;
                    }
                }
                TimerKind::SeedRecheck => {
                    if !self.leaving {
                        self.announce_to_seeds(now, true);
                        self.schedule(
                            now + self.config.seed_recheck_interval,
                            TimerKind::SeedRecheck,
                        );
                    }
                }
                TimerKind::ConfirmDown(id, incarnation) => self.confirm_down(id, incarnation),
                TimerKind::PullIfMissing(id) => {
                    let active = self
                        .registry
                        .entries
                        .get(&id.addr)
                        .and_then(|e| e.live)
                        .is_some_and(|(live, s)| live == id && s.is_active());
                    if active {
                        self.want_if_missing(now, id);
                    }
                }
                TimerKind::AntiEntropy => {
                    if !self.leaving {
                        self.anti_entropy();
                        self.schedule(
                            now + self.config.anti_entropy_interval,
                            TimerKind::AntiEntropy,
                        );
                    }
                }
            }
            self.drain(now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse(t)| t.at);
        timer.into_iter().chain(self.next_expiry()).min()
    }

    pub(super) fn schedule(&mut self, at: Instant, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Reverse(TimerEntry {
            at,
            seq: self.timer_seq,
            kind,
        }));
    }
}
