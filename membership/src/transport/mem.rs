//! An in-memory network: seeded loss, latency with jitter, an MTU, and links that can be cut
//! (one way or both) and healed. Runs on tokio's clock, so tests pause it and stay deterministic.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use mesh_protocol::SyncRequest;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::{mpsc, oneshot};

use super::{Incoming, SyncFuture, Transport, TransportError, INCOMING_CAPACITY};

/// Counters of the network's own drops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams delivered to a bound address.
    pub delivered: u64,
    /// Dropped by random loss.
    pub lost: u64,
    /// Dropped because the link was cut or nobody was bound.
    pub unreachable: u64,
    /// Dropped for exceeding the MTU.
    pub oversized: u64,
    /// Dropped because the receiver's queue was full.
    pub overflow: u64,
}

struct Inner {
    nodes: HashMap<SocketAddr, mpsc::Sender<Incoming>>,
    rng: SmallRng,
    loss: f64,
    latency: Duration,
    jitter: Duration,
    mtu: usize,
    /// Directed links that drop everything: (from, to).
    cut: HashSet<(SocketAddr, SocketAddr)>,
    stats: NetStats,
}

/// The shared network. Clone it freely; every clone is the same network.
#[derive(Clone)]
pub struct MemNetwork {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork").finish_non_exhaustive()
    }
}

impl MemNetwork {
    /// A lossless network with 1 ms latency and a 1400-byte MTU, its randomness seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                nodes: HashMap::new(),
                rng: SmallRng::seed_from_u64(seed),
                loss: 0.0,
                latency: Duration::from_millis(1),
                jitter: Duration::ZERO,
                mtu: 1400,
                cut: HashSet::new(),
                stats: NetStats::default(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops each datagram with probability `loss` (0.0..=1.0). Syncs (reliable streams) are not
    /// subject to loss, only to cut links.
    pub fn set_loss(&self, loss: f64) {
        self.lock().loss = loss.clamp(0.0, 1.0);
    }

    /// Delivers after `latency` plus a uniform random `0..=jitter`.
    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        let mut g = self.lock();
        g.latency = latency;
        g.jitter = jitter;
    }

    /// Drops datagrams larger than `mtu`.
    pub fn set_mtu(&self, mtu: usize) {
        self.lock().mtu = mtu;
    }

    /// Binds `addr`, replacing whatever was bound there (a restart at the same address).
    pub fn bind(&self, addr: SocketAddr) -> (Arc<MemTransport>, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(INCOMING_CAPACITY);
        self.lock().nodes.insert(addr, tx);
        let mtu = self.lock().mtu;
        (
            Arc::new(MemTransport {
                net: self.clone(),
                addr,
                mtu,
            }),
            rx,
        )
    }

    /// A seed for a node's RNG, drawn from the network's own seeded RNG, so that a test that
    /// starts the same nodes in the same order replays the same run.
    pub fn next_seed(&self) -> u64 {
        self.lock().rng.random()
    }

    /// Unbinds `addr`: a crash. Nothing more reaches it.
    pub fn unbind(&self, addr: SocketAddr) {
        self.lock().nodes.remove(&addr);
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        let mut g = self.lock();
        g.cut.insert((a, b));
        g.cut.insert((b, a));
    }

    /// Cuts only the direction `from -> to`.
    pub fn cut_one_way(&self, from: SocketAddr, to: SocketAddr) {
        self.lock().cut.insert((from, to));
    }

    /// Splits the network: every link between two different groups is cut.
    pub fn partition(&self, groups: &[&[SocketAddr]]) {
        for (i, ga) in groups.iter().enumerate() {
            for gb in &groups[i + 1..] {
                for a in ga.iter() {
                    for b in gb.iter() {
                        self.cut(*a, *b);
                    }
                }
            }
        }
    }

    /// Heals every cut link.
    pub fn heal_all(&self) {
        self.lock().cut.clear();
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        self.lock().stats.clone()
    }

    /// The route from `from` to `to`, if the link is up: the receiver's queue and a delay.
    fn route(
        &self,
        from: SocketAddr,
        to: SocketAddr,
    ) -> Option<(mpsc::Sender<Incoming>, Duration)> {
        let mut g = self.lock();
        if g.cut.contains(&(from, to)) {
            return None;
        }
        let tx = g.nodes.get(&to)?.clone();
        let jitter = if g.jitter.is_zero() {
            Duration::ZERO
        } else {
            let j = g.jitter;
            g.rng.random_range(Duration::ZERO..=j)
        };
        Some((tx, g.latency + jitter))
    }
}

/// One node's end of a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    net: MemNetwork,
    addr: SocketAddr,
    mtu: usize,
}

impl Transport for MemTransport {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn max_datagram_size(&self) -> usize {
        self.mtu
    }

    fn send_datagram(&self, to: SocketAddr, data: Bytes) {
        {
            let mut g = self.net.lock();
            if data.len() > g.mtu {
                g.stats.oversized += 1;
                return;
            }
            let loss = g.loss;
            if loss > 0.0 && g.rng.random_bool(loss) {
                g.stats.lost += 1;
                return;
            }
        }
        let Some((tx, delay)) = self.net.route(self.addr, to) else {
            self.net.lock().stats.unreachable += 1;
            return;
        };
        let from = self.addr;
        let net = self.net.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let ok = tx.try_send(Incoming::Datagram { from, data }).is_ok();
            let mut g = net.lock();
            if ok {
                g.stats.delivered += 1;
            } else {
                g.stats.overflow += 1;
            }
        });
    }

    fn sync(&self, to: SocketAddr, request: SyncRequest) -> SyncFuture {
        let from = self.addr;
        let net = self.net.clone();
        Box::pin(async move {
            let (tx, delay) = net.route(from, to).ok_or(TransportError::Unreachable)?;
            // The answer must make it back too.
            let (_, back) = net.route(to, from).ok_or(TransportError::Unreachable)?;
            tokio::time::sleep(delay).await;
            let (reply, answer) = oneshot::channel();
            tx.try_send(Incoming::Sync {
                from,
                request,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => TransportError::Busy,
                mpsc::error::TrySendError::Closed(_) => TransportError::Unreachable,
            })?;
            let response = answer.await.map_err(|_| TransportError::Unreachable)?;
            tokio::time::sleep(back).await;
            Ok(response)
        })
    }
}
