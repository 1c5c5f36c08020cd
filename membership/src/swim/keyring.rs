//! The gossip keyring: 256-bit keys ([`GossipKey`]) named by a 4-byte [`KeyId`], the
//! [`Keyring`] (the primary seals, every installed key opens) and the [`NonceSource`] nonces are
//! drawn from.
//!
//! The shape is memberlist's `keyring.go` (install, use, remove; the primary cannot be removed),
//! with one change: a sealed datagram names its key by id, so a receiver opens it with one key
//! instead of trying each in turn.

use std::fmt;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of a [`GossipKey`].
pub const KEY_LEN: usize = 32;
/// Bytes of a [`KeyId`].
pub const KEY_ID_LEN: usize = 4;

/// A 256-bit AES-GCM key that seals membership datagrams. Its `Debug` shows only its [`KeyId`].
#[derive(Clone)]
pub struct GossipKey([u8; KEY_LEN]);

impl GossipKey {
    /// The key made of these 32 bytes (which should be uniformly random, or the output of a KDF).
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key made of `bytes`, if there are exactly 32 of them.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyringError> {
        <[u8; KEY_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| KeyringError::KeyLength(bytes.len()))
    }

    /// The key's id: the first 4 bytes of SHA-256 of its 32 bytes.
    pub fn id(&self) -> KeyId {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&d.as_ref()[..KEY_ID_LEN]);
        KeyId(id)
    }

    /// The key's bytes, for whoever must store it. Handle with care.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl From<[u8; KEY_LEN]> for GossipKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GossipKey({})", self.id())
    }
}

/// The name of a [`GossipKey`] on the wire: the first 4 bytes of SHA-256 of the key. Public: it
/// says which key sealed a datagram, nothing about the key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a keyring operation was refused. The keyring is unchanged whenever one is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// A key must be exactly 32 bytes.
    #[error("a gossip key is 32 bytes, not {0}")]
    KeyLength(usize),
    /// The key is not installed.
    #[error("key {0} is not installed")]
    NotInstalled(KeyId),
    /// The primary key seals every datagram: make another key primary first.
    #[error("key {0} is the primary key: use another key before removing it")]
    RemovePrimary(KeyId),
    /// Another installed key has the same id (a 1 in 2^32 chance for random keys).
    #[error("another installed key has the id {0}")]
    IdCollision(KeyId),
    /// No keyring is configured (the node runs unsealed).
    #[error("no keyring is configured")]
    NoKeyring,
}

/// An installed key: its bytes, its id, and the expanded AES-GCM key.
#[derive(Clone)]
struct Entry {
    key: GossipKey,
    id: KeyId,
    aead: LessSafeKey,
}

impl Entry {
    fn new(key: GossipKey) -> Self {
        let id = key.id();
        // `new` fails only for a key of the wrong length, and ours is always 32 bytes.
        let unbound = UnboundKey::new(&AES_256_GCM, &key.0).unwrap_or_else(|_| {
            unreachable!("AES-256-GCM takes a 32-byte key");
        });
        Self {
            key,
            id,
            aead: LessSafeKey::new(unbound),
        }
    }

    fn is(&self, key: &GossipKey) -> bool {
        self.key.0 == key.0
    }
}

/// The keys a node seals and opens membership datagrams with: the **primary** seals every
/// datagram sent, and **every** installed key (primary and others) opens.
///
/// Rotation, as with memberlist and Consul: [`install`](Self::install) the new key on every node
/// (all now open it), [`use_primary`](Self::use_primary) it on every node (all now seal with it),
/// then [`remove`](Self::remove) the old one everywhere. `Debug` prints key ids, never key bytes.
///
/// # Examples
///
/// ```
/// use mesh_membership::swim::{GossipKey, Keyring};
///
/// let (old, new) = (GossipKey::new([1; 32]), GossipKey::new([2; 32]));
/// let mut ring = Keyring::new(old.clone());
/// ring.install(new.clone()).unwrap();
/// ring.use_primary(&new).unwrap();
/// ring.remove(&old).unwrap();
/// assert_eq!(ring.ids(), vec![new.id()]);
/// assert!(!format!("{ring:?}").contains("0202"));
/// ```
#[derive(Clone)]
pub struct Keyring {
    primary: Entry,
    others: Vec<Entry>,
}

impl Keyring {
    /// A keyring holding only `primary`.
    pub fn new(primary: GossipKey) -> Self {
        Self {
            primary: Entry::new(primary),
            others: Vec::new(),
        }
    }

    /// A keyring sealing with `primary` and also opening with `others` (duplicates of the
    /// primary or of each other are ignored).
    pub fn with_others(
        primary: GossipKey,
        others: impl IntoIterator<Item = GossipKey>,
    ) -> Result<Self, KeyringError> {
        let mut ring = Self::new(primary);
        for k in others {
            ring.install(k)?;
        }
        Ok(ring)
    }

    /// Installs `key` for opening (not sealing). Installing a key already held does nothing.
    pub fn install(&mut self, key: GossipKey) -> Result<(), KeyringError> {
        let id = key.id();
        let held = self.entries().find(|e| e.id == id).map(|e| e.is(&key));
        match held {
            Some(true) => Ok(()),
            Some(false) => Err(KeyringError::IdCollision(id)),
            None => {
                self.others.push(Entry::new(key));
                Ok(())
            }
        }
    }

    /// Makes the installed `key` the primary: it seals from now on, and the previous primary
    /// stays installed for opening.
    pub fn use_primary(&mut self, key: &GossipKey) -> Result<(), KeyringError> {
        if self.primary.is(key) {
            return Ok(());
        }
        let at = self
            .others
            .iter()
            .position(|e| e.is(key))
            .ok_or(KeyringError::NotInstalled(key.id()))?;
        std::mem::swap(&mut self.primary, &mut self.others[at]);
        Ok(())
    }

    /// Removes `key`. The primary cannot be removed.
    pub fn remove(&mut self, key: &GossipKey) -> Result<(), KeyringError> {
        if self.primary.is(key) {
            return Err(KeyringError::RemovePrimary(self.primary.id));
        }
        let at = self
            .others
            .iter()
            .position(|e| e.is(key))
            .ok_or(KeyringError::NotInstalled(key.id()))?;
        self.others.remove(at);
        Ok(())
    }

    /// The id of the key that seals.
    pub fn primary_id(&self) -> KeyId {
        self.primary.id
    }

    /// The ids of every installed key, the primary first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.entries().map(|e| e.id).collect()
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        std::iter::once(&self.primary).chain(&self.others)
    }

    /// The primary's id and AEAD key, to seal with.
    pub(crate) fn sealer(&self) -> (KeyId, &LessSafeKey) {
        (self.primary.id, &self.primary.aead)
    }

    /// The AEAD key named `id`, if installed, to open with.
    pub(crate) fn opener(&self, id: KeyId) -> Option<&LessSafeKey> {
        self.entries().find(|e| e.id == id).map(|e| &e.aead)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary.id)
            .field(
                "others",
                &self.others.iter().map(|e| e.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Where the 96-bit nonce of each sealed datagram comes from.
///
/// Nonces are random per datagram, as in memberlist. AES-GCM's security rests on a nonce never
/// repeating under one key, across every node holding that key: production must use
/// [`NonceSource::system`] (the default everywhere), the operating system's CSPRNG.
pub struct NonceSource(Nonces);

enum Nonces {
    System(SystemRandom),
    Seeded(SmallRng),
    #[cfg(test)]
    Fixed([u8; NONCE_LEN]),
}

impl NonceSource {
    /// The operating system's CSPRNG (`ring::rand::SystemRandom`): the only source for real keys.
    pub fn system() -> Self {
        Self(Nonces::System(SystemRandom::new()))
    }

    /// Nonces from a PRNG seeded by `seed`, for **simulations only**: they repeat for every run and
    /// every node with the same seed, which breaks AES-GCM for any key that matters. It exists so
    /// that a seeded simulation stays reproducible, byte for byte. Never use it with a real key.
    pub fn seeded_for_simulation(seed: u64) -> Self {
        Self(Nonces::Seeded(SmallRng::seed_from_u64(seed)))
    }

    /// Always the same nonce: test vectors only.
    #[cfg(test)]
    pub(crate) fn fixed(nonce: [u8; NONCE_LEN]) -> Self {
        Self(Nonces::Fixed(nonce))
    }

    /// The next nonce, or `None` if the system's CSPRNG failed.
    pub(crate) fn next(&mut self) -> Option<[u8; NONCE_LEN]> {
        let mut n = [0u8; NONCE_LEN];
        match &mut self.0 {
            Nonces::System(r) => r.fill(&mut n).ok()?,
            Nonces::Seeded(r) => rand::Rng::fill_bytes(r, &mut n),
            #[cfg(test)]
            Nonces::Fixed(f) => n = *f,
        }
        Some(n)
    }
}

impl Default for NonceSource {
    /// [`NonceSource::system`].
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Nonces::System(_) => "NonceSource::System",
            Nonces::Seeded(_) => "NonceSource::SeededForSimulation",
            #[cfg(test)]
            Nonces::Fixed(_) => "NonceSource::Fixed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> GossipKey {
        GossipKey::new([b; KEY_LEN])
    }

    #[test]
    fn key_id_is_sha256_prefix() {
        // SHA-256 of 32 zero bytes starts 66687aad.
        assert_eq!(key(0).id().to_string(), "66687aad");
        assert_eq!(
            GossipKey::from_slice(&[0; 31]).err(),
            Some(KeyringError::KeyLength(31))
        );
    }

    #[test]
    fn install_use_remove() {
        let (a, b, c) = (key(1), key(2), key(3));
        let mut ring = Keyring::new(a.clone());
        assert_eq!(ring.remove(&a), Err(KeyringError::RemovePrimary(a.id())));
        assert_eq!(
            ring.use_primary(&b),
            Err(KeyringError::NotInstalled(b.id()))
        );
        assert_eq!(ring.remove(&b), Err(KeyringError::NotInstalled(b.id())));
        ring.install(b.clone()).unwrap();
        ring.install(b.clone()).unwrap();
        ring.install(c.clone()).unwrap();
        assert_eq!(ring.ids(), vec![a.id(), b.id(), c.id()]);
        ring.use_primary(&b).unwrap();
        assert_eq!(ring.primary_id(), b.id());
        assert!(ring.opener(a.id()).is_some(), "the old primary still opens");
        ring.remove(&a).unwrap();
        assert!(ring.opener(a.id()).is_none());
        assert_eq!(ring.ids(), vec![b.id(), c.id()]);
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let k = GossipKey::new([0xAB; KEY_LEN]);
        let ring = Keyring::with_others(k.clone(), [key(0xCD)]).unwrap();
        for s in [format!("{k:?}"), format!("{ring:?}"), format!("{ring:#?}")] {
            let lower = s.to_lowercase();
            assert!(!lower.contains("abab") && !lower.contains("cdcd"), "{s}");
            assert!(!s.contains("171, 171") && !s.contains("205, 205"), "{s}");
        }
    }

    #[test]
    fn seeded_nonces_replay_system_nonces_do_not() {
        let (mut a, mut b) = (
            NonceSource::seeded_for_simulation(7),
            NonceSource::seeded_for_simulation(7),
        );
        assert_eq!(a.next(), b.next());
        let mut s = NonceSource::system();
        assert_ne!(s.next(), s.next());
    }
}
