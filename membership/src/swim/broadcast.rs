//! Registry items carried as foca custom broadcasts ([`Item`], keyed by [`ItemKey`] so a newer
//! version replaces an older one in flight), and [`RegistryBroadcasts`], the handler that hands
//! news to the core through [`Shared`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use foca::{BroadcastHandler, Invalidates};
use mesh_protocol::{MemberId, NodeRecord};

use crate::swim::codec::{get_id, get_u64, get_u8, put_id, SwimDecodeError, SwimId};

/// A registry item carried as a foca custom broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// "`id`'s record is at `version`": receivers holding less pull it.
    Digest {
        /// Record owner.
        id: MemberId,
        /// Current version.
        version: u64,
    },
    /// A whole record, sent inline when it is small.
    Record(NodeRecord),
}

const ITEM_DIGEST: u8 = 1;
const ITEM_RECORD: u8 = 2;

impl Item {
    /// The owner and version the item speaks of.
    pub fn key(&self) -> ItemKey {
        match self {
            Item::Digest { id, version } => ItemKey {
                id: *id,
                version: *version,
            },
            Item::Record(r) => ItemKey {
                id: r.id,
                version: r.version,
            },
        }
    }

    /// Encodes the item.
    pub fn encode(&self) -> Result<Vec<u8>, mesh_protocol::CodecError> {
        let mut out = Vec::new();
        match self {
            Item::Digest { id, version } => {
                out.push(ITEM_DIGEST);
                put_id(id, &mut out);
                out.extend_from_slice(&version.to_be_bytes());
            }
            Item::Record(r) => {
                out.push(ITEM_RECORD);
                out.extend_from_slice(&r.encode()?);
            }
        }
        Ok(out)
    }

    /// Decodes an item.
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
            ITEM_RECORD => Ok(Item::Record(NodeRecord::decode(data)?)),
            tag => Err(SwimDecodeError::BadTag { what: "item", tag }.into()),
        }
    }
}

/// Why a registry item was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// Bad framing.
    #[error(transparent)]
    Swim(#[from] SwimDecodeError),
    /// Bad record.
    #[error(transparent)]
    Record(#[from] mesh_protocol::CodecError),
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

/// State shared between the broadcast handler (owned by foca) and the core: the newest
/// `(generation, version)` heard of per address, and the items received since the last drain.
#[derive(Debug, Default)]
pub struct Shared {
    /// Highest `(generation, version)` heard of per address, from any source.
    pub heard: HashMap<SocketAddr, (u64, u64)>,
    /// Items received and not yet processed by the core, with the peer that sent them.
    pub inbox: Vec<(Option<MemberId>, Item)>,
}

impl Shared {
    /// Records that `(id, version)` is known; returns whether it is news.
    pub fn hear(&mut self, id: MemberId, version: u64) -> bool {
        let new = (id.generation, version);
        match self.heard.get(&id.addr) {
            Some(old) if *old >= new => false,
            _ => {
                self.heard.insert(id.addr, new);
                true
            }
        }
    }
}

/// Locks the shared state; a poisoned lock (a panic elsewhere) still holds consistent data
/// because every critical section is a plain map or vec update.
pub fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// foca's custom broadcast handler: decodes registry items, keeps only news, hands them to the
/// core through [`Shared`].
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
        let mut shared = lock(&self.shared);
        // Items we add ourselves (sender None) are always queued; received ones only when news.
        if !shared.hear(key.id, key.version) && sender.is_some() {
            return Ok(None);
        }
        if sender.is_some() {
            shared.inbox.push((sender.map(|s| s.0), item));
        }
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(Item::decode(&digest.encode().unwrap()).unwrap(), digest);
        let rec = Item::Record(NodeRecord::new(id(1, 3).0, "n"));
        assert_eq!(Item::decode(&rec.encode().unwrap()).unwrap(), rec);
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
}
