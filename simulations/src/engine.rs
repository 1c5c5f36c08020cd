//! The simulation loop: the virtual clock, the event queue, nodes starting, crashing and
//! restarting, the scenario's actions, and the outputs of each core routed into the network.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use mesh_membership::{GossipKey, Keyring, Membership, MembershipConfig, NonceSource};
use mesh_protocol::{MemberId, ServiceInfo, SyncRequest, SyncResponse};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::invariants;
use crate::metrics::{ms, rss_bytes, Metrics, Watch};
use crate::network::{addr, index, Links};
use crate::node::{alive, Node};
use crate::report::Report;
use crate::scenario::{ActionKind, Scenario};

enum Ev {
    /// Checks, after a heal, whether the cluster is whole again.
    Converged,
    Deliver {
        to: usize,
        from: usize,
        data: bytes::Bytes,
    },
    Wake {
        node: usize,
    },
    SyncRequest {
        to: usize,
        from: usize,
        req: SyncRequest,
    },
    SyncResponse {
        to: usize,
        from: usize,
        resp: Option<SyncResponse>,
    },
    Join {
        node: usize,
    },
    Act(usize),
}

impl Ev {
    /// The node that handles this event, if it is one node's.
    fn node(&self) -> Option<usize> {
        match self {
            Ev::Deliver { to, .. } | Ev::SyncRequest { to, .. } | Ev::SyncResponse { to, .. } => {
                Some(*to)
            }
            Ev::Wake { node } => Some(*node),
            Ev::Converged | Ev::Join { .. } | Ev::Act(_) => None,
        }
    }
}

struct Queued(Duration, u64, Ev);

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

/// How often, after a heal, the cluster is checked for being whole again.
const CONVERGE_CHECK: Duration = Duration::from_millis(500);

/// A running simulation.
pub struct Sim {
    scenario: Scenario,
    seed: u64,
    base: Instant,
    now: Duration,
    seq: u64,
    steps: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    rng: SmallRng,
    nodes: Vec<Node>,
    config: MembershipConfig,
    links: Links,
    metrics: Metrics,
    violations: Vec<String>,
    /// The last heal, until the cluster is whole again after it.
    healed_at: Option<Duration>,
    /// The keyring every node seals with, unless the run is unsealed.
    keyring: Option<Keyring>,
}

impl Sim {
    /// A simulation of `scenario` with `seed`.
    pub fn new(scenario: &Scenario, seed: u64) -> Result<Self, String> {
        let config = scenario.membership_config()?;
        let mut sim = Self {
            scenario: scenario.clone(),
            seed,
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            steps: 0,
            queue: BinaryHeap::new(),
            rng: SmallRng::seed_from_u64(seed),
            nodes: (0..scenario.nodes).map(|_| Node::new()).collect(),
            config,
            links: Links::new(&scenario.network),
            metrics: Metrics::new(scenario.nodes),
            violations: Vec::new(),
            healed_at: None,
            keyring: Some(sim_keyring(seed)),
        };
        // Joins: node 0 first, then waves.
        let wave = scenario.wave.unwrap_or(scenario.nodes).max(1);
        for i in 0..scenario.nodes {
            let wave_no = if i == 0 { 0 } else { (i - 1) / wave };
            let at = Duration::from_secs_f64(scenario.wave_every_s * wave_no as f64)
                + Duration::from_millis(if i == 0 { 0 } else { 1 });
            sim.push(at, Ev::Join { node: i });
        }
        for (i, a) in scenario.events.iter().enumerate() {
            sim.push(Duration::from_secs_f64(a.at_s), Ev::Act(i));
        }
        Ok(sim)
    }

    /// Runs the nodes unsealed (`sealed(false)`: 7 bytes of envelope per datagram) or sealed with
    /// a gossip keyring, as production nodes are (the default: 39 bytes).
    pub fn sealed(mut self, on: bool) -> Self {
        self.keyring = on.then(|| sim_keyring(self.seed));
        self
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued(at, self.seq, ev)));
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        alive(&self.nodes)
    }

    /// Runs the scenario to its end and checks the invariants.
    pub fn run(self) -> Report {
        self.run_measured(true)
    }

    /// [`run`](Self::run), measuring memory or not.
    pub fn run_measured(mut self, measure_memory: bool) -> Report {
        let rss_before = rss_bytes();
        let end = Duration::from_secs_f64(self.scenario.duration_s);
        while let Some(Reverse(Queued(at, _, ev))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            self.steps += 1;
            self.handle(ev);
        }
        self.now = end;
        let rss_after = rss_bytes();
        let found = invariants::violations(&self.nodes, self.seed, self.steps, self.now);
        self.violations.extend(found);
        let growth = measure_memory.then(|| rss_after.saturating_sub(rss_before));
        self.report(growth)
    }

    fn handle(&mut self, ev: Ev) {
        // A stalled node handles nothing until its stall ends; then everything, in the order it
        // came (re-queued events keep their order among themselves: same time, rising sequence
        // numbers; events scheduled for that very instant before the stall run first).
        if let Some(i) = ev.node() {
            if let Some(until) = self.nodes[i].stalled_until.filter(|u| *u > self.now) {
                if matches!(ev, Ev::Wake { .. }) {
                    self.nodes[i].wake = Some(until);
                }
                self.push(until, ev);
                return;
            }
        }
        let now = self.instant();
        match ev {
            Ev::Join { node } => self.start_node(node),
            Ev::Deliver { to, from, data } => {
                if let Some(core) = self.nodes[to].core.as_mut() {
                    core.handle_datagram(now, addr(from), &data);
                    self.drain(to);
                }
            }
            Ev::Wake { node } => {
                let n = &mut self.nodes[node];
                if n.wake == Some(self.now) {
                    n.wake = None;
                }
                if let Some(core) = n.core.as_mut() {
                    core.handle_timeout(now);
                    self.drain(node);
                }
            }
            Ev::SyncRequest { to, from, req } => {
                let up = self.links.reachable(to, from);
                let resp = match self.nodes[to].core.as_mut() {
                    Some(core) if up => {
                        let r = core.handle_sync_request(now, addr(from), req);
                        self.drain(to);
                        Some(r)
                    }
                    _ => None,
                };
                let delay = if resp.is_some() {
                    self.links.latency(&mut self.rng)
                } else {
                    self.config.sync_timeout
                };
                self.push(
                    self.now + delay,
                    Ev::SyncResponse {
                        to: from,
                        from: to,
                        resp,
                    },
                );
            }
            Ev::SyncResponse { to, from, resp } => {
                if let Some(core) = self.nodes[to].core.as_mut() {
                    let r = resp.ok_or("unreachable");
                    core.handle_sync_response(now, addr(from), r);
                    self.drain(to);
                }
            }
            Ev::Act(i) => self.act(i),
            Ev::Converged => {
                if let Some(healed) = self.healed_at {
                    if invariants::problems(&self.nodes).is_empty() {
                        self.metrics
                            .reconverged_ms
                            .push(ms(self.now.saturating_sub(healed)));
                        self.healed_at = None;
                    } else {
                        self.push(self.now + CONVERGE_CHECK, Ev::Converged);
                    }
                }
            }
        }
    }

    /// Nodes alive now, with the generation their current life started at.
    fn observers(&self, except: usize) -> BTreeSet<(usize, u64)> {
        self.alive()
            .filter(|&k| k != except)
            .map(|k| (k, self.nodes[k].life_start()))
            .collect()
    }

    fn start_node(&mut self, i: usize) {
        self.nodes[i].incarnation += 1;
        let generation = self.nodes[i].life_start();
        let id = MemberId::new(addr(i), generation);
        let core_seed = self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ generation;
        let mut core = Membership::new(self.config.clone(), id, format!("n{i}"), core_seed);
        if let Some(keyring) = &self.keyring {
            // Seeded nonces, asked for by name, so that a seed replays byte for byte; a real
            // node draws them from the system.
            core.set_keyring(Some(keyring.clone()));
            core.set_nonce_source(NonceSource::seeded_for_simulation(!core_seed));
        }
        let now = self.base + self.now;
        if i != 0 {
            core.join(now, &[addr(0)]);
        }
        if self.metrics.joins.contains_key(&i) {
            let observers = self.observers(i);
            self.metrics.joins.insert(
                i,
                Watch {
                    at: self.now,
                    observers,
                    seen: BTreeMap::new(),
                },
            );
        }
        let n = &mut self.nodes[i];
        n.core = Some(core);
        n.last_generation = generation;
        n.wake = None;
        self.drain(i);
    }

    /// This fraction of the alive nodes, never node 0 (the seed), chosen at random.
    fn pick_alive(&mut self, fraction: f64) -> Vec<usize> {
        let mut alive: Vec<usize> = self.alive().filter(|&j| j != 0).collect();
        let k = ((alive.len() as f64) * fraction).round() as usize;
        (0..k.min(alive.len()))
            .map(|_| {
                let pick = self.rng.random_range(0..alive.len());
                alive.swap_remove(pick)
            })
            .collect()
    }

    fn act(&mut self, i: usize) {
        let kind = self.scenario.events[i].kind.clone();
        let n = self.nodes.len();
        match kind {
            ActionKind::Crash { fraction } => {
                for victim in self.pick_alive(fraction) {
                    let Some(generation) = self.nodes[victim].generation() else {
                        continue;
                    };
                    self.nodes[victim].core = None;
                    let observers = self.observers(victim);
                    self.metrics.crashes.insert(
                        (victim, generation),
                        Watch {
                            at: self.now,
                            observers,
                            seen: BTreeMap::new(),
                        },
                    );
                }
            }
            ActionKind::Restart => {
                let dead: Vec<usize> = (0..n).filter(|&j| self.nodes[j].core.is_none()).collect();
                for j in dead {
                    self.start_node(j);
                }
            }
            ActionKind::Stall {
                fraction,
                duration_s,
            } => {
                let until = self.now + Duration::from_secs_f64(duration_s.max(0.0));
                for victim in self.pick_alive(fraction) {
                    self.nodes[victim].stalled_until = Some(until);
                }
                self.healed_at = Some(until);
                self.push(until + CONVERGE_CHECK, Ev::Converged);
            }
            ActionKind::Partition { fraction } => self.links.partition(fraction, n),
            ActionKind::CutOneWay { fraction } => self.links.cut_one_way(fraction, n),
            ActionKind::Heal => {
                self.links.heal();
                self.healed_at = Some(self.now);
                self.push(self.now + CONVERGE_CHECK, Ev::Converged);
            }
            ActionKind::Loss { value } => self.links.set_loss(value),
            ActionKind::ServiceChange => {
                let alive: Vec<usize> = self.alive().collect();
                if alive.is_empty() {
                    return;
                }
                let owner = alive[self.rng.random_range(0..alive.len())];
                let name = format!("svc-{}", self.metrics.changes.len());
                self.metrics
                    .changes
                    .push((name.clone(), self.now, BTreeMap::new()));
                let now = self.instant();
                if let Some(core) = self.nodes[owner].core.as_mut() {
                    core.update_record(now, |r| {
                        r.services.push(ServiceInfo {
                            name,
                            ..Default::default()
                        })
                    });
                }
                self.drain(owner);
            }
        }
    }

    /// Moves a node's outputs into the network and its events into the metrics.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            let generation = core.id().generation;
            if generation > self.nodes[i].last_generation {
                // Renewed by itself: the cluster declared this live node down.
                self.metrics.renewals += generation - self.nodes[i].last_generation;
                self.nodes[i].last_generation = generation;
            }
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            let mut out = Vec::new();
            while let Some(t) = core.poll_transmit() {
                out.push(t);
            }
            let mut syncs = Vec::new();
            while let Some(s) = core.poll_sync() {
                syncs.push(s);
            }
            let mut events = Vec::new();
            while let Some(e) = core.poll_event() {
                events.push(e);
            }
            let wake = core.poll_timeout();
            if out.is_empty() && syncs.is_empty() && events.is_empty() {
                if let Some(w) = wake {
                    let w = w.saturating_duration_since(self.base).max(self.now);
                    if self.nodes[i].wake.is_none_or(|cur| w < cur) {
                        self.nodes[i].wake = Some(w);
                        self.push(w, Ev::Wake { node: i });
                    }
                }
                return;
            }
            for t in out {
                self.metrics.msgs += 1;
                self.metrics.bytes += t.data.len() as u64;
                let Some(to) = index(t.dst) else { continue };
                if to >= self.nodes.len() {
                    continue;
                }
                // Cut, lost, or on its way.
                let Some(delay) = self.links.datagram(i, to, &mut self.rng) else {
                    continue;
                };
                self.push(
                    self.now + delay,
                    Ev::Deliver {
                        to,
                        from: i,
                        data: t.data,
                    },
                );
            }
            for s in syncs {
                let to = index(s.peer).filter(|&t| t < self.nodes.len());
                match to {
                    Some(to) if self.links.link_up(i, to) => {
                        let at = self.now + self.links.latency(&mut self.rng);
                        self.push(
                            at,
                            Ev::SyncRequest {
                                to,
                                from: i,
                                req: s.request,
                            },
                        );
                    }
                    _ => {
                        let at = self.now + self.config.sync_timeout;
                        self.push(
                            at,
                            Ev::SyncResponse {
                                to: i,
                                from: to.unwrap_or(0),
                                resp: None,
                            },
                        );
                    }
                }
            }
            for e in events {
                self.metrics
                    .observe(&self.nodes, &self.links, i, e, self.now);
            }
        }
    }

    fn report(&self, rss_growth: Option<u64>) -> Report {
        let node_seconds = self.scenario.nodes as f64 * self.scenario.duration_s;
        Report {
            scenario: self.scenario.name.clone(),
            seed: self.seed,
            nodes: self.scenario.nodes,
            mem_per_node_bytes: rss_growth.map(|g| g / self.scenario.nodes as u64),
            steps: self.steps,
            violations: self.violations.clone(),
            ..self.metrics.figures(&self.nodes, self.now, node_seconds)
        }
    }
}

/// The keyring of a run with `seed`: a key drawn from the seed, the same for every node.
fn sim_keyring(seed: u64) -> Keyring {
    let mut key = [0u8; 32];
    rand::Rng::fill_bytes(&mut SmallRng::seed_from_u64(!seed), &mut key);
    Keyring::new(GossipKey::new(key))
}

/// Runs every seed of `scenario`, measuring memory or not.
pub fn run(scenario: &Scenario, measure_memory: bool) -> Result<Vec<Report>, String> {
    scenario
        .seeds
        .iter()
        .map(|&seed| Sim::new(scenario, seed).map(|s| s.run_measured(measure_memory)))
        .collect()
}
