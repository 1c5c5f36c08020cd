//! One scheduled timer ([`TimerEntry`]) and the order in which timers due at once run.

use std::cmp::Ordering;
use std::time::Instant;

use foca::Timer;

use crate::swim::SwimId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TimerKind {
    Swim(Timer<SwimId>),
    Join,
    SeedRecheck,
    AntiEntropy,
    /// A member we suspected after a failed probe (a `down` hint, then no answer): down unless
    /// it refuted (its incarnation changed) by then.
    ConfirmDown(SwimId, foca::Incarnation),
    /// A member that came up without a record we hold: by now its digest has usually reached us
    /// and its record has been pulled from whoever sent the digest; if not, pull it from the
    /// member itself.
    PullIfMissing(mesh_protocol::MemberId),
}

#[derive(Debug)]
pub(super) struct TimerEntry {
    pub(super) at: Instant,
    pub(super) seq: u64,
    pub(super) kind: TimerKind,
}

impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        // foca's timers at the same instant must be delivered in foca's order (its `Ord` puts
        // `SendIndirectProbe` before the next `ProbeRandomMember`); then insertion order.
        let rank = |k: &TimerKind| match k {
            TimerKind::Swim(_) => 0,
            _ => 1,
        };
        self.at
            .cmp(&other.at)
            .then_with(|| match (&self.kind, &other.kind) {
                (TimerKind::Swim(a), TimerKind::Swim(b)) => a.cmp(b),
                (a, b) => rank(a).cmp(&rank(b)),
            })
            .then(self.seq.cmp(&other.seq))
    }
}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for TimerEntry {}
