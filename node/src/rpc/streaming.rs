//! Streaming calls: server streams, client streams and bidirectional streams on one QUIC stream.
//!
//! ```text
//! caller -> callee: preamble(StreamingCall) Header(CallHeader) Data(msg)* FIN
//! callee -> caller:                          Data(msg)* End(ReplyHeader)  FIN
//! ```
//!
//! Messages flow both ways at once; QUIC flow control and bounded queues give backpressure. The
//! `End` frame carries the final status: `error: nil` for success, or the handler's error (or a
//! 404, 408, 500 from the framework).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mesh_protocol::{
    encode_frame, CallHeader, ContentType, FrameHeader, FrameKind, ReplyHeader, RpcError,
    DEFAULT_MAX_HEADER_LEN, FRAMEWORK_ERROR_ID, FRAME_HEADER_LEN,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::connections::PeerConnection;
use crate::rpc::handler::Request;
use crate::wire::{read_frame, BoxFuture};

/// Messages a handler may queue before `Outbound::send` waits for the stream.
const OUTBOUND_QUEUE: usize = 16;

/// The messages a peer sends on a streaming call.
#[derive(Debug)]
pub struct Inbound {
    recv: quinn::RecvStream,
    content_type: ContentType,
    max_frame: u32,
    /// Set when the peer ended with an `End` frame (callee side of the caller's stream).
    end: Option<ReplyHeader>,
    /// Whether the peer must end with an `End` frame (the caller reading the callee's messages):
    /// a bare end of stream then means the call broke, not that it succeeded.
    expect_end: bool,
    done: bool,
}

impl Inbound {
    /// The next message: `None` once the peer has finished sending.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, RpcError>> {
        match self.next_raw().await? {
            Ok(bytes) => Some(self.content_type.decode(&bytes).map_err(|e| {
                RpcError::bad_request(FRAMEWORK_ERROR_ID, format!("undecodable message: {e}"))
            })),
            Err(e) => Some(Err(e)),
        }
    }

    /// The next message, still encoded.
    pub async fn next_raw(&mut self) -> Option<Result<Bytes, RpcError>> {
        if self.done {
            return None;
        }
        let mut h = [0u8; FRAME_HEADER_LEN];
        match self.recv.read_exact(&mut h).await {
            Ok(()) => {}
            // A clean end of stream between frames: the peer finished sending.
            Err(quinn::ReadExactError::FinishedEarly(0)) => {
                self.done = true;
                if self.expect_end {
                    return Some(Err(stream_error("stream ended without an End frame")));
                }
                return None;
            }
            Err(e) => {
                self.done = true;
                return Some(Err(stream_error(e)));
            }
        }
        let header = match FrameHeader::parse(h, self.max_frame) {
            Ok(x) => x,
            Err(e) => {
                self.done = true;
                return Some(Err(RpcError::bad_request(
                    FRAMEWORK_ERROR_ID,
                    e.to_string(),
                )));
            }
        };
        let limit = if header.kind == FrameKind::End {
            header.len.min(DEFAULT_MAX_HEADER_LEN as u32)
        } else {
            header.len
        };
        let mut payload = vec![0u8; limit as usize];
        if let Err(e) = self.recv.read_exact(&mut payload).await {
            self.done = true;
            return Some(Err(stream_error(e)));
        }
        match header.kind {
            FrameKind::Data => Some(Ok(payload.into())),
            FrameKind::End => {
                self.done = true;
                match ReplyHeader::decode(&payload) {
                    Ok(r) => {
                        let err = r.error.clone();
                        self.end = Some(r);
                        err.map(Err)
                    }
                    Err(e) => Some(Err(RpcError::bad_request(
                        FRAMEWORK_ERROR_ID,
                        format!("bad End frame: {e}"),
                    ))),
                }
            }
            other => {
                self.done = true;
                Some(Err(RpcError::bad_request(
                    FRAMEWORK_ERROR_ID,
                    format!("unexpected {other:?} frame in a stream"),
                )))
            }
        }
    }
}

fn stream_error(e: impl std::fmt::Display) -> RpcError {
    RpcError::unavailable(FRAMEWORK_ERROR_ID, format!("stream broken: {e}"))
}

/// Where a streaming handler sends its messages.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Bytes>,
    content_type: ContentType,
}

impl Outbound {
    /// Sends one message; waits while the caller is slower than the handler.
    pub async fn send<T: Serialize>(&self, msg: &T) -> Result<(), RpcError> {
        let bytes = self
            .content_type
            .encode(msg)
            .map_err(|e| RpcError::internal(FRAMEWORK_ERROR_ID, e.to_string()))?;
        self.tx.send(bytes.into()).await.map_err(|_| {
            RpcError::new(
                FRAMEWORK_ERROR_ID,
                mesh_protocol::code::CLIENT_CLOSED,
                "caller went away",
            )
        })
    }
}

/// A streaming endpoint: gets the call, the caller's messages and a sink for its own.
pub trait StreamingHandler: Send + Sync + 'static {
    /// Handles one streaming call; its result is the call's final status.
    fn call(
        &self,
        req: Request,
        inbound: Inbound,
        outbound: Outbound,
    ) -> BoxFuture<Result<(), RpcError>>;
}

impl<F, Fut> StreamingHandler for F
where
    F: Fn(Request, Inbound, Outbound) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), RpcError>> + Send + 'static,
{
    fn call(
        &self,
        req: Request,
        inbound: Inbound,
        outbound: Outbound,
    ) -> BoxFuture<Result<(), RpcError>> {
        Box::pin(self(req, inbound, outbound))
    }
}

fn end_frame(status: Result<(), RpcError>, id: u64, max: u32) -> BytesMut {
    let reply = match status {
        Ok(()) => ReplyHeader::ok(id),
        Err(e) => ReplyHeader::err(id, e),
    };
    let mut buf = BytesMut::new();
    match reply.encode() {
        Ok(bytes) => {
            if let Err(e) = encode_frame(FrameKind::End, &bytes, max, &mut buf) {
                warn!(error = %e, "End frame too large");
            }
        }
        Err(e) => warn!(error = %e, "End frame did not encode"),
    }
    buf
}

/// Ends a streaming call at once with `e` (an End frame, then FIN).
pub(crate) async fn refuse(
    e: RpcError,
    id: u64,
    mut send: quinn::SendStream,
    max_frame: u32,
) -> Result<(), RpcError> {
    let _ = send
        .write_all(&end_frame(Err(e.clone()), id, max_frame))
        .await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    Err(e)
}

/// Serves one streaming call whose header has been read.
pub(crate) async fn serve(
    handler: Option<Arc<dyn StreamingHandler>>,
    header: CallHeader,
    from: SocketAddr,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    max_frame: u32,
) -> Result<(), RpcError> {
    let id = header.id;
    let Some(handler) = handler else {
        let e = RpcError::not_found(
            FRAMEWORK_ERROR_ID,
            format!(
                "no streaming endpoint {}.{} on this node",
                header.service, header.endpoint
            ),
        );
        return refuse(e, id, send, max_frame).await;
    };
    let content_type = match header.content_type() {
        Ok(ct) => ct,
        Err(e) => {
            let e = RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string());
            return refuse(e, id, send, max_frame).await;
        }
    };
    let req = Request::from_header(header, content_type, from, Bytes::new());
    let deadline = req.deadline;
    let service = req.service.clone();
    let inbound = Inbound {
        recv,
        content_type,
        max_frame,
        end: None,
        expect_end: false,
        done: false,
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(OUTBOUND_QUEUE);
    let outbound = Outbound { tx, content_type };
    let task = tokio::spawn(handler.call(req, inbound, outbound));
    let abort = task.abort_handle();

    // Writer: the handler's messages, in order, then the final status.
    let write_messages = async {
        while let Some(msg) = rx.recv().await {
            let mut buf = BytesMut::new();
            if let Err(e) = encode_frame(FrameKind::Data, &msg, max_frame, &mut buf) {
                return Err(RpcError::internal(&service, e.to_string()));
            }
            send.write_all(&buf).await.map_err(|_| {
                RpcError::new(
                    &service,
                    mesh_protocol::code::CLIENT_CLOSED,
                    "caller went away",
                )
            })?;
        }
        Ok(())
    };
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    // Every message the handler queued is written before its status; the writer ends when the
    // handler (and its Outbound) is gone.
    let status = tokio::select! {
        written = write_messages => match written {
            Err(e) => {
                abort.abort();
                Err(e)
            }
            Ok(()) => match task.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => {
                    warn!(%service, "streaming handler panicked");
                    Err(RpcError::internal(&service, "handler panicked"))
                }
                Err(_) => Err(RpcError::internal(&service, "handler cancelled")),
            },
        },
        _ = timeout => {
            abort.abort();
            Err(RpcError::timeout(&service, "deadline exceeded"))
        }
    };
    if let Err(e) = send
        .write_all(&end_frame(status.clone(), id, max_frame))
        .await
    {
        debug!(error = %e, "End frame not delivered (caller gone?)");
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    status
}

/// The caller's side of a streaming call.
#[derive(Debug)]
pub struct CallStream {
    /// Keeps the connection from eviction under the node's cap while the call runs.
    _connection: PeerConnection,
    send: Option<quinn::SendStream>,
    inbound: Inbound,
    content_type: ContentType,
    max_frame: u32,
    deadline: Instant,
}

impl CallStream {
    pub(crate) async fn open(
        conn: PeerConnection,
        header: &CallHeader,
        content_type: ContentType,
        max_frame: u32,
        deadline: Instant,
    ) -> Result<Self, RpcError> {
        let unavailable = |e: String| RpcError::unavailable(FRAMEWORK_ERROR_ID, e);
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let head = header
            .encode()
            .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?;
        let mut buf = BytesMut::from(
            &mesh_protocol::Preamble::new(mesh_protocol::StreamKind::StreamingCall).to_bytes()[..],
        );
        encode_frame(
            FrameKind::Header,
            &head,
            DEFAULT_MAX_HEADER_LEN as u32,
            &mut buf,
        )
        .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?;
        send.write_all(&buf)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(Self {
            _connection: conn,
            send: Some(send),
            inbound: Inbound {
                recv,
                content_type,
                max_frame,
                end: None,
                expect_end: true,
                done: false,
            },
            content_type,
            max_frame,
            deadline,
        })
    }

    /// Sends one message to the handler.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), RpcError> {
        let bytes = self
            .content_type
            .encode(msg)
            .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?;
        let send = self
            .send
            .as_mut()
            .ok_or_else(|| RpcError::bad_request(FRAMEWORK_ERROR_ID, "send side already closed"))?;
        let mut buf = BytesMut::new();
        encode_frame(FrameKind::Data, &bytes, self.max_frame, &mut buf)
            .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?;
        let write = send.write_all(&buf);
        match tokio::time::timeout_at(self.deadline.into(), write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(stream_error(e)),
            Err(_) => Err(RpcError::timeout(FRAMEWORK_ERROR_ID, "deadline exceeded")),
        }
    }

    /// Tells the handler that no more messages will come.
    pub fn close_send(&mut self) {
        if let Some(mut s) = self.send.take() {
            let _ = s.finish();
        }
    }

    /// The next message from the handler: `None` when it finished successfully; an error if it
    /// failed, the deadline passed, or the stream broke.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Option<Result<T, RpcError>> {
        match tokio::time::timeout_at(self.deadline.into(), self.inbound.next::<T>()).await {
            Ok(x) => x,
            Err(_) => Some(Err(RpcError::timeout(
                FRAMEWORK_ERROR_ID,
                "deadline exceeded",
            ))),
        }
    }
}

/// Reads the call header of a streaming call.
pub(crate) async fn read_header(recv: &mut quinn::RecvStream) -> Result<CallHeader, String> {
    let head = read_frame(recv, FrameKind::Header, DEFAULT_MAX_HEADER_LEN as u32).await?;
    CallHeader::decode(&head).map_err(|e| e.to_string())
}
