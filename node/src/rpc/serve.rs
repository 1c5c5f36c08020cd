//! Serving calls: the unary and streaming entry points, the refusals made before any handler runs
//! (malformed, shutting down, over the limit, unknown endpoint), deadlines, cancellation when the
//! caller goes away, and panic isolation.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_protocol::{
    CallHeader, FrameKind, ReplyHeader, RpcError, BUILTIN_SERVICE, DEFAULT_MAX_HEADER_LEN,
    FRAMEWORK_ERROR_ID,
};
use tracing::{debug, warn};

use crate::rpc::handler::{Handler, Request};
use crate::rpc::router::{InFlight, Route, Router, ServedOne};
use crate::rpc::streaming;
use crate::wire::{close_code, refuse, write_frames, BoxFuture, FrameReader};

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve_unary(
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

pub(crate) async fn serve_streaming(
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
    let once = router.serve_once && header.service != BUILTIN_SERVICE;
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
