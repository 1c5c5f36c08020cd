//! Calls `Greeter.Hello` by name `--count` times (default 10), prints each greeting, then shows
//! how many calls each greeter node served (from its built-in `mesh.Stats`).
//!
//! ```sh
//! MESH_CLUSTER_KEY=secret cargo run -p mesh-examples --bin greeter-client -- --join 127.0.0.1:7000 --count 20
//! ```

use std::time::Duration;

use anyhow::Context;
use mesh_examples::{Args, HelloRequest, HelloResponse};
use mesh_node::stats::EndpointStats;
use mesh_node::{CallOptions, BUILTIN_SERVICE};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesh_examples::init_tracing();
    let args = Args::parse(&["count", "who", "interval-ms"])?;
    let count: u32 = args
        .get("count")
        .unwrap_or("10")
        .parse()
        .context("--count")?;
    let who = args.get("who").unwrap_or("John").to_owned();
    let interval = Duration::from_millis(args.get("interval-ms").unwrap_or("0").parse()?);
    let node = args.builder("greeter-client")?.spawn().await?;

    // Wait (bounded) until the registry knows a greeter.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.membership().nodes_of("Greeter").await?.is_empty() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no Greeter node found through {:?} within 15 s",
            args.join
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let opts = CallOptions::default();
    let mut failures = 0;
    for i in 0..count {
        let req = HelloRequest {
            name: format!("{who} {i}"),
        };
        match node
            .call::<_, HelloResponse>("Greeter", "Hello", &req, &opts)
            .await
        {
            Ok(r) => println!("{}", r.greeting),
            Err(e) => {
                failures += 1;
                println!("error: {e}");
            }
        }
        tokio::time::sleep(interval).await;
    }

    println!("calls per greeter node:");
    for n in node.membership().nodes_of("Greeter").await? {
        let stats: std::collections::BTreeMap<String, EndpointStats> = node
            .call_node(n.node.addr, BUILTIN_SERVICE, "Stats", &(), &opts)
            .await?;
        let served = stats.get("Greeter.Hello").map_or(0, |s| s.requests);
        println!("  {} ({}): {served}", n.node_name, n.node.addr);
    }
    println!("failures: {failures}");
    node.shutdown().await;
    anyhow::ensure!(failures == 0, "{failures} calls failed");
    Ok(())
}
