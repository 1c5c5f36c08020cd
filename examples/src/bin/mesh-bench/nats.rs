//! The same one-way load through a NATS server on loopback, when `nats-server` is installed
//! (Debian package `nats-server`): one publisher connection, `receivers` subscriber connections,
//! 128-byte stamped messages. The client side is a minimal NATS protocol client written here
//! (CONNECT, SUB, PUB, MSG, PING/PONG), buffered as NATS's own clients buffer.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

use crate::measure::Figures;
use crate::oneway::{slowest, stamped, Tally, MESSAGE_LEN};

const SUBJECT: &str = "bench";

fn find_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// Delivered messages per second (slowest subscriber) and one-way latency, or `None` without a
/// `nats-server` binary.
pub(crate) async fn run(
    receivers: usize,
    warmup: Duration,
    run: Duration,
) -> anyhow::Result<Option<Figures>> {
    let Some(bin) = find_server() else {
        return Ok(None);
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _server = tokio::process::Command::new(&bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let connect = || async {
        loop {
            match TcpStream::connect(&addr).await {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return anyhow::Ok(s);
                }
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    let start = Instant::now() + warmup + Duration::from_millis(100);
    let stop = start + run;
    let mut subs = Vec::new();
    for _ in 0..receivers {
        let mut conn = connect().await?;
        conn.write_all(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {SUBJECT} 1\r\nPING\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        // The PONG answers our PING after the SUB: the subscription is in place.
        while !buf.windows(6).any(|w| w == b"PONG\r\n") {
            anyhow::ensure!(conn.read_buf(&mut buf).await? > 0, "nats-server hung up");
        }
        buf.clear();
        subs.push(tokio::spawn(receive(conn, buf, Tally::new(start, stop))));
    }
    let mut publisher = BufWriter::with_capacity(64 * 1024, connect().await?);
    publisher
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .await?;
    let head = format!("PUB {SUBJECT} {MESSAGE_LEN}\r\n");
    while Instant::now() < stop {
        publisher.write_all(head.as_bytes()).await?;
        publisher.write_all(&stamped(MESSAGE_LEN)).await?;
        publisher.write_all(b"\r\n").await?;
    }
    publisher.flush().await?;
    let mut tallies = Vec::new();
    for s in subs {
        tallies.push(s.await??);
    }
    Ok(Some(slowest(tallies)))
}

/// Reads `MSG` deliveries until `stop`, answering the server's `PING`s.
async fn receive(
    mut conn: TcpStream,
    mut buf: BytesMut,
    mut tally: Tally,
) -> anyhow::Result<Tally> {
    while !tally.expired() {
        // Every complete line (and payload) in the buffer.
        while let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = &buf[..eol];
            if line.starts_with(b"MSG ") {
                let len: usize = std::str::from_utf8(line)?
                    .rsplit(' ')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .context("bad MSG line")?;
                if buf.len() < eol + 2 + len + 2 {
                    break;
                }
                tally.see(&buf[eol + 2..eol + 2 + len], 0);
                buf.advance(eol + 2 + len + 2);
            } else {
                if line.starts_with(b"PING") {
                    conn.write_all(b"PONG\r\n").await?;
                } else if line.starts_with(b"-ERR") {
                    anyhow::bail!("nats-server: {}", String::from_utf8_lossy(line));
                }
                buf.advance(eol + 2);
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(256 * 1024);
        }
        match tokio::time::timeout_at(tally.wait().into(), conn.read_buf(&mut buf)).await {
            Ok(Ok(0)) => anyhow::bail!("nats-server closed a subscriber (slow consumer?)"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => break,
        }
    }
    Ok(tally)
}
