//! Choosing a node: the [`Balancer`] (random, round-robin, least outstanding, or rendezvous
//! hashing of a routing key), the registry filters a candidate must pass, and ejection of nodes
//! that failed at the transport level.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use mesh_membership::{Directory, ServiceNode};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::client::options::{CallOptions, Strategy};

/// Client state shared by every call of a node: ejections, counters, randomness.
pub(crate) struct Balancer {
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
    outstanding: Mutex<HashMap<SocketAddr, u64>>,
    round_robin: AtomicU64,
    rng: Mutex<SmallRng>,
    pub(crate) ejection: Duration,
    next_id: AtomicU64,
    /// Attempts after the first, over all calls.
    pub(crate) retries: AtomicU64,
}

impl Balancer {
    pub(crate) fn new(ejection: Duration, seed: u64) -> Self {
        Self {
            ejected: Mutex::new(HashMap::new()),
            outstanding: Mutex::new(HashMap::new()),
            round_robin: AtomicU64::new(0),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            ejection,
            next_id: AtomicU64::new(1),
            retries: AtomicU64::new(0),
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn eject(&self, node: SocketAddr) {
        lock(&self.ejected).insert(node, Instant::now() + self.ejection);
    }

    fn is_ejected(&self, node: SocketAddr, now: Instant) -> bool {
        lock(&self.ejected)
            .get(&node)
            .is_some_and(|until| *until > now)
    }

    /// A factor drawn from 0.5..1.5 that jitters a backoff.
    pub(crate) fn jitter(&self) -> f64 {
        lock(&self.rng).random_range(0.5..1.5)
    }

    /// Picks the next node among `candidates` (already filtered, none tried yet).
    pub(crate) fn pick(
        &self,
        candidates: &[&ServiceNode],
        opts: &CallOptions,
    ) -> Option<SocketAddr> {
        if candidates.is_empty() {
            return None;
        }
        let now = Instant::now();
        // Ejected nodes only if every candidate is ejected.
        let healthy: Vec<&ServiceNode> = {
            let ejected = lock(&self.ejected);
            candidates
                .iter()
                .copied()
                .filter(|n| ejected.get(&n.node.addr).is_none_or(|until| *until <= now))
                .collect()
        };
        let pool: &[&ServiceNode] = if healthy.is_empty() {
            candidates
        } else {
            &healthy
        };
        if let Some(key) = &opts.routing_key {
            return pool
                .iter()
                .max_by_key(|n| rendezvous_score(key, n.node.addr))
                .map(|n| n.node.addr);
        }
        let i = match opts.strategy {
            Strategy::Random => lock(&self.rng).random_range(0..pool.len()),
            Strategy::RoundRobin => {
                (self.round_robin.fetch_add(1, Ordering::Relaxed) % pool.len() as u64) as usize
            }
            Strategy::LeastOutstanding => {
                let out = lock(&self.outstanding);
                let min = pool
                    .iter()
                    .map(|n| out.get(&n.node.addr).copied().unwrap_or(0))
                    .min()
                    .unwrap_or(0);
                let least: Vec<usize> = (0..pool.len())
                    .filter(|i| out.get(&pool[*i].node.addr).copied().unwrap_or(0) == min)
                    .collect();
                drop(out);
                least[lock(&self.rng).random_range(0..least.len())]
            }
        };
        Some(pool[i].node.addr)
    }

    /// A random address among `nodes` (preferring ones not ejected).
    pub(crate) fn pick_addr(&self, nodes: &[SocketAddr]) -> Option<SocketAddr> {
        if nodes.is_empty() {
            return None;
        }
        let now = Instant::now();
        let healthy: Vec<SocketAddr> = nodes
            .iter()
            .copied()
            .filter(|n| !self.is_ejected(*n, now))
            .collect();
        let pool = if healthy.is_empty() { nodes } else { &healthy };
        Some(pool[lock(&self.rng).random_range(0..pool.len())])
    }

    pub(crate) fn start(&self, node: SocketAddr) -> Outstanding<'_> {
        *lock(&self.outstanding).entry(node).or_default() += 1;
        Outstanding { b: self, node }
    }
}

/// A call in flight to `node`, for least-outstanding selection.
pub(crate) struct Outstanding<'a> {
    b: &'a Balancer,
    node: SocketAddr,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let mut out = lock(&self.b.outstanding);
        if let Some(n) = out.get_mut(&self.node) {
            *n = n.saturating_sub(1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Rendezvous (highest random weight) score of `node` for `key`: FNV-1a 64 over both, then the
/// splitmix64 finaliser. Stable across processes and versions.
pub fn rendezvous_score(key: &str, node: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0]).chain(node.to_string().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `n` passes the version, metadata and endpoint filters.
pub(crate) fn matches(n: &ServiceNode, endpoint: &str, opts: &CallOptions) -> bool {
    opts.version
        .as_ref()
        .is_none_or(|v| *v == n.service.version)
        && opts
            .metadata_filter
            .iter()
            .all(|(k, v)| n.service.metadata.get(k) == Some(v))
        && n.service.endpoints.iter().any(|e| e.name == endpoint)
}

/// Nodes already tried in this call.
pub(crate) type Tried = HashSet<SocketAddr>;

/// The nodes of `service` in `directory` that serve `endpoint`, pass the options' filters, and
/// have not been tried yet in this call.
pub(crate) fn candidates<'d>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_spreads_keys() {
        let nodes: Vec<SocketAddr> = (1..=4)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i)))
            .collect();
        let owner = |key: &str, nodes: &[SocketAddr]| {
            *nodes
                .iter()
                .max_by_key(|n| rendezvous_score(key, **n))
                .unwrap()
        };
        let mut counts = HashMap::new();
        for k in 0..4000 {
            *counts
                .entry(owner(&format!("user-{k}"), &nodes))
                .or_insert(0) += 1;
        }
        for n in &nodes {
            let c = counts[n];
            assert!((800..1200).contains(&c), "{n}: {c} of 4000 keys");
        }
        // Removing a node moves only that node's keys.
        let fewer = &nodes[..3];
        for k in 0..1000 {
            let key = format!("user-{k}");
            let before = owner(&key, &nodes);
            if before != nodes[3] {
                assert_eq!(owner(&key, fewer), before);
            }
        }
    }
}
