//! The simulated network: node addresses, latency and jitter, datagram loss, cut links and
//! partitions, and the fate of each datagram sent.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::RngExt;

use crate::scenario::Network;

/// The address of node `i`.
pub(crate) fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7946))
}

/// The node at `a`, if `a` is a node address.
pub(crate) fn index(a: SocketAddr) -> Option<usize> {
    match a {
        SocketAddr::V4(v4) if v4.port() == 7946 => {
            let o = v4.ip().octets();
            Some((usize::from(o[1]) << 16) | (usize::from(o[2]) << 8) | usize::from(o[3]))
        }
        _ => None,
    }
}

/// The network as it is now: its latency, its current loss and the links that are cut.
///
/// Randomness comes from the simulation's one generator, passed in, so that every draw keeps its
/// place in the seeded sequence.
pub(crate) struct Links {
    network: Network,
    loss: f64,
    /// Cut directed links: (from, to).
    cut: BTreeSet<(usize, usize)>,
}

impl Links {
    /// The network of a scenario, with every link up.
    pub(crate) fn new(network: &Network) -> Self {
        Self {
            network: network.clone(),
            loss: network.loss,
            cut: BTreeSet::new(),
        }
    }

    /// One draw of the one-way latency.
    pub(crate) fn latency(&self, rng: &mut SmallRng) -> Duration {
        let n = &self.network;
        let jitter = if n.jitter_ms > 0.0 {
            rng.random_range(0.0..n.jitter_ms)
        } else {
            0.0
        };
        Duration::from_secs_f64((n.latency_ms + jitter) / 1000.0)
    }

    /// Whether the link `from` -> `to` is up.
    pub(crate) fn link_up(&self, from: usize, to: usize) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Whether the links between `a` and `b` are up both ways.
    pub(crate) fn reachable(&self, a: usize, b: usize) -> bool {
        self.link_up(a, b) && self.link_up(b, a)
    }

    /// The delay of a datagram sent `from` -> `to`, or `None` if the link is cut or the datagram
    /// is lost.
    pub(crate) fn datagram(&self, from: usize, to: usize, rng: &mut SmallRng) -> Option<Duration> {
        if !self.link_up(from, to) {
            return None;
        }
        if self.loss > 0.0 && rng.random_bool(self.loss) {
            return None;
        }
        Some(self.latency(rng))
    }

    /// Cuts both ways between the first `fraction` of `n` nodes and the rest.
    pub(crate) fn partition(&mut self, fraction: f64, n: usize) {
        let k = ((n as f64) * fraction).round() as usize;
        for a in 0..k {
            for b in k..n {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    /// Cuts the links from the first `fraction` of `n` nodes to the rest, one way only.
    pub(crate) fn cut_one_way(&mut self, fraction: f64, n: usize) {
        let k = ((n as f64) * fraction).round() as usize;
        for a in 0..k {
            for b in k..n {
                self.cut.insert((a, b));
            }
        }
    }

    /// Brings every cut link back up.
    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    /// Sets the datagram loss probability (clamped to 0..=1).
    pub(crate) fn set_loss(&mut self, value: f64) {
        self.loss = value.clamp(0.0, 1.0);
    }
}
