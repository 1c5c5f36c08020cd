//! Membership over the node's QUIC endpoint: gossip as QUIC datagrams, registry syncs on
//! bidirectional streams, one connection per peer opened on demand and reused.
//!
//! Every connection is mutually authenticated (see [`crate::security`]); the address in the peer's
//! certificate is the `from` of everything it sends, and the membership core is told to require
//! that a SWIM packet's source is that address. Streams of other kinds are handed to a
//! [`StreamHandler`] (RPC and pub/sub, as they land).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use mesh_membership::transport::{
    read_frame, write_frame, Incoming, SyncFuture, Transport, TransportError,
};
use mesh_protocol::{
    from_msgpack, to_msgpack, FrameKind, Preamble, StreamKind, SyncRequest, PREAMBLE_LEN,
};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, info, warn};

use crate::security::{peer_addr, CLUSTER_SERVER_NAME};

/// Largest registry sync frame accepted (16 MiB).
pub const MAX_SYNC_FRAME: u32 = 16 * 1024 * 1024;
/// Largest gossip datagram this transport asks membership to send: fits QUIC's datagram frame in
/// a 1200-byte initial path MTU with room for QUIC's own headers.
pub const MAX_GOSSIP_DATAGRAM: usize = 1100;
/// Datagrams queued for a peer while its connection is being set up; more are dropped.
const PENDING_PER_PEER: usize = 64;
/// Streams served at once per connection, beyond QUIC's own stream limit.
const STREAMS_PER_CONNECTION: usize = 256;
/// Time allowed to set up a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to read a sync request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC application error codes used when closing streams and connections.
pub mod close_code {
    /// Normal close.
    pub const OK: u32 = 0;
    /// The peer's stream did not start with a valid mesh preamble or frame.
    pub const PROTOCOL: u32 = 1;
    /// The stream kind is not served here.
    pub const UNSUPPORTED: u32 = 2;
    /// The node is overloaded or shutting down.
    pub const BUSY: u32 = 3;
    /// The peer's certificate names no single advertised address.
    pub const NO_IDENTITY: u32 = 4;
    /// Membership declared the peer down.
    pub const PEER_DOWN: u32 = 5;
}

/// Serves streams the transport does not handle itself (anything but registry sync).
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one stream of `kind` from the authenticated peer `from`; the preamble has been
    /// read. The transport runs the future in the stream's own task, which holds one of the
    /// connection's stream permits until the future ends.
    fn handle(
        &self,
        kind: StreamKind,
        from: SocketAddr,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

#[derive(Default)]
struct Peers {
    conns: HashMap<SocketAddr, quinn::Connection>,
    /// Datagrams waiting for a connection being set up.
    pending: HashMap<SocketAddr, Vec<Bytes>>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    peers: Mutex<Peers>,
    incoming: mpsc::Sender<Incoming>,
    streams: Option<Arc<dyn StreamHandler>>,
}

/// The membership transport over a node's QUIC endpoint.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Starts accepting connections on `endpoint` for the node advertised at `addr`. Membership
    /// traffic arrives on the returned channel; other streams go to `streams` (refused if
    /// `None`).
    pub fn start(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        streams: Option<Arc<dyn StreamHandler>>,
    ) -> (Self, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(mesh_membership::transport::INCOMING_CAPACITY);
        let inner = Arc::new(Inner {
            endpoint,
            addr,
            peers: Mutex::new(Peers::default()),
            incoming: tx,
            streams,
        });
        tokio::spawn(accept_loop(inner.clone()));
        (Self { inner }, rx)
    }

    /// Closes the connection to `peer`, if any: streams on it fail at once. Used when membership
    /// declares `peer` down, since a crashed peer never closes its side and its calls would
    /// otherwise wait for QUIC's idle timeout.
    pub fn close_peer(&self, peer: SocketAddr, reason: &str) {
        let conn = peers(&self.inner).conns.remove(&peer);
        if let Some(c) = conn {
            debug!(%peer, reason, "closing connection");
            c.close(close_code::PEER_DOWN.into(), reason.as_bytes());
        }
    }

    /// The connection to `to`, opened if there is none.
    pub async fn connection(&self, to: SocketAddr) -> Result<quinn::Connection, TransportError> {
        connection(&self.inner, to).await
    }
}

fn peers(inner: &Inner) -> std::sync::MutexGuard<'_, Peers> {
    inner.peers.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn connection(
    inner: &Arc<Inner>,
    to: SocketAddr,
) -> Result<quinn::Connection, TransportError> {
    if let Some(c) = peers(inner).conns.get(&to) {
        if c.close_reason().is_none() {
            return Ok(c.clone());
        }
    }
    let connecting = inner
        .endpoint
        .connect(to, CLUSTER_SERVER_NAME)
        .map_err(|e| TransportError::Io(e.to_string()))?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| TransportError::Timeout)?
        .map_err(|e| {
            debug!(%to, error = %e, "connect failed");
            match e {
                quinn::ConnectionError::TimedOut => TransportError::Unreachable,
                quinn::ConnectionError::TransportError(t) => {
                    TransportError::Handshake(t.to_string())
                }
                quinn::ConnectionError::ConnectionClosed(c) => {
                    TransportError::Handshake(c.to_string())
                }
                other => TransportError::Io(other.to_string()),
            }
        })?;
    let Some(peer) = peer_addr(&conn) else {
        conn.close(
            close_code::NO_IDENTITY.into(),
            b"no advertised address in certificate",
        );
        return Err(TransportError::Protocol(
            "peer certificate names no address".into(),
        ));
    };
    if peer != to {
        // We reached whoever answers at `to`; its certificate says who it is. Gossip from it is
        // attributed to `peer`, and the cache keys it by both.
        debug!(%to, %peer, "peer advertises another address than the one dialed");
    }
    register(inner, peer, conn.clone());
    if peer != to {
        peers(inner).conns.insert(to, conn.clone());
    }
    Ok(conn)
}

/// Caches `conn` for `peer` and starts reading from it.
fn register(inner: &Arc<Inner>, peer: SocketAddr, conn: quinn::Connection) {
    peers(inner).conns.insert(peer, conn.clone());
    tokio::spawn(read_datagrams(inner.clone(), peer, conn.clone()));
    tokio::spawn(accept_streams(inner.clone(), peer, conn));
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match tokio::time::timeout(CONNECT_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    // Wrong key, another CA, garbage: refused by TLS.
                    info!(%remote, error = %e, "refused connection");
                    return;
                }
                Err(_) => {
                    debug!(%remote, "handshake timed out");
                    return;
                }
            };
            match peer_addr(&conn) {
                Some(peer) => register(&inner, peer, conn),
                None => {
                    warn!(%remote, "peer certificate names no single advertised address");
                    conn.close(close_code::NO_IDENTITY.into(), b"no advertised address");
                }
            }
        });
    }
}

async fn read_datagrams(inner: Arc<Inner>, peer: SocketAddr, conn: quinn::Connection) {
    loop {
        match conn.read_datagram().await {
            Ok(data) => {
                if inner
                    .incoming
                    .try_send(Incoming::Datagram { from: peer, data })
                    .is_err()
                {
                    debug!(%peer, "membership queue full: datagram dropped");
                }
            }
            Err(e) => {
                debug!(%peer, reason = %e, "connection closed");
                let mut p = peers(&inner);
                if p.conns
                    .get(&peer)
                    .is_some_and(|c| c.stable_id() == conn.stable_id())
                {
                    p.conns.remove(&peer);
                }
                return;
            }
        }
    }
}

async fn accept_streams(inner: Arc<Inner>, peer: SocketAddr, conn: quinn::Connection) {
    let permits = Arc::new(Semaphore::new(STREAMS_PER_CONNECTION));
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(&mut send, &mut recv, close_code::BUSY);
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut pre = [0u8; PREAMBLE_LEN];
            let kind = match tokio::time::timeout(READ_TIMEOUT, recv.read_exact(&mut pre)).await {
                Ok(Ok(())) => match Preamble::parse(&pre) {
                    Ok(Some(p)) => p.kind,
                    Ok(None) | Err(_) => {
                        info!(%peer, preamble = ?pre, "stream with a bad preamble refused");
                        refuse(&mut send, &mut recv, close_code::PROTOCOL);
                        return;
                    }
                },
                _ => {
                    debug!(%peer, "stream ended or stalled inside its preamble");
                    refuse(&mut send, &mut recv, close_code::PROTOCOL);
                    return;
                }
            };
            match (kind, &inner.streams) {
                (StreamKind::RegistrySync, _) => {
                    if let Err(e) = serve_sync(&inner, peer, send, recv).await {
                        debug!(%peer, error = %e, "registry sync refused");
                    }
                }
                (kind, Some(h)) => h.handle(kind, peer, send, recv).await,
                (kind, None) => {
                    debug!(%peer, ?kind, "stream kind not served");
                    let (mut send, mut recv) = (send, recv);
                    refuse(&mut send, &mut recv, close_code::UNSUPPORTED);
                }
            }
        });
    }
}

/// Refuses a stream in both directions with an application error code the peer can read.
pub fn refuse(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: u32) {
    let _ = send.reset(code.into());
    let _ = recv.stop(code.into());
}

async fn serve_sync(
    inner: &Inner,
    from: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), TransportError> {
    let bytes = tokio::time::timeout(
        READ_TIMEOUT,
        read_frame(&mut recv, FrameKind::Header, MAX_SYNC_FRAME),
    )
    .await
    .map_err(|_| TransportError::Timeout)??;
    let request: SyncRequest = from_msgpack(&bytes).map_err(proto)?;
    let (reply, answer) = oneshot::channel();
    inner
        .incoming
        .try_send(Incoming::Sync {
            from,
            request,
            reply,
        })
        .map_err(|_| TransportError::Busy)?;
    let response = answer.await.map_err(|_| TransportError::Unreachable)?;
    write_frame(
        &mut send,
        FrameKind::Header,
        &to_msgpack(&response).map_err(proto)?,
        MAX_SYNC_FRAME,
    )
    .await?;
    send.finish().map_err(|e| TransportError::Io(e.to_string()))
}

fn io(e: impl std::fmt::Display) -> TransportError {
    TransportError::Io(e.to_string())
}

fn proto(e: impl std::fmt::Display) -> TransportError {
    TransportError::Protocol(e.to_string())
}

fn send_now(conn: &quinn::Connection, to: SocketAddr, data: Bytes) {
    if let Err(e) = conn.send_datagram(data) {
        debug!(%to, error = %e, "gossip datagram not sent");
    }
}

impl Transport for QuicTransport {
    fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn max_datagram_size(&self) -> usize {
        MAX_GOSSIP_DATAGRAM
    }

    fn send_datagram(&self, to: SocketAddr, data: Bytes) {
        let inner = &self.inner;
        {
            let mut p = peers(inner);
            if let Some(c) = p.conns.get(&to).filter(|c| c.close_reason().is_none()) {
                let c = c.clone();
                drop(p);
                send_now(&c, to, data);
                return;
            }
            // Queue behind a connection attempt; only the first datagram starts one.
            let queue = p.pending.entry(to).or_default();
            if queue.len() >= PENDING_PER_PEER {
                return;
            }
            queue.push(data);
            if queue.len() > 1 {
                return;
            }
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let conn = connection(&inner, to).await;
            let queued = peers(&inner).pending.remove(&to).unwrap_or_default();
            match conn {
                Ok(c) => queued.into_iter().for_each(|d| send_now(&c, to, d)),
                Err(e) => {
                    debug!(%to, error = %e, dropped = queued.len(), "gossip peer unreachable")
                }
            }
        });
    }

    fn sync(&self, to: SocketAddr, request: SyncRequest) -> SyncFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let conn = connection(&inner, to).await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(io)?;
            send.write_all(&Preamble::new(StreamKind::RegistrySync).to_bytes())
                .await
                .map_err(io)?;
            write_frame(
                &mut send,
                FrameKind::Header,
                &to_msgpack(&request).map_err(proto)?,
                MAX_SYNC_FRAME,
            )
            .await?;
            send.finish().map_err(io)?;
            from_msgpack(&read_frame(&mut recv, FrameKind::Header, MAX_SYNC_FRAME).await?)
                .map_err(proto)
        })
    }
}
