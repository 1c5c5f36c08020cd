//! Registry syncs over reliable streams: the tasks handed out ([`poll_sync`](Membership::poll_sync)),
//! answering a peer's request, applying the response, and the periodic push/pull (anti-entropy).
//!
//! Every record in a sync travels with its owner's proof and is checked on arrival, whoever
//! pushed or relayed it. What a peer says about a third node without its owner's proof (a digest,
//! a `down` list) is a hint: it can make us pull, or stop pulling, never change what we hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;

use mesh_protocol::{Digest, MemberId, SignedRecord, SyncRequest, SyncResponse};
use rand::RngExt;
use tracing::debug;

use crate::core::records::spreadable;
use crate::core::tables::Want;
use crate::core::timer_entry::TimerKind;
use crate::core::{Membership, SyncTask};
use crate::registry::Entry;
use crate::swim::SwimId;

impl Membership {
    /// The next registry sync to perform. Each must be answered with
    /// [`handle_sync_response`](Self::handle_sync_response), success or not.
    pub fn poll_sync(&mut self) -> Option<SyncTask> {
        self.pump_syncs();
        let task = self.sync_tasks.pop_front()?;
        self.stats.syncs_started += 1;
        Some(task)
    }

    /// Answers a registry sync from `from`: checks and applies the records it pushed (each must
    /// carry its owner's proof; a record pushed by its owner also proves the owner alive),
    /// returns the records it lacks and names those it holds newer.
    ///
    /// `from` is the peer as the transport knows it (the address its certificate names on QUIC;
    /// on the standalone TCP sync, the connection's source address, which proves nothing).
    pub fn handle_sync_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: SyncRequest,
    ) -> SyncResponse {
        let limit = self.config.max_records_per_sync;
        self.count_excess(now, request.records.len(), limit);
        for r in request.records.into_iter().take(limit) {
            self.accept_record(now, r, |_| true, Some(from));
        }
        let mut response = SyncResponse::default();
        let budget = self.config.max_sync_answer_bytes;
        let mut spent = 0usize;
        // Compares one record we hold with the requester's digest of it (if any).
        let mut answer = |e: &Entry, theirs: Option<&Digest>| {
            let (Some(r), Some(signed)) = (&e.record, &e.signed) else {
                return;
            };
            if !spreadable(r, e.live) {
                return; // never spread the record of a dead identity (but its farewell)
            }
            let send = match theirs {
                Some(d) if r.is_newer_than(d.id.generation, d.version) => true,
                Some(d) if (d.id.generation, d.version) > (r.id.generation, r.version) => {
                    response.want.push(d.id);
                    false
                }
                Some(_) => false,
                None => true,
            };
            // Past the budget, the requester gets the rest in its next sync.
            if send && spent + signed.size() <= budget {
                spent += signed.size();
                response.records.push(SignedRecord::clone(signed));
            }
        };
        let digests: Vec<Digest> = request
            .digests
            .into_iter()
            .take(self.config.max_records)
            .collect();
        if request.full {
            let theirs: BTreeMap<SocketAddr, Digest> =
                digests.iter().map(|d| (d.id.addr, *d)).collect();
            for (addr, e) in &self.registry.entries {
                answer(e, theirs.get(addr));
            }
        } else {
            // A targeted pull: look up only what it names (it used to walk the whole registry,
            // 39% of a 2,000-node simulation's time).
            for d in &digests {
                if let Some(e) = self.registry.entries.get(&d.id.addr) {
                    answer(e, Some(d));
                }
            }
        }
        if request.full {
            // A hint of recent deaths, newest first, bounded: never the whole history.
            response.down = self
                .registry
                .dormant
                .iter()
                .rev()
                .filter_map(|(_, addr)| self.registry.entries.get(addr)?.live)
                .filter(|(_, s)| !s.is_active())
                .map(|(id, _)| id)
                .take(self.config.max_down_list)
                .collect();
        }
        for d in digests {
            let held = self
                .registry
                .entries
                .get(&d.id.addr)
                .is_some_and(|e| e.record.is_some());
            if !held && d.id.addr != self.own.id.addr {
                response.want.push(d.id);
            }
        }
        self.drain(now);
        response
    }

    /// Hands in the outcome of a [`SyncTask`] sent to `peer`.
    pub fn handle_sync_response<E: std::fmt::Display>(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        response: Result<SyncResponse, E>,
    ) {
        self.syncs_in_flight.remove(&peer);
        // What a targeted pull asked `peer` for (none for full syncs and pushes).
        let asked = self.pulls.remove(&peer);
        match response {
            Err(e) => {
                self.stats.syncs_failed += 1;
                debug!(%peer, error = %e, "registry sync failed");
                for w in asked.iter().flatten().filter(|w| w.probe) {
                    self.suspect(now, w.id);
                }
            }
            Ok(resp) => {
                // Records we pulled after hearing of them in a digest are news still spreading:
                // announced on by a digest of our own. Answers to full syncs, and records pulled
                // because their member came up, are what every node fetches anyway (announcing
                // them all flooded the broadcast queue, and cost 70% more bytes at 1,000 nodes).
                let news: BTreeSet<SocketAddr> = asked
                    .iter()
                    .flatten()
                    .filter(|w| w.gossiped)
                    .map(|w| w.id.addr)
                    .collect();
                let limit = self.config.max_records_per_sync;
                self.count_excess(now, resp.records.len(), limit);
                for r in resp.records.into_iter().take(limit) {
                    self.accept_record(now, r, |a| news.contains(&a), Some(peer));
                }
                self.apply_down_hints(now, &resp.down);
                let push: Vec<SignedRecord> = resp
                    .want
                    .iter()
                    .take(limit)
                    .filter_map(|id| {
                        let e = self.registry.entries.get(&id.addr)?;
                        let r = e.record.as_ref()?;
                        let signed = e.signed.as_ref()?;
                        self.is_spreadable(r).then(|| SignedRecord::clone(signed))
                    })
                    .collect();
                if !push.is_empty() {
                    self.sync_tasks.push_back(SyncTask {
                        peer,
                        request: SyncRequest {
                            digests: Vec::new(),
                            full: false,
                            records: push,
                        },
                    });
                }
            }
        }
        // A relay that did not have what its digest announced: ask the owner.
        for w in asked.into_iter().flatten() {
            let held = self
                .registry
                .entries
                .get(&w.id.addr)
                .and_then(|e| e.record.as_ref())
                .map(|r| (r.id.generation, r.version));
            if w.via.is_some() && held.is_none_or(|h| h < (w.id.generation, w.version)) {
                self.want(now, w.id, w.version, None, w.gossiped);
            }
        }
        self.drain(now);
    }

    /// A peer's `down` list: identities it saw die. Never a verdict on a member we see alive:
    /// we probe it with a pull from its address (its answer, signed, may show a newer
    /// generation; no answer makes SWIM suspect it, which it can refute). For identities we hold
    /// no live member for, we stop pulling their records, so that a second-hand copy cannot make
    /// us chase a dead node.
    fn apply_down_hints(&mut self, now: Instant, down: &[MemberId]) {
        for id in down.iter().take(self.config.max_down_list) {
            if id.addr == self.own.id.addr {
                continue; // we know better
            }
            let live = self.registry.entries.get(&id.addr).and_then(|e| e.live);
            if let Some((cur, _)) = live.filter(|(_, s)| s.is_active()) {
                if cur.generation <= id.generation {
                    self.queue_verify(now, cur, true);
                }
                continue;
            }
            self.verify.remove(id);
            if self.wanted.get(&id.addr).is_some_and(|w| w.id == *id) {
                self.wanted.remove(&id.addr);
            }
        }
    }

    /// A probe after a `down` hint went unanswered: as after a failed SWIM probe, `id` becomes
    /// suspect (gossiped, so it can refute) and is declared down `suspect_to_down_after` later
    /// unless it refuted meanwhile. (foca starts that timer only on the node whose own probe
    /// failed; a node that merely heard of the suspicion waits for the Down gossip, which may
    /// miss it.)
    fn suspect(&mut self, now: Instant, id: MemberId) {
        let Some((state, incarnation)) = self
            .foca
            .iter_membership_state()
            .find(|m| m.id().0 == id)
            .map(|m| (m.state(), m.incarnation()))
        else {
            return;
        };
        match state {
            foca::State::Down => return,
            foca::State::Suspect => {}
            foca::State::Alive => {
                debug!(member = %id, "a down hint and no answer: suspecting it");
                let suspect = foca::Member::new(SwimId(id), incarnation, foca::State::Suspect);
                if let Err(e) = self
                    .foca
                    .apply_many(std::iter::once(suspect), true, &mut self.rt)
                {
                    debug!(error = %e, "suspect after a down hint");
                }
            }
        }
        self.schedule(
            now + self.config.swim.suspect_to_down_after,
            TimerKind::ConfirmDown(SwimId(id), incarnation),
        );
    }

    /// See [`suspect`](Self::suspect): down if still suspect at `incarnation`.
    pub(super) fn confirm_down(&mut self, id: SwimId, incarnation: foca::Incarnation) {
        let unrefuted = self.foca.iter_membership_state().any(|m| {
            m.id() == &id && m.state() == foca::State::Suspect && m.incarnation() == incarnation
        });
        if unrefuted {
            debug!(member = %id.0, "suspected after a down hint and did not refute: down");
            let down = foca::Member::down(id);
            if let Err(e) = self
                .foca
                .apply_many(std::iter::once(down), true, &mut self.rt)
            {
                debug!(error = %e, "confirm down");
            }
        }
    }

    fn count_excess(&mut self, now: Instant, n: usize, limit: usize) {
        if n > limit {
            self.stats.records_dropped += (n - limit) as u64;
            if self.overflow.should_log(now, "max_records_per_sync") {
                tracing::warn!(
                    records = n,
                    limit,
                    "sync carried more records than handled at once"
                );
            }
        }
    }

    /// Turns wanted records into sync tasks, at most `max_concurrent_syncs` in flight: one
    /// targeted pull per peer, naming every record wanted from it.
    fn pump_syncs(&mut self) {
        let mut batches: BTreeMap<SocketAddr, Vec<Want>> = BTreeMap::new();
        let mut skipped = Vec::new();
        while let Some((addr, w)) = self.wanted.pop_first() {
            let peer = w.via.unwrap_or(addr);
            if self.syncs_in_flight.contains(&peer) {
                skipped.push((addr, w));
                continue;
            }
            if !batches.contains_key(&peer)
                && self.syncs_in_flight.len() + batches.len() >= self.config.max_concurrent_syncs
            {
                skipped.push((addr, w));
                break;
            }
            batches.entry(peer).or_default().push(w);
        }
        self.wanted.extend(skipped);
        for (peer, wants) in batches {
            let digests = wants.iter().map(|w| self.held_digest(w.id.addr)).collect();
            self.syncs_in_flight.insert(peer);
            self.pulls.insert(peer, wants);
            self.sync_tasks.push_back(SyncTask {
                peer,
                request: SyncRequest {
                    digests,
                    full: false,
                    records: Vec::new(),
                },
            });
        }
        while self.syncs_in_flight.len() < self.config.max_concurrent_syncs {
            let Some((id, probe)) = self.verify.pop_first() else {
                break;
            };
            if self.syncs_in_flight.contains(&id.addr) {
                continue; // a sync with it is under way: its answer verifies it as well
            }
            self.syncs_in_flight.insert(id.addr);
            self.pulls.insert(
                id.addr,
                vec![Want {
                    id,
                    version: 0,
                    via: None,
                    probe,
                    gossiped: false,
                }],
            );
            self.sync_tasks.push_back(SyncTask {
                peer: id.addr,
                request: SyncRequest {
                    // Version 0 of generation 0: whatever the owner holds is newer.
                    digests: vec![Digest {
                        id: MemberId::new(id.addr, 0),
                        version: 0,
                    }],
                    full: false,
                    records: Vec::new(),
                },
            });
        }
        // Full syncs and pushes queued directly also count as in flight.
        for t in &self.sync_tasks {
            self.syncs_in_flight.insert(t.peer);
        }
    }

    /// The digest of the copy we hold of `addr`'s record (version 0 of generation 0 if none).
    fn held_digest(&self, addr: SocketAddr) -> Digest {
        self.registry
            .entries
            .get(&addr)
            .and_then(|e| e.record.as_ref())
            .map_or(
                Digest {
                    id: MemberId::new(addr, 0),
                    version: 0,
                },
                |r| Digest {
                    id: r.id,
                    version: r.version,
                },
            )
    }

    /// Queues a push/pull with one random active member: our digests and our own record out,
    /// whatever we lack back.
    pub(super) fn anti_entropy(&mut self) {
        let peers: Vec<MemberId> = self.foca.iter_members().map(|m| m.id().0).collect();
        if peers.is_empty() {
            return;
        }
        let peer = peers[self.rng.random_range(0..peers.len())];
        if self.syncs_in_flight.contains(&peer.addr) {
            return;
        }
        let digests = self
            .registry
            .entries
            .values()
            .filter_map(|e| e.record.as_ref())
            .map(|r| Digest {
                id: r.id,
                version: r.version,
            })
            .collect();
        self.sync_tasks.push_back(SyncTask {
            peer: peer.addr,
            request: SyncRequest {
                digests,
                full: true,
                records: vec![SignedRecord::clone(&self.own_signed)],
            },
        });
    }
}
