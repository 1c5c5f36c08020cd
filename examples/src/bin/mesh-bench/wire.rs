//! mesh's framing of a message, as the raw baselines put it on a stream.

use bytes::{Bytes, BytesMut};
use mesh_protocol::frame::{FrameKind, DEFAULT_MAX_FRAME_LEN};

/// Encodes one data frame as mesh does.
pub(crate) fn frame(payload: &[u8]) -> anyhow::Result<Bytes> {
    let mut out = BytesMut::with_capacity(payload.len() + 5);
    mesh_protocol::frame::encode_frame(FrameKind::Data, payload, DEFAULT_MAX_FRAME_LEN, &mut out)?;
    Ok(out.freeze())
}
