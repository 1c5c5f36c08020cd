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
//! - `records`: publishing our own record, applying and gossiping others';
//! - `sync`: registry syncs (pulls, push/pull anti-entropy) and the answers to them;
//! - `notifications`: draining foca's output and reacting to its notifications and items;
//! - `lookups`: what callers read out of the registry;
//! - `keys`: the gossip keyring (sealing on or off, key rotation).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca};
use mesh_protocol::{MemberId, NodeRecord, SyncRequest};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tracing::{debug, warn};

use crate::config::MembershipConfig;
use crate::core::timer_entry::TimerEntry;
use crate::registry::{Event, MemberState, Registry};
use crate::swim::{
    decode_header_src, lock, Envelope, EnvelopeError, RegistryBroadcasts, Shared, SwimCodec,
    SwimId, MAX_OVERHEAD,
};

mod keys;
mod lifecycle;
mod lookups;
mod notifications;
mod records;
mod sync;
mod timer_entry;
mod timers;

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
    /// Records applied (newer than what was held).
    pub records_applied: u64,
    /// Records dropped because `max_records` was reached.
    pub records_dropped: u64,
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
            envelope: Envelope::new(&config.cluster),
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
