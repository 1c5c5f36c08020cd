//! Real nodes under faults: five nodes and a client on loopback, every socket fault-injecting,
//! under RPC and acknowledged pub/sub load while datagrams are lost, a node crashes silently and
//! restarts at the same address, and the cluster is partitioned and healed.
//!
//! Checks: at least 99.9% of idempotent calls succeed, no acknowledged message is lost, and the
//! registry reconverges within a stated bound after the heal. Real clock; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_membership::MembershipConfig;
use mesh_node::chaos::{Faults, FaultySocket};
use mesh_node::endpoint::bind_socket;
use mesh_node::{typed, CallOptions, Credentials, Node, PublishOptions, Service};

/// Messages each subscriber node received, by node name.
type Received = Arc<Mutex<HashMap<String, BTreeSet<u64>>>>;

/// Acknowledged publishes: message id, and the nodes that acknowledged it.
type Acked = Arc<Mutex<Vec<(u64, Vec<SocketAddr>)>>>;

struct Member {
    node: Node,
    faults: Faults,
    socket: Arc<dyn quinn::AsyncUdpSocket>,
}

async fn start_member(
    name: &str,
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    seed: Option<SocketAddr>,
    received: &Received,
    faults_seed: u64,
) -> Member {
    let faults = Faults::new(faults_seed);
    let me = name.to_owned();
    let node = Node::builder()
        .name(name)
        .credentials(Credentials::key("chaos").unwrap())
        .membership(MembershipConfig::local())
        .seeds(seed.into_iter().collect())
        .udp_socket(FaultySocket::new(socket.clone(), faults.clone()))
        .subscription_queue(100_000)
        .service(Service::new("Echo").idempotent_endpoint(
            "Get",
            typed(move |_req, n: u64| {
                let me = me.clone();
                async move { Ok((me, n)) }
            }),
        ))
        .spawn()
        .await
        .unwrap();
    // Every member is a worker of the "jobs" queue group; what it receives is recorded.
    let mut sub = node
        .subscribe_queue::<u64>("jobs", "workers")
        .await
        .unwrap();
    let (received, name) = (received.clone(), name.to_owned());
    tokio::spawn(async move {
        while let Some(Ok(m)) = sub.recv().await {
            received
                .lock()
                .unwrap()
                .entry(name.clone())
                .or_default()
                .insert(m.body);
        }
    });
    Member {
        node,
        faults,
        socket,
    }
}

fn socket() -> Arc<dyn quinn::AsyncUdpSocket> {
    FaultySocket::wrap(bind_socket("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap()
}

/// Whether every node holds the same registry, with exactly `names` in it, all active.
async fn converged(nodes: &[&Node], names: &BTreeSet<&str>) -> bool {
    let mut first = None;
    for n in nodes {
        let Ok(records) = n.membership().visible_records().await else {
            return false;
        };
        let view: BTreeSet<(SocketAddr, u64)> = records
            .iter()
            .map(|r| (r.id.addr, r.id.generation))
            .collect();
        let seen: BTreeSet<&str> = records.iter().map(|r| r.name.as_str()).collect();
        if &seen != names {
            return false;
        }
        match &first {
            None => first = Some(view),
            Some(f) if *f != view => return false,
            Some(_) => {}
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_loss_a_crash_a_restart_and_a_partition_under_load() {
    let received: Received = Arc::default();
    let sockets: Vec<_> = (0..5).map(|_| socket()).collect();
    let mut members = Vec::new();
    members.push(start_member("n0", sockets[0].clone(), None, &received, 100).await);
    let seed = members[0].node.addr();
    for (i, s) in sockets.iter().enumerate().skip(1) {
        members.push(
            start_member(
                &format!("n{i}"),
                s.clone(),
                Some(seed),
                &received,
                100 + i as u64,
            )
            .await,
        );
    }
    let client_faults = Faults::new(7);
    let client = Node::builder()
        .name("client")
        .credentials(Credentials::key("chaos").unwrap())
        .membership(MembershipConfig::local())
        .seeds(vec![seed])
        .udp_socket(FaultySocket::new(socket(), client_faults.clone()))
        .spawn()
        .await
        .unwrap();
    let all: BTreeSet<&str> = ["n0", "n1", "n2", "n3", "n4", "client"]
        .into_iter()
        .collect();
    common::eventually(Duration::from_secs(20), "cluster formed", || async {
        let nodes: Vec<&Node> = members.iter().map(|m| &m.node).chain([&client]).collect();
        converged(&nodes, &all).await
    })
    .await;

    // Load: 8 callers of an idempotent endpoint, one acknowledged publisher.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (client, stop, calls, failures) = (
            client.clone(),
            stop.clone(),
            calls.clone(),
            failures.clone(),
        );
        load.push(tokio::spawn(async move {
            let opts = CallOptions::default()
                .timeout(Duration::from_secs(5))
                .attempt_timeout(Duration::from_millis(300))
                .retries(8);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match client
                    .call::<_, (String, u64)>("Echo", "Get", &i, &opts)
                    .await
                {
                    Ok((_, n)) => assert_eq!(n, i),
                    Err(e) => {
                        eprintln!("call failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let acked: Acked = Arc::default();
    let publisher = {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let opts = PublishOptions::acked()
                .timeout(Duration::from_secs(5))
                .attempt_timeout(Duration::from_millis(500));
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                if let Ok(report) = client.publish("jobs", &id, &opts).await {
                    if !report.delivered.is_empty() {
                        acked.lock().unwrap().push((id, report.delivered));
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // The faults.
    let set_loss = |members: &[Member], p: f64| {
        for m in members {
            m.faults.set_loss(p);
        }
        client_faults.set_loss(p);
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    set_loss(&members, 0.05);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // n2 dies silently: no goodbye, no connection close.
    let dead = members.remove(2);
    dead.faults.go_dark();
    dead.node.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ... and comes back at the same address, as a new generation.
    let reborn = start_member("n2", dead.socket.clone(), Some(seed), &received, 200).await;
    reborn.faults.set_loss(0.05);
    members.insert(2, reborn);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Partition: {client, n0, n1} | {n2, n3, n4}.
    let side_a: Vec<SocketAddr> = vec![
        client.addr(),
        members[0].node.addr(),
        members[1].node.addr(),
    ];
    let side_b: Vec<SocketAddr> = members[2..].iter().map(|m| m.node.addr()).collect();
    for m in &members[..2] {
        side_b.iter().for_each(|b| m.faults.block(*b));
    }
    side_b.iter().for_each(|b| client_faults.block(*b));
    for m in &members[2..] {
        side_a.iter().for_each(|a| m.faults.block(*a));
    }
    // The partition takes effect: the client's side declares the other side down.
    let other_side: BTreeSet<SocketAddr> = side_b.iter().copied().collect();
    common::eventually(
        MembershipConfig::local().detection_bound(6) + Duration::from_secs(2),
        "the partition is noticed",
        || async {
            let records = client.membership().visible_records().await.unwrap();
            !records.iter().any(|r| other_side.contains(&r.id.addr))
        },
    )
    .await;
    for m in &members {
        m.faults.unblock_all();
    }
    client_faults.unblock_all();
    let healed = Instant::now();
    set_loss(&members, 0.0);

    // Reconvergence after the heal, within the stated bound: two anti-entropy intervals plus the
    // failure-detection bound of the local preset.
    let preset = MembershipConfig::local();
    let bound = preset.anti_entropy_interval * 2 + preset.detection_bound(6);
    common::eventually(bound, "registry reconverged after the heal", || async {
        let nodes: Vec<&Node> = members.iter().map(|m| &m.node).chain([&client]).collect();
        converged(&nodes, &all).await
    })
    .await;
    println!(
        "reconverged {:?} after the heal (bound {bound:?})",
        healed.elapsed()
    );

    // Let the load run on the healed cluster a moment, then stop it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), publisher)
        .await
        .unwrap()
        .unwrap();

    let (calls, failures) = (
        calls.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    let success = 1.0 - failures as f64 / calls as f64;
    println!(
        "idempotent calls: {calls}, failed {failures} ({:.3}% succeeded)",
        success * 100.0
    );
    assert!(calls > 1_000, "enough load: {calls}");
    assert!(
        success >= 0.999,
        "{failures} of {calls} idempotent calls failed"
    );

    // No acknowledged message is lost: a node that acknowledged it has it. (The old n2 kept
    // what it received before it died: its subscription's record is under the same name.)
    tokio::time::sleep(Duration::from_millis(500)).await; // receivers drain their queues
    let acked = acked.lock().unwrap().clone();
    let received = received.lock().unwrap().clone();
    let addr_name: HashMap<SocketAddr, String> = members
        .iter()
        .map(|m| (m.node.addr(), m.node.name().to_owned()))
        .collect();
    let mut lost = Vec::new();
    for (id, nodes) in &acked {
        let ok = nodes.iter().any(|n| {
            addr_name
                .get(n)
                .and_then(|name| received.get(name))
                .is_some_and(|got| got.contains(id))
        });
        if !ok {
            lost.push(*id);
        }
    }
    println!(
        "acknowledged publishes: {}, lost: {}",
        acked.len(),
        lost.len()
    );
    assert!(acked.len() > 100, "enough publishes: {}", acked.len());
    assert!(lost.is_empty(), "acknowledged but never received: {lost:?}");
    let dropped: u64 = members.iter().map(|m| m.faults.dropped()).sum();
    println!(
        "datagrams dropped by the faults: {}",
        dropped + client_faults.dropped()
    );
}
