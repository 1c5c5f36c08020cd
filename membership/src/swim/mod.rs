//! What foca needs from us: the member identity, a binary codec for SWIM headers and member
//! updates, the datagram envelope, and the custom-broadcast handler that carries registry items.
//!
//! All decoders here take bytes from the network: they check lengths before every read and return
//! [`SwimDecodeError`], never panic.
//!
//! - `envelope`: the datagram envelope (magic, version, cluster tag) checked before foca sees a
//!   packet;
//! - `codec`: the member identity [`SwimId`] and [`SwimCodec`], foca's wire codec;
//! - `broadcast`: registry [`Item`]s (digests only) and [`RegistryBroadcasts`], foca's
//!   custom-broadcast handler.

mod broadcast;
mod codec;
mod envelope;

pub use broadcast::{lock, Item, ItemError, ItemKey, RegistryBroadcasts, Shared, INBOX_CAPACITY};
pub use codec::{decode_header_src, get_id, SwimCodec, SwimDecodeError, SwimId};
pub use envelope::{
    cluster_tag, open_envelope, write_envelope, EnvelopeError, DATAGRAM_MAGIC, DATAGRAM_VERSION,
    ENVELOPE_LEN,
};
