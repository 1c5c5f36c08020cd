//! Small types of the core's bounded tables: a record pull waiting its turn ([`Want`]), the
//! sizes a test or a metrics page reads ([`TableSizes`]), and the overflow log that speaks at
//! most once per interval ([`OverflowLog`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_protocol::MemberId;

/// A record to pull: the owner's id and the version wanted, and the peer that told us of it (a
/// peer gossips a digest only once it holds the record, so it is asked first; the owner if that
/// fails or `via` is `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) id: MemberId,
    pub(crate) version: u64,
    pub(crate) via: Option<SocketAddr>,
    /// A probe after a `down` hint: if the owner does not answer, SWIM suspects it.
    pub(crate) probe: bool,
    /// Heard of in a digest: news still spreading, announced on once pulled. (A record pulled
    /// because its member came up is not: every node pulls that one itself.)
    pub(crate) gossiped: bool,
}

/// How many entries each table of a core holds: every table a peer can grow, for tests, metrics
/// and [`Membership::table_sizes`](crate::Membership::table_sizes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableSizes {
    /// Registry entries (addresses known), bounded by `max_records`.
    pub registry: usize,
    /// Of which dormant (down, left, unconfirmed), bounded by `max_dead`.
    pub dormant: usize,
    /// Members in SWIM's table (foca), any state: active ones bounded by `max_records`, down ones
    /// by `max_dead`.
    pub swim_members: usize,
    /// Of which active (alive or suspect).
    pub swim_active: usize,
    /// Down members SWIM holds until they are forgotten, bounded by `max_dead`.
    pub swim_down: usize,
    /// Record pulls queued, bounded by `max_wanted`.
    pub wanted: usize,
    /// Members to confirm with their owner, bounded by `max_wanted`.
    pub verify: usize,
    /// Targeted pulls in flight, bounded by `max_concurrent_syncs`.
    pub pulls_in_flight: usize,
    /// Timers scheduled.
    pub timers: usize,
    /// SWIM updates queued for gossip (foca's backlog, one per member at most).
    pub swim_updates: usize,
    /// Registry digests queued for gossip (one per record at most).
    pub registry_broadcasts: usize,
}

/// How often an overflow of the same table is logged at most.
pub(crate) const OVERFLOW_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Remembers when each kind of overflow was last logged, so that a flood logs once per
/// [`OVERFLOW_LOG_INTERVAL`] (the counters in `Stats` count every one).
#[derive(Debug, Default)]
pub(crate) struct OverflowLog {
    last: BTreeMap<&'static str, Instant>,
}

impl OverflowLog {
    /// Whether an overflow of `what` at `now` should be logged (and notes that it was).
    pub(crate) fn should_log(&mut self, now: Instant, what: &'static str) -> bool {
        match self.last.get(what) {
            Some(t) if now.saturating_duration_since(*t) < OVERFLOW_LOG_INTERVAL => false,
            _ => {
                self.last.insert(what, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflow_is_logged_once_per_interval() {
        let mut log = OverflowLog::default();
        let t = Instant::now();
        assert!(log.should_log(t, "wanted"));
        assert!(!log.should_log(t + Duration::from_secs(1), "wanted"));
        assert!(log.should_log(t + Duration::from_secs(1), "records"));
        assert!(log.should_log(t + OVERFLOW_LOG_INTERVAL, "wanted"));
    }
}
