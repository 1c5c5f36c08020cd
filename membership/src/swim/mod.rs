//! What foca needs from us: the member identity, a binary codec for SWIM headers and member
//! updates, the datagram envelope and the keyring that seals it, and the custom-broadcast handler
//! that carries registry items.
//!
//! All decoders here take bytes from the network: they check lengths before every read and return
//! [`SwimDecodeError`], never panic.
//!
//! - `envelope`: the datagram envelope (magic, version, kind; cluster tag in clear, or sealed with
//!   AES-256-GCM) checked before foca sees a packet;
//! - `keyring`: gossip keys, the [`Keyring`] that seals and opens envelopes, and nonces;
//! - `codec`: the member identity [`SwimId`] and [`SwimCodec`], foca's wire codec;
//! - `broadcast`: registry [`Item`]s (digests only) and [`RegistryBroadcasts`], foca's
//!   custom-broadcast handler.

mod broadcast;
mod codec;
mod envelope;
mod keyring;

pub use broadcast::{lock, Item, ItemError, ItemKey, RegistryBroadcasts, Shared, INBOX_CAPACITY};
pub use codec::{decode_header_src, get_id, SwimCodec, SwimDecodeError, SwimId};
pub use envelope::{
    cluster_tag, open_sealed, open_unsealed, write_sealed, write_unsealed, Envelope, EnvelopeError,
    SealError, AEAD_TAG_LEN, DATAGRAM_MAGIC, DATAGRAM_VERSION, KIND_SEALED, KIND_UNSEALED,
    MAX_OVERHEAD, SEALED_HEADER_LEN, SEALED_OVERHEAD, UNSEALED_OVERHEAD,
};
pub use keyring::{GossipKey, KeyId, Keyring, KeyringError, NonceSource, KEY_ID_LEN, KEY_LEN};
