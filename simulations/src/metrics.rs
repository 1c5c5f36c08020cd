//! What a run measures while it runs: joins, crash detections, false downs, service changes,
//! reconvergence, traffic and memory, and the figures made of them at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mesh_membership::Event;

use crate::network::{index, Links};
use crate::node::{alive, Node};
use crate::report::{Percentiles, Report};

/// How many joining nodes are followed closely for join times (the rest still run).
const TRACKED_JOINERS: usize = 200;

/// When an observer declared a node down, and when it saw it alive again (if it did).
type DownSpell = (Duration, Option<Duration>);

/// Something every node alive at `at` should notice: who they were, and when each noticed.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// When it happened.
    pub(crate) at: Duration,
    /// Observers alive at `at`: (node, its life start generation).
    pub(crate) observers: BTreeSet<(usize, u64)>,
    /// Observer -> when it noticed.
    pub(crate) seen: BTreeMap<usize, Duration>,
}

/// The measurements of one run.
pub(crate) struct Metrics {
    /// Datagrams sent.
    pub(crate) msgs: u64,
    /// Datagram bytes sent.
    pub(crate) bytes: u64,
    /// Tracked joiner -> its join.
    pub(crate) joins: BTreeMap<usize, Watch>,
    /// Crashed (node, generation) -> its crash.
    pub(crate) crashes: BTreeMap<(usize, u64), Watch>,
    /// False downs: (node, generation) -> observer -> (declared at, seen back at).
    false_downs: BTreeMap<(usize, u64), BTreeMap<usize, DownSpell>>,
    /// Service changes: (name, time) -> observers that saw it.
    pub(crate) changes: Vec<(String, Duration, BTreeMap<usize, Duration>)>,
    /// Identity renewals by live nodes (each follows a false down).
    pub(crate) renewals: u64,
    /// Time from each heal until the cluster was whole again (ms).
    pub(crate) reconverged_ms: Vec<f64>,
}

impl Metrics {
    /// Nothing measured yet, for a cluster of `nodes`: a deterministic sample of the joiners is
    /// followed.
    pub(crate) fn new(nodes: usize) -> Self {
        let mut joins = BTreeMap::new();
        let step = (nodes / TRACKED_JOINERS).max(1);
        for i in (1..nodes).step_by(step).take(TRACKED_JOINERS) {
            joins.insert(
                i,
                Watch {
                    at: Duration::MAX,
                    ..Watch::default()
                },
            );
        }
        Self {
            msgs: 0,
            bytes: 0,
            joins,
            crashes: BTreeMap::new(),
            false_downs: BTreeMap::new(),
            changes: Vec::new(),
            renewals: 0,
            reconverged_ms: Vec::new(),
        }
    }

    /// Records what `observer` reported at `now`.
    pub(crate) fn observe(
        &mut self,
        nodes: &[Node],
        links: &Links,
        observer: usize,
        e: Event,
        now: Duration,
    ) {
        match e {
            Event::MemberUp { id } => {
                let Some(x) = index(id.addr) else { return };
                let life = nodes.get(x).map(Node::life_start).unwrap_or(0);
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
                let Some(node) = nodes.get(x) else {
                    return;
                };
                // Declared down while alive, in its current life, and reachable both ways from
                // the observer: a false positive. (Across a partition, down is the right call.)
                let reachable = links.reachable(observer, x);
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

    /// The measured figures at `now`, over `node_seconds` (nodes × simulated seconds). What
    /// identifies the run (scenario, seed, steps, violations, memory) is left to the caller.
    pub(crate) fn figures(&self, nodes: &[Node], now: Duration, node_seconds: f64) -> Report {
        let alive: BTreeSet<usize> = alive(nodes).collect();
        let join: Vec<f64> = self
            .joins
            .iter()
            .filter(|(x, w)| alive.contains(x) && w.at != Duration::MAX)
            .filter_map(|(_, w)| all_noticed(nodes, w))
            .collect();
        let (mut first, mut all) = (Vec::new(), Vec::new());
        for w in self.crashes.values() {
            if let Some(f) = w.seen.values().min() {
                first.push(ms(f.saturating_sub(w.at)));
            }
            if let Some(t) = all_noticed(nodes, w) {
                all.push(t);
            }
        }
        let mut fp_durations = Vec::new();
        for obs in self.false_downs.values() {
            let worst = obs
                .values()
                .map(|(down, up)| up.unwrap_or(now).saturating_sub(*down))
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
        Report {
            join_ms: Percentiles::of(join),
            detect_first_ms: Percentiles::of(first),
            detect_all_ms: Percentiles::of(all),
            false_positives: self.renewals,
            reconverge_ms: Percentiles::of(self.reconverged_ms.clone()),
            false_positive_ms: Percentiles::of(fp_durations),
            service_change_ms: Percentiles::of(change),
            msgs_per_node_s: (self.msgs as f64 / node_seconds * 100.0).round() / 100.0,
            bytes_per_node_s: (self.bytes as f64 / node_seconds).round(),
            ..Report::default()
        }
    }
}

/// Time until every observer of `w` that is still in the same life noticed, if all did.
fn all_noticed(nodes: &[Node], w: &Watch) -> Option<f64> {
    let still: Vec<usize> = w
        .observers
        .iter()
        .filter(|(k, life)| nodes[*k].core.is_some() && nodes[*k].life_start() == *life)
        .map(|(k, _)| *k)
        .collect();
    if still.iter().all(|k| w.seen.contains_key(k)) {
        let last = still.iter().map(|k| w.seen[k]).max().unwrap_or(w.at);
        Some(ms(last.saturating_sub(w.at)))
    } else {
        None
    }
}

/// A duration in milliseconds, rounded to the microsecond.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The resident memory of this process (bytes; 0 where `/proc` cannot say).
pub(crate) fn rss_bytes() -> u64 {
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
