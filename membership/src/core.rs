//! The sans-IO membership core: foca, the registry, timers, joins and registry syncs.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, OwnedNotification, State, Timer};
use mesh_protocol::{Digest, MemberId, NodeRecord, SyncRequest, SyncResponse};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tracing::{debug, info, trace, warn};

use crate::config::MembershipConfig;
use crate::registry::{Directory, Event, MemberInfo, MemberState, Registry, ServiceNode};
use crate::swim::{
    cluster_tag, decode_header_src, lock, open_envelope, write_envelope, EnvelopeError, Item,
    RegistryBroadcasts, Shared, SwimCodec, SwimId, ENVELOPE_LEN,
};

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub dst: SocketAddr,
    /// The whole datagram, envelope included.
    pub data: Bytes,
}

/// A registry sync the core wants performed: send `request` to `peer` over a reliable stream and
/// hand the outcome to [`Membership::handle_sync_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTask {
    /// Who to ask.
    pub peer: SocketAddr,
    /// What to ask.
    pub request: SyncRequest,
}

/// Counters of what the core saw. Every dropped input is counted in exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes received in datagrams.
    pub bytes_in: u64,
    /// Bytes sent in datagrams.
    pub bytes_out: u64,
    /// Dropped: not a membership datagram (bad magic, truncated envelope).
    pub dropped_garbage: u64,
    /// Dropped: another membership format version.
    pub dropped_version: u64,
    /// Dropped: another cluster's tag.
    pub dropped_other_cluster: u64,
    /// Dropped: the SWIM packet did not decode, or the sender is not the address it claims.
    pub dropped_malformed: u64,
    /// Datagrams foca refused after decoding (stale, from ourselves, bad broadcast).
    pub swim_errors: u64,
    /// Records applied (newer than what was held).
    pub records_applied: u64,
    /// Records dropped because `max_records` was reached.
    pub records_dropped: u64,
    /// Registry syncs started.
    pub syncs_started: u64,
    /// Registry syncs that failed.
    pub syncs_failed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimerKind {
    Swim(Timer<SwimId>),
    Join,
    SeedRecheck,
    AntiEntropy,
}

#[derive(Debug)]
struct TimerEntry {
    at: Instant,
    seq: u64,
    kind: TimerKind,
}

impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        // foca's timers at the same instant must be delivered in foca's order (its `Ord` puts
        // `SendIndirectProbe` before the next `ProbeRandomMember`); then insertion order.
        let rank = |k: &TimerKind| match k {
            TimerKind::Swim(_) => 0,
            _ => 1,
        };
        self.at
            .cmp(&other.at)
            .then_with(|| match (&self.kind, &other.kind) {
                (TimerKind::Swim(a), TimerKind::Swim(b)) => a.cmp(b),
                (a, b) => rank(a).cmp(&rank(b)),
            })
            .then(self.seq.cmp(&other.seq))
    }
}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for TimerEntry {}

type SwimFoca = Foca<SwimId, SwimCodec, SmallRng, RegistryBroadcasts>;

/// The membership state machine of one node.
///
/// It never reads a clock or touches a socket: callers pass `now`, feed datagrams and sync
/// results in with `handle_*`, and take datagrams, sync tasks and events out with `poll_*`, and
/// call [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout).
/// [`crate::driver`] does this on tokio; the simulations do it on a virtual clock.
///
/// # Examples
///
/// Two cores wired by hand:
///
/// ```
/// use std::time::{Duration, Instant};
/// use mesh_membership::{Membership, MembershipConfig};
/// use mesh_protocol::MemberId;
///
/// let cfg = MembershipConfig::local();
/// let (a, b) = ("127.0.0.1:7001".parse().unwrap(), "127.0.0.1:7002".parse().unwrap());
/// let mut na = Membership::new(cfg.clone(), MemberId::new(a, 1), "a", 1);
/// let mut nb = Membership::new(cfg, MemberId::new(b, 1), "b", 2);
/// let mut now = Instant::now();
/// nb.join(now, &[a]);
/// for _ in 0..100 {
///     now += Duration::from_millis(10);
///     while let Some(t) = na.poll_transmit() {
///         nb.handle_datagram(now, a, &t.data);
///     }
///     while let Some(t) = nb.poll_transmit() {
///         na.handle_datagram(now, b, &t.data);
///     }
///     na.handle_timeout(now);
///     nb.handle_timeout(now);
/// }
/// assert_eq!(na.members().len(), 2);
/// ```
pub struct Membership {
    config: MembershipConfig,
    tag: u32,
    foca: SwimFoca,
    rt: AccumulatingRuntime<SwimId>,
    shared: Arc<Mutex<Shared>>,
    rng: SmallRng,
    timers: BinaryHeap<Reverse<TimerEntry>>,
    timer_seq: u64,
    own: NodeRecord,
    registry: Registry,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    sync_tasks: VecDeque<SyncTask>,
    syncs_in_flight: std::collections::BTreeSet<SocketAddr>,
    /// Records to pull: owner address -> (owner id, version wanted).
    wanted: BTreeMap<SocketAddr, (MemberId, u64)>,
    /// Members known only second-hand, to pull from themselves before SWIM is told of them.
    verify: std::collections::BTreeSet<MemberId>,
    seeds: Vec<SocketAddr>,
    join_backoff: Duration,
    join_armed: bool,
    joined: bool,
    leaving: bool,
    stats: Stats,
    /// Whether a datagram's SWIM source must be the address it came from (set by transports
    /// whose source addresses are authenticated, such as QUIC with mutual TLS).
    require_source_match: bool,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("id", &self.own.id)
            .field("members", &self.foca.num_members())
            .field("records", &self.registry.entries.len())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A core for the node `id` named `name`, alone until [`join`](Self::join) is called.
    /// `seed` seeds the core's RNG (probe order, gossip targets, anti-entropy peers).
    pub fn new(
        mut config: MembershipConfig,
        id: MemberId,
        name: impl Into<String>,
        seed: u64,
    ) -> Self {
        let packet = config
            .max_datagram_size
            .saturating_sub(ENVELOPE_LEN)
            .max(256);
        config.swim.max_packet_size =
            std::num::NonZeroUsize::new(packet).unwrap_or(std::num::NonZeroUsize::MIN);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let foca = Foca::with_custom_broadcast(
            SwimId(id),
            config.swim.clone(),
            SmallRng::seed_from_u64(seed),
            SwimCodec,
            RegistryBroadcasts {
                shared: shared.clone(),
            },
        );
        let mut own = NodeRecord::new(id, name);
        own.version = 1;
        let mut me = Self {
            tag: cluster_tag(&config.cluster),
            join_backoff: config.join_backoff_min,
            config,
            foca,
            rt: AccumulatingRuntime::new(),
            shared,
            rng: SmallRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            own: own.clone(),
            registry: Registry::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            sync_tasks: VecDeque::new(),
            syncs_in_flight: std::collections::BTreeSet::new(),
            wanted: BTreeMap::new(),
            verify: std::collections::BTreeSet::new(),
            seeds: Vec::new(),
            join_armed: false,
            joined: false,
            leaving: false,
            stats: Stats::default(),
            require_source_match: false,
        };
        lock(&me.shared).hear(id, own.version);
        let mut sink = VecDeque::new();
        me.registry.change(id.addr, &mut sink, |e| {
            e.live = Some((id, MemberState::Alive));
            e.record = Some(own);
        });
        me.events.extend(sink);
        me
    }

    /// Requires every datagram's SWIM source address to equal the address it arrived from.
    /// Transports that authenticate peers (QUIC with mutual TLS) turn this on so that no member
    /// can speak for another.
    pub fn set_require_source_match(&mut self, on: bool) {
        self.require_source_match = on;
    }

    /// This node's current identity (the generation changes if it had to rejoin).
    pub fn id(&self) -> MemberId {
        self.own.id
    }

    /// This node's record as last published.
    pub fn own_record(&self) -> &NodeRecord {
        &self.own
    }

    /// The configuration in force.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

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
        self.publish(now, farewell.clone());
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
                    records: vec![farewell.clone()],
                },
            });
        }
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            warn!(error = %e, "leave_cluster");
        }
        let id = self.own.id;
        let mut sink = VecDeque::new();
        self.registry.change(id.addr, &mut sink, |e| {
            e.live = Some((id, MemberState::Left))
        });
        self.events.extend(sink);
        self.drain(now);
    }

    /// Whether [`leave`](Self::leave) was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Handles one datagram from `from`. Anything malformed is counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let packet = match open_envelope(self.tag, data) {
            Ok(p) => p,
            Err(e) => {
                match e {
                    EnvelopeError::Truncated | EnvelopeError::BadMagic => {
                        self.stats.dropped_garbage += 1
                    }
                    EnvelopeError::Version(_) => self.stats.dropped_version += 1,
                    EnvelopeError::OtherCluster(_) => self.stats.dropped_other_cluster += 1,
                }
                debug!(%from, error = %e, len = data.len(), "dropped datagram");
                return;
            }
        };
        match decode_header_src(packet) {
            Err(e) => {
                self.stats.dropped_malformed += 1;
                debug!(%from, error = %e, "dropped malformed SWIM packet");
                return;
            }
            Ok(src) if self.require_source_match && src.addr != from => {
                self.stats.dropped_malformed += 1;
                warn!(%from, claimed = %src, "dropped SWIM packet claiming another member's address");
                return;
            }
            Ok(_) => {}
        }
        if let Err(e) = self.foca.handle_data(packet, &mut self.rt) {
            self.stats.swim_errors += 1;
            debug!(%from, error = %e, "foca refused datagram");
        }
        self.drain(now);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
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
        self.timers.peek().map(|Reverse(t)| t.at)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next registry change.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next registry sync to perform. Each must be answered with
    /// [`handle_sync_response`](Self::handle_sync_response), success or not.
    pub fn poll_sync(&mut self) -> Option<SyncTask> {
        self.pump_syncs();
        let task = self.sync_tasks.pop_front()?;
        self.stats.syncs_started += 1;
        Some(task)
    }

    /// Answers a peer's registry sync: applies the records it pushed, returns the records it lacks
    /// and names those it holds newer.
    pub fn handle_sync_request(&mut self, now: Instant, request: SyncRequest) -> SyncResponse {
        for r in request.records {
            self.apply_record(r, true, None);
        }
        let mut response = SyncResponse::default();
        // Compares one record we hold with the requester's digest of it (if any).
        let mut answer =
            |r: &NodeRecord, live: Option<(MemberId, MemberState)>, theirs: Option<&Digest>| {
                if matches!(live, Some((id, s)) if id == r.id && !s.is_active()) {
                    return; // never spread the record of a dead identity
                }
                match theirs {
                    Some(d) if r.is_newer_than(d.id.generation, d.version) => {
                        response.records.push(r.clone())
                    }
                    Some(d) if (d.id.generation, d.version) > (r.id.generation, r.version) => {
                        response.want.push(d.id)
                    }
                    Some(_) => {}
                    None => response.records.push(r.clone()),
                }
            };
        if request.full {
            let theirs: BTreeMap<SocketAddr, Digest> =
                request.digests.iter().map(|d| (d.id.addr, *d)).collect();
            for (addr, e) in &self.registry.entries {
                if let Some(r) = &e.record {
                    answer(r, e.live, theirs.get(addr));
                }
            }
        } else {
            // A targeted pull: look up only what it names (it used to walk the whole registry,
            // 39% of a 2,000-node simulation's time).
            for d in &request.digests {
                if let Some(e) = self.registry.entries.get(&d.id.addr) {
                    if let Some(r) = &e.record {
                        answer(r, e.live, Some(d));
                    }
                }
            }
        }
        if request.full {
            response.down = self
                .registry
                .entries
                .values()
                .filter_map(|e| e.live)
                .filter(|(_, s)| !s.is_active())
                .map(|(id, _)| id)
                .collect();
        }
        for d in request.digests {
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
        match response {
            Err(e) => {
                self.stats.syncs_failed += 1;
                debug!(%peer, error = %e, "registry sync failed");
            }
            Ok(resp) => {
                // Answers to our pulls are what the cluster already knows: applied, not gossiped
                // again (re-gossiping whole anti-entropy answers flooded the broadcast queue).
                for r in resp.records {
                    self.apply_record(r, false, Some(peer));
                }
                // Identities the peer knows are down and we still hold alive: SWIM's Down
                // gossip missed us (it is piggybacked a bounded number of times).
                let missed: Vec<foca::Member<SwimId>> = resp
                    .down
                    .iter()
                    .filter(|id| {
                        self.registry.entries.get(&id.addr).and_then(|e| e.live)
                            == Some((**id, MemberState::Alive))
                    })
                    .map(|id| foca::Member::down(SwimId(*id)))
                    .collect();
                if !missed.is_empty() {
                    debug!(%peer, count = missed.len(), "anti-entropy: members down we still held alive");
                    if let Err(e) = self.foca.apply_many(missed.into_iter(), true, &mut self.rt) {
                        debug!(error = %e, "apply anti-entropy downs");
                    }
                }
                let push: Vec<NodeRecord> = resp
                    .want
                    .iter()
                    .filter_map(|id| self.registry.entries.get(&id.addr)?.record.clone())
                    .filter(|r| self.is_spreadable(r))
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
        self.drain(now);
    }

    /// Every member known, this node included, with its state, sorted by id.
    pub fn members(&self) -> Vec<MemberInfo> {
        let suspects: HashSet<MemberId> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| m.id().0)
            .collect();
        let mut out: Vec<MemberInfo> = self
            .registry
            .entries
            .values()
            .filter_map(|e| {
                let (id, mut state) = e.live?;
                if state == MemberState::Alive && suspects.contains(&id) {
                    state = MemberState::Suspect;
                }
                let name = e
                    .record
                    .as_ref()
                    .filter(|r| r.id == id)
                    .map(|r| r.name.clone())
                    .unwrap_or_default();
                Some(MemberInfo { id, name, state })
            })
            .collect();
        out.sort_by_key(|m| m.id);
        out
    }

    /// Number of active (alive or suspect) members, this node included.
    pub fn num_active(&self) -> usize {
        self.registry
            .entries
            .values()
            .filter(|e| e.live.is_some_and(|(_, s)| s.is_active()))
            .count()
    }

    /// Names of every service some active node serves, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .visible()
            .flat_map(|r| r.services.iter().map(|s| s.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The active nodes serving `service`, sorted by node id.
    pub fn nodes_of(&self, service: &str) -> Vec<ServiceNode> {
        let mut out: Vec<ServiceNode> = self
            .registry
            .visible()
            .flat_map(|r| {
                r.services
                    .iter()
                    .filter(|s| s.name == service)
                    .map(|s| ServiceNode {
                        node: r.id,
                        node_name: r.name.clone(),
                        labels: r.labels.clone(),
                        service: s.clone(),
                    })
            })
            .collect();
        out.sort_by_key(|n| n.node);
        out
    }

    /// The subscriptions to `topic` of every active node: (node, queue group), sorted.
    pub fn subscribers_of(&self, topic: &str) -> Vec<(MemberId, Option<String>)> {
        let mut out: Vec<(MemberId, Option<String>)> = self
            .registry
            .visible()
            .flat_map(|r| {
                r.subscriptions
                    .iter()
                    .filter(|s| s.topic == topic)
                    .map(|s| (r.id, s.queue.clone()))
            })
            .collect();
        out.sort();
        out
    }

    /// What lookups see, built from the registry as it is now.
    pub fn directory(&self) -> Directory {
        Directory::build(self.registry.revision, self.registry.visible())
    }

    /// Grows by one with every change to what lookups see: a cheap test of whether a
    /// [`Directory`] is stale.
    pub fn registry_revision(&self) -> u64 {
        self.registry.revision
    }

    /// The records of every active node, sorted by address: what lookups see.
    pub fn visible_records(&self) -> Vec<NodeRecord> {
        let mut out: Vec<NodeRecord> = self.registry.visible().cloned().collect();
        out.sort_by_key(|r| r.id.addr);
        out
    }

    // ---- internals ----

    fn schedule(&mut self, at: Instant, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Reverse(TimerEntry {
            at,
            seq: self.timer_seq,
            kind,
        }));
    }

    fn arm_join(&mut self, now: Instant) {
        if !self.join_armed {
            self.join_armed = true;
            self.schedule(now + self.join_backoff, TimerKind::Join);
        }
    }

    /// Announces to every seed (or, with `only_unseen`, to seeds with no active member).
    fn announce_to_seeds(&mut self, now: Instant, only_unseen: bool) {
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

    fn publish(&mut self, now: Instant, record: NodeRecord) {
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

    /// Moves everything foca produced into our queues and reacts to notifications and items,
    /// until nothing is left.
    fn drain(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some((dst, data)) = self.rt.to_send() {
                progressed = true;
                let mut d = Vec::with_capacity(ENVELOPE_LEN + data.len());
                write_envelope(self.tag, &mut d);
                d.extend_from_slice(&data);
                self.stats.datagrams_out += 1;
                self.stats.bytes_out += d.len() as u64;
                self.transmits.push_back(Transmit {
                    dst: dst.0.addr,
                    data: d.into(),
                });
            }
            while let Some((after, timer)) = self.rt.to_schedule() {
                progressed = true;
                self.schedule(now + after, TimerKind::Swim(timer));
            }
            while let Some(n) = self.rt.to_notify() {
                progressed = true;
                self.handle_notification(now, n);
            }
            let inbox = std::mem::take(&mut lock(&self.shared).inbox);
            for (sender, item) in inbox {
                progressed = true;
                self.handle_item(sender, item);
            }
            if !progressed {
                break;
            }
        }
    }

    fn handle_notification(&mut self, now: Instant, n: OwnedNotification<SwimId>) {
        let mut sink = VecDeque::new();
        match n {
            OwnedNotification::MemberUp(SwimId(id)) => {
                trace!(member = %id, "member up");
                self.registry.change(id.addr, &mut sink, |e| {
                    e.live = Some((id, MemberState::Alive))
                });
                sink.push_front(Event::MemberUp { id });
                self.want_if_missing(id);
            }
            OwnedNotification::MemberDown(SwimId(id)) => {
                let left = self.registry.change(id.addr, &mut sink, |e| {
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
                self.wanted.remove(&id.addr);
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
                let was_active = self.registry.change(new.addr, &mut sink, |e| {
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
                    self.want_if_missing(new);
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
                self.registry.change(old.addr, &mut sink, |e| {
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

    fn handle_item(&mut self, sender: Option<MemberId>, item: Item) {
        match item {
            Item::Record(r) => self.apply_record(r, false, None),
            Item::Digest { id, version } => {
                let held = self
                    .registry
                    .entries
                    .get(&id.addr)
                    .and_then(|e| e.record.as_ref())
                    .map(|r| (r.id.generation, r.version));
                if held.is_none_or(|h| h < (id.generation, version)) {
                    trace!(owner = %id, version, ?sender, "digest of a newer record: pulling it");
                    self.want(id, version);
                }
            }
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
    fn apply_record(&mut self, r: NodeRecord, spread: bool, from: Option<SocketAddr>) {
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

    fn is_spreadable(&self, r: &NodeRecord) -> bool {
        !matches!(
            self.registry.entries.get(&r.id.addr).and_then(|e| e.live),
            Some((id, s)) if id == r.id && !s.is_active()
        )
    }

    fn want_if_missing(&mut self, id: MemberId) {
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

    fn want(&mut self, id: MemberId, version: u64) {
        if id.addr == self.own.id.addr {
            return;
        }
        let slot = self.wanted.entry(id.addr).or_insert((id, version));
        if (id.generation, version) > (slot.0.generation, slot.1) {
            *slot = (id, version);
        }
    }

    /// Turns wanted records into sync tasks, at most `max_concurrent_syncs` in flight.
    fn pump_syncs(&mut self) {
        let mut skipped = Vec::new();
        while self.syncs_in_flight.len() < self.config.max_concurrent_syncs {
            let Some((addr, (id, version))) = self.wanted.pop_first() else {
                break;
            };
            if self.syncs_in_flight.contains(&addr) {
                skipped.push((addr, (id, version)));
                continue;
            }
            let held = self
                .registry
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
                );
            self.syncs_in_flight.insert(addr);
            self.sync_tasks.push_back(SyncTask {
                peer: addr,
                request: SyncRequest {
                    digests: vec![held],
                    full: false,
                    records: Vec::new(),
                },
            });
        }
        self.wanted.extend(skipped);
        while self.syncs_in_flight.len() < self.config.max_concurrent_syncs {
            let Some(id) = self.verify.pop_first() else {
                break;
            };
            if self.syncs_in_flight.contains(&id.addr) {
                continue; // a sync with it is under way: its answer verifies it as well
            }
            self.syncs_in_flight.insert(id.addr);
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

    /// Queues a push/pull with one random active member: our digests and our own record out,
    /// whatever we lack back.
    fn anti_entropy(&mut self) {
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
                records: vec![self.own.clone()],
            },
        });
    }
}
