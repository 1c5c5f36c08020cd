//! Records: publishing our own (versioned, gossiped inline or as a digest), applying others'
//! (newest wins, dead generations refused, second-hand news verified with the owner), and
//! noting which records to pull.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use mesh_protocol::{MemberId, NodeRecord};
use tracing::{debug, info, warn};

use crate::core::Membership;
use crate::registry::{Event, MemberState};
use crate::swim::{lock, Item, SwimId};

impl Membership {
    /// Replaces this node's record with `f` applied to it. The identity stays; the version is bumped
    /// and the change gossiped (inline if small, else as a digest peers pull).
    pub fn update_record(&mut self, now: Instant, f: impl FnOnce(&mut NodeRecord)) {
        let mut next = self.own.clone();
        f(&mut next);
        next.id = self.own.id;
        next.version = self.own.version;
        if next == self.own {
            return;
        }
        next.version += 1;
        self.publish(now, next);
    }

    pub(super) fn publish(&mut self, now: Instant, record: NodeRecord) {
        let id = record.id;
        self.own = record.clone();
        lock(&self.shared).hear(id, record.version);
        self.gossip_record(&record);
        if let Err(e) = self.foca.broadcast(&mut self.rt) {
            debug!(error = %e, "broadcast");
        }
        let mut sink = VecDeque::new();
        self.registry.change(id.addr, &mut sink, |e| {
            e.record = Some(record);
        });
        self.events.extend(sink);
        self.drain(now);
    }

    /// Queues news of `record` for gossip: the record itself if small, else a digest that makes
    /// receivers pull it.
    fn gossip_record(&mut self, record: &NodeRecord) {
        let item = match record.encode() {
            Ok(bytes) if bytes.len() <= self.config.inline_record_max => {
                Item::Record(record.clone())
            }
            _ => Item::Digest {
                id: record.id,
                version: record.version,
            },
        };
        match item.encode() {
            Ok(bytes) => {
                if let Err(e) = self.foca.add_broadcast(&bytes) {
                    warn!(error = %e, "could not queue record broadcast");
                }
            }
            Err(e) => warn!(error = %e, "could not encode record item"),
        }
    }

    /// Stores `r` if it is newer than the copy held and not a stale generation. News pushed to
    /// us outside gossip (`spread`: a record pushed in a sync, such as a farewell) is gossiped on,
    /// as news received by gossip is.
    /// `from`: the peer that answered a sync with it, if any.
    ///
    /// SWIM must also know the member, or its record stays invisible: SWIM's own updates are
    /// piggybacked a bounded number of times and can miss a node when many join at once. A record
    /// of a member SWIM does not know is believed only from its owner: second-hand, it queues a
    /// pull from the owner (`verify`), and the owner's answer proves it alive and tells SWIM. (A
    /// second-hand record of a node that has since crashed must not bring it back to life.)
    pub(super) fn apply_record(&mut self, r: NodeRecord, spread: bool, from: Option<SocketAddr>) {
        let addr = r.id.addr;
        if addr == self.own.id.addr {
            if r.id.generation > self.own.id.generation {
                warn!(claimed = %r.id, "a record claims our address with a newer generation");
            }
            return;
        }
        let entry = self.registry.entries.get(&addr);
        if entry.is_none() && self.registry.entries.len() >= self.config.max_records {
            self.stats.records_dropped += 1;
            warn!(owner = %r.id, "record dropped: max_records reached");
            return;
        }
        if let Some(e) = entry {
            if e.live
                .is_some_and(|(id, _)| r.id.generation < id.generation)
            {
                return; // a dead generation
            }
        }
        let swim_knows = entry
            .and_then(|e| e.live)
            .is_some_and(|(id, _)| id.generation >= r.id.generation);
        if !swim_knows {
            if from == Some(addr) {
                self.verify.remove(&r.id);
                let alive = foca::Member::alive(SwimId(r.id));
                if let Err(e) = self
                    .foca
                    .apply_many(std::iter::once(alive), true, &mut self.rt)
                {
                    debug!(error = %e, member = %r.id, "apply record's member to SWIM");
                }
            } else {
                self.verify.insert(r.id);
            }
        }
        if let Some(e) = self.registry.entries.get(&addr) {
            if e.record
                .as_ref()
                .is_some_and(|h| !r.is_newer_than(h.id.generation, h.version))
            {
                return;
            }
        }
        lock(&self.shared).hear(r.id, r.version);
        if self
            .wanted
            .get(&addr)
            .is_some_and(|(id, v)| (r.id.generation, r.version) >= (id.generation, *v))
        {
            self.wanted.remove(&addr);
        }
        self.stats.records_applied += 1;
        if spread {
            self.gossip_record(&r);
        }
        let mut sink = VecDeque::new();
        let id = r.id;
        let (left, was_active) = self.registry.change(addr, &mut sink, |e| {
            // The owner's farewell settles it: the member left (whether or not SWIM has noticed
            // yet), and it was a leave, not a crash.
            let current = e.live.filter(|(cur, _)| *cur == id).map(|(_, s)| s);
            let left = r.leaving && matches!(current, Some(s) if s != MemberState::Left);
            if left {
                e.live = Some((id, MemberState::Left));
            }
            e.record = Some(r);
            (left, current.is_some_and(MemberState::is_active))
        });
        if left {
            info!(member = %id, "member left");
            sink.push_back(Event::MemberLeft { id });
            if was_active {
                // Tell SWIM too, so it stops probing the member and spreads the news.
                let down = foca::Member::down(SwimId(id));
                if let Err(e) = self
                    .foca
                    .apply_many(std::iter::once(down), true, &mut self.rt)
                {
                    debug!(error = %e, "apply farewell to SWIM");
                }
            }
        }
        self.events.extend(sink);
    }

    pub(super) fn is_spreadable(&self, r: &NodeRecord) -> bool {
        !matches!(
            self.registry.entries.get(&r.id.addr).and_then(|e| e.live),
            Some((id, s)) if id == r.id && !s.is_active()
        )
    }

    pub(super) fn want_if_missing(&mut self, id: MemberId) {
        let have = self
            .registry
            .entries
            .get(&id.addr)
            .and_then(|e| e.record.as_ref())
            .is_some_and(|r| r.id.generation >= id.generation);
        if !have {
            self.want(id, 1);
        }
    }

    pub(super) fn want(&mut self, id: MemberId, version: u64) {
        if id.addr == self.own.id.addr {
            return;
        }
        let slot = self.wanted.entry(id.addr).or_insert((id, version));
        if (id.generation, version) > (slot.0.generation, slot.1) {
            *slot = (id, version);
        }
    }
}
