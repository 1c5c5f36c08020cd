//! Plain UDP for gossip, with registry syncs over TCP on the same port number, for running the
//! membership layer on its own. Unauthenticated and unencrypted: the node crate's QUIC transport
//! is the secure one.
//!
//! A sync is one TCP connection: the requester writes the `RegistrySync` preamble and one
//! `Header` frame holding the [`SyncRequest`]; the responder answers with one `Header` frame holding
//! the [`SyncResponse`](mesh_protocol::SyncResponse) and closes (`docs/PROTOCOL.md`, "Registry sync").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mesh_protocol::{
    from_msgpack, to_msgpack, FrameKind, Preamble, StreamKind, SyncRequest, PREAMBLE_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, warn};

use super::{Incoming, SyncFuture, Transport, TransportError, INCOMING_CAPACITY};

/// Largest sync frame accepted: 16 MiB (a full registry of thousands of records).
pub const MAX_SYNC_FRAME: u32 = 16 * 1024 * 1024;
/// Sync connections served at once; more wait for the TCP backlog.
const MAX_SYNC_CONNECTIONS: usize = 16;
/// Time allowed to read a request or write a response.
const SYNC_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A UDP socket plus a TCP listener on the same address.
#[derive(Debug)]
pub struct UdpTransport {
    socket: Arc<UdpSocket>,
    addr: SocketAddr,
}

impl UdpTransport {
    /// Binds UDP and TCP on `addr` (port 0 picks a port free for both) and starts the receive
    /// loops. Incoming traffic arrives on the returned channel. Peers are told to reach us at
    /// `advertise`, or at the bound address if `None` (which must then not be a wildcard such as
    /// `0.0.0.0`).
    pub async fn bind(
        addr: SocketAddr,
        advertise: Option<SocketAddr>,
    ) -> std::io::Result<(Arc<Self>, mpsc::Receiver<Incoming>)> {
        if advertise.is_none() && addr.ip().is_unspecified() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bound to {addr}: give an advertise address peers can reach"),
            ));
        }
        let mut last_err = None;
        for _ in 0..16 {
            let socket = UdpSocket::bind(addr).await?;
            let local = socket.local_addr()?;
            match TcpListener::bind(local).await {
                Ok(listener) => {
                    return Ok(Self::start(socket, listener, advertise.unwrap_or(local)))
                }
                Err(e) if addr.port() == 0 => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no port free for UDP and TCP")))
    }

    fn start(
        socket: UdpSocket,
        listener: TcpListener,
        addr: SocketAddr,
    ) -> (Arc<Self>, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(INCOMING_CAPACITY);
        let socket = Arc::new(socket);
        tokio::spawn(recv_loop(socket.clone(), tx.clone()));
        tokio::spawn(accept_loop(listener, tx));
        (Arc::new(Self { socket, addr }), rx)
    }
}

async fn recv_loop(socket: Arc<UdpSocket>, tx: mpsc::Sender<Incoming>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let data = Bytes::copy_from_slice(&buf[..n]);
                match tx.try_send(Incoming::Datagram { from, data }) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        debug!(%from, "membership queue full: datagram dropped")
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            // ICMP errors (port unreachable) surface here on some platforms; keep going.
            Err(e) => debug!(error = %e, "udp recv"),
        }
    }
}

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<Incoming>) {
    let permits = Arc::new(Semaphore::new(MAX_SYNC_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "sync accept");
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(SYNC_IO_TIMEOUT, serve(stream, from, tx)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%from, error = %e, "sync request refused"),
                Err(_) => debug!(%from, "sync request timed out"),
            }
        });
    }
}

async fn serve(
    mut stream: TcpStream,
    from: SocketAddr,
    tx: mpsc::Sender<Incoming>,
) -> Result<(), TransportError> {
    let mut pre = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut pre).await.map_err(io)?;
    match Preamble::parse(&pre).map_err(proto)? {
        Some(p) if p.kind == StreamKind::RegistrySync => {}
        _ => {
            return Err(TransportError::Protocol(
                "not a registry sync stream".into(),
            ))
        }
    }
    let request: SyncRequest =
        from_msgpack(&super::read_frame(&mut stream, FrameKind::Header, MAX_SYNC_FRAME).await?)
            .map_err(proto)?;
    let (reply, answer) = oneshot::channel();
    tx.try_send(Incoming::Sync {
        from,
        request,
        reply,
    })
    .map_err(|_| TransportError::Busy)?;
    let response = answer.await.map_err(|_| TransportError::Unreachable)?;
    super::write_frame(
        &mut stream,
        FrameKind::Header,
        &to_msgpack(&response).map_err(proto)?,
        MAX_SYNC_FRAME,
    )
    .await?;
    stream.shutdown().await.map_err(io)
}

fn io(e: std::io::Error) -> TransportError {
    TransportError::Io(e.to_string())
}

fn proto(e: impl std::fmt::Display) -> TransportError {
    TransportError::Protocol(e.to_string())
}

impl Transport for UdpTransport {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn max_datagram_size(&self) -> usize {
        crate::config::DEFAULT_MAX_DATAGRAM_SIZE
    }

    fn send_datagram(&self, to: SocketAddr, data: Bytes) {
        // try_send_to never blocks: a full socket buffer drops the datagram, as the network would.
        if let Err(e) = self.socket.try_send_to(&data, to) {
            debug!(%to, error = %e, "udp send");
        }
    }

    fn sync(&self, to: SocketAddr, request: SyncRequest) -> SyncFuture {
        Box::pin(async move {
            let mut stream = TcpStream::connect(to)
                .await
                .map_err(|_| TransportError::Unreachable)?;
            stream
                .write_all(&Preamble::new(StreamKind::RegistrySync).to_bytes())
                .await
                .map_err(io)?;
            super::write_frame(
                &mut stream,
                FrameKind::Header,
                &to_msgpack(&request).map_err(proto)?,
                MAX_SYNC_FRAME,
            )
            .await?;
            from_msgpack(&super::read_frame(&mut stream, FrameKind::Header, MAX_SYNC_FRAME).await?)
                .map_err(proto)
        })
    }
}
