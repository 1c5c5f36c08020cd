//! The node's one QUIC endpoint: server and client at once, mutual TLS on both sides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::security::{NodeTls, SecurityError};

/// Transport limits of every mesh connection.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// A connection with no traffic for this long is closed; the next message reopens it.
    ///
    /// There is no keep-alive (idle connections are meant to close), so a call whose handler runs
    /// longer than this while nothing else crosses that connection is cut: set it above the
    /// longest deadline you use. Gossip does not use connections: it rides plain UDP datagrams on
    /// the same port ([`crate::socket`]).
    pub idle_timeout: Duration,
    /// Bidirectional streams a peer may have open towards us at once (calls, syncs).
    pub max_concurrent_bidi_streams: u32,
    /// Unidirectional streams a peer may have open towards us at once (pub/sub deliveries).
    pub max_concurrent_uni_streams: u32,
    /// Connection attempts quinn holds before the accept loop takes them (quinn's
    /// `ServerConfig::max_incoming`; quinn's default is 65,536). More are refused at once. The
    /// loop takes them as they come, and bounds the handshakes then in progress itself
    /// (`ConnectionsConfig::max_handshakes`).
    pub max_incoming: usize,
    /// Bytes quinn buffers for one such attempt beyond its first packet (quinn's
    /// `incoming_buffer_size`, 10 MiB by default there; mesh sends no 0-RTT data, so little is
    /// needed). All attempts together get `max_incoming` times this.
    pub incoming_buffer: u64,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            max_concurrent_bidi_streams: 1024,
            max_concurrent_uni_streams: 256,
            max_incoming: 256,
            incoming_buffer: 64 * 1024,
        }
    }
}

impl EndpointConfig {
    fn transport(&self) -> Result<Arc<quinn::TransportConfig>, SecurityError> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| SecurityError::Load(format!("idle timeout: {e}")))?;
        t.max_idle_timeout(Some(idle));
        // No keep-alive: a connection nobody uses is closed after `idle_timeout` and reopened on
        // demand.
        t.max_concurrent_bidi_streams(self.max_concurrent_bidi_streams.into());
        t.max_concurrent_uni_streams(self.max_concurrent_uni_streams.into());
        // No QUIC datagrams: gossip is plain UDP beside QUIC (`crate::socket`).
        t.datagram_receive_buffer_size(None);
        Ok(Arc::new(t))
    }
}

/// Kernel buffer asked for on each side of a node's UDP socket: memberlist's `udpRecvBufSize`
/// (2 MiB). The default (about 208 KiB on Linux) holds some 150 gossip datagrams: a node that
/// loses the CPU for a moment while a few hundred members gossip and handshake overflows it, and
/// every datagram it drops is a missed ack (a false suspicion). Linux caps the request at
/// `net.core.rmem_max` / `wmem_max` without an error; the size obtained is logged at debug.
pub const SOCKET_BUFFER: usize = 2 * 1024 * 1024;

/// Binds a UDP socket at `addr` for a node, with [`SOCKET_BUFFER`] asked for both ways; its local
/// address is what a node advertises when no other address is given. Build the TLS naming the
/// advertised address, then [`endpoint`].
pub fn bind_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, EndpointError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(EndpointError::Bind)?;
    // A smaller buffer than asked is not an error: the node works, with less slack.
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not enlarge the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not enlarge the UDP send buffer");
    }
    tracing::debug!(
        recv = socket.recv_buffer_size().ok(),
        send = socket.send_buffer_size().ok(),
        "UDP socket buffers"
    );
    socket.bind(&addr.into()).map_err(EndpointError::Bind)?;
    Ok(socket.into())
}

/// Builds the node's QUIC endpoint on a bound socket: it accepts connections presenting a
/// cluster certificate and dials with ours. Must run inside a tokio runtime.
pub fn endpoint(
    socket: std::net::UdpSocket,
    tls: &NodeTls,
    config: &EndpointConfig,
) -> Result<quinn::Endpoint, EndpointError> {
    let socket = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)
        .map_err(EndpointError::Bind)?;
    endpoint_on(socket, tls, config)
}

/// [`endpoint`] on any quinn socket (such as the `chaos` feature's `chaos::FaultySocket`).
pub fn endpoint_on(
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    tls: &NodeTls,
    config: &EndpointConfig,
) -> Result<quinn::Endpoint, EndpointError> {
    let transport = config.transport()?;
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server.clone())
        .map_err(|e| SecurityError::Load(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    server
        .max_incoming(config.max_incoming)
        .incoming_buffer_size(config.incoming_buffer)
        .incoming_buffer_size_total(
            config
                .incoming_buffer
                .saturating_mul(config.max_incoming as u64),
        );
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client.clone())
        .map_err(|e| SecurityError::Load(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    let mut endpoint_config = quinn::EndpointConfig::default();
    // Every QUIC packet then has the fixed bit (0x40) set, which is how the shared port tells it
    // from a gossip datagram (see `crate::socket`).
    endpoint_config.grease_quic_bit(false);
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(EndpointError::Bind)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Why the endpoint could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The UDP port could not be bound.
    #[error("bind: {0}")]
    Bind(std::io::Error),
    /// The TLS configuration was refused.
    #[error(transparent)]
    Security(#[from] SecurityError),
}
