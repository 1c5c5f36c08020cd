//! The shared secrets: a cluster key ([`ClusterKey`]), stretched into the cluster CA's seed, and
//! the gossip secret ([`GossipSecret`]) that seals gossip datagrams.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::security::error::SecurityError;

/// PBKDF2 rounds that stretch a cluster key. Deriving takes tens of milliseconds in a release
/// build and happens once per process and key.
pub const KDF_ITERATIONS: u32 = 100_000;
/// Environment variable the binary and the examples read the cluster key from.
pub const CLUSTER_KEY_ENV: &str = "MESH_CLUSTER_KEY";

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
    pub(super) fn ca_seed(&self, cluster: &str) -> [u8; 32] {
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
/// In cluster-key mode every node derives it from the cluster key ([`Credentials::gossip_secrets`](crate::security::Credentials::gossip_secrets));
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
    pub(super) fn derived(key: &ClusterKey, cluster: &str) -> Self {
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
