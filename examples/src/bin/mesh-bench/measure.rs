//! Load loops and their figures.

use std::future::Future;
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    /// Completed operations (calls, or messages delivered) per second.
    pub(crate) per_s: f64,
    /// Median latency, µs.
    pub(crate) p50_us: u64,
    /// 99th percentile latency, µs.
    pub(crate) p99_us: u64,
}

/// Percentiles of latencies in µs (sorts them).
pub(crate) fn figures(mut lat_us: Vec<u32>, count: u64, elapsed: Duration) -> Figures {
    lat_us.sort_unstable();
    let pct = |q: f64| {
        if lat_us.is_empty() {
            0
        } else {
            u64::from(lat_us[((lat_us.len() as f64 * q) as usize).min(lat_us.len() - 1)])
        }
    };
    Figures {
        per_s: count as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

/// Microseconds since `t`, saturating.
pub(crate) fn us_since(t: Instant) -> u32 {
    u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// Runs `call` in a loop from `concurrency` tasks for `run` (after `warmup`, not counted) and
/// measures calls per second and each call's latency.
pub(crate) async fn closed_loop<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    run: Duration,
    call: F,
) -> anyhow::Result<Figures>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now() + warmup;
    let stop = start + run;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            loop {
                let t = Instant::now();
                if t >= stop {
                    break;
                }
                call().await?;
                if t >= start {
                    lat.push(us_since(t));
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    anyhow::ensure!(!all.is_empty(), "no call completed");
    let count = all.len() as u64;
    Ok(figures(all, count, run))
}
