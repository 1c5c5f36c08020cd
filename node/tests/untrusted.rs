//! RPC with peers the cluster does not trust, on loopback QUIC: a node with the wrong key or
//! another CA's certificate can neither join nor call nor be called, and garbage on a raw stream
//! is refused while the node keeps serving. Real clock; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::greeter::{cluster, greeter, start, wait_for_nodes, Greeting, Hello};

use std::net::SocketAddr;
use std::time::Duration;

use mesh_membership::MembershipConfig;
use mesh_node::wire::close_code;
use mesh_node::{code, typed, CallOptions, Credentials, Health, Node, Service, BUILTIN_SERVICE};
use mesh_protocol::{FrameDecoder, ReplyHeader};

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
