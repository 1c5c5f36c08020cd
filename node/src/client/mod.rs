//! The caller's side of calls: options and wrappers, choosing a node, one attempt on the wire, and
//! the policy that decides which failures are retried on another node.
//!
//! A call is selected and retried in `client::caller` (`Client::call_raw`): after the client
//! wrappers, each attempt takes the registry's current [`Directory`](mesh_membership::Directory),
//! keeps the nodes that serve the endpoint and pass the filters and have not been tried, and lets
//! the balancer pick one; `client::policy` then judges a failed attempt: eject the node or not,
//! retry or not. A request that may have reached a non-idempotent handler is never sent again.

pub(crate) mod attempt;
pub(crate) mod balancer;
pub(crate) mod caller;
pub(crate) mod options;
pub(crate) mod policy;

pub use balancer::rendezvous_score;
pub use options::{CallOptions, ClientCall, ClientNext, ClientWrapper, Strategy};
