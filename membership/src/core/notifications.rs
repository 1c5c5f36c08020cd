//! Draining foca: its datagrams (wrapped in the envelope, sealed if a keyring is set), timers,
//! notifications (members up, down, renamed; joined, idle, rejoin) and the registry items its
//! broadcasts carried.

use std::collections::VecDeque;
use std::time::Instant;

use foca::OwnedNotification;
use mesh_protocol::MemberId;
use tracing::{debug, info, trace, warn};

use crate::core::timer_entry::TimerKind;
use crate::core::{Membership, Transmit};
use crate::registry::{Event, MemberState};
use crate::swim::{lock, Item, SwimId};

impl Membership {
    /// Moves everything foca produced into our queues and reacts to notifications and items,
    /// until nothing is left.
    pub(super) fn drain(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some((dst, data)) = self.rt.to_send() {
                progressed = true;
                let mut d = Vec::new();
                if let Err(e) = self.envelope.write(&data, &mut d) {
                    self.stats.seal_failures += 1;
                    warn!(error = %e, "datagram not sent");
                    continue;
                }
                self.stats.datagrams_out += 1;
                self.stats.bytes_out += d.len() as u64;
                self.transmits.push_back(Transmit {
                    dst: dst.0.addr,
                    data: d.into(),
                });
            }
            while let Some((after, timer)) = self.rt.to_schedule() {
                progressed = true;
                self.schedule_swim(now, after, timer);
            }
            while let Some(n) = self.rt.to_notify() {
                progressed = true;
                self.handle_notification(now, n);
            }
            let inbox = std::mem::take(&mut lock(&self.shared).inbox);
            for (sender, item) in inbox {
                progressed = true;
                self.handle_item(now, sender, item);
            }
            if !progressed {
                break;
            }
        }
        self.enforce_caps(now);
        self.rescale_swim();
    }

    fn handle_notification(&mut self, now: Instant, n: OwnedNotification<SwimId>) {
        let mut sink = VecDeque::new();
        match n {
            OwnedNotification::MemberUp(SwimId(id)) => {
                if !self.admit_member(now, id) {
                    return;
                }
                trace!(member = %id, "member up");
                self.registry.change(id.addr, now, &mut sink, |e| {
                    e.live = Some((id, MemberState::Alive))
                });
                sink.push_front(Event::MemberUp { id });
                self.pull_later_if_missing(now, id);
            }
            // A member we never registered (refused, or forgotten): nothing to mark.
            OwnedNotification::MemberDown(SwimId(id))
            | OwnedNotification::Rename(_, SwimId(id))
                if !self.registry.entries.contains_key(&id.addr) => {}
            OwnedNotification::MemberDown(SwimId(id)) => {
                let left = self.registry.change(id.addr, now, &mut sink, |e| {
                    // Another identity, or already known to have left: nothing new.
                    if e.live
                        .is_some_and(|(cur, s)| cur != id || s == MemberState::Left)
                    {
                        return None;
                    }
                    let left = e.record.as_ref().is_some_and(|r| r.id == id && r.leaving);
                    let state = if left {
                        MemberState::Left
                    } else {
                        MemberState::Down
                    };
                    e.live = Some((id, state));
                    Some(left)
                });
                // Pulling from the dead owner is pointless; from a relay it may still bring the
                // farewell (a leave, not a crash).
                if self.wanted.get(&id.addr).is_some_and(|w| w.via.is_none()) {
                    self.wanted.remove(&id.addr);
                }
                match left {
                    Some(true) => {
                        info!(member = %id, "member left");
                        sink.push_back(Event::MemberLeft { id });
                    }
                    Some(false) => {
                        info!(member = %id, "member down");
                        sink.push_back(Event::MemberDown { id });
                    }
                    None => {}
                }
            }
            OwnedNotification::Rename(SwimId(old), SwimId(new)) => {
                debug!(%old, %new, "member renamed");
                let was_active = self.registry.change(new.addr, now, &mut sink, |e| {
                    let was = e.live.is_some_and(|(id, s)| id == old && s.is_active());
                    let state = if was {
                        MemberState::Alive
                    } else {
                        MemberState::Down
                    };
                    e.live = Some((new, state));
                    was
                });
                if was_active {
                    sink.push_front(Event::MemberUp { id: new });
                    sink.push_front(Event::MemberDown { id: old });
                    // A member that restarted (or renewed itself) at the same address: its
                    // services are invisible until its new record arrives, so it is asked at
                    // once. One node, not a whole cluster forming: no storm of dials.
                    self.want_if_missing(now, new);
                }
            }
            OwnedNotification::Active if !self.joined => {
                self.joined = true;
                info!(id = %self.own.id, members = self.foca.num_members(), "joined the cluster");
                // Pull the whole registry at once from whoever answered.
                self.anti_entropy();
                self.schedule(
                    now + self.config.anti_entropy_interval,
                    TimerKind::AntiEntropy,
                );
            }
            OwnedNotification::Idle if !self.leaving => {
                warn!(id = %self.own.id, "no other member alive");
                if !self.seeds.is_empty() {
                    self.join_backoff = self.config.join_backoff_min;
                    self.arm_join(now);
                }
            }
            OwnedNotification::Defunct if !self.leaving => {
                warn!(id = %self.own.id, "declared down by the cluster and unable to rejoin");
            }
            OwnedNotification::Rejoin(SwimId(new)) => {
                warn!(old = %self.own.id, %new, "declared down by the cluster: rejoining as a new generation");
                let old = self.own.id;
                let mut record = self.own.clone();
                record.id = new;
                record.version += 1;
                self.registry.change(old.addr, now, &mut sink, |e| {
                    e.live = Some((new, MemberState::Alive))
                });
                self.events.extend(sink.drain(..));
                self.publish(now, record);
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
        self.events.extend(sink);
    }

    /// A digest heard from `sender` (which holds that record): a pull if it is newer than ours,
    /// from `sender` first. Never a change by itself.
    fn handle_item(&mut self, now: Instant, sender: Option<MemberId>, item: Item) {
        match item {
            Item::Digest { id, version } => {
                let held = self
                    .registry
                    .entries
                    .get(&id.addr)
                    .and_then(|e| e.record.as_ref())
                    .map(|r| (r.id.generation, r.version));
                if held.is_none_or(|h| h < (id.generation, version)) {
                    trace!(owner = %id, version, ?sender, "digest of a newer record: pulling it");
                    self.want(now, id, version, sender.map(|s| s.addr), true);
                }
            }
        }
    }
}
