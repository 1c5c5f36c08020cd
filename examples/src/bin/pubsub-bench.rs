//! Pub/sub on loopback: messages per second from one publisher to 1 and 4 subscriber nodes,
//! fire-and-forget and acknowledged, 128-byte messages.
//!
//! ```sh
//! cargo run --release -p mesh-examples --bin pubsub-bench -- --seconds 3
//! ```
//!
//! All nodes run in one process on one current-thread runtime. "delivered/s" counts messages
//! received by each subscriber (the slowest one), so fire-and-forget drops would show as a gap
//! between published/s and delivered/s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_membership::MembershipConfig;
use mesh_node::{Credentials, Node, PublishOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = mesh_examples::Args::parse(&["seconds"])?;
    let seconds: u64 = args.get("seconds").unwrap_or("3").parse()?;
    let node = |name: String| {
        Node::builder()
            .name(name)
            .credentials(Credentials::key("bench").expect("key"))
            .membership(MembershipConfig::local())
            .subscription_queue(65_536)
    };
    let publisher = node("publisher".into()).spawn().await?;
    let mut subscribers = Vec::new();
    for i in 0..4 {
        subscribers.push(
            node(format!("sub{i}"))
                .seeds(vec![publisher.addr()])
                .spawn()
                .await?,
        );
    }
    println!("128 B messages, {seconds} s per run, one process, current-thread runtime");
    println!(
        "{:>11} {:>6} {:>12} {:>14} {:>8}",
        "subscribers", "ack", "published/s", "delivered/s", "dropped"
    );
    let payload = mesh_examples::Blob(vec![1u8; 120]); // 128 B once encoded as MessagePack bin
    for n in [1usize, 4] {
        for ack in [false, true] {
            let topic = format!("bench-{n}-{ack}");
            let counts: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::default()).collect();
            let mut subs = Vec::new();
            for (s, count) in subscribers.iter().take(n).zip(&counts) {
                let mut sub = s.subscribe::<mesh_examples::Blob>(&topic).await?;
                let count = count.clone();
                subs.push(tokio::spawn(async move {
                    while sub.recv_raw().await.is_some() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    sub.dropped()
                }));
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while publisher.membership().subscribers_of(&topic).await?.len() < n {
                anyhow::ensure!(Instant::now() < deadline, "subscriptions not visible");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let opts = if ack {
                PublishOptions::acked()
            } else {
                PublishOptions::default()
            };
            // 32 publishing tasks in both modes (acknowledged publishes wait for a round trip).
            let tasks = 32;
            let stop = Instant::now() + Duration::from_secs(seconds);
            let published = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            let mut pubs = Vec::new();
            for _ in 0..tasks {
                let (p, topic, opts, payload, published) = (
                    publisher.clone(),
                    topic.clone(),
                    opts.clone(),
                    payload.clone(),
                    published.clone(),
                );
                pubs.push(tokio::spawn(async move {
                    while Instant::now() < stop {
                        p.publish(&topic, &payload, &opts).await.expect("publish");
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in pubs {
                t.await?;
            }
            let elapsed = started.elapsed().as_secs_f64();
            // Let in-flight messages land (bounded).
            let total = published.load(Ordering::Relaxed);
            let settle = Instant::now() + Duration::from_secs(5);
            while counts.iter().any(|c| c.load(Ordering::Relaxed) < total)
                && Instant::now() < settle
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let slowest = counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .min()
                .unwrap_or(0);
            let mut dropped = 0;
            for s in subs {
                s.abort();
                let _ = s.await.map(|d| dropped += d);
            }
            println!(
                "{:>11} {:>6} {:>12.0} {:>14.0} {:>8}",
                n,
                ack,
                total as f64 / elapsed,
                slowest as f64 / elapsed,
                dropped
            );
        }
    }
    Ok(())
}
