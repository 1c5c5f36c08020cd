//! The scenario file format: what a TOML scenario says, and its validation into a membership config.

use mesh_membership::MembershipConfig;
use serde::{Deserialize, Serialize};

/// A scenario file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, printed with the figures.
    pub name: String,
    /// Nodes in the cluster (all eventually join).
    pub nodes: usize,
    /// One run per seed.
    pub seeds: Vec<u64>,
    /// Membership preset: `lan`, `wan` or `local`.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Virtual seconds simulated.
    pub duration_s: f64,
    /// Nodes that join per wave (default: all at once), one wave every `wave_every_s`.
    #[serde(default)]
    pub wave: Option<usize>,
    /// Seconds between join waves.
    #[serde(default = "one")]
    pub wave_every_s: f64,
    /// The network.
    #[serde(default)]
    pub network: Network,
    /// What happens, when.
    #[serde(default)]
    pub events: Vec<Action>,
}

fn default_preset() -> String {
    "lan".into()
}

fn one() -> f64 {
    1.0
}

impl Scenario {
    /// The membership config every node of this scenario runs, or why the scenario is refused
    /// (an unknown preset, or a node count outside 1..=16M).
    pub(crate) fn membership_config(&self) -> Result<MembershipConfig, String> {
        let mut config = match self.preset.as_str() {
            "lan" => MembershipConfig::lan(u32::try_from(self.nodes).unwrap_or(u32::MAX)),
            "wan" => MembershipConfig::wan(u32::try_from(self.nodes).unwrap_or(u32::MAX)),
            "local" => MembershipConfig::local(),
            other => return Err(format!("unknown preset {other:?}")),
        };
        config.cluster = "sim".into();
        if self.nodes == 0 || self.nodes > 1 << 24 {
            return Err("nodes must be 1..=16M".into());
        }
        Ok(config)
    }
}

/// The simulated network.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// One-way latency in milliseconds.
    #[serde(default = "default_latency")]
    pub latency_ms: f64,
    /// Uniform extra latency, 0 to this many milliseconds.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Probability that a datagram is lost (registry syncs are reliable streams: never lost).
    #[serde(default)]
    pub loss: f64,
}

fn default_latency() -> f64 {
    1.0
}

impl Default for Network {
    fn default() -> Self {
        Self {
            latency_ms: default_latency(),
            jitter_ms: 0.0,
            loss: 0.0,
        }
    }
}

/// A scheduled change. (Unknown keys are refused by [`ActionKind`]: serde cannot also refuse
/// them here, with `flatten`.)
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Action {
    /// When, in virtual seconds.
    pub at_s: f64,
    /// What.
    #[serde(flatten)]
    pub kind: ActionKind,
}

/// What an [`Action`] does.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionKind {
    /// Crash this fraction of the alive nodes (never node 0, the seed), chosen at random.
    Crash {
        /// Fraction of alive nodes.
        fraction: f64,
    },
    /// Restart every crashed node at its address, as a new generation.
    Restart,
    /// Stall this fraction of the alive nodes (never node 0) for `duration_s`: they process
    /// nothing (datagrams, timers, syncs) until then, and then everything that arrived, in order,
    /// as a process stopped by the OS (`SIGSTOP`, a long GC pause, a starved CPU) would. The
    /// network keeps delivering to them. The case Lifeguard was made for: the others must not
    /// declare anyone down. Its end is measured like a heal.
    Stall {
        /// Fraction of alive nodes.
        fraction: f64,
        /// How long, in virtual seconds.
        duration_s: f64,
    },
    /// Split the nodes into two sides (the first `fraction` of them, and the rest).
    Partition {
        /// Size of the first side.
        fraction: f64,
    },
    /// Cut one direction only: from the first `fraction` of nodes to the others.
    CutOneWay {
        /// Size of the first side.
        fraction: f64,
    },
    /// Heal every cut link.
    Heal,
    /// Set the datagram loss probability.
    Loss {
        /// New probability.
        value: f64,
    },
    /// A node changes its services: the time until every alive node sees it is measured.
    ServiceChange,
}
