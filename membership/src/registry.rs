//! The registry: per address, the liveness SWIM reports and the newest record heard of.
//!
//! A node's services are visible in lookups only while SWIM holds its identity alive (or
//! suspect) *and* the record held is that identity's (same generation) *and* the record is not a
//! farewell (`leaving`). Every change is diffed into [`Event`]s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_protocol::{MemberId, NodeRecord, ServiceInfo};

/// A member's state as the registry reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; will be declared down unless it refutes. Its services stay visible.
    Suspect,
    /// Declared down by SWIM (crashed, partitioned away). Its services are gone.
    Down,
    /// Left gracefully. Its services are gone.
    Left,
}

impl MemberState {
    /// `alive`, `suspect`, `down` or `left`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
            Self::Left => "left",
        }
    }

    /// Alive or suspect: counted as a member, services visible.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect)
    }
}

/// A member as `Membership::members` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Identity of this run of the node.
    pub id: MemberId,
    /// Node name from its record (empty until the record arrives).
    pub name: String,
    /// Current state.
    pub state: MemberState,
}

/// One node serving a service, as lookups return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNode {
    /// The node.
    pub node: MemberId,
    /// The node's name.
    pub node_name: String,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
    /// The service as this node serves it (version, endpoints, metadata).
    pub service: ServiceInfo,
}

/// What lookups need from the registry, built once per change: the nodes of each service and
/// the subscribers of each topic. The driver publishes a new one after every change, and a
/// client reads it without waiting on the driver task (see
/// `MembershipHandle::directory`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    revision: u64,
    services: BTreeMap<String, Arc<[ServiceNode]>>,
    topics: BTreeMap<String, Arc<[Subscriber]>>,
}

/// A node subscribed to a topic, and its queue group if any.
pub type Subscriber = (MemberId, Option<String>);

impl Directory {
    /// Builds the directory of `records` (the visible ones) at registry `revision`.
    pub(crate) fn build<'a>(revision: u64, records: impl Iterator<Item = &'a NodeRecord>) -> Self {
        let mut services: BTreeMap<String, Vec<ServiceNode>> = BTreeMap::new();
        let mut topics: BTreeMap<String, Vec<Subscriber>> = BTreeMap::new();
        for r in records {
            for s in &r.services {
                services
                    .entry(s.name.clone())
                    .or_default()
                    .push(ServiceNode {
                        node: r.id,
                        node_name: r.name.clone(),
                        labels: r.labels.clone(),
                        service: s.clone(),
                    });
            }
            for s in &r.subscriptions {
                topics
                    .entry(s.topic.clone())
                    .or_default()
                    .push((r.id, s.queue.clone()));
            }
        }
        Self {
            revision,
            services: services
                .into_iter()
                .map(|(k, mut v)| {
                    v.sort_by_key(|n| n.node);
                    (k, v.into())
                })
                .collect(),
            topics: topics
                .into_iter()
                .map(|(k, mut v)| {
                    v.sort();
                    (k, v.into())
                })
                .collect(),
        }
    }

    /// The registry revision this directory was built at; it grows with every visible change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The active nodes serving `service`, sorted by node id.
    pub fn nodes_of(&self, service: &str) -> &[ServiceNode] {
        self.services.get(service).map_or(&[], |n| n)
    }

    /// The subscriptions to `topic` of every active node: (node, queue group), sorted.
    pub fn subscribers_of(&self, topic: &str) -> &[Subscriber] {
        self.topics.get(topic).map_or(&[], |n| n)
    }

    /// Names of every service some active node serves, sorted.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }
}

/// A change in the registry, as `Membership::poll_event` and the driver's `watch` stream report
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A member became alive (joined, or came back under a new generation).
    MemberUp {
        /// The member.
        id: MemberId,
    },
    /// A member was declared down.
    MemberDown {
        /// The member.
        id: MemberId,
    },
    /// A member left gracefully.
    MemberLeft {
        /// The member.
        id: MemberId,
    },
    /// A node started serving a service.
    ServiceAdded {
        /// The node.
        node: MemberId,
        /// The service.
        service: ServiceInfo,
    },
    /// A node changed a service it serves (version, endpoints or metadata).
    ServiceChanged {
        /// The node.
        node: MemberId,
        /// The service, as it is now.
        service: ServiceInfo,
    },
    /// A node stopped serving a service, left, or was declared down.
    ServiceRemoved {
        /// The node.
        node: MemberId,
        /// The service's name.
        service: String,
    },
    /// A node's record changed in any way (services, subscriptions, labels).
    RecordChanged {
        /// The node.
        node: MemberId,
        /// The new version.
        version: u64,
    },
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Entry {
    pub(crate) live: Option<(MemberId, MemberState)>,
    pub(crate) record: Option<NodeRecord>,
}

impl Entry {
    /// The record whose services count, if any.
    pub(crate) fn visible(&self) -> Option<&NodeRecord> {
        let (id, state) = self.live?;
        let r = self.record.as_ref()?;
        (state.is_active() && r.id == id && !r.leaving).then_some(r)
    }
}

/// Liveness and records of every address known.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Ordered, so that everything derived from it (sync answers, digests) is deterministic.
    pub(crate) entries: BTreeMap<SocketAddr, Entry>,
    /// Grows by one with every change to what lookups see.
    pub(crate) revision: u64,
}

impl Registry {
    /// Applies `f` to the entry of `addr` (created if absent) and pushes the service events the
    /// change causes.
    pub(crate) fn change<R>(
        &mut self,
        addr: SocketAddr,
        events: &mut impl Extend<Event>,
        f: impl FnOnce(&mut Entry) -> R,
    ) -> R {
        let entry = self.entries.entry(addr).or_default();
        let before = entry.visible().cloned();
        let out = f(entry);
        let after = entry.visible();
        if before.as_ref() != after {
            self.revision += 1;
        }
        diff(before.as_ref(), after, events);
        out
    }

    pub(crate) fn visible(&self) -> impl Iterator<Item = &NodeRecord> {
        self.entries.values().filter_map(Entry::visible)
    }
}

fn diff(before: Option<&NodeRecord>, after: Option<&NodeRecord>, events: &mut impl Extend<Event>) {
    let by_name = |r: Option<&NodeRecord>| -> BTreeMap<String, ServiceInfo> {
        r.map(|r| {
            r.services
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect()
        })
        .unwrap_or_default()
    };
    let (old, new) = (by_name(before), by_name(after));
    // A service of a node that changed identity (restart) is reported under the new id.
    let node_old = before.map(|r| r.id);
    let node_new = after.map(|r| r.id);
    for (name, _) in old.iter().filter(|(n, _)| !new.contains_key(*n)) {
        if let Some(node) = node_old {
            events.extend([Event::ServiceRemoved {
                node,
                service: name.clone(),
            }]);
        }
    }
    if let Some(node) = node_new {
        for (name, s) in &new {
            match old.get(name) {
                None => events.extend([Event::ServiceAdded {
                    node,
                    service: s.clone(),
                }]),
                Some(o) if o != s || node_old != node_new => {
                    events.extend([Event::ServiceChanged {
                        node,
                        service: s.clone(),
                    }])
                }
                Some(_) => {}
            }
        }
    }
    if let Some(a) = after {
        if before.map(|b| (b.id, b.version)) != Some((a.id, a.version)) {
            events.extend([Event::RecordChanged {
                node: a.id,
                version: a.version,
            }]);
        }
    }
}
