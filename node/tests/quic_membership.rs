//! Membership over the node's transport on loopback: gossip as sealed UDP datagrams on the QUIC
//! endpoint's port, registry pulls on QUIC streams, members admitted by the cluster key only. Real
//! clock; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::eventually;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_membership::{
    generation_now, GossipKey, Keyring, Membership, MembershipConfig, MembershipHandle,
};
use mesh_node::endpoint::{bind_socket, EndpointConfig};
use mesh_node::gossip::{self, MAX_GOSSIP_DATAGRAM};
use mesh_node::security::Credentials;
use mesh_protocol::{EndpointInfo, MemberId, ServiceInfo};

fn node(name: &str, key: &str, seeds: &[SocketAddr]) -> MembershipHandle {
    let socket = bind_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let creds = Credentials::key(key).unwrap();
    let tls = creds.tls("mesh", addr).unwrap();
    let gossip = GossipKey::new(*creds.gossip_secrets("mesh")[0].as_bytes());
    let socket = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket).unwrap();
    let started = gossip::start(socket, &tls, &EndpointConfig::default(), addr, None).unwrap();
    let (transport, incoming) = (started.transport, started.incoming);
    let mut config = MembershipConfig::local();
    config.max_datagram_size = MAX_GOSSIP_DATAGRAM;
    let id = MemberId::new(addr, generation_now());
    let mut core = Membership::new(config, id, name, u64::from(addr.port()));
    core.set_require_source_match(true);
    core.set_keyring(Some(Keyring::new(gossip)));
    MembershipHandle::spawn(core, Arc::new(transport), incoming, seeds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_the_key_converge_over_quic_and_an_outsider_cannot_join() {
    let seed = node("seed", "k3y", &[]);
    let mut nodes = vec![seed.clone()];
    for i in 1..5 {
        nodes.push(node(&format!("n{i}"), "k3y", &[seed.addr()]));
    }
    // A record far larger than a datagram: it must be pulled over a QUIC stream.
    let big = ServiceInfo {
        name: "Big".into(),
        endpoints: (0..150)
            .map(|i| EndpointInfo {
                name: format!("Endpoint{i}"),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let b = big.clone();
    nodes[3]
        .update_record(move |r| r.services.push(b))
        .await
        .unwrap();

    // An outsider with the wrong key, pointed at the same seed.
    let outsider = node("outsider", "guess", &[seed.addr()]);

    eventually(Duration::from_secs(20), "5 members converge", || async {
        for n in &nodes {
            let m = n.members().await.unwrap();
            let big_nodes = n.nodes_of("Big").await.unwrap();
            if m.iter().filter(|m| m.state.is_active()).count() != 5
                || big_nodes.len() != 1
                || big_nodes[0].service != big
            {
                return false;
            }
        }
        true
    })
    .await;

    // Give the outsider time to keep trying (its join retries run every second at most).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outsider_addr = outsider.addr();
    for n in &nodes {
        let m = n.members().await.unwrap();
        assert!(
            !m.iter().any(|m| m.id.addr == outsider_addr),
            "the outsider must not appear in any member list"
        );
    }
    let seen = outsider.members().await.unwrap();
    assert_eq!(seen.len(), 1, "the outsider sees only itself: {seen:?}");

    // A graceful leave travels over QUIC too.
    nodes[3].leave().await.unwrap();
    eventually(Duration::from_secs(5), "leave seen", || async {
        for n in [&nodes[0], &nodes[1], &nodes[2], &nodes[4]] {
            if !n.nodes_of("Big").await.unwrap().is_empty() {
                return false;
            }
        }
        true
    })
    .await;
}
