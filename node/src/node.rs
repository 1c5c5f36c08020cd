//! The node handle: build, spawn, call, shut down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_membership::{
    generation_now, Directory, Event, Membership, MembershipConfig, MembershipHandle, ServiceNode,
};
use mesh_protocol::{
    CallHeader, PublishHeader, RpcError, ServiceInfo, Subscription as Subscription_,
    DEFAULT_MAX_FRAME_LEN,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use tracing::{info, warn};

use crate::client::{
    attempt, matches, refused_before_running, Balancer, CallOptions, ClientCall, ClientNext,
    ClientWrapper, Failure, Tried,
};
use crate::endpoint::{bind_socket, endpoint_on, EndpointConfig, EndpointError};
use crate::pubsub::{
    Delivery, Links, Plan, PublishOptions, PublishReport, SubscriberWrapper, Subscribers,
    Subscription, SubscriptionGuard, DEFAULT_SUBSCRIPTION_QUEUE,
};
use crate::security::{Credentials, SecurityError};
use crate::server::{typed, wrap_all, Router, RpcServer, Service, Wrapper, FRAMEWORK_ERROR_ID};
use crate::stats::{EndpointStats, Stats};
use crate::streaming::CallStream;
use crate::transport::{QuicTransport, MAX_GOSSIP_DATAGRAM};

/// Service name of the endpoints every node serves: `mesh.Health`, `mesh.Info`, `mesh.Stats`.
/// They are not advertised in the registry; call them on a given node with
/// [`Node::call_node`].
pub const BUILTIN_SERVICE: &str = "mesh";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No credentials were given.
    #[error("no credentials: give a cluster key or cluster CA certificates")]
    NoCredentials,
    /// Bound to a wildcard address with nothing to advertise.
    #[error("bound to {0}: give an advertise address peers can reach")]
    NoAdvertiseAddress(SocketAddr),
    /// The credentials could not be used.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The endpoint could not be built.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Two handlers for the same endpoint.
    #[error("endpoint {0} registered twice")]
    DuplicateEndpoint(String),
}

/// Builds a [`Node`].
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use mesh_node::{Credentials, Node, Service, typed};
/// # #[derive(serde::Deserialize)] struct Hello { name: String }
/// # #[derive(serde::Serialize)] struct Greeting { greeting: String }
///
/// let node = Node::builder()
///     .name("greeter-1")
///     .bind("0.0.0.0:7946".parse()?)
///     .advertise("10.0.0.5:7946".parse()?)
///     .seeds(vec!["10.0.0.1:7946".parse()?])
///     .credentials(Credentials::key(std::env::var("MESH_CLUSTER_KEY")?)?)
///     .service(Service::new("Greeter").idempotent_endpoint("Hello", typed(|_req, h: Hello| async move {
///         Ok(Greeting { greeting: format!("Hello {}", h.name) })
///     })))
///     .spawn()
///     .await?;
/// node.shutdown().await;
/// # Ok(()) }
/// ```
pub struct NodeBuilder {
    name: String,
    bind: SocketAddr,
    socket: Option<std::net::UdpSocket>,
    quic_socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    advertise: Option<SocketAddr>,
    seeds: Vec<SocketAddr>,
    credentials: Option<Credentials>,
    membership: MembershipConfig,
    endpoint: EndpointConfig,
    services: Vec<Service>,
    wrappers: Vec<Arc<dyn Wrapper>>,
    client_wrappers: Vec<Arc<dyn ClientWrapper>>,
    subscriber_wrappers: Vec<Arc<dyn SubscriberWrapper>>,
    subscription_queue: usize,
    max_in_flight: usize,
    drain_timeout: Duration,
    ejection: Duration,
    labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("name", &self.name)
            .field("bind", &self.bind)
            .finish_non_exhaustive()
    }
}

impl Default for NodeBuilder {
    fn default() -> Self {
        Self {
            name: String::new(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            socket: None,
            quic_socket: None,
            advertise: None,
            seeds: Vec::new(),
            credentials: None,
            membership: MembershipConfig::lan(32),
            endpoint: EndpointConfig::default(),
            services: Vec::new(),
            wrappers: Vec::new(),
            client_wrappers: Vec::new(),
            subscriber_wrappers: Vec::new(),
            subscription_queue: DEFAULT_SUBSCRIPTION_QUEUE,
            max_in_flight: 4096,
            drain_timeout: Duration::from_secs(10),
            ejection: Duration::from_secs(5),
            labels: BTreeMap::new(),
        }
    }
}

impl NodeBuilder {
    /// The node's name (default: its address).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// The UDP address to bind (default `127.0.0.1:0`).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }
    /// Uses an already bound UDP socket instead of binding `bind`: useful when a certificate must
    /// name the address before the node starts (cluster-CA mode with port 0).
    pub fn socket(mut self, socket: std::net::UdpSocket) -> Self {
        self.socket = Some(socket);
        self
    }
    /// Runs the node on a fault-injecting socket (chaos tests): `socket` from
    /// [`FaultySocket::wrap`](crate::chaos::FaultySocket::wrap), with `faults` applied.
    pub fn socket_with_faults(
        mut self,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        faults: crate::chaos::Faults,
    ) -> Self {
        self.quic_socket = Some(crate::chaos::FaultySocket::new(socket, faults));
        self
    }
    /// The address peers reach this node at (default: the bound address).
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise = Some(addr);
        self
    }
    /// Seeds to join through; none makes a cluster of one.
    pub fn seeds(mut self, seeds: Vec<SocketAddr>) -> Self {
        self.seeds = seeds;
        self
    }
    /// The cluster credentials (required).
    pub fn credentials(mut self, c: Credentials) -> Self {
        self.credentials = Some(c);
        self
    }
    /// Membership settings (default [`MembershipConfig::lan`]).
    pub fn membership(mut self, c: MembershipConfig) -> Self {
        self.membership = c;
        self
    }
    /// QUIC settings.
    pub fn endpoint_config(mut self, c: EndpointConfig) -> Self {
        self.endpoint = c;
        self
    }
    /// Serves `service`.
    pub fn service(mut self, s: Service) -> Self {
        self.services.push(s);
        self
    }
    /// Wraps every handler of this node (the first wrapper added is the outermost).
    pub fn wrap(mut self, w: impl Wrapper) -> Self {
        self.wrappers.push(Arc::new(w));
        self
    }
    /// Wraps every call this node makes (the first wrapper added is the outermost).
    pub fn wrap_client(mut self, w: impl ClientWrapper) -> Self {
        self.client_wrappers.push(Arc::new(w));
        self
    }
    /// Wraps every delivery to this node's subscriptions (the first wrapper added is the
    /// outermost).
    pub fn wrap_subscriber(mut self, w: impl SubscriberWrapper) -> Self {
        self.subscriber_wrappers.push(Arc::new(w));
        self
    }
    /// Messages each subscription buffers before new ones are dropped (default 1024).
    pub fn subscription_queue(mut self, n: usize) -> Self {
        self.subscription_queue = n;
        self
    }
    /// A node label, advertised in the registry.
    pub fn label(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    /// Calls served at once before new ones get a 429 (default 4096).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
    /// How long [`Node::shutdown`] waits for calls in flight (default 10 s).
    pub fn drain_timeout(mut self, t: Duration) -> Self {
        self.drain_timeout = t;
        self
    }
    /// How long a node that failed at the transport level is avoided (default 5 s).
    pub fn ejection(mut self, t: Duration) -> Self {
        self.ejection = t;
        self
    }

    /// Runs the node as a **function**: it joins, serves exactly one request of its services,
    /// replies, and leaves the cluster cleanly. Requests that arrive meanwhile get a 503 that
    /// clients retry on another node.
    pub async fn run_function(self) -> Result<(), StartError> {
        let node = self.spawn_inner(true).await?;
        // Fires once the reply has been acknowledged by the caller.
        node.inner.router.served_one.notified().await;
        node.shutdown().await;
        Ok(())
    }

    /// Binds, joins and starts serving. Must run inside a tokio runtime.
    pub async fn spawn(self) -> Result<Node, StartError> {
        self.spawn_inner(false).await
    }

    async fn spawn_inner(self, serve_once: bool) -> Result<Node, StartError> {
        let credentials = self.credentials.ok_or(StartError::NoCredentials)?;
        let wrap = |s: std::net::UdpSocket| {
            quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, s).map_err(EndpointError::Bind)
        };
        let socket: Arc<dyn quinn::AsyncUdpSocket> = match (self.quic_socket, self.socket) {
            (Some(q), _) => q,
            (None, Some(s)) => wrap(s)?,
            (None, None) => wrap(bind_socket(self.bind)?)?,
        };
        let local = socket.local_addr().map_err(EndpointError::Bind)?;
        let advertise = match self.advertise {
            Some(a) => a,
            None if local.ip().is_unspecified() => {
                return Err(StartError::NoAdvertiseAddress(local))
            }
            None => local,
        };
        let cluster = self.membership.cluster.clone();
        // Key stretching takes a moment: keep it off the async threads.
        let tls = tokio::task::spawn_blocking(move || credentials.tls(&cluster, advertise))
            .await
            .map_err(|e| SecurityError::Load(e.to_string()))??;
        let quic = endpoint_on(socket, &tls, &self.endpoint)?;

        let stats = Arc::new(Stats::default());
        let subscribers = Arc::new(Subscribers::new(self.subscriber_wrappers));
        let mut router = Router::new(
            self.max_in_flight,
            DEFAULT_MAX_FRAME_LEN,
            stats.clone(),
            subscribers.clone(),
        );
        router.serve_once = serve_once;
        let mut infos: Vec<ServiceInfo> = Vec::new();
        for s in self.services {
            for (endpoint, h) in s.streams {
                router.insert_stream(&s.info.name, &endpoint, h);
            }
            for (endpoint, h) in s.handlers {
                let key = (s.info.name.clone(), endpoint.clone());
                if infos
                    .iter()
                    .any(|i| i.name == key.0 && i.endpoints.iter().any(|e| e.name == key.1))
                {
                    return Err(StartError::DuplicateEndpoint(format!(
                        "{}.{}",
                        key.0, key.1
                    )));
                }
                router.insert(&key.0, &key.1, wrap_all(h, &self.wrappers));
            }
            match infos.iter_mut().find(|i| i.name == s.info.name) {
                Some(existing) => existing.endpoints.extend(s.info.endpoints),
                None => infos.push(s.info),
            }
        }
        let name = if self.name.is_empty() {
            advertise.to_string()
        } else {
            self.name
        };
        let started = Instant::now();
        let view: Arc<std::sync::OnceLock<MembershipHandle>> = Arc::default();
        add_builtins(
            &mut router,
            &name,
            &infos,
            stats.clone(),
            started,
            view.clone(),
        );
        let router = Arc::new(router);

        let (transport, incoming) = QuicTransport::start(
            quic.clone(),
            advertise,
            Some(Arc::new(RpcServer {
                router: router.clone(),
            })),
        );
        let mut mconfig = self.membership;
        mconfig.max_datagram_size = mconfig.max_datagram_size.min(MAX_GOSSIP_DATAGRAM);
        let id = mesh_protocol::MemberId::new(advertise, generation_now());
        let mut core = Membership::new(mconfig, id, name.clone(), id.generation);
        core.set_require_source_match(true);
        let labels = self.labels;
        let published = infos.clone();
        core.update_record(std::time::Instant::now(), move |r| {
            r.services = published;
            r.labels = labels;
        });
        let membership =
            MembershipHandle::spawn(core, Arc::new(transport.clone()), incoming, &self.seeds);
        let _ = view.set(membership.clone());
        tokio::spawn(close_connections_to_down_members(
            membership.watch(),
            transport.clone(),
        ));
        info!(%name, %advertise, services = infos.len(), "node started");
        let links = Links::new(transport.clone(), DEFAULT_MAX_FRAME_LEN);
        Ok(Node {
            inner: Arc::new(Inner {
                name,
                addr: advertise,
                membership,
                transport,
                endpoint: quic,
                router,
                balancer: Balancer::new(self.ejection, id.generation),
                drain_timeout: self.drain_timeout,
                client_wrappers: self.client_wrappers,
                links,
                subscribers,
                subscription_queue: self.subscription_queue,
            }),
        })
    }
}

/// A crashed peer never closes its connections: calls to it would hang until QUIC's idle
/// timeout. When membership declares a member down, close ours, so that its calls fail now (and
/// idempotent ones are retried elsewhere). A member that left gracefully is draining its calls:
/// its connection stays.
async fn close_connections_to_down_members(
    mut events: tokio::sync::broadcast::Receiver<Event>,
    transport: QuicTransport,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(Event::MemberDown { id }) => transport.close_peer(id.addr, "declared down"),
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => warn!(missed = n, "membership events lagged"),
            Err(RecvError::Closed) => return,
        }
    }
}

/// What `mesh.Info` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// mesh version.
    pub version: String,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Services served.
    pub services: Vec<ServiceInfo>,
}

/// What `mesh.Health` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"`. (A node shutting down refuses every call with a 503, this one included.)
    pub status: String,
}

/// A member as `mesh.Members` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node name.
    pub name: String,
    /// Advertised address.
    pub addr: String,
    /// Generation of this run.
    pub generation: u64,
    /// `alive`, `suspect`, `down` or `left`.
    pub state: String,
}

impl From<mesh_membership::MemberInfo> for MemberView {
    fn from(m: mesh_membership::MemberInfo) -> Self {
        Self {
            name: m.name,
            addr: m.id.addr.to_string(),
            generation: m.id.generation,
            state: m.state.as_str().to_owned(),
        }
    }
}

fn add_builtins(
    router: &mut Router,
    name: &str,
    services: &[ServiceInfo],
    stats: Arc<Stats>,
    started: Instant,
    view: Arc<std::sync::OnceLock<MembershipHandle>>,
) {
    let unavailable = || RpcError::unavailable(FRAMEWORK_ERROR_ID, "membership not started");
    let v = view.clone();
    router.insert(
        BUILTIN_SERVICE,
        "Members",
        Arc::new(typed(move |_req, _: ()| {
            let v = v.clone();
            async move {
                let m = v.get().ok_or_else(unavailable)?;
                let members = m.members().await.map_err(stopped)?;
                Ok(members
                    .into_iter()
                    .map(MemberView::from)
                    .collect::<Vec<_>>())
            }
        })),
    );
    router.insert(
        BUILTIN_SERVICE,
        "Registry",
        Arc::new(typed(move |_req, _: ()| {
            let v = view.clone();
            async move {
                let m = v.get().ok_or_else(unavailable)?;
                m.visible_records().await.map_err(stopped)
            }
        })),
    );
    router.insert(
        BUILTIN_SERVICE,
        "Health",
        Arc::new(typed(|_req, _: ()| async move {
            Ok(Health {
                status: "ok".into(),
            })
        })),
    );
    let info = NodeInfo {
        name: name.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: 0,
        services: services.to_vec(),
    };
    router.insert(
        BUILTIN_SERVICE,
        "Info",
        Arc::new(typed(move |_req, _: ()| {
            let mut info = info.clone();
            info.uptime_s = started.elapsed().as_secs();
            async move { Ok(info) }
        })),
    );
    router.insert(
        BUILTIN_SERVICE,
        "Stats",
        Arc::new(typed(move |_req, _: ()| {
            let snap = stats.snapshot();
            async move { Ok(snap) }
        })),
    );
}

struct Inner {
    name: String,
    addr: SocketAddr,
    membership: MembershipHandle,
    transport: QuicTransport,
    endpoint: quinn::Endpoint,
    router: Arc<Router>,
    balancer: Balancer,
    drain_timeout: Duration,
    client_wrappers: Vec<Arc<dyn ClientWrapper>>,
    links: Links,
    subscribers: Arc<Subscribers>,
    subscription_queue: usize,
}

/// A running node: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

fn no_node(service: &str, endpoint: &str) -> RpcError {
    RpcError::not_found(
        FRAMEWORK_ERROR_ID,
        format!("no node serves {service}.{endpoint}"),
    )
}

/// The nodes of `service` in `directory` that serve `endpoint`, pass the options' filters, and
/// have not been tried yet in this call.
fn candidates<'d>(
    directory: &'d Directory,
    service: &str,
    endpoint: &str,
    opts: &CallOptions,
    tried: &Tried,
) -> Vec<&'d ServiceNode> {
    directory
        .nodes_of(service)
        .iter()
        .filter(|n| matches(n, endpoint, opts) && !tried.contains(&n.node.addr))
        .collect()
}

fn stopped(_: mesh_membership::Stopped) -> RpcError {
    RpcError::unavailable(FRAMEWORK_ERROR_ID, "node is shut down")
}

impl Node {
    /// A builder.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address peers reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The membership handle: members, services, watch.
    pub fn membership(&self) -> &MembershipHandle {
        &self.inner.membership
    }

    /// Attempts this node's client made after the first of a call (retries), since start.
    pub fn retries(&self) -> u64 {
        self.inner.balancer.retries.load(Ordering::Relaxed)
    }

    /// Per-endpoint statistics of the calls this node served.
    pub fn stats(&self) -> BTreeMap<String, EndpointStats> {
        self.inner.router.stats.snapshot()
    }

    /// Calls `service.endpoint` on a node chosen by the options, with a typed request and reply.
    ///
    /// Retries go only to nodes not yet tried, with jittered backoff, inside the timeout, and only
    /// where they are safe: the request never left (no connection or stream), the callee refused
    /// it before running a handler (overload, shutdown), or the endpoint is advertised as
    /// idempotent. Error replies from handlers are returned at once and never eject a node.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<Resp, RpcError> {
        let body = opts
            .content_type
            .encode(req)
            .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?;
        let reply = self.call_raw(service, endpoint, body.into(), opts).await?;
        opts.content_type
            .decode(&reply)
            .map_err(|e| RpcError::internal(FRAMEWORK_ERROR_ID, format!("undecodable reply: {e}")))
    }

    /// [`call`](Self::call) with an already encoded body (in `opts.content_type`), through the
    /// client wrappers.
    pub async fn call_raw(
        &self,
        service: &str,
        endpoint: &str,
        body: Bytes,
        opts: &CallOptions,
    ) -> Result<Bytes, RpcError> {
        if self.inner.client_wrappers.is_empty() {
            return self.select_and_call(service, endpoint, body, opts).await;
        }
        let call = ClientCall {
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            body,
            opts: opts.clone(),
        };
        let node = self.clone();
        let innermost: ClientNext = Arc::new(move |call: ClientCall| {
            let node = node.clone();
            Box::pin(async move {
                node.select_and_call(&call.service, &call.endpoint, call.body, &call.opts)
                    .await
            })
        });
        let chain = self
            .inner
            .client_wrappers
            .iter()
            .rev()
            .fold(innermost, |next, w| {
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
        let b = &self.inner.balancer;
        let deadline = Instant::now() + opts.timeout;
        let mut tried = Tried::new();
        let mut last: Option<RpcError> = None;
        let mut backoff = opts.backoff;
        for attempt_no in 0..=opts.retries {
            let directory = self.inner.membership.directory();
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
            if attempt_no > 0 {
                b.retries.fetch_add(1, Ordering::Relaxed);
            }
            match self
                .attempt(node, service, endpoint, &body, opts, deadline)
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(Failure::Reply(e)) if refused_before_running(&e) => {
                    if e.code == mesh_protocol::code::UNAVAILABLE {
                        b.eject(node);
                    }
                    last = Some(e);
                }
                Err(Failure::Reply(e)) => return Err(e),
                Err(Failure::NotSent(e)) => {
                    b.eject(node);
                    last = Some(e);
                }
                Err(Failure::MaybeRun(e)) => {
                    b.eject(node);
                    if !idempotent {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
            if attempt_no < opts.retries {
                let pause = b.jitter(backoff);
                if Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
                backoff *= 2;
            }
        }
        Err(last.unwrap_or_else(|| RpcError::unavailable(FRAMEWORK_ERROR_ID, "no attempt made")))
    }

    /// Opens a streaming call to `service.endpoint` on a node chosen by the options. Nodes that
    /// cannot be reached are skipped (nothing was sent to them); once the stream is open, it is
    /// never retried. `opts.timeout` bounds the whole stream.
    pub async fn stream(
        &self,
        service: &str,
        endpoint: &str,
        opts: &CallOptions,
    ) -> Result<CallStream, RpcError> {
        let b = &self.inner.balancer;
        let deadline = Instant::now() + opts.timeout;
        let mut tried = Tried::new();
        let mut last = None;
        for _ in 0..=opts.retries {
            let directory = self.inner.membership.directory();
            let Some(node) = b.pick(
                &candidates(&directory, service, endpoint, opts, &tried),
                opts,
            ) else {
                break;
            };
            tried.insert(node);
            let header = self.header(service, endpoint, opts, deadline);
            let opened = match self.inner.transport.connection(node).await {
                Ok(conn) => {
                    CallStream::open(
                        &conn,
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
            id: self.inner.balancer.next_id(),
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            content_type: opts.content_type.as_str().to_owned(),
            metadata: opts.metadata.clone(),
            deadline_us: Some(u64::try_from(remaining.as_micros()).unwrap_or(u64::MAX)),
            routing_key: opts.routing_key.clone(),
        }
    }

    /// Calls `service.endpoint` on the node at `node`, whatever the registry says: one attempt,
    /// no retry. Built-in endpoints (`mesh.Health`, `mesh.Info`, `mesh.Stats`) are called this way.
    pub async fn call_node<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: SocketAddr,
        service: &str,
        endpoint: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<Resp, RpcError> {
        let body = opts
            .content_type
            .encode(req)
            .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?;
        let deadline = Instant::now() + opts.timeout;
        let reply = self
            .attempt(node, service, endpoint, &body, opts, deadline)
            .await
            .map_err(|f| match f {
                Failure::NotSent(e) | Failure::MaybeRun(e) | Failure::Reply(e) => e,
            })?;
        opts.content_type
            .decode(&reply)
            .map_err(|e| RpcError::internal(FRAMEWORK_ERROR_ID, format!("undecodable reply: {e}")))
    }

    async fn attempt(
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
        let _outstanding = self.inner.balancer.start(node);
        let limit = opts.attempt_timeout.map_or(remaining, |t| t.min(remaining));
        match tokio::time::timeout(
            limit,
            attempt(
                &self.inner.transport,
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

    /// Shuts down gracefully: stops taking calls (new ones get a retryable 503), leaves the
    /// cluster (peers drop this node's services at once), waits for calls in flight up to the
    /// drain timeout, then closes every connection.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.router.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        info!(name = %inner.name, "shutting down");
        if inner.membership.leave().await.is_err() {
            warn!("membership had already stopped");
        }
        let left = inner.router.drain(inner.drain_timeout).await;
        if left > 0 {
            warn!(calls = left, "drain timeout: abandoning calls in flight");
        }
        inner.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
    }

    /// Subscribes to `topic`: every message published to it reaches this subscription. The
    /// subscription is advertised in the registry until it is dropped.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        topic: &str,
    ) -> Result<Subscription<T>, RpcError> {
        self.subscribe_inner(topic, None).await
    }

    /// Subscribes to `topic` in the queue group `group`: each message reaches one member of the
    /// group (across the cluster), chosen by the publisher.
    pub async fn subscribe_queue<T: DeserializeOwned>(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Subscription<T>, RpcError> {
        self.subscribe_inner(topic, Some(group.to_owned())).await
    }

    async fn subscribe_inner<T: DeserializeOwned>(
        &self,
        topic: &str,
        group: Option<String>,
    ) -> Result<Subscription<T>, RpcError> {
        if topic.is_empty() || topic.len() > mesh_protocol::MAX_NAME_LEN {
            return Err(RpcError::bad_request(
                FRAMEWORK_ERROR_ID,
                "topic must be 1..=256 bytes",
            ));
        }
        let subscribers = self.inner.subscribers.clone();
        let (id, rx, dropped) =
            subscribers.add(topic, group.clone(), self.inner.subscription_queue);
        let entry = Subscription_ {
            topic: topic.to_owned(),
            queue: group,
        };
        let advertised = entry.clone();
        self.inner
            .membership
            .update_record(move |r| {
                if !r.subscriptions.contains(&advertised) {
                    r.subscriptions.push(advertised);
                }
            })
            .await
            .map_err(stopped)?;
        let membership = self.inner.membership.clone();
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
            _t: std::marker::PhantomData,
        })
    }

    /// Publishes `msg` to `topic`: to every node with plain subscribers, and to one member of
    /// each queue group. With `opts.ack`, waits for each node to acknowledge, and retries a
    /// queue-group delivery on another member of the group when the chosen one fails.
    /// Publishing to a topic nobody subscribes to delivers nothing and is not an error.
    pub async fn publish<T: Serialize>(
        &self,
        topic: &str,
        msg: &T,
        opts: &PublishOptions,
    ) -> Result<PublishReport, RpcError> {
        let body: Bytes = opts
            .content_type
            .encode(msg)
            .map_err(|e| RpcError::bad_request(FRAMEWORK_ERROR_ID, e.to_string()))?
            .into();
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
        let plan = Plan::new(self.inner.membership.directory().subscribers_of(topic));
        let mut tried: HashMap<String, HashSet<SocketAddr>> = HashMap::new();
        // First round: plain subscribers, and one random member of each group.
        let mut round: BTreeMap<SocketAddr, (bool, Vec<String>)> = BTreeMap::new();
        for node in &plan.plain {
            round.entry(*node).or_default().0 = true;
        }
        for (group, members) in &plan.groups {
            if let Some(node) = self.inner.balancer.pick_addr(members) {
                tried.entry(group.clone()).or_default().insert(node);
                round.entry(node).or_default().1.push(group.clone());
            }
        }
        let mut report = PublishReport::default();
        while !round.is_empty() {
            let mut retry: Vec<String> = Vec::new();
            let mut waits = Vec::new();
            for (node, (plain, groups)) in std::mem::take(&mut round) {
                let header = PublishHeader {
                    seq: 0,
                    topic: topic.to_owned(),
                    content_type: opts.content_type.as_str().to_owned(),
                    metadata: opts.metadata.clone(),
                    plain,
                    groups: groups.clone(),
                    ack: opts.ack,
                };
                let sent = if node == self.inner.addr {
                    let d = Delivery {
                        topic: topic.to_owned(),
                        metadata: opts.metadata.clone(),
                        publisher: node,
                        content_type: opts.content_type,
                        body: body.clone(),
                    };
                    match self
                        .inner
                        .subscribers
                        .deliver(d, plain, groups.clone())
                        .await
                    {
                        Ok(()) => Ok(None),
                        Err(e) if opts.ack => Err(e),
                        // Fire and forget: a full local queue is the subscription's drop count.
                        Err(_) => Ok(None),
                    }
                } else {
                    self.inner
                        .links
                        .send(node, header, body.clone(), deadline)
                        .await
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
            for group in retry {
                let tried = tried.entry(group.clone()).or_default();
                let untried: Vec<SocketAddr> = plan.groups[&group]
                    .iter()
                    .copied()
                    .filter(|n| !tried.contains(n))
                    .collect();
                if let Some(node) = self.inner.balancer.pick_addr(&untried) {
                    tried.insert(node);
                    round.entry(node).or_default().1.push(group);
                }
            }
        }
        Ok(report)
    }

    /// The QUIC connection to the node at `addr`, opened if needed: low-level access for protocols
    /// of your own on the node's authenticated connections.
    pub async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, RpcError> {
        self.inner
            .transport
            .connection(addr)
            .await
            .map_err(|e| RpcError::unavailable(FRAMEWORK_ERROR_ID, format!("{addr}: {e}")))
    }

    /// Kills the node at once, as a crash would: no leave, no drain.
    pub fn kill(&self) {
        self.inner.membership.abort();
        self.inner.endpoint.close(0u32.into(), b"killed");
    }
}
