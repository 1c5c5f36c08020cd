//! The mesh node: what applications embed.
//!
//! A [`Node`] is one process in a mesh: one UDP port, one `quinn` endpoint, mutual TLS with every
//! peer. It gossips membership and the service registry (`mesh-membership`) as sealed UDP
//! datagrams on the same port, pulls registry records and serves RPC on bidirectional streams, and finds the nodes of a
//! service by name, with no registry server.
//!
//! # A service and its client
//!
//! ```no_run
//! use mesh_node::{typed, CallOptions, Credentials, Node, Service};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Hello { name: String }
//! #[derive(Serialize, Deserialize)]
//! struct Greeting { greeting: String }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let key = Credentials::key(std::env::var("MESH_CLUSTER_KEY")?)?;
//! let greeter = Node::builder()
//!     .bind("127.0.0.1:7000".parse()?)
//!     .credentials(key.clone())
//!     .service(Service::new("Greeter").idempotent_endpoint("Hello", typed(|_req, h: Hello| async move {
//!         Ok(Greeting { greeting: format!("Hello {}", h.name) })
//!     })))
//!     .spawn()
//!     .await?;
//!
//! let client = Node::builder().credentials(key).seeds(vec![greeter.addr()]).spawn().await?;
//! let reply: Greeting = client
//!     .call("Greeter", "Hello", &Hello { name: "John".into() }, &CallOptions::default())
//!     .await?;
//! assert_eq!(reply.greeting, "Hello John");
//! # Ok(()) }
//! ```
//!
//! # What you can rely on
//!
//! - **Admission.** Only nodes holding the cluster's credentials take part ([`security`]): a
//!   shared cluster key, or certificates from a cluster CA and the cluster's gossip secret. QUIC
//!   connections are mutual TLS, and each node's certificate names its advertised address, which
//!   a dialer checks; gossip datagrams are sealed with the gossip secret, and anything else is
//!   dropped and counted. A registry record is believed only with its owner's signature.
//! - **Calls.** A call goes to one node of the service, picked at random (or by
//!   [`Strategy`], or by rendezvous hashing of a routing key). Its deadline travels with it; the
//!   handler is cancelled when it passes or when the caller goes away, and a panicking handler
//!   becomes a 500 while the node keeps serving.
//! - **Retries never run a non-idempotent handler twice.** A call is retried on another node only
//!   if nothing was sent, if the callee refused it before running a handler (overload, shutdown),
//!   or if the endpoint is declared idempotent ([`Service::idempotent_endpoint`]). Nodes that fail
//!   at the transport level are avoided for a while; error replies never count against a node. When
//!   membership declares a node down, its connections are closed at once, so calls to a crashed
//!   node fail over in about the detection time rather than waiting for QUIC's idle timeout.
//! - **Streams** ([`Node::stream`], [`Service::stream_endpoint`]): server, client and bidirectional,
//!   with backpressure from QUIC flow control.
//! - **Graceful shutdown** ([`Node::shutdown`]): leave the cluster, refuse new calls with a
//!   retryable 503, drain calls in flight up to a timeout. A **function**
//!   ([`NodeBuilder::run_function`]) serves one request and leaves.
//! - **Built-ins** on every node: `mesh.Health`, `mesh.Info`, `mesh.Stats` ([`Node::call_node`]).
//!
//! The wire format is specified in `docs/PROTOCOL.md`.
//!
//! # Where things are
//!
//! Dependencies run one way, from the handle down to the wire:
//!
//! | module | owns |
//! |---|---|
//! | [`Node`], [`NodeBuilder`] (`node`, `builder`) | the handle, and wiring the parts together at start |
//! | `builtins` | `mesh.Health`, `mesh.Info`, `mesh.Stats`, `mesh.Members`, `mesh.Registry` |
//! | [`client`] | call options and wrappers, the balancer, one attempt, the sans-IO retry policy |
//! | [`rpc`] | services, handlers, wrappers, the router, serving unary and streaming calls |
//! | [`pubsub`] | local subscriptions, links to subscriber nodes, the sans-IO publish planner |
//! | [`socket`] | the one UDP port: QUIC and gossip datagrams told apart by the first byte |
//! | [`gossip`] | membership's transport: SWIM datagrams on the port, registry syncs on QUIC |
//! | [`connections`] | dialing, the connection cache, the accept loop, identity checks |
//! | [`endpoint`], [`security`] | the quinn endpoint, mutual TLS and cluster credentials |
//! | [`wire`], [`stats`] | frames on QUIC streams and close codes; per-endpoint statistics |
//!
//! - **A datagram enters** in [`socket::SplitSocket`] (its `poll_recv`), polled by quinn's endpoint
//!   driver: QUIC goes on to quinn, a gossip datagram to the sink [`gossip::start`] set up, which
//!   queues it for the membership driver (`mesh_membership::MembershipHandle`), whose sans-IO core
//!   opens and decodes it.
//! - **The registry lives** in `mesh-membership`; calls and publishes read its published
//!   [`Directory`](mesh_membership::Directory) through [`Node::membership`].
//! - **A call is selected and retried** in `client::caller` (`Client::call_raw`), which asks
//!   `client::policy` after every failed attempt.
//! - **A publish fans out** in `pubsub::publish` (`Publisher::publish`), planned round by round by
//!   `pubsub::plan`.
//!
//! # Features
//!
//! - `chaos` (off by default): the `chaos` module, a fault-injecting UDP socket for chaos tests of real
//!   nodes ([`NodeBuilder::udp_socket`]).
#![deny(missing_docs)]

mod builder;
mod builtins;
#[cfg(feature = "chaos")]
pub mod chaos;
pub mod client;
pub mod connections;
pub mod endpoint;
pub mod gossip;
mod node;
pub mod pubsub;
pub mod record_auth;
pub mod rpc;
pub mod security;
pub mod socket;
pub mod stats;
pub mod wire;

pub use crate::builder::{NodeBuilder, StartError};
pub use crate::builtins::{Health, MemberView, NodeInfo};
pub use crate::client::{CallOptions, ClientCall, ClientNext, ClientWrapper, Strategy};
pub use crate::node::Node;
pub use crate::pubsub::{
    Delivery, Message, PublishOptions, PublishReport, SubscriberNext, SubscriberWrapper,
    Subscription,
};
pub use crate::rpc::{
    typed, CallStream, Handler, Inbound, Outbound, Request, Service, StreamingHandler, Wrapper,
};
pub use crate::security::Credentials;
pub use mesh_protocol::{code, ContentType, RpcError, BUILTIN_SERVICE, FRAMEWORK_ERROR_ID};

/// The README's code blocks, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
