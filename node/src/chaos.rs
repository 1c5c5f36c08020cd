//! Fault injection for real nodes: a UDP socket for quinn that loses datagrams, cuts links to
//! chosen peers, or goes silent as a crashed process would.
//!
//! Every node of a chaos run gets a [`FaultySocket`] ([`NodeBuilder::udp_socket`](crate::NodeBuilder::udp_socket)).
//! Faults act on sending: with every node's socket faulty, a cut between A and B drops what A sends
//! to B and what B sends to A. Loss is drawn from a seeded RNG.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// The faults applied to one node's socket. Cheap to clone; all clones are the same faults.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

struct State {
    loss: f64,
    blocked: HashSet<SocketAddr>,
    dark: bool,
    rng: SmallRng,
    dropped: u64,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("Faults")
            .field("loss", &s.loss)
            .field("blocked", &s.blocked.len())
            .field("dark", &s.dark)
            .finish()
    }
}

impl Faults {
    /// No faults yet; loss drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                loss: 0.0,
                blocked: HashSet::new(),
                dark: false,
                rng: SmallRng::seed_from_u64(seed),
                dropped: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loses each outgoing datagram with probability `p`.
    pub fn set_loss(&self, p: f64) {
        self.lock().loss = p.clamp(0.0, 1.0);
    }

    /// Drops everything sent to `peer`.
    pub fn block(&self, peer: SocketAddr) {
        self.lock().blocked.insert(peer);
    }

    /// Stops dropping by destination.
    pub fn unblock_all(&self) {
        self.lock().blocked.clear();
    }

    /// Goes silent for good: nothing is sent or received any more, as if the process had died.
    pub fn go_dark(&self) {
        self.lock().dark = true;
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    fn drop_to(&self, dst: SocketAddr) -> bool {
        let mut s = self.lock();
        let drop = s.dark || s.blocked.contains(&dst) || {
            let loss = s.loss;
            loss > 0.0 && s.rng.random_bool(loss)
        };
        s.dropped += u64::from(drop);
        drop
    }
}

/// A quinn socket with [`Faults`] applied, over a real UDP socket that several of them may share
/// (a node restarted at the same address gets a new `FaultySocket` over the same OS socket, and the
/// old one goes dark).
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: Faults,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl FaultySocket {
    /// Wraps a bound UDP socket for use with quinn on tokio.
    pub fn wrap(socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }

    /// A socket over `inner` (from [`wrap`](Self::wrap)) with `faults` applied.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, faults: Faults) -> Arc<Self> {
        Arc::new(Self { inner, faults })
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.faults.drop_to(transmit.destination) {
            return Ok(()); // lost on the way, as far as the sender can tell
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.faults.lock().dark {
            // A dead process reads nothing; its successor on the same socket does.
            return Poll::Pending;
        }
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
