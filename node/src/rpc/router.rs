//! The [`Router`]: a node's handlers by service and endpoint, the calls in flight, and the
//! admission state (concurrency limit, shutdown, a function's one request) every call checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::rpc::handler::Handler;
use crate::rpc::streaming::StreamingHandler;
use crate::stats::{Slot, Stats};

/// The handlers of a node, by service and endpoint, and what serving them needs.
pub(crate) struct Router {
    pub(crate) handlers: Routes<dyn Handler>,
    pub(crate) streams: Routes<dyn StreamingHandler>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) in_flight: AtomicUsize,
    drained: Notify,
    pub(crate) max_in_flight: usize,
    pub(crate) max_frame: u32,
    /// A function node serves one request of its own services, then refuses the rest.
    pub(crate) serve_once: bool,
    pub(crate) served: AtomicBool,
    pub(crate) served_one: Notify,
}

impl Router {
    pub(crate) fn new(max_in_flight: usize, max_frame: u32, stats: Arc<Stats>) -> Self {
        Self {
            handlers: Routes::new(),
            streams: Routes::new(),
            stats,
            shutting_down: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            drained: Notify::new(),
            max_in_flight,
            max_frame,
            serve_once: false,
            served: AtomicBool::new(false),
            served_one: Notify::new(),
        }
    }

    pub(crate) fn insert(&mut self, service: &str, endpoint: &str, h: Arc<dyn Handler>) {
        self.handlers.insert(&self.stats, service, endpoint, h);
    }

    pub(crate) fn insert_stream(
        &mut self,
        service: &str,
        endpoint: &str,
        h: Arc<dyn StreamingHandler>,
    ) {
        self.streams.insert(&self.stats, service, endpoint, h);
    }

    /// Waits until no call is in flight, or `limit` passes; returns how many are left.
    pub(crate) async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.drained.notified();
            let n = self.in_flight.load(Ordering::Acquire);
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight.load(Ordering::Acquire);
            }
        }
    }
}

/// Handlers by service, then endpoint (looked up by `&str`, without building a key), each with
/// its statistics slot.
pub(crate) struct Routes<H: ?Sized>(HashMap<String, HashMap<String, Route<H>>>);

pub(crate) struct Route<H: ?Sized> {
    pub(crate) handler: Arc<H>,
    pub(crate) stats: Slot,
}

impl<H: ?Sized> Clone for Route<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<H: ?Sized> Routes<H> {
    fn new() -> Self {
        Self(HashMap::new())
    }

    fn insert(&mut self, stats: &Stats, service: &str, endpoint: &str, handler: Arc<H>) {
        let stats = stats.slot(&format!("{service}.{endpoint}"));
        self.0
            .entry(service.to_owned())
            .or_default()
            .insert(endpoint.to_owned(), Route { handler, stats });
    }

    pub(crate) fn get(&self, service: &str, endpoint: &str) -> Option<&Route<H>> {
        self.0.get(service)?.get(endpoint)
    }
}

/// Decrements the in-flight count when a call ends, however it ends.
pub(crate) struct InFlight<'a>(pub(crate) &'a Router);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// Signals that a function's one request is over, however it ended.
pub(crate) struct ServedOne<'a>(pub(crate) &'a Router);

impl Drop for ServedOne<'_> {
    fn drop(&mut self) {
        self.0.served_one.notify_one();
    }
}
