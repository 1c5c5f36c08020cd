//! This node's subscriptions by topic, and delivering to them: every plain subscription, and one
//! member of each queue group targeted, through the subscriber wrappers, into bounded queues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use mesh_protocol::{RpcError, FRAMEWORK_ERROR_ID};
use tokio::sync::mpsc;

use crate::pubsub::options::{Delivery, SubscriberNext, SubscriberWrapper};

struct LocalSub {
    id: u64,
    group: Option<String>,
    tx: mpsc::Sender<Delivery>,
    dropped: Arc<AtomicU64>,
}

/// This node's subscriptions.
pub(crate) struct Subscribers {
    by_topic: Mutex<HashMap<String, Vec<LocalSub>>>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
    pub(crate) wrappers: Vec<Arc<dyn SubscriberWrapper>>,
}

impl Subscribers {
    pub(crate) fn new(wrappers: Vec<Arc<dyn SubscriberWrapper>>) -> Self {
        Self {
            by_topic: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            round_robin: AtomicUsize::new(0),
            wrappers,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<LocalSub>>> {
        self.by_topic.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add(
        &self,
        topic: &str,
        group: Option<String>,
        capacity: usize,
    ) -> (u64, mpsc::Receiver<Delivery>, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        self.lock()
            .entry(topic.to_owned())
            .or_default()
            .push(LocalSub {
                id,
                group,
                tx,
                dropped: dropped.clone(),
            });
        (id, rx, dropped)
    }

    /// Removes subscription `id`; returns whether another local subscription still holds the
    /// same (topic, group), i.e. whether the registry entry must stay.
    pub(crate) fn remove(&self, topic: &str, id: u64) -> (Option<String>, bool) {
        let mut m = self.lock();
        let Some(subs) = m.get_mut(topic) else {
            return (None, false);
        };
        let group = subs
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.group.clone());
        subs.retain(|s| s.id != id);
        let still = subs.iter().any(|s| s.group == group);
        if subs.is_empty() {
            m.remove(topic);
        }
        (group, still)
    }

    /// Queues `d` to the targeted local subscriptions: every plain one if `plain`, and one of
    /// each group in `groups`. Errors if one of them could not take it.
    fn enqueue(&self, d: Delivery, plain: bool, groups: &[String]) -> Result<(), RpcError> {
        let m = self.lock();
        let subs = m.get(&d.topic).map(Vec::as_slice).unwrap_or(&[]);
        let mut targets: Vec<&LocalSub> = Vec::new();
        if plain {
            targets.extend(subs.iter().filter(|s| s.group.is_none()));
        }
        for g in groups {
            let members: Vec<&LocalSub> = subs
                .iter()
                .filter(|s| s.group.as_deref() == Some(g.as_str()))
                .collect();
            if !members.is_empty() {
                let i = self.round_robin.fetch_add(1, Ordering::Relaxed) % members.len();
                targets.push(members[i]);
            }
        }
        if targets.is_empty() {
            return Err(RpcError::not_found(
                FRAMEWORK_ERROR_ID,
                format!("no subscriber of {} here", d.topic),
            ));
        }
        let mut result = Ok(());
        for t in targets {
            match t.tx.try_send(d.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    t.dropped.fetch_add(1, Ordering::Relaxed);
                    result = Err(RpcError::too_many_requests(
                        FRAMEWORK_ERROR_ID,
                        format!("subscriber queue of {} is full", d.topic),
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    result = Err(RpcError::not_found(FRAMEWORK_ERROR_ID, "unsubscribed"));
                }
            }
        }
        result
    }

    /// Runs the subscriber wrappers, then queues.
    pub(crate) async fn deliver(
        self: &Arc<Self>,
        d: Delivery,
        plain: bool,
        groups: Vec<String>,
    ) -> Result<(), RpcError> {
        if self.wrappers.is_empty() {
            return self.enqueue(d, plain, &groups);
        }
        let me = self.clone();
        let groups = Arc::new(groups);
        let innermost: SubscriberNext = Arc::new(move |d: Delivery| {
            let (me, groups) = (me.clone(), groups.clone());
            Box::pin(async move { me.enqueue(d, plain, &groups) })
        });
        let chain = self.wrappers.iter().rev().fold(innermost, |next, w| {
            let w = w.clone();
            Arc::new(move |d: Delivery| w.wrap(d, next.clone())) as SubscriberNext
        });
        chain(d).await
    }
}
