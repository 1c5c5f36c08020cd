//! Property tests for every wire type of `mesh-protocol`: the stream preamble, frames and the
//! incremental frame decoder, call and reply headers, `RpcError`, both body codecs, and the
//! registry sync messages with their signed records.
//!
//! Each `proptest!` block runs a fixed number of cases (see the `*_CASES` constants), chosen so the
//! whole file runs in a few seconds in a debug build. Seeds are random per run; a failure prints its
//! seed and shrunk input, and `PROPTEST_RNG_SEED=<n>` replays a run.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use mesh_protocol::codec::MAX_DEPTH;
use mesh_protocol::{
    encode_frame, from_msgpack, to_msgpack, CallHeader, CodecError, ContentType, Digest, Frame,
    FrameDecoder, FrameError, FrameHeader, FrameKind, MemberId, NodeRecord, Preamble, Proof,
    ReplyHeader, RpcError, SignedRecord, StreamKind, SyncRequest, SyncResponse,
    DEFAULT_MAX_FRAME_LEN, DEFAULT_MAX_HEADER_LEN, FRAME_HEADER_LEN, MAGIC, MAX_NAME_LEN,
    PREAMBLE_LEN, PROTOCOL_VERSION,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Cases for cheap properties (a handful of bytes per case).
const CHEAP_CASES: u32 = 1024;
/// Cases for properties that build frames or headers of up to a few KiB.
const CASES: u32 = 256;
/// Cases for the heaviest properties (several frames of up to 4 KiB, split and re-assembled).
const HEAVY_CASES: u32 = 96;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------------------------------------
// Strategies
// ------------------------------------------------------------------------------------------------

const ALL_STREAM_KINDS: [StreamKind; 4] = [
    StreamKind::UnaryCall,
    StreamKind::StreamingCall,
    StreamKind::Publish,
    StreamKind::RegistrySync,
];

const ALL_FRAME_KINDS: [FrameKind; 3] = [FrameKind::Header, FrameKind::Data, FrameKind::End];

fn stream_kind() -> impl Strategy<Value = StreamKind> {
    prop::sample::select(&ALL_STREAM_KINDS[..])
}

fn frame_kind() -> impl Strategy<Value = FrameKind> {
    prop::sample::select(&ALL_FRAME_KINDS[..])
}

/// Any string of `len` chars, over the whole of Unicode (control characters, NULs, astral planes).
fn string_of(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), len).prop_map(String::from_iter)
}

/// An arbitrary short string (possibly empty).
fn text() -> impl Strategy<Value = String> {
    string_of(0..=24)
}

/// A valid service or endpoint name: 1..=64 chars (so at most 256 bytes of UTF-8 = MAX_NAME_LEN).
fn name() -> impl Strategy<Value = String> {
    string_of(1..=64)
}

fn metadata() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(text(), text(), 0..8)
}

fn call_header() -> impl Strategy<Value = CallHeader> {
    (
        any::<u64>(),
        name(),
        name(),
        prop_oneof![
            Just("application/msgpack".to_owned()),
            Just("application/json".to_owned()),
            text(),
        ],
        metadata(),
        prop::option::of(any::<u64>()),
        prop::option::of(text()),
    )
        .prop_map(
            |(id, service, endpoint, content_type, metadata, deadline_us, routing_key)| {
                CallHeader {
                    id,
                    service,
                    endpoint,
                    content_type,
                    metadata,
                    deadline_us,
                    routing_key,
                }
            },
        )
}

fn rpc_error() -> impl Strategy<Value = RpcError> {
    (text(), any::<u16>(), string_of(0..=128), text()).prop_map(|(id, code, detail, status)| {
        RpcError {
            id,
            code,
            detail,
            status,
        }
    })
}

fn reply_header() -> impl Strategy<Value = ReplyHeader> {
    (any::<u64>(), prop::option::of(rpc_error())).prop_map(|(id, error)| ReplyHeader { id, error })
}

/// Bytes that are sometimes garbage and sometimes a mutated valid header encoding, so decoders are
/// exercised past their first byte.
fn header_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        call_header().prop_map(|h| h.encode().expect("encode call header")),
        reply_header().prop_map(|h| h.encode().expect("encode reply header")),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (
            valid,
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(mut bytes, flips, cut)| {
                if !bytes.is_empty() {
                    for (at, b) in flips {
                        let i = at.index(bytes.len());
                        bytes[i] = b;
                    }
                    // Truncate to a random length (possibly the full length).
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes
            }),
    ]
}

// ------------------------------------------------------------------------------------------------
// Preamble
// ------------------------------------------------------------------------------------------------

/// What `Preamble::parse` must return for `buf`, as documented: each byte is checked as soon as it
/// is present (magic, then version), `Ok(None)` below six bytes, then kind.
fn preamble_model(buf: &[u8]) -> Result<Option<Preamble>, FrameError> {
    let have = buf.len().min(MAGIC.len());
    if buf[..have] != MAGIC[..have] {
        return Err(FrameError::BadMagic);
    }
    if buf.len() > 4 && buf[4] != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(buf[4]));
    }
    if buf.len() < PREAMBLE_LEN {
        return Ok(None);
    }
    let kind = ALL_STREAM_KINDS
        .iter()
        .copied()
        .find(|k| *k as u8 == buf[5])
        .ok_or(FrameError::UnknownStreamKind(buf[5]))?;
    Ok(Some(Preamble {
        version: PROTOCOL_VERSION,
        kind,
    }))
}

/// Bytes around a preamble: sometimes garbage, sometimes a valid preamble (or a prefix of one) with
/// a byte possibly replaced and something appended.
fn preamble_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..12),
        (
            stream_kind(),
            0..=PREAMBLE_LEN,
            prop::option::of((0..PREAMBLE_LEN, any::<u8>())),
            prop::collection::vec(any::<u8>(), 0..4),
        )
            .prop_map(|(kind, keep, replace, tail)| {
                let mut v = Preamble::new(kind).to_bytes()[..keep].to_vec();
                if let Some((at, b)) = replace {
                    if at < v.len() {
                        v[at] = b;
                    }
                }
                v.extend(tail);
                v
            }),
    ]
}

/// Is `buf` a strict prefix of some valid preamble (magic, our version, a known kind)?
fn is_strict_prefix_of_valid_preamble(buf: &[u8]) -> bool {
    buf.len() < PREAMBLE_LEN
        && ALL_STREAM_KINDS
            .iter()
            .any(|k| Preamble::new(*k).to_bytes().starts_with(buf))
}

proptest! {
    #![proptest_config(config(CHEAP_CASES))]

    #[test]
    fn preamble_round_trips_for_every_kind(kind in stream_kind(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
        let p = Preamble::new(kind);
        let bytes = p.to_bytes();
        prop_assert_eq!(&bytes[..4], &MAGIC[..]);
        prop_assert_eq!(bytes[4], PROTOCOL_VERSION);
        prop_assert_eq!(bytes[5], kind as u8);
        prop_assert_eq!(StreamKind::from_u8(kind as u8), Ok(kind));
        prop_assert_eq!(Preamble::parse(&bytes), Ok(Some(p)));
        // Whatever follows the preamble (the first frame) is not its business.
        let mut with_tail = bytes.to_vec();
        with_tail.extend(&tail);
        prop_assert_eq!(Preamble::parse(&with_tail), Ok(Some(p)));
        // Every strict prefix is "need more bytes".
        for n in 0..PREAMBLE_LEN {
            prop_assert_eq!(Preamble::parse(&bytes[..n]), Ok(None), "prefix of {} bytes", n);
        }
    }

    /// `Preamble::parse` never panics, and returns exactly what its documentation says (magic
    /// and version checked on any prefix, `Ok(None)` only below six bytes, then kind).
    #[test]
    fn preamble_parse_matches_model_on_arbitrary_bytes(buf in preamble_like_bytes()) {
        let got = Preamble::parse(&buf);
        prop_assert_eq!(&got, &preamble_model(&buf));
        if let Ok(Some(p)) = got {
            prop_assert_eq!(&p.to_bytes()[..], &buf[..PREAMBLE_LEN]);
        }
    }

    /// Garbage is refused at its first byte.
    #[test]
    fn preamble_bad_first_byte_is_refused_at_once(first in any::<u8>().prop_filter("not M", |b| *b != MAGIC[0]),
                                                  rest in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut buf = vec![first];
        prop_assert_eq!(Preamble::parse(&buf), Err(FrameError::BadMagic));
        buf.extend(rest);
        prop_assert_eq!(Preamble::parse(&buf), Err(FrameError::BadMagic));
    }
}

proptest! {
    #![proptest_config(config(CHEAP_CASES))]

    /// The property as stated in the test plan: `Ok(None)` only for strict prefixes of a valid
    /// preamble: a wrong version is refused as soon as its byte is present.
    #[test]
    fn preamble_ok_none_only_for_strict_prefixes_of_a_valid_preamble(buf in preamble_like_bytes()) {
        if let Ok(None) = Preamble::parse(&buf) {
            prop_assert!(is_strict_prefix_of_valid_preamble(&buf), "Ok(None) for {:02x?}", buf);
        }
    }
}

#[test]
fn preamble_ok_none_for_every_strict_prefix_of_a_valid_preamble() {
    // The converse direction of the property above, exhaustively: every strict prefix of every
    // valid preamble is `Ok(None)`.
    for kind in ALL_STREAM_KINDS {
        let bytes = Preamble::new(kind).to_bytes();
        for n in 0..PREAMBLE_LEN {
            assert!(is_strict_prefix_of_valid_preamble(&bytes[..n]));
            assert_eq!(Preamble::parse(&bytes[..n]), Ok(None));
        }
    }
}

#[test]
fn preamble_parse_exhaustive_over_last_two_bytes() {
    // All 65,536 version/kind combinations after a correct magic.
    for version in 0..=u8::MAX {
        for kind in 0..=u8::MAX {
            let buf = [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], version, kind];
            assert_eq!(Preamble::parse(&buf), preamble_model(&buf), "{buf:02x?}");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Frames
// ------------------------------------------------------------------------------------------------

fn encoded(frames: &[Frame], max_len: u32) -> BytesMut {
    let mut wire = BytesMut::new();
    for f in frames {
        f.encode(max_len, &mut wire).expect("frame within max");
    }
    wire
}

fn frame_strategy(max_payload: usize) -> impl Strategy<Value = Frame> {
    (
        frame_kind(),
        prop::collection::vec(any::<u8>(), 0..=max_payload),
    )
        .prop_map(|(kind, payload)| Frame::new(kind, payload))
}

/// What `FrameDecoder::decode` must do with `buf`: the reference model of the framing.
/// `Ok(Some((frame, consumed)))`, `Ok(None)` with the bytes still needed, or the error.
enum Expected {
    Frame(Frame, usize),
    NeedMore(usize),
    Error(FrameError),
}

fn frame_model(buf: &[u8], max_len: u32) -> Expected {
    if buf.len() < FRAME_HEADER_LEN {
        return Expected::NeedMore(FRAME_HEADER_LEN - buf.len());
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len > max_len {
        return Expected::Error(FrameError::TooLarge { len, max: max_len });
    }
    let Some(kind) = ALL_FRAME_KINDS.iter().copied().find(|k| *k as u8 == buf[4]) else {
        return Expected::Error(FrameError::UnknownFrameKind(buf[4]));
    };
    let total = FRAME_HEADER_LEN + len as usize;
    if buf.len() < total {
        return Expected::NeedMore(total - buf.len());
    }
    Expected::Frame(
        Frame::new(kind, Bytes::copy_from_slice(&buf[FRAME_HEADER_LEN..total])),
        total,
    )
}

/// Bytes that look like frames often enough to reach every branch of the decoder: a header with a
/// small (or any) declared length and a kind byte near the valid range, then some payload.
fn frame_like_bytes() -> impl Strategy<Value = (u32, Vec<u8>)> {
    let max = prop_oneof![0u32..=64, Just(DEFAULT_MAX_FRAME_LEN), any::<u32>()];
    max.prop_flat_map(|max| {
        let header = (
            prop_oneof![
                0u32..=80,
                Just(max),
                Just(max.saturating_add(1)),
                any::<u32>()
            ],
            prop_oneof![0u8..=4, any::<u8>()],
        )
            .prop_map(|(len, kind)| {
                let mut v = len.to_be_bytes().to_vec();
                v.push(kind);
                v
            });
        let bytes = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..96),
            (
                header,
                prop::collection::vec(any::<u8>(), 0..96),
                any::<prop::sample::Index>()
            )
                .prop_map(|(mut h, tail, cut)| {
                    h.extend(tail);
                    let keep = cut.index(h.len() + 1);
                    h.truncate(keep);
                    h
                }),
        ];
        (Just(max), bytes)
    })
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn frame_round_trip(frame in frame_strategy(4096)) {
        let len = frame.payload.len();
        let mut wire = encoded(std::slice::from_ref(&frame), DEFAULT_MAX_FRAME_LEN);
        prop_assert_eq!(wire.len(), FRAME_HEADER_LEN + len);
        prop_assert_eq!(&wire[..4], &(len as u32).to_be_bytes()[..]);
        prop_assert_eq!(wire[4], frame.kind as u8);
        prop_assert_eq!(&wire[FRAME_HEADER_LEN..], &frame.payload[..]);

        let decoder = FrameDecoder::default();
        prop_assert_eq!(decoder.bytes_needed(&wire), Ok(0));
        prop_assert_eq!(decoder.decode(&mut wire), Ok(Some(frame)));
        prop_assert!(wire.is_empty());
    }

    /// The limit is inclusive on both sides: a payload of exactly `max` bytes is written and read,
    /// one byte more is refused by the encoder (and by the decoder, had it been written).
    #[test]
    fn frame_limit_is_inclusive(frame in frame_strategy(2048)) {
        let len = frame.payload.len() as u32;
        let mut wire = encoded(std::slice::from_ref(&frame), len);
        let header = FrameHeader::parse(wire[..FRAME_HEADER_LEN].try_into().unwrap(), len);
        prop_assert_eq!(header, Ok(FrameHeader { len, kind: frame.kind }));
        let unchanged = wire.clone();
        if len > 0 {
            let mut dst = BytesMut::new();
            prop_assert_eq!(
                frame.encode(len - 1, &mut dst),
                Err(FrameError::TooLarge { len, max: len - 1 })
            );
            prop_assert!(dst.is_empty(), "encoder wrote {} bytes of a refused frame", dst.len());
            let mut copy = wire.clone();
            prop_assert_eq!(
                FrameDecoder::new(len - 1).decode(&mut copy),
                Err(FrameError::TooLarge { len, max: len - 1 })
            );
            prop_assert_eq!(&copy, &unchanged);
        }
        prop_assert_eq!(FrameDecoder::new(len).decode(&mut wire), Ok(Some(frame)));
        prop_assert!(wire.is_empty());
    }

}

proptest! {
    #![proptest_config(config(HEAVY_CASES))]

    /// Several frames, concatenated and delivered in arbitrary chunks, decode to the same list, and
    /// nothing is left over.
    #[test]
    fn chunked_stream_decodes_to_the_same_frames(
        frames in prop::collection::vec(frame_strategy(4096), 0..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        max_slack in 0u32..16,
    ) {
        let biggest = frames.iter().map(|f| f.payload.len()).max().unwrap_or(0) as u32;
        let max_len = biggest + max_slack;
        let wire = encoded(&frames, max_len);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        points.dedup();

        let decoder = FrameDecoder::new(max_len);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for pair in points.windows(2) {
            buf.extend_from_slice(&wire[pair[0]..pair[1]]);
            loop {
                let needed = decoder.bytes_needed(&buf).expect("valid stream");
                let before = buf.clone();
                match decoder.decode(&mut buf).expect("valid stream") {
                    Some(f) => {
                        prop_assert_eq!(needed, 0);
                        prop_assert_eq!(buf.len(), before.len() - FRAME_HEADER_LEN - f.payload.len());
                        got.push(f);
                    }
                    None => {
                        prop_assert!(needed > 0);
                        prop_assert_eq!(&buf, &before);
                        break;
                    }
                }
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Every strict prefix of a valid frame is "need more bytes", consumes nothing, and
    /// `bytes_needed` says exactly how many bytes are missing (up to the header first).
    #[test]
    fn every_strict_prefix_is_need_more(frame in frame_strategy(512)) {
        let wire = encoded(std::slice::from_ref(&frame), DEFAULT_MAX_FRAME_LEN);
        let decoder = FrameDecoder::default();
        for n in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..n]);
            let cap = buf.capacity();
            prop_assert_eq!(decoder.decode(&mut buf), Ok(None), "prefix of {} bytes", n);
            prop_assert_eq!(&buf[..], &wire[..n]);
            prop_assert_eq!(buf.capacity(), cap);
            let missing = if n < FRAME_HEADER_LEN { FRAME_HEADER_LEN - n } else { wire.len() - n };
            prop_assert_eq!(decoder.bytes_needed(&buf), Ok(missing), "prefix of {} bytes", n);
        }
    }
}

proptest! {
    #![proptest_config(config(CHEAP_CASES))]

    /// On arbitrary bytes the decoder never panics and does exactly what the reference model says;
    /// on `Ok(None)` and `Err` the buffer is untouched (contents and capacity), and `bytes_needed` is
    /// 0 exactly when `decode` returns a frame.
    #[test]
    fn decoder_matches_model_on_arbitrary_bytes((max_len, bytes) in frame_like_bytes()) {
        let decoder = FrameDecoder::new(max_len);
        prop_assert_eq!(decoder.max_len(), max_len);
        let mut buf = BytesMut::from(&bytes[..]);
        let cap = buf.capacity();
        let needed = decoder.bytes_needed(&buf);
        let got = decoder.decode(&mut buf);
        match frame_model(&bytes, max_len) {
            Expected::Frame(frame, consumed) => {
                prop_assert_eq!(got, Ok(Some(frame)));
                prop_assert_eq!(needed, Ok(0));
                prop_assert_eq!(&buf[..], &bytes[consumed..]);
            }
            Expected::NeedMore(missing) => {
                prop_assert_eq!(got, Ok(None));
                prop_assert_eq!(needed, Ok(missing));
                prop_assert!(missing > 0);
                prop_assert_eq!(&buf[..], &bytes[..]);
                prop_assert_eq!(buf.capacity(), cap);
            }
            Expected::Error(e) => {
                prop_assert_eq!(got, Err(e.clone()));
                prop_assert_eq!(needed, Err(e));
                prop_assert_eq!(&buf[..], &bytes[..]);
                prop_assert_eq!(buf.capacity(), cap);
            }
        }
    }

    /// A declared length above the maximum is `TooLarge` with that length, whatever the kind byte
    /// and whatever follows, from the decoder, `bytes_needed` and `FrameHeader::parse` alike.
    #[test]
    fn oversized_declared_length_is_too_large_whatever_follows(
        (max_len, len) in (0u32..u32::MAX).prop_flat_map(|max| (Just(max), (max + 1)..=u32::MAX)),
        kind in any::<u8>(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.push(kind);
        bytes.extend(&tail);
        let want = FrameError::TooLarge { len, max: max_len };
        let decoder = FrameDecoder::new(max_len);
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decoder.decode(&mut buf), Err(want.clone()));
        prop_assert_eq!(&buf[..], &bytes[..]);
        prop_assert_eq!(decoder.bytes_needed(&bytes), Err(want.clone()));
        let header: [u8; FRAME_HEADER_LEN] = bytes[..FRAME_HEADER_LEN].try_into().unwrap();
        prop_assert_eq!(FrameHeader::parse(header, max_len), Err(want));
    }

    #[test]
    fn frame_header_round_trip(len in any::<u32>(), kind in frame_kind()) {
        let h = FrameHeader { len, kind };
        prop_assert_eq!(FrameHeader::parse(h.to_bytes(), u32::MAX), Ok(h));
        prop_assert_eq!(FrameKind::from_u8(kind as u8), Ok(kind));
    }
}

#[test]
fn frame_default_max_is_refused_one_byte_above() {
    let decoder = FrameDecoder::default();
    let mut bytes = (DEFAULT_MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
    bytes.push(FrameKind::Data as u8);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(FrameError::TooLarge {
            len: DEFAULT_MAX_FRAME_LEN + 1,
            max: DEFAULT_MAX_FRAME_LEN
        })
    );
    // Exactly the default maximum is fine (and needs all its payload bytes).
    let mut bytes = DEFAULT_MAX_FRAME_LEN.to_be_bytes().to_vec();
    bytes.push(FrameKind::Data as u8);
    assert_eq!(
        decoder.bytes_needed(&bytes),
        Ok(DEFAULT_MAX_FRAME_LEN as usize)
    );
}

#[test]
fn encode_frame_free_function_matches_frame_encode() {
    let mut a = BytesMut::new();
    let mut b = BytesMut::new();
    encode_frame(FrameKind::End, b"xyz", 3, &mut a).unwrap();
    Frame::new(FrameKind::End, &b"xyz"[..])
        .encode(3, &mut b)
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(&a[..], b"\x00\x00\x00\x03\x03xyz");
}

// ------------------------------------------------------------------------------------------------
// Call and reply headers
// ------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn call_header_round_trip(h in call_header()) {
        let bytes = h.encode().expect("encode");
        prop_assert!(bytes.len() <= DEFAULT_MAX_HEADER_LEN);
        prop_assert_eq!(CallHeader::decode(&bytes), Ok(h.clone()));
        // It is a MessagePack map keyed by field name, readable without knowing the Rust type.
        let v: serde_json::Value = from_msgpack(&bytes).expect("generic decode");
        prop_assert_eq!(&v["service"], &serde_json::Value::String(h.service.clone()));
        prop_assert_eq!(&v["endpoint"], &serde_json::Value::String(h.endpoint.clone()));
        prop_assert_eq!(v["id"].as_u64(), Some(h.id));
    }

    /// A header written by a peer that omits the optional fields decodes with their defaults.
    #[test]
    fn call_header_optional_fields_default(id in any::<u64>(), service in name(), endpoint in name(), ct in text()) {
        let bytes = to_msgpack(&serde_json::json!({
            "id": id, "service": service, "endpoint": endpoint, "content_type": ct,
        })).expect("encode");
        let mut want = CallHeader::new(id, service, endpoint);
        want.content_type = ct;
        prop_assert_eq!(CallHeader::decode(&bytes), Ok(want));
    }

    /// An empty service or endpoint name is `CodecError::Invalid`, whatever else the header holds.
    #[test]
    fn call_header_empty_names_are_invalid(h in call_header(), which in 0u8..3) {
        let mut h = h;
        if which != 1 { h.service.clear(); }
        if which != 0 { h.endpoint.clear(); }
        let bytes = h.encode().expect("encode");
        prop_assert!(
            matches!(CallHeader::decode(&bytes), Err(CodecError::Invalid(_))),
            "decoded {:?}", CallHeader::decode(&bytes)
        );
    }

    /// Names are limited in bytes, not chars: exactly MAX_NAME_LEN bytes is accepted, one more is
    /// `Invalid`, for multi-byte UTF-8 too.
    #[test]
    fn call_header_name_byte_limit(h in call_header(), c in any::<char>(), on_service in any::<bool>()) {
        let mut h = h;
        let mut long = String::new();
        while long.len() + c.len_utf8() <= MAX_NAME_LEN { long.push(c); }
        while long.len() < MAX_NAME_LEN { long.push('x'); }
        let target = if on_service { &mut h.service } else { &mut h.endpoint };
        *target = long;
        prop_assert_eq!(CallHeader::decode(&h.encode().expect("encode")), Ok(h.clone()));
        let target = if on_service { &mut h.service } else { &mut h.endpoint };
        target.push('y');
        prop_assert!(matches!(
            CallHeader::decode(&h.encode().expect("encode")),
            Err(CodecError::Invalid(_))
        ));
    }

    #[test]
    fn reply_header_round_trip(r in reply_header()) {
        let bytes = r.encode().expect("encode");
        prop_assert_eq!(ReplyHeader::decode(&bytes), Ok(r.clone()));
        prop_assert_eq!(r.clone().into_result(), match r.error { None => Ok(()), Some(e) => Err(e) });
    }

    #[test]
    fn reply_header_constructors_round_trip(id in any::<u64>(), e in rpc_error()) {
        for r in [ReplyHeader::ok(id), ReplyHeader::err(id, e.clone())] {
            prop_assert_eq!(ReplyHeader::decode(&r.encode().expect("encode")), Ok(r));
        }
    }
}

proptest! {
    #![proptest_config(config(CHEAP_CASES))]

    /// The header decoders and the generic MessagePack decoder never panic on arbitrary or
    /// corrupted bytes, and whatever they accept re-encodes to something they accept as equal.
    #[test]
    fn header_decoders_never_panic(bytes in header_like_bytes()) {
        if let Ok(h) = CallHeader::decode(&bytes) {
            prop_assert!(!h.service.is_empty() && h.service.len() <= MAX_NAME_LEN);
            prop_assert!(!h.endpoint.is_empty() && h.endpoint.len() <= MAX_NAME_LEN);
            prop_assert_eq!(CallHeader::decode(&h.encode().expect("re-encode")), Ok(h));
        }
        if let Ok(r) = ReplyHeader::decode(&bytes) {
            prop_assert_eq!(ReplyHeader::decode(&r.encode().expect("re-encode")), Ok(r));
        }
        if let Ok(v) = from_msgpack::<serde_json::Value>(&bytes) {
            prop_assert_eq!(from_msgpack::<serde_json::Value>(&to_msgpack(&v).expect("re-encode")), Ok(v));
        }
        let _ = ContentType::Json.decode::<serde_json::Value>(&bytes);
        let _ = from_msgpack::<RpcError>(&bytes);
    }

    /// Trailing bytes after a valid header are refused, not ignored.
    #[test]
    fn header_trailing_bytes_are_refused(h in call_header(), tail in prop::collection::vec(any::<u8>(), 1..8)) {
        let mut bytes = h.encode().expect("encode");
        bytes.extend(&tail);
        prop_assert_eq!(CallHeader::decode(&bytes), Err(CodecError::TrailingBytes(tail.len())));
    }
}

#[test]
fn msgpack_nesting_limit_is_the_same_as_json() {
    // "MAX_DEPTH ... the same bound serde_json applies to JSON": MAX_DEPTH - 1 nested containers
    // around a scalar are accepted by both, MAX_DEPTH are refused by both, for arrays and maps.
    let msgpack_arrays = |depth: usize| {
        let mut v = vec![0x91; depth]; // fixarray(1)
        v.push(0xc0); // nil
        v
    };
    let msgpack_maps = |depth: usize| {
        let mut v = Vec::new();
        for _ in 0..depth {
            v.extend_from_slice(&[0x81, 0xa1, b'k']); // fixmap(1), key "k"
        }
        v.push(0xc0);
        v
    };
    let json_arrays = |depth: usize| format!("{}null{}", "[".repeat(depth), "]".repeat(depth));
    for depth in [
        0,
        1,
        MAX_DEPTH - 1,
        MAX_DEPTH,
        MAX_DEPTH + 1,
        10 * MAX_DEPTH,
    ] {
        let accept = depth < MAX_DEPTH;
        assert_eq!(
            from_msgpack::<serde_json::Value>(&msgpack_arrays(depth)).is_ok(),
            accept,
            "msgpack arrays, depth {depth}"
        );
        assert_eq!(
            from_msgpack::<serde_json::Value>(&msgpack_maps(depth)).is_ok(),
            accept,
            "msgpack maps, depth {depth}"
        );
        assert_eq!(
            ContentType::Json
                .decode::<serde_json::Value>(json_arrays(depth).as_bytes())
                .is_ok(),
            accept,
            "json arrays, depth {depth}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// RpcError and the body codecs
// ------------------------------------------------------------------------------------------------

const BOTH: [ContentType; 2] = [ContentType::MsgPack, ContentType::Json];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Leaf {
    name: String,
    flag: bool,
    small: i64,
    big: u64,
    tags: Vec<String>,
    maybe: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    id: u64,
    delta: i64,
    ok: bool,
    label: String,
    note: Option<String>,
    leaves: Vec<Leaf>,
    by_name: BTreeMap<String, Leaf>,
    matrix: Vec<Vec<i64>>,
    lookup: Option<BTreeMap<String, Vec<Option<bool>>>>,
    raw: Vec<u8>,
    child: Option<Box<Leaf>>,
}

fn leaf() -> impl Strategy<Value = Leaf> {
    (
        text(),
        any::<bool>(),
        any::<i64>(),
        any::<u64>(),
        prop::collection::vec(text(), 0..4),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(name, flag, small, big, tags, maybe)| Leaf {
            name,
            flag,
            small,
            big,
            tags,
            maybe,
        })
}

fn body() -> impl Strategy<Value = Body> {
    (
        (
            any::<u64>(),
            any::<i64>(),
            any::<bool>(),
            text(),
            prop::option::of(text()),
        ),
        (
            prop::collection::vec(leaf(), 0..4),
            prop::collection::btree_map(text(), leaf(), 0..4),
            prop::collection::vec(prop::collection::vec(any::<i64>(), 0..4), 0..4),
            prop::option::of(prop::collection::btree_map(
                text(),
                prop::collection::vec(prop::option::of(any::<bool>()), 0..4),
                0..4,
            )),
            prop::collection::vec(any::<u8>(), 0..32),
            prop::option::of(leaf().prop_map(Box::new)),
        ),
    )
        .prop_map(
            |((id, delta, ok, label, note), (leaves, by_name, matrix, lookup, raw, child))| Body {
                id,
                delta,
                ok,
                label,
                note,
                leaves,
                by_name,
                matrix,
                lookup,
                raw,
                child,
            },
        )
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn rpc_error_round_trips_in_both_codecs(e in rpc_error()) {
        for ct in BOTH {
            let bytes = ct.encode(&e).expect("encode");
            prop_assert_eq!(ct.decode::<RpcError>(&bytes), Ok(e.clone()), "{}", ct);
        }
    }

    #[test]
    fn rpc_error_constructor_round_trips(id in text(), code in any::<u16>(), detail in text()) {
        let e = RpcError::new(id, code, detail);
        prop_assert_eq!(e.status.as_str(), mesh_protocol::code::status(code));
        for ct in BOTH {
            prop_assert_eq!(ct.decode::<RpcError>(&ct.encode(&e).expect("encode")), Ok(e.clone()));
        }
    }

    #[test]
    fn body_round_trips_in_both_codecs(b in body()) {
        for ct in BOTH {
            let bytes = ct.encode(&b).expect("encode");
            prop_assert_eq!(ct.decode::<Body>(&bytes), Ok(b.clone()), "{}", ct);
        }
    }

    /// "Both encode structs as maps keyed by field name, so a MessagePack body and a JSON body of
    /// the same value have the same shape" (codec module docs).
    #[test]
    fn both_codecs_give_the_same_shape(b in body()) {
        let from_mp: serde_json::Value =
            from_msgpack(&ContentType::MsgPack.encode(&b).expect("encode")).expect("decode");
        let from_json: serde_json::Value =
            ContentType::Json.decode(&ContentType::Json.encode(&b).expect("encode")).expect("decode");
        prop_assert_eq!(from_mp, from_json);
    }

    /// Trailing bytes after a complete value are refused by both codecs, not ignored.
    #[test]
    fn trailing_bytes_refused_by_both_codecs(e in rpc_error()) {
        let mut mp = ContentType::MsgPack.encode(&e).expect("encode");
        mp.push(0xc0);
        prop_assert_eq!(ContentType::MsgPack.decode::<RpcError>(&mp), Err(CodecError::TrailingBytes(1)));
        let mut js = ContentType::Json.encode(&e).expect("encode");
        js.extend_from_slice(b" x");
        prop_assert!(matches!(ContentType::Json.decode::<RpcError>(&js), Err(CodecError::Decode(_))));
    }
}

fn member_id() -> impl Strategy<Value = MemberId> {
    (any::<[u8; 4]>(), any::<u16>(), any::<u64>())
        .prop_map(|(ip, port, generation)| MemberId::new((ip, port).into(), generation))
}

fn signed_record() -> impl Strategy<Value = SignedRecord> {
    (
        member_id(),
        any::<u64>(),
        text(),
        metadata(),
        prop::collection::vec(any::<u8>(), 0..600),
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(id, version, name, labels, cert, sig)| {
            let mut r = NodeRecord::new(id, name);
            r.version = version;
            r.labels = labels;
            let (bytes, _) = SignedRecord::encode(&r).expect("encode");
            SignedRecord::new(bytes, Proof { cert, sig })
        })
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Sync messages round-trip with their signed records byte for byte, and each record
    /// decodes back to what was signed.
    #[test]
    fn sync_messages_round_trip_with_signed_records(
        records in prop::collection::vec(signed_record(), 0..4),
        digests in prop::collection::vec((member_id(), any::<u64>()), 0..4),
        full in any::<bool>(),
        down in prop::collection::vec(member_id(), 0..4),
    ) {
        let req = SyncRequest {
            digests: digests.into_iter().map(|(id, version)| Digest { id, version }).collect(),
            full,
            records: records.clone(),
        };
        prop_assert_eq!(from_msgpack::<SyncRequest>(&to_msgpack(&req).expect("encode")), Ok(req));
        let resp = SyncResponse { records: records.clone(), want: down.clone(), down };
        prop_assert_eq!(from_msgpack::<SyncResponse>(&to_msgpack(&resp).expect("encode")), Ok(resp));
        for r in &records {
            let back = r.decode_record().expect("decode");
            prop_assert_eq!(back.encode().expect("encode"), r.record.clone());
        }
    }

    /// Whatever a peer puts in a signed record's bytes, decoding it is an error or a record,
    /// never a panic.
    #[test]
    fn arbitrary_record_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = SignedRecord::new(bytes, Proof::default()).decode_record();
    }
}
