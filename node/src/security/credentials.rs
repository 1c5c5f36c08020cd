//! [`Credentials`]: what admits a node to a cluster, in either mode, and the mutual-TLS
//! configurations ([`NodeTls`]) built from them.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::security::ca::CertificateAuthority;
use crate::security::error::SecurityError;
use crate::security::keys::{ClusterKey, GossipSecret};
use crate::security::names::ALPN;

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
        roots.add(ca_cert.clone())?;
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
            ca_cert,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// A node's TLS configurations, both sides of mutual TLS.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// The cluster CA certificate both sides verify against (derived from the key, or given).
    pub ca_cert: CertificateDer<'static>,
    /// For accepted connections: presents our certificate, requires a cluster client certificate.
    pub server: Arc<rustls::ServerConfig>,
    /// For outgoing connections: verifies the peer chains to the cluster CA, presents ours.
    pub client: Arc<rustls::ClientConfig>,
}
