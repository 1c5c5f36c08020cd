//! Membership on the node's transport: SWIM gossip as plain UDP datagrams on the node's one port
//! (beside QUIC, see [`crate::socket`]), registry syncs on `RegistrySync` QUIC streams. This is the
//! [`Transport`] the membership driver runs on.
//!
//! Gossip never opens a QUIC connection, so what a node spends on SWIM does not grow with the
//! cluster: a probe is one datagram, as in memberlist. Datagrams are sealed with the cluster's
//! gossip key by the membership core; QUIC connections carry only streams (syncs, calls, pub/sub),
//! and their peers are authenticated by their certificates. Streams of other kinds than
//! `RegistrySync` are passed on to the node's own [`StreamHandler`] (RPC and pub/sub).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mesh_membership::transport::{
    read_frame, write_frame, Incoming, SyncFuture, Transport, TransportError, INCOMING_CAPACITY,
};
use mesh_protocol::{
    from_msgpack, to_msgpack, FrameKind, Preamble, StreamKind, SyncRequest, SyncResponse,
};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::connections::{Connections, StreamHandler};
use crate::endpoint::{endpoint_on, EndpointConfig, EndpointError};
use crate::security::NodeTls;
use crate::socket::{DatagramSink, GossipSender, SocketStats, SplitSocket};
use crate::wire::{close_code, refuse, BoxFuture};

/// Largest registry sync frame accepted (16 MiB).
pub const MAX_SYNC_FRAME: u32 = 16 * 1024 * 1024;
/// Largest gossip datagram this transport asks membership to send (as memberlist's
/// `UDPBufferSize`): fits a 1500-byte Ethernet MTU under IPv6 and UDP headers.
pub const MAX_GOSSIP_DATAGRAM: usize = 1400;
/// Time allowed to read a sync request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection dialed for a registry sync must stay unused after the sync before it
/// closes (`Connections::close_when_idle`): many round trips on a LAN, so replies in flight
/// arrive, and a call the peer starts on it meanwhile keeps it.
const SYNC_CONNECTION_GRACE: Duration = Duration::from_secs(2);

/// The membership transport of a node: datagrams on its UDP socket, syncs on its connections.
#[derive(Clone)]
pub struct GossipTransport {
    connections: Connections,
    sender: GossipSender,
    stats: Arc<SocketStats>,
}

impl std::fmt::Debug for GossipTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipTransport")
            .field("addr", &self.connections.local_addr())
            .finish_non_exhaustive()
    }
}

/// A node's transport, started: what the builder (or a test) wires together.
#[derive(Debug)]
pub struct Started {
    /// The membership transport.
    pub transport: GossipTransport,
    /// Membership traffic: gossip datagrams from the socket and sync requests from streams.
    pub incoming: mpsc::Receiver<Incoming>,
    /// The QUIC endpoint on the same socket.
    pub endpoint: quinn::Endpoint,
}

/// Starts a node's transport on `socket` for the node advertised at `addr`: the QUIC endpoint
/// (mutual TLS with `tls`), the split of the socket between QUIC and gossip, and the accept loop.
/// Streams of other kinds than `RegistrySync` go to `streams` (refused if `None`). Must run
/// inside a tokio runtime.
pub fn start(
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    tls: &NodeTls,
    config: &EndpointConfig,
    addr: SocketAddr,
    streams: Option<Arc<dyn StreamHandler>>,
) -> Result<Started, EndpointError> {
    let (tx, rx) = mpsc::channel(INCOMING_CAPACITY);
    let stats = Arc::new(SocketStats::default());
    let sink: DatagramSink = {
        let (tx, stats) = (tx.clone(), stats.clone());
        Arc::new(move |from: SocketAddr, data: Bytes| {
            if tx.try_send(Incoming::Datagram { from, data }).is_err() {
                stats
                    .gossip_in_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                debug!(peer = %from, "membership queue full: datagram dropped");
            }
        })
    };
    let (split, sender) = SplitSocket::new(socket, sink, stats.clone());
    let endpoint = endpoint_on(split, tls, config)?;
    let streams = Arc::new(Streams {
        incoming: tx,
        others: streams,
    });
    let connections = Connections::start(endpoint.clone(), addr, streams);
    Ok(Started {
        transport: GossipTransport {
            connections,
            sender,
            stats,
        },
        incoming: rx,
        endpoint,
    })
}

impl GossipTransport {
    /// The connections syncs ride on, which calls and pub/sub share.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Counters of the shared UDP port.
    pub fn socket_stats(&self) -> &Arc<SocketStats> {
        &self.stats
    }
}

/// Serves `RegistrySync` streams itself and hands every other kind on.
struct Streams {
    incoming: mpsc::Sender<Incoming>,
    others: Option<Arc<dyn StreamHandler>>,
}

impl StreamHandler for Streams {
    fn handle(
        &self,
        kind: StreamKind,
        from: SocketAddr,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> BoxFuture<()> {
        match (kind, &self.others) {
            (StreamKind::RegistrySync, _) => {
                let incoming = self.incoming.clone();
                Box::pin(async move {
                    if let Err(e) = serve_sync(&incoming, from, send, recv).await {
                        debug!(peer = %from, error = %e, "registry sync refused");
                    }
                })
            }
            (kind, Some(h)) => h.handle(kind, from, send, recv),
            (kind, None) => {
                debug!(peer = %from, ?kind, "stream kind not served");
                refuse(&mut send, &mut recv, close_code::UNSUPPORTED);
                Box::pin(std::future::ready(()))
            }
        }
    }
}

async fn serve_sync(
    incoming: &mpsc::Sender<Incoming>,
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
    incoming
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

impl Transport for GossipTransport {
    fn local_addr(&self) -> SocketAddr {
        self.connections.local_addr()
    }

    fn max_datagram_size(&self) -> usize {
        MAX_GOSSIP_DATAGRAM
    }

    fn send_datagram(&self, to: SocketAddr, data: Bytes) {
        self.sender.send(to, data);
    }

    fn sync(&self, to: SocketAddr, request: SyncRequest) -> SyncFuture {
        let connections = self.connections.clone();
        Box::pin(async move {
            // A connection dialed for this sync alone closes once it is done (unless a call or
            // another sync took it up meanwhile); one that was open already stays.
            let open_before = connections.cached(to).map(|c| c.stable_id());
            let conn = connections.connection(to).await?;
            let dialed = open_before != Some(conn.stable_id());
            let response = sync_on(&conn, request).await;
            let used = quinn::Connection::clone(&conn);
            drop(conn);
            if dialed {
                connections.close_when_idle(to, used, SYNC_CONNECTION_GRACE, "registry sync done");
            }
            response
        })
    }
}

/// One registry sync on `conn`: the request out, the response back.
async fn sync_on(
    conn: &quinn::Connection,
    request: SyncRequest,
) -> Result<SyncResponse, TransportError> {
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
    from_msgpack(&read_frame(&mut recv, FrameKind::Header, MAX_SYNC_FRAME).await?).map_err(proto)
}
