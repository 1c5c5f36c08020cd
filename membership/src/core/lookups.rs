//! Lookups: members, services, subscribers and the [`Directory`], read from the registry.

use std::collections::HashSet;

use foca::State;
use mesh_protocol::{MemberId, NodeRecord};

use crate::core::Membership;
use crate::registry::{Directory, MemberInfo, MemberState, ServiceNode};

impl Membership {
    /// Every member known, this node included, with its state, sorted by id.
    pub fn members(&self) -> Vec<MemberInfo> {
        let suspects: HashSet<MemberId> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| m.id().0)
            .collect();
        let mut out: Vec<MemberInfo> = self
            .registry
            .entries
            .values()
            .filter_map(|e| {
                let (id, mut state) = e.live?;
                if state == MemberState::Alive && suspects.contains(&id) {
                    state = MemberState::Suspect;
                }
                let name = e
                    .record
                    .as_ref()
                    .filter(|r| r.id == id)
                    .map(|r| r.name.clone())
                    .unwrap_or_default();
                Some(MemberInfo { id, name, state })
            })
            .collect();
        out.sort_by_key(|m| m.id);
        out
    }

    /// Number of active (alive or suspect) members, this node included.
    pub fn num_active(&self) -> usize {
        self.registry
            .entries
            .values()
            .filter(|e| e.live.is_some_and(|(_, s)| s.is_active()))
            .count()
    }

    /// Names of every service some active node serves, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .visible()
            .flat_map(|r| r.services.iter().map(|s| s.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The active nodes serving `service`, sorted by node id.
    pub fn nodes_of(&self, service: &str) -> Vec<ServiceNode> {
        let mut out: Vec<ServiceNode> = self
            .registry
            .visible()
            .flat_map(|r| {
                r.services
                    .iter()
                    .filter(|s| s.name == service)
                    .map(|s| ServiceNode {
                        node: r.id,
                        node_name: r.name.clone(),
                        labels: r.labels.clone(),
                        service: s.clone(),
                    })
            })
            .collect();
        out.sort_by_key(|n| n.node);
        out
    }

    /// The subscriptions to `topic` of every active node: (node, queue group), sorted.
    pub fn subscribers_of(&self, topic: &str) -> Vec<(MemberId, Option<String>)> {
        let mut out: Vec<(MemberId, Option<String>)> = self
            .registry
            .visible()
            .flat_map(|r| {
                r.subscriptions
                    .iter()
                    .filter(|s| s.topic == topic)
                    .map(|s| (r.id, s.queue.clone()))
            })
            .collect();
        out.sort();
        out
    }

    /// What lookups see, built from the registry as it is now.
    pub fn directory(&self) -> Directory {
        Directory::build(self.registry.revision, self.registry.visible())
    }

    /// Grows by one with every change to what lookups see: a cheap test of whether a
    /// [`Directory`] is stale.
    pub fn registry_revision(&self) -> u64 {
        self.registry.revision
    }

    /// The records of every active node, sorted by address: what lookups see.
    pub fn visible_records(&self) -> Vec<NodeRecord> {
        let mut out: Vec<NodeRecord> = self.registry.visible().cloned().collect();
        out.sort_by_key(|r| r.id.addr);
        out
    }
}
