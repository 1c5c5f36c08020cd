//! Streaming calls. Without `--to`, serves `Counter.Count` (a server stream: one number in,
//! `1..=n` out, one every `--every-ms`) and `Counter.Sum` (a client stream: numbers in, their sum
//! out). With `--to N`, joins through `--join`, streams `Count` up to N and `Sum` of 1..=N, and
//! prints what arrives.
//!
//! ```sh
//! MESH_CLUSTER_KEY=secret cargo run -p mesh-examples --bin streaming -- --bind 127.0.0.1:7000
//! MESH_CLUSTER_KEY=secret cargo run -p mesh-examples --bin streaming -- --join 127.0.0.1:7000 --to 5
//! ```

use std::time::Duration;

use mesh_examples::Args;
use mesh_node::{CallOptions, Inbound, Outbound, Request, RpcError, Service};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesh_examples::init_tracing();
    let args = Args::parse(&["to", "every-ms"])?;
    let every = Duration::from_millis(args.get("every-ms").unwrap_or("100").parse()?);
    let Some(to) = args.get("to") else {
        let counter = Service::new("Counter")
            .stream_endpoint(
                "Count",
                move |_req: Request, mut inb: Inbound, out: Outbound| async move {
                    let n: u64 = inb
                        .next()
                        .await
                        .ok_or_else(|| RpcError::bad_request("Counter", "send a number first"))??;
                    for i in 1..=n {
                        out.send(&i).await?;
                        tokio::time::sleep(every).await;
                    }
                    Ok(())
                },
            )
            .stream_endpoint(
                "Sum",
                |_req: Request, mut inb: Inbound, out: Outbound| async move {
                    let mut sum = 0u64;
                    while let Some(x) = inb.next::<u64>().await {
                        sum += x?;
                    }
                    out.send(&sum).await
                },
            );
        let node = args.builder("counter")?.service(counter).spawn().await?;
        println!(
            "{} serving Counter.Count and Counter.Sum at {}",
            node.name(),
            node.addr()
        );
        tokio::signal::ctrl_c().await?;
        node.shutdown().await;
        return Ok(());
    };
    let to: u64 = to.parse()?;
    let node = args.builder("counter-client")?.spawn().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.membership().nodes_of("Counter").await?.is_empty() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no Counter node found"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opts = CallOptions::default().timeout(Duration::from_secs(60));
    let mut count = node.stream("Counter", "Count", &opts).await?;
    count.send(&to).await?;
    count.close_send();
    while let Some(i) = count.recv::<u64>().await {
        println!("count: {}", i?);
    }
    let mut sum = node.stream("Counter", "Sum", &opts).await?;
    for i in 1..=to {
        sum.send(&i).await?;
    }
    sum.close_send();
    if let Some(total) = sum.recv::<u64>().await {
        println!("sum of 1..={to}: {}", total?);
    }
    node.shutdown().await;
    Ok(())
}
