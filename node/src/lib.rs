//! The mesh node: what applications embed.
//!
//! This crate will own one `quinn` endpoint per process (mutual TLS with `rustls` and `rcgen`),
//! which carries SWIM gossip as QUIC datagrams, registry pulls and RPC on bidirectional streams, and
//! pub/sub deliveries; the server (typed handlers, wrappers), the client (selector, deadlines, safe
//! retries), and the `mesh-node` binary. It drives the sans-IO cores of `mesh-membership` and speaks
//! the wire format of `mesh-protocol`.
//!
//! Built so far: [`security`] (cluster credentials and mutual TLS). The rest is issue 4.
#![deny(missing_docs)]

pub mod endpoint;
pub mod security;
pub mod transport;
