//! What publishers and subscribers see: [`PublishOptions`], the [`PublishReport`], a [`Message`]
//! and a raw [`Delivery`], and [`SubscriberWrapper`]s (middleware around deliveries).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mesh_protocol::{ContentType, RpcError};

use crate::wire::BoxFuture;

/// Messages a subscription buffers before new ones are dropped (default).
pub const DEFAULT_SUBSCRIPTION_QUEUE: usize = 1024;

/// Options of one publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Wait for each subscriber node to acknowledge (default: fire and forget).
    pub ack: bool,
    /// Time allowed for the whole publish, acknowledgements and retries included (default 5 s).
    pub timeout: Duration,
    /// Metadata delivered with the message.
    pub metadata: BTreeMap<String, String>,
    /// Body encoding (default MessagePack).
    pub content_type: ContentType,
    /// With `ack`: how long to wait for one round of acknowledgements before a queue-group
    /// delivery moves to another member (default: the whole timeout). A delivery that timed out
    /// may still arrive: queue groups are at least once under failures.
    pub attempt_timeout: Option<Duration>,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            ack: false,
            timeout: Duration::from_secs(5),
            metadata: BTreeMap::new(),
            content_type: ContentType::MsgPack,
            attempt_timeout: None,
        }
    }
}

impl PublishOptions {
    /// Acknowledged delivery.
    pub fn acked() -> Self {
        Self {
            ack: true,
            ..Self::default()
        }
    }
    /// Adds metadata.
    pub fn metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.insert(k.into(), v.into());
        self
    }
    /// Sets the timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Sets the time one round of acknowledgements may take.
    pub fn attempt_timeout(mut self, t: Duration) -> Self {
        self.attempt_timeout = Some(t);
        self
    }
}

/// What happened to one publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Nodes that took the message: acknowledged it (with `ack`), or had it queued on their link.
    pub delivered: Vec<SocketAddr>,
    /// Nodes that did not, and why (a full link, a broken stream, a negative ack, the timeout).
    pub failed: Vec<(SocketAddr, RpcError)>,
}

/// A message as a subscriber receives it.
#[derive(Debug, Clone)]
pub struct Message<T> {
    /// Topic.
    pub topic: String,
    /// Publisher metadata.
    pub metadata: BTreeMap<String, String>,
    /// The publishing node.
    pub publisher: SocketAddr,
    /// The decoded body.
    pub body: T,
}

/// A delivery not yet decoded.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Topic.
    pub topic: String,
    /// Publisher metadata.
    pub metadata: BTreeMap<String, String>,
    /// The publishing node.
    pub publisher: SocketAddr,
    /// Body encoding.
    pub content_type: ContentType,
    /// The encoded body.
    pub body: Bytes,
}

/// Middleware around deliveries to this node's subscriptions (go-micro's subscriber wrappers):
/// inspect, change or refuse (an error is the ack's error) a delivery before it is queued.
pub trait SubscriberWrapper: Send + Sync + 'static {
    /// Handles `d`, usually by calling `next`.
    fn wrap(&self, d: Delivery, next: SubscriberNext) -> BoxFuture<Result<(), RpcError>>;
}

/// The rest of the subscriber chain.
pub type SubscriberNext = Arc<dyn Fn(Delivery) -> BoxFuture<Result<(), RpcError>> + Send + Sync>;

impl<F, Fut> SubscriberWrapper for F
where
    F: Fn(Delivery, SubscriberNext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), RpcError>> + Send + 'static,
{
    fn wrap(&self, d: Delivery, next: SubscriberNext) -> BoxFuture<Result<(), RpcError>> {
        Box::pin(self(d, next))
    }
}
