//! The node's QUIC connections: dialing (one handshake per peer however many callers ask), the
//! table of open connections under a cap, the accept loop, the identity check on both sides, and
//! handing every incoming stream to whoever serves it.
//!
//! Every connection is mutually authenticated (see [`crate::security`]); the address in the peer's
//! certificate is the `from` of everything it sends. Incoming streams are read up to their
//! [`Preamble`] here, then served by a [`StreamHandler`] in the stream's own task. Connections carry
//! no datagrams: gossip rides the UDP port beside QUIC ([`crate::socket`]).
//!
//! # Identity
//!
//! A dialer accepts only the peer it dialed: a certificate that names another address than the
//! one dialed (compared without IPv6 scope, an IPv4-mapped address as IPv4) closes the connection
//! with [`close_code::ADDRESS_MISMATCH`] and fails the dial with [`TransportError::Protocol`]. A
//! certificate naming no single address closes it with [`close_code::NO_IDENTITY`], on both sides.
//! Both are counted ([`ConnectionStats::refused_identity`]).
//!
//! # The cap, and what counts as use
//!
//! At most [`ConnectionsConfig::max_connections`] connections stay open, dialed and accepted
//! alike. A connection is **in use** while a [`PeerConnection`] handle to it lives (every
//! [`Connections::connection`] returns one, and callers hold it for as long as their stream
//! runs), or while a stream the peer opened is being served. Each use starts and ends at a tick of
//! a logical clock; the connection's last tick orders least recently used first. quinn exposes no
//! count of a connection's open streams (its `ConnectionStats` counts frames), hence the guard: a
//! lock-free counter per connection, so that starting or ending a stream never takes the table's
//! lock (see `table`).
//!
//! A new connection is let in once its handshake and identity check are done. While the table is
//! at its cap, the least recently used **idle** connection is evicted first, closed with
//! [`close_code::EVICTED`]; the peer just dials again next time. A connection in use is never
//! evicted: if all are in use, the cap is exceeded and that is counted
//! ([`ConnectionStats::cap_overruns`]), up to [`ConnectionsConfig::max_overrun`] more; past that,
//! a new connection is refused (an accepted one closed with [`close_code::BUSY`], a dial fails
//! with [`TransportError::Busy`]), so that a peer holding the credentials cannot pin connections
//! without bound. When a use ends while the table is over its cap, idle connections are evicted
//! down to it.
//!
//! Choosing a connection for eviction and starting a use of it are atomic with each other, so an
//! evicted connection had nothing of ours on it: no handle, no stream being served, and a stream
//! the peer opened that was not yet accepted is never served. A call's stream stays in use until
//! the caller has acknowledged the whole reply (`rpc::serve` waits for it), so a caller whose call
//! fails with [`close_code::EVICTED`] knows it did not run. (A registry sync's answer is not
//! waited for; syncs are idempotent.)
//!
//! # Handshakes
//!
//! Callers asking for a connection to the same peer at once share one handshake, run in its own
//! task (a caller that gives up does not cancel it). Accepted handshakes in progress are bounded
//! by [`ConnectionsConfig::max_handshakes`]; beyond it an attempt is refused before any
//! cryptography ([`ConnectionStats::refused_handshakes`]). Attempts quinn holds before the accept
//! loop takes them are bounded by [`EndpointConfig`](crate::endpoint::EndpointConfig)'s
//! `max_incoming` and `incoming_buffer`.

mod config;
mod idle;
mod table;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mesh_membership::transport::TransportError;
use mesh_protocol::{Preamble, StreamKind, PREAMBLE_LEN};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use self::config::{bump, Counters};
pub use self::config::{ConnectionStats, ConnectionsConfig};
use self::table::{Limits, Slot, Table};
use crate::security::{peer_addr, CLUSTER_SERVER_NAME};
use crate::wire::{close_code, refuse, BoxFuture};

/// Streams served at once per connection, beyond QUIC's own stream limit.
const STREAMS_PER_CONNECTION: usize = 256;
/// Time allowed to set up a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a stream's preamble.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Dials one [`Connections::connection`] call makes when each new connection is evicted before
/// the caller could use it (only under a tiny cap and heavy churn).
const DIAL_ROUNDS: usize = 3;

/// Serves the streams peers open, once their preamble has been read.
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one stream of `kind` from the authenticated peer `from`; the preamble has been
    /// read. The future runs in the stream's own task, which holds one of the connection's
    /// stream permits (and keeps the connection in use) until the future ends.
    fn handle(
        &self,
        kind: StreamKind,
        from: SocketAddr,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> BoxFuture<()>;
}

/// How a dial ended, shared with every caller that waited for it (a success is found in the
/// table).
type Dialed = Option<Result<(), TransportError>>;

#[derive(Default)]
struct State {
    table: Table<quinn::Connection>,
    /// Dials in progress, by peer.
    dialing: HashMap<SocketAddr, watch::Receiver<Dialed>>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    state: Mutex<State>,
    /// Mirrors `state.table.len()`, read without the lock when a use ends.
    open: AtomicUsize,
    max_connections: AtomicUsize,
    max_overrun: AtomicUsize,
    max_handshakes: AtomicUsize,
    handshakes: AtomicUsize,
    /// The logical clock of uses.
    clock: AtomicU64,
    counters: Counters,
    streams: Arc<dyn StreamHandler>,
}

/// The key of a peer in the table: its address without IPv6 scope and flow, an IPv4-mapped
/// address as IPv4.
fn node_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Runs `f` on the connection table under the lock, and keeps the `open` gauge in step.
    fn with_table<R>(&self, f: impl FnOnce(&mut Table<quinn::Connection>) -> R) -> R {
        let mut s = self.state();
        let r = f(&mut s.table);
        self.open.store(s.table.len(), Ordering::Relaxed);
        r
    }

    fn limits(&self) -> Limits {
        Limits {
            cap: self.max_connections.load(Ordering::Relaxed),
            overrun: self.max_overrun.load(Ordering::Relaxed),
        }
    }

    /// A handle on the connection handed out for `peer`, if it is open.
    fn lease(self: &Arc<Self>, state: &State, peer: SocketAddr) -> Option<PeerConnection> {
        let (conn, slot) = state.table.get(peer)?;
        if conn.close_reason().is_some() {
            return None;
        }
        let in_use = InUse::acquire(self, slot)?;
        Some(PeerConnection {
            conn: conn.clone(),
            _in_use: in_use,
        })
    }

    /// The single address the peer's certificate names, or the connection closed and counted.
    fn identify(&self, conn: &quinn::Connection) -> Option<SocketAddr> {
        let peer = peer_addr(conn);
        if peer.is_none() {
            bump(&self.counters.refused_identity);
            conn.close(
                close_code::NO_IDENTITY.into(),
                b"no single advertised address in certificate",
            );
        }
        peer
    }

    /// Lets `conn` from `peer` into the table, evicting to make room, and starts serving it;
    /// `false` if it was refused (and closed).
    fn admit(self: &Arc<Self>, peer: SocketAddr, conn: quinn::Connection) -> bool {
        let now = self.tick();
        let limits = self.limits();
        let admitted = self.with_table(|t| t.admit(node_addr(peer), conn.clone(), now, limits));
        let a = match admitted {
            Ok(a) => a,
            Err(conn) => {
                bump(&self.counters.refused_limit);
                warn!(%peer, "connection refused: every connection is in use, cap and overrun reached");
                conn.close(close_code::BUSY.into(), b"too many connections");
                return false;
            }
        };
        a.evicted.into_iter().for_each(|c| self.close_evicted(c));
        if a.overrun {
            bump(&self.counters.cap_overruns);
            debug!(%peer, "connection cap exceeded: every connection is in use");
        }
        tokio::spawn(accept_streams(self.clone(), peer, a.id, a.slot, conn));
        true
    }

    fn close_evicted(&self, conn: quinn::Connection) {
        bump(&self.counters.evictions);
        debug!(peer = %conn.remote_address(), "evicting the least recently used connection");
        conn.close(close_code::EVICTED.into(), b"evicted: least recently used");
    }

    /// Evicts idle connections down to the cap.
    fn trim(&self) {
        let cap = self.limits().cap;
        let evicted = self.with_table(|t| t.trim(cap));
        evicted.into_iter().for_each(|c| self.close_evicted(c));
    }
}

/// One use of a connection: started when made, ended (at the clock's next tick) when dropped.
struct InUse {
    inner: Arc<Inner>,
    slot: Arc<Slot>,
}

impl InUse {
    /// `None` if the connection was evicted.
    fn acquire(inner: &Arc<Inner>, slot: &Arc<Slot>) -> Option<Self> {
        slot.try_acquire(inner.tick()).then(|| Self {
            inner: inner.clone(),
            slot: slot.clone(),
        })
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let inner = &self.inner;
        if self.slot.release(inner.tick())
            && inner.open.load(Ordering::Relaxed) > inner.max_connections.load(Ordering::Relaxed)
        {
            inner.trim();
        }
    }
}

/// A connection to a peer, from [`Connections::connection`]: the `quinn` connection (through
/// `Deref`), kept from eviction for as long as this handle lives. Hold it while a stream opened
/// on it runs, and no longer: a handle kept for good pins its connection.
pub struct PeerConnection {
    conn: quinn::Connection,
    _in_use: InUse,
}

impl std::ops::Deref for PeerConnection {
    type Target = quinn::Connection;
    fn deref(&self) -> &quinn::Connection {
        &self.conn
    }
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection")
            .field("remote", &self.conn.remote_address())
            .field("id", &self.conn.stable_id())
            .finish()
    }
}

/// A node's QUIC connections: one per peer, opened on demand, reused, capped, and cached by the
/// address in the peer's certificate.
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
    /// `streams`. Limits are [`ConnectionsConfig::default`] until
    /// [`set_config`](Self::set_config).
    pub fn start(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        streams: Arc<dyn StreamHandler>,
    ) -> Self {
        let config = ConnectionsConfig::default();
        let inner = Arc::new(Inner {
            endpoint,
            addr,
            state: Mutex::default(),
            open: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(config.max_connections),
            max_overrun: AtomicUsize::new(config.max_overrun),
            max_handshakes: AtomicUsize::new(config.max_handshakes),
            handshakes: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            counters: Counters::default(),
            streams,
        });
        tokio::spawn(accept_loop(inner.clone()));
        Self { inner }
    }

    /// Applies new limits at once: lowering the cap evicts idle connections over it.
    pub fn set_config(&self, config: &ConnectionsConfig) {
        let inner = &self.inner;
        inner
            .max_connections
            .store(config.max_connections.max(1), Ordering::Relaxed);
        inner
            .max_overrun
            .store(config.max_overrun, Ordering::Relaxed);
        inner
            .max_handshakes
            .store(config.max_handshakes, Ordering::Relaxed);
        inner.trim();
    }

    /// The address this node advertises.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// A snapshot of the connections and their counters.
    pub fn stats(&self) -> ConnectionStats {
        let inner = &self.inner;
        let (open, busy) = {
            let s = inner.state();
            (s.table.len(), s.table.busy())
        };
        let mut stats = inner.counters.snapshot();
        stats.open = open;
        stats.busy = busy;
        stats.max_connections = inner.max_connections.load(Ordering::Relaxed);
        stats
    }

    /// The open connection to `peer`, if there is one; never dials, and is not a use (the
    /// connection may be evicted while the caller holds it).
    pub fn cached(&self, peer: SocketAddr) -> Option<quinn::Connection> {
        let s = self.inner.state();
        let (conn, _) = s.table.get(node_addr(peer))?;
        conn.close_reason().is_none().then(|| conn.clone())
    }

    /// Closes every connection to `peer`: streams on them fail at once. Used when membership
    /// declares `peer` down, since a crashed peer never closes its side and its calls would
    /// otherwise wait for QUIC's idle timeout.
    pub fn close_peer(&self, peer: SocketAddr, reason: &str) {
        let closed = self.inner.with_table(|t| t.remove_peer(node_addr(peer)));
        for c in closed {
            debug!(%peer, reason, "closing connection");
            c.close(close_code::PEER_DOWN.into(), reason.as_bytes());
        }
    }

    /// The connection to `to`, opened if there is none; callers asking at once share one
    /// handshake. The handle keeps the connection from eviction until dropped.
    ///
    /// Fails with [`TransportError::Protocol`] if the peer's certificate names another address
    /// than `to` (or none), and with [`TransportError::Busy`] if this node is at its connection
    /// limit with every connection in use.
    pub async fn connection(&self, to: SocketAddr) -> Result<PeerConnection, TransportError> {
        let inner = &self.inner;
        let to = node_addr(to);
        for _ in 0..DIAL_ROUNDS {
            let mut dialed = {
                let mut s = inner.state();
                if let Some(c) = inner.lease(&s, to) {
                    return Ok(c);
                }
                match s.dialing.get(&to) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        s.dialing.insert(to, rx.clone());
                        tokio::spawn(dial_task(inner.clone(), to, tx));
                        rx
                    }
                }
            };
            let outcome = match dialed.wait_for(Option::is_some).await {
                Ok(o) => o.clone(),
                Err(_) => None,
            };
            outcome.unwrap_or_else(|| Err(TransportError::Io("dial abandoned".into())))?;
        }
        // Connected each time, but others took the new connection's place before we could use it.
        Err(TransportError::Busy)
    }
}

/// Dials `to` and tells whoever waits how it went.
async fn dial_task(inner: Arc<Inner>, to: SocketAddr, tx: watch::Sender<Dialed>) {
    let outcome = dial(&inner, to).await;
    inner.state().dialing.remove(&to);
    tx.send_replace(Some(outcome));
}

async fn dial(inner: &Arc<Inner>, to: SocketAddr) -> Result<(), TransportError> {
    let connecting = inner
        .endpoint
        .connect(to, CLUSTER_SERVER_NAME)
        .map_err(|e| TransportError::Io(e.to_string()))?;
    bump(&inner.counters.dialed);
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
    let Some(peer) = inner.identify(&conn) else {
        return Err(TransportError::Protocol(format!(
            "the certificate of the peer at {to} names no single address"
        )));
    };
    if node_addr(peer) != to {
        bump(&inner.counters.refused_identity);
        warn!(%to, %peer, "dialed peer's certificate names another address: refused");
        conn.close(
            close_code::ADDRESS_MISMATCH.into(),
            b"certificate names another address than the one dialed",
        );
        return Err(TransportError::Protocol(format!(
            "dialed {to}, but the peer's certificate names {peer}: \
             dial a node at the address it advertises"
        )));
    }
    if inner.admit(peer, conn) {
        Ok(())
    } else {
        Err(TransportError::Busy)
    }
}

/// Counts an accepted handshake in progress while alive.
struct Handshake(Arc<Inner>);

impl Handshake {
    fn start(inner: &Arc<Inner>) -> Option<Self> {
        let max = inner.max_handshakes.load(Ordering::Relaxed);
        inner
            .handshakes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(inner.clone()))
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let remote = incoming.remote_address();
        let Some(handshake) = Handshake::start(&inner) else {
            bump(&inner.counters.refused_handshakes);
            debug!(%remote, "too many handshakes in progress: connection refused");
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
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
            drop(handshake);
            match inner.identify(&conn) {
                Some(peer) => {
                    bump(&inner.counters.accepted);
                    inner.admit(peer, conn);
                }
                None => warn!(%remote, "peer certificate names no single advertised address"),
            }
        });
    }
}

async fn accept_streams(
    inner: Arc<Inner>,
    peer: SocketAddr,
    id: u64,
    slot: Arc<Slot>,
    conn: quinn::Connection,
) {
    let permits = Arc::new(Semaphore::new(STREAMS_PER_CONNECTION));
    let reason = loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => break e,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(&mut send, &mut recv, close_code::BUSY);
            continue;
        };
        // The stream keeps the connection in use while it is served. An evicted connection
        // serves nothing more (it is closing).
        let Some(in_use) = InUse::acquire(&inner, &slot) else {
            refuse(&mut send, &mut recv, close_code::EVICTED);
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _in_use = in_use;
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
    };
    debug!(%peer, %reason, "connection closed");
    inner.with_table(|t| t.remove(id));
}
