//! The sans-IO membership core: the [`Membership`] state machine, what it hands out
//! ([`Transmit`], [`SyncTask`], [`Stats`]), and where datagrams enter it.
//!
//! One concern per file, each adding an `impl Membership` block:
//!
//! - here: the struct, its constructor, [`handle_datagram`](Membership::handle_datagram),
//!   `poll_transmit`, `poll_event` and the accessors;
//! - `timers`: `schedule`, [`handle_timeout`](Membership::handle_timeout) and its dispatch,
//!   `poll_timeout` (the timer entries and their order are in `timer_entry`);
//! - `lifecycle`: joining through seeds, re-announcing, leaving;
//! - `records`: publishing (and signing) our own record, checking, applying and gossiping
//!   others';
//! - `sync`: registry syncs (pulls, push/pull anti-entropy) and the answers to them;
//! - `notifications`: draining foca's output and reacting to its notifications and items;
//! - `bounds`: the caps and age-out of every table a peer can grow;
//! - `lookups`: what callers read out of the registry;
//! - `tables`: the small types of those tables ([`TableSizes`], pulls waiting, the overflow log);
//! - `keys`: the gossip keyring (sealing on or off, key rotation).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca};
use mesh_protocol::{MemberId, NodeRecord, SignedRecord, SyncRequest};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tracing::{debug, warn};

use crate::auth::{sign_record, RecordAuth, Unsigned};
use crate::config::MembershipConfig;
use crate::core::tables::{OverflowLog, Want};
use crate::core::timer_entry::TimerEntry;
use crate::registry::{Event, Registry};
use crate::swim::{
    decode_header_src, Envelope, EnvelopeError, RegistryBroadcasts, Shared, SwimCodec, SwimId,
    MAX_OVERHEAD,
};

mod bounds;
mod keys;
mod lifecycle;
mod lookups;
mod notifications;
mod records;
mod sync;
mod tables;
mod timer_entry;
mod timers;

pub use tables::TableSizes;

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
    /// Dropped: unsealed, but this node holds a keyring.
    pub dropped_unsealed: u64,
    /// Dropped: sealed, but this node holds no keyring.
    pub dropped_sealed: u64,
    /// Dropped: sealed with a key id this node does not hold.
    pub dropped_foreign_key: u64,
    /// Dropped: sealed with a key this node holds, but the AEAD did not open (forged, corrupted,
    /// truncated).
    pub dropped_unauthentic: u64,
    /// Dropped: the SWIM packet did not decode, or the sender is not the address it claims.
    pub dropped_malformed: u64,
    /// Datagrams foca refused after decoding (stale, from ourselves, bad broadcast).
    pub swim_errors: u64,
    /// Records applied (newer than what was held, and proven by their owner).
    pub records_applied: u64,
    /// Records refused because their proof does not verify for their owner's address (a forgery,
    /// or a record of a node with other credentials). Nothing held changed.
    pub records_forged: u64,
    /// Records refused because their bytes do not decode as a record (or exceed 1 MiB).
    pub records_malformed: u64,
    /// Records dropped because `max_records` was reached, or beyond `max_records_per_sync` in
    /// one sync message.
    pub records_dropped: u64,
    /// Members SWIM reported that were refused because `max_records` addresses are known.
    pub members_refused: u64,
    /// Pulls not queued because `max_wanted` were waiting.
    pub pulls_dropped: u64,
    /// Down and left members (and unconfirmed records) forgotten after `dead_retention`.
    pub dead_expired: u64,
    /// Down and left members (and unconfirmed records) forgotten early because `max_dead` were
    /// held (registry and SWIM's table counted apart).
    pub dead_evicted: u64,
    /// Times our own record could not be signed (peers that check proofs refuse it).
    pub sign_failures: u64,
    /// Registry syncs started.
    pub syncs_started: u64,
    /// Registry syncs that failed.
    pub syncs_failed: u64,
    /// Datagrams foca produced that could not be sealed (the system's CSPRNG failed), not sent.
    pub seal_failures: u64,
}

/// The smallest SWIM packet the core gives foca room for; `max_datagram_size` is raised to
/// `MIN_SWIM_PACKET + MAX_OVERHEAD` if set below.
const MIN_SWIM_PACKET: usize = 256;

type SwimFoca = Foca<SwimId, SwimCodec, SmallRng, RegistryBroadcasts>;

/// `record` (ours) signed by `auth`; a failure is counted and logged, and the record goes out
/// with an empty proof.
fn sign_own(auth: &dyn RecordAuth, record: &NodeRecord, stats: &mut Stats) -> Arc<SignedRecord> {
    let (signed, error) = sign_record(auth, record);
    if let Some(e) = error {
        stats.sign_failures += 1;
        warn!(error = %e, "could not sign our own record: peers that check proofs will refuse it");
    }
    Arc::new(signed)
}

/// The membership state machine of one node.
///
/// It never reads a clock or touches a socket: callers pass `now`, feed datagrams and sync
/// results in with `handle_*`, and take datagrams, sync tasks and events out with `poll_*`, and
/// call [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout).
/// The tokio driver (`MembershipHandle`) does this; the simulations do it on a virtual clock.
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
    /// The cluster tag, the keyring (if sealed) and the nonce source.
    envelope: Envelope,
    foca: SwimFoca,
    rt: AccumulatingRuntime<SwimId>,
    shared: Arc<Mutex<Shared>>,
    rng: SmallRng,
    timers: BinaryHeap<Reverse<TimerEntry>>,
    timer_seq: u64,
    own: NodeRecord,
    /// `own` as signed by `auth`: what pushes and answers carry.
    own_signed: Arc<SignedRecord>,
    auth: Arc<dyn RecordAuth>,
    registry: Registry,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    sync_tasks: VecDeque<SyncTask>,
    syncs_in_flight: BTreeSet<SocketAddr>,
    /// Records to pull, by owner address (at most `max_wanted`).
    wanted: BTreeMap<SocketAddr, Want>,
    /// Members to pull from themselves (at most `max_wanted`): known only second-hand, to confirm
    /// before SWIM is told of them; or, with `true` (a probe), held alive while a peer's `down`
    /// hint says otherwise: if the member does not answer, SWIM suspects it (it can refute).
    verify: BTreeMap<MemberId, bool>,
    /// Targeted pulls in flight, by peer: what each asked for, to ask the owner when a relay
    /// did not have it.
    pulls: BTreeMap<SocketAddr, Vec<Want>>,
    /// Down members in SWIM's table, in the order foca will forget them (`remove_down_after`),
    /// with when: at most `max_dead`, the oldest forgotten first.
    swim_down: VecDeque<(Instant, SwimId)>,
    overflow: OverflowLog,
    seeds: Vec<SocketAddr>,
    join_backoff: Duration,
    join_armed: bool,
    joined: bool,
    leaving: bool,
    stats: Stats,
    /// Whether a datagram's SWIM source must be the address it came from (set by transports
    /// whose source addresses are authenticated, such as QUIC with mutual TLS).
    require_source_match: bool,
    /// The member count (this node included) SWIM's settings were last scaled for
    /// (`MembershipConfig::scaling`).
    scaled_for: usize,
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
        // Sized for the larger (sealed) envelope whatever the mode, so that setting a keyring
        // later never makes a datagram exceed `max_datagram_size` (foca's packet size is fixed
        // once it is built).
        if config.max_datagram_size < MIN_SWIM_PACKET + MAX_OVERHEAD {
            warn!(
                configured = config.max_datagram_size,
                used = MIN_SWIM_PACKET + MAX_OVERHEAD,
                "max_datagram_size too small: raised"
            );
            config.max_datagram_size = MIN_SWIM_PACKET + MAX_OVERHEAD;
        }
        let packet = config.max_datagram_size - MAX_OVERHEAD;
        config.swim.max_packet_size =
            std::num::NonZeroUsize::new(packet).unwrap_or(std::num::NonZeroUsize::MIN);
        config.swim.remove_down_after = Some(config.dead_retention);
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
        let auth: Arc<dyn RecordAuth> = Arc::new(Unsigned);
        let mut stats = Stats::default();
        let own_signed = sign_own(auth.as_ref(), &own, &mut stats);
        let mut events = VecDeque::new();
        let registry = Registry::new(id, own.clone(), own_signed.clone(), &mut events);
        let mut core = Self {
            envelope: Envelope::new(&config.cluster),
            join_backoff: config.join_backoff_min,
            config,
            foca,
            rt: AccumulatingRuntime::new(),
            shared,
            rng: SmallRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            own,
            own_signed,
            auth,
            registry,
            transmits: VecDeque::new(),
            events,
            sync_tasks: VecDeque::new(),
            syncs_in_flight: BTreeSet::new(),
            wanted: BTreeMap::new(),
            verify: BTreeMap::new(),
            pulls: BTreeMap::new(),
            swim_down: VecDeque::new(),
            overflow: OverflowLog::default(),
            seeds: Vec::new(),
            join_armed: false,
            joined: false,
            leaving: false,
            stats,
            require_source_match: false,
            scaled_for: 0,
        };
        core.rescale_swim();
        core
    }

    /// Rescales SWIM's suspicion timeout and transmissions to the members now seen
    /// (`MembershipConfig::scaling`); cheap when the count has not changed.
    fn rescale_swim(&mut self) {
        let Some(scaling) = self.config.scaling else {
            return;
        };
        let n = self.foca.num_members() + 1;
        if n == self.scaled_for {
            return;
        }
        self.scaled_for = n;
        let mut swim = self.config.swim.clone();
        swim.suspect_to_down_after = scaling.suspect_to_down_after(n, swim.probe_period);
        swim.max_transmissions = scaling.max_transmissions(n);
        if swim.suspect_to_down_after == self.config.swim.suspect_to_down_after
            && swim.max_transmissions == self.config.swim.max_transmissions
        {
            return;
        }
        match self.foca.set_config(swim.clone()) {
            Ok(()) => {
                debug!(
                    members = n,
                    suspicion = ?swim.suspect_to_down_after,
                    transmissions = swim.max_transmissions,
                    "SWIM rescaled to the cluster"
                );
                self.config.swim = swim;
            }
            // Only the timeout and the count changed, which foca allows at any time.
            Err(e) => debug!(error = %e, "SWIM settings not rescaled"),
        }
    }

    /// Signs this node's record with `auth` from now on, and checks every other record against
    /// it: a record is accepted only with a proof `auth` verifies for its owner's address. Call
    /// before [`join`](Self::join). The default, [`Unsigned`], signs nothing and accepts
    /// everything (no protection).
    pub fn set_record_auth(&mut self, auth: Arc<dyn RecordAuth>) {
        self.auth = auth;
        self.own_signed = sign_own(self.auth.as_ref(), &self.own, &mut self.stats);
        if let Some(e) = self.registry.entries.get_mut(&self.own.id.addr) {
            e.signed = Some(self.own_signed.clone());
        }
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

    /// This node's Lifeguard health score: 0 when its probes are answered, up to
    /// `swim.awareness_max_multiplier - 1` as they go unanswered or it has to refute suspicions.
    /// Its probe interval and timeout are stretched by `score + 1` (memberlist's
    /// `memberlist.health.score`).
    pub fn health_score(&self) -> u8 {
        self.foca.health_score()
    }

    /// Handles one datagram from `from`. Anything malformed is counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let packet = match self.envelope.open(data) {
            Ok(p) => p,
            Err(e) => {
                let s = &mut self.stats;
                *match e {
                    EnvelopeError::Truncated | EnvelopeError::BadMagic => &mut s.dropped_garbage,
                    EnvelopeError::Version(_) | EnvelopeError::Kind(_) => &mut s.dropped_version,
                    EnvelopeError::OtherCluster(_) => &mut s.dropped_other_cluster,
                    EnvelopeError::Unsealed => &mut s.dropped_unsealed,
                    EnvelopeError::Sealed => &mut s.dropped_sealed,
                    EnvelopeError::ForeignKey(_) => &mut s.dropped_foreign_key,
                    EnvelopeError::Unauthentic => &mut s.dropped_unauthentic,
                } += 1;
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

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next registry change.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
