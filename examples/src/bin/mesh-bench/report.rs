//! The report: one line per measured figure, as a table or (`--json`) one JSON object per line.

use std::time::Duration;

use crate::measure::Figures;

/// One line of the report.
pub(crate) struct Row {
    pub(crate) bench: &'static str,
    pub(crate) size: usize,
    pub(crate) concurrency: usize,
    pub(crate) subscribers: Option<usize>,
    pub(crate) ack: Option<bool>,
    pub(crate) figures: Figures,
    pub(crate) ratio: f64,
    /// p50 latency over the baseline's.
    pub(crate) p50_ratio: f64,
}

pub(crate) struct Report {
    pub(crate) json: bool,
}

impl Report {
    /// A memory figure: resident KiB of a node process in `case`, in a cluster of `members`.
    pub(crate) fn memory(
        &self,
        case: &str,
        members: usize,
        rss_kib: u64,
        converged: Option<Duration>,
    ) {
        if self.json {
            let mut o = serde_json::json!({
                "bench": "memory",
                "case": case,
                "members": members,
                "rss_kib": rss_kib,
            });
            if let Some(c) = converged {
                o["converged_ms"] = (c.as_millis() as u64).into();
            }
            println!("{o}");
        } else {
            println!(
                "memory    {case:<9} {members:>5} members  {:>7.1} MiB resident{}",
                rss_kib as f64 / 1024.0,
                converged.map_or(String::new(), |c| format!(
                    "  (saw every member after {:.1} s)",
                    c.as_secs_f64()
                ))
            );
        }
    }

    pub(crate) fn header(&self) {
        if !self.json {
            println!(
                "{:<9} {:>6} {:>5} {:>5} {:>5} {:>12} {:>8} {:>8} {:>7} {:>6}",
                "bench",
                "size",
                "conc",
                "subs",
                "ack",
                "per second",
                "p50 µs",
                "p99 µs",
                "ratio",
                "p50 ×"
            );
        }
    }

    pub(crate) fn row(&self, r: &Row) {
        if self.json {
            let mut o = serde_json::json!({
                "bench": r.bench,
                "size": r.size,
                "concurrency": r.concurrency,
                "calls_per_s": r.figures.per_s.round(),
                "p50_us": r.figures.p50_us,
                "p99_us": r.figures.p99_us,
                "ratio": (r.ratio * 1000.0).round() / 1000.0,
                "p50_ratio": (r.p50_ratio * 1000.0).round() / 1000.0,
            });
            if let Some(s) = r.subscribers {
                o["subscribers"] = s.into();
            }
            if let Some(a) = r.ack {
                o["ack"] = a.into();
            }
            println!("{o}");
        } else {
            let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
            println!(
                "{:<9} {:>6} {:>5} {:>5} {:>5} {:>12.0} {:>8} {:>8} {:>7.2} {:>6.2}",
                r.bench,
                r.size,
                r.concurrency,
                opt(r.subscribers.map(|s| s.to_string())),
                opt(r.ack.map(|a| a.to_string())),
                r.figures.per_s,
                r.figures.p50_us,
                r.figures.p99_us,
                r.ratio,
                r.p50_ratio
            );
        }
    }
}
