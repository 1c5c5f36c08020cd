//! Membership over the node's QUIC connections: SWIM gossip as QUIC datagrams, registry syncs on
//! `RegistrySync` streams. This is the [`Transport`] the membership driver runs on.
//!
//! Gossip from a peer is attributed to the address in its certificate, and the membership core is
//! told to require that a SWIM packet's source is that address. Streams of other kinds are passed
//! on to the node's own [`StreamHandler`] (RPC and pub/sub).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use mesh_membership::transport::{
    read_frame, write_frame, Incoming, SyncFuture, Transport, TransportError,
};
use mesh_protocol::{from_msgpack, to_msgpack, FrameKind, Preamble, StreamKind, SyncRequest};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::connections::{Connections, StreamHandler};
use crate::wire::{close_code, refuse, BoxFuture};

/// Largest registry sync frame accepted (16 MiB).
pub const MAX_SYNC_FRAME: u32 = 16 * 1024 * 1024;
/// Largest gossip datagram this transport asks membership to send: fits QUIC's datagram frame in
/// a 1200-byte initial path MTU with room for QUIC's own headers.
pub const MAX_GOSSIP_DATAGRAM: usize = 1100;
/// Datagrams queued for a peer while its connection is being set up; more are dropped.
const PENDING_PER_PEER: usize = 64;
/// Time allowed to read a sync request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The membership transport over a node's QUIC connections.
#[derive(Clone)]
pub struct QuicTransport {
    connections: Connections,
    /// Datagrams waiting for a connection being set up.
    pending: Arc<Mutex<HashMap<SocketAddr, Vec<Bytes>>>>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("addr", &self.connections.local_addr())
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Starts accepting connections on `endpoint` for the node advertised at `addr`. Membership
    /// traffic arrives on the returned channel; streams of other kinds go to `streams` (refused if
    /// `None`).
    pub fn start(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        streams: Option<Arc<dyn StreamHandler>>,
    ) -> (Self, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(mesh_membership::transport::INCOMING_CAPACITY);
        let datagrams = {
            let tx = tx.clone();
            Arc::new(move |from: SocketAddr, data: Bytes| {
                if tx.try_send(Incoming::Datagram { from, data }).is_err() {
                    debug!(peer = %from, "membership queue full: datagram dropped");
                }
            })
        };
        let streams = Arc::new(Streams {
            incoming: tx,
            others: streams,
        });
        let connections = Connections::start(endpoint, addr, streams, datagrams);
        let transport = Self {
            connections,
            pending: Arc::default(),
        };
        (transport, rx)
    }

    /// The connections this transport gossips over, which calls and pub/sub share.
    pub fn connections(&self) -> &Connections {
        &self.connections
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

fn send_now(conn: &quinn::Connection, to: SocketAddr, data: Bytes) {
    if let Err(e) = conn.send_datagram(data) {
        debug!(%to, error = %e, "gossip datagram not sent");
    }
}

impl Transport for QuicTransport {
    fn local_addr(&self) -> SocketAddr {
        self.connections.local_addr()
    }

    fn max_datagram_size(&self) -> usize {
        MAX_GOSSIP_DATAGRAM
    }

    fn send_datagram(&self, to: SocketAddr, data: Bytes) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = self.connections.cached(to) {
                drop(pending);
                send_now(&c, to, data);
                return;
            }
            // Queue behind a connection attempt; only the first datagram starts one.
            let queue = pending.entry(to).or_default();
            if queue.len() >= PENDING_PER_PEER {
                return;
            }
            queue.push(data);
            if queue.len() > 1 {
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let conn = this.connections.connection(to).await;
            let queued = this
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&to)
                .unwrap_or_default();
            match conn {
                Ok(c) => queued.into_iter().for_each(|d| send_now(&c, to, d)),
                Err(e) => {
                    debug!(%to, error = %e, dropped = queued.len(), "gossip peer unreachable")
                }
            }
        });
    }

    fn sync(&self, to: SocketAddr, request: SyncRequest) -> SyncFuture {
        let connections = self.connections.clone();
        Box::pin(async move {
            let conn = connections.connection(to).await?;
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
