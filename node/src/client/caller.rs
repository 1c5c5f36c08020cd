//! A node's outgoing calls: the client wrapper chain, then selection, attempts and retries of
//! each call, under its deadline. Which node is picked is the [`Balancer`]'s choice; whether a
//! failed attempt is retried is [`judge`]'s; this file does the IO between them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mesh_membership::MembershipHandle;
use mesh_protocol::{CallHeader, RpcError, DEFAULT_MAX_FRAME_LEN, FRAMEWORK_ERROR_ID};

use crate::client::attempt::attempt;
use crate::client::balancer::{candidates, Balancer, Tried};
use crate::client::options::{CallOptions, ClientCall, ClientNext, ClientWrapper};
use crate::client::policy::{judge, Failure, Retries, Step};
use crate::connections::Connections;
use crate::rpc::streaming::CallStream;

/// What a node needs to make calls.
pub(crate) struct Client {
    pub(crate) membership: MembershipHandle,
    pub(crate) connections: Connections,
    pub(crate) balancer: Balancer,
    pub(crate) wrappers: Vec<Arc<dyn ClientWrapper>>,
}

fn no_node(service: &str, endpoint: &str) -> RpcError {
    RpcError::not_found(
        FRAMEWORK_ERROR_ID,
        format!("no node serves {service}.{endpoint}"),
    )
}

impl Client {
    /// A call with an encoded body, through the client wrappers.
    pub(crate) async fn call_raw(
        self: &Arc<Self>,
        service: &str,
        endpoint: &str,
        body: Bytes,
        opts: &CallOptions,
    ) -> Result<Bytes, RpcError> {
        if self.wrappers.is_empty() {
            return self.select_and_call(service, endpoint, body, opts).await;
        }
        let call = ClientCall {
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            body,
            opts: opts.clone(),
        };
        let client = self.clone();
        let innermost: ClientNext = Arc::new(move |call: ClientCall| {
            let client = client.clone();
            Box::pin(async move {
                client
                    .select_and_call(&call.service, &call.endpoint, call.body, &call.opts)
                    .await
            })
        });
        let chain = self.wrappers.iter().rev().fold(innermost, |next, w| {
            let w = w.clone();
            Arc::new(move |call: ClientCall| w.wrap(call, next.clone())) as ClientNext
        });
        chain(call).await
    }

    /// Selection, attempts and retries of one call.
    async fn select_and_call(
        &self,
        service: &str,
        endpoint: &str,
        body: Bytes,
        opts: &CallOptions,
    ) -> Result<Bytes, RpcError> {
        if body.len() > DEFAULT_MAX_FRAME_LEN as usize {
            return Err(RpcError::bad_request(
                FRAMEWORK_ERROR_ID,
                format!(
                    "request of {} bytes exceeds the {DEFAULT_MAX_FRAME_LEN} byte frame limit",
                    body.len()
                ),
            ));
        }
        let b = &self.balancer;
        let deadline = Instant::now() + opts.timeout;
        let mut retries = Retries::new(opts.retries, opts.backoff, deadline);
        let mut tried = Tried::new();
        let mut last: Option<RpcError> = None;
        loop {
            let directory = self.membership.directory();
            let candidates = candidates(&directory, service, endpoint, opts, &tried);
            let Some(node) = b.pick(&candidates, opts) else {
                return Err(last.unwrap_or_else(|| no_node(service, endpoint)));
            };
            let idempotent = candidates
                .iter()
                .find(|n| n.node.addr == node)
                .and_then(|n| n.service.endpoints.iter().find(|e| e.name == endpoint))
                .is_some_and(|e| e.idempotent);
            drop(candidates);
            tried.insert(node);
            if retries.attempt() > 0 {
                b.retries.fetch_add(1, Ordering::Relaxed);
            }
            match self
                .attempt(node, service, endpoint, &body, opts, deadline)
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(failure) => {
                    let verdict = judge(&failure, idempotent);
                    if verdict.eject {
                        b.eject(node);
                    }
                    let e = failure.into_error();
                    if !verdict.retry {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
            match retries.next(Instant::now(), b.jitter()) {
                Step::Retry { pause } => tokio::time::sleep(pause).await,
                Step::Stop => break,
            }
        }
        Err(last.unwrap_or_else(|| RpcError::unavailable(FRAMEWORK_ERROR_ID, "no attempt made")))
    }

    /// Opens a streaming call on a node chosen by the options; see [`crate::Node::stream`].
    pub(crate) async fn stream(
        &self,
        service: &str,
        endpoint: &str,
        opts: &CallOptions,
    ) -> Result<CallStream, RpcError> {
        let b = &self.balancer;
        let deadline = Instant::now() + opts.timeout;
        let mut tried = Tried::new();
        let mut last = None;
        for _ in 0..=opts.retries {
            let directory = self.membership.directory();
            let Some(node) = b.pick(
                &candidates(&directory, service, endpoint, opts, &tried),
                opts,
            ) else {
                break;
            };
            tried.insert(node);
            let header = self.header(service, endpoint, opts, deadline);
            let opened = match self.connections.connection(node).await {
                Ok(conn) => {
                    CallStream::open(
                        conn,
                        &header,
                        opts.content_type,
                        DEFAULT_MAX_FRAME_LEN,
                        deadline,
                    )
                    .await
                }
                Err(e) => Err(RpcError::unavailable(
                    FRAMEWORK_ERROR_ID,
                    format!("{node}: {e}"),
                )),
            };
            match opened {
                Ok(s) => return Ok(s),
                Err(e) => {
                    b.eject(node);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| no_node(service, endpoint)))
    }

    fn header(
        &self,
        service: &str,
        endpoint: &str,
        opts: &CallOptions,
        deadline: Instant,
    ) -> CallHeader {
        let remaining = deadline.saturating_duration_since(Instant::now());
        CallHeader {
            id: self.balancer.next_id(),
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            content_type: opts.content_type.as_str().to_owned(),
            metadata: opts.metadata.clone(),
            deadline_us: Some(u64::try_from(remaining.as_micros()).unwrap_or(u64::MAX)),
            routing_key: opts.routing_key.clone(),
        }
    }

    /// One attempt at `node`, bounded by the attempt timeout and the call's deadline.
    pub(crate) async fn attempt(
        &self,
        node: SocketAddr,
        service: &str,
        endpoint: &str,
        body: &[u8],
        opts: &CallOptions,
        deadline: Instant,
    ) -> Result<Bytes, Failure> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = || Failure::Reply(RpcError::timeout(FRAMEWORK_ERROR_ID, "deadline exceeded"));
        if remaining.is_zero() {
            return Err(timeout());
        }
        let header = self.header(service, endpoint, opts, deadline);
        let _outstanding = self.balancer.start(node);
        let limit = opts.attempt_timeout.map_or(remaining, |t| t.min(remaining));
        match tokio::time::timeout(
            limit,
            attempt(
                &self.connections,
                node,
                &header,
                body,
                DEFAULT_MAX_FRAME_LEN,
            ),
        )
        .await
        {
            Ok(r) => r,
            // The attempt's own limit, before the call's deadline: the node may have run it.
            Err(_) if limit < remaining => Err(Failure::MaybeRun(RpcError::unavailable(
                FRAMEWORK_ERROR_ID,
                format!("{node}: no answer within the attempt timeout"),
            ))),
            Err(_) => Err(timeout()),
        }
    }
}
