//! Registry wire types: member identities, node records and the registry sync exchange.
//!
//! Every node owns one [`NodeRecord`] and signs it: a record travels as a [`SignedRecord`] (the
//! record's exact bytes and the owner's [`Proof`]), so that any member can relay it and every
//! receiver can check it against its owner. Gossip carries only [`Digest`]s (owner id and
//! version); records are pulled with a [`SyncRequest`], which the owner (or any member holding a
//! copy) answers with a [`SyncResponse`].

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

/// Prepended to a record's bytes to form what its owner signs ([`SignedRecord::signing_input`]), so
/// that a record signature can never be taken for a signature of anything else made with the same
/// key (a TLS handshake, another protocol).
pub const RECORD_SIGNING_CONTEXT: &[u8] = b"mesh record v1\0";

/// What a verifier needs to check that a record was made by its owner: the owner's certificate
/// (DER) and its signature over [`SignedRecord::signing_input`]. Both are empty where records are
/// not signed (the standalone UDP transport, tests, simulations): such a proof convinces only a
/// node that checks nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Proof {
    /// The owner's certificate, DER (MessagePack `bin`).
    #[serde(default, with = "bin")]
    pub cert: Vec<u8>,
    /// The owner's signature (MessagePack `bin`; 64 bytes for Ed25519).
    #[serde(default, with = "bin")]
    pub sig: Vec<u8>,
}

impl Proof {
    /// Whether this proof carries nothing (an unsigned record).
    pub fn is_empty(&self) -> bool {
        self.cert.is_empty() && self.sig.is_empty()
    }
}

/// A record as it travels in syncs: the exact bytes its owner encoded (a MessagePack
/// [`NodeRecord`]) and the owner's [`Proof`] over them. Relays forward the bytes unchanged, so
/// the proof stays valid whoever delivers the record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedRecord {
    /// The encoded [`NodeRecord`] (MessagePack `bin`, at most [`MAX_RECORD_LEN`] bytes).
    #[serde(with = "bin")]
    pub record: Vec<u8>,
    /// The owner's proof over [`signing_input`](Self::signing_input).
    #[serde(default)]
    pub proof: Proof,
}

impl SignedRecord {
    /// The record bytes `record` with `proof`, which must have been made over
    /// [`signing_input`](Self::signing_input) of those bytes (see [`SignedRecord::encode`]).
    pub fn new(record: Vec<u8>, proof: Proof) -> Self {
        Self { record, proof }
    }

    /// The record's encoding, ready to be signed: `(bytes, signing input)`.
    pub fn encode(record: &NodeRecord) -> Result<(Vec<u8>, Vec<u8>), CodecError> {
        let bytes = record.encode()?;
        let input = Self::signing_input(&bytes);
        Ok((bytes, input))
    }

    /// What the owner signs: [`RECORD_SIGNING_CONTEXT`] followed by the record's bytes.
    pub fn signing_input(record: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_SIGNING_CONTEXT.len() + record.len());
        out.extend_from_slice(RECORD_SIGNING_CONTEXT);
        out.extend_from_slice(record);
        out
    }

    /// Decodes the record (at most [`MAX_RECORD_LEN`] bytes). The proof is not checked here.
    pub fn decode_record(&self) -> Result<NodeRecord, CodecError> {
        NodeRecord::decode(&self.record)
    }

    /// Bytes this signed record occupies, about as encoded (record, certificate, signature).
    pub fn size(&self) -> usize {
        self.record.len() + self.proof.cert.len() + self.proof.sig.len()
    }
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
    /// asked for in an earlier `want`), each with its owner's proof. The responder checks each
    /// proof against the record's owner, whoever pushed it.
    #[serde(default)]
    pub records: Vec<SignedRecord>,
}

/// The answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncResponse {
    /// Records newer than the requester's digests (see [`SyncRequest::full`]), each with its
    /// owner's proof.
    #[serde(default)]
    pub records: Vec<SignedRecord>,
    /// Members whose record the requester holds in a newer version than the responder: the
    /// requester may push them in a follow-up request.
    #[serde(default)]
    pub want: Vec<MemberId>,
    /// In answer to a full pull: identities the responder recently saw go down or leave (the most
    /// recent first, at most a configured number). A **hint**, never a verdict: a requester never
    /// marks a member it sees alive down because of it; it only stops pulling records of these
    /// identities where it sees no live member for them.
    #[serde(default)]
    pub down: Vec<MemberId>,
}

/// `Vec<u8>` as MessagePack `bin` (serde's default would be an array of integers). Decoding also
/// accepts an array of integers.
mod bin {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                // The declared length was checked against the input by `from_msgpack`; grow as
                // elements arrive anyway.
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(Bytes)
    }
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
            records: vec![signed()],
        };
        assert_eq!(
            from_msgpack::<SyncRequest>(&to_msgpack(&req).unwrap()).unwrap(),
            req
        );
        let resp = SyncResponse {
            records: vec![signed()],
            want: vec![record().id],
            down: vec![MemberId::new("10.0.0.9:7946".parse().unwrap(), 4)],
        };
        assert_eq!(
            from_msgpack::<SyncResponse>(&to_msgpack(&resp).unwrap()).unwrap(),
            resp
        );
    }

    fn signed() -> SignedRecord {
        let (bytes, _) = SignedRecord::encode(&record()).unwrap();
        SignedRecord::new(
            bytes,
            Proof {
                cert: vec![0x30, 0x82, 1, 2],
                sig: vec![7; 64],
            },
        )
    }

    #[test]
    fn signed_records_carry_bin_and_decode_their_record() {
        let s = signed();
        let wire = to_msgpack(&s).unwrap();
        // A map of two keys; the record's bytes as `bin 8` (c4), not an array of integers.
        assert_eq!(wire[0], 0x82);
        assert!(wire.windows(2).any(|w| w == [0xc4, s.record.len() as u8]));
        let back: SignedRecord = from_msgpack(&wire).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.decode_record().unwrap(), record());
        assert!(SignedRecord::signing_input(&s.record).starts_with(RECORD_SIGNING_CONTEXT));
        assert!(Proof::default().is_empty() && !s.proof.is_empty());
        // The wire form PROTOCOL.md §6 gives, for a record of one byte and an empty proof.
        let tiny = to_msgpack(&SignedRecord::new(vec![0x80], Proof::default())).unwrap();
        let mut expected = vec![0x82, 0xa6];
        expected.extend_from_slice(b"record");
        expected.extend_from_slice(&[0xc4, 1, 0x80, 0xa5]);
        expected.extend_from_slice(b"proof");
        expected.extend_from_slice(&[0x82, 0xa4]);
        expected.extend_from_slice(b"cert");
        expected.extend_from_slice(&[0xc4, 0, 0xa3]);
        expected.extend_from_slice(b"sig");
        expected.extend_from_slice(&[0xc4, 0]);
        assert_eq!(tiny, expected);
        // A record too large is refused before parsing.
        let big = SignedRecord::new(vec![0; MAX_RECORD_LEN + 1], Proof::default());
        assert!(matches!(
            big.decode_record(),
            Err(CodecError::RecordTooLarge { .. })
        ));
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
