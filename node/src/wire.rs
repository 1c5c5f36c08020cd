//! Frames on QUIC streams: the reader and writer every stream kind shares, stream refusal and the
//! application close codes. The frame format itself is `mesh-protocol`'s; this module only moves
//! it on and off `quinn` streams.

use std::future::Future;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use mesh_protocol::{encode_frame, FrameDecoder, FrameKind};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// QUIC application error codes used when closing streams and connections.
pub mod close_code {
    /// Normal close.
    pub const OK: u32 = 0;
    /// The peer's stream did not start with a valid mesh preamble or frame.
    pub const PROTOCOL: u32 = 1;
    /// The stream kind is not served here.
    pub const UNSUPPORTED: u32 = 2;
    /// The node is overloaded or shutting down; on a connection: the node holds as many
    /// connections as it allows, all in use.
    pub const BUSY: u32 = 3;
    /// The peer's certificate names no single advertised address.
    pub const NO_IDENTITY: u32 = 4;
    /// Membership declared the peer down.
    pub const PEER_DOWN: u32 = 5;
    /// Closed, idle, to make room under the node's connection cap: nothing was being served on
    /// it, so a stream still unanswered was not run. Dial again.
    pub const EVICTED: u32 = 6;
    /// The dialer refused the peer: its certificate names another address than the one dialed.
    pub const ADDRESS_MISMATCH: u32 = 7;
}

/// Refuses a stream in both directions with an application error code the peer can read.
pub fn refuse(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: u32) {
    let _ = send.reset(code.into());
    let _ = recv.stop(code.into());
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

/// Writes `prefix`, then `frames` (kind, payload), and finishes the stream.
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
