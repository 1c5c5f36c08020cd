//! Unary RPC on loopback through the whole stack (registry lookup, selector, codec, headers,
//! QUIC stream), beside a baseline measured in the same run: raw quinn with the same TLS
//! configuration, one bidirectional stream per request, echoing the payload. Prints calls per
//! second, p50 and p99 latency, and the ratio of mesh to the baseline.
//!
//! ```sh
//! cargo run --release -p mesh-examples --bin rpc-bench -- --seconds 4
//! ```
//!
//! Both sides of each run share one current-thread runtime in one process.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_membership::MembershipConfig;
use mesh_node::endpoint::{bind_socket, endpoint, EndpointConfig};
use mesh_node::security::CLUSTER_SERVER_NAME;
use mesh_node::{typed, CallOptions, Credentials, Node, Service};

struct Figures {
    calls_per_s: f64,
    p50_us: u128,
    p99_us: u128,
}

/// Runs `call` from `concurrency` tasks for `seconds` and measures it.
async fn measure<F, Fut>(concurrency: usize, seconds: u64, call: F) -> anyhow::Result<Figures>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                call().await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed();
    all.sort();
    anyhow::ensure!(!all.is_empty(), "no call completed");
    let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_micros();
    Ok(Figures {
        calls_per_s: all.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

/// The floor: two raw quinn endpoints with mesh's TLS, an echo per bidirectional stream.
async fn baseline(creds: &Credentials) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let make = |creds: &Credentials| -> anyhow::Result<quinn::Endpoint> {
        let socket = bind_socket("127.0.0.1:0".parse()?)?;
        let addr: SocketAddr = socket.local_addr()?;
        Ok(endpoint(
            socket,
            &creds.tls("bench", addr)?,
            &EndpointConfig::default(),
        )?)
    };
    let server = make(creds)?;
    let client = make(creds)?;
    let accept = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
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
    let conn = client
        .connect(server.local_addr()?, CLUSTER_SERVER_NAME)?
        .await?;
    Ok((server, conn))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = mesh_examples::Args::parse(&["seconds", "size"])?;
    let seconds: u64 = args.get("seconds").unwrap_or("4").parse()?;
    let size: usize = args.get("size").unwrap_or("64").parse()?;
    let creds = Credentials::key("bench")?;
    let node = |name: &str| {
        Node::builder()
            .name(name)
            .credentials(creds.clone())
            .membership(MembershipConfig::local())
    };
    let server = node("server")
        .service(Service::new("Echo").idempotent_endpoint(
            "Echo",
            typed(|_req, body: mesh_examples::Blob| async move { Ok(body) }),
        ))
        .spawn()
        .await?;
    let client = node("client").seeds(vec![server.addr()]).spawn().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.membership().nodes_of("Echo").await?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "server not visible");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_raw_server, raw) = baseline(&creds).await?;
    let payload = mesh_examples::Blob(vec![7u8; size]);
    let raw_payload = bytes::Bytes::from(vec![7u8; size]);

    println!("payload {size} B, {seconds} s per run, current-thread runtime, one process");
    println!(
        "{:>11} {:>9} {:>12} {:>9} {:>9} {:>8}",
        "concurrency", "bench", "calls/s", "p50 µs", "p99 µs", "ratio"
    );
    for concurrency in [1usize, 64] {
        let base = {
            let (raw, raw_payload) = (raw.clone(), raw_payload.clone());
            measure(concurrency, seconds, move || {
                let (raw, raw_payload) = (raw.clone(), raw_payload.clone());
                async move {
                    let (mut send, mut recv) = raw.open_bi().await?;
                    send.write_all(&raw_payload).await?;
                    send.finish()?;
                    let echo = recv.read_to_end(1 << 20).await?;
                    anyhow::ensure!(echo.len() == raw_payload.len());
                    Ok(())
                }
            })
            .await?
        };
        let mesh = {
            let (client, payload) = (client.clone(), payload.clone());
            measure(concurrency, seconds, move || {
                let (client, payload) = (client.clone(), payload.clone());
                async move {
                    let echo: mesh_examples::Blob = client
                        .call("Echo", "Echo", &payload, &CallOptions::default())
                        .await?;
                    anyhow::ensure!(echo.0.len() == payload.0.len());
                    Ok(())
                }
            })
            .await?
        };
        for (name, f) in [("baseline", &base), ("mesh", &mesh)] {
            println!(
                "{:>11} {:>9} {:>12.0} {:>9} {:>9} {:>8.2}",
                concurrency,
                name,
                f.calls_per_s,
                f.p50_us,
                f.p99_us,
                f.calls_per_s / base.calls_per_s
            );
        }
    }
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}
