//! One simulated node: its membership core (while alive), its lives and generations, its wake-up.

use std::time::Duration;

use mesh_membership::Membership;

/// Generations per life: a start gets generation `incarnation * GENERATION_STRIDE + 1`.
const GENERATION_STRIDE: u64 = 1_000_000;

/// A node of the simulated cluster.
pub(crate) struct Node {
    /// The membership core, while the node is alive.
    pub(crate) core: Option<Membership>,
    /// The generation last seen, to count renewals (a node renews itself when the cluster
    /// declared it down while it was alive).
    pub(crate) last_generation: u64,
    /// Starts so far; a start gets generation `incarnation * GENERATION_STRIDE + 1`, and the core
    /// may renew it (+1) by itself after a false down.
    pub(crate) incarnation: u64,
    /// The wake-up scheduled for the core, if any.
    pub(crate) wake: Option<Duration>,
    /// Until when the node processes nothing (a `stall` action).
    pub(crate) stalled_until: Option<Duration>,
}

impl Node {
    /// A node that has not started yet.
    pub(crate) fn new() -> Self {
        Self {
            core: None,
            last_generation: 0,
            incarnation: 0,
            wake: None,
            stalled_until: None,
        }
    }

    /// The generation the node runs as now, if alive.
    pub(crate) fn generation(&self) -> Option<u64> {
        self.core.as_ref().map(|c| c.id().generation)
    }

    /// The first generation of the node's current life.
    pub(crate) fn life_start(&self) -> u64 {
        self.incarnation * GENERATION_STRIDE + 1
    }
}

/// The nodes alive now, in order.
pub(crate) fn alive(nodes: &[Node]) -> impl Iterator<Item = usize> + '_ {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.core.is_some())
        .map(|(i, _)| i)
}
