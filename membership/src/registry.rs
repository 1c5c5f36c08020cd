//! The registry: per address, the liveness SWIM reports and the newest record heard of.
//!
//! A node's services are visible in lookups only while SWIM holds its identity alive (or
//! suspect) *and* the record held is that identity's (same generation) *and* the record is not a
//! farewell (`leaving`). Every change is diffed into [`Event`]s.
//!
//! Entries that are not active (down, left, or a record whose owner SWIM does not know) are
//! *dormant*: indexed by the time they became so, so that the core can forget the oldest first
//! (`max_dead`) and each after `dead_retention`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mesh_protocol::{MemberId, NodeRecord, ServiceInfo, SignedRecord};

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
    /// `record` as its owner signed it: what sync answers and pushes relay.
    pub(crate) signed: Option<Arc<SignedRecord>>,
    /// Since when the entry is dormant (not active), if it is.
    pub(crate) since: Option<Instant>,
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
#[derive(Debug)]
pub(crate) struct Registry {
    /// Ordered, so that everything derived from it (sync answers, digests) is deterministic.
    pub(crate) entries: BTreeMap<SocketAddr, Entry>,
    /// Grows by one with every change to what lookups see.
    pub(crate) revision: u64,
    /// Dormant entries by the time they became dormant, oldest first. Our own address is never
    /// in it (our own entry is never forgotten).
    pub(crate) dormant: BTreeSet<(Instant, SocketAddr)>,
    own: SocketAddr,
}

impl Registry {
    /// A registry holding `own`'s entry, active, with `record`.
    pub(crate) fn new(
        own: MemberId,
        record: NodeRecord,
        signed: Arc<SignedRecord>,
        events: &mut impl Extend<Event>,
    ) -> Self {
        let entry = Entry {
            live: Some((own, MemberState::Alive)),
            record: Some(record),
            signed: Some(signed),
            since: None,
        };
        diff(None, entry.visible(), events);
        Self {
            entries: BTreeMap::from([(own.addr, entry)]),
            revision: 1,
            dormant: BTreeSet::new(),
            own: own.addr,
        }
    }

    /// Applies `f` to the entry of `addr` (created if absent) at `now` and pushes the service
    /// events the change causes.
    pub(crate) fn change<R>(
        &mut self,
        addr: SocketAddr,
        now: Instant,
        events: &mut impl Extend<Event>,
        f: impl FnOnce(&mut Entry) -> R,
    ) -> R {
        let entry = self.entries.entry(addr).or_default();
        let before = entry.visible().cloned();
        let out = f(entry);
        let dormant = !entry.live.is_some_and(|(_, s)| s.is_active()) && addr != self.own;
        match (entry.since, dormant) {
            (None, true) => {
                entry.since = Some(now);
                self.dormant.insert((now, addr));
            }
            (Some(t), false) => {
                entry.since = None;
                self.dormant.remove(&(t, addr));
            }
            _ => {}
        }
        let after = entry.visible();
        if before.as_ref() != after {
            self.revision += 1;
        }
        diff(before.as_ref(), after, events);
        out
    }

    /// Forgets the entry of `addr` (never our own) and pushes the events that causes.
    pub(crate) fn remove(
        &mut self,
        addr: SocketAddr,
        events: &mut impl Extend<Event>,
    ) -> Option<Entry> {
        if addr == self.own {
            return None;
        }
        let entry = self.entries.remove(&addr)?;
        if let Some(t) = entry.since {
            self.dormant.remove(&(t, addr));
        }
        if let Some(before) = entry.visible() {
            self.revision += 1;
            diff(Some(before), None, events);
        }
        Some(entry)
    }

    /// The oldest dormant entry: when it became dormant, and its address.
    pub(crate) fn oldest_dormant(&self) -> Option<(Instant, SocketAddr)> {
        self.dormant.first().copied()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_protocol::Proof;

    use super::*;

    fn id(port: u16) -> MemberId {
        MemberId::new(SocketAddr::from(([127, 0, 0, 1], port)), 1)
    }

    #[test]
    fn dormant_entries_are_indexed_by_when_they_became_dormant_and_never_our_own() {
        let own = id(1);
        let signed = Arc::new(SignedRecord::new(Vec::new(), Proof::default()));
        let mut events = Vec::new();
        let mut r = Registry::new(own, NodeRecord::new(own, "me"), signed, &mut events);
        let t = Instant::now();
        let later = t + Duration::from_secs(1);
        // A member comes up, then goes down; another is only a record (dormant at once).
        r.change(id(2).addr, t, &mut events, |e| {
            e.live = Some((id(2), MemberState::Alive))
        });
        assert!(r.dormant.is_empty());
        r.change(id(3).addr, t, &mut events, |e| {
            e.record = Some(NodeRecord::new(id(3), "x"))
        });
        r.change(id(2).addr, later, &mut events, |e| {
            e.live = Some((id(2), MemberState::Down))
        });
        assert_eq!(r.oldest_dormant(), Some((t, id(3).addr)));
        assert_eq!(r.dormant.len(), 2);
        // Coming back alive leaves the index; being forgotten too.
        r.change(id(3).addr, later, &mut events, |e| {
            e.live = Some((id(3), MemberState::Alive))
        });
        assert_eq!(r.oldest_dormant(), Some((later, id(2).addr)));
        assert!(r.remove(id(2).addr, &mut events).is_some());
        assert!(r.dormant.is_empty());
        // Our own entry, even left, is never dormant nor removed.
        r.change(own.addr, later, &mut events, |e| {
            e.live = Some((own, MemberState::Left))
        });
        assert!(r.dormant.is_empty());
        assert!(r.remove(own.addr, &mut events).is_none());
    }
}
