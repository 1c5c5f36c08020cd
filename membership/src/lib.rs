//! Membership for mesh: SWIM gossip (via [foca]) and the shared service registry.
//!
//! Every node holds the same picture of who is alive and what each node serves, with no central
//! registry. This crate owns that picture and the envelope of its datagrams, sealed with a gossip
//! [`Keyring`] when one is set; it leaves sockets, peer authentication and key management to a
//! [`Transport`] and the node crate ([`transport::udp`] is plain UDP for standalone use,
//! [`transport::mem`] an in-memory network for tests and simulations).
//!
//! [`Transport`]: transport::Transport
//!
//! # Layers
//!
//! - [`Membership`] is a **sans-IO core**: it never reads a clock or touches a socket. Callers pass
//!   `now`, feed datagrams ([`handle_datagram`](Membership::handle_datagram)), timers
//!   ([`handle_timeout`](Membership::handle_timeout) at [`poll_timeout`](Membership::poll_timeout))
//!   and sync results in, and take datagrams, sync tasks and [`Event`]s out with `poll_*`.
//! - [`MembershipHandle`] is the **tokio driver**: one task owns the core and delivers its timers
//!   in deadline order (foca requires `SendIndirectProbe` before the next `ProbeRandomMember`).
//!
//! # Where things happen
//!
//! - A datagram enters at [`Membership::handle_datagram`]: its envelope is checked and, if
//!   sealed, opened ([`swim::Envelope::open`]), foca handles the packet, and whatever foca produced is drained into
//!   datagrams, timers and registry changes.
//! - The registry (per address: the liveness SWIM reports and the newest record) is private to each
//!   [`Membership`] and defined in [`registry`]; callers read it through lookups such as
//!   [`Membership::nodes_of`], or a [`Directory`] built from it.
//! - Syncs are asked for by [`Membership::poll_sync`] as [`SyncTask`]s, performed by a
//!   [`Transport`] ([`sync`](transport::Transport::sync)) and answered through
//!   [`Membership::handle_sync_response`]; a peer's request is served by
//!   [`Membership::handle_sync_request`].
//!
//! # Identity
//!
//! A member is a [`MemberId`](mesh_protocol::MemberId): its advertised address and a
//! *generation*, taken from the wall clock in microseconds when the node starts
//! ([`generation_now`]). Between two ids of one address the higher generation wins
//! (`win_addr_conflict`), so a node restarted at the same address replaces its predecessor at
//! once (peers see foca's `Rename`, reported as `MemberDown(old)` then `MemberUp(new)`), and the
//! predecessor can never come back: its packets lose the conflict and its records are refused.
//! A node wrongly declared down renews itself to generation + 1 and rejoins by itself.
//!
//! # What is gossiped, what is pulled
//!
//! SWIM itself (probes, acks, indirect probes, membership updates piggybacked on them) rides
//! datagrams of at most `max_datagram_size` bytes (1400 by default). Each node owns one versioned
//! [`NodeRecord`](mesh_protocol::NodeRecord) (name, labels, services, subscriptions) and signs it
//! ([`RecordAuth`]); a record always travels with its owner's proof, as a
//! [`SignedRecord`](mesh_protocol::SignedRecord), and only over reliable syncs.
//!
//! - **Gossip carries digests only** (owner id + version, 24 bytes): a foca custom broadcast,
//!   retransmitted `max_transmissions` times and replaced in flight by any newer version. A whole
//!   record with its proof (certificate and signature, about 400 bytes more than the record) would
//!   fill most of a datagram, so records are never inlined.
//! - A node gossips a digest only once it **holds** the record (its own, or one it has checked),
//!   so a node that hears a digest newer than its copy emits a [`SyncTask`] to **pull** the record
//!   from the peer that gossiped it, and from the owner if that peer does not have it. Each pull
//!   thus lands on a random holder instead of on the owner, whatever the cluster size; a record of
//!   200 endpoints (about 22 KiB) reaches every node this way.
//!
//! Three more pulls heal whatever gossip missed: a node that has just joined pulls the **whole
//! registry** from the member that answered; every `anti_entropy_interval` each node does a
//! **push/pull** with one random member (its digests and own record out, newer records back, and
//! the records the peer lacks pushed in a follow-up); and a `MemberUp` for an identity whose
//! record is missing triggers a pull from it.
//!
//! # Who speaks for a record
//!
//! Only its owner. A record of node X is accepted only with a proof that the core's
//! [`RecordAuth`] verifies for X's address, whoever delivered it: a pull from X, a relay, a push,
//! an answer to a full sync. A record that fails is refused, counted
//! ([`Stats::records_forged`]) and changes nothing. What a peer says about a third node without
//! X's proof is a **hint**: a digest makes us pull; a `down` list in a sync answer makes us probe
//! the member with a pull from its address (no answer makes SWIM suspect it, which it can refute
//! within `suspect_to_down_after`) and stop pulling records of identities we hold no live member
//! for. It never marks a member down or left by itself.
//!
//! The default [`Unsigned`] signs nothing and accepts everything: **no protection**, for the plain
//! UDP transport, tests and simulations. The node crate gives each core its TLS certificate and
//! key ([`Membership::set_record_auth`]). In cluster-CA mode only the CA can issue a certificate
//! naming an address, so no member can speak for another; in cluster-key mode every key holder can
//! mint certificates, so the proof keeps out non-members only.
//!
//! # What "down" means, and how fast
//!
//! Each `probe_period` a node probes one member (foca walks a shuffled list, so every member is
//! probed at least once per `n` periods). No ack within `probe_rtt`, nor through
//! `num_indirect_probes` other members, makes it *suspect*; its services stay visible. Unless it
//! refutes within `suspect_to_down_after`, it is **down**: at that instant its services vanish
//! from every lookup on the node that declared it, and the `Down` update spreads by gossip in
//! `O(log n)` rounds. [`MembershipConfig::detection_bound`] gives the worst case; SWIM's
//! analysis gives about 1.58 probe periods to first detection on average. With the
//! [`local`](MembershipConfig::local) preset, a crash in a 10-node cluster vanished from all 9
//! survivors in 1.5 s (bound 3.4 s). For [`lan`](MembershipConfig::lan) (1 s probes, 4 s
//! suspicion, 10 nodes) the same reasoning estimates about 6 s, with a worst case of 15.3 s; that
//! estimate is not yet measured.
//!
//! Where [`scaling`](MembershipConfig::scaling) is set (the `lan` and `wan` presets),
//! `suspect_to_down_after` and the number of transmissions of each update follow the members
//! seen, as memberlist computes them: `4 × max(1, log10 n)` probe periods on a LAN (9.6 s at 250
//! members) and `4 × ceil(log10(n + 1))` transmissions.
//!
//! **Lifeguard** (in the foca fork, `third_party/foca/README.mesh.md`): a member that fails a
//! probe is told of the suspicion at once by its prober (the buddy system, on in `lan` and
//! `wan`), so that one that was merely slow refutes it within a round trip. The health score
//! ([`Membership::health_score`]), which stretches the probe interval and timeout of a node whose
//! own probes go unanswered, is built but off in every preset until nacks exist: without them a
//! partition raises every node's score and slows the heal. A member whose refutation reached its
//! suspecter before the suspicion timer fired is not sent `TurnUndead` (upstream foca sent one
//! when the timer fired whatever had happened since, which made live members rejoin under a new
//! identity: the false downs once seen under packet loss).
//!
//! A **graceful leave** is faster than detection: the node publishes a farewell record (no
//! services, `leaving`) and gossips its own `Down`; either one removes its services wherever it
//! arrives, and members report it as [`MemberState::Left`] (50 ms for 6 nodes in the tests).
//!
//! # Joining
//!
//! [`join`](Membership::join) announces to every seed and retries with exponential backoff
//! (`join_backoff_min` to `join_backoff_max`) until one answers. A node with no seeds is a cluster
//! of one that others join. A joined node re-announces every `seed_recheck_interval` to seeds it
//! does not see alive (a seed that restarted alone is found again), and starts over if it finds
//! itself alone.
//!
//! # Hostile input and bounds
//!
//! Datagrams are checked before foca sees them: magic, version, kind (sealed or not), key id and
//! AEAD tag if sealed, cluster tag (a 32-bit hash of [`MembershipConfig::cluster`]) and a
//! decodable SWIM header; everything else is counted in [`Stats`] (in exactly one field) and
//! dropped. Decoders never panic. Queues between transport and driver are bounded
//! (datagrams are dropped when full), syncs in flight are capped (`max_concurrent_syncs`), records
//! are at most 1 MiB.
//!
//! Every table a peer can grow has a cap in [`MembershipConfig`] and, for the dead, an end:
//! registry entries (`max_records`, which also caps SWIM's active members), down and left members
//! and unconfirmed records (`max_dead`, forgotten after `dead_retention` in the registry and in
//! foca's table alike, the oldest first), pulls waiting (`max_wanted`), the `down` hint of a full
//! sync (`max_down_list`, recent deaths only), records handled per sync (`max_records_per_sync`)
//! and bytes per answer (`max_sync_answer_bytes`). Overflows are counted in [`Stats`] and logged
//! at most once per 10 s; [`Membership::table_sizes`] reports every table's size. A node among
//! processes that join and leave for a month stays the same size.
//!
//! # Sealed gossip
//!
//! With a [`Keyring`] ([`Membership::set_keyring`], or [`MembershipHandle::set_keyring`] on a
//! running node) every datagram is sealed with AES-256-GCM under the keyring's primary key, with
//! a random 96-bit nonce from the operating system ([`NonceSource::system`]) and the envelope
//! header as associated data, and only datagrams sealed under an installed key are accepted: the
//! scheme of memberlist's gossip encryption (`security.go`, `keyring.go`), with the key named by
//! id instead of tried in turn. Keys rotate without a pause: install the new key everywhere
//! ([`install_key`](Membership::install_key)), use it everywhere
//! ([`use_key`](Membership::use_key)), remove the old one ([`remove_key`](Membership::remove_key)).
//! The wire format is in `docs/PROTOCOL.md` §7.1.
//!
//! **What the keyring protects**: SWIM traffic and the records it carries (members, addresses,
//! services, labels) cannot be read without a key, and a datagram not sealed by a key holder (an
//! outsider's, a bit-flipped or truncated one, one of a cluster with another key) is dropped
//! before foca sees it, so outsiders can neither inject members nor declare members down.
//!
//! **What it does not**:
//! - *Any key holder can forge gossip for any member*: the key is shared by the cluster, so it
//!   proves "a member", not which one. Only a transport that authenticates each peer can bind a
//!   packet's SWIM source to its sender ([`Membership::set_require_source_match`]).
//! - *Replay is not prevented*, as in memberlist: a captured datagram opens again when resent
//!   (SWIM's incarnations make replayed updates stale, but a replayed ack can answer a probe).
//! - Datagram sizes, timing, addresses and the key id are visible.
//! - Registry syncs ride streams, not datagrams: the node's QUIC streams are protected by TLS; the
//!   standalone TCP syncs of [`transport::udp`] are not protected at all.
//! - Nonces are random, so a key must seal well under 2^32 datagrams cluster-wide (NIST SP
//!   800-38D) before it is rotated out.
//! - Key bytes are not zeroed when dropped.
//!
//! Without a keyring, datagrams are **unauthenticated**: anyone who can send to the port can forge
//! SWIM traffic (including fake members).
//!
//! # Examples
//!
//! See [`MembershipHandle`] for a two-node cluster on the in-memory network, and [`Membership`]
//! for two cores wired by hand.
//!
//! [foca]: https://docs.rs/foca
#![deny(missing_docs)]

pub mod auth;
pub mod config;
mod core;
pub mod driver;
mod generation;
pub mod registry;
pub mod swim;
pub mod transport;

pub use crate::auth::{AuthError, RecordAuth, Unsigned};
pub use crate::config::{MembershipConfig, SwimScaling};
pub use crate::core::{Membership, Stats, SyncTask, TableSizes, Transmit};
pub use crate::driver::{KeyChangeError, MembershipHandle, Stopped};
pub use crate::generation::generation_now;
pub use crate::registry::{Directory, Event, MemberInfo, MemberState, ServiceNode};
pub use crate::swim::{GossipKey, KeyId, Keyring, KeyringError, NonceSource};
