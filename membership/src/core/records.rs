//! Records: publishing our own (versioned, signed, announced by a digest), accepting others'
//! (only with their owner's proof; newest wins, dead generations refused, second-hand news
//! confirmed with the owner), and noting which records to pull, and from whom.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mesh_protocol::{MemberId, NodeRecord, SignedRecord};
use tracing::{debug, info, warn};

use crate::auth::verify_record;
use crate::core::tables::Want;
use crate::core::timer_entry::TimerKind;
use crate::core::{sign_own, Membership};
use crate::registry::{Event, MemberState};
use crate::swim::{Item, SwimId};

/// See [`Membership::is_spreadable`].
pub(super) fn spreadable(r: &NodeRecord, live: Option<(MemberId, MemberState)>) -> bool {
    r.leaving || !matches!(live, Some((id, s)) if id == r.id && !s.is_active())
}

impl Membership {
    /// Replaces this node's record with `f` applied to it. The identity stays; the version is bumped,
    /// the record signed and a digest of it gossiped (peers pull the record).
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
        self.own_signed = sign_own(self.auth.as_ref(), &record, &mut self.stats);
        self.own = record.clone();
        self.gossip_digest(id, record.version);
        if let Err(e) = self.foca.broadcast(&mut self.rt) {
            debug!(error = %e, "broadcast");
        }
        let signed = self.own_signed.clone();
        let mut sink = VecDeque::new();
        self.registry.change(id.addr, now, &mut sink, |e| {
            e.record = Some(record);
            e.signed = Some(signed);
        });
        self.events.extend(sink);
        self.drain(now);
    }

    /// Queues a digest of a record we hold for gossip: receivers that hold less pull it from us.
    fn gossip_digest(&mut self, id: MemberId, version: u64) {
        let item = Item::Digest { id, version }.encode();
        if let Err(e) = self.foca.add_broadcast(&item) {
            warn!(error = %e, "could not queue record digest");
        }
    }

    /// Checks `signed` and applies it (see [`apply_record`](Self::apply_record); `spread` says,
    /// by owner address, whether news of it is announced on). A record that
    /// does not decode, or whose proof does not verify for its owner's address, is refused and
    /// counted, whoever sent it; a copy no newer than ours is ignored before any check.
    pub(super) fn accept_record(
        &mut self,
        now: Instant,
        signed: SignedRecord,
        spread: impl Fn(SocketAddr) -> bool,
        from: Option<SocketAddr>,
    ) {
        let r = match signed.decode_record() {
            Ok(r) => r,
            Err(e) => {
                self.stats.records_malformed += 1;
                if self.overflow.should_log(now, "malformed record") {
                    warn!(?from, error = %e, "refused a record that does not decode");
                }
                return;
            }
        };
        let addr = r.id.addr;
        if addr == self.own.id.addr {
            if r.id.generation > self.own.id.generation {
                warn!(claimed = %r.id, ?from, "a record claims our address with a newer generation");
            }
            return;
        }
        if let Some(e) = self.registry.entries.get(&addr) {
            if e.live
                .is_some_and(|(id, _)| r.id.generation < id.generation)
            {
                return; // a dead generation
            }
            if let Some(h) = e.record.as_ref() {
                if !r.is_newer_than(h.id.generation, h.version) {
                    // Nothing new, but news of the member if SWIM does not know the identity of
                    // the copy we hold (checked when it arrived).
                    if h.id == r.id && !h.leaving {
                        self.note_member(h.id);
                    }
                    return;
                }
            }
        }
        if let Err(e) = verify_record(self.auth.as_ref(), &r, &signed) {
            self.stats.records_forged += 1;
            if self.overflow.should_log(now, "forged record") {
                warn!(owner = %r.id, ?from, error = %e, "refused a record its owner did not sign");
            }
            return;
        }
        let spread = spread(addr);
        self.apply_record(now, r, Arc::new(signed), spread);
    }

    /// Stores `r` (proven by its owner: `signed`) if it is newer than the copy held and not a
    /// stale generation. With `spread`, news is announced on by a digest (a record pushed to us,
    /// such as a farewell, or one we pulled after hearing a digest); answers to full syncs are
    /// what the cluster already knows, and are not.
    /// SWIM must also know the member, or its record stays invisible: SWIM's own updates are
    /// piggybacked a bounded number of times and can miss a node when many join at once. A record
    /// of a member SWIM does not know tells SWIM of it, whoever relayed it: the proof says the
    /// owner made it, and SWIM's probes say whether it still runs (a second-hand record of a node
    /// that has since crashed makes it suspect, then down, after one probe cycle and the
    /// suspicion timeout).
    pub(super) fn apply_record(
        &mut self,
        now: Instant,
        r: NodeRecord,
        signed: Arc<SignedRecord>,
        spread: bool,
    ) {
        let addr = r.id.addr;
        if !self.registry.entries.contains_key(&addr) && !self.make_room() {
            self.stats.records_dropped += 1;
            if self.overflow.should_log(now, "max_records") {
                warn!(owner = %r.id, "record dropped: max_records reached");
            }
            return;
        }
        // A farewell needs no confirmation: its owner is gone, and it can only retire it.
        if !r.leaving {
            self.note_member(r.id);
        }
        if self
            .wanted
            .get(&addr)
            .is_some_and(|w| (r.id.generation, r.version) >= (w.id.generation, w.version))
        {
            self.wanted.remove(&addr);
        }
        self.stats.records_applied += 1;
        if spread && self.is_spreadable(&r) {
            self.gossip_digest(r.id, r.version);
        }
        let mut sink = VecDeque::new();
        let id = r.id;
        let (left, was_active) = self.registry.change(addr, now, &mut sink, |e| {
            // The owner's farewell settles it: the member left (whether or not SWIM has noticed
            // yet), and it was a leave, not a crash.
            let current = e.live.filter(|(cur, _)| *cur == id).map(|(_, s)| s);
            let left = r.leaving && matches!(current, Some(s) if s != MemberState::Left);
            if left {
                e.live = Some((id, MemberState::Left));
            }
            e.record = Some(r);
            e.signed = Some(signed);
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

    /// Whether we pass `r` on (in answers, pushes and digests): never the record of an identity
    /// we hold dead, as that could bring it back, except its farewell, which can only retire it.
    /// A proven record of `id` arrived: if SWIM does not know `id`, it learns of it.
    fn note_member(&mut self, id: MemberId) {
        let swim_knows = self
            .registry
            .entries
            .get(&id.addr)
            .and_then(|e| e.live)
            .is_some_and(|(cur, _)| cur.generation >= id.generation);
        if swim_knows {
            return;
        }
        // The record is proven (signed by its owner), so it tells SWIM the member exists, as
        // SWIM's own membership updates do whoever relays them: SWIM then probes it, and a member
        // that is in fact gone is suspected and declared down in the usual way. Asking each such
        // member first made a joiner, which learns every record from one full sync, dial every
        // member of the cluster.
        self.verify.remove(&id);
        let alive = foca::Member::alive(SwimId(id));
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(alive), true, &mut self.rt)
        {
            debug!(error = %e, member = %id, "apply record's member to SWIM");
        }
    }

    pub(super) fn is_spreadable(&self, r: &NodeRecord) -> bool {
        let live = self.registry.entries.get(&r.id.addr).and_then(|e| e.live);
        spreadable(r, live)
    }

    /// A member came up: its record is usually on its way (its digest spreads with SWIM, and each
    /// node pulls it from whoever told it), so the member is asked itself only if the record is
    /// still missing after `member_pull_delay`. Asking it at once made every node dial every new
    /// member: O(N) handshakes per node while a cluster forms.
    pub(super) fn pull_later_if_missing(&mut self, now: Instant, id: MemberId) {
        if !self.holds_record_of(id) {
            self.schedule(
                now + self.config.member_pull_delay,
                TimerKind::PullIfMissing(id),
            );
        }
    }

    fn holds_record_of(&self, id: MemberId) -> bool {
        self.registry
            .entries
            .get(&id.addr)
            .and_then(|e| e.record.as_ref())
            .is_some_and(|r| r.id.generation >= id.generation)
    }

    pub(super) fn want_if_missing(&mut self, now: Instant, id: MemberId) {
        if !self.holds_record_of(id) {
            self.want(now, id, 1, None, false);
        }
    }

    /// Queues a pull of `id`'s record at `version` (or newer), from `via` (the peer whose digest
    /// told us, which holds it) or else from the owner; `gossiped`: heard of in a digest. At most
    /// `max_wanted` wait.
    pub(super) fn want(
        &mut self,
        now: Instant,
        id: MemberId,
        version: u64,
        via: Option<SocketAddr>,
        gossiped: bool,
    ) {
        if id.addr == self.own.id.addr {
            return;
        }
        let via = via.filter(|v| *v != id.addr && *v != self.own.id.addr);
        let want = Want {
            id,
            version,
            via,
            probe: false,
            gossiped,
        };
        let room = self.wanted.len() < self.config.max_wanted;
        match self.wanted.get_mut(&id.addr) {
            Some(slot) => {
                // Newer news, or the same from a peer that holds it (the owner may be gone).
                let newer = (id.generation, version) > (slot.id.generation, slot.version);
                let same = (id.generation, version) == (slot.id.generation, slot.version);
                if newer || (same && slot.via.is_none() && via.is_some()) {
                    *slot = want;
                }
                slot.gossiped |= gossiped;
            }
            None if room => {
                self.wanted.insert(id.addr, want);
            }
            None => self.pull_dropped(now, id),
        }
    }

    /// Queues a pull from `id` itself: to confirm it alive, or (`probe`) to check a peer's hint
    /// that it is down. At most `max_wanted` wait.
    pub(super) fn queue_verify(&mut self, now: Instant, id: MemberId, probe: bool) {
        if let Some(p) = self.verify.get_mut(&id) {
            *p |= probe;
            return;
        }
        if self.verify.len() < self.config.max_wanted {
            self.verify.insert(id, probe);
        } else {
            self.pull_dropped(now, id);
        }
    }

    fn pull_dropped(&mut self, now: Instant, id: MemberId) {
        self.stats.pulls_dropped += 1;
        if self.overflow.should_log(now, "max_wanted") {
            warn!(owner = %id, "record pull dropped: max_wanted pulls already queued");
        }
    }
}
