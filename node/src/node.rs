//! The node handle: a running node's calls, streams, publishes and subscriptions, and its
//! shutdown. Building one is [`crate::builder`]'s job; the work behind each method is in
//! [`crate::client`], [`crate::rpc`] and [`crate::pubsub`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_membership::MembershipHandle;
use mesh_protocol::{RpcError, FRAMEWORK_ERROR_ID};
use serde::{de::DeserializeOwned, Serialize};
use tracing::{info, warn};

use crate::client::caller::Client;
use crate::client::options::CallOptions;
use crate::connections::{ConnectionStats, Connections, PeerConnection};
use crate::pubsub::local::Subscribers;
use crate::pubsub::options::{PublishOptions, PublishReport};
use crate::pubsub::publish::Publisher;
use crate::pubsub::subscription::{subscribe, Subscription};
use crate::rpc::router::Router;
use crate::rpc::streaming::CallStream;
use crate::stats::EndpointStats;

/// What a node's handles share.
pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) membership: MembershipHandle,
    pub(crate) connections: Connections,
    pub(crate) socket_stats: Arc<crate::socket::SocketStats>,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) router: Arc<Router>,
    pub(crate) client: Arc<Client>,
    pub(crate) publisher: Publisher,
    pub(crate) subscribers: Arc<Subscribers>,
    pub(crate) subscription_queue: usize,
    pub(crate) drain_timeout: Duration,
}

/// A running node: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address peers reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The membership handle: members, services, watch.
    pub fn membership(&self) -> &MembershipHandle {
        &self.inner.membership
    }

    /// Attempts this node's client made after the first of a call (retries), since start.
    pub fn retries(&self) -> u64 {
        self.inner.client.balancer.retries.load(Ordering::Relaxed)
    }

    /// This node's QUIC connections: open, in use, evicted under the cap, refused.
    pub fn connection_stats(&self) -> ConnectionStats {
        self.inner.connections.stats()
    }

    /// Counters of the node's UDP port: membership datagrams in and out, and those dropped
    /// because a queue between the socket and the membership driver was full.
    pub fn socket_stats(&self) -> &crate::socket::SocketStats {
        &self.inner.socket_stats
    }

    /// Per-endpoint statistics of the calls this node served.
    pub fn stats(&self) -> BTreeMap<String, EndpointStats> {
        self.inner.router.stats.snapshot()
    }

    /// Calls `service.endpoint` on a node chosen by the options, with a typed request and reply.
    ///
    /// Retries go only to nodes not yet tried, with jittered backoff, inside the timeout, and only
    /// where they are safe: the request never left (no connection or stream), the callee refused
    /// it before running a handler (overload, shutdown), or the endpoint is advertised as
    /// idempotent. Error replies from handlers are returned at once and never eject a node.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<Resp, RpcError> {
        let body = opts
            .content_type
            .encode(req)
            .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?;
        let reply = self.call_raw(service, endpoint, body.into(), opts).await?;
        opts.content_type
            .decode(&reply)
            .map_err(|e| RpcError::internal(FRAMEWORK_ERROR_ID, format!("undecodable reply: {e}")))
    }

    /// [`call`](Self::call) with an already encoded body (in `opts.content_type`), through the
    /// client wrappers.
    pub async fn call_raw(
        &self,
        service: &str,
        endpoint: &str,
        body: Bytes,
        opts: &CallOptions,
    ) -> Result<Bytes, RpcError> {
        self.inner
            .client
            .call_raw(service, endpoint, body, opts)
            .await
    }

    /// Opens a streaming call to `service.endpoint` on a node chosen by the options. Nodes that
    /// cannot be reached are skipped (nothing was sent to them); once the stream is open, it is
    /// never retried. `opts.timeout` bounds the whole stream.
    pub async fn stream(
        &self,
        service: &str,
        endpoint: &str,
        opts: &CallOptions,
    ) -> Result<CallStream, RpcError> {
        self.inner.client.stream(service, endpoint, opts).await
    }

    /// Calls `service.endpoint` on the node at `node`, whatever the registry says: one attempt,
    /// no retry. Built-in endpoints (`mesh.Health`, `mesh.Info`, `mesh.Stats`) are called this way.
    pub async fn call_node<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: SocketAddr,
        service: &str,
        endpoint: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<Resp, RpcError> {
        let body = opts
            .content_type
            .encode(req)
            .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?;
        let deadline = Instant::now() + opts.timeout;
        let reply = self
            .inner
            .client
            .attempt(node, service, endpoint, &body, opts, deadline)
            .await
            .map_err(|f| f.into_error())?;
        opts.content_type
            .decode(&reply)
            .map_err(|e| RpcError::internal(FRAMEWORK_ERROR_ID, format!("undecodable reply: {e}")))
    }

    /// Shuts down gracefully: stops taking calls (new ones get a retryable 503), leaves the
    /// cluster (peers drop this node's services at once), waits for calls in flight up to the
    /// drain timeout, then closes every connection.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.router.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        info!(name = %inner.name, "shutting down");
        if inner.membership.leave().await.is_err() {
            warn!("membership had already stopped");
        }
        let left = inner.router.drain(inner.drain_timeout).await;
        if left > 0 {
            warn!(calls = left, "drain timeout: abandoning calls in flight");
        }
        inner.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
    }

    /// Subscribes to `topic`: every message published to it reaches this subscription. The
    /// subscription is advertised in the registry until it is dropped.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        topic: &str,
    ) -> Result<Subscription<T>, RpcError> {
        self.subscribe_inner(topic, None).await
    }

    /// Subscribes to `topic` in the queue group `group`: each message reaches one member of the
    /// group (across the cluster), chosen by the publisher.
    pub async fn subscribe_queue<T: DeserializeOwned>(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Subscription<T>, RpcError> {
        self.subscribe_inner(topic, Some(group.to_owned())).await
    }

    async fn subscribe_inner<T: DeserializeOwned>(
        &self,
        topic: &str,
        group: Option<String>,
    ) -> Result<Subscription<T>, RpcError> {
        let inner = &self.inner;
        subscribe(
            &inner.membership,
            &inner.subscribers,
            topic,
            group,
            inner.subscription_queue,
        )
        .await
    }

    /// Publishes `msg` to `topic`: to every node with plain subscribers, and to one member of
    /// each queue group. With `opts.ack`, waits for each node to acknowledge, and retries a
    /// queue-group delivery on another member of the group when the chosen one fails.
    /// Publishing to a topic nobody subscribes to delivers nothing and is not an error.
    pub async fn publish<T: Serialize>(
        &self,
        topic: &str,
        msg: &T,
        opts: &PublishOptions,
    ) -> Result<PublishReport, RpcError> {
        let body: Bytes = opts
            .content_type
            .encode(msg)
            .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?
            .into();
        let directory = self.inner.membership.directory();
        let balancer = &self.inner.client.balancer;
        self.inner
            .publisher
            .publish(&directory, topic, body, opts, |nodes| {
                balancer.pick_addr(nodes)
            })
            .await
    }

    /// The QUIC connection to the node at `addr`, opened if needed: low-level access for protocols
    /// of your own on the node's authenticated connections. The handle keeps the connection from
    /// eviction under the node's connection cap while it lives: drop it when your streams end.
    pub async fn connection(&self, addr: SocketAddr) -> Result<PeerConnection, RpcError> {
        self.inner
            .connections
            .connection(addr)
            .await
            .map_err(|e| RpcError::unavailable(FRAMEWORK_ERROR_ID, format!("{addr}: {e}")))
    }

    /// Kills the node at once, as a crash would: no leave, no drain.
    pub fn kill(&self) {
        self.inner.membership.abort();
        self.inner.endpoint.close(0u32.into(), b"killed");
    }
}
