//! Unary RPC on loopback through the whole stack (registry lookup, selector, codec, headers,
//! QUIC stream): calls per second and latency percentiles at several concurrencies.
//!
//! ```sh
//! cargo run --release -p mesh-examples --bin rpc-bench -- --seconds 5
//! ```
//!
//! A first look, not the benchmark suite of issue 8 (no raw-quinn baseline yet).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_membership::MembershipConfig;
use mesh_node::{typed, CallOptions, Credentials, Node, Service};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = mesh_examples::Args::parse(&["seconds", "size"])?;
    let seconds: u64 = args.get("seconds").unwrap_or("5").parse()?;
    let size: usize = args.get("size").unwrap_or("64").parse()?;
    let node = |name: &str| {
        Node::builder()
            .name(name)
            .credentials(Credentials::key("bench").expect("key"))
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
    let payload = mesh_examples::Blob(vec![7u8; size]);
    println!(
        "payload {size} B, {seconds} s per run, current-thread runtime, both nodes in one process"
    );
    println!(
        "{:>11} {:>12} {:>9} {:>9}",
        "concurrency", "calls/s", "p50 µs", "p99 µs"
    );
    for concurrency in [1usize, 64] {
        let stop = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, payload) = (client.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                let opts = CallOptions::default();
                let mut lat = Vec::new();
                while Instant::now() < stop {
                    let t = Instant::now();
                    let _: mesh_examples::Blob = client
                        .call("Echo", "Echo", &payload, &opts)
                        .await
                        .expect("call");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let started = Instant::now();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await?);
        }
        let elapsed = started.elapsed();
        all.sort();
        let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_micros();
        println!(
            "{:>11} {:>12.0} {:>9} {:>9}",
            concurrency,
            all.len() as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99)
        );
    }
    let (client, server) = (Arc::new(client), Arc::new(server));
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}
