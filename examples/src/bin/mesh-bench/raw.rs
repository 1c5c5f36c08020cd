//! The baselines: raw quinn with mesh's TLS and endpoint settings, no mesh code on the path.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mesh_node::endpoint::{bind_socket, endpoint, EndpointConfig};
use mesh_node::security::CLUSTER_SERVER_NAME;
use mesh_node::Credentials;
use mesh_protocol::frame::{FrameDecoder, DEFAULT_MAX_FRAME_LEN};

use crate::measure::Figures;
use crate::oneway::{message as oneway_message, slowest, Tally};

/// A quinn endpoint as a mesh node would make it.
pub(crate) fn make_endpoint(creds: &Credentials) -> anyhow::Result<quinn::Endpoint> {
    let socket = bind_socket("127.0.0.1:0".parse()?)?;
    let addr: SocketAddr = socket.local_addr()?;
    Ok(endpoint(
        socket,
        &creds.tls("bench", addr)?,
        &EndpointConfig::default(),
    )?)
}

/// Connects `client` to `server`.
pub(crate) async fn connect(
    client: &quinn::Endpoint,
    server: &quinn::Endpoint,
) -> anyhow::Result<quinn::Connection> {
    Ok(client
        .connect(server.local_addr()?, CLUSTER_SERVER_NAME)?
        .await?)
}

/// Serves an echo per bidirectional stream: reads the request to its end, writes it back.
pub(crate) fn serve_echo(server: quinn::Endpoint) {
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(data) = recv.read_to_end(1 << 20).await {
                            let _ = send.write_all(&data).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
}

/// One echo call on a fresh stream.
pub(crate) async fn echo(conn: &quinn::Connection, payload: &Bytes) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(payload).await?;
    send.finish()?;
    let echo = recv.read_to_end(1 << 20).await?;
    anyhow::ensure!(echo.len() == payload.len(), "short echo");
    Ok(())
}

/// Accepts one connection and its first unidirectional stream, and tallies the mesh-framed
/// messages on it (stamped at offset 0) until the stream ends or goes quiet after the window.
async fn receive_framed(mut tally: Tally, server: quinn::Endpoint) -> anyhow::Result<Tally> {
    let incoming = server
        .accept()
        .await
        .ok_or_else(|| anyhow::anyhow!("endpoint closed"))?;
    let conn = incoming.await?;
    let mut recv = conn.accept_uni().await?;
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while !tally.expired() {
        while let Some(frame) = decoder.decode(&mut buf)? {
            tally.see(&frame.payload, 0);
        }
        let next = tokio::time::timeout_at(tally.wait().into(), recv.read_chunk(usize::MAX, true));
        match next.await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk.bytes),
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(tally)
}

/// The floor of one-way messaging: one sender writes each stamped, framed 128-byte message to a
/// unidirectional stream per receiver, one `write_all` per message and stream, for `run`. With
/// `batch`, it gathers messages into writes of up to 64 KiB instead.
pub(crate) async fn oneway(
    creds: &Credentials,
    receivers: usize,
    warmup: Duration,
    run: Duration,
    batch: bool,
) -> anyhow::Result<Figures> {
    let start = Instant::now() + warmup + Duration::from_millis(100);
    let stop = start + run;
    let client = make_endpoint(creds)?;
    let mut tallies = Vec::new();
    let mut streams = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..receivers {
        let server = make_endpoint(creds)?;
        tallies.push(tokio::spawn(receive_framed(
            Tally::new(start, stop),
            server.clone(),
        )));
        let conn = connect(&client, &server).await?;
        streams.push(conn.open_uni().await?);
        servers.push(server);
    }
    let sender = tokio::spawn(async move {
        let mut pending = BytesMut::with_capacity(64 * 1024);
        while Instant::now() < stop {
            let msg = oneway_message()?;
            if batch {
                pending.extend_from_slice(&msg);
                if pending.len() + msg.len() <= 64 * 1024 {
                    continue;
                }
            }
            let out = if batch { pending.split().freeze() } else { msg };
            for s in &mut streams {
                s.write_all(&out).await?;
            }
        }
        for s in &mut streams {
            s.write_all(&pending).await?;
            s.finish()?;
        }
        anyhow::Ok(streams)
    });
    let mut seen = Vec::new();
    for t in tallies {
        seen.push(t.await??);
    }
    drop(sender.await??);
    client.close(0u32.into(), b"done");
    drop(servers);
    Ok(slowest(seen))
}
