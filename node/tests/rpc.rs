//! RPC across an in-process cluster on loopback QUIC: balancing, affinity, errors, deadlines,
//! failures under load, admission. Real clock; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::eventually;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_membership::MembershipConfig;
use mesh_node::wire::close_code;
use mesh_node::{
    code, typed, CallOptions, ContentType, Credentials, Health, Node, NodeInfo, RpcError, Service,
    BUILTIN_SERVICE,
};
use mesh_protocol::{FrameDecoder, ReplyHeader};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    name: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Greeting {
    greeting: String,
    node: String,
}

/// Executions of the non-idempotent `Greeter.Forward`, across all nodes of a test.
static FORWARD_RUNS: AtomicUsize = AtomicUsize::new(0);

fn greeter(node_name: &str) -> Service {
    let me = node_name.to_owned();
    let me2 = me.clone();
    Service::new("Greeter")
        .version("1.0.0")
        .idempotent_endpoint(
            "Hello",
            typed(move |_req, h: Hello| {
                let node = me.clone();
                async move {
                    Ok(Greeting {
                        greeting: format!("Hello {}", h.name),
                        node,
                    })
                }
            }),
        )
        .endpoint(
            "Fail",
            typed(|_req, _: ()| async move {
                Err::<(), _>(RpcError::conflict("Greeter", "business error"))
            }),
        )
        .endpoint(
            "Panic",
            typed(|_req, _: ()| async move {
                if true {
                    panic!("handler bug");
                }
                Ok(())
            }),
        )
        .endpoint(
            "Forward",
            typed(|_req, _: ()| async move {
                FORWARD_RUNS.fetch_add(1, Ordering::SeqCst);
                // As if a downstream call had been refused and passed on with `?`.
                Err::<(), _>(RpcError::unavailable("mesh", "downstream refused"))
            }),
        )
        .endpoint(
            "Slow",
            typed(move |_req, ms: u64| {
                let node = me2.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(node)
                }
            }),
        )
}

async fn start(name: &str, key: &str, seeds: &[SocketAddr], services: Vec<Service>) -> Node {
    let mut b = Node::builder()
        .name(name)
        .credentials(Credentials::key(key).unwrap())
        .membership(MembershipConfig::local())
        .seeds(seeds.to_vec())
        .drain_timeout(Duration::from_secs(3));
    for s in services {
        b = b.service(s);
    }
    b.spawn().await.unwrap()
}

async fn wait_for_nodes(client: &Node, service: &str, n: usize) {
    eventually(Duration::from_secs(20), "service nodes visible", || async {
        client.membership().nodes_of(service).await.unwrap().len() == n
    })
    .await;
}

/// Three greeters and a client that serves nothing.
async fn cluster(key: &str) -> (Vec<Node>, Node) {
    let seed = start("g0", key, &[], vec![greeter("g0")]).await;
    let mut greeters = vec![seed.clone()];
    for i in 1..3 {
        let name = format!("g{i}");
        greeters.push(start(&name, key, &[seed.addr()], vec![greeter(&name)]).await);
    }
    let client = start("client", key, &[seed.addr()], vec![]).await;
    wait_for_nodes(&client, "Greeter", 3).await;
    (greeters, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_all_nodes_and_a_routing_key_sticks() {
    let (greeters, client) = cluster("spread").await;
    let opts = CallOptions::default();
    let mut by_node: HashMap<String, usize> = HashMap::new();
    for i in 0..300 {
        let g: Greeting = client
            .call(
                "Greeter",
                "Hello",
                &Hello {
                    name: format!("n{i}"),
                },
                &opts,
            )
            .await
            .unwrap();
        assert_eq!(g.greeting, format!("Hello n{i}"));
        *by_node.entry(g.node).or_default() += 1;
    }
    println!("300 random calls: {by_node:?}");
    assert_eq!(by_node.len(), 3);
    // Uniform would be 100 each; 60 is more than 4 standard deviations below.
    assert!(by_node.values().all(|&n| n >= 60), "{by_node:?}");

    // JSON works the same.
    let g: Greeting = client
        .call(
            "Greeter",
            "Hello",
            &Hello {
                name: "John".into(),
            },
            &CallOptions::default().content_type(ContentType::Json),
        )
        .await
        .unwrap();
    assert_eq!(g.greeting, "Hello John");

    // A routing key sticks to one node while membership is stable; different keys spread.
    let mut owners = std::collections::HashSet::new();
    for k in 0..20 {
        let opts = CallOptions::default().routing_key(format!("user-{k}"));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let g: Greeting = client
                .call("Greeter", "Hello", &Hello { name: "x".into() }, &opts)
                .await
                .unwrap();
            seen.insert(g.node);
        }
        assert_eq!(seen.len(), 1, "key user-{k} moved: {seen:?}");
        owners.extend(seen);
    }
    assert!(owners.len() >= 2, "20 keys all on one node: {owners:?}");
    for g in greeters {
        g.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_panics_deadlines_and_builtins() {
    let (greeters, client) = cluster("errors").await;
    let opts = CallOptions::default();

    // A handler's error comes back as it was raised.
    let e = client
        .call::<_, ()>("Greeter", "Fail", &(), &opts)
        .await
        .unwrap_err();
    assert_eq!((e.code, e.id.as_str()), (code::CONFLICT, "Greeter"));

    // Unknown service or endpoint: 404, from the client (no node) and from a node.
    let e = client
        .call::<_, ()>("Nobody", "Home", &(), &opts)
        .await
        .unwrap_err();
    assert_eq!(e.code, code::NOT_FOUND);
    let e = client
        .call_node::<_, ()>(greeters[0].addr(), "Greeter", "Nope", &(), &opts)
        .await
        .unwrap_err();
    assert_eq!(e.code, code::NOT_FOUND);

    // Made-up endpoint names are not counted (the stats table cannot be grown from outside).
    let stats = greeters[0].stats();
    assert!(!stats.contains_key("Greeter.Nope"), "{stats:?}");

    // A handler passing on a framework refusal from downstream: its caller must not take it for
    // "never ran" and retry the non-idempotent endpoint elsewhere.
    let e = client
        .call::<_, ()>("Greeter", "Forward", &(), &opts)
        .await
        .unwrap_err();
    assert_eq!((e.code, e.id.as_str()), (code::UNAVAILABLE, "Greeter"));
    assert_eq!(FORWARD_RUNS.load(Ordering::SeqCst), 1, "ran exactly once");

    // A request larger than a frame is refused before anything is sent.
    let huge = Hello {
        name: "x".repeat(5 * 1024 * 1024),
    };
    let e = client
        .call::<_, Greeting>("Greeter", "Hello", &huge, &opts)
        .await
        .unwrap_err();
    assert_eq!(e.code, code::BAD_REQUEST, "{e}");

    // A panicking handler: 500, and the node keeps serving.
    let target = greeters[1].addr();
    let e = client
        .call_node::<_, ()>(target, "Greeter", "Panic", &(), &opts)
        .await
        .unwrap_err();
    assert_eq!(e.code, code::INTERNAL);
    let g: Greeting = client
        .call_node(
            target,
            "Greeter",
            "Hello",
            &Hello {
                name: "again".into(),
            },
            &opts,
        )
        .await
        .unwrap();
    assert_eq!(g.greeting, "Hello again");

    // Deadline exceeded: 408, on time.
    let started = std::time::Instant::now();
    let e = client
        .call::<_, String>(
            "Greeter",
            "Slow",
            &5_000u64,
            &CallOptions::default().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, code::TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Built-in endpoints on every node.
    let h: Health = client
        .call_node(target, BUILTIN_SERVICE, "Health", &(), &opts)
        .await
        .unwrap();
    assert_eq!(h.status, "ok");
    let info: NodeInfo = client
        .call_node(target, BUILTIN_SERVICE, "Info", &(), &opts)
        .await
        .unwrap();
    assert_eq!(info.name, "g1");
    assert_eq!(info.services[0].name, "Greeter");
    let stats: std::collections::BTreeMap<String, mesh_node::stats::EndpointStats> = client
        .call_node(target, BUILTIN_SERVICE, "Stats", &(), &opts)
        .await
        .unwrap();
    let panics = &stats["Greeter.Panic"];
    assert_eq!((panics.requests, panics.errors), (1, 1));
    assert!(stats["Greeter.Hello"].requests >= 1);
    for g in greeters {
        g.shutdown().await;
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
async fn a_node_with_the_wrong_key_can_neither_join_nor_call_nor_be_called() {
    let (greeters, client) = cluster("right").await;
    // It serves a service of its own, so that a call by name cannot resolve to itself.
    let secret = Service::new("Secret").idempotent_endpoint(
        "Hello",
        typed(|_req, h: Hello| async move {
            Ok(Greeting {
                greeting: format!("Hello {}", h.name),
                node: "outsider".into(),
            })
        }),
    );
    let outsider = start("outsider", "wrong", &[greeters[0].addr()], vec![secret]).await;
    // Its join attempts run for a while (at most 1 s apart with the local preset).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(outsider.membership().members().await.unwrap().len(), 1);
    for n in greeters.iter().chain([&client]) {
        let m = n.membership().members().await.unwrap();
        assert!(!m.iter().any(|m| m.id.addr == outsider.addr()));
    }
    // It cannot call by name (it knows nobody) nor by address (TLS refuses it).
    let opts = CallOptions::default().timeout(Duration::from_secs(3));
    let e = outsider
        .call::<_, Greeting>("Greeter", "Hello", &Hello { name: "x".into() }, &opts)
        .await
        .unwrap_err();
    assert_eq!(e.code, code::NOT_FOUND);
    let e = outsider
        .call_node::<_, Greeting>(
            greeters[0].addr(),
            "Greeter",
            "Hello",
            &Hello { name: "x".into() },
            &opts,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, code::UNAVAILABLE, "{e}");
    // Nor can it be called.
    let e = client
        .call_node::<_, Greeting>(
            outsider.addr(),
            "Secret",
            "Hello",
            &Hello { name: "x".into() },
            &opts,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, code::UNAVAILABLE, "{e}");
    assert_eq!(
        outsider.stats().get("Greeter.Hello").map(|s| s.requests),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_raw_stream_is_refused_and_the_node_keeps_serving() {
    let (greeters, client) = cluster("garbage").await;
    let target = greeters[0].addr();
    // A member opens a stream to the target and writes garbage.
    let conn = {
        // Reuse the client's authenticated endpoint through a real call first.
        let _: Health = client
            .call_node(
                target,
                BUILTIN_SERVICE,
                "Health",
                &(),
                &CallOptions::default(),
            )
            .await
            .unwrap();
        client.connection(target).await.unwrap()
    };
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &b"MESH\x09\x01"[..],
        &b"MESH\x01\x01\xff\xff\xff\xff\x01"[..],
        &[0u8; 3][..],
    ] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(garbage).await.unwrap();
        let _ = send.finish();
        // A clear error, in time: the stream reset with the protocol error code, or a 400 reply.
        let got = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(64 * 1024))
            .await
            .expect("the node answered in time");
        match got {
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
                assert_eq!(code, close_code::PROTOCOL.into(), "{garbage:?}")
            }
            Ok(bytes) => {
                let decoder = FrameDecoder::default();
                let frame = decoder
                    .decode(&mut bytes::BytesMut::from(&bytes[..]))
                    .unwrap()
                    .expect("a whole reply frame");
                let reply = ReplyHeader::decode(&frame.payload).unwrap();
                assert_eq!(
                    reply.error.map(|e| e.code),
                    Some(code::BAD_REQUEST),
                    "{garbage:?}"
                );
            }
            other => panic!("unclear answer to {garbage:?}: {other:?}"),
        }
    }
    // And it still serves everyone.
    let g: Greeting = client
        .call_node(
            target,
            "Greeter",
            "Hello",
            &Hello { name: "ok".into() },
            &CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(g.greeting, "Hello ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_serves_one_request_and_leaves() {
    let seed = start("seed", "fn", &[], vec![]).await;
    let job = Service::new("Job").endpoint("Run", typed(|_req, n: u64| async move { Ok(n * 2) }));
    let function = tokio::spawn(
        Node::builder()
            .name("fn")
            .credentials(Credentials::key("fn").unwrap())
            .membership(MembershipConfig::local())
            .seeds(vec![seed.addr()])
            .service(job)
            .run_function(),
    );
    wait_for_nodes(&seed, "Job", 1).await;
    let doubled: u64 = seed
        .call("Job", "Run", &21u64, &CallOptions::default())
        .await
        .unwrap();
    assert_eq!(doubled, 42);
    // It returns by itself, having left: the service is gone from the registry.
    tokio::time::timeout(Duration::from_secs(10), function)
        .await
        .expect("the function finished")
        .unwrap()
        .unwrap();
    eventually(Duration::from_secs(2), "function left", || async {
        seed.membership().nodes_of("Job").await.unwrap().is_empty()
    })
    .await;
    let e = seed
        .call::<_, u64>("Job", "Run", &1u64, &CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, code::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_and_client_wrappers_compose() {
    use mesh_node::{ClientCall, ClientNext, Handler, Request};
    let order: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let (o1, o2) = (order.clone(), order.clone());
    // Server side: the outer wrapper demands a token, the inner one records that it ran.
    let seed = Node::builder()
        .name("guarded")
        .credentials(Credentials::key("wrap").unwrap())
        .membership(MembershipConfig::local())
        .service(greeter("guarded"))
        .wrap(move |req: Request, next: Arc<dyn Handler>| {
            let order = o1.clone();
            async move {
                order.lock().unwrap().push("auth");
                if req.metadata.get("token").map(String::as_str) != Some("let-me-in") {
                    return Err(RpcError::unauthorized("auth", "no token"));
                }
                next.call(req).await
            }
        })
        .wrap(move |req: Request, next: Arc<dyn Handler>| {
            let order = o2.clone();
            async move {
                order.lock().unwrap().push("log");
                next.call(req).await
            }
        })
        .spawn()
        .await
        .unwrap();
    let plain = start("plain", "wrap", &[seed.addr()], vec![]).await;
    let with_token = Node::builder()
        .name("with-token")
        .credentials(Credentials::key("wrap").unwrap())
        .membership(MembershipConfig::local())
        .seeds(vec![seed.addr()])
        .wrap_client(|mut call: ClientCall, next: ClientNext| async move {
            call.opts
                .metadata
                .insert("token".into(), "let-me-in".into());
            next(call).await
        })
        .spawn()
        .await
        .unwrap();
    wait_for_nodes(&plain, "Greeter", 1).await;
    wait_for_nodes(&with_token, "Greeter", 1).await;
    let hello = Hello { name: "w".into() };
    let e = plain
        .call::<_, Greeting>("Greeter", "Hello", &hello, &CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, code::UNAUTHORIZED);
    assert_eq!(
        *order.lock().unwrap(),
        vec!["auth"],
        "the outer wrapper stopped the call"
    );
    order.lock().unwrap().clear();
    let g: Greeting = with_token
        .call("Greeter", "Hello", &hello, &CallOptions::default())
        .await
        .unwrap();
    assert_eq!(g.greeting, "Hello w");
    assert_eq!(
        *order.lock().unwrap(),
        vec!["auth", "log"],
        "first added is outermost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ca_nodes_work_and_another_cas_node_can_neither_join_nor_call_nor_be_called() {
    use mesh_node::endpoint::bind_socket;
    use mesh_node::security::{CertificateAuthority, GossipSecret};
    // Each CA's cluster has its gossip secret: the rogue CA's node does not hold ours.
    let gossip_secret_of = |issuer: &CertificateAuthority| {
        let der = issuer.cert_der();
        GossipSecret::from_bytes(der[der.len() - 32..].try_into().unwrap())
    };
    let ca = CertificateAuthority::generate("cluster CA").unwrap();
    let rogue_ca = CertificateAuthority::generate("rogue CA").unwrap();
    // Each node's certificate names its address, so the socket is bound first.
    let ca_node = |issuer: &CertificateAuthority, name: &str, seeds: Vec<SocketAddr>| {
        let socket = bind_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let cert = issuer.issue(name, &[addr]).unwrap();
        Node::builder()
            .name(name)
            .socket(socket)
            .credentials(Credentials::ca(
                ca.cert_der().clone(),
                cert.cert,
                cert.key,
                gossip_secret_of(issuer),
            ))
            .membership(MembershipConfig::local())
            .seeds(seeds)
            .service(greeter(name))
    };
    let seed = ca_node(&ca, "ca0", vec![]).spawn().await.unwrap();
    let member = ca_node(&ca, "ca1", vec![seed.addr()])
        .spawn()
        .await
        .unwrap();
    wait_for_nodes(&member, "Greeter", 2).await;
    let g: Greeting = member
        .call_node(
            seed.addr(),
            "Greeter",
            "Hello",
            &Hello { name: "ca".into() },
            &CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(g.node, "ca0");

    // Certificate from another CA (while trusting ours): refused everywhere.
    let rogue = ca_node(&rogue_ca, "rogue", vec![seed.addr()])
        .spawn()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rogue.membership().members().await.unwrap().len(), 1);
    assert_eq!(
        member.membership().nodes_of("Greeter").await.unwrap().len(),
        2
    );
    let opts = CallOptions::default().timeout(Duration::from_secs(3));
    let e = rogue
        .call_node::<_, Greeting>(
            seed.addr(),
            "Greeter",
            "Hello",
            &Hello { name: "x".into() },
            &opts,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, code::UNAVAILABLE, "{e}");
    let e = member
        .call_node::<_, Greeting>(
            rogue.addr(),
            "Greeter",
            "Hello",
            &Hello { name: "x".into() },
            &opts,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, code::UNAVAILABLE, "{e}");
}

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
async fn a_node_that_shuts_down_is_seen_leaving_faster_than_failure_detection() {
    let (greeters, client) = cluster("leaving").await;
    let leaver = greeters[2].clone();
    let addr = leaver.addr();
    let started = std::time::Instant::now();
    // shutdown() closes the endpoint right after leaving: the farewell must not be lost with it.
    leaver.shutdown().await;
    // Seen as Left (which only the node's own farewell can cause; a crash is Down), within the
    // failure-detection bound. The tighter timing (under one suspicion timeout) is asserted
    // deterministically by membership/tests/cluster.rs; here ten tests share two cores.
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

/// Both sides of a unary call read their stream to its end, so neither sends a STOP_SENDING per
/// call: that cost one more packet each way and ~40% of the calls per second at concurrency 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reads_both_streams_to_their_end() {
    let server = start("server", "k-end", &[], vec![greeter("server")]).await;
    let client = start("client", "k-end", &[server.addr()], vec![]).await;
    wait_for_nodes(&client, "Greeter", 1).await;
    let conn = client.connection(server.addr()).await.unwrap();
    let before = conn.stats();
    let calls = 200u64;
    for i in 0..calls {
        let _: Greeting = client
            .call(
                "Greeter",
                "Hello",
                &Hello {
                    name: format!("n{i}"),
                },
                &CallOptions::default(),
            )
            .await
            .unwrap();
    }
    let after = conn.stats();
    let stops_rx = after.frame_rx.stop_sending - before.frame_rx.stop_sending;
    let stops_tx = after.frame_tx.stop_sending - before.frame_tx.stop_sending;
    let streams = after.frame_tx.stream - before.frame_tx.stream;
    assert!(
        streams >= calls,
        "{streams} stream frames for {calls} calls"
    );
    // The end is noted only if it has already arrived (the check never waits), so on two
    // threads a few calls still see their FIN a moment late; before, every call sent one.
    assert!(
        stops_tx + stops_rx < calls / 4,
        "{stops_tx} STOP_SENDING sent and {stops_rx} received over {calls} calls"
    );
}
