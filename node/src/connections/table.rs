//! The bookkeeping of a node's open connections, without IO: which are open, which are in use,
//! which closes first when the cap is reached.
//!
//! Generic over the connection handle so that it is tested without sockets; time is a logical
//! tick passed in by the caller (a counter, not a clock), so that "least recently used" is exact
//! and deterministic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// `Slot::busy` of a connection chosen for eviction: nothing can use it any more.
const RETIRED: usize = usize::MAX;

/// The use count and last use of one connection, shared by the table and every handle or stream
/// task that uses the connection. Lock-free, so that starting and ending a stream never takes the
/// table's lock.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Handles and streams using the connection now, or [`RETIRED`].
    busy: AtomicUsize,
    /// Tick of the last use (start or end).
    last_used: AtomicU64,
}

impl Slot {
    /// Starts a use at tick `now`; `false` if the connection was retired (it is closing).
    pub(crate) fn try_acquire(&self, now: u64) -> bool {
        let ok = self
            .busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| match b {
                RETIRED => None,
                b => Some(b + 1),
            })
            .is_ok();
        if ok {
            self.last_used.fetch_max(now, Ordering::AcqRel);
        }
        ok
    }

    /// Ends a use at tick `now`; `true` if the connection is now idle.
    pub(crate) fn release(&self, now: u64) -> bool {
        self.last_used.fetch_max(now, Ordering::AcqRel);
        self.busy.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Whether something uses the connection now.
    pub(crate) fn is_busy(&self) -> bool {
        !matches!(self.busy.load(Ordering::Acquire), 0 | RETIRED)
    }

    /// Retires an idle connection: from now on [`try_acquire`](Self::try_acquire) fails. `false`
    /// (and nothing changes) if it is in use.
    fn try_retire(&self) -> bool {
        self.busy
            .compare_exchange(0, RETIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Acquire)
    }
}

/// How many connections a table keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Beyond this many, the least recently used idle connection is evicted.
    pub(crate) cap: usize,
    /// Connections allowed over `cap` while every connection is busy; past them, new ones are
    /// refused.
    pub(crate) overrun: usize,
}

struct Entry<C> {
    peer: SocketAddr,
    conn: C,
    slot: Arc<Slot>,
}

/// A connection let in by [`Table::admit`].
pub(crate) struct Admitted<C> {
    /// Its id in the table.
    pub(crate) id: u64,
    /// Its use count.
    pub(crate) slot: Arc<Slot>,
    /// Idle connections evicted to make room, to be closed by the caller.
    pub(crate) evicted: Vec<C>,
    /// The table is over its cap because every other connection is busy.
    pub(crate) overrun: bool,
}

/// The open connections of a node, by id and by peer.
pub(crate) struct Table<C> {
    entries: HashMap<u64, Entry<C>>,
    /// The connection handed out for each peer: the latest admitted.
    by_peer: HashMap<SocketAddr, u64>,
    next_id: u64,
}

impl<C> Default for Table<C> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            by_peer: HashMap::new(),
            next_id: 0,
        }
    }
}

impl<C> Table<C> {
    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Open connections with a handle or a stream in use.
    pub(crate) fn busy(&self) -> usize {
        self.entries.values().filter(|e| e.slot.is_busy()).count()
    }

    /// The connection handed out for `peer`, with its use count.
    pub(crate) fn get(&self, peer: SocketAddr) -> Option<(&C, &Arc<Slot>)> {
        let e = self.entries.get(self.by_peer.get(&peer)?)?;
        Some((&e.conn, &e.slot))
    }

    /// Lets in a new connection to `peer` at tick `now`, first evicting idle connections, least
    /// recently used first, while the table is at its cap. Refused (and handed back, for the
    /// caller to close) if every connection is busy and the overrun is used up; nothing changed
    /// then.
    pub(crate) fn admit(
        &mut self,
        peer: SocketAddr,
        conn: C,
        now: u64,
        limits: Limits,
    ) -> Result<Admitted<C>, C> {
        let mut evicted = Vec::new();
        while self.entries.len() >= limits.cap {
            match self.evict_lru() {
                Some(c) => evicted.push(c),
                None => break,
            }
        }
        if self.entries.len() >= limits.cap.saturating_add(limits.overrun) {
            return Err(conn);
        }
        let overrun = self.entries.len() >= limits.cap;
        let id = self.next_id;
        self.next_id += 1;
        let slot = Arc::new(Slot::default());
        slot.last_used.store(now, Ordering::Release);
        self.entries.insert(
            id,
            Entry {
                peer,
                conn,
                slot: slot.clone(),
            },
        );
        self.by_peer.insert(peer, id);
        Ok(Admitted {
            id,
            slot,
            evicted,
            overrun,
        })
    }

    /// Evicts idle connections, least recently used first, until at most `cap` are open (or none
    /// is idle); returns them for the caller to close.
    pub(crate) fn trim(&mut self, cap: usize) -> Vec<C> {
        let mut evicted = Vec::new();
        while self.entries.len() > cap {
            match self.evict_lru() {
                Some(c) => evicted.push(c),
                None => break,
            }
        }
        evicted
    }

    /// Forgets the connection `id` (it closed); returns it if it was still there. If it was the
    /// one handed out for its peer and another connection to that peer is open (both dialed each
    /// other), that one is handed out from now on.
    pub(crate) fn remove(&mut self, id: u64) -> Option<C> {
        let e = self.entries.remove(&id)?;
        if self.by_peer.get(&e.peer) == Some(&id) {
            self.by_peer.remove(&e.peer);
            let other = self
                .entries
                .iter()
                .filter(|(_, o)| o.peer == e.peer)
                .map(|(id, _)| *id)
                .max();
            if let Some(other) = other {
                self.by_peer.insert(e.peer, other);
            }
        }
        Some(e.conn)
    }

    /// Retires and removes the connection to `peer` that `is_it` picks if nothing uses it and
    /// nothing has since tick `since`; returns it for the caller to close. `None` (and nothing
    /// changes) if there is none, or it is or was in use since. (Two connections to one peer
    /// exist while both dialed each other.)
    pub(crate) fn retire_idle(
        &mut self,
        peer: SocketAddr,
        is_it: impl Fn(&C) -> bool,
        since: u64,
    ) -> Option<C> {
        let id = self
            .entries
            .iter()
            .find(|(_, e)| e.peer == peer && is_it(&e.conn))
            .map(|(id, _)| *id)?;
        let slot = &self.entries.get(&id)?.slot;
        if slot.last_used() > since || !slot.try_retire() {
            return None;
        }
        self.remove(id)
    }

    /// Forgets every connection to `peer`; returns them for the caller to close.
    pub(crate) fn remove_peer(&mut self, peer: SocketAddr) -> Vec<C> {
        let ids: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Retires and removes the least recently used idle connection.
    fn evict_lru(&mut self) -> Option<C> {
        // A connection can become busy between the scan and the retirement (an accepted stream
        // does not take the table's lock); then it is skipped and the scan runs again.
        for _ in 0..=self.entries.len() {
            let id = self
                .entries
                .iter()
                .filter(|(_, e)| !e.slot.is_busy())
                .min_by_key(|(id, e)| (e.slot.last_used(), **id))
                .map(|(id, _)| *id)?;
            if self.entries.get(&id).is_some_and(|e| e.slot.try_retire()) {
                return self.remove(id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { cap: 2, overrun: 1 };

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn admit(t: &mut Table<u16>, port: u16, now: u64) -> Admitted<u16> {
        t.admit(addr(port), port, now, LIMITS)
            .unwrap_or_else(|_| panic!("{port} refused"))
    }

    #[test]
    fn only_an_idle_connection_is_retired_on_request() {
        let mut t = Table::default();
        let a = admit(&mut t, 1, 1);
        assert!(a.slot.try_acquire(2));
        let any = |_: &u16| true;
        assert_eq!(t.retire_idle(addr(1), any, 9), None, "in use: kept");
        assert_eq!(t.len(), 1);
        assert!(a.slot.release(3));
        assert_eq!(t.retire_idle(addr(1), |c| *c == 7, 9), None, "not that one");
        assert_eq!(
            t.retire_idle(addr(1), any, 2),
            None,
            "used since tick 2: kept"
        );
        assert_eq!(t.retire_idle(addr(1), any, 3), Some(1));
        assert_eq!(t.len(), 0);
        assert!(
            !a.slot.try_acquire(4),
            "a retired connection serves nothing more"
        );
        assert_eq!(
            t.retire_idle(addr(9), any, 9),
            None,
            "no connection to that peer"
        );
    }

    #[test]
    fn a_removed_connection_hands_its_peer_over_to_another_open_one() {
        let mut t = Table::default();
        let dialed = admit(&mut t, 1, 1); // we dialed peer 1 ...
        let accepted = t
            .admit(addr(1), 11, 2, LIMITS)
            .unwrap_or_else(|_| panic!("refused"));
        assert_eq!(t.get(addr(1)).map(|(c, _)| *c), Some(11)); // ... and it dialed us
        t.remove(accepted.id);
        assert_eq!(
            t.get(addr(1)).map(|(c, _)| *c),
            Some(1),
            "the other is handed out"
        );
        t.remove(dialed.id);
        assert_eq!(t.get(addr(1)).map(|(c, _)| *c), None);
    }

    #[test]
    fn the_least_recently_used_idle_connection_goes_first() {
        let mut t = Table::default();
        let a = admit(&mut t, 1, 1);
        admit(&mut t, 2, 2);
        // 1 was used after 2: 2 is now the least recently used.
        assert!(a.slot.try_acquire(3));
        assert!(a.slot.release(4));
        let c = admit(&mut t, 3, 5);
        assert_eq!(c.evicted, vec![2]);
        assert!(!c.overrun);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(addr(2)).map(|(c, _)| *c), None);
        assert_eq!(t.get(addr(1)).map(|(c, _)| *c), Some(1));
    }

    #[test]
    fn a_busy_connection_stays_and_the_overrun_is_bounded() {
        let mut t = Table::default();
        let a = admit(&mut t, 1, 1);
        let b = admit(&mut t, 2, 2);
        assert!(a.slot.try_acquire(3) && b.slot.try_acquire(3));
        let c = admit(&mut t, 3, 4);
        assert!(c.evicted.is_empty());
        assert!(c.overrun);
        assert_eq!((t.len(), t.busy()), (3, 2));
        // Cap 2 + overrun 1, all busy: the fourth is refused, and nothing changed.
        assert!(c.slot.try_acquire(5));
        assert!(matches!(t.admit(addr(4), 4, 6, LIMITS), Err(4)));
        assert_eq!((t.len(), t.busy()), (3, 3));
        // Once some are idle, trimming closes the least recently used of them down to the cap.
        assert!(c.slot.release(7));
        assert!(a.slot.release(8));
        assert_eq!(t.trim(LIMITS.cap), vec![3]);
        assert_eq!((t.len(), t.busy()), (2, 1));
    }

    #[test]
    fn a_retired_connection_cannot_be_used_again() {
        let mut t = Table::default();
        let a = admit(&mut t, 1, 1);
        admit(&mut t, 2, 2);
        admit(&mut t, 3, 3);
        assert!(!a.slot.try_acquire(4), "1 was evicted");
        assert!(!a.slot.is_busy());
    }

    #[test]
    fn removing_a_peer_removes_all_its_connections() {
        let mut t = Table::default();
        let limits = Limits {
            cap: 10,
            overrun: 0,
        };
        let first = t.admit(addr(1), 10, 1, limits).ok().unwrap();
        t.admit(addr(1), 11, 2, limits).ok().unwrap();
        t.admit(addr(2), 20, 3, limits).ok().unwrap();
        // The latest connection to a peer is the one handed out.
        assert_eq!(t.get(addr(1)).map(|(c, _)| *c), Some(11));
        let mut gone = t.remove_peer(addr(1));
        gone.sort_unstable();
        assert_eq!(gone, vec![10, 11]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(first.id), None);
    }

    #[test]
    fn an_older_connection_closing_keeps_the_newer_one_handed_out() {
        let mut t = Table::default();
        let limits = Limits {
            cap: 10,
            overrun: 0,
        };
        let old = t.admit(addr(1), 10, 1, limits).ok().unwrap();
        t.admit(addr(1), 11, 2, limits).ok().unwrap();
        assert_eq!(t.remove(old.id), Some(10));
        assert_eq!(t.get(addr(1)).map(|(c, _)| *c), Some(11));
    }
}
