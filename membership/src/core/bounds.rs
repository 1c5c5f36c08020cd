//! Bounds: every table a peer can grow has a cap, and the dead have an end. Down and left
//! members (and records whose owner SWIM never confirmed) are forgotten after `dead_retention`,
//! the oldest first once `max_dead` are held, in the registry and in SWIM's member table alike;
//! new addresses past `max_records` are refused. Overflows are counted in [`Stats`] and logged at
//! most once per interval.
//!
//! [`Stats`]: crate::Stats

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use foca::Timer;
use mesh_protocol::MemberId;
use tracing::{debug, warn};

use crate::core::tables::TableSizes;
use crate::core::timer_entry::TimerKind;
use crate::core::Membership;
use crate::swim::SwimId;

impl Membership {
    /// How many entries each table holds now.
    pub fn table_sizes(&self) -> TableSizes {
        TableSizes {
            registry: self.registry.entries.len(),
            dormant: self.registry.dormant.len(),
            swim_members: self.foca.iter_membership_state().len(),
            swim_active: self.foca.num_members(),
            swim_down: self.swim_down.len(),
            wanted: self.wanted.len(),
            verify: self.verify.len(),
            pulls_in_flight: self.pulls.len(),
            timers: self.timers.len(),
            swim_updates: self.foca.updates_backlog(),
            registry_broadcasts: self.foca.custom_broadcast_backlog(),
        }
    }

    /// Schedules one of foca's timers. `RemoveDown` (forget a down member after
    /// `remove_down_after`) goes to a queue of its own, in due order, so that the oldest down
    /// members can be forgotten first when `max_dead` are held.
    pub(super) fn schedule_swim(&mut self, now: Instant, after: Duration, timer: Timer<SwimId>) {
        match timer {
            Timer::RemoveDown(id) => self.swim_down.push_back((now + after, id)),
            timer => self.schedule(now + after, TimerKind::Swim(timer)),
        }
    }

    /// The next instant something ages out, if anything is waiting to.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        let dormant = self
            .registry
            .oldest_dormant()
            .map(|(t, _)| t + self.config.dead_retention);
        let swim = self.swim_down.front().map(|(t, _)| *t);
        dormant.into_iter().chain(swim).min()
    }

    /// Forgets whatever has been dead (or unconfirmed) for `dead_retention` at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        let retention = self.config.dead_retention;
        while let Some((since, addr)) = self.registry.oldest_dormant() {
            if since + retention > now {
                break;
            }
            if !self.forget(addr) {
                break;
            }
            self.stats.dead_expired += 1;
        }
        while self.swim_down.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, id)) = self.swim_down.pop_front() {
                self.forget_swim_down(id);
            }
        }
    }

    /// Holds every cap on dead members: at most `max_dead` dormant registry entries and as many
    /// down members in SWIM's table, the oldest forgotten first.
    pub(super) fn enforce_caps(&mut self, now: Instant) {
        let max = self.config.max_dead;
        let mut evicted = 0u64;
        while self.registry.dormant.len() > max {
            let Some((_, addr)) = self.registry.oldest_dormant() else {
                break;
            };
            if !self.forget(addr) {
                break;
            }
            evicted += 1;
        }
        while self.swim_down.len() > max {
            let Some((_, id)) = self.swim_down.pop_front() else {
                break;
            };
            self.forget_swim_down(id);
            evicted += 1;
        }
        if evicted > 0 {
            self.stats.dead_evicted += evicted;
            if self.overflow.should_log(now, "max_dead") {
                warn!(
                    max,
                    "more dead members than max_dead: forgetting the oldest"
                );
            }
        }
    }

    /// Whether a new address can be registered: true below `max_records`, or once the oldest
    /// dormant entry has made room.
    pub(super) fn make_room(&mut self) -> bool {
        if self.registry.entries.len() < self.config.max_records {
            return true;
        }
        let Some((_, addr)) = self.registry.oldest_dormant() else {
            return false;
        };
        if !self.forget(addr) {
            return false;
        }
        self.stats.dead_evicted += 1;
        self.registry.entries.len() < self.config.max_records
    }

    /// Whether a member SWIM just reported up may be registered. A member past `max_records` is
    /// refused: SWIM is told it is down, locally only (never gossiped), so it is forgotten in
    /// turn; it costs nothing but a counter.
    pub(super) fn admit_member(&mut self, now: Instant, id: MemberId) -> bool {
        if self.registry.entries.contains_key(&id.addr) || self.make_room() {
            return true;
        }
        self.stats.members_refused += 1;
        if self.overflow.should_log(now, "max_records members") {
            warn!(member = %id, max = self.config.max_records, "member refused: max_records addresses known");
        }
        let down = foca::Member::down(SwimId(id));
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(down), false, &mut self.rt)
        {
            debug!(error = %e, "refuse member");
        }
        false
    }

    /// Forgets the registry entry of `addr` (a dormant one) and what was queued for it; false
    /// if there was none to forget (our own is never forgotten).
    fn forget(&mut self, addr: std::net::SocketAddr) -> bool {
        let mut sink = VecDeque::new();
        let Some(e) = self.registry.remove(addr, &mut sink) else {
            // Nothing to forget (never our own): at least no index entry may stay behind, or
            // the next expiry would be due forever.
            self.registry.dormant.retain(|(_, a)| *a != addr);
            return false;
        };
        if let Some((id, _)) = e.live {
            self.verify.remove(&id);
        }
        if let Some(r) = &e.record {
            self.verify.remove(&r.id);
        }
        self.wanted.remove(&addr);
        self.events.extend(sink);
        true
    }

    /// Has SWIM forget the down member `id` now (nothing happens if it came back meanwhile).
    fn forget_swim_down(&mut self, id: SwimId) {
        if let Err(e) = self.foca.handle_timer(Timer::RemoveDown(id), &mut self.rt) {
            debug!(error = %e, "forget down member");
        }
    }
}
