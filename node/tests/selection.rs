//! Which nodes a call goes to, across an in-process cluster on loopback QUIC: filters and
//! strategies, failover when a node is killed under load, a node seen leaving as it shuts down.
//! Real clock; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::eventually;
use common::greeter::{cluster, start, wait_for_nodes};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_membership::MembershipConfig;
use mesh_node::{code, typed, CallOptions, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_strategies_choose_the_right_nodes() {
    use mesh_node::Strategy;
    let started = Arc::new(AtomicUsize::new(0));
    let svc = |name: &str, version: &str, zone: &str| {
        let (me, me2, started) = (name.to_owned(), name.to_owned(), started.clone());
        Service::new("Pick")
            .version(version)
            .metadata("zone", zone)
            .idempotent_endpoint(
                "Who",
                typed(move |_req, _: ()| {
                    let me = me.clone();
                    async move { Ok(me) }
                }),
            )
            .idempotent_endpoint(
                "Hold",
                typed(move |_req, ms: u64| {
                    let (me, started) = (me2.clone(), started.clone());
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(me)
                    }
                }),
            )
    };
    let p0 = start("p0", "pick", &[], vec![svc("p0", "1.0.0", "a")]).await;
    let p1 = start("p1", "pick", &[p0.addr()], vec![svc("p1", "1.0.0", "a")]).await;
    let p2 = start("p2", "pick", &[p0.addr()], vec![svc("p2", "2.0.0", "b")]).await;
    let client = start("client", "pick", &[p0.addr()], vec![]).await;
    wait_for_nodes(&client, "Pick", 3).await;

    let who = |opts: CallOptions| {
        let client = client.clone();
        async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..30 {
                let n: String = client.call("Pick", "Who", &(), &opts).await.unwrap();
                *seen.entry(n).or_default() += 1;
            }
            seen
        }
    };
    let v2 = who(CallOptions::default().version("2.0.0")).await;
    assert_eq!(v2, HashMap::from([("p2".to_owned(), 30)]));
    let zone_a = who(CallOptions::default().metadata_filter("zone", "a")).await;
    let mut in_zone_a: Vec<&str> = zone_a.keys().map(String::as_str).collect();
    in_zone_a.sort();
    assert_eq!(in_zone_a, ["p0", "p1"]);
    let rr = who(CallOptions::default().strategy(Strategy::RoundRobin)).await;
    assert_eq!(
        rr.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{rr:?}"
    );
    let e = client
        .call::<_, String>("Pick", "Who", &(), &CallOptions::default().version("9.9.9"))
        .await
        .unwrap_err();
    assert_eq!(e.code, code::NOT_FOUND);

    // Least outstanding: while one node holds a slow call, quick calls avoid it.
    let opts = CallOptions::default().strategy(Strategy::LeastOutstanding);
    let slow = {
        let (client, opts) = (client.clone(), opts.clone());
        tokio::spawn(async move {
            client
                .call::<_, String>("Pick", "Hold", &1_000u64, &opts)
                .await
        })
    };
    eventually(Duration::from_secs(5), "slow call started", || async {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    let quick = who(opts).await;
    let busy = slow.await.unwrap().unwrap();
    assert!(
        !quick.contains_key(&busy),
        "a quick call went to the busy node {busy}: {quick:?}"
    );
    for n in [p0, p1, p2, client] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_under_load_fails_no_idempotent_call_and_runs_nothing_twice() {
    // Every execution of the non-idempotent endpoint is counted per call id, across nodes.
    let runs: Arc<Mutex<HashMap<u64, usize>>> = Arc::new(Mutex::new(HashMap::new()));
    let svc = |name: &str| {
        let runs = runs.clone();
        let me = name.to_owned();
        Service::new("Work")
            .idempotent_endpoint(
                "Read",
                typed(move |_req, ms: u64| {
                    let me = me.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(me)
                    }
                }),
            )
            .endpoint(
                "Charge",
                typed(move |_req, id: u64| {
                    let runs = runs.clone();
                    async move {
                        *runs.lock().unwrap().entry(id).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok(id)
                    }
                }),
            )
    };
    let seed = start("w0", "load", &[], vec![svc("w0")]).await;
    let w1 = start("w1", "load", &[seed.addr()], vec![svc("w1")]).await;
    let w2 = start("w2", "load", &[seed.addr()], vec![svc("w2")]).await;
    let client = start("client", "load", &[seed.addr()], vec![]).await;
    wait_for_nodes(&client, "Work", 3).await;

    let read_failures = Arc::new(AtomicUsize::new(0));
    let reads_ok = Arc::new(AtomicUsize::new(0));
    let charge_failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let client = client.clone();
        let (rf, ro, cf) = (
            read_failures.clone(),
            reads_ok.clone(),
            charge_failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let opts = CallOptions::default().timeout(Duration::from_secs(5));
            for i in 0..60u64 {
                match client
                    .call::<_, String>("Work", "Read", &10u64, &opts)
                    .await
                {
                    Ok(_) => ro.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("read failed: {e}");
                        rf.fetch_add(1, Ordering::Relaxed)
                    }
                };
                let id = worker * 1_000 + i;
                if client
                    .call::<_, u64>("Work", "Charge", &id, &opts)
                    .await
                    .is_err()
                {
                    cf.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Kill a node in the middle of the load.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w1.kill();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("load finished")
            .unwrap();
    }
    let twice: Vec<_> = runs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    println!(
        "reads ok {}, read failures {}, charge failures {}, charges run {}",
        reads_ok.load(Ordering::Relaxed),
        read_failures.load(Ordering::Relaxed),
        charge_failures.load(Ordering::Relaxed),
        runs.lock().unwrap().len()
    );
    assert_eq!(
        read_failures.load(Ordering::Relaxed),
        0,
        "idempotent calls never fail"
    );
    assert_eq!(reads_ok.load(Ordering::Relaxed), 480);
    assert!(
        twice.is_empty(),
        "non-idempotent calls ran twice: {twice:?}"
    );
    for n in [seed, w2, client] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_shuts_down_is_seen_leaving_faster_than_failure_detection() {
    let (greeters, client) = cluster("leaving").await;
    let leaver = greeters[2].clone();
    let addr = leaver.addr();
    let started = std::time::Instant::now();
    // shutdown() closes the endpoint right after leaving: the farewell must not be lost with it.
    leaver.shutdown().await;
    // Seen as Left (which only the node's own farewell can cause; a crash is Down), within the
    // failure-detection bound. The tighter timing (under one suspicion timeout) is asserted
    // deterministically by membership/tests/cluster.rs; here the tests share two cores.
    let limit = MembershipConfig::local().detection_bound(4);
    eventually(limit, "leave seen as Left everywhere", || async {
        for n in greeters[..2].iter().chain([&client]) {
            let m = n.membership().members().await.unwrap();
            let left = m
                .iter()
                .any(|m| m.id.addr == addr && m.state == mesh_membership::MemberState::Left);
            let serving = n
                .membership()
                .nodes_of("Greeter")
                .await
                .unwrap()
                .iter()
                .any(|s| s.node.addr == addr);
            if !left || serving {
                return false;
            }
        }
        true
    })
    .await;
    println!("shutdown to Left everywhere: {:?}", started.elapsed());
}
