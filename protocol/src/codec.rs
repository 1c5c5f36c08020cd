//! Message codecs, chosen by content type: MessagePack (the default) and JSON.
//!
//! Both encode structs as maps keyed by field name, so a MessagePack body and a JSON body of the
//! same value have the same shape and a client in another language can decode either without
//! knowing the Rust field order.

use serde::{de::DeserializeOwned, Serialize};

/// Content type string for MessagePack bodies.
pub const MSGPACK: &str = "application/msgpack";
/// Content type string for JSON bodies.
pub const JSON: &str = "application/json";

/// Maximum nesting depth accepted when decoding MessagePack, the same bound serde_json applies to
/// JSON (128), so a hostile peer cannot exhaust the stack with deeply nested arrays.
pub const MAX_DEPTH: usize = 128;

/// A body encoding. Parsed from a content type string with [`ContentType::parse`]; an unknown
/// content type is an error, never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ContentType {
    /// MessagePack with structs as maps (`application/msgpack`). The default.
    #[default]
    MsgPack,
    /// JSON (`application/json`).
    Json,
}

impl ContentType {
    /// Parses a content type. Accepts `application/msgpack` and its common aliases
    /// `application/x-msgpack` and `application/vnd.msgpack`, and `application/json`; parameters
    /// after `;` (such as `; charset=utf-8`) and ASCII case are ignored.
    pub fn parse(s: &str) -> Result<Self, CodecError> {
        let base = s.split(';').next().unwrap_or("").trim();
        if base.eq_ignore_ascii_case(MSGPACK)
            || base.eq_ignore_ascii_case("application/x-msgpack")
            || base.eq_ignore_ascii_case("application/vnd.msgpack")
        {
            Ok(Self::MsgPack)
        } else if base.eq_ignore_ascii_case(JSON) {
            Ok(Self::Json)
        } else {
            Err(CodecError::UnknownContentType(
                s.chars().take(128).collect(),
            ))
        }
    }

    /// The canonical content type string written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MsgPack => MSGPACK,
            Self::Json => JSON,
        }
    }

    /// Encodes `value` in this content type.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            Self::MsgPack => to_msgpack(value),
            Self::Json => serde_json::to_vec(value).map_err(|e| CodecError::Encode(e.to_string())),
        }
    }

    /// Decodes a `T` from `bytes` in this content type. Trailing bytes after the value are an error.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Self::MsgPack => from_msgpack(bytes),
            Self::Json => {
                serde_json::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))
            }
        }
    }
}

impl std::fmt::Display for ContentType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ContentType {
    type Err = CodecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Encodes `value` as MessagePack with structs as maps. Used for every header on the wire.
pub fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(value).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a `T` from MessagePack, with a nesting limit of [`MAX_DEPTH`] and no trailing bytes.
///
/// Memory use is bounded by the input: rmp-serde hands declared container lengths to serde only as
/// a size hint, which serde caps, and reads declared strings and binaries through `Read::take`, so a
/// declared array or string of 2^32 elements allocates nothing up front.
pub fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut rest = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MAX_DEPTH);
    let value = T::deserialize(&mut de).map_err(|e| CodecError::Decode(e.to_string()))?;
    drop(de);
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The content type is not one mesh speaks. Carries (at most 128 characters of) what was given.
    #[error("unknown content type {0:?}")]
    UnknownContentType(String),
    /// The bytes are not a valid value of the expected type.
    #[error("decode failed: {0}")]
    Decode(String),
    /// Bytes were left over after a complete value.
    #[error("{0} trailing bytes after value")]
    TrailingBytes(usize),
    /// The value could not be encoded (for example a map with non-string keys in JSON).
    #[error("encode failed: {0}")]
    Encode(String),
    /// A header was longer than the header limit; it was not parsed.
    #[error("header of {len} bytes exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        /// Encoded length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A node record was longer than [`MAX_RECORD_LEN`](crate::MAX_RECORD_LEN); it was not parsed.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Encoded length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value decoded but breaks a rule of the protocol (for example an empty service name).
    #[error("invalid: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Hello {
        name: String,
    }

    #[test]
    fn content_type_parsing() {
        assert_eq!(
            ContentType::parse("application/msgpack"),
            Ok(ContentType::MsgPack)
        );
        assert_eq!(
            ContentType::parse("Application/X-MsgPack"),
            Ok(ContentType::MsgPack)
        );
        assert_eq!(
            ContentType::parse("application/json; charset=utf-8"),
            Ok(ContentType::Json)
        );
        assert!(matches!(
            ContentType::parse("application/protobuf"),
            Err(CodecError::UnknownContentType(s)) if s == "application/protobuf"
        ));
        assert!(ContentType::parse("").is_err());
        assert_eq!(ContentType::default(), ContentType::MsgPack);
    }

    #[test]
    fn both_codecs_round_trip_with_the_same_shape() {
        let v = Hello {
            name: "John".into(),
        };
        for ct in [ContentType::MsgPack, ContentType::Json] {
            let bytes = ct.encode(&v).unwrap();
            assert_eq!(ct.decode::<Hello>(&bytes).unwrap(), v);
        }
        // MessagePack carries the field name: fixmap(1), fixstr "name", fixstr "John".
        assert_eq!(
            ContentType::MsgPack.encode(&v).unwrap(),
            b"\x81\xa4name\xa4John".to_vec()
        );
        assert_eq!(
            ContentType::Json.encode(&v).unwrap(),
            br#"{"name":"John"}"#.to_vec()
        );
    }

    #[test]
    fn trailing_bytes_and_garbage_are_refused() {
        let mut bytes = ContentType::MsgPack
            .encode(&Hello { name: "a".into() })
            .unwrap();
        bytes.push(0xc0);
        assert_eq!(
            ContentType::MsgPack.decode::<Hello>(&bytes),
            Err(CodecError::TrailingBytes(1))
        );
        assert!(matches!(
            ContentType::Json.decode::<Hello>(b"{\"name\":"),
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            ContentType::MsgPack.decode::<Hello>(&[0xc1]),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn huge_declared_array_does_not_allocate() {
        // array32 declaring 2^32-1 elements, followed by nothing.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            from_msgpack::<Vec<u64>>(&bytes),
            Err(CodecError::Decode(_))
        ));
        // str32 declaring 4 GiB.
        let bytes = [0xdb, 0xff, 0xff, 0xff, 0xff, b'a'];
        assert!(matches!(
            from_msgpack::<String>(&bytes),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn deep_nesting_is_refused() {
        // 10_000 nested single-element arrays.
        let mut bytes = vec![0x91; 10_000];
        bytes.push(0xc0);
        assert!(matches!(
            from_msgpack::<serde_json::Value>(&bytes),
            Err(CodecError::Decode(_))
        ));
    }
}
