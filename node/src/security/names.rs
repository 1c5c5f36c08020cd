//! Names on the wire: the cluster server name, ALPN, and the DNS name that carries a node's
//! advertised address in its certificate, read back from a peer's certificate.

use std::net::{IpAddr, SocketAddr};

use rustls::pki_types::CertificateDer;

/// The server name every mesh connection asks for; every node certificate carries it.
pub const CLUSTER_SERVER_NAME: &str = "mesh.cluster";
/// ALPN protocol of mesh connections.
pub const ALPN: &[u8] = b"mesh/1";

/// The DNS name that encodes `addr` in a node certificate: `127-0-0-1-7946.node.mesh` for IPv4,
/// `v6-<32 hex digits>-<port>.node.mesh` for IPv6.
pub fn addr_dns_name(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            format!(
                "{}-{}-{}-{}-{}.node.mesh",
                o[0],
                o[1],
                o[2],
                o[3],
                addr.port()
            )
        }
        IpAddr::V6(ip) => {
            let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
            format!("v6-{hex}-{}.node.mesh", addr.port())
        }
    }
}

pub(super) fn parse_addr_dns_name(name: &str) -> Option<SocketAddr> {
    let label = name.strip_suffix(".node.mesh")?;
    if let Some(rest) = label.strip_prefix("v6-") {
        let (hex, port) = rest.split_once('-')?;
        if hex.len() != 32 {
            return None;
        }
        let mut o = [0u8; 16];
        for (i, b) in o.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        return Some(SocketAddr::new(IpAddr::from(o), port.parse().ok()?));
    }
    let parts: Vec<&str> = label.split('-').collect();
    let [a, b, c, d, port] = parts[..] else {
        return None;
    };
    let ip = [a, b, c, d].map(|p| p.parse::<u8>().ok());
    let ip = [ip[0]?, ip[1]?, ip[2]?, ip[3]?];
    Some(SocketAddr::new(IpAddr::from(ip), port.parse().ok()?))
}

/// The advertised addresses named in a (verified) peer certificate.
pub fn peer_addrs(cert: &CertificateDer<'_>) -> Vec<SocketAddr> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee
            .valid_dns_names()
            .filter_map(parse_addr_dns_name)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The single advertised address of the peer of `conn`, from its certificate. `None` if the
/// certificate names no address or several.
pub fn peer_addr(conn: &quinn::Connection) -> Option<SocketAddr> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    match peer_addrs(certs.first()?)[..] {
        [one] => Some(one),
        _ => None,
    }
}
