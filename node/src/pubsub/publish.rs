//! Where a publish fans out: the planner's rounds carried out, each delivery queued on its
//! node's link (or handed to this node's own subscribers), acknowledgements awaited, and failed
//! queue-group deliveries moved on.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use mesh_membership::Directory;
use mesh_protocol::{PublishHeader, RpcError, DEFAULT_MAX_FRAME_LEN, FRAMEWORK_ERROR_ID};

use crate::pubsub::links::Links;
use crate::pubsub::local::Subscribers;
use crate::pubsub::options::{Delivery, PublishOptions, PublishReport};
use crate::pubsub::plan::{Planner, Target};

/// What a node needs to publish.
pub(crate) struct Publisher {
    /// This node's address: deliveries to it skip the network.
    pub(crate) addr: SocketAddr,
    pub(crate) subscribers: Arc<Subscribers>,
    pub(crate) links: Links,
}

impl Publisher {
    /// Publishes `body` (encoded in `opts.content_type`) to the subscribers of `topic` in
    /// `directory`; `pick` chooses a member of a queue group. See [`crate::Node::publish`].
    pub(crate) async fn publish(
        &self,
        directory: &Directory,
        topic: &str,
        body: Bytes,
        opts: &PublishOptions,
        mut pick: impl FnMut(&[SocketAddr]) -> Option<SocketAddr>,
    ) -> Result<PublishReport, RpcError> {
        if body.len() > DEFAULT_MAX_FRAME_LEN as usize {
            return Err(RpcError::bad_request(
                FRAMEWORK_ERROR_ID,
                "message exceeds the frame limit",
            ));
        }
        let deadline = tokio::time::Instant::now() + opts.timeout;
        // A fire-and-forget publish may never wait on anything: without this, a loop of them
        // would starve every other task of its thread (the links' writers among them).
        tokio::task::consume_budget().await;
        let mut planner = Planner::new(directory.subscribers_of(topic));
        let mut round = planner.first_round(&mut pick);
        let mut report = PublishReport::default();
        while !round.is_empty() {
            let mut retry: Vec<String> = Vec::new();
            let mut waits = Vec::new();
            for (node, Target { plain, groups }) in std::mem::take(&mut round) {
                let header = PublishHeader {
                    seq: 0,
                    topic: topic.to_owned(),
                    content_type: opts.content_type.as_str().to_owned(),
                    metadata: opts.metadata.clone(),
                    plain,
                    groups: groups.clone(),
                    ack: opts.ack,
                };
                let sent = if node == self.addr {
                    let d = Delivery {
                        topic: topic.to_owned(),
                        metadata: opts.metadata.clone(),
                        publisher: node,
                        content_type: opts.content_type,
                        body: body.clone(),
                    };
                    match self.subscribers.deliver(d, plain, groups.clone()).await {
                        Ok(()) => Ok(None),
                        Err(e) if opts.ack => Err(e),
                        // Fire and forget: a full local queue is the subscription's drop count.
                        Err(_) => Ok(None),
                    }
                } else {
                    self.links.send(node, header, body.clone(), deadline).await
                };
                match sent {
                    Ok(None) => report.delivered.push(node),
                    Ok(Some(ack)) => waits.push((node, groups, ack)),
                    Err(e) => {
                        retry.extend(groups);
                        report.failed.push((node, e));
                    }
                }
            }
            let round_deadline = opts
                .attempt_timeout
                .map_or(deadline, |t| deadline.min(tokio::time::Instant::now() + t));
            for (node, groups, ack) in waits {
                let outcome = match tokio::time::timeout_at(round_deadline, ack).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err(RpcError::unavailable(FRAMEWORK_ERROR_ID, "link closed")),
                    Err(_) => Err(RpcError::timeout(FRAMEWORK_ERROR_ID, "no ack in time")),
                };
                match outcome {
                    Ok(()) => report.delivered.push(node),
                    Err(e) => {
                        retry.extend(groups);
                        report.failed.push((node, e));
                    }
                }
            }
            // Acknowledged queue-group deliveries move to another member of the group.
            if !opts.ack || tokio::time::Instant::now() >= deadline {
                break;
            }
            round = planner.retry_round(retry, &mut pick);
        }
        Ok(report)
    }
}
