//! The subscriber's side of a `Publish` stream: deliveries in, handed to the local subscribers,
//! acknowledgements out, in order.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use mesh_protocol::{
    encode_frame, ContentType, FrameKind, PublishAck, PublishHeader, RpcError,
    DEFAULT_MAX_HEADER_LEN, FRAMEWORK_ERROR_ID,
};
use tracing::debug;

use crate::pubsub::local::Subscribers;
use crate::pubsub::options::Delivery;
use crate::wire::{close_code, refuse, FrameReader};

/// Serves one `Publish` stream from `from`: deliveries in, acks out, in order.
pub(crate) async fn serve(
    subscribers: Arc<Subscribers>,
    from: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    max_frame: u32,
) {
    let mut frames = FrameReader::default();
    loop {
        let head = match frames
            .next(&mut recv, FrameKind::Header, DEFAULT_MAX_HEADER_LEN as u32)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                debug!(%from, reason = %e, "publish stream ended");
                return;
            }
        };
        let header = match PublishHeader::decode(&head) {
            Ok(h) => h,
            Err(e) => {
                debug!(%from, error = %e, "bad publish header: stream refused");
                refuse(&mut send, &mut recv, close_code::PROTOCOL);
                return;
            }
        };
        let body = match frames.next(&mut recv, FrameKind::Data, max_frame).await {
            Ok(b) => b,
            Err(e) => {
                debug!(%from, error = %e, "publish stream broke inside a message");
                return;
            }
        };
        let result = match ContentType::parse(&header.content_type) {
            Ok(content_type) => {
                let d = Delivery {
                    topic: header.topic.clone(),
                    metadata: header.metadata,
                    publisher: from,
                    content_type,
                    body,
                };
                subscribers.deliver(d, header.plain, header.groups).await
            }
            Err(e) => Err(RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string())),
        };
        if header.ack {
            let ack = PublishAck {
                seq: header.seq,
                error: result.err(),
            };
            let mut buf = BytesMut::new();
            let written = match ack.encode() {
                Ok(bytes) => encode_frame(FrameKind::Header, &bytes, max_frame, &mut buf)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = written {
                debug!(error = %e, "ack did not encode");
                return;
            }
            if send.write_all(&buf).await.is_err() {
                return;
            }
        }
    }
}
