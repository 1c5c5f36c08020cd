//! One-way message benches: streaming RPC, pub/sub, and their raw quinn baseline. Every message
//! carries its send time (µs since the bench started) in its first 8 bytes, so a receiver knows
//! each message's one-way latency.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::measure::{figures, Figures};

/// Size of every message body, as it travels (mesh bodies are a MessagePack `bin 8` of
/// [`BLOB_LEN`] bytes, which is this size once encoded).
pub(crate) const MESSAGE_LEN: usize = 128;
/// The raw bytes inside a mesh message body.
pub(crate) const BLOB_LEN: usize = MESSAGE_LEN - 2;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `len` bytes that start with the current time.
pub(crate) fn stamped(len: usize) -> Vec<u8> {
    let mut v = vec![0x5a; len];
    let now = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX);
    v[..8].copy_from_slice(&now.to_be_bytes());
    v
}

/// How long a receiver waits for more messages once the window is over: what is still queued
/// (sent inside the window, not yet delivered) keeps arriving meanwhile.
pub(crate) const DRAIN_IDLE: Duration = Duration::from_millis(300);

/// The messages a receiver got that were *sent* inside the measured window, and when the last
/// of them arrived. A sender that outruns its receiver is not flattered: the rate is the
/// messages of the window over the time until the last of them was delivered.
#[derive(Debug)]
pub(crate) struct Tally {
    start_us: u64,
    stop_us: u64,
    start: Instant,
    stop: Instant,
    lat_us: Vec<u32>,
    last: Option<Instant>,
}

impl Tally {
    pub(crate) fn new(start: Instant, stop: Instant) -> Self {
        let us = |t: Instant| u64::try_from(t.duration_since(epoch()).as_micros()).unwrap_or(0);
        Self {
            start_us: us(start),
            stop_us: us(stop),
            start,
            stop,
            lat_us: Vec::with_capacity(1 << 16),
            last: None,
        }
    }

    /// Counts a message just received whose stamp starts at `stamp_at` in `bytes`.
    pub(crate) fn see(&mut self, bytes: &[u8], stamp_at: usize) {
        let Some(stamp) = bytes
            .get(stamp_at..stamp_at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return;
        };
        if (self.start_us..self.stop_us).contains(&stamp) {
            let now_us = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX);
            self.lat_us
                .push(u32::try_from(now_us.saturating_sub(stamp)).unwrap_or(u32::MAX));
            self.last = Some(Instant::now());
        }
    }

    /// How long to wait for the next message: until the window ends, then [`DRAIN_IDLE`] at a
    /// time (bounded by the caller).
    pub(crate) fn wait(&self) -> Instant {
        Instant::now().max(self.stop) + DRAIN_IDLE
    }

    /// Whether the receiver should stop: well past the window (a stuck sender must not hang
    /// the bench).
    pub(crate) fn expired(&self) -> bool {
        Instant::now() > self.stop + Duration::from_secs(10)
    }

    /// The time the window's messages took to arrive: the window itself, or longer if the last
    /// of them arrived after it.
    fn span(&self) -> Duration {
        self.last
            .map_or(self.stop, |l| l.max(self.stop))
            .duration_since(self.start)
    }
}

/// The slowest receiver's rate, and the latencies of all receivers together.
pub(crate) fn slowest(tallies: Vec<Tally>) -> Figures {
    let rate = tallies
        .iter()
        .map(|t| t.lat_us.len() as f64 / t.span().as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    let all: Vec<u32> = tallies.into_iter().flat_map(|t| t.lat_us).collect();
    let n = all.len() as u64;
    let mut f = figures(all, n, Duration::from_secs(1));
    f.per_s = if rate.is_finite() { rate } else { 0.0 };
    f
}

/// One message of the raw baseline: a mesh data frame around a stamped 128-byte payload.
pub(crate) fn message() -> anyhow::Result<Bytes> {
    crate::wire::frame(&stamped(MESSAGE_LEN))
}
