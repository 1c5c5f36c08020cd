//! The limits of a node's connections and the counters behind [`ConnectionStats`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Limits on a node's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionsConfig {
    /// Connections kept open, dialed and accepted alike (default 256; at least 1). A new one
    /// beyond it evicts the least recently used idle connection. At the ~125 KiB a connection
    /// costs (measured in issue 13), 256 is about 32 MiB.
    pub max_connections: usize,
    /// Connections allowed beyond `max_connections` while every open connection is in use
    /// (default 256); past them new connections are refused until some become idle.
    pub max_overrun: usize,
    /// Accepted handshakes in progress at once (default 64); more attempts are refused at once.
    /// Each is allowed 5 s, so this also bounds what peers without credentials can hold.
    pub max_handshakes: usize,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_overrun: 256,
            max_handshakes: 64,
        }
    }
}

/// A snapshot of a node's connections (`Connections::stats`, `Node::connection_stats`); counters
/// run from start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Open connections (authenticated, let in).
    pub open: usize,
    /// Of those, connections in use: a handle held or a stream being served.
    pub busy: usize,
    /// The cap ([`ConnectionsConfig::max_connections`]).
    pub max_connections: usize,
    /// Handshakes this node started.
    pub dialed: u64,
    /// Handshakes from peers that completed with a valid identity.
    pub accepted: u64,
    /// Idle connections closed to make room under the cap.
    pub evictions: u64,
    /// Connections let in over the cap because every other one was in use.
    pub cap_overruns: u64,
    /// Connections closed because the peer's certificate named no single address, or (dialing)
    /// another address than the one dialed.
    pub refused_identity: u64,
    /// Connections refused because the cap and its overrun were used up.
    pub refused_limit: u64,
    /// Incoming attempts refused because too many handshakes were in progress.
    pub refused_handshakes: u64,
}

/// What happened to a node's connections since start.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) dialed: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) cap_overruns: AtomicU64,
    pub(crate) refused_identity: AtomicU64,
    pub(crate) refused_limit: AtomicU64,
    pub(crate) refused_handshakes: AtomicU64,
}

impl Counters {
    /// The counters, with the gauges of the snapshot left at zero.
    pub(crate) fn snapshot(&self) -> ConnectionStats {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnectionStats {
            dialed: n(&self.dialed),
            accepted: n(&self.accepted),
            evictions: n(&self.evictions),
            cap_overruns: n(&self.cap_overruns),
            refused_identity: n(&self.refused_identity),
            refused_limit: n(&self.refused_limit),
            refused_handshakes: n(&self.refused_handshakes),
            ..ConnectionStats::default()
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
