//! Closing a connection once it has stayed unused for a while: how a registry sync gives back
//! the connection it had to dial.

use std::net::SocketAddr;
use std::time::Duration;

use tracing::debug;

use super::{node_addr, Connections};
use crate::wire::close_code;

impl Connections {
    /// Closes `conn`, a connection to `peer`, once it has been idle for `grace` (nothing used
    /// it: no handle, no stream served, in either direction), with [`close_code::EVICTED`];
    /// never if it was used meanwhile. The registry sync closes a connection it had to dial this
    /// way, as memberlist closes its push/pull TCP connections: while hundreds of members join, a
    /// node pulls records from dozens of peers, and keeping each connection for QUIC's idle
    /// timeout (30 s) made a node of 250 hold 70-90 of them (about 125 KiB each). The grace lets
    /// replies still in flight on it arrive, and calls the peer makes on it (a peer hands out
    /// the connection we dialed for its own calls to us) keep it open.
    pub fn close_when_idle(
        &self,
        peer: SocketAddr,
        conn: quinn::Connection,
        grace: Duration,
        reason: &'static str,
    ) {
        let since = self.inner.tick();
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            this.close_if_unused(peer, &conn, since, reason);
        });
    }

    /// Closes `conn` if nothing used it since tick `since` and nothing uses it now.
    fn close_if_unused(
        &self,
        peer: SocketAddr,
        conn: &quinn::Connection,
        since: u64,
        reason: &str,
    ) {
        let id = conn.stable_id();
        let closed = self
            .inner
            .with_table(|t| t.retire_idle(node_addr(peer), |c| c.stable_id() == id, since));
        if let Some(c) = closed {
            debug!(%peer, reason, "closing idle connection");
            c.close(close_code::EVICTED.into(), reason.as_bytes());
        }
    }
}
