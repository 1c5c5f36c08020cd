//! Registry wire types: member identities, node records and the registry sync exchange.
//!
//! Every node owns one [`NodeRecord`]. Gossip carries small items about records (a digest, or the
//! whole record when it is small); anything larger is pulled with a [`SyncRequest`], which the
//! owner (or any member holding a newer copy) answers with a [`SyncResponse`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::codec::{from_msgpack, to_msgpack, CodecError};

/// Largest encoded [`NodeRecord`] accepted (1 MiB). A record of 200 endpoints with metadata is
/// about 25 KiB.
pub const MAX_RECORD_LEN: usize = 1024 * 1024;

/// The identity of one run of one node: its advertised address and a generation that grows at
/// every start. Two ids with the same address and different generations are two lives of the same
/// node; the higher generation wins and the lower one is gone for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberId {
    /// Address the node is reachable at (its advertised address). On the wire: a string,
    /// `"127.0.0.1:7946"` or `"[::1]:7946"`.
    #[serde(with = "addr_str")]
    pub addr: SocketAddr,
    /// Generation of this run: chosen at start (from the wall clock, so it grows across restarts)
    /// and bumped whenever the node must rejoin under a new identity.
    pub generation: u64,
}

impl MemberId {
    /// An id for `addr` at `generation`.
    pub fn new(addr: SocketAddr, generation: u64) -> Self {
        Self { addr, generation }
    }
}

impl std::fmt::Display for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.addr, self.generation)
    }
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct EndpointInfo {
    /// Endpoint name (`"Hello"` in `Greeter.Hello`).
    pub name: String,
    /// Whether a call may safely run more than once (clients retry these on any failure).
    #[serde(default)]
    pub idempotent: bool,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A service as one node serves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ServiceInfo {
    /// Service name (`"Greeter"`).
    pub name: String,
    /// Version string (free-form; clients may filter on it).
    #[serde(default)]
    pub version: String,
    /// Endpoints served.
    #[serde(default)]
    pub endpoints: Vec<EndpointInfo>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A topic subscription, optionally in a queue group (one member of a group gets each message).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subscription {
    /// Topic name.
    pub topic: String,
    /// Queue group, if any.
    #[serde(default)]
    pub queue: Option<String>,
}

/// Everything the cluster knows about one node, owned and versioned by that node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Whose record this is.
    pub id: MemberId,
    /// Grows with every change the owner makes. Copies compare by `(id.generation, version)`.
    pub version: u64,
    /// Human-readable node name.
    #[serde(default)]
    pub name: String,
    /// Node labels (zone, host, ...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Services served.
    #[serde(default)]
    pub services: Vec<ServiceInfo>,
    /// Topic subscriptions.
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    /// Set by the owner in the last version it publishes before a graceful leave.
    #[serde(default)]
    pub leaving: bool,
}

impl NodeRecord {
    /// An empty record (version 0) for `id`.
    pub fn new(id: MemberId, name: impl Into<String>) -> Self {
        Self {
            id,
            version: 0,
            name: name.into(),
            labels: BTreeMap::new(),
            services: Vec::new(),
            subscriptions: Vec::new(),
            leaving: false,
        }
    }

    /// Whether this copy is newer than a copy at `(generation, version)` of the same address.
    pub fn is_newer_than(&self, generation: u64, version: u64) -> bool {
        (self.id.generation, self.version) > (generation, version)
    }

    /// Encodes as a MessagePack map.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        to_msgpack(self)
    }

    /// Decodes a record of at most [`MAX_RECORD_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > MAX_RECORD_LEN {
            return Err(CodecError::RecordTooLarge {
                len: bytes.len(),
                max: MAX_RECORD_LEN,
            });
        }
        from_msgpack(bytes)
    }
}

/// What a member knows of another member's record: its id and the version it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Digest {
    /// The record's owner.
    pub id: MemberId,
    /// The version held.
    pub version: u64,
}

/// A registry pull (and push). Sent as the `Header` frame of a `RegistrySync` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncRequest {
    /// The versions the requester holds. The responder sends every record it holds that is newer
    /// than the listed version of the same address.
    #[serde(default)]
    pub digests: Vec<Digest>,
    /// `true`: also send records of addresses not listed in `digests` (a full pull, used when
    /// joining and for anti-entropy). `false`: only the listed ones (a targeted fetch).
    #[serde(default)]
    pub full: bool,
    /// Records pushed to the responder (the requester's own record, and records the responder
    /// asked for in an earlier `want`).
    #[serde(default)]
    pub records: Vec<NodeRecord>,
}

/// The answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncResponse {
    /// Records newer than the requester's digests (see [`SyncRequest::full`]).
    #[serde(default)]
    pub records: Vec<NodeRecord>,
    /// Members whose record the requester holds in a newer version than the responder: the
    /// requester may push them in a follow-up request.
    #[serde(default)]
    pub want: Vec<MemberId>,
    /// In answer to a full pull: identities the responder knows to be down or gone. A requester
    /// that still holds one of them alive marks it down (push/pull heals SWIM's state too, as in
    /// memberlist). Down is final for an identity, so this can never hide a live node.
    #[serde(default)]
    pub down: Vec<MemberId>,
}

/// `SocketAddr` as its display string, whatever the format's human-readability.
mod addr_str {
    use std::net::SocketAddr;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> NodeRecord {
        let mut r = NodeRecord::new(MemberId::new("127.0.0.1:7946".parse().unwrap(), 9), "n1");
        r.version = 3;
        r.labels.insert("zone".into(), "a".into());
        r.services.push(ServiceInfo {
            name: "Greeter".into(),
            version: "1.0.0".into(),
            endpoints: vec![EndpointInfo {
                name: "Hello".into(),
                idempotent: true,
                metadata: BTreeMap::new(),
            }],
            metadata: BTreeMap::new(),
        });
        r.subscriptions.push(Subscription {
            topic: "events".into(),
            queue: Some("workers".into()),
        });
        r
    }

    #[test]
    fn record_round_trip_v4_and_v6() {
        let mut r = record();
        assert_eq!(NodeRecord::decode(&r.encode().unwrap()).unwrap(), r);
        r.id.addr = "[::1]:9000".parse().unwrap();
        assert_eq!(NodeRecord::decode(&r.encode().unwrap()).unwrap(), r);
    }

    #[test]
    fn sync_messages_round_trip() {
        let req = SyncRequest {
            digests: vec![Digest {
                id: record().id,
                version: 2,
            }],
            full: true,
            records: vec![record()],
        };
        assert_eq!(
            from_msgpack::<SyncRequest>(&to_msgpack(&req).unwrap()).unwrap(),
            req
        );
        let resp = SyncResponse {
            records: vec![record()],
            want: vec![record().id],
            down: vec![MemberId::new("10.0.0.9:7946".parse().unwrap(), 4)],
        };
        assert_eq!(
            from_msgpack::<SyncResponse>(&to_msgpack(&resp).unwrap()).unwrap(),
            resp
        );
    }

    #[test]
    fn newer_compares_generation_then_version() {
        let r = record(); // generation 9, version 3
        assert!(r.is_newer_than(9, 2));
        assert!(r.is_newer_than(8, 100));
        assert!(!r.is_newer_than(9, 3));
        assert!(!r.is_newer_than(10, 0));
    }
}
