//! Pub/sub across processes. `--subscribe TOPIC` (with `--queue GROUP` for a queue group)
//! prints each message it receives as one JSON line; `--publish TOPIC --message JSON` publishes
//! one message (acknowledged with `--ack`) and prints who took it.
//!
//! ```sh
//! export MESH_CLUSTER_KEY=secret
//! cargo run -p mesh-examples --bin pubsub -- --bind 127.0.0.1:7000 --subscribe orders
//! cargo run -p mesh-examples --bin pubsub -- --join 127.0.0.1:7000 --subscribe orders --queue billing
//! cargo run -p mesh-examples --bin pubsub -- --join 127.0.0.1:7000 --publish orders --message '{"id":1}' --ack
//! ```

use std::time::Duration;

use anyhow::Context;
use mesh_examples::Args;
use mesh_node::{ContentType, PublishOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesh_examples::init_tracing();
    let args = Args::parse_with_switches(&["subscribe", "queue", "publish", "message"], &["ack"])?;
    let node = args.builder("pubsub")?.spawn().await?;
    if let Some(topic) = args.get("subscribe") {
        let mut sub = match args.get("queue") {
            Some(group) => {
                node.subscribe_queue::<serde_json::Value>(topic, group)
                    .await?
            }
            None => node.subscribe::<serde_json::Value>(topic).await?,
        };
        eprintln!("subscribed to {topic} at {}", node.addr());
        loop {
            tokio::select! {
                msg = sub.recv() => match msg {
                    Some(Ok(m)) => println!("{}", serde_json::json!({
                        "topic": m.topic, "publisher": m.publisher.to_string(),
                        "metadata": m.metadata, "body": m.body,
                    })),
                    Some(Err(e)) => eprintln!("undecodable message: {e}"),
                    None => break,
                },
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        node.shutdown().await;
        return Ok(());
    }
    let topic = args
        .get("publish")
        .context("give --subscribe TOPIC or --publish TOPIC")?;
    let message: serde_json::Value = serde_json::from_str(args.get("message").unwrap_or("null"))
        .context("--message must be JSON")?;
    // Wait (bounded) for the registry to show a subscriber.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.membership().subscribers_of(topic).await?.is_empty()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut opts = if args.get("ack").is_some() {
        PublishOptions::acked()
    } else {
        PublishOptions::default()
    };
    opts.content_type = ContentType::Json;
    let report = node.publish(topic, &message, &opts).await?;
    println!(
        "{}",
        serde_json::json!({
            "delivered": report.delivered.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "failed": report.failed.iter().map(|(a, e)| serde_json::json!({"node": a.to_string(), "error": e.to_string()})).collect::<Vec<_>>(),
        })
    );
    node.shutdown().await;
    anyhow::ensure!(
        report.failed.is_empty(),
        "some subscribers did not take the message"
    );
    Ok(())
}
