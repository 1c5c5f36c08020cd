//! What a caller chooses: [`CallOptions`] (deadline, metadata, content type, filters, routing key,
//! strategy, retries) and [`ClientWrapper`]s (middleware around every outgoing call).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use mesh_protocol::{ContentType, RpcError};

use crate::wire::BoxFuture;

/// How a client picks among the nodes of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Uniformly at random among healthy nodes (the default).
    #[default]
    Random,
    /// In turn.
    RoundRobin,
    /// The node with the fewest calls in flight from this client (ties at random).
    LeastOutstanding,
}

/// Options of one call.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Time allowed for the whole call, retries included (default 5 s). It travels with the call
    /// so that the handler is cancelled when it passes.
    pub timeout: Duration,
    /// Metadata passed to the handler.
    pub metadata: BTreeMap<String, String>,
    /// Body encoding (default MessagePack).
    pub content_type: ContentType,
    /// Only nodes serving this exact version.
    pub version: Option<String>,
    /// Only nodes whose service metadata holds all these pairs.
    pub metadata_filter: BTreeMap<String, String>,
    /// Affinity: rendezvous hashing picks a stable node for this key; retries walk its ranking.
    pub routing_key: Option<String>,
    /// Selection strategy when there is no routing key.
    pub strategy: Strategy,
    /// Further attempts on other nodes (default 2), where a retry is safe.
    pub retries: u32,
    /// First backoff between attempts (default 10 ms), doubled each time, with jitter.
    pub backoff: Duration,
    /// Time allowed for one attempt (default: the whole timeout). An attempt that runs out of it
    /// counts as one that may have run: an idempotent call moves on to another node, others fail.
    /// Useful when a node can go silent (crash, partition) faster than membership notices.
    pub attempt_timeout: Option<Duration>,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            metadata: BTreeMap::new(),
            content_type: ContentType::MsgPack,
            version: None,
            metadata_filter: BTreeMap::new(),
            routing_key: None,
            strategy: Strategy::Random,
            retries: 2,
            backoff: Duration::from_millis(10),
            attempt_timeout: None,
        }
    }
}

impl CallOptions {
    /// Sets the timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Adds metadata.
    pub fn metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.insert(k.into(), v.into());
        self
    }
    /// Sets the content type.
    pub fn content_type(mut self, ct: ContentType) -> Self {
        self.content_type = ct;
        self
    }
    /// Sets the routing key.
    pub fn routing_key(mut self, k: impl Into<String>) -> Self {
        self.routing_key = Some(k.into());
        self
    }
    /// Sets the strategy.
    pub fn strategy(mut self, s: Strategy) -> Self {
        self.strategy = s;
        self
    }
    /// Sets the number of retries.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
    /// Sets the time allowed for one attempt.
    pub fn attempt_timeout(mut self, t: Duration) -> Self {
        self.attempt_timeout = Some(t);
        self
    }
    /// Only nodes serving `v`.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }
    /// Only nodes whose service metadata has `k = v`.
    pub fn metadata_filter(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata_filter.insert(k.into(), v.into());
        self
    }
}

/// An outgoing call as client wrappers see it.
#[derive(Debug, Clone)]
pub struct ClientCall {
    /// Service name.
    pub service: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Encoded request body (in `opts.content_type`).
    pub body: Bytes,
    /// The call's options (a wrapper may add metadata, change the timeout, ...).
    pub opts: CallOptions,
}

/// The rest of the client chain, as a wrapper calls it.
pub type ClientNext =
    std::sync::Arc<dyn Fn(ClientCall) -> BoxFuture<Result<Bytes, RpcError>> + Send + Sync>;

/// Middleware around outgoing calls (go-micro's client wrappers): tracing, metrics, auth
/// headers, circuit breakers. Selection and retries happen inside `next`.
pub trait ClientWrapper: Send + Sync + 'static {
    /// Handles `call`, usually by calling `next`.
    fn wrap(&self, call: ClientCall, next: ClientNext) -> BoxFuture<Result<Bytes, RpcError>>;
}

impl<F, Fut> ClientWrapper for F
where
    F: Fn(ClientCall, ClientNext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Bytes, RpcError>> + Send + 'static,
{
    fn wrap(&self, call: ClientCall, next: ClientNext) -> BoxFuture<Result<Bytes, RpcError>> {
        Box::pin(self(call, next))
    }
}
