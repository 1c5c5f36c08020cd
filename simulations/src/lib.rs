//! Seeded, deterministic simulations of mesh clusters.
//!
//! The simulator runs the **real membership core** ([`mesh_membership::Membership`], the same code
//! a node runs) for tens to thousands of nodes in one thread, on a virtual clock, over a simulated
//! network with per-link latency and jitter, packet loss, one-way and two-way cuts, partitions and
//! heals, crashes, restarts at the same address and joins in waves. Scenarios live in TOML files
//! ([`Scenario`]); the same scenario and seed always produce the same figures, byte for byte.
//!
//! Every run ends by checking invariants ([`Report::violations`]): every alive node holds the same
//! registry, no alive node stays marked down, a crashed node's services are gone everywhere, and a
//! restarted node is never mistaken for its predecessor.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_membership::{Event, MemberState, Membership, MembershipConfig};
use mesh_protocol::{MemberId, ServiceInfo, SyncRequest, SyncResponse};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// A scenario file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, printed with the figures.
    pub name: String,
    /// Nodes in the cluster (all eventually join).
    pub nodes: usize,
    /// One run per seed.
    pub seeds: Vec<u64>,
    /// Membership preset: `lan`, `wan` or `local`.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Virtual seconds simulated.
    pub duration_s: f64,
    /// Nodes that join per wave (default: all at once), one wave every `wave_every_s`.
    #[serde(default)]
    pub wave: Option<usize>,
    /// Seconds between join waves.
    #[serde(default = "one")]
    pub wave_every_s: f64,
    /// The network.
    #[serde(default)]
    pub network: Network,
    /// What happens, when.
    #[serde(default)]
    pub events: Vec<Action>,
}

fn default_preset() -> String {
    "lan".into()
}

fn one() -> f64 {
    1.0
}

/// The simulated network.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// One-way latency in milliseconds.
    #[serde(default = "default_latency")]
    pub latency_ms: f64,
    /// Uniform extra latency, 0 to this many milliseconds.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Probability that a datagram is lost (registry syncs are reliable streams: never lost).
    #[serde(default)]
    pub loss: f64,
}

fn default_latency() -> f64 {
    1.0
}

impl Default for Network {
    fn default() -> Self {
        Self {
            latency_ms: default_latency(),
            jitter_ms: 0.0,
            loss: 0.0,
        }
    }
}

/// A scheduled change. (Unknown keys are refused by [`ActionKind`]: serde cannot also refuse
/// them here, with `flatten`.)
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Action {
    /// When, in virtual seconds.
    pub at_s: f64,
    /// What.
    #[serde(flatten)]
    pub kind: ActionKind,
}

/// What an [`Action`] does.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionKind {
    /// Crash this fraction of the alive nodes (never node 0, the seed), chosen at random.
    Crash {
        /// Fraction of alive nodes.
        fraction: f64,
    },
    /// Restart every crashed node at its address, as a new generation.
    Restart,
    /// Split the nodes into two sides (the first `fraction` of them, and the rest).
    Partition {
        /// Size of the first side.
        fraction: f64,
    },
    /// Cut one direction only: from the first `fraction` of nodes to the others.
    CutOneWay {
        /// Size of the first side.
        fraction: f64,
    },
    /// Heal every cut link.
    Heal,
    /// Set the datagram loss probability.
    Loss {
        /// New probability.
        value: f64,
    },
    /// A node changes its services: the time until every alive node sees it is measured.
    ServiceChange,
}

/// Figures of one run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed of this run.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Time for a joining node to be seen alive by every node: p50, p99, max (ms).
    pub join_ms: Percentiles,
    /// Time from a crash to its first detection anywhere: p50 over crashed nodes (ms).
    pub detect_first_ms: Percentiles,
    /// Time from a crash until every alive node has declared it down (ms).
    pub detect_all_ms: Percentiles,
    /// Alive nodes declared down during the run: each such declaration makes the node renew its
    /// identity (a new generation) to rejoin, and each renewal is counted.
    pub false_positives: u64,
    /// How long a falsely declared node stayed missing, worst observer (ms): p50, p99, max.
    pub false_positive_ms: Percentiles,
    /// Time for a service change to reach every alive node (ms), per change.
    pub service_change_ms: Percentiles,
    /// Time from a heal until every invariant holds again (ms), per heal.
    pub reconverge_ms: Percentiles,
    /// Datagrams sent per node per second.
    pub msgs_per_node_s: f64,
    /// Datagram bytes sent per node per second.
    pub bytes_per_node_s: f64,
    /// Resident memory per simulated node (bytes), from the process's RSS growth during the run.
    /// A measurement of the process, not of the seed: `None` where output must be byte-identical.
    pub mem_per_node_bytes: Option<u64>,
    /// Simulated events handled.
    pub steps: u64,
    /// Invariants violated at the end (empty: all held).
    pub violations: Vec<String>,
}

/// Percentiles of a sample, in milliseconds; all zero for an empty sample.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            n: v.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7946))
}

fn index(a: SocketAddr) -> Option<usize> {
    match a {
        SocketAddr::V4(v4) if v4.port() == 7946 => {
            let o = v4.ip().octets();
            Some((usize::from(o[1]) << 16) | (usize::from(o[2]) << 8) | usize::from(o[3]))
        }
        _ => None,
    }
}

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

struct Node {
    core: Option<Membership>,
    /// The generation last seen, to count renewals (a node renews itself when the cluster
    /// declared it down while it was alive).
    last_generation: u64,
    /// Starts so far; a start gets generation `incarnation * GENERATION_STRIDE + 1`, and the core
    /// may renew it (+1) by itself after a false down.
    incarnation: u64,
    wake: Option<Duration>,
}

const GENERATION_STRIDE: u64 = 1_000_000;

impl Node {
    /// The generation the node runs as now, if alive.
    fn generation(&self) -> Option<u64> {
        self.core.as_ref().map(|c| c.id().generation)
    }

    /// The first generation of the node's current life.
    fn life_start(&self) -> u64 {
        self.incarnation * GENERATION_STRIDE + 1
    }
}

/// How often, after a heal, the cluster is checked for being whole again.
const CONVERGE_CHECK: Duration = Duration::from_millis(500);

/// How many joining nodes are followed closely for join times (the rest still run).
const TRACKED_JOINERS: usize = 200;

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
    loss: f64,
    cut: BTreeSet<(usize, usize)>,
    // metrics
    msgs: u64,
    bytes: u64,
    /// Tracked joiner -> its join.
    joins: BTreeMap<usize, Watch>,
    /// Crashed (node, generation) -> its crash.
    crashes: BTreeMap<(usize, u64), Watch>,
    /// False downs: (node, generation) -> observer -> (declared at, seen back at).
    false_downs: BTreeMap<(usize, u64), BTreeMap<usize, DownSpell>>,
    /// Service changes: (name, time) -> observers that saw it.
    changes: Vec<(String, Duration, BTreeMap<usize, Duration>)>,
    violations: Vec<String>,
    renewals: u64,
    /// The last heal, and when the cluster was whole again after it.
    healed_at: Option<Duration>,
    reconverged_ms: Vec<f64>,
}

/// When an observer declared a node down, and when it saw it alive again (if it did).
type DownSpell = (Duration, Option<Duration>);

/// A registry as the invariants compare it: (address, generation, version) of every record.
type RegistryView = Vec<(SocketAddr, u64, u64)>;

/// Something every node alive at `at` should notice: who they were, and when each noticed.
#[derive(Debug, Default)]
struct Watch {
    at: Duration,
    /// Observers alive at `at`: (node, its life start generation).
    observers: BTreeSet<(usize, u64)>,
    seen: BTreeMap<usize, Duration>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

impl Sim {
    /// A simulation of `scenario` with `seed`.
    pub fn new(scenario: &Scenario, seed: u64) -> Result<Self, String> {
        let mut config = match scenario.preset.as_str() {
            "lan" => MembershipConfig::lan(u32::try_from(scenario.nodes).unwrap_or(u32::MAX)),
            "wan" => MembershipConfig::wan(u32::try_from(scenario.nodes).unwrap_or(u32::MAX)),
            "local" => MembershipConfig::local(),
            other => return Err(format!("unknown preset {other:?}")),
        };
        config.cluster = "sim".into();
        if scenario.nodes == 0 || scenario.nodes > 1 << 24 {
            return Err("nodes must be 1..=16M".into());
        }
        let mut sim = Self {
            scenario: scenario.clone(),
            seed,
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            steps: 0,
            queue: BinaryHeap::new(),
            rng: SmallRng::seed_from_u64(seed),
            nodes: (0..scenario.nodes)
                .map(|_| Node {
                    core: None,
                    last_generation: 0,
                    incarnation: 0,
                    wake: None,
                })
                .collect(),
            config,
            loss: scenario.network.loss,
            cut: BTreeSet::new(),
            msgs: 0,
            bytes: 0,
            joins: BTreeMap::new(),
            crashes: BTreeMap::new(),
            false_downs: BTreeMap::new(),
            changes: Vec::new(),
            violations: Vec::new(),
            renewals: 0,
            healed_at: None,
            reconverged_ms: Vec::new(),
        };
        // Joins: node 0 first, then waves.
        let wave = scenario.wave.unwrap_or(scenario.nodes).max(1);
        for i in 0..scenario.nodes {
            let wave_no = if i == 0 { 0 } else { (i - 1) / wave };
            let at = Duration::from_secs_f64(scenario.wave_every_s * wave_no as f64)
                + Duration::from_millis(if i == 0 { 0 } else { 1 });
            sim.push(at, Ev::Join { node: i });
        }
        // Follow a deterministic sample of joiners.
        let step = (scenario.nodes / TRACKED_JOINERS).max(1);
        for i in (1..scenario.nodes).step_by(step).take(TRACKED_JOINERS) {
            sim.joins.insert(
                i,
                Watch {
                    at: Duration::MAX,
                    ..Watch::default()
                },
            );
        }
        for (i, a) in scenario.events.iter().enumerate() {
            sim.push(Duration::from_secs_f64(a.at_s), Ev::Act(i));
        }
        Ok(sim)
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued(at, self.seq, ev)));
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn latency(&mut self) -> Duration {
        let n = &self.scenario.network;
        let jitter = if n.jitter_ms > 0.0 {
            self.rng.random_range(0.0..n.jitter_ms)
        } else {
            0.0
        };
        Duration::from_secs_f64((n.latency_ms + jitter) / 1000.0)
    }

    fn link_up(&self, from: usize, to: usize) -> bool {
        !self.cut.contains(&(from, to))
    }

    fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.core.is_some())
            .map(|(i, _)| i)
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
        self.check_invariants();
        let growth = measure_memory.then(|| rss_after.saturating_sub(rss_before));
        self.report(growth)
    }

    fn handle(&mut self, ev: Ev) {
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
                let up = self.link_up(to, from) && self.link_up(from, to);
                let resp = match self.nodes[to].core.as_mut() {
                    Some(core) if up => {
                        let r = core.handle_sync_request(now, req);
                        self.drain(to);
                        Some(r)
                    }
                    _ => None,
                };
                let delay = if resp.is_some() {
                    self.latency()
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
                    if self.problems().is_empty() {
                        self.reconverged_ms
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
        let mut core = Membership::new(
            self.config.clone(),
            id,
            format!("n{i}"),
            self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ generation,
        );
        let now = self.base + self.now;
        if i != 0 {
            core.join(now, &[addr(0)]);
        }
        if self.joins.contains_key(&i) {
            let observers = self.observers(i);
            self.joins.insert(
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

    fn act(&mut self, i: usize) {
        let kind = self.scenario.events[i].kind.clone();
        let n = self.nodes.len();
        match kind {
            ActionKind::Crash { fraction } => {
                let mut alive: Vec<usize> = self.alive().filter(|&j| j != 0).collect();
                let k = ((alive.len() as f64) * fraction).round() as usize;
                for _ in 0..k.min(alive.len()) {
                    let pick = self.rng.random_range(0..alive.len());
                    let victim = alive.swap_remove(pick);
                    let Some(generation) = self.nodes[victim].generation() else {
                        continue;
                    };
                    self.nodes[victim].core = None;
                    let observers = self.observers(victim);
                    self.crashes.insert(
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
            ActionKind::Partition { fraction } => {
                let k = ((n as f64) * fraction).round() as usize;
                for a in 0..k {
                    for b in k..n {
                        self.cut.insert((a, b));
                        self.cut.insert((b, a));
                    }
                }
            }
            ActionKind::CutOneWay { fraction } => {
                let k = ((n as f64) * fraction).round() as usize;
                for a in 0..k {
                    for b in k..n {
                        self.cut.insert((a, b));
                    }
                }
            }
            ActionKind::Heal => {
                self.cut.clear();
                self.healed_at = Some(self.now);
                self.push(self.now + CONVERGE_CHECK, Ev::Converged);
            }
            ActionKind::Loss { value } => self.loss = value.clamp(0.0, 1.0),
            ActionKind::ServiceChange => {
                let alive: Vec<usize> = self.alive().collect();
                if alive.is_empty() {
                    return;
                }
                let owner = alive[self.rng.random_range(0..alive.len())];
                let name = format!("svc-{}", self.changes.len());
                self.changes.push((name.clone(), self.now, BTreeMap::new()));
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
                self.renewals += generation - self.nodes[i].last_generation;
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
                self.msgs += 1;
                self.bytes += t.data.len() as u64;
                let Some(to) = index(t.dst) else { continue };
                if to >= self.nodes.len() || !self.link_up(i, to) {
                    continue;
                }
                if self.loss > 0.0 && self.rng.random_bool(self.loss) {
                    continue;
                }
                let at = self.now + self.latency();
                self.push(
                    at,
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
                    Some(to) if self.link_up(i, to) => {
                        let at = self.now + self.latency();
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
                self.observe(i, e);
            }
        }
    }

    fn observe(&mut self, observer: usize, e: Event) {
        let now = self.now;
        match e {
            Event::MemberUp { id } => {
                let Some(x) = index(id.addr) else { return };
                let life = self.nodes.get(x).map(Node::life_start).unwrap_or(0);
                if let Some(w) = self.joins.get_mut(&x) {
                    if id.generation >= life {
                        w.seen.entry(observer).or_insert(now);
                    }
                }
                // A falsely downed node seen alive again (under any later generation). Down and
                // up at the same instant is a rename (the node renewed its identity after the
                // other side of a partition declared it down), not a false down here.
                for (_, obs) in self.false_downs.range_mut((x, 0)..=(x, u64::MAX)) {
                    if obs.get(&observer).is_some_and(|(down, _)| *down == now) {
                        obs.remove(&observer);
                    } else if let Some(entry) = obs.get_mut(&observer) {
                        if entry.1.is_none() {
                            entry.1 = Some(now);
                        }
                    }
                }
                self.false_downs.retain(|_, obs| !obs.is_empty());
            }
            Event::MemberDown { id } => {
                let Some(x) = index(id.addr) else { return };
                if let Some(w) = self.crashes.get_mut(&(x, id.generation)) {
                    w.seen.entry(observer).or_insert(now);
                    return;
                }
                let Some(node) = self.nodes.get(x) else {
                    return;
                };
                // Declared down while alive, in its current life, and reachable both ways from
                // the observer: a false positive. (Across a partition, down is the right call.)
                let reachable = self.link_up(observer, x) && self.link_up(x, observer);
                if node.core.is_some() && id.generation >= node.life_start() && reachable {
                    self.false_downs
                        .entry((x, id.generation))
                        .or_default()
                        .entry(observer)
                        .or_insert((now, None));
                }
            }
            // A node renamed meanwhile reports the service as changed rather than added.
            Event::ServiceAdded { service, .. } | Event::ServiceChanged { service, .. } => {
                for (name, _, seen) in &mut self.changes {
                    if *name == service.name {
                        seen.entry(observer).or_insert(now);
                    }
                }
            }
            _ => {}
        }
    }

    fn violation(&mut self, what: String) {
        self.violations.push(format!(
            "{what} (replay: seed {}, step {}, t={:.3}s)",
            self.seed,
            self.steps,
            self.now.as_secs_f64()
        ));
    }

    /// What is wrong with the cluster now (empty: every invariant holds).
    fn problems(&self) -> Vec<String> {
        let alive: Vec<usize> = self.alive().collect();
        let current: BTreeMap<usize, u64> = alive
            .iter()
            .filter_map(|&i| self.nodes[i].generation().map(|g| (i, g)))
            .collect();
        let mut reference: Option<(usize, RegistryView)> = None;
        let mut problems = Vec::new();
        for &i in &alive {
            let Some(core) = self.nodes[i].core.as_ref() else {
                continue;
            };
            let view: RegistryView = core
                .visible_records()
                .iter()
                .map(|r| (r.id.addr, r.id.generation, r.version))
                .collect();
            // Only alive nodes, each under its current generation.
            for (a, generation, _) in &view {
                match index(*a).and_then(|x| current.get(&x).map(|g| (x, g))) {
                    None => problems.push(format!("node {i} still lists the services of dead {a}")),
                    Some((x, g)) if g != generation => problems.push(format!(
                        "node {i} lists node {x} as generation {generation}, not {g}"
                    )),
                    Some(_) => {}
                }
            }
            // Every alive node active in its member list (sorted by id: a binary search, not a
            // scan per node, which made this check O(n³) for the cluster).
            let members = core.members();
            for (&x, &g) in &current {
                let active = members
                    .binary_search_by_key(&MemberId::new(addr(x), g), |m| m.id)
                    .is_ok_and(|k| {
                        members[k].state != MemberState::Down
                            && members[k].state != MemberState::Left
                    });
                if !active {
                    problems.push(format!(
                        "node {i} does not see alive node {x} (generation {g}) as active"
                    ));
                }
            }
            match &reference {
                None => reference = Some((i, view)),
                Some((r, v)) if *v != view => problems.push(format!(
                    "node {i} holds a different registry than node {r} ({} vs {} records)",
                    view.len(),
                    v.len()
                )),
                Some(_) => {}
            }
        }
        problems
    }

    fn check_invariants(&mut self) {
        let problems = self.problems();
        // Report at most a few, with the replay hint.
        let total = problems.len();
        for p in problems.into_iter().take(5) {
            self.violation(p);
        }
        if total > 5 {
            self.violation(format!("... and {} more", total - 5));
        }
    }

    /// Time until every observer of `w` that is still in the same life noticed, if all did.
    fn all_noticed(&self, w: &Watch) -> Option<f64> {
        let still: Vec<usize> = w
            .observers
            .iter()
            .filter(|(k, life)| {
                self.nodes[*k].core.is_some() && self.nodes[*k].life_start() == *life
            })
            .map(|(k, _)| *k)
            .collect();
        if still.iter().all(|k| w.seen.contains_key(k)) {
            let last = still.iter().map(|k| w.seen[k]).max().unwrap_or(w.at);
            Some(ms(last.saturating_sub(w.at)))
        } else {
            None
        }
    }

    fn report(&self, rss_growth: Option<u64>) -> Report {
        let alive: BTreeSet<usize> = self.alive().collect();
        let join: Vec<f64> = self
            .joins
            .iter()
            .filter(|(x, w)| alive.contains(x) && w.at != Duration::MAX)
            .filter_map(|(_, w)| self.all_noticed(w))
            .collect();
        let (mut first, mut all) = (Vec::new(), Vec::new());
        for w in self.crashes.values() {
            if let Some(f) = w.seen.values().min() {
                first.push(ms(f.saturating_sub(w.at)));
            }
            if let Some(t) = self.all_noticed(w) {
                all.push(t);
            }
        }
        let mut fp_durations = Vec::new();
        for obs in self.false_downs.values() {
            let worst = obs
                .values()
                .map(|(down, up)| up.unwrap_or(self.now).saturating_sub(*down))
                .max()
                .unwrap_or_default();
            fp_durations.push(ms(worst));
        }
        let mut change = Vec::new();
        for (_, at, seen) in &self.changes {
            if alive.iter().all(|o| seen.contains_key(o)) {
                let last = alive.iter().map(|o| seen[o]).max().unwrap_or(*at);
                change.push(ms(last.saturating_sub(*at)));
            }
        }
        let node_seconds = self.scenario.nodes as f64 * self.scenario.duration_s;
        Report {
            scenario: self.scenario.name.clone(),
            seed: self.seed,
            nodes: self.scenario.nodes,
            join_ms: Percentiles::of(join),
            detect_first_ms: Percentiles::of(first),
            detect_all_ms: Percentiles::of(all),
            false_positives: self.renewals,
            reconverge_ms: Percentiles::of(self.reconverged_ms.clone()),
            false_positive_ms: Percentiles::of(fp_durations),
            service_change_ms: Percentiles::of(change),
            msgs_per_node_s: (self.msgs as f64 / node_seconds * 100.0).round() / 100.0,
            bytes_per_node_s: (self.bytes as f64 / node_seconds).round(),
            mem_per_node_bytes: rss_growth.map(|g| g / self.scenario.nodes as u64),
            steps: self.steps,
            violations: self.violations.clone(),
        }
    }
}

/// Runs every seed of `scenario`, measuring memory or not.
pub fn run(scenario: &Scenario, measure_memory: bool) -> Result<Vec<Report>, String> {
    scenario
        .seeds
        .iter()
        .map(|&seed| Sim::new(scenario, seed).map(|s| s.run_measured(measure_memory)))
        .collect()
}

/// The figures as a table (with a memory column when memory was measured).
pub fn table(reports: &[Report]) -> String {
    let with_memory = reports.iter().any(|r| r.mem_per_node_bytes.is_some());
    use std::fmt::Write;
    let mut out = String::new();
    let p = |p: &Percentiles| {
        if p.n == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}/{:.0}/{:.0}", p.p50, p.p99, p.max)
        }
    };
    let _ = writeln!(
        out,
        "{:<22} {:>6} {:>6} {:>17} {:>13} {:>15} {:>4} {:>15} {:>15} {:>8} {:>9}{}",
        "scenario",
        "seed",
        "nodes",
        "join ms p50/99/max",
        "detect 1st",
        "detect all",
        "FP",
        "FP ms p50/99/max",
        "change ms",
        "msg/n/s",
        "B/n/s",
        if with_memory { "    mem/node" } else { "" }
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<22} {:>6} {:>6} {:>17} {:>13} {:>15} {:>4} {:>15} {:>15} {:>10} {:>8.1} {:>9.0}{}",
            r.scenario,
            r.seed,
            r.nodes,
            p(&r.join_ms),
            if r.detect_first_ms.n == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", r.detect_first_ms.p50)
            },
            p(&r.detect_all_ms),
            r.false_positives,
            p(&r.false_positive_ms),
            p(&r.service_change_ms),
            if r.reconverge_ms.n == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", r.reconverge_ms.max)
            },
            r.msgs_per_node_s,
            r.bytes_per_node_s,
            match r.mem_per_node_bytes {
                Some(b) => format!(" {:>9} KiB", b / 1024),
                None => String::new(),
            }
        );
        for v in &r.violations {
            let _ = writeln!(out, "  INVARIANT VIOLATED: {v}");
        }
    }
    out
}
