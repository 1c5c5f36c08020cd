//! Bad datagrams are counted and dropped: they never panic the core and never change its state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_membership::swim::{cluster_tag, write_unsealed, DATAGRAM_MAGIC, DATAGRAM_VERSION};
use mesh_membership::{Membership, MembershipConfig};
use mesh_protocol::{MemberId, ServiceInfo};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

fn pair() -> (Membership, Membership, Instant) {
    let cfg = MembershipConfig::local();
    let a: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:7002".parse().unwrap();
    let mut na = Membership::new(cfg.clone(), MemberId::new(a, 1), "a", 1);
    let mut nb = Membership::new(cfg, MemberId::new(b, 1), "b", 2);
    let mut now = Instant::now();
    na.update_record(now, |r| {
        r.services.push(ServiceInfo {
            name: "Greeter".into(),
            ..Default::default()
        })
    });
    nb.join(now, &[a]);
    for _ in 0..200 {
        now += Duration::from_millis(10);
        exchange(&mut na, &mut nb, now);
        na.handle_timeout(now);
        nb.handle_timeout(now);
        serve_syncs(&mut na, &mut nb, now);
    }
    assert_eq!(nb.nodes_of("Greeter").len(), 1, "pair converged");
    (na, nb, now)
}

fn exchange(na: &mut Membership, nb: &mut Membership, now: Instant) {
    let (a, b) = (na.id().addr, nb.id().addr);
    while let Some(t) = na.poll_transmit() {
        nb.handle_datagram(now, a, &t.data);
    }
    while let Some(t) = nb.poll_transmit() {
        na.handle_datagram(now, b, &t.data);
    }
}

fn serve_syncs(na: &mut Membership, nb: &mut Membership, now: Instant) {
    while let Some(t) = na.poll_sync() {
        let resp = nb.handle_sync_request(now, t.request);
        na.handle_sync_response::<String>(now, t.peer, Ok(resp));
    }
    while let Some(t) = nb.poll_sync() {
        let resp = na.handle_sync_request(now, t.request);
        nb.handle_sync_response::<String>(now, t.peer, Ok(resp));
    }
}

fn snapshot(
    n: &Membership,
) -> (
    Vec<mesh_membership::MemberInfo>,
    Vec<mesh_protocol::NodeRecord>,
) {
    (n.members(), n.visible_records())
}

#[test]
fn every_class_of_bad_datagram_is_counted_and_changes_nothing() {
    let (_na, mut nb, now) = pair();
    let from: SocketAddr = "127.0.0.1:6666".parse().unwrap();
    let before = snapshot(&nb);
    let stats0 = nb.stats().clone();
    let tag = cluster_tag("mesh");

    // Garbage and truncation.
    nb.handle_datagram(now, from, b"");
    nb.handle_datagram(now, from, b"M");
    nb.handle_datagram(now, from, b"GET / HTTP/1.1\r\n\r\n");
    nb.handle_datagram(now, from, &[0xFF; 1400]);
    // Another protocol version.
    let mut v3 = vec![DATAGRAM_MAGIC, DATAGRAM_VERSION + 1, 0];
    v3.extend_from_slice(&tag.to_be_bytes());
    v3.extend_from_slice(&[0; 40]);
    nb.handle_datagram(now, from, &v3);
    // Another cluster.
    let mut other = Vec::new();
    write_unsealed(cluster_tag("not-mesh"), &[4, 127, 0, 0, 1], &mut other);
    nb.handle_datagram(now, from, &other);
    // Our envelope, then a truncated or nonsensical SWIM header.
    for body in [
        &[][..],
        &[4, 127, 0, 0][..],
        &[
            9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
        ][..],
    ] {
        let mut d = Vec::new();
        write_unsealed(tag, body, &mut d);
        nb.handle_datagram(now, from, &d);
    }

    let s = nb.stats();
    assert_eq!(s.dropped_garbage - stats0.dropped_garbage, 4);
    assert_eq!(s.dropped_version - stats0.dropped_version, 1);
    assert_eq!(s.dropped_other_cluster - stats0.dropped_other_cluster, 1);
    assert_eq!(s.dropped_malformed - stats0.dropped_malformed, 3);
    assert_eq!(snapshot(&nb), before, "state unchanged");
}

#[test]
fn random_and_mutated_datagrams_never_panic() {
    let (mut na, mut nb, mut now) = pair();
    // `na` only provides real packets to mutate; after that it stays silent.
    let mut rng = SmallRng::seed_from_u64(42);
    let from = na.id().addr;
    let tag = cluster_tag("mesh");
    // Collect real datagrams to mutate.
    let mut samples = Vec::new();
    for _ in 0..50 {
        now += Duration::from_millis(10);
        na.handle_timeout(now);
        while let Some(t) = na.poll_transmit() {
            samples.push(t.data.to_vec());
        }
    }
    assert!(!samples.is_empty());
    for i in 0..20_000 {
        let d: Vec<u8> = match i % 3 {
            0 => {
                let len = rng.random_range(0..1500);
                (0..len).map(|_| rng.random()).collect()
            }
            1 => {
                let len = rng.random_range(0..200);
                let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let mut d = Vec::new();
                write_unsealed(tag, &body, &mut d);
                d
            }
            _ => {
                let mut d = samples[rng.random_range(0..samples.len())].clone();
                let flips = rng.random_range(1..4);
                for _ in 0..flips {
                    let at = rng.random_range(7..d.len().max(8));
                    if at < d.len() {
                        d[at] = rng.random();
                    }
                }
                if rng.random_bool(0.3) {
                    let cut = rng.random_range(0..d.len());
                    d.truncate(cut);
                }
                d
            }
        };
        nb.handle_datagram(now, from, &d);
    }
    // Nothing panicked, and every input was accounted for.
    let s = nb.stats();
    assert!(s.dropped_garbage > 0 && s.dropped_malformed > 0);
    // The node still works: a legitimate newcomer joins it and both see each other's services.
    // (Bit-flipped copies of real packets are valid SWIM and may have added forged members: on
    // an unauthenticated transport that is SWIM's nature. The QUIC transport authenticates peers
    // and turns on `set_require_source_match`.)
    let c_addr: SocketAddr = "127.0.0.1:7003".parse().unwrap();
    let mut nc = Membership::new(MembershipConfig::local(), MemberId::new(c_addr, 1), "c", 3);
    nc.update_record(now, |r| {
        r.services.push(ServiceInfo {
            name: "Newcomer".into(),
            ..Default::default()
        })
    });
    nc.join(now, &[nb.id().addr]);
    for _ in 0..300 {
        now += Duration::from_millis(10);
        exchange(&mut nc, &mut nb, now);
        nc.handle_timeout(now);
        nb.handle_timeout(now);
        serve_syncs(&mut nc, &mut nb, now);
    }
    assert_eq!(nb.nodes_of("Newcomer").len(), 1);
    assert!(nc
        .members()
        .iter()
        .any(|m| m.id == nb.id() && m.state.is_active()));
}

#[test]
fn a_member_cannot_speak_for_another_when_sources_are_authenticated() {
    let (_na, mut nb, now) = pair();
    nb.set_require_source_match(true);
    let liar: SocketAddr = "127.0.0.1:9999".parse().unwrap();
    // A well-formed packet whose SWIM source is 127.0.0.1:7001, arriving from elsewhere.
    let mut packet = Vec::new();
    packet.extend_from_slice(&[4, 127, 0, 0, 1, 0x1b, 0x59, 0, 0, 0, 0, 0, 0, 0, 1]); // src 7001#1
    packet.extend_from_slice(&[0, 9]); // incarnation 9
    packet.extend_from_slice(&[4, 127, 0, 0, 1, 0x1b, 0x5a, 0, 0, 0, 0, 0, 0, 0, 1]); // dst 7002#1
    packet.extend_from_slice(&[8]); // Gossip
    let mut forged = Vec::new();
    write_unsealed(cluster_tag("mesh"), &packet, &mut forged);
    let before = nb.stats().dropped_malformed;
    nb.handle_datagram(now, liar, &forged);
    assert_eq!(nb.stats().dropped_malformed, before + 1);
}
