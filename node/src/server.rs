//! The RPC server: services of typed handlers, wrappers around them, and the stream loop that
//! serves unary calls with deadlines, cancellation and panic isolation.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mesh_protocol::{
    encode_frame, CallHeader, ContentType, EndpointInfo, FrameDecoder, FrameKind, ReplyHeader,
    RpcError, ServiceInfo, StreamKind, DEFAULT_MAX_HEADER_LEN,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::pubsub::{self, Subscribers};
use crate::stats::{Slot, Stats};
use crate::streaming::{self, StreamingHandler};
use crate::transport::{close_code, refuse, StreamHandler};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `id` of errors raised by the framework itself (not by a handler).
pub const FRAMEWORK_ERROR_ID: &str = "mesh";

/// A call as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Service name.
    pub service: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Caller metadata.
    pub metadata: BTreeMap<String, String>,
    /// When the caller stops waiting, if it set a deadline.
    pub deadline: Option<Instant>,
    /// Content type of the body (and of the reply).
    pub content_type: ContentType,
    /// The routing key the caller used, if any.
    pub routing_key: Option<String>,
    /// The caller's advertised address (from its certificate).
    pub caller: SocketAddr,
    /// The encoded request body.
    pub body: Bytes,
}

impl Request {
    /// The request a handler sees for a call with `header` from `caller`.
    pub(crate) fn from_header(
        header: CallHeader,
        content_type: ContentType,
        caller: SocketAddr,
        body: Bytes,
    ) -> Self {
        Self {
            deadline: header
                .deadline_us
                .map(|us| Instant::now() + Duration::from_micros(us)),
            service: header.service,
            endpoint: header.endpoint,
            metadata: header.metadata,
            content_type,
            routing_key: header.routing_key,
            caller,
            body,
        }
    }

    /// Decodes the body as `T`; a body that does not decode is a 400.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        self.content_type
            .decode(&self.body)
            .map_err(|e| RpcError::bad_request(&self.service, format!("undecodable request: {e}")))
    }

    /// Encodes a reply in the request's content type.
    pub fn encode<T: Serialize>(&self, reply: &T) -> Result<Bytes, RpcError> {
        self.content_type
            .encode(reply)
            .map(Bytes::from)
            .map_err(|e| RpcError::internal(&self.service, format!("unencodable reply: {e}")))
    }
}

/// Serves one endpoint: takes a request, returns the encoded reply or an error.
pub trait Handler: Send + Sync + 'static {
    /// Handles `req`.
    fn call(&self, req: Request) -> BoxFuture<Result<Bytes, RpcError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, RpcError>> + Send + 'static,
{
    fn call(&self, req: Request) -> BoxFuture<Result<Bytes, RpcError>> {
        Box::pin(self(req))
    }
}

/// A handler from a typed async function: the request body is decoded into `Req` (a 400 if it
/// does not decode), the `Resp` is encoded in the caller's content type.
///
/// # Examples
///
/// ```
/// use mesh_node::server::typed;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct Hello { name: String }
/// #[derive(Serialize)]
/// struct Greeting { greeting: String }
///
/// let handler = typed(|_req, hello: Hello| async move {
///     Ok(Greeting { greeting: format!("Hello {}", hello.name) })
/// });
/// # let _ = handler;
/// ```
pub fn typed<Req, Resp, F, Fut>(f: F) -> impl Handler
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Request, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
{
    let f = Arc::new(f);
    move |req: Request| {
        let f = f.clone();
        async move {
            let body: Req = req.decode()?;
            let reply = f(req.clone(), body).await?;
            req.encode(&reply)
        }
    }
}

/// Middleware around handlers (go-micro's handler wrappers): gets the request and the next
/// handler, and may inspect, change, short-circuit or time the call.
pub trait Wrapper: Send + Sync + 'static {
    /// Handles `req`, usually by calling `next`.
    fn wrap(&self, req: Request, next: Arc<dyn Handler>) -> BoxFuture<Result<Bytes, RpcError>>;
}

impl<F, Fut> Wrapper for F
where
    F: Fn(Request, Arc<dyn Handler>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, RpcError>> + Send + 'static,
{
    fn wrap(&self, req: Request, next: Arc<dyn Handler>) -> BoxFuture<Result<Bytes, RpcError>> {
        Box::pin(self(req, next))
    }
}

struct Wrapped {
    wrapper: Arc<dyn Wrapper>,
    inner: Arc<dyn Handler>,
}

impl Handler for Wrapped {
    fn call(&self, req: Request) -> BoxFuture<Result<Bytes, RpcError>> {
        self.wrapper.wrap(req, self.inner.clone())
    }
}

/// Applies `wrappers` around `handler`, the first wrapper outermost.
pub(crate) fn wrap_all(
    handler: Arc<dyn Handler>,
    wrappers: &[Arc<dyn Wrapper>],
) -> Arc<dyn Handler> {
    wrappers.iter().rev().fold(handler, |inner, w| {
        Arc::new(Wrapped {
            wrapper: w.clone(),
            inner,
        })
    })
}

/// A service: a name, a version, metadata, and endpoints with their handlers.
///
/// # Examples
///
/// ```
/// use mesh_node::server::{typed, Service};
/// # #[derive(serde::Deserialize)] struct Hello { name: String }
/// # #[derive(serde::Serialize)] struct Greeting { greeting: String }
/// let greeter = Service::new("Greeter")
///     .version("1.0.0")
///     .idempotent_endpoint("Hello", typed(|_req, h: Hello| async move {
///         Ok(Greeting { greeting: format!("Hello {}", h.name) })
///     }));
/// ```
pub struct Service {
    pub(crate) info: ServiceInfo,
    pub(crate) handlers: Vec<(String, Arc<dyn Handler>)>,
    pub(crate) streams: Vec<(String, Arc<dyn StreamingHandler>)>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service named `name` with no endpoints.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            info: ServiceInfo {
                name: name.into(),
                ..Default::default()
            },
            handlers: Vec::new(),
            streams: Vec::new(),
        }
    }

    /// Adds a streaming endpoint (server, client or bidirectional stream: the handler reads
    /// and sends as many messages as it likes). Advertised with metadata `stream = "true"`.
    /// Streaming calls are never retried once the stream is open.
    pub fn stream_endpoint(mut self, name: &str, h: impl StreamingHandler) -> Self {
        self.info.endpoints.push(EndpointInfo {
            name: name.to_owned(),
            idempotent: false,
            metadata: [("stream".to_owned(), "true".to_owned())].into(),
        });
        self.streams.push((name.to_owned(), Arc::new(h)));
        self
    }

    /// Sets the advertised version.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.info.version = v.into();
        self
    }

    /// Adds advertised metadata.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.info.metadata.insert(key.into(), value.into());
        self
    }

    fn add(mut self, name: &str, idempotent: bool, h: impl Handler) -> Self {
        self.info.endpoints.push(EndpointInfo {
            name: name.to_owned(),
            idempotent,
            metadata: BTreeMap::new(),
        });
        self.handlers.push((name.to_owned(), Arc::new(h)));
        self
    }

    /// Adds an endpoint that must not run twice for one call: clients retry it only where the
    /// request provably never reached a handler.
    pub fn endpoint(self, name: &str, h: impl Handler) -> Self {
        self.add(name, false, h)
    }

    /// Adds an endpoint that is safe to run more than once: clients retry it on another node after
    /// any transport failure.
    pub fn idempotent_endpoint(self, name: &str, h: impl Handler) -> Self {
        self.add(name, true, h)
    }
}

/// The handlers of a node, by service and endpoint, and what serving them needs.
pub(crate) struct Router {
    handlers: Routes<dyn Handler>,
    streams: Routes<dyn StreamingHandler>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutting_down: AtomicBool,
    in_flight: AtomicUsize,
    drained: Notify,
    max_in_flight: usize,
    max_frame: u32,
    /// A function node serves one request of its own services, then refuses the rest.
    pub(crate) serve_once: bool,
    served: AtomicBool,
    pub(crate) served_one: Notify,
    pub(crate) subscribers: Arc<Subscribers>,
}

impl Router {
    pub(crate) fn new(
        max_in_flight: usize,
        max_frame: u32,
        stats: Arc<Stats>,
        subscribers: Arc<Subscribers>,
    ) -> Self {
        Self {
            subscribers,
            handlers: Routes::new(),
            streams: Routes::new(),
            stats,
            shutting_down: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            drained: Notify::new(),
            max_in_flight,
            max_frame,
            serve_once: false,
            served: AtomicBool::new(false),
            served_one: Notify::new(),
        }
    }

    pub(crate) fn insert(&mut self, service: &str, endpoint: &str, h: Arc<dyn Handler>) {
        self.handlers.insert(&self.stats, service, endpoint, h);
    }

    pub(crate) fn insert_stream(
        &mut self,
        service: &str,
        endpoint: &str,
        h: Arc<dyn StreamingHandler>,
    ) {
        self.streams.insert(&self.stats, service, endpoint, h);
    }

    /// Waits until no call is in flight, or `limit` passes; returns how many are left.
    pub(crate) async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.drained.notified();
            let n = self.in_flight.load(Ordering::Acquire);
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight.load(Ordering::Acquire);
            }
        }
    }
}

/// Handlers by service, then endpoint (looked up by `&str`, without building a key), each with
/// its statistics slot.
struct Routes<H: ?Sized>(HashMap<String, HashMap<String, Route<H>>>);

struct Route<H: ?Sized> {
    handler: Arc<H>,
    stats: Slot,
}

impl<H: ?Sized> Clone for Route<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<H: ?Sized> Routes<H> {
    fn new() -> Self {
        Self(HashMap::new())
    }

    fn insert(&mut self, stats: &Stats, service: &str, endpoint: &str, handler: Arc<H>) {
        let stats = stats.slot(&format!("{service}.{endpoint}"));
        self.0
            .entry(service.to_owned())
            .or_default()
            .insert(endpoint.to_owned(), Route { handler, stats });
    }

    fn get(&self, service: &str, endpoint: &str) -> Option<&Route<H>> {
        self.0.get(service)?.get(endpoint)
    }
}

/// Decrements the in-flight count when a call ends, however it ends.
struct InFlight<'a>(&'a Router);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// Signals that a function's one request is over, however it ended.
struct ServedOne<'a>(&'a Router);

impl Drop for ServedOne<'_> {
    fn drop(&mut self) {
        self.0.served_one.notify_one();
    }
}

/// Serves RPC streams handed over by the transport.
pub(crate) struct RpcServer {
    pub(crate) router: Arc<Router>,
}

impl StreamHandler for RpcServer {
    fn handle(
        &self,
        kind: StreamKind,
        from: SocketAddr,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> BoxFuture<()> {
        let router = self.router.clone();
        match kind {
            StreamKind::UnaryCall => Box::pin(serve_unary(router, from, send, recv)),
            StreamKind::StreamingCall => Box::pin(serve_streaming(router, from, send, recv)),
            StreamKind::Publish => {
                let subscribers = router.subscribers.clone();
                Box::pin(pubsub::serve(
                    subscribers,
                    from,
                    send,
                    recv,
                    router.max_frame,
                ))
            }
            other => {
                debug!(%from, ?other, "stream kind not served yet");
                let mut send = send;
                refuse(&mut send, &mut recv, close_code::UNSUPPORTED);
                Box::pin(std::future::ready(()))
            }
        }
    }
}

/// Reads one frame of `kind` of at most `max` bytes.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    kind: FrameKind,
    max: u32,
) -> Result<Bytes, String> {
    mesh_membership::transport::read_frame(recv, kind, max)
        .await
        .map_err(|e| e.to_string())
}

/// Reads frames from a QUIC stream a received chunk at a time, and hands them out without
/// copying them again: a small call's header and body arrive in one chunk and take one read
/// between them. Memory grows only with bytes actually received (a peer that declares a 4 MiB
/// frame and sends 10 bytes costs 10 bytes), and a frame over its limit is refused from its
/// header alone.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// The next frame, which must be of `kind` and at most `max` bytes long.
    pub(crate) async fn next(
        &mut self,
        recv: &mut quinn::RecvStream,
        kind: FrameKind,
        max: u32,
    ) -> Result<Bytes, String> {
        let decoder = FrameDecoder::new(max);
        loop {
            if let Some(frame) = decoder.decode(&mut self.buf).map_err(|e| e.to_string())? {
                if frame.kind != kind {
                    return Err(format!("expected a {kind:?} frame, got {:?}", frame.kind));
                }
                return Ok(frame.payload);
            }
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Err("stream finished".into()),
                Ok(None) => return Err("stream finished inside a frame".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Takes note of the end of the stream if it has already arrived (it usually comes in the
    /// same packet as the last frame). A stream dropped before its end was read makes quinn send
    /// STOP_SENDING, one more packet per call; this never waits.
    pub(crate) async fn end_if_arrived(&mut self, recv: &mut quinn::RecvStream) {
        if !self.buf.is_empty() {
            return;
        }
        let mut read = std::pin::pin!(recv.read_chunk(usize::MAX, true));
        std::future::poll_fn(|cx| {
            let _ = read.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
    }
}

/// Writes `frames` (kind, payload) and finishes the stream.
pub(crate) async fn write_frames(
    send: &mut quinn::SendStream,
    prefix: &[u8],
    frames: &[(FrameKind, &[u8])],
    max: u32,
) -> Result<(), String> {
    let mut buf = BytesMut::from(prefix);
    for (kind, payload) in frames {
        encode_frame(*kind, payload, max, &mut buf).map_err(|e| e.to_string())?;
    }
    send.write_all(&buf).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_unary(
    router: Arc<Router>,
    from: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let started = Instant::now();
    // Header and body, within a bounded time: a peer that opens a stream and stalls is dropped.
    let read = async {
        let mut frames = FrameReader::default();
        let head = frames
            .next(&mut recv, FrameKind::Header, DEFAULT_MAX_HEADER_LEN as u32)
            .await?;
        let header = CallHeader::decode(&head).map_err(|e| e.to_string())?;
        let body = frames
            .next(&mut recv, FrameKind::Data, router.max_frame)
            .await?;
        frames.end_if_arrived(&mut recv).await;
        Ok::<_, String>((header, body))
    };
    let (header, body) = match tokio::time::timeout(HEADER_READ_TIMEOUT, read).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            debug!(%from, error = %e, "malformed call refused");
            let reply = ReplyHeader::err(0, RpcError::bad_request(FRAMEWORK_ERROR_ID, e));
            reply_and_finish(&mut send, &reply, None, router.max_frame).await;
            return;
        }
        Err(_) => {
            debug!(%from, "call header not received in time");
            refuse(&mut send, &mut recv, close_code::PROTOCOL);
            return;
        }
    };
    let id = header.id;
    let route = router
        .handlers
        .get(&header.service, &header.endpoint)
        .cloned();
    let mut guards = CallGuards::default();
    let mut result = dispatch(
        &router,
        &mut guards,
        from,
        header,
        body,
        route.as_ref(),
        &mut send,
    )
    .await;
    if result
        .as_ref()
        .is_ok_and(|reply| reply.len() > router.max_frame as usize)
    {
        result = Err(RpcError::internal(
            FRAMEWORK_ERROR_ID,
            format!("reply exceeds the {} byte frame limit", router.max_frame),
        ));
    }
    // Only served endpoints are counted: names a caller makes up must not grow the table.
    if let Some(route) = &route {
        route.stats.record(started.elapsed(), result.is_err());
    }
    let reply = match &result {
        Ok(_) => ReplyHeader::ok(id),
        Err(e) => ReplyHeader::err(id, e.clone()),
    };
    reply_and_finish(&mut send, &reply, result.ok().as_deref(), router.max_frame).await;
    // The call counts as in flight until the caller has the whole reply, so that a graceful
    // shutdown never closes a connection under a reply still being sent.
    let _ = tokio::time::timeout(REPLY_ACK_TIMEOUT, send.stopped()).await;
    drop(guards);
}

async fn serve_streaming(
    router: Arc<Router>,
    from: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let started = Instant::now();
    let header =
        match tokio::time::timeout(HEADER_READ_TIMEOUT, streaming::read_header(&mut recv)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                debug!(%from, error = %e, "malformed streaming call refused");
                refuse(&mut send, &mut recv, close_code::PROTOCOL);
                return;
            }
            Err(_) => {
                refuse(&mut send, &mut recv, close_code::PROTOCOL);
                return;
            }
        };
    let route = router
        .streams
        .get(&header.service, &header.endpoint)
        .cloned();
    let known = route.is_some();
    let (handler, stats) = route.map(|r| (r.handler, r.stats)).unzip();
    // The same refusals as unary calls, before any handler runs.
    let over_limit = router.in_flight.fetch_add(1, Ordering::AcqRel) >= router.max_in_flight;
    let _in_flight = InFlight(&router);
    let refusal = if router.shutting_down.load(Ordering::Acquire) {
        Some(RpcError::unavailable(
            FRAMEWORK_ERROR_ID,
            "node is shutting down",
        ))
    } else if over_limit && known {
        Some(RpcError::too_many_requests(
            FRAMEWORK_ERROR_ID,
            "node is at its concurrency limit",
        ))
    } else {
        None
    };
    let result = match refusal {
        Some(e) => streaming::refuse(e, header.id, send, router.max_frame).await,
        None => streaming::serve(handler, header, from, send, recv, router.max_frame).await,
    };
    if let Some(stats) = stats {
        stats.record(started.elapsed(), result.is_err());
    }
}

/// Longest wait for a caller to acknowledge a reply before the call stops counting as in flight.
const REPLY_ACK_TIMEOUT: Duration = Duration::from_secs(5);

async fn reply_and_finish(
    send: &mut quinn::SendStream,
    reply: &ReplyHeader,
    body: Option<&[u8]>,
    max: u32,
) {
    let head = match reply.encode() {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "reply header did not encode");
            return;
        }
    };
    let mut frames = vec![(FrameKind::Header, &head[..])];
    if let Some(b) = body {
        frames.push((FrameKind::Data, b));
    }
    if let Err(e) = write_frames(send, &[], &frames, max).await {
        debug!(error = %e, "reply not delivered (caller gone?)");
    }
}

/// What a call holds until its reply has been delivered: its in-flight slot and, on a function
/// node, the signal that its one request is over.
#[derive(Default)]
struct CallGuards<'a> {
    in_flight: Option<InFlight<'a>>,
    served: Option<ServedOne<'a>>,
}

async fn dispatch<'a>(
    router: &'a Arc<Router>,
    guards: &mut CallGuards<'a>,
    from: SocketAddr,
    header: CallHeader,
    body: Bytes,
    route: Option<&Route<dyn Handler>>,
    send: &mut quinn::SendStream,
) -> Result<Bytes, RpcError> {
    // Refusals before a handler runs carry the framework id: clients may retry them anywhere.
    if router.shutting_down.load(Ordering::Acquire) {
        return Err(RpcError::unavailable(
            FRAMEWORK_ERROR_ID,
            "node is shutting down",
        ));
    }
    let Some(route) = route else {
        return Err(RpcError::not_found(
            FRAMEWORK_ERROR_ID,
            format!(
                "no endpoint {}.{} on this node",
                header.service, header.endpoint
            ),
        ));
    };
    let content_type = header
        .content_type()
        .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?;
    // A function serves exactly one request of its services (built-ins do not count).
    let once = router.serve_once && header.service != crate::node::BUILTIN_SERVICE;
    if once && router.served.swap(true, Ordering::AcqRel) {
        return Err(RpcError::unavailable(
            FRAMEWORK_ERROR_ID,
            "function has served its request",
        ));
    }
    guards.served = once.then_some(ServedOne(router));
    if router.in_flight.fetch_add(1, Ordering::AcqRel) >= router.max_in_flight {
        drop(InFlight(router));
        return Err(RpcError::too_many_requests(
            FRAMEWORK_ERROR_ID,
            "node is at its concurrency limit",
        ));
    }
    guards.in_flight = Some(InFlight(router));
    let req = Request::from_header(header, content_type, from, body);
    let deadline = req.deadline;
    let service = req.service.clone();
    // The handler runs inside this task, and a panic in it is caught and reported, not fatal.
    // Dropping it (deadline, caller gone) cancels it.
    let handler = CatchUnwind(route.handler.call(req));
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        result = handler => match result {
            // A handler that passes on the framework's refusal of a call it made downstream
            // (`?` on a 503 "mesh") must not make its own caller think it never ran.
            Ok(Err(mut e)) if e.id == FRAMEWORK_ERROR_ID => {
                e.id = service;
                Err(e)
            }
            Ok(result) => result,
            Err(()) => {
                warn!(%service, "handler panicked");
                Err(RpcError::internal(&service, "handler panicked"))
            }
        },
        _ = timeout => Err(RpcError::timeout(&service, "deadline exceeded")),
        _ = send.stopped() => {
            // The caller went away: stop working for it.
            debug!(%service, "caller went away: handler cancelled");
            Err(RpcError::new(&service, mesh_protocol::code::CLIENT_CLOSED, "caller went away"))
        }
    }
}

/// Polls a handler's future and turns a panic in it into `Err(())`, as a spawned task's
/// `JoinError` would, without the cost of a task per call. The future is not polled again after
/// a panic.
struct CatchUnwind(BoxFuture<Result<Bytes, RpcError>>);

impl Future for CatchUnwind {
    type Output = Result<Result<Bytes, RpcError>, ()>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(r)) => std::task::Poll::Ready(Ok(r)),
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}
