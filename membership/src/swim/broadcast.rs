//! Registry items carried as foca custom broadcasts ([`Item`], keyed by [`ItemKey`] so a newer
//! version replaces an older one in flight), and [`RegistryBroadcasts`], the handler that hands
//! received items to the core through [`Shared`].
//!
//! Gossip carries **digests only** (owner id and version, 24 bytes for IPv4): a whole record must
//! travel with its owner's proof (a certificate and a signature, about 400 bytes more), which
//! would take most of a datagram. A digest makes its receiver pull the record. Received items are
//! never retransmitted as they are: a node gossips a digest only once it holds (and has checked)
//! the record, so whoever hears a digest can pull the record from its sender.

use std::sync::{Arc, Mutex, PoisonError};

use foca::{BroadcastHandler, Invalidates};
use mesh_protocol::MemberId;

use crate::swim::codec::{get_id, get_u64, get_u8, put_id, SwimDecodeError, SwimId};

/// A registry item carried as a foca custom broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// "`id`'s record is at `version`, and I hold it": receivers holding less pull it.
    Digest {
        /// Record owner.
        id: MemberId,
        /// Current version.
        version: u64,
    },
}

const ITEM_DIGEST: u8 = 1;

impl Item {
    /// The owner and version the item speaks of.
    pub fn key(&self) -> ItemKey {
        match self {
            Item::Digest { id, version } => ItemKey {
                id: *id,
                version: *version,
            },
        }
    }

    /// Encodes the item.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 27 + 8);
        match self {
            Item::Digest { id, version } => {
                out.push(ITEM_DIGEST);
                put_id(id, &mut out);
                out.extend_from_slice(&version.to_be_bytes());
            }
        }
        out
    }

    /// Decodes an item. Tag 2 (a whole record, sent inline by earlier versions) is refused: a
    /// record must come with its owner's proof, over a sync.
    pub fn decode(mut data: &[u8]) -> Result<Self, ItemError> {
        match get_u8(&mut data)? {
            ITEM_DIGEST => {
                let id = get_id(&mut data)?;
                let version = get_u64(&mut data)?;
                if !data.is_empty() {
                    return Err(ItemError::Trailing);
                }
                Ok(Item::Digest { id, version })
            }
            tag => Err(SwimDecodeError::BadTag { what: "item", tag }.into()),
        }
    }
}

/// Why a registry item was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// Bad framing, or an item kind we do not accept.
    #[error(transparent)]
    Swim(#[from] SwimDecodeError),
    /// Bytes after a digest.
    #[error("trailing bytes after digest")]
    Trailing,
}

/// Identifies what a broadcast says: a newer version of the same address's record replaces any
/// older item still queued for retransmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemKey {
    /// Record owner.
    pub id: MemberId,
    /// Version.
    pub version: u64,
}

impl Invalidates for ItemKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.id.addr == other.id.addr
            && (self.id.generation, self.version) >= (other.id.generation, other.version)
    }
}

/// Items received in one datagram at most (a 1400-byte datagram holds about 50 digests); more
/// are dropped. The core empties the inbox after every datagram.
pub const INBOX_CAPACITY: usize = 256;

/// State shared between the broadcast handler (owned by foca) and the core: the items received
/// since the last drain, with the peer that sent them. Bounded by [`INBOX_CAPACITY`].
#[derive(Debug, Default)]
pub struct Shared {
    /// Items received and not yet processed by the core, with the peer that sent them.
    pub inbox: Vec<(Option<MemberId>, Item)>,
}

/// Locks the shared state; a poisoned lock (a panic elsewhere) still holds consistent data
/// because every critical section is a plain vec update.
pub fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// foca's custom broadcast handler: decodes registry items and hands received ones to the core
/// through [`Shared`]; queues (for retransmission) only the items the core adds itself.
#[derive(Debug)]
pub struct RegistryBroadcasts {
    /// Shared with the core.
    pub shared: Arc<Mutex<Shared>>,
}

impl BroadcastHandler<SwimId> for RegistryBroadcasts {
    type Key = ItemKey;
    type Error = ItemError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&SwimId>,
    ) -> Result<Option<ItemKey>, ItemError> {
        let item = Item::decode(data)?;
        let key = item.key();
        match sender {
            // Ours (`add_broadcast`): queue it.
            None => Ok(Some(key)),
            // Received: the core decides (and gossips a digest of its own once it holds the
            // record); never relayed as it is.
            Some(s) => {
                let mut shared = lock(&self.shared);
                if shared.inbox.len() < INBOX_CAPACITY {
                    shared.inbox.push((Some(s.0), item));
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn id(port: u16, generation: u64) -> SwimId {
        SwimId(MemberId::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            generation,
        ))
    }

    #[test]
    fn items_round_trip_and_newer_invalidates_older() {
        let digest = Item::Digest {
            id: id(1, 3).0,
            version: 4,
        };
        assert_eq!(Item::decode(&digest.encode()).unwrap(), digest);
        // A whole record (tag 2, as earlier versions gossiped) is refused.
        assert!(Item::decode(&[2, 0x80]).is_err());
        assert!(Item::decode(&[9]).is_err());
        assert!(Item::decode(&[]).is_err());
        let newer = ItemKey {
            id: id(1, 3).0,
            version: 5,
        };
        assert!(newer.invalidates(&digest.key()));
        assert!(!digest.key().invalidates(&newer));
        assert!(ItemKey {
            id: id(1, 4).0,
            version: 0
        }
        .invalidates(&newer));
    }

    #[test]
    fn received_items_are_handed_over_never_relayed_and_the_inbox_is_bounded() {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut h = RegistryBroadcasts {
            shared: shared.clone(),
        };
        let digest = Item::Digest {
            id: id(1, 3).0,
            version: 4,
        }
        .encode();
        assert_eq!(h.receive_item(&digest, Some(&id(2, 1))), Ok(None));
        assert!(h.receive_item(&digest, None).unwrap().is_some());
        for _ in 0..2 * INBOX_CAPACITY {
            let _ = h.receive_item(&digest, Some(&id(2, 1)));
        }
        assert_eq!(lock(&shared).inbox.len(), INBOX_CAPACITY);
    }
}
