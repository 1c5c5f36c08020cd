//! Fuzzes the header decoders and both codecs on arbitrary bytes.
//!
//! Nothing may panic, and whatever a decoder accepts must survive a re-encode and decode unchanged:
//! `CallHeader::decode`, `ReplyHeader::decode`, `from_msgpack::<serde_json::Value>` and
//! `ContentType::Json.decode::<serde_json::Value>` (a JSON value must also cross to MessagePack and
//! back exactly).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_protocol::{
    from_msgpack, to_msgpack, CallHeader, ContentType, ReplyHeader, RpcError, MAX_NAME_LEN,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = CallHeader::decode(data) {
        assert!((1..=MAX_NAME_LEN).contains(&h.service.len()));
        assert!((1..=MAX_NAME_LEN).contains(&h.endpoint.len()));
        let bytes = h.encode().expect("encode a decoded call header");
        assert_eq!(CallHeader::decode(&bytes), Ok(h));
    }

    if let Ok(r) = ReplyHeader::decode(data) {
        let bytes = r.encode().expect("encode a decoded reply header");
        assert_eq!(ReplyHeader::decode(&bytes), Ok(r));
    }

    if let Ok(e) = from_msgpack::<RpcError>(data) {
        let bytes = to_msgpack(&e).expect("encode a decoded error");
        assert_eq!(from_msgpack::<RpcError>(&bytes), Ok(e));
    }

    if let Ok(v) = from_msgpack::<serde_json::Value>(data) {
        let bytes = to_msgpack(&v).expect("encode a decoded msgpack value");
        assert_eq!(from_msgpack::<serde_json::Value>(&bytes), Ok(v));
    }

    if let Ok(v) = ContentType::Json.decode::<serde_json::Value>(data) {
        // JSON text -> JSON text is not compared: serde_json's default float parser is not
        // guaranteed to round-trip the last bit. MessagePack carries f64 exactly.
        ContentType::Json
            .encode(&v)
            .expect("encode a decoded json value");
        let bytes = ContentType::MsgPack
            .encode(&v)
            .expect("json value to msgpack");
        assert_eq!(
            ContentType::MsgPack.decode::<serde_json::Value>(&bytes),
            Ok(v)
        );
    }
});
