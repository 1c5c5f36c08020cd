//! The invariants checked at the end of a run (and after a heal): one registry everywhere, no
//! alive node held down, no dead node's services left, no restarted node under its old generation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_membership::MemberState;
use mesh_protocol::MemberId;

use crate::network::{addr, index};
use crate::node::{alive, Node};

/// A registry as the invariants compare it: (address, generation, version) of every record.
type RegistryView = Vec<(SocketAddr, u64, u64)>;

/// What is wrong with the cluster now (empty: every invariant holds).
pub(crate) fn problems(nodes: &[Node]) -> Vec<String> {
    let alive: Vec<usize> = alive(nodes).collect();
    let current: BTreeMap<usize, u64> = alive
        .iter()
        .filter_map(|&i| nodes[i].generation().map(|g| (i, g)))
        .collect();
    let mut reference: Option<(usize, RegistryView)> = None;
    let mut problems = Vec::new();
    for &i in &alive {
        let Some(core) = nodes[i].core.as_ref() else {
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
                    members[k].state != MemberState::Down && members[k].state != MemberState::Left
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

/// The violations to report for the cluster now: at most five of its [`problems`] (and how many
/// more), each with what it takes to replay it: the seed, the step and the virtual time.
pub(crate) fn violations(nodes: &[Node], seed: u64, step: u64, now: Duration) -> Vec<String> {
    let violation = |what: String| {
        format!(
            "{what} (replay: seed {seed}, step {step}, t={:.3}s)",
            now.as_secs_f64()
        )
    };
    let problems = problems(nodes);
    // Report at most a few, with the replay hint.
    let total = problems.len();
    let mut out: Vec<String> = problems.into_iter().take(5).map(violation).collect();
    if total > 5 {
        out.push(violation(format!("... and {} more", total - 5)));
    }
    out
}
