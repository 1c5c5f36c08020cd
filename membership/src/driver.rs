//! The tokio driver: one task owns the [`Membership`] core and feeds it datagrams, sync results,
//! commands and its own timers, in order.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_protocol::{NodeRecord, SyncResponse};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use crate::core::Membership;
use crate::registry::{Directory, Event, MemberInfo, ServiceNode};
use crate::swim::{GossipKey, KeyId, Keyring, KeyringError};
use crate::transport::{Incoming, Transport, TransportError};

/// Events buffered per watcher before it lags (and is told how many it missed).
pub const WATCH_CAPACITY: usize = 1024;

/// Runs on the core inside the driver task and returns how to deliver its answer: the driver
/// delivers it only after publishing what the query changed, so that a caller who has its answer
/// also sees the change in [`MembershipHandle::directory`].
type Query = Box<dyn FnOnce(&mut Membership, std::time::Instant) -> Deliver + Send>;
type Deliver = Box<dyn FnOnce() + Send>;

enum Command {
    Run(Query),
    Shutdown(oneshot::Sender<()>),
}

/// Why a call on a [`MembershipHandle`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership driver has stopped")]
pub struct Stopped;

/// Why a key change on a [`MembershipHandle`] failed. The keyring is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyChangeError {
    /// The keyring refused the change.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// The driver has stopped.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

/// A cheap, cloneable handle to a running membership driver.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use mesh_membership::{transport::mem::MemNetwork, MembershipConfig, MembershipHandle};
///
/// let net = MemNetwork::new(7);
/// let seed = MembershipHandle::spawn_mem(&net, "10.0.0.1:7946".parse().unwrap(), "a", MembershipConfig::local(), &[]);
/// let b = MembershipHandle::spawn_mem(&net, "10.0.0.2:7946".parse().unwrap(), "b", MembershipConfig::local(), &[seed.addr()]);
/// b.update_record(|r| r.services.push(mesh_protocol::ServiceInfo { name: "Greeter".into(), ..Default::default() })).await.unwrap();
/// tokio::time::sleep(std::time::Duration::from_secs(2)).await;
/// assert_eq!(seed.nodes_of("Greeter").await.unwrap().len(), 1);
/// # }
/// ```
#[derive(Clone)]
pub struct MembershipHandle {
    cmd_tx: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    directory: watch::Receiver<Arc<Directory>>,
    addr: SocketAddr,
    task: Arc<JoinHandle<()>>,
}

impl std::fmt::Debug for MembershipHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MembershipHandle {
    /// Spawns the driver task for `core` on `transport` (whose incoming traffic arrives on
    /// `incoming`) and starts joining through `seeds`.
    pub fn spawn(
        core: Membership,
        transport: Arc<dyn Transport>,
        incoming: mpsc::Receiver<Incoming>,
        seeds: &[SocketAddr],
    ) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(WATCH_CAPACITY);
        let (directory_tx, directory) = watch::channel(Arc::new(core.directory()));
        let addr = core.id().addr;
        let span = tracing::info_span!("membership", node = %addr);
        let driver = Driver {
            core,
            transport,
            incoming,
            cmd_rx,
            events: events.clone(),
            directory: directory_tx,
            sync_done: mpsc::channel(256),
            seeds: seeds.to_vec(),
            syncs_in_flight: 0,
        };
        let task = tokio::spawn(driver.run().instrument(span));
        Self {
            cmd_tx,
            events,
            directory,
            addr,
            task: Arc::new(task),
        }
    }

    /// Binds `addr` on an in-memory network and spawns a node there (generation from
    /// [`generation_now`](crate::generation::generation_now), RNG seeded from the network's
    /// seed): the usual set-up of tests.
    pub fn spawn_mem(
        net: &crate::transport::mem::MemNetwork,
        addr: SocketAddr,
        name: &str,
        config: crate::config::MembershipConfig,
        seeds: &[SocketAddr],
    ) -> Self {
        let (transport, incoming) = net.bind(addr);
        let generation = crate::generation::generation_now();
        let seed = net.next_seed();
        let id = mesh_protocol::MemberId::new(addr, generation);
        Self::spawn(
            Membership::new(config, id, name, seed),
            transport,
            incoming,
            seeds,
        )
    }

    /// The address this node gossips from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `f` on the core inside the driver task and returns its result.
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Membership) -> R + Send + 'static,
    ) -> Result<R, Stopped> {
        self.run_at(move |core, _| f(core)).await
    }

    /// Runs `f` on the core at the driver's current time; the answer is delivered once what `f`
    /// changed has been published.
    async fn run_at<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Membership, std::time::Instant) -> R + Send + 'static,
    ) -> Result<R, Stopped> {
        let (tx, rx) = oneshot::channel();
        let run: Query = Box::new(move |core, now| {
            let answer = f(core, now);
            Box::new(move || {
                let _ = tx.send(answer);
            })
        });
        self.cmd_tx
            .send(Command::Run(run))
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// What lookups see now (the nodes of each service, the subscribers of each topic), without
    /// a round trip to the driver task: the driver publishes a new directory after every change
    /// to the registry. This is what the client reads on every call.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.borrow().clone()
    }

    /// Every member known, with its state.
    pub async fn members(&self) -> Result<Vec<MemberInfo>, Stopped> {
        self.query(|c| c.members()).await
    }

    /// Names of every service served by an active node.
    pub async fn services(&self) -> Result<Vec<String>, Stopped> {
        self.query(|c| c.services()).await
    }

    /// The active nodes serving `service`.
    pub async fn nodes_of(&self, service: &str) -> Result<Vec<ServiceNode>, Stopped> {
        let service = service.to_owned();
        self.query(move |c| c.nodes_of(&service)).await
    }

    /// The subscriptions to `topic` of every active node: (node, queue group).
    pub async fn subscribers_of(
        &self,
        topic: &str,
    ) -> Result<Vec<(mesh_protocol::MemberId, Option<String>)>, Stopped> {
        let topic = topic.to_owned();
        self.query(move |c| c.subscribers_of(&topic)).await
    }

    /// The records lookups see, sorted by address.
    pub async fn visible_records(&self) -> Result<Vec<NodeRecord>, Stopped> {
        self.query(|c| c.visible_records()).await
    }

    /// Changes this node's record (services, subscriptions, labels) and gossips the change.
    pub async fn update_record(
        &self,
        f: impl FnOnce(&mut NodeRecord) + Send + 'static,
    ) -> Result<(), Stopped> {
        self.run_at(move |core, now| core.update_record(now, f))
            .await
    }

    /// Seals datagrams with `keyring` from now on (`None`: unsealed); see
    /// [`Membership::set_keyring`].
    pub async fn set_keyring(&self, keyring: Option<Keyring>) -> Result<(), Stopped> {
        self.query(move |c| c.set_keyring(keyring)).await
    }

    /// Installs `key` for opening (rotation, step 1, on every node).
    pub async fn install_key(&self, key: GossipKey) -> Result<(), KeyChangeError> {
        Ok(self.query(move |c| c.install_key(key)).await??)
    }

    /// Seals with the installed `key` (rotation, step 2, once every node has it).
    pub async fn use_key(&self, key: GossipKey) -> Result<(), KeyChangeError> {
        Ok(self.query(move |c| c.use_key(&key)).await??)
    }

    /// Removes `key`, unless it is the primary (rotation, step 3, once every node uses the new
    /// key).
    pub async fn remove_key(&self, key: GossipKey) -> Result<(), KeyChangeError> {
        Ok(self.query(move |c| c.remove_key(&key)).await??)
    }

    /// The ids of the installed keys, the primary first (empty when unsealed).
    pub async fn key_ids(&self) -> Result<Vec<KeyId>, Stopped> {
        self.query(|c| c.key_ids()).await
    }

    /// A stream of registry changes from now on. A watcher more than [`WATCH_CAPACITY`] events
    /// behind gets `RecvError::Lagged(n)` and continues from the oldest event still buffered.
    pub fn watch(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Leaves the cluster gracefully (the farewell is sent before this returns) and stops the
    /// driver.
    pub async fn leave(&self) -> Result<(), Stopped> {
        self.run_at(|core, now| core.leave(now)).await?;
        self.shutdown().await;
        Ok(())
    }

    /// Stops the driver without leaving (peers will detect the node as down).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd_tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Kills the driver task at once, as a crash would.
    pub fn abort(&self) {
        self.task.abort();
    }
}

type SyncDone = (SocketAddr, Result<SyncResponse, TransportError>);

struct Driver {
    core: Membership,
    transport: Arc<dyn Transport>,
    incoming: mpsc::Receiver<Incoming>,
    cmd_rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    directory: watch::Sender<Arc<Directory>>,
    sync_done: (mpsc::Sender<SyncDone>, mpsc::Receiver<SyncDone>),
    seeds: Vec<SocketAddr>,
    /// Syncs spawned and not yet reported back.
    syncs_in_flight: usize,
}

/// Longest wait, when stopping, for syncs still in flight (such as a leave's farewell pushes).
const STOP_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Driver {
    async fn run(mut self) {
        self.core.join(now(), &self.seeds.clone());
        loop {
            self.flush();
            let deadline = self.core.poll_timeout().map(Instant::from_std);
            tokio::select! {
                biased;
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Command::Run(f)) => {
                        let deliver = f(&mut self.core, now());
                        self.flush();
                        deliver();
                    }
                    Some(Command::Shutdown(done)) => {
                        self.flush();
                        self.linger().await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                _ = sleep_until(deadline) => self.core.handle_timeout(now()),
                Some(inc) = self.incoming.recv() => match inc {
                    Incoming::Datagram { from, data } => self.core.handle_datagram(now(), from, &data),
                    Incoming::Sync { from, request, reply } => {
                        debug!(%from, digests = request.digests.len(), "serving registry sync");
                        let _ = reply.send(self.core.handle_sync_request(now(), from, request));
                    }
                },
                Some((peer, result)) = self.sync_done.1.recv() => {
                    self.syncs_in_flight = self.syncs_in_flight.saturating_sub(1);
                    self.core.handle_sync_response(now(), peer, result);
                }
            }
        }
    }

    /// Lets syncs in flight finish (bounded by [`STOP_LINGER`]) before the driver stops.
    async fn linger(&mut self) {
        let deadline = Instant::now() + STOP_LINGER;
        while self.syncs_in_flight > 0 {
            match tokio::time::timeout_at(deadline, self.sync_done.1.recv()).await {
                Ok(Some((peer, result))) => {
                    self.syncs_in_flight -= 1;
                    self.core.handle_sync_response(now(), peer, result);
                }
                _ => return,
            }
        }
    }

    /// Sends what the core produced: datagrams, syncs, events.
    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            self.transport.send_datagram(t.dst, t.data);
        }
        while let Some(task) = self.core.poll_sync() {
            self.syncs_in_flight += 1;
            let fut = self.transport.sync(task.peer, task.request);
            let done = self.sync_done.0.clone();
            let limit = self.core.config().sync_timeout;
            tokio::spawn(async move {
                let result = match tokio::time::timeout(limit, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(TransportError::Timeout),
                };
                let _ = done.send((task.peer, result)).await;
            });
        }
        while let Some(e) = self.core.poll_event() {
            // No watcher is not an error.
            let _ = self.events.send(e);
        }
        let revision = self.core.registry_revision();
        if self.directory.borrow().revision() != revision {
            self.directory.send_replace(Arc::new(self.core.directory()));
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
