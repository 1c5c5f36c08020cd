//! Joining through seeds (announce, retry with backoff, re-announce to unseen seeds) and
//! leaving gracefully.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use mesh_protocol::{MemberId, SignedRecord, SyncRequest};
use rand::RngExt;
use tracing::{debug, info, warn};

use crate::core::timer_entry::TimerKind;
use crate::core::{Membership, SyncTask};
use crate::registry::MemberState;
use crate::swim::SwimId;

impl Membership {
    /// Starts joining through `seeds`: announces to each now and again with exponential backoff
    /// until one answers. With no seeds (or only our own address) the node is a cluster of one
    /// that others can join. Seeds are remembered: a joined node re-announces to seeds it does not
    /// see alive every `seed_recheck_interval`, and starts over if it ever finds itself alone.
    pub fn join(&mut self, now: Instant, seeds: &[SocketAddr]) {
        self.seeds = seeds
            .iter()
            .copied()
            .filter(|s| *s != self.own.id.addr)
            .collect();
        self.seeds.dedup();
        if self.seeds.is_empty() {
            info!(id = %self.own.id, "no seeds: starting as a cluster of one");
            return;
        }
        info!(id = %self.own.id, seeds = ?self.seeds, "joining");
        self.join_backoff = self.config.join_backoff_min;
        self.announce_to_seeds(now, false);
        self.arm_join(now);
        self.schedule(
            now + self.config.seed_recheck_interval,
            TimerKind::SeedRecheck,
        );
    }

    /// Leaves gracefully: publishes a farewell record (no services, `leaving`), pushes it to a
    /// few members over reliable syncs, then tells SWIM. Peers drop this node's services as soon as
    /// any of these reaches them. The transmits and syncs queued by this call should complete
    /// before the process exits (the tokio driver waits for the syncs, up to a second).
    pub fn leave(&mut self, now: Instant) {
        if self.leaving {
            return;
        }
        info!(id = %self.own.id, "leaving the cluster");
        self.leaving = true;
        let mut farewell = self.own.clone();
        farewell.services.clear();
        farewell.subscriptions.clear();
        farewell.leaving = true;
        farewell.version += 1;
        self.publish(now, farewell);
        // Datagrams may not leave before the process does: also push the farewell over reliable
        // syncs to a few members, which gossip it on. Drivers should let these finish.
        let mut peers: Vec<MemberId> = self.foca.iter_members().map(|m| m.id().0).collect();
        let fanout = self.config.swim.num_indirect_probes.get();
        while peers.len() > fanout {
            let i = self.rng.random_range(0..peers.len());
            peers.swap_remove(i);
        }
        for peer in peers {
            self.sync_tasks.push_back(SyncTask {
                peer: peer.addr,
                request: SyncRequest {
                    digests: Vec::new(),
                    full: false,
                    records: vec![SignedRecord::clone(&self.own_signed)],
                },
            });
        }
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            warn!(error = %e, "leave_cluster");
        }
        let id = self.own.id;
        let mut sink = VecDeque::new();
        self.registry.change(id.addr, now, &mut sink, |e| {
            e.live = Some((id, MemberState::Left))
        });
        self.events.extend(sink);
        self.drain(now);
    }

    /// Whether [`leave`](Self::leave) was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    pub(super) fn arm_join(&mut self, now: Instant) {
        if !self.join_armed {
            self.join_armed = true;
            self.schedule(now + self.join_backoff, TimerKind::Join);
        }
    }

    /// Announces to every seed (or, with `only_unseen`, to seeds with no active member).
    pub(super) fn announce_to_seeds(&mut self, now: Instant, only_unseen: bool) {
        for seed in self.seeds.clone() {
            let seen = self
                .registry
                .entries
                .get(&seed)
                .and_then(|e| e.live)
                .is_some_and(|(_, s)| s.is_active());
            if only_unseen && seen {
                continue;
            }
            // foca accepts an Announce whose destination has the right address, whatever the
            // generation: we do not know the seed's.
            if let Err(e) = self
                .foca
                .announce(SwimId(MemberId::new(seed, 0)), &mut self.rt)
            {
                debug!(%seed, error = %e, "announce");
            }
        }
        self.drain(now);
    }
}
