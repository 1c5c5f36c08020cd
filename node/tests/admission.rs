//! Mutual TLS on real QUIC endpoints on loopback: cluster members connect and learn each other's
//! advertised address from the certificate; a wrong key or another CA's certificate is refused in
//! both directions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_node::endpoint::{bind_socket, endpoint as quic_endpoint, EndpointConfig};
use mesh_node::security::{
    peer_addr, CertificateAuthority, Credentials, GossipSecret, CLUSTER_SERVER_NAME,
};

/// These tests are about TLS admission only; gossip is not involved.
fn gossip() -> GossipSecret {
    GossipSecret::from_bytes([1; 32])
}

const LIMIT: Duration = Duration::from_secs(10);

/// A socket on loopback: bound first, so that the certificate can name its address.
fn socket() -> (std::net::UdpSocket, SocketAddr) {
    let s = bind_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

/// An endpoint whose certificate names its own address.
fn endpoint(creds: impl Fn(SocketAddr) -> Credentials) -> quinn::Endpoint {
    let (s, addr) = socket();
    let tls = creds(addr).tls("mesh", addr).unwrap();
    quic_endpoint(s, &tls, &EndpointConfig::default()).unwrap()
}

/// Connects `a` to `b`; returns what each side saw: the connection, or the error.
async fn connect(
    a: &quinn::Endpoint,
    b: &quinn::Endpoint,
) -> (
    Result<quinn::Connection, String>,
    Result<quinn::Connection, String>,
) {
    let b_addr = b.local_addr().unwrap();
    let dial = async {
        let c = a
            .connect(b_addr, CLUSTER_SERVER_NAME)
            .map_err(|e| e.to_string())?;
        let conn = c.await.map_err(|e| e.to_string())?;
        // With mutual TLS the client learns of a refused client certificate only when it uses
        // the connection: open a stream and wait for the server to answer or close.
        let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
        tx.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tx.finish().map_err(|e| e.to_string())?;
        let echo = rx.read_to_end(16).await.map_err(|e| e.to_string())?;
        assert_eq!(echo, b"ping");
        Ok(conn)
    };
    let accept = async {
        let incoming = b.accept().await.ok_or("endpoint closed")?;
        let conn = incoming.await.map_err(|e| e.to_string())?;
        let (mut tx, mut rx) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let got = rx.read_to_end(16).await.map_err(|e| e.to_string())?;
        tx.write_all(&got).await.map_err(|e| e.to_string())?;
        tx.finish().map_err(|e| e.to_string())?;
        Ok::<_, String>(conn)
    };
    let both = async { tokio::join!(dial, accept) };
    tokio::time::timeout(LIMIT, both)
        .await
        .unwrap_or_else(|_| (Err("timed out".into()), Err("timed out".into())))
}

/// Both sides failed, and because of a certificate, not a timeout or anything else.
fn assert_refused(
    case: &str,
    dialed: &Result<quinn::Connection, String>,
    accepted: &Result<quinn::Connection, String>,
) {
    eprintln!("{case}: dialer {dialed:?}, acceptor {accepted:?}");
    let (Err(d), Err(a)) = (dialed, accepted) else {
        panic!("{case}: a side connected: dialer {dialed:?}, acceptor {accepted:?}");
    };
    for e in [d, a] {
        assert!(!e.contains("timed out"), "{case}: {e}");
    }
    assert!(
        [d, a]
            .iter()
            .any(|e| e.contains("certificate") || e.contains("Certificate")),
        "{case}: no certificate error: {d} / {a}"
    );
}

#[tokio::test]
async fn same_cluster_key_connects_and_binds_the_peer_address() {
    let a = endpoint(|_| Credentials::key("s3cret").unwrap());
    let b = endpoint(|_| Credentials::key("s3cret").unwrap());
    let (dialed, accepted) = connect(&a, &b).await;
    let (dialed, accepted) = (dialed.unwrap(), accepted.unwrap());
    // Each side reads the other's advertised address from its certificate.
    assert_eq!(peer_addr(&dialed), Some(b.local_addr().unwrap()));
    assert_eq!(peer_addr(&accepted), Some(a.local_addr().unwrap()));
}

#[tokio::test]
async fn a_wrong_cluster_key_is_refused_both_ways() {
    let good = endpoint(|_| Credentials::key("s3cret").unwrap());
    let bad = endpoint(|_| Credentials::key("guess").unwrap());
    let (dialed, accepted) = connect(&bad, &good).await;
    assert_refused("bad dialing good", &dialed, &accepted);
    let (dialed, accepted) = connect(&good, &bad).await;
    assert_refused("good dialing bad", &dialed, &accepted);
}

#[tokio::test]
async fn cluster_ca_admits_its_nodes_and_refuses_another_ca() {
    let ca = CertificateAuthority::generate("cluster CA").unwrap();
    let other = CertificateAuthority::generate("rogue CA").unwrap();
    let member = |ca: &CertificateAuthority| {
        let ca_cert = ca.cert_der().clone();
        let (s, addr) = socket();
        let node = ca.issue("n", &[addr]).unwrap();
        (
            s,
            addr,
            Credentials::ca(ca_cert, node.cert, node.key, gossip()),
        )
    };
    let build = |(s, addr, creds): (std::net::UdpSocket, SocketAddr, Credentials)| {
        let tls = creds.tls("mesh", addr).unwrap();
        quic_endpoint(s, &tls, &EndpointConfig::default()).unwrap()
    };
    let a = build(member(&ca));
    let b = build(member(&ca));
    let (dialed, accepted) = connect(&a, &b).await;
    assert_eq!(peer_addr(&dialed.unwrap()), Some(b.local_addr().unwrap()));
    assert_eq!(peer_addr(&accepted.unwrap()), Some(a.local_addr().unwrap()));

    // A node whose certificate comes from another CA (trusting that CA) is refused both ways.
    let rogue = build(member(&other));
    let (dialed, accepted) = connect(&rogue, &a).await;
    assert_refused("rogue dialing", &dialed, &accepted);
    let (dialed, accepted) = connect(&a, &rogue).await;
    assert_refused("dialing rogue", &dialed, &accepted);

    // A node that trusts our CA but presents a certificate of the other CA is refused too.
    let mixed = {
        let (s, addr) = socket();
        let node = other.issue("n", &[addr]).unwrap();
        build((
            s,
            addr,
            Credentials::ca(ca.cert_der().clone(), node.cert, node.key, gossip()),
        ))
    };
    let (dialed, accepted) = connect(&mixed, &a).await;
    assert_refused("mixed dialing", &dialed, &accepted);
}

#[tokio::test]
async fn a_ca_rebuilt_from_its_key_file_issues_certificates_that_chain() {
    let ca = CertificateAuthority::generate("mesh cluster CA").unwrap();
    let (_, key_pem) = ca.to_pem();
    let rebuilt = CertificateAuthority::from_key_pem("mesh cluster CA", &key_pem).unwrap();
    let node = |issuer: &CertificateAuthority| {
        let (s, addr) = socket();
        let cert = issuer.issue("n", &[addr]).unwrap();
        let tls = Credentials::ca(ca.cert_der().clone(), cert.cert, cert.key, gossip())
            .tls("mesh", addr)
            .unwrap();
        quic_endpoint(s, &tls, &EndpointConfig::default()).unwrap()
    };
    let (a, b) = (node(&ca), node(&rebuilt));
    let (dialed, accepted) = connect(&a, &b).await;
    assert_eq!(peer_addr(&dialed.unwrap()), Some(b.local_addr().unwrap()));
    assert_eq!(peer_addr(&accepted.unwrap()), Some(a.local_addr().unwrap()));
}
