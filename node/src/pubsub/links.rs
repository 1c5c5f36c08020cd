//! The publisher's side: one long-lived `Publish` stream per subscriber node (a link), with a
//! byte budget that makes publishes wait when the subscriber falls behind, and the acks routed
//! back to the publishes that wait for them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mesh_protocol::{
    encode_frame, FrameKind, Preamble, PublishAck, PublishHeader, RpcError, StreamKind,
    DEFAULT_MAX_HEADER_LEN, FRAMEWORK_ERROR_ID,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::connections::Connections;
use crate::wire::FrameReader;

/// Bytes a publisher may have queued or in flight towards one subscriber node (1 MiB). A full
/// link makes publishes wait, so this bounds the queueing delay as well as the memory: 8 MiB
/// gave a p50 of 177 ms for 128-byte messages at saturation in `mesh-bench`, 1 MiB gives 23 ms
/// at the same rate.
pub const LINK_BUDGET: usize = 1024 * 1024;
type AckTx = oneshot::Sender<Result<(), RpcError>>;

struct Outgoing {
    header: PublishHeader,
    body: Bytes,
    ack: Option<AckTx>,
    _budget: OwnedSemaphorePermit,
}

/// A publisher's stream to one subscriber node.
struct Link {
    tx: mpsc::UnboundedSender<Outgoing>,
    budget: Arc<Semaphore>,
    broken: Arc<AtomicBool>,
}

/// A publisher's links, one per subscriber node.
pub(crate) struct Links {
    links: Mutex<HashMap<SocketAddr, Arc<Link>>>,
    connections: Connections,
    max_frame: u32,
}

fn broken(peer: SocketAddr, why: impl std::fmt::Display) -> RpcError {
    RpcError::unavailable(FRAMEWORK_ERROR_ID, format!("{peer}: {why}"))
}

impl Links {
    pub(crate) fn new(connections: Connections, max_frame: u32) -> Self {
        Self {
            links: Mutex::new(HashMap::new()),
            connections,
            max_frame,
        }
    }

    fn link(&self, peer: SocketAddr) -> Arc<Link> {
        let mut m = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = m.get(&peer).filter(|l| !l.broken.load(Ordering::Acquire)) {
            return l.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            tx,
            budget: Arc::new(Semaphore::new(LINK_BUDGET)),
            broken: Arc::new(AtomicBool::new(false)),
        });
        tokio::spawn(run_link(
            self.connections.clone(),
            peer,
            rx,
            link.broken.clone(),
            self.max_frame,
        ));
        m.insert(peer, link.clone());
        link
    }

    /// Queues a delivery to `peer`, waiting while the link's byte budget is spent (backpressure)
    /// until `deadline`.
    pub(crate) async fn send(
        &self,
        peer: SocketAddr,
        header: PublishHeader,
        body: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Option<oneshot::Receiver<Result<(), RpcError>>>, RpcError> {
        let link = self.link(peer);
        let cost = u32::try_from(body.len().clamp(1, LINK_BUDGET)).unwrap_or(u32::MAX);
        let budget = link.budget.clone();
        let permit = match budget.clone().try_acquire_many_owned(cost) {
            Ok(p) => p,
            Err(_) => tokio::time::timeout_at(deadline, budget.acquire_many_owned(cost))
                .await
                .map_err(|_| {
                    RpcError::too_many_requests(
                        FRAMEWORK_ERROR_ID,
                        format!("{peer}: publish link full until the deadline (subscriber not keeping up)"),
                    )
                })?
                .map_err(|_| broken(peer, "link closed"))?,
        };
        let (ack, rx) = if header.ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        link.tx
            .send(Outgoing {
                header,
                body,
                ack,
                _budget: permit,
            })
            .map_err(|_| broken(peer, "link closed"))?;
        Ok(rx)
    }
}

/// Owns one link: opens the stream, writes deliveries in order, routes acks back.
async fn run_link(
    connections: Connections,
    peer: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    is_broken: Arc<AtomicBool>,
    max_frame: u32,
) {
    let pending: Arc<Mutex<HashMap<u64, AckTx>>> = Arc::default();
    let fail_all = |pending: &Mutex<HashMap<u64, AckTx>>, why: &str| {
        for (_, tx) in pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            let _ = tx.send(Err(broken(peer, why)));
        }
    };
    let opened = async {
        let conn = connections
            .connection(peer)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&Preamble::new(StreamKind::Publish).to_bytes())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((conn, send, recv))
    };
    // The connection handle lives as long as the link: no eviction under the cap while it runs.
    let (_connection, mut send, mut recv) = match opened.await {
        Ok(x) => x,
        Err(e) => {
            is_broken.store(true, Ordering::Release);
            rx.close();
            while let Ok(o) = rx.try_recv() {
                if let Some(tx) = o.ack {
                    let _ = tx.send(Err(broken(peer, &e)));
                }
            }
            return;
        }
    };
    // Acks, in the order the subscriber sends them.
    let acks = {
        let pending = pending.clone();
        tokio::spawn(async move {
            let mut frames = FrameReader::default();
            loop {
                let Ok(frame) = frames
                    .next(&mut recv, FrameKind::Header, DEFAULT_MAX_HEADER_LEN as u32)
                    .await
                else {
                    return;
                };
                let Ok(ack) = PublishAck::decode(&frame) else {
                    return;
                };
                let tx = pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&ack.seq);
                if let Some(tx) = tx {
                    let _ = tx.send(match ack.error {
                        None => Ok(()),
                        Some(e) => Err(e),
                    });
                }
            }
        })
    };
    let mut acks = acks;
    let mut acks_done = false;
    let mut seq = 0u64;
    let why = loop {
        // A reader that stops (the subscriber's node died, the stream broke) ends the link at
        // once: deliveries waiting for their acks must fail now, not at their deadline.
        let next = tokio::select! {
            out = rx.recv() => out,
            _ = &mut acks => {
                acks_done = true;
                break "ack stream closed".to_owned();
            }
        };
        let Some(mut out) = next else {
            break "publisher gone".to_owned();
        };
        seq += 1;
        out.header.seq = seq;
        if let Some(tx) = out.ack.take() {
            pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(seq, tx);
        }
        let mut buf = BytesMut::new();
        let framed = out
            .header
            .encode()
            .map_err(|e| e.to_string())
            .and_then(|h| {
                encode_frame(
                    FrameKind::Header,
                    &h,
                    DEFAULT_MAX_HEADER_LEN as u32,
                    &mut buf,
                )
                .map_err(|e| e.to_string())
            })
            .and_then(|()| {
                encode_frame(FrameKind::Data, &out.body, max_frame, &mut buf)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = framed {
            if let Some(tx) = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&seq)
            {
                let _ = tx.send(Err(RpcError::bad_request(FRAMEWORK_ERROR_ID, e)));
            }
            continue;
        }
        if let Err(e) = send.write_all(&buf).await {
            break e.to_string();
        }
    };
    is_broken.store(true, Ordering::Release);
    rx.close();
    while let Ok(o) = rx.try_recv() {
        if let Some(tx) = o.ack {
            let _ = tx.send(Err(broken(peer, &why)));
        }
    }
    // Deliveries already written may still be acknowledged: give the reader a moment.
    let _ = send.finish();
    if !acks_done {
        let _ = tokio::time::timeout(Duration::from_secs(5), acks).await;
    }
    fail_all(&pending, &why);
}
