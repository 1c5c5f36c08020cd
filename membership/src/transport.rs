//! How a driver reaches other members: unreliable datagrams for SWIM, a reliable request/response
//! for registry syncs. [`mem`] is an in-memory network for tests and simulations; [`udp`] is plain
//! UDP (with TCP for syncs) for standalone use. The QUIC transport lives in the node crate.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use mesh_protocol::{
    encode_frame, FrameHeader, FrameKind, SyncRequest, SyncResponse, FRAME_HEADER_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

pub mod mem;
pub mod udp;

/// Capacity of the channel between a transport and its driver. A transport drops datagrams (and
/// refuses syncs) rather than queue more: SWIM tolerates loss, memory must stay bounded.
pub const INCOMING_CAPACITY: usize = 1024;

/// What a transport hands its driver.
#[derive(Debug)]
pub enum Incoming {
    /// A datagram from `from`.
    Datagram {
        /// Sender address.
        from: SocketAddr,
        /// The datagram.
        data: Bytes,
    },
    /// A registry sync request; answer on `reply`.
    Sync {
        /// Requester address.
        from: SocketAddr,
        /// The request.
        request: SyncRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<SyncResponse>,
    },
}

/// A registry sync's future.
pub type SyncFuture = Pin<Box<dyn Future<Output = Result<SyncResponse, TransportError>> + Send>>;

/// A transport: datagrams out (fire and forget), syncs out (request/response). Incoming traffic
/// arrives on the channel the transport was built with.
pub trait Transport: Send + Sync + 'static {
    /// The address peers reach us at.
    fn local_addr(&self) -> SocketAddr;
    /// Largest datagram this transport carries.
    fn max_datagram_size(&self) -> usize;
    /// Sends one datagram. Never blocks; may drop.
    fn send_datagram(&self, to: SocketAddr, data: Bytes);
    /// Performs a registry sync with `to`.
    fn sync(&self, to: SocketAddr, request: SyncRequest) -> SyncFuture;
}

/// Why a sync failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Nobody answers at that address (or the link is cut).
    #[error("peer unreachable")]
    Unreachable,
    /// The peer did not answer in time.
    #[error("timed out")]
    Timeout,
    /// The secure handshake failed: most often, the two sides do not hold the same cluster
    /// credentials.
    #[error("handshake refused ({0}): do both sides hold the same cluster credentials?")]
    Handshake(String),
    /// The peer is overloaded and refused the request.
    #[error("peer busy")]
    Busy,
    /// An IO error.
    #[error("io: {0}")]
    Io(String),
    /// The peer sent something that is not a valid answer.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Reads one frame of `kind` with a payload of at most `max` bytes from `r`. The length is
/// checked before anything is allocated for the payload.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    kind: FrameKind,
    max: u32,
) -> Result<Bytes, TransportError> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    r.read_exact(&mut h)
        .await
        .map_err(|e| TransportError::Io(e.to_string()))?;
    let header = FrameHeader::parse(h, max).map_err(|e| TransportError::Protocol(e.to_string()))?;
    if header.kind != kind {
        return Err(TransportError::Protocol(format!(
            "expected a {kind:?} frame, got {:?}",
            header.kind
        )));
    }
    let mut payload = vec![0u8; header.len as usize];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| TransportError::Io(e.to_string()))?;
    Ok(payload.into())
}

/// Writes one frame of `kind` around `payload` to `w`, refusing payloads over `max` bytes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: FrameKind,
    payload: &[u8],
    max: u32,
) -> Result<(), TransportError> {
    let mut buf = bytes::BytesMut::new();
    encode_frame(kind, payload, max, &mut buf)
        .map_err(|e| TransportError::Protocol(e.to_string()))?;
    w.write_all(&buf)
        .await
        .map_err(|e| TransportError::Io(e.to_string()))
}
