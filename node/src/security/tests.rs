//! Unit tests of the credentials: PEM, address names, key derivation, the gossip secret's test
//! vector, certificates that name their node.

use std::net::SocketAddr;

use super::ca::pem_encode;
use super::names::parse_addr_dns_name;
use super::*;

#[test]
fn pem_is_standard_base64() {
    for (raw, b64) in [
        (&b"hello"[..], "aGVsbG8="),
        (b"hi", "aGk="),
        (b"abc", "YWJj"),
        (b"", ""),
    ] {
        let pem = pem_encode("X", raw);
        assert_eq!(
            pem,
            format!(
                "-----BEGIN X-----\n{}-----END X-----\n",
                if b64.is_empty() {
                    String::new()
                } else {
                    format!("{b64}\n")
                }
            )
        );
    }
}

#[test]
fn addr_names_round_trip() {
    for a in [
        "127.0.0.1:7946",
        "10.1.2.3:1",
        "[::1]:9000",
        "[fe80::1:2]:65535",
    ] {
        let a: SocketAddr = a.parse().unwrap();
        let name = addr_dns_name(a);
        assert!(name.split('.').all(|l| l.len() <= 63), "{name}");
        assert_eq!(parse_addr_dns_name(&name), Some(a));
    }
    assert_eq!(parse_addr_dns_name("mesh.cluster"), None);
    assert_eq!(parse_addr_dns_name("1-2-3.node.mesh"), None);
    assert_eq!(parse_addr_dns_name("v6-zz-1.node.mesh"), None);
}

#[test]
fn the_same_key_derives_the_same_ca_and_another_key_another() {
    let k1 = ClusterKey::new("correct horse").unwrap();
    let k2 = ClusterKey::new("battery staple").unwrap();
    let a = CertificateAuthority::derived(&k1, "mesh").unwrap();
    let b = CertificateAuthority::derived(&k1, "mesh").unwrap();
    let c = CertificateAuthority::derived(&k2, "mesh").unwrap();
    let d = CertificateAuthority::derived(&k1, "other").unwrap();
    assert_eq!(a.key.public_key_raw(), b.key.public_key_raw());
    assert_ne!(a.key.public_key_raw(), c.key.public_key_raw());
    assert_ne!(a.key.public_key_raw(), d.key.public_key_raw());
    assert!(matches!(ClusterKey::new(""), Err(SecurityError::EmptyKey)));
    assert_eq!(format!("{k1:?}"), "ClusterKey(..)");
}

/// The vector of `docs/PROTOCOL.md` §1.2.
#[test]
fn the_gossip_secret_has_a_test_vector() {
    let g = Credentials::key("correct horse")
        .unwrap()
        .gossip_secrets("mesh");
    assert_eq!(
        g[0].to_hex(),
        "f3332de40301b34496d3f59d399deebd6c25fa286958f6ed2fe0544545508c22"
    );
}

#[test]
fn the_gossip_secret_follows_the_key_and_the_cluster_and_hides_itself() {
    let g = |k: &str, c: &str| Credentials::key(k).unwrap().gossip_secrets(c);
    assert_eq!(g("correct horse", "mesh"), g("correct horse", "mesh"));
    assert_ne!(g("correct horse", "mesh"), g("battery staple", "mesh"));
    assert_ne!(g("correct horse", "mesh"), g("correct horse", "other"));
    // Not the CA seed itself: knowing the gossip secret tells nothing of the CA key.
    let k = ClusterKey::new("correct horse").unwrap();
    assert_ne!(g("correct horse", "mesh")[0].as_bytes(), &k.ca_seed("mesh"));
    let s = GossipSecret::generate().unwrap();
    assert_eq!(GossipSecret::from_hex(&s.to_hex()).unwrap(), s);
    assert!(GossipSecret::from_hex("abc").is_err());
    assert!(GossipSecret::from_hex(&"é".repeat(32)).is_err());
    assert_eq!(format!("{s:?}"), "GossipSecret(..)");
}

#[test]
fn issued_certificates_name_the_node_address() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let addr: SocketAddr = "127.0.0.1:7946".parse().unwrap();
    let node = ca.issue("n1", &[addr]).unwrap();
    assert_eq!(peer_addrs(&node.cert), vec![addr]);
    let (cert_pem, key_pem) = ca.to_pem();
    assert!(cert_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(cert_pem.ends_with("-----END CERTIFICATE-----\n"));
    assert!(key_pem.contains("PRIVATE KEY"));
    // A CA rebuilt from its key issues certificates that chain to the original CA
    // certificate, and PEM files load back as credentials that connect (tested in
    // tests/admission.rs); here: the files parse.
    let again = CertificateAuthority::from_key_pem("test CA", &key_pem).unwrap();
    let issued = again.issue("n2", &[addr]).unwrap();
    let (c, k) = issued.to_pem();
    let dir = std::env::temp_dir().join(format!("mesh-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cap, cp, kp) = (dir.join("ca.pem"), dir.join("n.pem"), dir.join("n.key"));
    std::fs::write(&cap, &cert_pem).unwrap();
    std::fs::write(&cp, c).unwrap();
    std::fs::write(&kp, k).unwrap();
    let gp = dir.join("gossip.key");
    let gossip = GossipSecret::generate().unwrap();
    std::fs::write(&gp, format!("{}\n", gossip.to_hex())).unwrap();
    let creds = Credentials::ca_from_pem_files(&cap, &cp, &kp, &gp).unwrap();
    creds.tls("mesh", addr).unwrap();
    assert_eq!(creds.gossip_secrets("mesh"), vec![gossip]);
    std::fs::remove_dir_all(&dir).unwrap();
}
