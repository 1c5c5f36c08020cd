//! The client side of calls: options, node selection, ejection of failing nodes and safe retries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_membership::ServiceNode;
use mesh_protocol::{
    code, CallHeader, ContentType, FrameKind, Preamble, ReplyHeader, RpcError, StreamKind,
    DEFAULT_MAX_HEADER_LEN,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::server::{write_frames, FrameReader, FRAMEWORK_ERROR_ID};
use crate::transport::QuicTransport;

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
pub type ClientNext = std::sync::Arc<
    dyn Fn(ClientCall) -> crate::server::BoxFuture<Result<Bytes, RpcError>> + Send + Sync,
>;

/// Middleware around outgoing calls (go-micro's client wrappers): tracing, metrics, auth
/// headers, circuit breakers. Selection and retries happen inside `next`.
pub trait ClientWrapper: Send + Sync + 'static {
    /// Handles `call`, usually by calling `next`.
    fn wrap(
        &self,
        call: ClientCall,
        next: ClientNext,
    ) -> crate::server::BoxFuture<Result<Bytes, RpcError>>;
}

impl<F, Fut> ClientWrapper for F
where
    F: Fn(ClientCall, ClientNext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Bytes, RpcError>> + Send + 'static,
{
    fn wrap(
        &self,
        call: ClientCall,
        next: ClientNext,
    ) -> crate::server::BoxFuture<Result<Bytes, RpcError>> {
        Box::pin(self(call, next))
    }
}

/// How one attempt failed, which decides whether another attempt is safe.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing was sent: no connection, or no stream. Always safe to retry.
    NotSent(RpcError),
    /// The request may have reached a handler (the stream broke after we wrote).
    MaybeRun(RpcError),
    /// The callee answered with an error.
    Reply(RpcError),
}

/// Client state shared by every call of a node: ejections, counters, randomness.
pub(crate) struct Balancer {
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
    outstanding: Mutex<HashMap<SocketAddr, u64>>,
    round_robin: AtomicU64,
    rng: Mutex<SmallRng>,
    pub(crate) ejection: Duration,
    next_id: AtomicU64,
    /// Attempts after the first, over all calls.
    pub(crate) retries: AtomicU64,
}

impl Balancer {
    pub(crate) fn new(ejection: Duration, seed: u64) -> Self {
        Self {
            ejected: Mutex::new(HashMap::new()),
            outstanding: Mutex::new(HashMap::new()),
            round_robin: AtomicU64::new(0),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            ejection,
            next_id: AtomicU64::new(1),
            retries: AtomicU64::new(0),
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn eject(&self, node: SocketAddr) {
        lock(&self.ejected).insert(node, Instant::now() + self.ejection);
    }

    fn is_ejected(&self, node: SocketAddr, now: Instant) -> bool {
        lock(&self.ejected)
            .get(&node)
            .is_some_and(|until| *until > now)
    }

    pub(crate) fn jitter(&self, base: Duration) -> Duration {
        base.mul_f64(lock(&self.rng).random_range(0.5..1.5))
    }

    /// Picks the next node among `candidates` (already filtered, none tried yet).
    pub(crate) fn pick(
        &self,
        candidates: &[&ServiceNode],
        opts: &CallOptions,
    ) -> Option<SocketAddr> {
        if candidates.is_empty() {
            return None;
        }
        let now = Instant::now();
        // Ejected nodes only if every candidate is ejected.
        let healthy: Vec<&ServiceNode> = {
            let ejected = lock(&self.ejected);
            candidates
                .iter()
                .copied()
                .filter(|n| ejected.get(&n.node.addr).is_none_or(|until| *until <= now))
                .collect()
        };
        let pool: &[&ServiceNode] = if healthy.is_empty() {
            candidates
        } else {
            &healthy
        };
        if let Some(key) = &opts.routing_key {
            return pool
                .iter()
                .max_by_key(|n| rendezvous_score(key, n.node.addr))
                .map(|n| n.node.addr);
        }
        let i = match opts.strategy {
            Strategy::Random => lock(&self.rng).random_range(0..pool.len()),
            Strategy::RoundRobin => {
                (self.round_robin.fetch_add(1, Ordering::Relaxed) % pool.len() as u64) as usize
            }
            Strategy::LeastOutstanding => {
                let out = lock(&self.outstanding);
                let min = pool
                    .iter()
                    .map(|n| out.get(&n.node.addr).copied().unwrap_or(0))
                    .min()
                    .unwrap_or(0);
                let least: Vec<usize> = (0..pool.len())
                    .filter(|i| out.get(&pool[*i].node.addr).copied().unwrap_or(0) == min)
                    .collect();
                drop(out);
                least[lock(&self.rng).random_range(0..least.len())]
            }
        };
        Some(pool[i].node.addr)
    }

    /// A random address among `nodes` (preferring ones not ejected).
    pub(crate) fn pick_addr(&self, nodes: &[SocketAddr]) -> Option<SocketAddr> {
        if nodes.is_empty() {
            return None;
        }
        let now = Instant::now();
        let healthy: Vec<SocketAddr> = nodes
            .iter()
            .copied()
            .filter(|n| !self.is_ejected(*n, now))
            .collect();
        let pool = if healthy.is_empty() { nodes } else { &healthy };
        Some(pool[lock(&self.rng).random_range(0..pool.len())])
    }

    pub(crate) fn start(&self, node: SocketAddr) -> Outstanding<'_> {
        *lock(&self.outstanding).entry(node).or_default() += 1;
        Outstanding { b: self, node }
    }
}

/// A call in flight to `node`, for least-outstanding selection.
pub(crate) struct Outstanding<'a> {
    b: &'a Balancer,
    node: SocketAddr,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let mut out = lock(&self.b.outstanding);
        if let Some(n) = out.get_mut(&self.node) {
            *n = n.saturating_sub(1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Rendezvous (highest random weight) score of `node` for `key`: FNV-1a 64 over both, then the
/// splitmix64 finaliser. Stable across processes and versions.
pub fn rendezvous_score(key: &str, node: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0]).chain(node.to_string().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `n` passes the version, metadata and endpoint filters.
pub(crate) fn matches(n: &ServiceNode, endpoint: &str, opts: &CallOptions) -> bool {
    opts.version
        .as_ref()
        .is_none_or(|v| *v == n.service.version)
        && opts
            .metadata_filter
            .iter()
            .all(|(k, v)| n.service.metadata.get(k) == Some(v))
        && n.service.endpoints.iter().any(|e| e.name == endpoint)
}

/// Whether an error reply was issued by the framework before any handler ran (overload,
/// shutdown): safe to retry elsewhere whatever the endpoint.
pub(crate) fn refused_before_running(e: &RpcError) -> bool {
    e.id == FRAMEWORK_ERROR_ID && matches!(e.code, code::TOO_MANY_REQUESTS | code::UNAVAILABLE)
}

/// One attempt: one stream to `node`, header and body out, reply back.
pub(crate) async fn attempt(
    transport: &QuicTransport,
    node: SocketAddr,
    header: &CallHeader,
    body: &[u8],
    max_frame: u32,
) -> Result<Bytes, Failure> {
    let unavailable = |e: String| RpcError::unavailable(FRAMEWORK_ERROR_ID, format!("{node}: {e}"));
    let conn = transport
        .connection(node)
        .await
        .map_err(|e| Failure::NotSent(unavailable(e.to_string())))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Failure::NotSent(unavailable(e.to_string())))?;
    let head = header
        .encode()
        .map_err(|e| Failure::NotSent(RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string())))?;
    let pre = Preamble::new(StreamKind::UnaryCall).to_bytes();
    write_frames(
        &mut send,
        &pre,
        &[(FrameKind::Header, &head), (FrameKind::Data, body)],
        max_frame,
    )
    .await
    .map_err(|e| Failure::MaybeRun(unavailable(e)))?;
    let mut frames = FrameReader::default();
    let reply = frames
        .next(&mut recv, FrameKind::Header, DEFAULT_MAX_HEADER_LEN as u32)
        .await
        .map_err(|e| Failure::MaybeRun(unavailable(e)))?;
    let reply = ReplyHeader::decode(&reply)
        .map_err(|e| Failure::MaybeRun(unavailable(format!("bad reply header: {e}"))))?;
    if let Some(e) = reply.error {
        return Err(Failure::Reply(e));
    }
    let body = frames
        .next(&mut recv, FrameKind::Data, max_frame)
        .await
        .map_err(|e| Failure::MaybeRun(unavailable(e)))?;
    frames.end_if_arrived(&mut recv).await;
    Ok(body)
}

/// Nodes already tried in this call.
pub(crate) type Tried = HashSet<SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_spreads_keys() {
        let nodes: Vec<SocketAddr> = (1..=4)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i)))
            .collect();
        let owner = |key: &str, nodes: &[SocketAddr]| {
            *nodes
                .iter()
                .max_by_key(|n| rendezvous_score(key, **n))
                .unwrap()
        };
        let mut counts = HashMap::new();
        for k in 0..4000 {
            *counts
                .entry(owner(&format!("user-{k}"), &nodes))
                .or_insert(0) += 1;
        }
        for n in &nodes {
            let c = counts[n];
            assert!((800..1200).contains(&c), "{n}: {c} of 4000 keys");
        }
        // Removing a node moves only that node's keys.
        let fewer = &nodes[..3];
        for k in 0..1000 {
            let key = format!("user-{k}");
            let before = owner(&key, &nodes);
            if before != nodes[3] {
                assert_eq!(owner(&key, fewer), before);
            }
        }
    }
}
