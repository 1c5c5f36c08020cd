//! The node's QUIC connections: dialing, the cache of one connection per peer, the accept loop,
//! the identity check on both sides, and handing every incoming stream and datagram to whoever
//! serves it.
//!
//! Every connection is mutually authenticated (see [`crate::security`]); the address in the peer's
//! certificate is the `from` of everything it sends. Incoming streams are read up to their
//! [`Preamble`] here, then served by a [`StreamHandler`] in the stream's own task; incoming
//! datagrams go to a [`DatagramSink`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use mesh_membership::transport::TransportError;
use mesh_protocol::{Preamble, StreamKind, PREAMBLE_LEN};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::security::{peer_addr, CLUSTER_SERVER_NAME};
use crate::wire::{close_code, refuse, BoxFuture};

/// Streams served at once per connection, beyond QUIC's own stream limit.
const STREAMS_PER_CONNECTION: usize = 256;
/// Time allowed to set up a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a stream's preamble.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the streams peers open, once their preamble has been read.
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one stream of `kind` from the authenticated peer `from`; the preamble has been
    /// read. The future runs in the stream's own task, which holds one of the connection's
    /// stream permits until the future ends.
    fn handle(
        &self,
        kind: StreamKind,
        from: SocketAddr,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> BoxFuture<()>;
}

/// Takes every datagram a peer sends, with the peer's certified address.
pub type DatagramSink = Arc<dyn Fn(SocketAddr, Bytes) + Send + Sync>;

struct Inner {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    streams: Arc<dyn StreamHandler>,
    datagrams: DatagramSink,
}

/// A node's QUIC connections: one per peer, opened on demand, reused, and cached by the address
/// in the peer's certificate.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// Starts accepting connections on `endpoint` for the node advertised at `addr`: streams go to
    /// `streams`, datagrams to `datagrams`.
    pub fn start(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        streams: Arc<dyn StreamHandler>,
        datagrams: DatagramSink,
    ) -> Self {
        let inner = Arc::new(Inner {
            endpoint,
            addr,
            conns: Mutex::new(HashMap::new()),
            streams,
            datagrams,
        });
        tokio::spawn(accept_loop(inner.clone()));
        Self { inner }
    }

    /// The address this node advertises.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The open connection to `peer`, if there is one; never dials.
    pub fn cached(&self, peer: SocketAddr) -> Option<quinn::Connection> {
        conns(&self.inner)
            .get(&peer)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Closes the connection to `peer`, if any: streams on it fail at once. Used when membership
    /// declares `peer` down, since a crashed peer never closes its side and its calls would
    /// otherwise wait for QUIC's idle timeout.
    pub fn close_peer(&self, peer: SocketAddr, reason: &str) {
        let conn = conns(&self.inner).remove(&peer);
        if let Some(c) = conn {
            debug!(%peer, reason, "closing connection");
            c.close(close_code::PEER_DOWN.into(), reason.as_bytes());
        }
    }

    /// The connection to `to`, opened if there is none.
    pub async fn connection(&self, to: SocketAddr) -> Result<quinn::Connection, TransportError> {
        if let Some(c) = self.cached(to) {
            return Ok(c);
        }
        let inner = &self.inner;
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
            // We reached whoever answers at `to`; its certificate says who it is. Everything it
            // sends is attributed to `peer`, and the cache keys it by both.
            debug!(%to, %peer, "peer advertises another address than the one dialed");
        }
        register(inner, peer, conn.clone());
        if peer != to {
            conns(inner).insert(to, conn.clone());
        }
        Ok(conn)
    }
}

fn conns(inner: &Inner) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, quinn::Connection>> {
    inner.conns.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Caches `conn` for `peer` and starts reading from it.
fn register(inner: &Arc<Inner>, peer: SocketAddr, conn: quinn::Connection) {
    conns(inner).insert(peer, conn.clone());
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
            Ok(data) => (inner.datagrams)(peer, data),
            Err(e) => {
                debug!(%peer, reason = %e, "connection closed");
                let mut c = conns(&inner);
                if c.get(&peer)
                    .is_some_and(|c| c.stable_id() == conn.stable_id())
                {
                    c.remove(&peer);
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
            let kind = match tokio::time::timeout(PREAMBLE_TIMEOUT, recv.read_exact(&mut pre)).await
            {
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
            inner.streams.handle(kind, peer, send, recv).await;
        });
    }
}
