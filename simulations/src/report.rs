//! The figures of a run ([`Report`], serialized as one JSON line by `mesh-sim --json`) and the
//! table `mesh-sim` prints.

use serde::Serialize;

/// Figures of one run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed of this run.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Time for a joining node to be seen alive by every node: p50, p99, max (ms).
    pub join_ms: Percentiles,
    /// Time from a crash to its first detection anywhere: p50 over crashed nodes (ms).
    pub detect_first_ms: Percentiles,
    /// Time from a crash until every alive node has declared it down (ms).
    pub detect_all_ms: Percentiles,
    /// Alive nodes declared down during the run: each such declaration makes the node renew its
    /// identity (a new generation) to rejoin, and each renewal is counted.
    pub false_positives: u64,
    /// How long a falsely declared node stayed missing, worst observer (ms): p50, p99, max.
    pub false_positive_ms: Percentiles,
    /// Time for a service change to reach every alive node (ms), per change.
    pub service_change_ms: Percentiles,
    /// Time from a heal until every invariant holds again (ms), per heal.
    pub reconverge_ms: Percentiles,
    /// Datagrams sent per node per second.
    pub msgs_per_node_s: f64,
    /// Datagram bytes sent per node per second.
    pub bytes_per_node_s: f64,
    /// Resident memory per simulated node (bytes), from the process's RSS growth during the run.
    /// A measurement of the process, not of the seed: `None` where output must be byte-identical.
    pub mem_per_node_bytes: Option<u64>,
    /// Simulated events handled.
    pub steps: u64,
    /// Invariants violated at the end (empty: all held).
    pub violations: Vec<String>,
}

/// Percentiles of a sample, in milliseconds; all zero for an empty sample.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `v`.
    pub(crate) fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            n: v.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// The figures as a table (with a memory column when memory was measured).
pub fn table(reports: &[Report]) -> String {
    let with_memory = reports.iter().any(|r| r.mem_per_node_bytes.is_some());
    use std::fmt::Write;
    let mut out = String::new();
    let p = |p: &Percentiles| {
        if p.n == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}/{:.0}/{:.0}", p.p50, p.p99, p.max)
        }
    };
    let _ = writeln!(
        out,
        "{:<22} {:>6} {:>6} {:>17} {:>13} {:>15} {:>4} {:>15} {:>15} {:>8} {:>9}{}",
        "scenario",
        "seed",
        "nodes",
        "join ms p50/99/max",
        "detect 1st",
        "detect all",
        "FP",
        "FP ms p50/99/max",
        "change ms",
        "msg/n/s",
        "B/n/s",
        if with_memory { "    mem/node" } else { "" }
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<22} {:>6} {:>6} {:>17} {:>13} {:>15} {:>4} {:>15} {:>15} {:>10} {:>8.1} {:>9.0}{}",
            r.scenario,
            r.seed,
            r.nodes,
            p(&r.join_ms),
            if r.detect_first_ms.n == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", r.detect_first_ms.p50)
            },
            p(&r.detect_all_ms),
            r.false_positives,
            p(&r.false_positive_ms),
            p(&r.service_change_ms),
            if r.reconverge_ms.n == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", r.reconverge_ms.max)
            },
            r.msgs_per_node_s,
            r.bytes_per_node_s,
            match r.mem_per_node_bytes {
                Some(b) => format!(" {:>9} KiB", b / 1024),
                None => String::new(),
            }
        );
        for v in &r.violations {
            let _ = writeln!(out, "  INVARIANT VIOLATED: {v}");
        }
    }
    out
}
