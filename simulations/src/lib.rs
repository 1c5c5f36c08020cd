//! Seeded, deterministic simulations of mesh clusters.
//!
//! The simulator runs the **real membership core** ([`mesh_membership::Membership`], the same code
//! a node runs) for tens to thousands of nodes in one thread, on a virtual clock, over a simulated
//! network with per-link latency and jitter, packet loss, one-way and two-way cuts, partitions and
//! heals, crashes, restarts at the same address and joins in waves. Scenarios live in TOML files
//! ([`Scenario`]); the same scenario and seed always produce the same figures, byte for byte.
//!
//! Nodes seal their datagrams with a gossip keyring, as production nodes do, so datagram sizes
//! and bytes per node include the sealed envelope (39 bytes); the key and the nonces are seeded
//! (`NonceSource::seeded_for_simulation`) to keep runs reproducible. [`Sim::sealed`]`(false)`
//! (`mesh-sim run --unsealed`) runs them unsealed (7 bytes of envelope).
//!
//! Every run ends by checking invariants ([`Report::violations`]): every alive node holds the same
//! registry, no alive node stays marked down, a crashed node's services are gone everywhere, and a
//! restarted node is never mistaken for its predecessor.

//!
//! The crate is split by concern, each module depending only on the ones above it:
//! `scenario` (the file format), `network` (addresses, latency, loss, cuts), `node` (one node's
//! core and lives), `report` (the figures and the table), `invariants` (the checks), `metrics`
//! (what a run measures) and `engine` (the loop that runs it all).

mod engine;
mod invariants;
mod metrics;
mod network;
mod node;
mod report;
mod scenario;

pub use engine::{run, Sim};
pub use report::{table, Percentiles, Report};
pub use scenario::{Action, ActionKind, Network, Scenario};
