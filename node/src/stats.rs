//! Per-endpoint call statistics: requests, errors and a latency histogram.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latency buckets: upper bounds in microseconds, powers of two from 16 µs to about 67 s; the
/// last bucket takes everything above.
const BUCKETS: usize = 23;

fn bucket(d: Duration) -> usize {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    let b = (64 - us.leading_zeros()) as usize; // 1 µs -> 1, 16 µs -> 5, ...
    b.saturating_sub(4).min(BUCKETS - 1)
}

fn bucket_upper_us(b: usize) -> u64 {
    1u64 << (b + 4)
}

/// What one endpoint has served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Calls served.
    pub requests: u64,
    /// Calls that ended in an error reply.
    pub errors: u64,
    /// Median latency (upper bound of its histogram bucket), microseconds.
    pub p50_us: u64,
    /// 99th percentile latency (upper bound of its bucket), microseconds.
    pub p99_us: u64,
    /// Call counts per latency bucket; bucket `i` holds calls under `2^(i+4)` µs (the last,
    /// everything above).
    pub histogram: Vec<u64>,
    /// Sum of all latencies, microseconds.
    #[serde(default)]
    pub sum_us: u64,
}

/// Upper bound of latency bucket `i`, in microseconds (`u64::MAX` for the last bucket).
pub fn bucket_bound_us(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        u64::MAX
    } else {
        bucket_upper_us(i)
    }
}

/// Statistics of every endpoint of a node.
#[derive(Debug, Default)]
pub struct Stats {
    by_endpoint: Mutex<BTreeMap<String, Slot>>,
}

/// The statistics of one endpoint, recorded without a lookup: the server keeps one beside each
/// handler.
#[derive(Debug, Clone)]
pub struct Slot(Arc<Mutex<EndpointStats>>);

impl Slot {
    /// Records one call.
    pub fn record(&self, latency: Duration, error: bool) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.requests += 1;
        s.errors += u64::from(error);
        s.sum_us = s
            .sum_us
            .saturating_add(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        s.histogram[bucket(latency)] += 1;
    }
}

impl Stats {
    /// The slot of `endpoint` (`"Service.Endpoint"`), made on first use. An endpoint appears in
    /// [`snapshot`](Self::snapshot) once it has a call.
    pub fn slot(&self, endpoint: &str) -> Slot {
        self.by_endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(endpoint.to_owned())
            .or_insert_with(|| {
                Slot(Arc::new(Mutex::new(EndpointStats {
                    histogram: vec![0; BUCKETS],
                    ..Default::default()
                })))
            })
            .clone()
    }

    /// Records one call of `endpoint` (`"Service.Endpoint"`).
    pub fn record(&self, endpoint: &str, latency: Duration, error: bool) {
        self.slot(endpoint).record(latency, error);
    }

    /// Every endpoint called so far, with its figures.
    pub fn snapshot(&self) -> BTreeMap<String, EndpointStats> {
        let slots: Vec<(String, Slot)> = self
            .by_endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        slots
            .into_iter()
            .filter_map(|(k, slot)| {
                let mut s = slot
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                (s.requests > 0).then(|| {
                    s.p50_us = percentile(&s.histogram, s.requests, 0.50);
                    s.p99_us = percentile(&s.histogram, s.requests, 0.99);
                    (k, s)
                })
            })
            .collect()
    }
}

fn percentile(hist: &[u64], total: u64, q: f64) -> u64 {
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bucket_upper_us(i);
        }
    }
    bucket_upper_us(hist.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_percentiles() {
        assert_eq!(bucket(Duration::from_micros(1)), 0);
        assert_eq!(bucket(Duration::from_micros(15)), 0);
        assert_eq!(bucket(Duration::from_micros(16)), 1);
        assert_eq!(bucket(Duration::from_secs(1_000)), BUCKETS - 1);
        let s = Stats::default();
        for _ in 0..98 {
            s.record("A.B", Duration::from_micros(100), false);
        }
        s.record("A.B", Duration::from_millis(50), true);
        s.record("A.B", Duration::from_millis(50), true);
        let snap = s.snapshot();
        let ab = &snap["A.B"];
        assert_eq!((ab.requests, ab.errors), (100, 2));
        assert_eq!(ab.p50_us, 128);
        assert_eq!(ab.p99_us, 65_536);
    }
}
