//! The standalone UDP transport (with TCP registry sync) on loopback, real clock, every wait
//! bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use mesh_membership::transport::udp::UdpTransport;
use mesh_membership::transport::Transport;
use mesh_membership::{generation_now, Membership, MembershipConfig, MembershipHandle};
use mesh_protocol::{EndpointInfo, MemberId, ServiceInfo};

async fn node(name: &str, seeds: &[std::net::SocketAddr]) -> MembershipHandle {
    let (t, incoming) = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let id = MemberId::new(t.local_addr(), generation_now());
    let core = Membership::new(MembershipConfig::local(), id, name, id.generation);
    let transport: Arc<dyn Transport> = t;
    MembershipHandle::spawn(core, transport, incoming, seeds)
}

#[tokio::test(flavor = "current_thread")]
async fn three_nodes_join_over_udp_and_pull_a_large_record_over_tcp() {
    let a = node("a", &[]).await;
    let b = node("b", &[a.addr()]).await;
    let c = node("c", &[a.addr()]).await;
    // Large enough that it must be pulled over the sync stream, not gossiped inline.
    let svc = ServiceInfo {
        name: "Big".into(),
        endpoints: (0..100)
            .map(|i| EndpointInfo {
                name: format!("E{i}"),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let s = svc.clone();
    c.update_record(move |r| r.services.push(s)).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut ok = true;
        for h in [&a, &b, &c] {
            let m = h.members().await.unwrap();
            let n = h.nodes_of("Big").await.unwrap();
            ok &= m.iter().filter(|m| m.state.is_active()).count() == 3
                && n.len() == 1
                && n[0].service == svc;
        }
        if ok {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "UDP cluster did not converge in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful leave over UDP.
    c.leave().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !a.nodes_of("Big").await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "leave not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_wildcard_bind_needs_an_advertise_address() {
    let err = UdpTransport::bind("0.0.0.0:0".parse().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let adv: std::net::SocketAddr = "127.0.0.1:7946".parse().unwrap();
    let (t, _rx) = UdpTransport::bind("0.0.0.0:0".parse().unwrap(), Some(adv))
        .await
        .unwrap();
    assert_eq!(t.local_addr(), adv);
}
