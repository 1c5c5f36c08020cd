//! Pub/sub across the mesh without a broker.
//!
//! Subscriptions are advertised in the registry, so a publisher knows every subscriber. A message
//! goes straight to each subscribing node over one long-lived `Publish` stream per
//! (publisher, subscriber) pair:
//!
//! ```text
//! publisher -> subscriber: preamble(Publish) [Header(PublishHeader) Data(body)]*
//! subscriber -> publisher:                   [Header(PublishAck)]*   (for deliveries with ack)
//! ```
//!
//! **Ordering**: messages from one publisher node to one subscriber node are delivered to each
//! of that node's subscriptions in the order they were published (one stream, read in order).
//! Nothing is promised across publishers.
//!
//! **Bounds**: each link has a byte budget ([`LINK_BUDGET`]); a publish, fire-and-forget or
//! acknowledged, waits for room on a full link (backpressure) within its timeout, and a link that
//! stays full fails the publish for that node ([`PublishReport::failed`]). Each
//! subscription has a bounded queue; a message that finds it full is dropped and counted
//! ([`Subscription::dropped`]) and, if acknowledged, answered with a 429.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mesh_protocol::{
    encode_frame, ContentType, FrameKind, Preamble, PublishAck, PublishHeader, RpcError,
    StreamKind, DEFAULT_MAX_HEADER_LEN,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::server::{BoxFuture, FrameReader, FRAMEWORK_ERROR_ID};
use crate::transport::QuicTransport;

/// Bytes a publisher may have queued or in flight towards one subscriber node (1 MiB). A full
/// link makes publishes wait, so this bounds the queueing delay as well as the memory: 8 MiB
/// gave a p50 of 177 ms for 128-byte messages at saturation in `mesh-bench`, 1 MiB gives 23 ms
/// at the same rate.
pub const LINK_BUDGET: usize = 1024 * 1024;
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

struct LocalSub {
    id: u64,
    group: Option<String>,
    tx: mpsc::Sender<Delivery>,
    dropped: Arc<AtomicU64>,
}

/// This node's subscriptions.
pub(crate) struct Subscribers {
    by_topic: Mutex<HashMap<String, Vec<LocalSub>>>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
    pub(crate) wrappers: Vec<Arc<dyn SubscriberWrapper>>,
}

impl Subscribers {
    pub(crate) fn new(wrappers: Vec<Arc<dyn SubscriberWrapper>>) -> Self {
        Self {
            by_topic: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            round_robin: AtomicUsize::new(0),
            wrappers,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<LocalSub>>> {
        self.by_topic.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add(
        &self,
        topic: &str,
        group: Option<String>,
        capacity: usize,
    ) -> (u64, mpsc::Receiver<Delivery>, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        self.lock()
            .entry(topic.to_owned())
            .or_default()
            .push(LocalSub {
                id,
                group,
                tx,
                dropped: dropped.clone(),
            });
        (id, rx, dropped)
    }

    /// Removes subscription `id`; returns whether another local subscription still holds the
    /// same (topic, group), i.e. whether the registry entry must stay.
    pub(crate) fn remove(&self, topic: &str, id: u64) -> (Option<String>, bool) {
        let mut m = self.lock();
        let Some(subs) = m.get_mut(topic) else {
            return (None, false);
        };
        let group = subs
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.group.clone());
        subs.retain(|s| s.id != id);
        let still = subs.iter().any(|s| s.group == group);
        if subs.is_empty() {
            m.remove(topic);
        }
        (group, still)
    }

    /// Queues `d` to the targeted local subscriptions: every plain one if `plain`, and one of
    /// each group in `groups`. Errors if one of them could not take it.
    fn enqueue(&self, d: Delivery, plain: bool, groups: &[String]) -> Result<(), RpcError> {
        let m = self.lock();
        let subs = m.get(&d.topic).map(Vec::as_slice).unwrap_or(&[]);
        let mut targets: Vec<&LocalSub> = Vec::new();
        if plain {
            targets.extend(subs.iter().filter(|s| s.group.is_none()));
        }
        for g in groups {
            let members: Vec<&LocalSub> = subs
                .iter()
                .filter(|s| s.group.as_deref() == Some(g.as_str()))
                .collect();
            if !members.is_empty() {
                let i = self.round_robin.fetch_add(1, Ordering::Relaxed) % members.len();
                targets.push(members[i]);
            }
        }
        if targets.is_empty() {
            return Err(RpcError::not_found(
                FRAMEWORK_ERROR_ID,
                format!("no subscriber of {} here", d.topic),
            ));
        }
        let mut result = Ok(());
        for t in targets {
            match t.tx.try_send(d.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    t.dropped.fetch_add(1, Ordering::Relaxed);
                    result = Err(RpcError::too_many_requests(
                        FRAMEWORK_ERROR_ID,
                        format!("subscriber queue of {} is full", d.topic),
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    result = Err(RpcError::not_found(FRAMEWORK_ERROR_ID, "unsubscribed"));
                }
            }
        }
        result
    }

    /// Runs the subscriber wrappers, then queues.
    pub(crate) async fn deliver(
        self: &Arc<Self>,
        d: Delivery,
        plain: bool,
        groups: Vec<String>,
    ) -> Result<(), RpcError> {
        if self.wrappers.is_empty() {
            return self.enqueue(d, plain, &groups);
        }
        let me = self.clone();
        let groups = Arc::new(groups);
        let innermost: SubscriberNext = Arc::new(move |d: Delivery| {
            let (me, groups) = (me.clone(), groups.clone());
            Box::pin(async move { me.enqueue(d, plain, &groups) })
        });
        let chain = self.wrappers.iter().rev().fold(innermost, |next, w| {
            let w = w.clone();
            Arc::new(move |d: Delivery| w.wrap(d, next.clone())) as SubscriberNext
        });
        chain(d).await
    }
}

/// Serves one `Publish` stream from `from`: deliveries in, acks out, in order.
pub(crate) async fn serve(
    subscribers: Arc<Subscribers>,
    from: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    max_frame: u32,
) {
    let mut frames = FrameReader::default();
    loop {
        let head = match frames
            .next(&mut recv, FrameKind::Header, DEFAULT_MAX_HEADER_LEN as u32)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                debug!(%from, reason = %e, "publish stream ended");
                return;
            }
        };
        let header = match PublishHeader::decode(&head) {
            Ok(h) => h,
            Err(e) => {
                debug!(%from, error = %e, "bad publish header: stream refused");
                crate::transport::refuse(
                    &mut send,
                    &mut recv,
                    crate::transport::close_code::PROTOCOL,
                );
                return;
            }
        };
        let body = match frames.next(&mut recv, FrameKind::Data, max_frame).await {
            Ok(b) => b,
            Err(e) => {
                debug!(%from, error = %e, "publish stream broke inside a message");
                return;
            }
        };
        let result = match ContentType::parse(&header.content_type) {
            Ok(content_type) => {
                let d = Delivery {
                    topic: header.topic.clone(),
                    metadata: header.metadata,
                    publisher: from,
                    content_type,
                    body,
                };
                subscribers.deliver(d, header.plain, header.groups).await
            }
            Err(e) => Err(RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string())),
        };
        if header.ack {
            let ack = PublishAck {
                seq: header.seq,
                error: result.err(),
            };
            let mut buf = BytesMut::new();
            let written = match ack.encode() {
                Ok(bytes) => encode_frame(FrameKind::Header, &bytes, max_frame, &mut buf)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = written {
                debug!(error = %e, "ack did not encode");
                return;
            }
            if send.write_all(&buf).await.is_err() {
                return;
            }
        }
    }
}

type AckTx = oneshot::Sender<Result<(), RpcError>>;

struct Outgoing {
    header: PublishHeader,
    body: Bytes,
    ack: Option<AckTx>,
    _budget: OwnedSemaphorePermit,
}

/// A publisher's stream to one subscriber node.
struct Link {
    tx: mpsc::UnboundedSender<Outgoing>,
    budget: Arc<Semaphore>,
    broken: Arc<AtomicBool>,
}

/// A publisher's links, one per subscriber node.
pub(crate) struct Links {
    links: Mutex<HashMap<SocketAddr, Arc<Link>>>,
    transport: QuicTransport,
    max_frame: u32,
}

fn broken(peer: SocketAddr, why: impl std::fmt::Display) -> RpcError {
    RpcError::unavailable(FRAMEWORK_ERROR_ID, format!("{peer}: {why}"))
}

impl Links {
    pub(crate) fn new(transport: QuicTransport, max_frame: u32) -> Self {
        Self {
            links: Mutex::new(HashMap::new()),
            transport,
            max_frame,
        }
    }

    fn link(&self, peer: SocketAddr) -> Arc<Link> {
        let mut m = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = m.get(&peer).filter(|l| !l.broken.load(Ordering::Acquire)) {
            return l.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            tx,
            budget: Arc::new(Semaphore::new(LINK_BUDGET)),
            broken: Arc::new(AtomicBool::new(false)),
        });
        tokio::spawn(run_link(
            self.transport.clone(),
            peer,
            rx,
            link.broken.clone(),
            self.max_frame,
        ));
        m.insert(peer, link.clone());
        link
    }

    /// Queues a delivery to `peer`, waiting while the link's byte budget is spent (backpressure)
    /// until `deadline`.
    pub(crate) async fn send(
        &self,
        peer: SocketAddr,
        header: PublishHeader,
        body: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Option<oneshot::Receiver<Result<(), RpcError>>>, RpcError> {
        let link = self.link(peer);
        let cost = u32::try_from(body.len().clamp(1, LINK_BUDGET)).unwrap_or(u32::MAX);
        let budget = link.budget.clone();
        let permit = match budget.clone().try_acquire_many_owned(cost) {
            Ok(p) => p,
            Err(_) => tokio::time::timeout_at(deadline, budget.acquire_many_owned(cost))
                .await
                .map_err(|_| {
                    RpcError::too_many_requests(
                        FRAMEWORK_ERROR_ID,
                        format!("{peer}: publish link full until the deadline (subscriber not keeping up)"),
                    )
                })?
                .map_err(|_| broken(peer, "link closed"))?,
        };
        let (ack, rx) = if header.ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        link.tx
            .send(Outgoing {
                header,
                body,
                ack,
                _budget: permit,
            })
            .map_err(|_| broken(peer, "link closed"))?;
        Ok(rx)
    }
}

/// Owns one link: opens the stream, writes deliveries in order, routes acks back.
async fn run_link(
    transport: QuicTransport,
    peer: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    is_broken: Arc<AtomicBool>,
    max_frame: u32,
) {
    let pending: Arc<Mutex<HashMap<u64, AckTx>>> = Arc::default();
    let fail_all = |pending: &Mutex<HashMap<u64, AckTx>>, why: &str| {
        for (_, tx) in pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            let _ = tx.send(Err(broken(peer, why)));
        }
    };
    let opened = async {
        let conn = transport
            .connection(peer)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&Preamble::new(StreamKind::Publish).to_bytes())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, recv))
    };
    let (mut send, mut recv) = match opened.await {
        Ok(x) => x,
        Err(e) => {
            is_broken.store(true, Ordering::Release);
            rx.close();
            while let Ok(o) = rx.try_recv() {
                if let Some(tx) = o.ack {
                    let _ = tx.send(Err(broken(peer, &e)));
                }
            }
            return;
        }
    };
    // Acks, in the order the subscriber sends them.
    let acks = {
        let pending = pending.clone();
        tokio::spawn(async move {
            let mut frames = FrameReader::default();
            loop {
                let Ok(frame) = frames
                    .next(&mut recv, FrameKind::Header, DEFAULT_MAX_HEADER_LEN as u32)
                    .await
                else {
                    return;
                };
                let Ok(ack) = PublishAck::decode(&frame) else {
                    return;
                };
                let tx = pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&ack.seq);
                if let Some(tx) = tx {
                    let _ = tx.send(match ack.error {
                        None => Ok(()),
                        Some(e) => Err(e),
                    });
                }
            }
        })
    };
    let mut acks = acks;
    let mut acks_done = false;
    let mut seq = 0u64;
    let why = loop {
        // A reader that stops (the subscriber's node died, the stream broke) ends the link at
        // once: deliveries waiting for their acks must fail now, not at their deadline.
        let next = tokio::select! {
            out = rx.recv() => out,
            _ = &mut acks => {
                acks_done = true;
                break "ack stream closed".to_owned();
            }
        };
        let Some(mut out) = next else {
            break "publisher gone".to_owned();
        };
        seq += 1;
        out.header.seq = seq;
        if let Some(tx) = out.ack.take() {
            pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(seq, tx);
        }
        let mut buf = BytesMut::new();
        let framed = out
            .header
            .encode()
            .map_err(|e| e.to_string())
            .and_then(|h| {
                encode_frame(
                    FrameKind::Header,
                    &h,
                    DEFAULT_MAX_HEADER_LEN as u32,
                    &mut buf,
                )
                .map_err(|e| e.to_string())
            })
            .and_then(|()| {
                encode_frame(FrameKind::Data, &out.body, max_frame, &mut buf)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = framed {
            if let Some(tx) = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&seq)
            {
                let _ = tx.send(Err(RpcError::bad_request(FRAMEWORK_ERROR_ID, e)));
            }
            continue;
        }
        if let Err(e) = send.write_all(&buf).await {
            break e.to_string();
        }
    };
    is_broken.store(true, Ordering::Release);
    rx.close();
    while let Ok(o) = rx.try_recv() {
        if let Some(tx) = o.ack {
            let _ = tx.send(Err(broken(peer, &why)));
        }
    }
    // Deliveries already written may still be acknowledged: give the reader a moment.
    let _ = send.finish();
    if !acks_done {
        let _ = tokio::time::timeout(Duration::from_secs(5), acks).await;
    }
    fail_all(&pending, &why);
}

/// Which deliveries a publish makes: per node, whether its plain subscribers get it and which
/// of the topic's queue groups it serves.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) plain: BTreeSet<SocketAddr>,
    /// Group name -> member nodes.
    pub(crate) groups: BTreeMap<String, Vec<SocketAddr>>,
}

impl Plan {
    pub(crate) fn new(subscribers: &[(mesh_protocol::MemberId, Option<String>)]) -> Self {
        let mut plan = Plan::default();
        for (node, queue) in subscribers {
            match queue {
                None => {
                    plan.plain.insert(node.addr);
                }
                Some(g) => plan.groups.entry(g.clone()).or_default().push(node.addr),
            }
        }
        plan
    }
}

/// A subscription: messages of one topic (or one queue group of it), decoded as `T`.
/// Dropping it unsubscribes.
pub struct Subscription<T> {
    pub(crate) rx: mpsc::Receiver<Delivery>,
    pub(crate) dropped: Arc<AtomicU64>,
    pub(crate) _guard: SubscriptionGuard,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self._guard.topic)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Subscription<T> {
    /// The next message; `None` once the node has shut down. A body that does not decode as `T`
    /// comes as an error (the subscription goes on).
    pub async fn recv(&mut self) -> Option<Result<Message<T>, RpcError>> {
        let d = self.rx.recv().await?;
        Some(
            d.content_type
                .decode(&d.body)
                .map(|body| Message {
                    topic: d.topic,
                    metadata: d.metadata,
                    publisher: d.publisher,
                    body,
                })
                .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string())),
        )
    }

    /// The next message, still encoded.
    pub async fn recv_raw(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

impl<T> Subscription<T> {
    /// Messages dropped because this subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Unsubscribes when dropped.
pub(crate) struct SubscriptionGuard {
    pub(crate) topic: String,
    pub(crate) on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}
