//! Call and reply headers: always MessagePack maps, carried in `Header` and `End` frames.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{from_msgpack, to_msgpack, CodecError, ContentType};
use crate::error::RpcError;

/// Default limit on an encoded header (64 KiB). Headers are small; a peer that sends a larger one
/// is refused with [`CodecError::HeaderTooLarge`] before it is parsed.
pub const DEFAULT_MAX_HEADER_LEN: usize = 64 * 1024;

/// Service name of the endpoints every node serves (`mesh.Health`, `mesh.Info`, `mesh.Stats`,
/// `mesh.Members`, `mesh.Registry`). They are not advertised in the registry.
pub const BUILTIN_SERVICE: &str = "mesh";

/// Longest service or endpoint name accepted (bytes of UTF-8).
pub const MAX_NAME_LEN: usize = 256;

/// The first frame of every call stream, from caller to callee.
///
/// # Examples
///
/// ```
/// use mesh_protocol::CallHeader;
///
/// let h = CallHeader::new(7, "Greeter", "Hello");
/// let bytes = h.encode().unwrap();
/// assert_eq!(CallHeader::decode(&bytes).unwrap(), h);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallHeader {
    /// Caller-chosen request id, echoed in the reply.
    pub id: u64,
    /// Service name (`"Greeter"`).
    pub service: String,
    /// Endpoint name within the service (`"Hello"`).
    pub endpoint: String,
    /// Content type of every `Data` frame of this call, in both directions.
    pub content_type: String,
    /// Caller metadata, passed to the handler.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Time remaining until the caller's deadline, in microseconds, when the header was written.
    /// `None`: no deadline.
    #[serde(default)]
    pub deadline_us: Option<u64>,
    /// Routing key the caller used to pick this node, if any (informational for the callee).
    #[serde(default)]
    pub routing_key: Option<String>,
}

impl CallHeader {
    /// A header for `service.endpoint` with the default content type and nothing else set.
    pub fn new(id: u64, service: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            id,
            service: service.into(),
            endpoint: endpoint.into(),
            content_type: ContentType::default().as_str().to_owned(),
            metadata: BTreeMap::new(),
            deadline_us: None,
            routing_key: None,
        }
    }

    /// The parsed content type. Unknown content types are [`CodecError::UnknownContentType`].
    pub fn content_type(&self) -> Result<ContentType, CodecError> {
        ContentType::parse(&self.content_type)
    }

    /// Encodes as a MessagePack map.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        to_msgpack(self)
    }

    /// Decodes and checks a header: at most [`DEFAULT_MAX_HEADER_LEN`] bytes, non-empty service and
    /// endpoint names of at most [`MAX_NAME_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        check_header_len(bytes)?;
        let h: Self = from_msgpack(bytes)?;
        for (what, name) in [("service", &h.service), ("endpoint", &h.endpoint)] {
            if name.is_empty() || name.len() > MAX_NAME_LEN {
                return Err(CodecError::Invalid(format!(
                    "{what} name must be 1..={MAX_NAME_LEN} bytes, got {}",
                    name.len()
                )));
            }
        }
        Ok(h)
    }
}

/// The first frame of every reply (a `Header` frame), and the last frame of a streamed reply (an
/// `End` frame): the request id and either success (`error: nil`) or a structured error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyHeader {
    /// The request id from the [`CallHeader`].
    pub id: u64,
    /// `None` on success.
    #[serde(default)]
    pub error: Option<RpcError>,
}

impl ReplyHeader {
    /// A success reply to request `id`.
    pub fn ok(id: u64) -> Self {
        Self { id, error: None }
    }

    /// An error reply to request `id`.
    pub fn err(id: u64, error: RpcError) -> Self {
        Self {
            id,
            error: Some(error),
        }
    }

    /// The reply as a `Result`.
    pub fn into_result(self) -> Result<(), RpcError> {
        match self.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Encodes as a MessagePack map.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        to_msgpack(self)
    }

    /// Decodes a reply header of at most [`DEFAULT_MAX_HEADER_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        check_header_len(bytes)?;
        from_msgpack(bytes)
    }
}

/// The header of one pub/sub delivery on a `Publish` stream (a `Header` frame, followed by one
/// `Data` frame with the message body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishHeader {
    /// Sequence number of the delivery on this stream, from 1; acks name it.
    pub seq: u64,
    /// Topic.
    pub topic: String,
    /// Content type of the body.
    pub content_type: String,
    /// Publisher metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Deliver to the receiver's plain (non-group) subscribers of `topic`.
    #[serde(default)]
    pub plain: bool,
    /// Deliver to one local subscriber of each of these queue groups of `topic`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Whether the publisher waits for a [`PublishAck`].
    #[serde(default)]
    pub ack: bool,
}

impl PublishHeader {
    /// Encodes as a MessagePack map.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        to_msgpack(self)
    }

    /// Decodes a header of at most [`DEFAULT_MAX_HEADER_LEN`] bytes with a topic of
    /// 1..=[`MAX_NAME_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        check_header_len(bytes)?;
        let h: Self = from_msgpack(bytes)?;
        if h.topic.is_empty() || h.topic.len() > MAX_NAME_LEN {
            return Err(CodecError::Invalid(format!(
                "topic must be 1..={MAX_NAME_LEN} bytes, got {}",
                h.topic.len()
            )));
        }
        Ok(h)
    }
}

/// The receiver's answer to a delivery sent with `ack: true` (a `Header` frame on the way back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishAck {
    /// The delivery's sequence number.
    pub seq: u64,
    /// `None`: every targeted local subscriber accepted the message. Otherwise why not.
    #[serde(default)]
    pub error: Option<RpcError>,
}

impl PublishAck {
    /// Encodes as a MessagePack map.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        to_msgpack(self)
    }

    /// Decodes an ack of at most [`DEFAULT_MAX_HEADER_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        check_header_len(bytes)?;
        from_msgpack(bytes)
    }
}

fn check_header_len(bytes: &[u8]) -> Result<(), CodecError> {
    if bytes.len() > DEFAULT_MAX_HEADER_LEN {
        return Err(CodecError::HeaderTooLarge {
            len: bytes.len(),
            max: DEFAULT_MAX_HEADER_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_call_header_round_trip() {
        let mut h = CallHeader::new(u64::MAX, "Greeter", "Hello");
        h.content_type = "application/json".into();
        h.metadata.insert("trace-id".into(), "abc".into());
        h.deadline_us = Some(1_500_000);
        h.routing_key = Some("user-42".into());
        let back = CallHeader::decode(&h.encode().unwrap()).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.content_type(), Ok(ContentType::Json));
    }

    #[test]
    fn optional_fields_may_be_absent_and_unknown_fields_are_ignored() {
        let bytes = to_msgpack(&serde_json::json!({
            "id": 1, "service": "S", "endpoint": "E", "content_type": "application/msgpack",
            "some_future_field": [1, 2, 3]
        }))
        .unwrap();
        let h = CallHeader::decode(&bytes).unwrap();
        assert_eq!(h, CallHeader::new(1, "S", "E"));
    }

    #[test]
    fn invalid_names_and_content_types() {
        let h = CallHeader::new(1, "", "E");
        assert!(matches!(
            CallHeader::decode(&h.encode().unwrap()),
            Err(CodecError::Invalid(_))
        ));
        let h = CallHeader::new(1, "S".repeat(MAX_NAME_LEN + 1), "E");
        assert!(matches!(
            CallHeader::decode(&h.encode().unwrap()),
            Err(CodecError::Invalid(_))
        ));
        let mut h = CallHeader::new(1, "S", "E");
        h.content_type = "text/xml".into();
        let h = CallHeader::decode(&h.encode().unwrap()).unwrap();
        assert!(matches!(
            h.content_type(),
            Err(CodecError::UnknownContentType(_))
        ));
    }

    #[test]
    fn oversized_header_is_refused_before_parsing() {
        let bytes = vec![0u8; DEFAULT_MAX_HEADER_LEN + 1];
        assert_eq!(
            CallHeader::decode(&bytes),
            Err(CodecError::HeaderTooLarge {
                len: DEFAULT_MAX_HEADER_LEN + 1,
                max: DEFAULT_MAX_HEADER_LEN
            })
        );
    }

    #[test]
    fn publish_header_and_ack_round_trip() {
        let h = PublishHeader {
            seq: 9,
            topic: "orders".into(),
            content_type: "application/json".into(),
            metadata: [("k".to_string(), "v".to_string())].into(),
            plain: true,
            groups: vec!["billing".into()],
            ack: true,
        };
        assert_eq!(PublishHeader::decode(&h.encode().unwrap()).unwrap(), h);
        let mut empty = h.clone();
        empty.topic.clear();
        assert!(matches!(
            PublishHeader::decode(&empty.encode().unwrap()),
            Err(CodecError::Invalid(_))
        ));
        for a in [
            PublishAck {
                seq: 1,
                error: None,
            },
            PublishAck {
                seq: 2,
                error: Some(RpcError::too_many_requests("mesh", "queue full")),
            },
        ] {
            assert_eq!(PublishAck::decode(&a.encode().unwrap()).unwrap(), a);
        }
    }

    #[test]
    fn reply_header_round_trip() {
        for r in [
            ReplyHeader::ok(3),
            ReplyHeader::err(4, RpcError::not_found("Greeter", "no endpoint Bye")),
        ] {
            assert_eq!(ReplyHeader::decode(&r.encode().unwrap()).unwrap(), r);
        }
        assert_eq!(ReplyHeader::ok(1).into_result(), Ok(()));
    }
}
