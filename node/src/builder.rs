//! Building and starting a node: [`NodeBuilder`], what can stop it from starting
//! ([`StartError`]), and how its parts are wired together: the QUIC endpoint, the connections, the
//! membership driver on top of them, and the streams each part serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_membership::{
    generation_now, Event, GossipKey, Keyring, Membership, MembershipConfig, MembershipHandle,
};
use mesh_protocol::{ServiceInfo, StreamKind, DEFAULT_MAX_FRAME_LEN};
use tracing::{debug, info, warn};

use crate::builtins::add_builtins;
use crate::client::balancer::Balancer;
use crate::client::caller::Client;
use crate::client::options::ClientWrapper;
use crate::connections::{Connections, ConnectionsConfig, StreamHandler};
use crate::endpoint::{bind_socket, EndpointConfig, EndpointError};
use crate::gossip::{self, Started, MAX_GOSSIP_DATAGRAM};
use crate::node::{Inner, Node};
use crate::pubsub::links::Links;
use crate::pubsub::local::Subscribers;
use crate::pubsub::options::{SubscriberWrapper, DEFAULT_SUBSCRIPTION_QUEUE};
use crate::pubsub::publish::Publisher;
use crate::pubsub::serve::serve as serve_publish;
use crate::record_auth::TlsRecordAuth;
use crate::rpc::handler::{wrap_all, Wrapper};
use crate::rpc::router::Router;
use crate::rpc::serve::{serve_streaming, serve_unary};
use crate::rpc::service::Service;
use crate::security::{Credentials, GossipSecret, SecurityError};
use crate::stats::Stats;
use crate::wire::{close_code, refuse, BoxFuture};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No credentials were given.
    #[error("no credentials: give a cluster key or cluster CA certificates")]
    NoCredentials,
    /// Cluster-CA credentials without the cluster's gossip secret.
    #[error("no gossip secret: cluster-CA credentials need the cluster's gossip.key")]
    NoGossipSecret,
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
    connections: ConnectionsConfig,
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
            connections: ConnectionsConfig::default(),
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
    /// Runs the node on a socket of quinn's own kind, such as a fault-injecting one (the
    /// `chaos` feature's `chaos::FaultySocket`). It takes precedence over
    /// [`socket`](Self::socket) and [`bind`](Self::bind).
    pub fn udp_socket(mut self, socket: Arc<dyn quinn::AsyncUdpSocket>) -> Self {
        self.quic_socket = Some(socket);
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
    /// Limits on the node's QUIC connections (default [`ConnectionsConfig::default`]).
    pub fn connections_config(mut self, c: ConnectionsConfig) -> Self {
        self.connections = c;
        self
    }
    /// Open connections kept (default 256): beyond it the least recently used idle one closes.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.connections.max_connections = n;
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
        let (tls, gossip) = tokio::task::spawn_blocking(move || {
            credentials
                .tls(&cluster, advertise)
                .map(|tls| (tls, credentials.gossip_secrets(&cluster)))
        })
        .await
        .map_err(|e| SecurityError::Load(e.to_string()))??;
        let keyring = keyring(&gossip)?;

        let stats = Arc::new(Stats::default());
        let mut router = Router::new(self.max_in_flight, DEFAULT_MAX_FRAME_LEN, stats.clone());
        router.serve_once = serve_once;
        let infos = register_services(&mut router, self.services, &self.wrappers)?;
        let name = if self.name.is_empty() {
            advertise.to_string()
        } else {
            self.name
        };
        let view: Arc<std::sync::OnceLock<MembershipHandle>> = Arc::default();
        add_builtins(
            &mut router,
            &name,
            &infos,
            stats,
            Instant::now(),
            view.clone(),
        );
        let router = Arc::new(router);
        let subscribers = Arc::new(Subscribers::new(self.subscriber_wrappers));

        let Started {
            transport,
            incoming,
            endpoint: quic,
        } = gossip::start(
            socket,
            &tls,
            &self.endpoint,
            advertise,
            Some(Arc::new(Streams {
                router: router.clone(),
                subscribers: subscribers.clone(),
            })),
        )?;
        let connections = transport.connections().clone();
        let socket_stats = transport.socket_stats().clone();
        connections.set_config(&self.connections);
        let mut mconfig = self.membership;
        mconfig.max_datagram_size = mconfig.max_datagram_size.min(MAX_GOSSIP_DATAGRAM);
        let id = mesh_protocol::MemberId::new(advertise, generation_now());
        let mut core = Membership::new(mconfig, id, name.clone(), id.generation);
        core.set_require_source_match(true);
        core.set_keyring(Some(keyring));
        // Records are believed only with their owner's signature, checked against the cluster CA.
        core.set_record_auth(Arc::new(TlsRecordAuth::from_node_tls(&tls)?));
        let labels = self.labels;
        let published = infos.clone();
        core.update_record(Instant::now(), move |r| {
            r.services = published;
            r.labels = labels;
        });
        let membership = MembershipHandle::spawn(core, Arc::new(transport), incoming, &self.seeds);
        let _ = view.set(membership.clone());
        tokio::spawn(close_connections_to_down_members(
            membership.watch(),
            connections.clone(),
        ));
        info!(%name, %advertise, services = infos.len(), "node started");
        let client = Client {
            membership: membership.clone(),
            connections: connections.clone(),
            balancer: Balancer::new(self.ejection, id.generation),
            wrappers: self.client_wrappers,
        };
        let publisher = Publisher {
            addr: advertise,
            subscribers: subscribers.clone(),
            links: Links::new(connections.clone(), DEFAULT_MAX_FRAME_LEN),
        };
        Ok(Node {
            inner: Arc::new(Inner {
                name,
                addr: advertise,
                membership,
                connections,
                socket_stats,
                endpoint: quic,
                router,
                client: Arc::new(client),
                publisher,
                subscribers,
                subscription_queue: self.subscription_queue,
                drain_timeout: self.drain_timeout,
            }),
        })
    }
}

/// The keyring gossip is sealed with: the first secret seals, all of them open.
fn keyring(secrets: &[GossipSecret]) -> Result<Keyring, StartError> {
    let mut keys = secrets.iter().map(|s| GossipKey::new(*s.as_bytes()));
    let primary = keys.next().ok_or(StartError::NoGossipSecret)?;
    let mut ring = Keyring::new(primary);
    for k in keys {
        // A secret given twice is installed once.
        let _ = ring.install(k);
    }
    Ok(ring)
}

/// Puts the handlers of `services` in `router`, each wrapped in `wrappers`, and returns the
/// services as the registry advertises them (services of the same name merged).
fn register_services(
    router: &mut Router,
    services: Vec<Service>,
    wrappers: &[Arc<dyn Wrapper>],
) -> Result<Vec<ServiceInfo>, StartError> {
    let mut infos: Vec<ServiceInfo> = Vec::new();
    for s in services {
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
            router.insert(&key.0, &key.1, wrap_all(h, wrappers));
        }
        match infos.iter_mut().find(|i| i.name == s.info.name) {
            Some(existing) => existing.endpoints.extend(s.info.endpoints),
            None => infos.push(s.info),
        }
    }
    Ok(infos)
}

/// The streams a node serves besides registry syncs (which the gossip transport serves):
/// calls go to the router, publishes to the local subscribers.
struct Streams {
    router: Arc<Router>,
    subscribers: Arc<Subscribers>,
}

impl StreamHandler for Streams {
    fn handle(
        &self,
        kind: StreamKind,
        from: SocketAddr,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> BoxFuture<()> {
        let router = self.router.clone();
        match kind {
            StreamKind::UnaryCall => Box::pin(serve_unary(router, from, send, recv)),
            StreamKind::StreamingCall => Box::pin(serve_streaming(router, from, send, recv)),
            StreamKind::Publish => Box::pin(serve_publish(
                self.subscribers.clone(),
                from,
                send,
                recv,
                router.max_frame,
            )),
            other => {
                debug!(%from, ?other, "stream kind not served");
                refuse(&mut send, &mut recv, close_code::UNSUPPORTED);
                Box::pin(std::future::ready(()))
            }
        }
    }
}

/// A crashed peer never closes its connections: calls to it would hang until QUIC's idle
/// timeout. When membership declares a member down, close ours, so that its calls fail now (and
/// idempotent ones are retried elsewhere). A member that left gracefully is draining its calls:
/// its connection stays.
async fn close_connections_to_down_members(
    mut events: tokio::sync::broadcast::Receiver<Event>,
    connections: Connections,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(Event::MemberDown { id }) => connections.close_peer(id.addr, "declared down"),
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => warn!(missed = n, "membership events lagged"),
            Err(RecvError::Closed) => return,
        }
    }
}

impl Node {
    /// A builder.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }
}
