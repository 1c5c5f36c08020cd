//! Cluster credentials and the mutual TLS that admits only cluster members.
//!
//! Both modes end in the same check: every node presents a certificate signed by the **cluster CA**
//! and verifies its peer's certificate against that CA, in both directions (mutual TLS).
//!
//! - **Cluster key** ([`Credentials::key`]): one shared secret. It is stretched with
//!   PBKDF2-HMAC-SHA256 ([`KDF_ITERATIONS`] rounds, salted with the cluster name) into the seed of
//!   an Ed25519 key, the cluster CA's key. Every node derives the same CA from the secret and signs
//!   an ephemeral certificate of its own at each start; a peer without the secret cannot produce a
//!   certificate the others accept.
//! - **Cluster CA** ([`Credentials::ca`]): an operator's CA signs each node's certificate (see
//!   [`CertificateAuthority`]); nodes hold only their own certificate and key plus the CA
//!   certificate.
//!
//! A node certificate carries two DNS names: [`CLUSTER_SERVER_NAME`], which every connection uses
//! as its server name, and [`addr_dns_name`] of the node's advertised address. The address in the
//! peer's certificate is what the node attributes the connection's gossip to, so no member can
//! speak for another ([`peer_addr`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

/// The server name every mesh connection asks for; every node certificate carries it.
pub const CLUSTER_SERVER_NAME: &str = "mesh.cluster";
/// ALPN protocol of mesh connections.
pub const ALPN: &[u8] = b"mesh/1";
/// PBKDF2 rounds that stretch a cluster key. Deriving takes tens of milliseconds in a release
/// build and happens once per process and key.
pub const KDF_ITERATIONS: u32 = 100_000;
/// Environment variable the binary and the examples read the cluster key from.
pub const CLUSTER_KEY_ENV: &str = "MESH_CLUSTER_KEY";

/// Why credentials could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// An empty cluster key.
    #[error("the cluster key is empty")]
    EmptyKey,
    /// Generating or signing a certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration (for example a certificate that is not a valid CA).
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A certificate or key file could not be read or parsed.
    #[error("{0}")]
    Load(String),
}

/// The secret of a cluster-key cluster. Its `Debug` output never shows the secret.
#[derive(Clone)]
pub struct ClusterKey(Arc<Vec<u8>>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A key from any non-empty string or bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, SecurityError> {
        let s = secret.as_ref();
        if s.is_empty() {
            return Err(SecurityError::EmptyKey);
        }
        Ok(Self(Arc::new(s.to_vec())))
    }

    /// The key in [`CLUSTER_KEY_ENV`], if set.
    pub fn from_env() -> Option<Result<Self, SecurityError>> {
        std::env::var_os(CLUSTER_KEY_ENV).map(|v| Self::new(v.as_encoded_bytes()))
    }

    /// The key in a file (surrounding whitespace ignored).
    pub fn from_file(path: &std::path::Path) -> Result<Self, SecurityError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SecurityError::Load(format!("{}: {e}", path.display())))?;
        Self::new(text.trim())
    }

    /// The 32-byte seed of the cluster CA key: PBKDF2-HMAC-SHA256 of the secret, salted with the
    /// cluster name. Cached per process: a test that starts fifty nodes derives it once.
    fn ca_seed(&self, cluster: &str) -> [u8; 32] {
        type Seeds = HashMap<(Vec<u8>, String), [u8; 32]>;
        static CACHE: OnceLock<Mutex<Seeds>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let key = (self.0.to_vec(), cluster.to_owned());
        if let Some(seed) = cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return *seed;
        }
        let mut seed = [0u8; 32];
        let salt = format!("mesh cluster key v1\0{cluster}");
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(KDF_ITERATIONS).unwrap_or(NonZeroU32::MIN),
            salt.as_bytes(),
            &self.0,
            &mut seed,
        );
        cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, seed);
        seed
    }
}

/// The 256-bit secret that seals gossip datagrams (AES-256-GCM, see `docs/PROTOCOL.md`).
///
/// In cluster-key mode every node derives it from the cluster key ([`Credentials::gossip_secrets`]);
/// in cluster-CA mode it is shared like Consul's `encrypt` key: `mesh-node ca init` writes one
/// (`gossip.key`) beside the CA, and every node is given it. Its `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipSecret([u8; 32]);

impl std::fmt::Debug for GossipSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipSecret(..)")
    }
}

impl GossipSecret {
    /// A secret from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A new random secret from the operating system's RNG.
    pub fn generate() -> Result<Self, SecurityError> {
        let mut raw = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| SecurityError::Load("the OS random number generator failed".into()))?;
        Ok(Self(raw))
    }

    /// A secret from 64 hexadecimal digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, SecurityError> {
        let text = text.trim();
        let bad = || SecurityError::Load("a gossip key is 64 hexadecimal digits".into());
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut raw = [0u8; 32];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(raw))
    }

    /// The secret in a file of 64 hexadecimal digits.
    pub fn from_file(path: &std::path::Path) -> Result<Self, SecurityError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SecurityError::Load(format!("{}: {e}", path.display())))?;
        Self::from_hex(&text).map_err(|e| SecurityError::Load(format!("{}: {e}", path.display())))
    }

    /// The secret as 64 lowercase hexadecimal digits, as [`from_hex`](Self::from_hex) reads it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The gossip secret of a cluster-key cluster: HKDF-SHA256 of the stretched key (the CA
    /// seed), salt `mesh gossip key v1`, info the cluster name.
    fn derived(key: &ClusterKey, cluster: &str) -> Self {
        use ring::hkdf;
        let seed = key.ca_seed(cluster);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"mesh gossip key v1").extract(&seed);
        let mut raw = [0u8; 32];
        let info = [cluster.as_bytes()];
        // The output length (32) is HKDF-SHA256's own: expand and fill cannot fail.
        if let Ok(okm) = prk.expand(&info, hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut raw);
        }
        Self(raw)
    }
}

/// A cluster CA: issues node certificates. Operators create one with
/// [`generate`](Self::generate) and keep its key offline; a cluster-key cluster derives one from
/// the key.
pub struct CertificateAuthority {
    params: CertificateParams,
    key: KeyPair,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn ca_params(name: &str) -> Result<CertificateParams, SecurityError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl CertificateAuthority {
    /// A new CA with a fresh Ed25519 key.
    pub fn generate(name: &str) -> Result<Self, SecurityError> {
        Self::from_key(ca_params(name)?, KeyPair::generate_for(&PKCS_ED25519)?)
    }

    /// A CA from its key in PEM and its name (the subject common name it was generated with):
    /// certificates it issues chain to the CA certificate that [`generate`](Self::generate) made.
    pub fn from_key_pem(name: &str, key_pem: &str) -> Result<Self, SecurityError> {
        Self::from_key(ca_params(name)?, KeyPair::from_pem(key_pem)?)
    }

    /// The CA of a cluster-key cluster: the same on every node that holds the key.
    fn derived(key: &ClusterKey, cluster: &str) -> Result<Self, SecurityError> {
        // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410, section 7).
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&key.ca_seed(cluster));
        let kp =
            KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(pkcs8), &PKCS_ED25519)?;
        Self::from_key(ca_params(&format!("mesh cluster {cluster}"))?, kp)
    }

    fn from_key(params: CertificateParams, key: KeyPair) -> Result<Self, SecurityError> {
        let cert = params.self_signed(&key)?.der().clone();
        Ok(Self { params, key, cert })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate and key in PEM, for `mesh-node ca init`.
    pub fn to_pem(&self) -> (String, String) {
        let cert = pem_encode("CERTIFICATE", &self.cert);
        (cert, self.key.serialize_pem())
    }

    /// Issues a certificate for the node `name` reachable at `addrs`, with a fresh key.
    pub fn issue(&self, name: &str, addrs: &[SocketAddr]) -> Result<NodeCert, SecurityError> {
        let mut sans = vec![CLUSTER_SERVER_NAME.to_owned()];
        sans.extend(addrs.iter().map(|a| addr_dns_name(*a)));
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let issuer = Issuer::new(self.params.clone(), &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeCert {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        })
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A node's certificate and private key.
#[derive(Debug)]
pub struct NodeCert {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

impl NodeCert {
    /// The certificate and key in PEM.
    pub fn to_pem(&self) -> (String, String) {
        (
            pem_encode("CERTIFICATE", &self.cert),
            pem_encode("PRIVATE KEY", self.key.secret_der()),
        )
    }
}

/// What admits a node to a cluster.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A shared secret; each node signs its own ephemeral certificate.
    Key(ClusterKey),
    /// Certificates from the cluster's CA.
    Ca {
        /// The CA certificate peers must chain to.
        ca_cert: CertificateDer<'static>,
        /// This node's certificate, signed by the CA, naming its advertised address.
        cert: CertificateDer<'static>,
        /// This node's private key.
        key: Arc<PrivateKeyDer<'static>>,
        /// The gossip secrets: the first seals, every one opens (several during a rotation).
        gossip: Vec<GossipSecret>,
    },
}

impl Credentials {
    /// Cluster-key credentials.
    pub fn key(secret: impl AsRef<[u8]>) -> Result<Self, SecurityError> {
        ClusterKey::new(secret).map(Self::Key)
    }

    /// Cluster-CA credentials, with the cluster's gossip secret.
    pub fn ca(
        ca_cert: CertificateDer<'static>,
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
        gossip: GossipSecret,
    ) -> Self {
        Self::Ca {
            ca_cert,
            cert,
            key: Arc::new(key),
            gossip: vec![gossip],
        }
    }

    /// During a gossip key rotation (CA mode): datagrams sealed with `old` still open. Has no
    /// effect in cluster-key mode, whose one gossip secret follows the cluster key.
    pub fn also_open_with(mut self, old: GossipSecret) -> Self {
        if let Self::Ca { gossip, .. } = &mut self {
            if !gossip.contains(&old) {
                gossip.push(old);
            }
        }
        self
    }

    /// The gossip secrets of a node of `cluster`: the first seals, every one opens.
    pub fn gossip_secrets(&self, cluster: &str) -> Vec<GossipSecret> {
        match self {
            Self::Key(k) => vec![GossipSecret::derived(k, cluster)],
            Self::Ca { gossip, .. } => gossip.clone(),
        }
    }

    /// Cluster-CA credentials from files: the CA certificate, this node's certificate and
    /// its private key (PEM), and the gossip secret (64 hex digits).
    pub fn ca_from_pem_files(
        ca_cert: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
        gossip: &std::path::Path,
    ) -> Result<Self, SecurityError> {
        use rustls::pki_types::pem::PemObject;
        let load = |p: &std::path::Path, e: rustls::pki_types::pem::Error| {
            SecurityError::Load(format!("{}: {e}", p.display()))
        };
        Ok(Self::ca(
            CertificateDer::from_pem_file(ca_cert).map_err(|e| load(ca_cert, e))?,
            CertificateDer::from_pem_file(cert).map_err(|e| load(cert, e))?,
            PrivateKeyDer::from_pem_file(key).map_err(|e| load(key, e))?,
            GossipSecret::from_file(gossip)?,
        ))
    }

    /// The rustls configurations of a node of `cluster` advertised at `advertise`.
    pub fn tls(&self, cluster: &str, advertise: SocketAddr) -> Result<NodeTls, SecurityError> {
        let (ca_cert, cert, key) = match self {
            Credentials::Key(k) => {
                let ca = CertificateAuthority::derived(k, cluster)?;
                let node = ca.issue("mesh node", &[advertise])?;
                (ca.cert.clone(), node.cert, node.key)
            }
            Credentials::Ca {
                ca_cert, cert, key, ..
            } => (ca_cert.clone(), cert.clone(), key.clone_key()),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert)?;
        let roots = Arc::new(roots);

        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| SecurityError::Load(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(vec![cert.clone()], key.clone_key())?;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(NodeTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// A node's TLS configurations, both sides of mutual TLS.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// For accepted connections: presents our certificate, requires a cluster client certificate.
    pub server: Arc<rustls::ServerConfig>,
    /// For outgoing connections: verifies the peer chains to the cluster CA, presents ours.
    pub client: Arc<rustls::ClientConfig>,
}

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

fn parse_addr_dns_name(name: &str) -> Option<SocketAddr> {
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

#[cfg(test)]
mod tests {
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
}
