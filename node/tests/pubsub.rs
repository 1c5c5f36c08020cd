//! Pub/sub across an in-process cluster on loopback QUIC. Real clock; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::eventually;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_membership::MembershipConfig;
use mesh_node::{code, Credentials, Node, PublishOptions, RpcError, Subscription};

/// A node whose subscriptions buffer 64 messages.
async fn start(name: &str, seeds: &[SocketAddr]) -> Node {
    start_with_queue(name, seeds, 64).await
}

async fn start_with_queue(name: &str, seeds: &[SocketAddr], queue: usize) -> Node {
    Node::builder()
        .name(name)
        .credentials(Credentials::key("pubsub").unwrap())
        .membership(MembershipConfig::local())
        .seeds(seeds.to_vec())
        .subscription_queue(queue)
        .spawn()
        .await
        .unwrap()
}

/// Waits until `publisher` sees `n` subscriptions of `topic` in the registry.
async fn await_subscriptions(publisher: &Node, topic: &str, n: usize) {
    let topic = topic.to_owned();
    eventually(Duration::from_secs(20), "subscriptions visible", || {
        let topic = topic.clone();
        async move {
            let records = publisher.membership().visible_records().await.unwrap();
            records
                .iter()
                .flat_map(|r| r.subscriptions.iter())
                .filter(|s| s.topic == topic)
                .count()
                == n
        }
    })
    .await;
}

/// Everything a subscription holds right now (bounded wait per message).
async fn drain(sub: &mut Subscription<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await {
        out.push(m.unwrap().body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_in_order_and_each_group_exactly_once() {
    let p = start("publisher", &[]).await;
    let s1 = start("s1", &[p.addr()]).await;
    let s2 = start("s2", &[p.addr()]).await;
    let w1 = start("w1", &[p.addr()]).await;
    let w2 = start("w2", &[p.addr()]).await;
    let mut plain1 = s1.subscribe::<u64>("events").await.unwrap();
    let mut plain2 = s2.subscribe::<u64>("events").await.unwrap();
    let mut work1 = w1
        .subscribe_queue::<u64>("events", "workers")
        .await
        .unwrap();
    let mut work2 = w2
        .subscribe_queue::<u64>("events", "workers")
        .await
        .unwrap();
    await_subscriptions(&p, "events", 4).await;

    for (mode, opts) in [
        ("acked", PublishOptions::acked()),
        ("fire-and-forget", PublishOptions::default()),
    ] {
        for i in 0..60u64 {
            let report = p.publish("events", &i, &opts).await.unwrap();
            assert!(report.failed.is_empty(), "{mode}: {report:?}");
            assert_eq!(
                report.delivered.len(),
                3,
                "two plain nodes and one worker: {report:?}"
            );
        }
        // Plain subscribers: all of them, in publish order.
        for sub in [&mut plain1, &mut plain2] {
            assert_eq!(drain(sub).await, (0..60).collect::<Vec<_>>(), "{mode}");
        }
        // The queue group: each message exactly once across its members.
        let (a, b) = (drain(&mut work1).await, drain(&mut work2).await);
        let mut all: Vec<u64> = a.iter().chain(&b).copied().collect();
        all.sort();
        assert_eq!(all, (0..60).collect::<Vec<_>>(), "{mode}: {a:?} / {b:?}");
        assert!(
            !a.is_empty() && !b.is_empty(),
            "{mode}: both workers get some"
        );
        // Each member still sees its share in order.
        assert!(a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]));
    }
    assert_eq!(plain1.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscribers_are_reported_and_group_deliveries_move_to_survivors() {
    // Queues hold the whole run: the test reads only at the end.
    let p = start("publisher", &[]).await;
    let s1 = start_with_queue("s1", &[p.addr()], 1024).await;
    let s2 = start_with_queue("s2", &[p.addr()], 1024).await;
    let w1 = start_with_queue("w1", &[p.addr()], 1024).await;
    let w2 = start_with_queue("w2", &[p.addr()], 1024).await;
    let mut plain1 = s1.subscribe::<u64>("jobs").await.unwrap();
    let mut plain2 = s2.subscribe::<u64>("jobs").await.unwrap();
    let mut work1 = w1.subscribe_queue::<u64>("jobs", "workers").await.unwrap();
    let mut work2 = w2.subscribe_queue::<u64>("jobs", "workers").await.unwrap();
    await_subscriptions(&p, "jobs", 4).await;

    let opts = PublishOptions::acked().timeout(Duration::from_secs(3));
    let mut acked_by: Vec<(u64, Vec<SocketAddr>)> = Vec::new();
    let mut s2_missed = 0;
    for i in 0..200u64 {
        if i == 50 {
            // A plain subscriber and a worker die mid-stream, without leaving.
            s2.kill();
            w2.kill();
        }
        let report = p.publish("jobs", &i, &opts).await.unwrap();
        if report.failed.iter().any(|(n, _)| *n == s2.addr()) {
            s2_missed += 1;
        }
        // The survivors always acknowledge: the group delivery moved to w1 if w2 failed.
        assert!(report.delivered.contains(&s1.addr()), "{i}: {report:?}");
        assert!(
            report.delivered.contains(&w1.addr()) || report.delivered.contains(&w2.addr()),
            "{i}: the group was served: {report:?}"
        );
        acked_by.push((i, report.delivered));
    }
    println!("publishes that reported s2 as not acknowledging: {s2_missed}");
    assert!(s2_missed > 0, "the publisher saw the dead subscriber");

    // No acknowledged message is lost: whoever acknowledged it has it.
    let got1: BTreeSet<u64> = drain(&mut plain1).await.into_iter().collect();
    let got2: BTreeSet<u64> = drain(&mut plain2).await.into_iter().collect();
    let work: BTreeSet<u64> = drain(&mut work1)
        .await
        .into_iter()
        .chain(drain(&mut work2).await)
        .collect();
    for (i, delivered) in &acked_by {
        assert!(got1.contains(i), "s1 acked {i} and has it");
        if delivered.contains(&s2.addr()) {
            assert!(got2.contains(i), "s2 acked {i} and has it");
        }
        assert!(work.contains(i), "the group acked {i} and has it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_bounded_and_counted() {
    let p = start("publisher", &[]).await;
    let s = start("sleepy", &[p.addr()]).await;
    let sleepy = s.subscribe::<Vec<u8>>("firehose").await.unwrap();
    await_subscriptions(&p, "firehose", 1).await;
    // 20,000 messages of 1 KiB at a subscriber that never reads: its queue (64) fills, the rest
    // are dropped and counted there; the publisher never blocks and never buffers them.
    let chunk = vec![0u8; 1024];
    let started = std::time::Instant::now();
    let mut failed = 0;
    for _ in 0..20_000 {
        let r = p
            .publish("firehose", &chunk, &PublishOptions::default())
            .await
            .unwrap();
        failed += r.failed.len();
    }
    println!(
        "20,000 x 1 KiB to a stalled subscriber in {:?}; failed at the publisher: {failed}",
        started.elapsed()
    );
    eventually(Duration::from_secs(10), "drops counted", || async {
        sleepy.dropped() >= 20_000 - 64 - failed as u64
    })
    .await;
    // With acknowledgements, a full queue is a negative ack, not a silent drop.
    let r = p
        .publish("firehose", &chunk, &PublishOptions::acked())
        .await
        .unwrap();
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].1.code, code::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_withdraws_and_wrappers_can_refuse() {
    let p = start("publisher", &[]).await;
    let guarded = Node::builder()
        .name("guarded")
        .credentials(Credentials::key("pubsub").unwrap())
        .membership(MembershipConfig::local())
        .seeds(vec![p.addr()])
        .wrap_subscriber(
            |d: mesh_node::Delivery, next: mesh_node::SubscriberNext| async move {
                if d.metadata.contains_key("poison") {
                    return Err(RpcError::forbidden("guard", "poisoned message"));
                }
                next(d).await
            },
        )
        .spawn()
        .await
        .unwrap();
    let mut sub = guarded.subscribe::<u64>("t").await.unwrap();
    await_subscriptions(&p, "t", 1).await;
    let r = p
        .publish(
            "t",
            &1u64,
            &PublishOptions::acked().metadata("poison", "yes"),
        )
        .await
        .unwrap();
    assert_eq!(r.failed.len(), 1);
    assert_eq!(r.failed[0].1.code, code::FORBIDDEN);
    let r = p
        .publish("t", &2u64, &PublishOptions::acked())
        .await
        .unwrap();
    assert_eq!(r.delivered, vec![guarded.addr()]);
    assert_eq!(drain(&mut sub).await, vec![2]);

    // Dropping the subscription withdraws it from the registry.
    drop(sub);
    await_subscriptions(&p, "t", 0).await;
    let r = p
        .publish("t", &3u64, &PublishOptions::acked())
        .await
        .unwrap();
    assert!(r.delivered.is_empty() && r.failed.is_empty(), "{r:?}");
}

/// A fire-and-forget publisher in a tight loop, on the same single thread as everything else,
/// outruns its link many times over (1 MiB of budget, 40 MiB published). Publishing waits for
/// room instead of failing, so nothing is refused and every message arrives, in order.
#[tokio::test(flavor = "current_thread")]
async fn fire_and_forget_waits_for_a_congested_link_instead_of_dropping() {
    let p = start("publisher", &[]).await;
    let s = start_with_queue("s", &[p.addr()], 16_384).await;
    let mut sub = s.subscribe::<(u64, pad::Pad)>("bulk").await.unwrap();
    await_subscriptions(&p, "bulk", 1).await;
    let n = 10_000u64;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while (got.len() as u64) < n {
            let m = tokio::time::timeout(Duration::from_secs(20), sub.recv())
                .await
                .expect("a message within 20 s")
                .expect("subscription open")
                .expect("decodes");
            got.push(m.body.0);
        }
        (got, sub.dropped())
    });
    let opts = PublishOptions::default().timeout(Duration::from_secs(20));
    for i in 0..n {
        let report = p
            .publish("bulk", &(i, pad::Pad::new()), &opts)
            .await
            .unwrap();
        assert!(report.failed.is_empty(), "{i}: {report:?}");
    }
    let (got, dropped) = reader.await.unwrap();
    assert_eq!(dropped, 0);
    assert_eq!(got, (0..n).collect::<Vec<_>>());
}

/// 4 KiB of padding that MessagePack encodes as one `bin` (serde's `Vec<u8>` would be an array).
mod pad {
    #[derive(Debug, Clone)]
    pub(crate) struct Pad(Vec<u8>);

    impl Pad {
        pub(crate) fn new() -> Self {
            Self(vec![0xab; 4096])
        }
    }

    impl serde::Serialize for Pad {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> serde::Deserialize<'de> for Pad {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Pad;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Pad, E> {
                    Ok(Pad(v.to_vec()))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}
