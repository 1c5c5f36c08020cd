//! The gossip keyring of a core: sealing on or off ([`set_keyring`](Membership::set_keyring)),
//! key rotation (install, use, remove), and the nonce source sealed datagrams draw from.

use tracing::info;

use crate::core::Membership;
use crate::swim::{GossipKey, KeyId, Keyring, KeyringError, NonceSource};

impl Membership {
    /// Seals every datagram from now on with the primary key of `keyring`, and accepts only
    /// datagrams sealed with one of its keys (others are counted in [`Stats`](crate::core::Stats) and
    /// dropped); `None` sends and accepts only unsealed datagrams. Datagrams already queued keep
    /// the envelope they were written with.
    ///
    /// Nonces come from the operating system's CSPRNG unless
    /// [`set_nonce_source`](Self::set_nonce_source) says otherwise. Foca's packets are sized for
    /// the sealed envelope in both modes, so this can be called at any time.
    pub fn set_keyring(&mut self, keyring: Option<Keyring>) {
        info!(keyring = ?keyring, "gossip keyring set");
        self.envelope.set_keyring(keyring);
    }

    /// The keyring, if datagrams are sealed.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.envelope.keyring()
    }

    /// The ids of the installed keys, the primary first (empty when unsealed).
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keyring().map(Keyring::ids).unwrap_or_default()
    }

    /// Draws nonces from `nonces` from now on. Only simulations call this, with
    /// [`NonceSource::seeded_for_simulation`]; the default is [`NonceSource::system`].
    pub fn set_nonce_source(&mut self, nonces: NonceSource) {
        self.envelope.set_nonce_source(nonces);
    }

    /// Installs `key` for opening datagrams (the first step of a rotation, on every node).
    pub fn install_key(&mut self, key: GossipKey) -> Result<(), KeyringError> {
        let id = key.id();
        self.keyring_mut()?.install(key)?;
        info!(key = %id, "gossip key installed");
        Ok(())
    }

    /// Seals with the installed `key` from now on (the second step, once every node has it).
    pub fn use_key(&mut self, key: &GossipKey) -> Result<(), KeyringError> {
        self.keyring_mut()?.use_primary(key)?;
        info!(key = %key.id(), "gossip key in use");
        Ok(())
    }

    /// Removes `key`, which must not be the primary (the last step, once every node seals with
    /// the new key).
    pub fn remove_key(&mut self, key: &GossipKey) -> Result<(), KeyringError> {
        self.keyring_mut()?.remove(key)?;
        info!(key = %key.id(), "gossip key removed");
        Ok(())
    }

    fn keyring_mut(&mut self) -> Result<&mut Keyring, KeyringError> {
        self.envelope.keyring_mut().ok_or(KeyringError::NoKeyring)
    }
}
