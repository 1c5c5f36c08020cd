//! Membership configuration and its presets.

use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::PeriodicParams;

/// How a node runs SWIM and keeps the registry in sync.
///
/// Start from a preset ([`lan`](Self::lan), [`wan`](Self::wan), [`local`](Self::local)) and
/// adjust fields; every number in a preset says where it comes from.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Cluster name. Datagrams carry a 32-bit tag of it; datagrams of other clusters are dropped.
    pub cluster: String,
    /// foca's SWIM settings (probe period, suspicion timeout, fan-outs, periodic tasks).
    /// `swim.max_packet_size` is derived from [`max_datagram_size`](Self::max_datagram_size) when the
    /// core is built.
    pub swim: foca::Config,
    /// Largest datagram the transport carries (envelope included). foca's packets get this less
    /// the sealed envelope's 39 bytes ([`MAX_OVERHEAD`](crate::swim::MAX_OVERHEAD)) whether or not
    /// a keyring is set; a value below 295 is raised to 295.
    pub max_datagram_size: usize,
    /// Interval of push/pull anti-entropy with one random member.
    pub anti_entropy_interval: Duration,
    /// How long after a member comes up its record may still be missing before it is pulled from
    /// the member itself. Its digest spreads with SWIM's gossip (every 200 ms to 3 members on a
    /// LAN, so a few hops reach hundreds of nodes within a second) and each node pulls the record
    /// from whoever told it; pulling from the member at once would make every node dial every new
    /// member. (A member that restarted at the same address is asked at once: its services are
    /// invisible until its new record arrives.)
    pub member_pull_delay: Duration,
    /// First retry delay when no seed answers; doubles up to `join_backoff_max`.
    pub join_backoff_min: Duration,
    /// Longest delay between join attempts.
    pub join_backoff_max: Duration,
    /// How often a joined node announces itself again to configured seeds it does not currently
    /// see alive (finds a seed that restarted alone, heals a partition through the seeds).
    pub seed_recheck_interval: Duration,
    /// Registry syncs (pulls) in flight at once.
    pub max_concurrent_syncs: usize,
    /// Time allowed for one registry sync before it counts as failed.
    pub sync_timeout: Duration,
    /// Addresses known at most: registry entries (members alive, suspect, down or left, and
    /// records awaiting their owner), which also caps SWIM's active members. Down and left
    /// entries are evicted first; past that, a new record is dropped and a new member refused
    /// (both counted). Default 65,536.
    pub max_records: usize,
    /// How long a down or left member (its registry entry, and its place in SWIM's member table:
    /// foca's `remove_down_after`) and a record whose owner was never confirmed alive are kept.
    /// memberlist forgets the dead after `GossipToTheDeadTime` (30 s on LANs); we keep them
    /// longer so that the announcements to down members (every 4 s on LANs) can find a partition
    /// healed minutes later, and rely on [`max_dead`](Self::max_dead) for the bound. foca's own default is
    /// 24 h. LAN 5 min, WAN 10 min, local 60 s.
    pub dead_retention: Duration,
    /// Down and left members (and unconfirmed records) kept at most, in the registry and in
    /// SWIM's member table each; the oldest are forgotten first, before `dead_retention`.
    /// Default 1,024.
    pub max_dead: usize,
    /// Record pulls queued at most (records heard of in digests, members to confirm with their
    /// owner). Further ones are dropped and counted; anti-entropy finds them later. Default 1,024.
    pub max_wanted: usize,
    /// Identities listed at most in the `down` hint of an answer to a full sync: the most recent
    /// deaths first (within `dead_retention`). Default 256.
    pub max_down_list: usize,
    /// Records handled at most from one sync message (pushed in a request, or returned in an
    /// answer); the rest are ignored and counted, and a later sync brings them. Bounds the
    /// signature checks one peer can cause at once. Default 4,096.
    pub max_records_per_sync: usize,
    /// Encoded bytes of records at most in one sync answer: half the 16 MiB sync frame, so an
    /// answer always fits. A requester gets the rest in its next sync. Default 8 MiB.
    pub max_sync_answer_bytes: usize,
    /// Rescale SWIM's suspicion timeout and retransmission count with the number of members
    /// seen, as memberlist does at every probe, instead of fixing them once from a guessed
    /// cluster size. `None` keeps `swim`'s values as they are.
    pub scaling: Option<SwimScaling>,
}

/// How SWIM's cluster-size-dependent settings follow the members a node sees (memberlist's
/// `suspicionTimeout` and `retransmitLimit`, with `n` the larger of the members seen, this node
/// included, and [`min_members`](Self::min_members)):
///
/// - `swim.suspect_to_down_after = suspicion_mult × max(1, log10 n) × swim.probe_period`;
/// - `swim.max_transmissions = retransmit_mult × ceil(log10(n + 1))`, at most 255.
///
/// A fixed suspicion timeout sized for 32 members (6 s on a LAN) gives a suspect at 250 members
/// less time to hear of its suspicion and refute it than memberlist's 9.6 s, and 6 transmissions
/// of each update reach fewer of them: both show as false downs while a large cluster forms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwimScaling {
    /// memberlist's `SuspicionMult`: 4 on LANs, 6 on WANs.
    pub suspicion_mult: f64,
    /// memberlist's `RetransmitMult`: 4 on LANs and WANs.
    pub retransmit_mult: f64,
    /// The settings never fall below those for this many members (the preset's
    /// `cluster_size`), so small clusters keep the preset's suspicion timeout. (Transmissions
    /// round up where foca's preset rounds down: 8 rather than 6 for 32 members.)
    pub min_members: u32,
}

impl SwimScaling {
    /// The suspicion timeout for `n` members with probes every `probe_period`.
    pub fn suspect_to_down_after(&self, n: usize, probe_period: Duration) -> Duration {
        let n = self.members(n);
        let scale = f64::max(1.0, n.log10());
        // Finite and positive for any n (log10 of at most usize::MAX is under 20) as long as the
        // multiplier is; a nonsense multiplier falls back to one probe period.
        Duration::try_from_secs_f64(self.suspicion_mult * scale * probe_period.as_secs_f64())
            .unwrap_or(probe_period)
    }

    /// Transmissions of each update for `n` members.
    pub fn max_transmissions(&self, n: usize) -> NonZeroU8 {
        let n = self.members(n);
        let tx = (self.retransmit_mult * (n + 1.0).log10().ceil()).clamp(1.0, 255.0);
        // In 1..=255 after the clamp (a NaN multiplier gives 1).
        NonZeroU8::new(tx as u8).unwrap_or(NonZeroU8::MIN)
    }

    fn members(&self, n: usize) -> f64 {
        (n as f64).max(f64::from(self.min_members)).max(1.0)
    }
}

/// Defaults of the caps shared by every preset.
const MAX_RECORDS: usize = 65_536;
const MAX_DEAD: usize = 1_024;
const MAX_WANTED: usize = 1_024;
const MAX_DOWN_LIST: usize = 256;
const MAX_RECORDS_PER_SYNC: usize = 4_096;
const MAX_SYNC_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// `swim` with Lifeguard's health awareness off (`awareness_max_multiplier` 0), the buddy system
/// kept. Without nacks from indirect probers (not implemented yet), every probe of an unreachable
/// member counts against the prober: in `partition.toml` (50/50 for 30 s) every node's score
/// reached its maximum, stretching its probes eight times, and the worst heal took 41.5 s instead
/// of 17 s. Set `swim.awareness_max_multiplier = 8` (memberlist's value) to try it.
fn without_awareness(mut swim: foca::Config) -> foca::Config {
    swim.awareness_max_multiplier = 0;
    swim
}

/// `swim` announcing itself to 2 members it holds down every 4 probe periods (4 s on a LAN),
/// where foca's presets wait 65 s (LAN) or 125 s (WAN). A member held down that is in fact alive
/// (the other side of a healed partition) answers, and the two sides merge; an announcement to a
/// member that is really gone costs one small datagram. In `partition.toml` (50/50 for 30 s) the
/// cluster was whole again 3.5-4.5 s after the heal in seeds 1-10 (17 s with 65 s), and in 28 of
/// seeds 11-30 (4.0 s median; two took 11.5 and 14.5 s). Every 2 or 3 s healed worse in some
/// seeds (up to 14.5 s): each announcement to a member that holds us down makes us rename, and
/// more of them renamed more nodes at once.
fn announcing_to_the_down(mut swim: foca::Config) -> foca::Config {
    swim.periodic_announce_to_down_members = Some(PeriodicParams {
        frequency: swim.probe_period * 4,
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    swim
}

/// A datagram size that fits any path with a 1500-byte MTU and a QUIC or IPv6 overhead:
/// foca's own default `max_packet_size` (1400).
pub const DEFAULT_MAX_DATAGRAM_SIZE: usize = 1400;

impl MembershipConfig {
    /// For a LAN. SWIM settings are foca's `Config::new_lan(cluster_size)` (themselves derived from
    /// memberlist's `DefaultLANConfig`): probe every 1 s, 500 ms to ack, suspicion timeout
    /// `4 × max(1, log10 n)` s and `4 × ceil(log10(n + 1))` transmissions of each update, with `n`
    /// the members seen but at least `cluster_size` ([`scaling`](Self::scaling)), gossip every
    /// 200 ms to 3 members, announce to 2 down members every 4 s (foca: 65 s; see
    /// `announcing_to_the_down`); Lifeguard's buddy system on
    /// (a suspect hears of its suspicion from its prober at once), its health awareness off until
    /// nacks exist (see `swim.awareness_max_multiplier`). Anti-entropy every 30 s is memberlist's `PushPullInterval` for LANs. Down and left
    /// members are kept 5 minutes (`dead_retention`; foca's `remove_down_after` follows it).
    pub fn lan(cluster_size: u32) -> Self {
        let n = NonZeroU32::new(cluster_size.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            cluster: "mesh".into(),
            swim: announcing_to_the_down(without_awareness(foca::Config::new_lan(n))),
            max_datagram_size: DEFAULT_MAX_DATAGRAM_SIZE,
            anti_entropy_interval: Duration::from_secs(30),
            member_pull_delay: Duration::from_secs(2),
            join_backoff_min: Duration::from_secs(1),
            join_backoff_max: Duration::from_secs(30),
            seed_recheck_interval: Duration::from_secs(30),
            max_concurrent_syncs: 8,
            sync_timeout: Duration::from_secs(5),
            max_records: MAX_RECORDS,
            dead_retention: Duration::from_secs(300),
            max_dead: MAX_DEAD,
            max_wanted: MAX_WANTED,
            max_down_list: MAX_DOWN_LIST,
            max_records_per_sync: MAX_RECORDS_PER_SYNC,
            max_sync_answer_bytes: MAX_SYNC_ANSWER_BYTES,
            scaling: Some(SwimScaling {
                suspicion_mult: 4.0,
                retransmit_mult: 4.0,
                min_members: n.get(),
            }),
        }
    }

    /// For a WAN. SWIM settings are foca's `Config::new_wan(cluster_size)` (from memberlist's
    /// `DefaultWANConfig`): probe every 5 s, 3 s to ack, suspicion timeout `6 × max(1, log10 n) × 5` s
    /// (`n` as for [`lan`](Self::lan)), gossip every 500 ms to 4 members, announce to 2 down
    /// members every 20 s (4 probe periods; foca: 125 s). Anti-entropy every 60 s is memberlist's WAN
    /// `PushPullInterval`. Down and left members are kept 10 minutes.
    pub fn wan(cluster_size: u32) -> Self {
        let n = NonZeroU32::new(cluster_size.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            swim: announcing_to_the_down(without_awareness(foca::Config::new_wan(n))),
            anti_entropy_interval: Duration::from_secs(60),
            member_pull_delay: Duration::from_secs(5),
            join_backoff_max: Duration::from_secs(60),
            seed_recheck_interval: Duration::from_secs(60),
            sync_timeout: Duration::from_secs(15),
            dead_retention: Duration::from_secs(600),
            scaling: Some(SwimScaling {
                suspicion_mult: 6.0,
                retransmit_mult: 4.0,
                min_members: n.get(),
            }),
            ..Self::lan(cluster_size)
        }
    }

    /// For tests and simulations on one machine: memberlist's `DefaultLocalConfig` (probe 1 s,
    /// timeout 200 ms, suspicion multiplier 3, gossip 100 ms, push/pull 15 s) scaled down five
    /// times, so that a crash is detected within about two seconds.
    ///
    /// - probe every 200 ms, 100 ms to ack, 3 indirect probes; no Lifeguard awareness;
    /// - suspicion timeout 1 s; down members forgotten after 60 s;
    /// - gossip every 50 ms to 3 members, 6 transmissions per update;
    /// - announce to one member every 2 s, to two down members every 2 s;
    /// - anti-entropy every 3 s; join retry from 100 ms to 1 s; seeds rechecked every 2 s.
    pub fn local() -> Self {
        let mut swim = foca::Config::simple();
        swim.probe_period = Duration::from_millis(200);
        swim.probe_rtt = Duration::from_millis(100);
        swim.num_indirect_probes = NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN);
        swim.max_transmissions = NonZeroU8::new(6).unwrap_or(NonZeroU8::MIN);
        swim.suspect_to_down_after = Duration::from_secs(1);
        swim.notify_down_members = true;
        // Lifeguard's awareness stays off here too (see `without_awareness`; `tests/churn.rs`,
        // which crashes one member every 0.4 s, also overflows with it on).
        swim.awareness_max_multiplier = 0;
        let every = |ms, n| {
            Some(PeriodicParams {
                frequency: Duration::from_millis(ms),
                num_members: NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
            })
        };
        swim.periodic_announce = every(2_000, 1);
        swim.periodic_announce_to_down_members = every(2_000, 2);
        swim.periodic_gossip = every(50, 3);
        Self {
            cluster: "mesh".into(),
            swim,
            max_datagram_size: DEFAULT_MAX_DATAGRAM_SIZE,
            anti_entropy_interval: Duration::from_secs(3),
            member_pull_delay: Duration::from_millis(300),
            join_backoff_min: Duration::from_millis(100),
            join_backoff_max: Duration::from_secs(1),
            seed_recheck_interval: Duration::from_secs(2),
            max_concurrent_syncs: 8,
            sync_timeout: Duration::from_secs(2),
            max_records: MAX_RECORDS,
            dead_retention: Duration::from_secs(60),
            max_dead: MAX_DEAD,
            max_wanted: MAX_WANTED,
            max_down_list: MAX_DOWN_LIST,
            max_records_per_sync: MAX_RECORDS_PER_SYNC,
            max_sync_answer_bytes: MAX_SYNC_ANSWER_BYTES,
            scaling: None,
        }
    }

    /// Upper bound on the time from a crash until every alive member has declared the crashed
    /// member down, for a cluster of `n` members with no packet loss.
    ///
    /// foca probes members in a shuffled round-robin, so a member is probed at least once every
    /// `n` probe periods (in expectation much sooner: SWIM's analysis gives a first detection after
    /// about 1.58 periods). A failed probe marks it suspect, and it is declared down
    /// `suspect_to_down_after` later; the `Down` update then spreads by gossip in
    /// `O(log n)` gossip rounds, bounded here by `max_transmissions` rounds of `periodic_gossip`
    /// (both for `n` members where [`scaling`](Self::scaling) is set).
    pub fn detection_bound(&self, n: usize) -> Duration {
        let probe = self.swim.probe_period * u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        let (suspicion, tx) = match &self.scaling {
            Some(sc) => (
                sc.suspect_to_down_after(n, self.swim.probe_period),
                sc.max_transmissions(n),
            ),
            None => (self.swim.suspect_to_down_after, self.swim.max_transmissions),
        };
        let gossip = self
            .swim
            .periodic_gossip
            .as_ref()
            .map_or(self.swim.probe_period, |p| p.frequency)
            * u32::from(tx.get());
        probe + self.swim.probe_rtt + suspicion + gossip
    }
}

impl Default for MembershipConfig {
    /// [`MembershipConfig::lan`] for a cluster of about 32 nodes.
    fn default() -> Self {
        Self::lan(32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_follows_memberlist_and_never_goes_below_the_preset() {
        let lan = MembershipConfig::lan(32);
        let sc = lan.scaling.expect("lan scales");
        let period = lan.swim.probe_period;
        // Up to the preset's 32 members: the preset's own suspicion timeout (foca's new_lan(32)).
        for n in [1, 5, 32] {
            assert_eq!(
                sc.suspect_to_down_after(n, period),
                lan.swim.suspect_to_down_after
            );
        }
        // memberlist: 4 × log10(250) s = 9.59 s; 4 × ceil(log10 251) = 12 transmissions.
        let at_250 = sc.suspect_to_down_after(250, period);
        assert!(at_250 > Duration::from_millis(9_500) && at_250 < Duration::from_millis(9_700));
        assert_eq!(sc.max_transmissions(250).get(), 12);
        assert_eq!(sc.max_transmissions(10_000).get(), 20);
        // Never zero, never past 255, whatever the multiplier.
        let odd = SwimScaling {
            suspicion_mult: f64::NAN,
            retransmit_mult: 1e9,
            min_members: 0,
        };
        assert_eq!(odd.suspect_to_down_after(0, period), period);
        assert_eq!(odd.max_transmissions(usize::MAX).get(), 255);
        // The detection bound uses the scaled values.
        assert!(lan.detection_bound(250) > lan.detection_bound(32));
        assert!(MembershipConfig::local().scaling.is_none());
    }
}
