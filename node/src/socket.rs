//! The node's one UDP port, shared by QUIC and gossip: where a datagram enters.
//!
//! [`SplitSocket`] sits between quinn and the real socket. Every datagram quinn reads is looked at
//! first: a membership datagram (the 0x40 bit of its first byte clear) is handed to a
//! [`DatagramSink`] and hidden from quinn; everything else is QUIC. QUIC v1 packets always have
//! that bit set (RFC 9000 §17: the "fixed bit") unless a peer greases it, which mesh endpoints
//! never ask for ([`endpoint`](crate::endpoint) turns quinn's `grease_quic_bit` off), and mesh's
//! gossip envelope always has it clear (`docs/PROTOCOL.md`).
//!
//! Gossip goes out through a [`GossipSender`] on the same socket, so peers see one address for
//! both.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;
use tracing::debug;

/// Whether a datagram starting with `first` is a membership datagram rather than QUIC.
pub fn is_gossip(first: u8) -> bool {
    first & 0x40 == 0
}

/// Takes every membership datagram the socket receives, with its UDP source address.
pub type DatagramSink = Arc<dyn Fn(SocketAddr, Bytes) + Send + Sync>;

/// Gossip datagrams queued for sending before new ones are dropped.
const SEND_QUEUE: usize = 1024;

/// Counters of the shared port.
#[derive(Debug, Default)]
pub struct SocketStats {
    /// Membership datagrams received.
    pub gossip_in: AtomicU64,
    /// Membership datagrams dropped because the membership driver's queue was full.
    pub gossip_in_dropped: AtomicU64,
    /// Membership datagrams sent.
    pub gossip_out: AtomicU64,
    /// Membership datagrams dropped because the send queue was full.
    pub gossip_send_dropped: AtomicU64,
    /// Membership datagrams the OS refused to send.
    pub gossip_send_errors: AtomicU64,
}

/// A quinn socket that takes membership datagrams out of what quinn reads.
pub struct SplitSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    sink: DatagramSink,
    stats: Arc<SocketStats>,
}

impl fmt::Debug for SplitSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitSocket").finish_non_exhaustive()
    }
}

impl SplitSocket {
    /// Splits `inner`: QUIC stays with whoever polls the returned socket (quinn), membership
    /// datagrams go to `sink`, and the [`GossipSender`] sends membership datagrams on `inner`.
    /// Both count in `stats`. Must run inside a tokio runtime (the sender is a task).
    pub fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        sink: DatagramSink,
        stats: Arc<SocketStats>,
    ) -> (Arc<Self>, GossipSender) {
        let socket = Arc::new(Self {
            inner: inner.clone(),
            sink,
            stats: stats.clone(),
        });
        let sender = GossipSender::start(inner, stats);
        (socket, sender)
    }

    /// Takes the membership datagrams out of one received buffer of `len` bytes in segments of
    /// `stride` (several with GRO), and returns how many bytes of QUIC remain, moved to the front.
    fn divert(&self, buf: &mut [u8], len: usize, stride: usize, from: SocketAddr) -> usize {
        let stride = stride.max(1);
        let mut kept = 0;
        let mut at = 0;
        while at < len {
            let end = (at + stride).min(len);
            if is_gossip(buf[at]) {
                self.stats.gossip_in.fetch_add(1, Ordering::Relaxed);
                (self.sink)(from, Bytes::copy_from_slice(&buf[at..end]));
            } else {
                // Segments are all `stride` long but the last: kept ones stay in order, so the
                // buffer is still a valid run of segments.
                if kept != at {
                    buf.copy_within(at..end, kept);
                }
                kept += end - at;
            }
            at = end;
        }
        kept
    }
}

impl AsyncUdpSocket for SplitSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        for (m, buf) in meta.iter_mut().zip(bufs.iter_mut()).take(n) {
            let len = m.len.min(buf.len());
            // quinn skips a datagram of length 0, so a buffer of gossip only becomes one.
            m.len = self.divert(&mut buf[..len], len, m.stride, m.addr);
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Sends membership datagrams on the node's UDP socket from a task of its own, so that the
/// membership driver never waits for the socket. Cheap to clone.
#[derive(Clone)]
pub struct GossipSender {
    tx: mpsc::Sender<(SocketAddr, Bytes)>,
    stats: Arc<SocketStats>,
}

impl fmt::Debug for GossipSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GossipSender").finish_non_exhaustive()
    }
}

impl GossipSender {
    fn start(socket: Arc<dyn AsyncUdpSocket>, stats: Arc<SocketStats>) -> Self {
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        tokio::spawn(send_loop(socket, rx, stats.clone()));
        Self { tx, stats }
    }

    /// Queues `data` for `to`; drops it (counted) if the queue is full, as a full socket
    /// buffer would.
    pub fn send(&self, to: SocketAddr, data: Bytes) {
        if self.tx.try_send((to, data)).is_err() {
            self.stats
                .gossip_send_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn send_loop(
    socket: Arc<dyn AsyncUdpSocket>,
    mut rx: mpsc::Receiver<(SocketAddr, Bytes)>,
    stats: Arc<SocketStats>,
) {
    let mut poller = socket.clone().create_io_poller();
    while let Some((to, data)) = rx.recv().await {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: &data,
            segment_size: None,
            src_ip: None,
        };
        loop {
            match socket.try_send(&transmit) {
                Ok(()) => {
                    stats.gossip_out.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) =
                        std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await
                    {
                        debug!(%to, error = %e, "gossip socket not writable");
                        stats.gossip_send_errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                Err(e) => {
                    debug!(%to, error = %e, "gossip datagram not sent");
                    stats.gossip_send_errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn splitter() -> (SplitSocket, Arc<Mutex<Vec<Bytes>>>) {
        let got: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let sink = {
            let got = got.clone();
            Arc::new(move |_: SocketAddr, d: Bytes| got.lock().expect("lock").push(d))
                as DatagramSink
        };
        let std = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let inner = rt
            .block_on(async { quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std) })
            .expect("wrap");
        (
            SplitSocket {
                inner,
                sink,
                stats: Arc::default(),
            },
            got,
        )
    }

    const FROM: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

    #[test]
    fn quic_first_bytes_stay_with_quinn_and_gossip_is_diverted() {
        // Long header (0xc0..), short header (0x40..): QUIC. Clear 0x40: gossip.
        for b in 0u8..=255 {
            assert_eq!(is_gossip(b), b & 0x40 == 0, "{b:#04x}");
        }
        assert!(!is_gossip(0xc3) && !is_gossip(0x41) && is_gossip(0x1b) && is_gossip(0x00));
    }

    #[test]
    fn a_gro_batch_keeps_its_quic_segments_in_order() {
        let (s, got) = splitter();
        // Four segments of 4 bytes and a last one of 2: QUIC, gossip, QUIC, gossip, QUIC.
        let mut buf = *b"\x41aaa\x01bbb\x42ccc\x02ddd\x43e";
        let len = buf.len();
        let kept = s.divert(&mut buf, len, 4, FROM);
        assert_eq!(&buf[..kept], b"\x41aaa\x42ccc\x43e");
        let got = got.lock().expect("lock");
        assert_eq!(got.as_slice(), [&b"\x01bbb"[..], &b"\x02ddd"[..]]);
        assert_eq!(s.stats.gossip_in.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_buffer_of_gossip_only_leaves_nothing_for_quinn() {
        let (s, got) = splitter();
        let mut buf = *b"\x0fgossip";
        assert_eq!(s.divert(&mut buf, 7, 7, FROM), 0);
        assert_eq!(got.lock().expect("lock").len(), 1);
        let mut quic = *b"\xc0quic";
        assert_eq!(s.divert(&mut quic, 5, 5, FROM), 5);
        assert_eq!(got.lock().expect("lock").len(), 1);
    }
}
