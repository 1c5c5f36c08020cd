//! The connection table of real nodes on loopback: the cap and least-recently-used eviction, calls
//! in flight kept, one handshake for concurrent dials, and a dialer that refuses a peer whose
//! certificate names another address. No membership between the nodes (no seeds), so every
//! connection is one the test made; every wait is on an event, bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::eventually;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_node::endpoint::bind_socket;
use mesh_node::security::{CertificateAuthority, GossipSecret};
use mesh_node::wire::close_code;
use mesh_node::{
    typed, CallOptions, Credentials, Health, Inbound, Node, Outbound, Request, Service,
    BUILTIN_SERVICE,
};
use tokio::sync::{mpsc, Semaphore};

const LIMIT: Duration = Duration::from_secs(10);
const KEY: &str = "conn-cap";

async fn node(max_connections: usize, services: Vec<Service>) -> Node {
    let mut b = Node::builder()
        .credentials(Credentials::key(KEY).unwrap())
        .max_connections(max_connections);
    for s in services {
        b = b.service(s);
    }
    b.spawn().await.unwrap()
}

fn opts() -> CallOptions {
    CallOptions::default().timeout(LIMIT).retries(0)
}

/// One call from `from` to `to`: dials if needed, and uses the connection.
async fn touch(from: &Node, to: &Node) {
    let h: Health = from
        .call_node(to.addr(), BUILTIN_SERVICE, "Health", &(), &opts())
        .await
        .unwrap();
    assert_eq!(h.status, "ok");
}

/// The close code `conn` ends with, waited for.
async fn close_code_of(conn: &quinn::Connection) -> Option<u64> {
    match tokio::time::timeout(LIMIT, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_idle_connection_closes_when_the_cap_is_passed() {
    let started = Instant::now();
    let hub = node(2, vec![]).await;
    let (p1, p2, p3) = (
        node(8, vec![]).await,
        node(8, vec![]).await,
        node(8, vec![]).await,
    );
    touch(&hub, &p1).await;
    touch(&hub, &p2).await;
    // p2's side of its connection to the hub (it has served a call, so it holds it).
    let p2_side = (*p2.connection(hub.addr()).await.unwrap()).clone();
    // p1 used again: p2 is now the least recently used.
    touch(&hub, &p1).await;
    touch(&hub, &p3).await;

    let s = hub.connection_stats();
    assert_eq!((s.open, s.max_connections), (2, 2), "{s:?}");
    assert_eq!((s.dialed, s.evictions, s.cap_overruns), (3, 1, 0), "{s:?}");
    // p2 is told why, with a code of its own.
    assert_eq!(
        close_code_of(&p2_side).await,
        Some(close_code::EVICTED.into())
    );
    // And just dials again next time: p1 is now the least recently used.
    let p1_side = (*p1.connection(hub.addr()).await.unwrap()).clone();
    touch(&hub, &p2).await;
    assert_eq!(
        close_code_of(&p1_side).await,
        Some(close_code::EVICTED.into())
    );
    let s = hub.connection_stats();
    assert_eq!((s.open, s.dialed, s.evictions), (2, 4, 2), "{s:?}");
    println!("lru eviction: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_a_call_in_flight_is_not_evicted_and_the_overrun_is_counted() {
    let started = Instant::now();
    let (started_tx, mut started_rx) = mpsc::channel::<()>(1);
    let release = Arc::new(Semaphore::new(0));
    let wait = {
        let release = release.clone();
        Service::new("Slow").endpoint(
            "Wait",
            typed(move |_req, n: u32| {
                let (started_tx, release) = (started_tx.clone(), release.clone());
                async move {
                    let _ = started_tx.send(()).await;
                    release.acquire().await.unwrap().forget();
                    Ok(n + 1)
                }
            }),
        )
    };
    let hub = node(2, vec![]).await;
    let slow = node(8, vec![wait]).await;
    let (p2, p3, p4) = (
        node(8, vec![]).await,
        node(8, vec![]).await,
        node(8, vec![]).await,
    );

    let call = {
        let (hub, slow) = (hub.clone(), slow.addr());
        tokio::spawn(async move {
            hub.call_node::<_, u32>(slow, "Slow", "Wait", &41, &opts())
                .await
        })
    };
    tokio::time::timeout(LIMIT, started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    // The call's connection is the least recently used, but busy: the idle p2 goes instead.
    touch(&hub, &p2).await;
    touch(&hub, &p3).await;
    let s = hub.connection_stats();
    assert_eq!(
        (s.open, s.busy, s.evictions, s.cap_overruns),
        (2, 1, 1, 0),
        "{s:?}"
    );
    // With p3 held too, nothing is idle: a connection to p4 passes the cap, and that is counted.
    let held = hub.connection(p3.addr()).await.unwrap();
    let held_too = hub.connection(p4.addr()).await.unwrap();
    let s = hub.connection_stats();
    assert_eq!(
        (s.open, s.busy, s.evictions, s.cap_overruns),
        (3, 3, 1, 1),
        "{s:?}"
    );

    release.add_permits(1);
    let reply = tokio::time::timeout(LIMIT, call).await.unwrap().unwrap();
    assert_eq!(reply.unwrap(), 42, "the call completes");
    // Its end took the table back to the cap: its connection, the only idle one, went.
    let s = hub.connection_stats();
    assert_eq!((s.open, s.busy, s.evictions), (2, 2, 2), "{s:?}");
    drop((held, held_too));
    assert_eq!(hub.connection_stats().busy, 0);
    println!("busy kept: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_call_keeps_its_connection_under_the_cap() {
    let started = Instant::now();
    let shout = Service::new("Streams").stream_endpoint(
        "Shout",
        |_req: Request, mut inb: Inbound, out: Outbound| async move {
            while let Some(s) = inb.next::<String>().await {
                out.send(&s?.to_uppercase()).await?;
            }
            Ok(())
        },
    );
    let server = node(8, vec![shout]).await;
    // The registry is how a streaming call finds its node: the hub joins the server.
    let hub = Node::builder()
        .credentials(Credentials::key(KEY).unwrap())
        .max_connections(1)
        .seeds(vec![server.addr()])
        .spawn()
        .await
        .unwrap();
    let other = node(8, vec![]).await;
    eventually(LIMIT, "the server's service visible", || async {
        !hub.membership()
            .nodes_of("Streams")
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let mut stream = hub.stream("Streams", "Shout", &opts()).await.unwrap();
    stream.send(&"one").await.unwrap();
    assert_eq!(stream.recv::<String>().await.unwrap().unwrap(), "ONE");
    // Calls to another node pass the cap of one; the busy connection stays, theirs go.
    for _ in 0..3 {
        touch(&hub, &other).await;
    }
    let s = hub.connection_stats();
    assert!(
        s.evictions >= 3 && s.cap_overruns >= 3 && s.busy == 1,
        "{s:?}"
    );
    stream.send(&"two").await.unwrap();
    assert_eq!(stream.recv::<String>().await.unwrap().unwrap(), "TWO");
    stream.close_send();
    assert!(stream.recv::<String>().await.is_none());
    println!("streaming kept: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dials_to_one_peer_share_one_handshake() {
    let started = Instant::now();
    let hub = node(256, vec![]).await;
    let peer = node(256, vec![]).await;
    let mut dials = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (hub, to) = (hub.clone(), peer.addr());
        dials.spawn(async move { hub.connection(to).await.map(|c| c.stable_id()) });
    }
    let ids: Vec<usize> = dials
        .join_all()
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // A call served proves the peer let the connection in.
    touch(&hub, &peer).await;
    assert_eq!(hub.connection_stats().dialed, 1);
    assert_eq!(hub.connection_stats().open, 1);
    let p = peer.connection_stats();
    assert_eq!((p.accepted, p.dialed, p.open), (1, 0, 1), "{p:?}");
    println!("one handshake: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_refuses_a_peer_whose_certificate_names_another_address() {
    let started = Instant::now();
    let ca = CertificateAuthority::generate("cluster CA").unwrap();
    // A node on `socket` presenting a valid certificate for `named`.
    let ca_node = |socket: std::net::UdpSocket, named: SocketAddr| {
        let cert = ca.issue("n", &[named]).unwrap();
        Node::builder()
            .socket(socket)
            .credentials(Credentials::ca(
                ca.cert_der().clone(),
                cert.cert,
                cert.key,
                GossipSecret::from_bytes([3; 32]),
            ))
            .spawn()
    };
    let bind = || bind_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let dialer = {
        let s = bind();
        let addr = s.local_addr().unwrap();
        ca_node(s, addr).await.unwrap()
    };
    let honest = {
        let s = bind();
        let addr = s.local_addr().unwrap();
        ca_node(s, addr).await.unwrap()
    };
    // Certified for A (a port of its own that nobody serves), running at B.
    let a = bind().local_addr().unwrap();
    let impostor = ca_node(bind(), a).await.unwrap();
    let b = impostor.addr();

    let e = dialer.connection(b).await.unwrap_err();
    assert!(
        e.detail.contains(&format!("dialed {b}")) && e.detail.contains(&format!("names {a}")),
        "{e}"
    );
    let e = dialer
        .call_node::<_, Health>(b, BUILTIN_SERVICE, "Health", &(), &opts())
        .await
        .unwrap_err();
    assert_eq!(e.code, mesh_node::code::UNAVAILABLE, "{e}");
    let s = dialer.connection_stats();
    assert_eq!((s.refused_identity, s.open), (2, 0), "{s:?}");

    // The same dialer reaches a node certified for the address it is dialed at.
    touch(&dialer, &honest).await;
    assert_eq!(dialer.connection_stats().open, 1);
    println!("identity refused: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_bound_to_the_wildcard_is_dialed_at_its_advertised_address() {
    let socket = bind_socket("0.0.0.0:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let advertised = SocketAddr::from(([127, 0, 0, 1], port));
    let server = Node::builder()
        .socket(socket)
        .advertise(advertised)
        .credentials(Credentials::key(KEY).unwrap())
        .spawn()
        .await
        .unwrap();
    let client = node(8, vec![]).await;
    touch(&client, &server).await;
    assert_eq!(client.connection_stats().refused_identity, 0);
}

/// A connection dialed for a registry sync alone closes when the sync is done, instead of
/// lingering for QUIC's idle timeout (30 s): a node pulling records from dozens of peers while a
/// cluster forms holds only the connections in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dialed_for_a_registry_sync_closes_when_it_is_done() {
    let seed = node(16, Vec::new()).await;
    let joiner = Node::builder()
        .credentials(Credentials::key(KEY).unwrap())
        .seeds(vec![seed.addr()])
        .spawn()
        .await
        .unwrap();
    // The join's full sync (dialed by the joiner) brought the seed's record...
    eventually(LIMIT, "the joiner holds the seed's record", || async {
        joiner
            .membership()
            .visible_records()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id.addr == seed.addr())
    })
    .await;
    assert!(joiner.connection_stats().dialed >= 1, "the sync dialed");
    // ... and its connection closed on both sides well within QUIC's 30 s idle timeout.
    eventually(LIMIT, "no connection left open", || async {
        joiner.connection_stats().open == 0 && seed.connection_stats().open == 0
    })
    .await;
    joiner.shutdown().await;
    seed.shutdown().await;
}
