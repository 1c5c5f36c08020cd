//! Stream framing: the preamble that opens every stream and the length-prefixed frames that follow.
//!
//! ```text
//! preamble (6 bytes, once per stream, written by the opener):
//!   +----+----+----+----+---------+------+
//!   | 'M'| 'E'| 'S'| 'H'| version | kind |
//!   +----+----+----+----+---------+------+
//!
//! frame (5-byte header, then `len` payload bytes):
//!   +-------------------+------+-----------------+
//!   | len: u32 BE       | kind | payload (len)   |
//!   +-------------------+------+-----------------+
//! ```
//!
//! [`FrameDecoder`] decodes incrementally from a [`BytesMut`]: `Ok(None)` means "need more bytes",
//! `Err(_)` means the stream is malformed and must be closed. The declared length is checked against
//! the configured maximum before a single payload byte is buffered, so a peer that declares 4 GiB
//! costs us five bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The four bytes every stream starts with: ASCII `MESH`.
pub const MAGIC: [u8; 4] = *b"MESH";

/// The protocol version this crate speaks. See `docs/PROTOCOL.md`, "Versioning".
pub const PROTOCOL_VERSION: u8 = 1;

/// Length of the stream preamble in bytes.
pub const PREAMBLE_LEN: usize = 6;

/// Length of a frame header (length prefix plus kind) in bytes.
pub const FRAME_HEADER_LEN: usize = 5;

/// Default maximum frame payload: 4 MiB, the same default as gRPC's receive limit.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;

/// What a stream carries. Sent once, in the preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum StreamKind {
    /// One request, one reply.
    UnaryCall = 0x01,
    /// A call whose request, reply, or both are a sequence of messages.
    StreamingCall = 0x02,
    /// A pub/sub delivery.
    Publish = 0x03,
    /// A registry pull or push/pull exchange between two members.
    RegistrySync = 0x04,
}

impl StreamKind {
    /// Parses a kind byte. Values `0x00` and `0x05..=0xFF` are reserved for future kinds.
    pub fn from_u8(b: u8) -> Result<Self, FrameError> {
        Ok(match b {
            0x01 => Self::UnaryCall,
            0x02 => Self::StreamingCall,
            0x03 => Self::Publish,
            0x04 => Self::RegistrySync,
            other => return Err(FrameError::UnknownStreamKind(other)),
        })
    }
}

/// The opening bytes of every stream: magic, version and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Protocol version the opener speaks.
    pub version: u8,
    /// What the stream carries.
    pub kind: StreamKind,
}

impl Preamble {
    /// A preamble for `kind` at this crate's [`PROTOCOL_VERSION`].
    pub fn new(kind: StreamKind) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            kind,
        }
    }

    /// The six bytes on the wire.
    pub fn to_bytes(self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0; PREAMBLE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = self.kind as u8;
        out
    }

    /// Parses a preamble from the start of `buf`.
    ///
    /// Returns `Ok(None)` if fewer than [`PREAMBLE_LEN`] bytes are available and those present are
    /// a prefix of a valid preamble. Each byte is checked as soon as it is present, so garbage is
    /// refused at its first byte and a wrong version at the fifth.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, FrameError> {
        let have = buf.len().min(4);
        if buf[..have] != MAGIC[..have] {
            return Err(FrameError::BadMagic);
        }
        if let Some(&version) = buf.get(4) {
            if version != PROTOCOL_VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
        }
        let Some(&kind) = buf.get(5) else {
            return Ok(None);
        };
        let kind = StreamKind::from_u8(kind)?;
        Ok(Some(Self {
            version: PROTOCOL_VERSION,
            kind,
        }))
    }
}

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameKind {
    /// A MessagePack-encoded header ([`CallHeader`](crate::CallHeader),
    /// [`ReplyHeader`](crate::ReplyHeader), ...). Always MessagePack, whatever the body's content type.
    Header = 0x01,
    /// A message body, encoded in the stream's content type.
    Data = 0x02,
    /// The end of a message sequence: a MessagePack [`ReplyHeader`](crate::ReplyHeader) carrying the
    /// final status of a streaming call. Nothing follows it in that direction.
    End = 0x03,
}

impl FrameKind {
    /// Parses a frame kind byte. Values `0x00` and `0x04..=0xFF` are reserved.
    pub fn from_u8(b: u8) -> Result<Self, FrameError> {
        Ok(match b {
            0x01 => Self::Header,
            0x02 => Self::Data,
            0x03 => Self::End,
            other => return Err(FrameError::UnknownFrameKind(other)),
        })
    }
}

/// A decoded frame header: the payload length and kind, already validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes, at most the decoder's maximum.
    pub len: u32,
    /// Payload kind.
    pub kind: FrameKind,
}

impl FrameHeader {
    /// Parses and validates the five header bytes against `max_len`.
    ///
    /// The length check comes first: an oversized frame is refused before its kind is looked at
    /// and before any payload is read. Readers that pull exact byte counts from a stream (rather
    /// than buffering through [`FrameDecoder`]) use this to learn how much to read.
    pub fn parse(bytes: [u8; FRAME_HEADER_LEN], max_len: u32) -> Result<Self, FrameError> {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if len > max_len {
            return Err(FrameError::TooLarge { len, max: max_len });
        }
        let kind = FrameKind::from_u8(bytes[4])?;
        Ok(Self { len, kind })
    }

    /// The five bytes on the wire.
    pub fn to_bytes(self) -> [u8; FRAME_HEADER_LEN] {
        let l = self.len.to_be_bytes();
        [l[0], l[1], l[2], l[3], self.kind as u8]
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload, without the frame header.
    pub payload: Bytes,
}

impl Frame {
    /// A frame of `kind` around `payload`.
    pub fn new(kind: FrameKind, payload: impl Into<Bytes>) -> Self {
        Self {
            kind,
            payload: payload.into(),
        }
    }

    /// Appends this frame (header and payload) to `dst`.
    ///
    /// Fails with [`FrameError::TooLarge`] if the payload exceeds `max_len`, so a sender never
    /// writes what its peer is bound to refuse.
    pub fn encode(&self, max_len: u32, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(self.kind, &self.payload, max_len, dst)
    }
}

/// Appends a frame of `kind` around `payload` to `dst`. See [`Frame::encode`].
pub fn encode_frame(
    kind: FrameKind,
    payload: &[u8],
    max_len: u32,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= max_len)
        .ok_or(FrameError::TooLarge {
            len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            max: max_len,
        })?;
    dst.reserve(FRAME_HEADER_LEN + payload.len());
    dst.put_slice(&FrameHeader { len, kind }.to_bytes());
    dst.put_slice(payload);
    Ok(())
}

/// Incremental frame decoder with a hard maximum frame size.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use mesh_protocol::{Frame, FrameDecoder, FrameKind};
///
/// let mut wire = BytesMut::new();
/// Frame::new(FrameKind::Data, &b"hello"[..]).encode(1024, &mut wire).unwrap();
///
/// let decoder = FrameDecoder::new(1024);
/// let mut buf = BytesMut::from(&wire[..3]);
/// assert_eq!(decoder.decode(&mut buf).unwrap(), None); // need more bytes
/// buf.extend_from_slice(&wire[3..]);
/// let frame = decoder.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(&frame.payload[..], b"hello");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_len: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames whose payload exceeds `max_len` bytes.
    pub fn new(max_len: u32) -> Self {
        Self { max_len }
    }

    /// The largest payload this decoder accepts.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Decodes one frame from the front of `buf`.
    ///
    /// - `Ok(Some(frame))`: a whole frame was removed from `buf`.
    /// - `Ok(None)`: `buf` holds a valid prefix of a frame; read more and call again. Nothing was
    ///   consumed.
    /// - `Err(_)`: the bytes cannot be a valid frame; the stream should be closed. Nothing was
    ///   consumed.
    ///
    /// The decoder never grows `buf`; a caller that wants to reserve capacity can ask
    /// [`bytes_needed`](Self::bytes_needed), which is bounded by the maximum frame size.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.peek_header(buf)? else {
            return Ok(None);
        };
        // In u64: on 32-bit targets `len` near u32::MAX plus the header would overflow usize.
        if (buf.len() as u64) < FRAME_HEADER_LEN as u64 + u64::from(header.len) {
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let payload = buf.split_to(header.len as usize).freeze();
        Ok(Some(Frame {
            kind: header.kind,
            payload,
        }))
    }

    /// How many more bytes `buf` needs before [`decode`](Self::decode) can return a frame:
    /// `0` when a whole frame is present. Errors as `decode` does.
    pub fn bytes_needed(&self, buf: &[u8]) -> Result<usize, FrameError> {
        match self.peek_header(buf)? {
            None => Ok(FRAME_HEADER_LEN - buf.len()),
            Some(h) => {
                let total = FRAME_HEADER_LEN as u64 + u64::from(h.len);
                Ok(usize::try_from(total.saturating_sub(buf.len() as u64)).unwrap_or(usize::MAX))
            }
        }
    }

    fn peek_header(&self, buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
        match buf.first_chunk::<FRAME_HEADER_LEN>() {
            None => Ok(None),
            Some(h) => FrameHeader::parse(*h, self.max_len).map(Some),
        }
    }
}

/// Why bytes could not be framed. Every variant means the stream is unusable; none changes any
/// state beyond the stream it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream did not start with `MESH`: not a mesh peer, or garbage.
    #[error("bad magic: stream does not start with MESH")]
    BadMagic,
    /// The peer speaks a protocol version we do not.
    #[error("unsupported protocol version {0} (we speak {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// The preamble names a stream kind we do not know.
    #[error("unknown stream kind 0x{0:02x}")]
    UnknownStreamKind(u8),
    /// A frame header names a frame kind we do not know.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownFrameKind(u8),
    /// A frame declared (or a sender tried to write) a payload larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared payload length.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The stream ended in the middle of a preamble or frame.
    #[error("stream ended inside a frame ({missing} more bytes expected)")]
    Truncated {
        /// Bytes still expected when the stream ended.
        missing: usize,
    },
    /// A frame of a kind that is valid in general arrived where the exchange does not allow it
    /// (for example a `Data` frame before the call header).
    #[error("unexpected {got:?} frame, expected {expected}")]
    UnexpectedFrame {
        /// The kind received.
        got: FrameKind,
        /// What the exchange expected at this point.
        expected: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trip() {
        for kind in [
            StreamKind::UnaryCall,
            StreamKind::StreamingCall,
            StreamKind::Publish,
            StreamKind::RegistrySync,
        ] {
            let p = Preamble::new(kind);
            assert_eq!(Preamble::parse(&p.to_bytes()), Ok(Some(p)));
        }
    }

    #[test]
    fn preamble_errors() {
        assert_eq!(Preamble::parse(b"ME"), Ok(None));
        assert_eq!(Preamble::parse(b"MX"), Err(FrameError::BadMagic));
        assert_eq!(
            Preamble::parse(b"GET / HTTP/1.1"),
            Err(FrameError::BadMagic)
        );
        assert_eq!(
            Preamble::parse(b"MESH\x02\x01"),
            Err(FrameError::UnsupportedVersion(2))
        );
        assert_eq!(
            Preamble::parse(b"MESH\x01\x77"),
            Err(FrameError::UnknownStreamKind(0x77))
        );
        assert_eq!(Preamble::parse(b""), Ok(None));
    }

    #[test]
    fn declared_4gib_frame_is_refused_without_allocating() {
        let decoder = FrameDecoder::default();
        // 0xFFFF_FFFF bytes declared: just over 4 GiB minus one.
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF, 0x02][..]);
        let cap_before = buf.capacity();
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
        assert_eq!(
            decoder.bytes_needed(&buf),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
        // The decoder consumed nothing and grew nothing.
        assert_eq!(buf.len(), FRAME_HEADER_LEN);
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn byte_by_byte_decoding() {
        let mut wire = BytesMut::new();
        Frame::new(FrameKind::Header, &b"abc"[..])
            .encode(16, &mut wire)
            .unwrap();
        Frame::new(FrameKind::End, Bytes::new())
            .encode(16, &mut wire)
            .unwrap();
        let d = FrameDecoder::new(16);
        let mut buf = BytesMut::new();
        let mut frames = vec![];
        for b in wire.iter() {
            buf.put_u8(*b);
            assert!(d.bytes_needed(&buf).unwrap() <= FRAME_HEADER_LEN + 3);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::new(FrameKind::Header, &b"abc"[..]),
                Frame::new(FrameKind::End, Bytes::new())
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn encoder_refuses_oversized_payload() {
        let mut dst = BytesMut::new();
        assert_eq!(
            Frame::new(FrameKind::Data, vec![0u8; 17]).encode(16, &mut dst),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        assert!(dst.is_empty());
    }

    #[test]
    fn unknown_frame_kind() {
        let d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0x09, 0xAA][..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::UnknownFrameKind(9)));
        let mut buf = BytesMut::from(&[0, 0, 0, 0, 0x00][..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::UnknownFrameKind(0)));
    }
}
