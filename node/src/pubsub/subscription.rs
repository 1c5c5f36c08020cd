//! A [`Subscription`] as the application holds it, and subscribing: the local queue, the entry
//! advertised in the registry, and unsubscribing when it is dropped.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mesh_membership::MembershipHandle;
use mesh_protocol::{RpcError, Subscription as Advertised, FRAMEWORK_ERROR_ID, MAX_NAME_LEN};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::pubsub::local::Subscribers;
use crate::pubsub::options::{Delivery, Message};

/// Subscribes to `topic` (in the queue group `group`, if any): a local queue of `capacity`
/// messages, and the subscription advertised in this node's registry record until the returned
/// [`Subscription`] is dropped.
pub(crate) async fn subscribe<T: DeserializeOwned>(
    membership: &MembershipHandle,
    subscribers: &Arc<Subscribers>,
    topic: &str,
    group: Option<String>,
    capacity: usize,
) -> Result<Subscription<T>, RpcError> {
    if topic.is_empty() || topic.len() > MAX_NAME_LEN {
        return Err(RpcError::bad_request(
            FRAMEWORK_ERROR_ID,
            "topic must be 1..=256 bytes",
        ));
    }
    let subscribers = subscribers.clone();
    let (id, rx, dropped) = subscribers.add(topic, group.clone(), capacity);
    let entry = Advertised {
        topic: topic.to_owned(),
        queue: group,
    };
    let advertised = entry.clone();
    membership
        .update_record(move |r| {
            if !r.subscriptions.contains(&advertised) {
                r.subscriptions.push(advertised);
            }
        })
        .await
        .map_err(|_| RpcError::unavailable(FRAMEWORK_ERROR_ID, "node is shut down"))?;
    let membership = membership.clone();
    let topic_owned = topic.to_owned();
    let on_drop = move || {
        let (_, still) = subscribers.remove(&entry.topic, id);
        if still {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = membership
                    .update_record(move |r| r.subscriptions.retain(|s| *s != entry))
                    .await;
            });
        }
    };
    Ok(Subscription {
        rx,
        dropped,
        _guard: SubscriptionGuard {
            topic: topic_owned,
            on_drop: Some(Box::new(on_drop)),
        },
        _t: PhantomData,
    })
}

/// A subscription: messages of one topic (or one queue group of it), decoded as `T`.
/// Dropping it unsubscribes.
pub struct Subscription<T> {
    pub(crate) rx: mpsc::Receiver<Delivery>,
    pub(crate) dropped: Arc<AtomicU64>,
    pub(crate) _guard: SubscriptionGuard,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self._guard.topic)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Subscription<T> {
    /// The next message; `None` once the node has shut down. A body that does not decode as `T`
    /// comes as an error (the subscription goes on).
    pub async fn recv(&mut self) -> Option<Result<Message<T>, RpcError>> {
        let d = self.rx.recv().await?;
        Some(
            d.content_type
                .decode(&d.body)
                .map(|body| Message {
                    topic: d.topic,
                    metadata: d.metadata,
                    publisher: d.publisher,
                    body,
                })
                .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string())),
        )
    }

    /// The next message, still encoded.
    pub async fn recv_raw(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

impl<T> Subscription<T> {
    /// Messages dropped because this subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Unsubscribes when dropped.
pub(crate) struct SubscriptionGuard {
    pub(crate) topic: String,
    pub(crate) on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}
