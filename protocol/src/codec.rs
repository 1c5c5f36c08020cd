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
    // Headers are a few dozen bytes: starting at 128 saves the reallocations of growing from 0.
    let mut out = Vec::with_capacity(128);
    rmp_serde::encode::write_named(&mut out, value)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a `T` from MessagePack, with a nesting limit of [`MAX_DEPTH`] and no trailing bytes.
///
/// Memory use is bounded by the input: every declared length is first checked against the bytes
/// left (a declared array of 2^32 elements in a 7-byte input is refused before serde sees it), and
/// rmp-serde reads strings and binaries through `Read::take`.
pub fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    check_declared_lengths(bytes)?;
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

/// Walks the MessagePack value at the start of `buf` without building it, and refuses any string,
/// binary or extension longer than the bytes left, and any array or map declaring more elements
/// than bytes left (every element takes at least one byte).
///
/// serde pre-allocates a `Vec` from the declared length (capped at 1 MiB); after this check a
/// declared length is at most the input's length, so allocation stays proportional to the input.
/// Linear in the input; nesting is tracked with a counter, not recursion.
fn check_declared_lengths(buf: &[u8]) -> Result<(), CodecError> {
    let eof = || CodecError::Decode("unexpected end of MessagePack input".into());
    // Reads an `n`-byte big-endian length at `*pos` and moves past it.
    let read_len = |pos: &mut usize, n: usize| -> Result<u64, CodecError> {
        let bytes = buf.get(*pos..*pos + n).ok_or_else(eof)?;
        *pos += n;
        Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    let mut pos = 0usize;
    let mut pending: u64 = 1; // values still to walk
    while pending > 0 {
        pending -= 1;
        let b = *buf.get(pos).ok_or_else(eof)?;
        pos += 1;
        // (bytes of payload to skip, elements that follow)
        let (payload, items): (u64, u64) = match b {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(b & 0x0f)),
            0x90..=0x9f => (0, u64::from(b & 0x0f)),
            0xa0..=0xbf => (u64::from(b & 0x1f), 0),
            0xc1 => {
                return Err(CodecError::Decode(
                    "reserved MessagePack marker 0xc1".into(),
                ))
            }
            0xc4 | 0xd9 => (read_len(&mut pos, 1)?, 0), // bin8, str8
            0xc5 | 0xda => (read_len(&mut pos, 2)?, 0), // bin16, str16
            0xc6 | 0xdb => (read_len(&mut pos, 4)?, 0), // bin32, str32
            0xc7 => (read_len(&mut pos, 1)? + 1, 0),    // ext8: length, type, data
            0xc8 => (read_len(&mut pos, 2)? + 1, 0),    // ext16
            0xc9 => (read_len(&mut pos, 4)? + 1, 0),    // ext32
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0), // fixext1..16: type byte plus data
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, read_len(&mut pos, 2)?),     // array16
            0xdd => (0, read_len(&mut pos, 4)?),     // array32
            0xde => (0, 2 * read_len(&mut pos, 2)?), // map16
            0xdf => (0, 2 * read_len(&mut pos, 4)?), // map32
        };
        let left = (buf.len() - pos) as u64;
        if payload > left || items > left {
            return Err(CodecError::Decode(format!(
                "MessagePack value declares {} {} with only {left} bytes left",
                payload.max(items),
                if items > 0 { "elements" } else { "bytes" }
            )));
        }
        pos += payload as usize;
        pending += items;
    }
    Ok(())
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
