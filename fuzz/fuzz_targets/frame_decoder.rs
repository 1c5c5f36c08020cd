//! Fuzzes the stream preamble and the incremental frame decoder.
//!
//! Input layout: byte 0 is the decoder's maximum frame length (0..=255, small so that both the
//! `TooLarge` and the whole-frame paths are reached), byte 1 picks a chunk size (1..=17), the rest
//! is the stream. The stream is decoded once in one piece and once fed chunk by chunk; both must
//! give the same frames and the same error, and every step must keep the decoder's contract.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mesh_protocol::{Frame, FrameDecoder, FrameError, Preamble, FRAME_HEADER_LEN, PREAMBLE_LEN};

/// Decodes frames from `buf` until it needs more bytes or fails, checking the contract of one
/// `decode` call at a time: on `Ok(None)` and `Err` nothing is consumed, and `bytes_needed` agrees.
fn drain(
    decoder: &FrameDecoder,
    buf: &mut BytesMut,
    frames: &mut Vec<Frame>,
) -> Option<FrameError> {
    loop {
        let before = buf.clone();
        let needed = decoder.bytes_needed(buf);
        match decoder.decode(buf) {
            Ok(Some(frame)) => {
                assert_eq!(needed, Ok(0));
                assert!(frame.payload.len() <= decoder.max_len() as usize);
                assert_eq!(
                    buf.len(),
                    before.len() - FRAME_HEADER_LEN - frame.payload.len()
                );
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(*buf, before, "Ok(None) consumed bytes");
                assert!(matches!(needed, Ok(n) if n > 0), "{needed:?}");
                return None;
            }
            Err(e) => {
                assert_eq!(*buf, before, "Err consumed bytes");
                assert_eq!(needed, Err(e.clone()));
                return Some(e);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The preamble, on the raw input.
    match Preamble::parse(data) {
        Ok(Some(p)) => assert_eq!(&p.to_bytes()[..], &data[..PREAMBLE_LEN]),
        Ok(None) => assert!(data.len() < PREAMBLE_LEN),
        Err(_) => {}
    }

    let [max, chunk, stream @ ..] = data else {
        return;
    };
    let decoder = FrameDecoder::new(u32::from(*max));
    let chunk = usize::from(*chunk) % 17 + 1;

    // In one piece.
    let mut whole = BytesMut::from(stream);
    let mut whole_frames = Vec::new();
    let whole_err = drain(&decoder, &mut whole, &mut whole_frames);

    // Chunk by chunk.
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut err = None;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        err = drain(&decoder, &mut buf, &mut frames);
        if err.is_some() {
            break;
        }
    }

    assert_eq!(frames, whole_frames);
    assert_eq!(err, whole_err);
    if err.is_none() {
        assert_eq!(buf, whole);
    }

    // The frames re-encode to exactly the bytes they were decoded from.
    let mut again = BytesMut::new();
    for f in &frames {
        f.encode(decoder.max_len(), &mut again)
            .expect("a decoded frame is within max");
    }
    assert_eq!(&again[..], &stream[..again.len()]);
});
