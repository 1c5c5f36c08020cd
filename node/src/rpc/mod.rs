//! RPC, the callee's side and the streams both sides share: services of handlers, wrappers around
//! them, the router, and serving unary and streaming calls.
//!
//! A unary call arrives in `rpc::serve::serve_unary`: the header and body are read within a bounded
//! time, the framework refuses what it must before any handler runs (shutting down, over the
//! concurrency limit, no such endpoint), then the handler runs in the stream's own task under the
//! call's deadline, cancelled if the caller goes away, with a panic turned into a 500. Streaming
//! calls ([`Service::stream_endpoint`], [`CallStream`]) keep the stream open in both directions.
//!
//! The caller's side of a unary call (selection, attempts, retries) is in [`crate::client`].

pub(crate) mod handler;
pub(crate) mod router;
pub(crate) mod serve;
pub(crate) mod service;
pub(crate) mod streaming;

pub use handler::{typed, Handler, Request, Wrapper};
pub use service::Service;
pub use streaming::{CallStream, Inbound, Outbound, StreamingHandler};
