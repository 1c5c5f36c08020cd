//! The mesh node: what applications embed.
//!
//! This crate will own one `quinn` endpoint per process (mutual TLS with `rustls` and `rcgen`),
//! which carries SWIM gossip as QUIC datagrams, registry pulls and RPC on bidirectional streams, and
//! pub/sub deliveries; the server (typed handlers, wrappers), the client (selector, deadlines, safe
//! retries), and the `mesh-node` binary. It drives the sans-IO cores of `mesh-membership` and speaks
//! the wire format of `mesh-protocol`.
//!
#![deny(missing_docs)]

pub mod client;
pub mod endpoint;
mod node;
pub mod security;
pub mod server;
pub mod stats;
pub mod streaming;
pub mod transport;

pub use crate::client::{CallOptions, ClientCall, ClientNext, ClientWrapper, Strategy};
pub use crate::node::{Health, Node, NodeBuilder, NodeInfo, StartError, BUILTIN_SERVICE};
pub use crate::security::Credentials;
pub use crate::server::{typed, Handler, Request, Service, Wrapper};
pub use crate::streaming::{CallStream, Inbound, Outbound, StreamingHandler};
pub use mesh_protocol::{code, ContentType, RpcError};
