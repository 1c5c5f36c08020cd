//! One attempt of a unary call on the wire: a stream to one node, the header and body out, the
//! reply back, and how it failed if it did ([`Failure`](crate::client::policy::Failure)).

use std::net::SocketAddr;

use bytes::Bytes;
use mesh_protocol::{
    CallHeader, FrameKind, Preamble, ReplyHeader, RpcError, StreamKind, DEFAULT_MAX_HEADER_LEN,
    FRAMEWORK_ERROR_ID,
};

use crate::client::policy::Failure;
use crate::connections::Connections;
use crate::wire::{write_frames, FrameReader};

/// One attempt: one stream to `node`, header and body out, reply back.
pub(crate) async fn attempt(
    connections: &Connections,
    node: SocketAddr,
    header: &CallHeader,
    body: &[u8],
    max_frame: u32,
) -> Result<Bytes, Failure> {
    let unavailable = |e: String| RpcError::unavailable(FRAMEWORK_ERROR_ID, format!("{node}: {e}"));
    let conn = connections
        .connection(node)
        .await
        .map_err(|e| Failure::NotSent(unavailable(e.to_string())))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Failure::NotSent(unavailable(e.to_string())))?;
    let head = header
        .encode()
        .map_err(|e| Failure::NotSent(RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string())))?;
    let pre = Preamble::new(StreamKind::UnaryCall).to_bytes();
    write_frames(
        &mut send,
        &pre,
        &[(FrameKind::Header, &head), (FrameKind::Data, body)],
        max_frame,
    )
    .await
    .map_err(|e| Failure::MaybeRun(unavailable(e)))?;
    let mut frames = FrameReader::default();
    let reply = frames
        .next(&mut recv, FrameKind::Header, DEFAULT_MAX_HEADER_LEN as u32)
        .await
        .map_err(|e| Failure::MaybeRun(unavailable(e)))?;
    let reply = ReplyHeader::decode(&reply)
        .map_err(|e| Failure::MaybeRun(unavailable(format!("bad reply header: {e}"))))?;
    if let Some(e) = reply.error {
        return Err(Failure::Reply(e));
    }
    let body = frames
        .next(&mut recv, FrameKind::Data, max_frame)
        .await
        .map_err(|e| Failure::MaybeRun(unavailable(e)))?;
    frames.end_if_arrived(&mut recv).await;
    Ok(body)
}
