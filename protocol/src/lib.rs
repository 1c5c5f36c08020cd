//! Wire types of mesh: stream framing, call and reply headers, codecs and the structured error that
//! crosses the wire.
//!
//! This crate owns the bytes and nothing else: no sockets, no tokio, no clock. The `node` crate
//! reads and writes QUIC streams with it; another implementation can be written from
//! `docs/PROTOCOL.md`, which specifies the same formats byte by byte.
//!
//! Every stream opens with a [`Preamble`] (magic `MESH`, version, [`StreamKind`]) and then carries
//! length-prefixed [`Frame`]s. A unary call is:
//!
//! ```text
//! caller -> callee: preamble(UnaryCall) Header(CallHeader) Data(request body)   FIN
//! callee -> caller:                     Header(ReplyHeader) [Data(reply body)]  FIN
//! ```
//!
//! Decoding never panics and never allocates more than the configured limits because of a length a
//! peer declared: see [`FrameDecoder`] and [`from_msgpack`].
//!
//! # Examples
//!
//! ```
//! use bytes::BytesMut;
//! use mesh_protocol::*;
//!
//! // Caller side: frame a call to Greeter.Hello.
//! let mut wire = BytesMut::new();
//! wire.extend_from_slice(&Preamble::new(StreamKind::UnaryCall).to_bytes());
//! let header = CallHeader::new(1, "Greeter", "Hello");
//! encode_frame(FrameKind::Header, &header.encode()?, DEFAULT_MAX_FRAME_LEN, &mut wire)?;
//! let body = ContentType::MsgPack.encode(&serde_json::json!({"name": "John"}))?;
//! encode_frame(FrameKind::Data, &body, DEFAULT_MAX_FRAME_LEN, &mut wire)?;
//!
//! // Callee side: parse it back.
//! let preamble = Preamble::parse(&wire)?.expect("whole preamble");
//! assert_eq!(preamble.kind, StreamKind::UnaryCall);
//! let mut buf = wire.split_off(PREAMBLE_LEN);
//! let decoder = FrameDecoder::default();
//! let head = decoder.decode(&mut buf)?.expect("whole frame");
//! let call = CallHeader::decode(&head.payload)?;
//! assert_eq!((call.service.as_str(), call.endpoint.as_str()), ("Greeter", "Hello"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod codec;
pub mod error;
pub mod frame;
pub mod header;
pub mod registry;

pub use codec::{from_msgpack, to_msgpack, CodecError, ContentType};
pub use error::{code, RpcError, FRAMEWORK_ERROR_ID};
pub use frame::{
    encode_frame, Frame, FrameDecoder, FrameError, FrameHeader, FrameKind, Preamble, StreamKind,
    DEFAULT_MAX_FRAME_LEN, FRAME_HEADER_LEN, MAGIC, PREAMBLE_LEN, PROTOCOL_VERSION,
};
pub use header::{
    CallHeader, PublishAck, PublishHeader, ReplyHeader, BUILTIN_SERVICE, DEFAULT_MAX_HEADER_LEN,
    MAX_NAME_LEN,
};
pub use registry::{
    Digest, EndpointInfo, MemberId, NodeRecord, Proof, ServiceInfo, SignedRecord, Subscription,
    SyncRequest, SyncResponse, MAX_RECORD_LEN, RECORD_SIGNING_CONTEXT,
};
