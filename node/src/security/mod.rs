//! Cluster credentials and the mutual TLS that admits only cluster members.
//!
//! Both modes end in the same check: every node presents a certificate signed by the **cluster CA**
//! and verifies its peer's certificate against that CA, in both directions (mutual TLS).
//!
//! - **Cluster key** ([`Credentials::key`]): one shared secret. It is stretched with
//!   PBKDF2-HMAC-SHA256 ([`KDF_ITERATIONS`] rounds, salted with the cluster name) into the seed of
//!   an Ed25519 key, the cluster CA's key. Every node derives the same CA from the secret and signs
//!   an ephemeral certificate of its own at each start; a peer without the secret cannot produce a
//!   certificate the others accept.
//! - **Cluster CA** ([`Credentials::ca`]): an operator's CA signs each node's certificate (see
//!   [`CertificateAuthority`]); nodes hold only their own certificate and key plus the CA
//!   certificate.
//!
//! A node certificate carries two DNS names: [`CLUSTER_SERVER_NAME`], which every connection uses
//! as its server name, and [`addr_dns_name`] of the node's advertised address. The address in the
//! peer's certificate is what the node attributes the connection's gossip to, so no member can
//! speak for another ([`peer_addr`]).

mod ca;
mod credentials;
mod error;
mod keys;
mod names;
#[cfg(test)]
mod tests;

pub use ca::{CertificateAuthority, NodeCert};
pub use credentials::{Credentials, NodeTls};
pub use error::SecurityError;
pub use keys::{ClusterKey, GossipSecret, CLUSTER_KEY_ENV, KDF_ITERATIONS};
pub use names::{addr_dns_name, peer_addr, peer_addrs, ALPN, CLUSTER_SERVER_NAME};
