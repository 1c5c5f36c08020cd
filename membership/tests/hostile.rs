//! Hostile input: bad datagrams are counted and dropped, never panic the core and never change
//! its state; and no member can speak for another: forged records pushed, gossiped or relayed are
//! refused, and a peer's `down` list never marks a live member down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{addr, signed_by, toy_sig, Cluster};
use foca::{Codec, Header, Message};
use mesh_membership::swim::{
    cluster_tag, write_unsealed, Item, SwimCodec, SwimId, DATAGRAM_MAGIC, DATAGRAM_VERSION,
};
use mesh_membership::{MemberState, Membership, MembershipConfig};
use mesh_protocol::{
    MemberId, NodeRecord, Proof, ServiceInfo, SignedRecord, SyncRequest, SyncResponse,
};
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
    let (a, b) = (na.id().addr, nb.id().addr);
    while let Some(t) = na.poll_sync() {
        let resp = nb.handle_sync_request(now, a, t.request);
        na.handle_sync_response::<String>(now, t.peer, Ok(resp));
    }
    while let Some(t) = nb.poll_sync() {
        let resp = na.handle_sync_request(now, b, t.request);
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

// ---- No member speaks for another. Node 0 (A) serves Greeter.Hello (not idempotent), node 1
// (B) observes, node 2 (L) lies about A. Every node signs with its own (toy) credentials.

const A: usize = 0;
const B: usize = 1;
const L: usize = 2;

/// A's record as a liar would like it: newer, leaving, its endpoint idempotent.
fn forged_a(c: &Cluster) -> NodeRecord {
    let mut r = c.nodes[A].own_record().clone();
    r.version += 10;
    r.leaving = true;
    r.services[0].endpoints[0].idempotent = true;
    r
}

/// Every way a liar can dress up a record of A: signed with its own credentials, with a
/// certificate naming A but a made-up signature, with no proof, and with A's real proof of an
/// older record over altered bytes.
fn forgeries(c: &Cluster, r: &NodeRecord) -> Vec<SignedRecord> {
    let bytes = r.encode().unwrap();
    let real = signed_by(addr(A), c.nodes[A].own_record());
    vec![
        signed_by(addr(L), r),
        SignedRecord::new(
            bytes.clone(),
            Proof {
                cert: addr(A).to_string().into_bytes(),
                sig: toy_sig(addr(L), &bytes),
            },
        ),
        SignedRecord::new(bytes.clone(), Proof::default()),
        SignedRecord::new(bytes, real.proof),
    ]
}

/// What every honest node believes about A: alive under its id, serving Greeter.Hello, not
/// idempotent, at its real version.
fn assert_a_untouched(c: &Cluster) {
    let a = c.nodes[A].own_record().clone();
    for i in [A, B] {
        let nodes = c.nodes[i].nodes_of("Greeter");
        assert_eq!(nodes.len(), 1, "node {i} lost A's service");
        assert_eq!(nodes[0].node, a.id, "node {i}");
        assert!(!nodes[0].service.endpoints[0].idempotent, "node {i}");
        let m = c.nodes[i].members();
        let state = m.iter().find(|m| m.id == a.id).map(|m| m.state);
        assert_eq!(state, Some(MemberState::Alive), "node {i} on A");
    }
    assert_eq!(c.nodes[A].id().generation, 1, "A had to rejoin");
    let held = c.nodes[B]
        .visible_records()
        .into_iter()
        .find(|r| r.id.addr == addr(A));
    assert_eq!(held, Some(a));
}

#[test]
fn a_member_pushing_forged_records_for_another_changes_nothing() {
    let mut c = Cluster::new(3);
    let before = c.view(B);
    let now = c.now;
    let records = forgeries(&c, &forged_a(&c));
    let n = records.len() as u64;
    let _ = c.nodes[B].handle_sync_request(
        now,
        addr(L),
        SyncRequest {
            digests: vec![],
            full: false,
            records,
        },
    );
    c.run(Duration::from_secs(2));
    assert_eq!(c.nodes[B].stats().records_forged, n);
    assert_eq!(c.view(B), before);
    assert_a_untouched(&c);
}

#[test]
fn a_forged_record_of_generation_max_for_another_address_is_refused() {
    let mut c = Cluster::new(3);
    let now = c.now;
    let mut r = c.nodes[A].own_record().clone();
    r.id.generation = u64::MAX;
    r.services.clear();
    let _ = c.nodes[B].handle_sync_request(
        now,
        addr(L),
        SyncRequest {
            digests: vec![],
            full: false,
            records: vec![signed_by(addr(L), &r)],
        },
    );
    // And in an answer to B's own sync with the liar.
    c.nodes[B].handle_sync_response::<String>(
        now,
        addr(L),
        Ok(SyncResponse {
            records: vec![signed_by(addr(L), &r)],
            want: vec![],
            down: vec![],
        }),
    );
    c.run(Duration::from_secs(2));
    assert_eq!(c.nodes[B].stats().records_forged, 2);
    assert_a_untouched(&c);
}

/// A `Broadcast` datagram from L to B carrying `items`.
fn broadcast(c: &Cluster, items: &[Vec<u8>]) -> Vec<u8> {
    let mut d = Vec::new();
    let header = Header {
        src: SwimId(c.nodes[L].id()),
        src_incarnation: 0,
        dst: SwimId(c.nodes[B].id()),
        message: Message::Broadcast,
    };
    SwimCodec.encode_header(&header, &mut d).unwrap();
    for item in items {
        d.extend_from_slice(&(item.len() as u16).to_be_bytes());
        d.extend_from_slice(item);
    }
    let mut datagram = Vec::new();
    write_unsealed(cluster_tag("mesh"), &d, &mut datagram);
    datagram
}

#[test]
fn a_member_gossiping_forged_records_for_another_changes_nothing() {
    let mut c = Cluster::new(3);
    let before = c.view(B);
    let forged = forged_a(&c);
    // The liar answers every pull with its forgeries of A.
    let records = forgeries(&c, &forged);
    c.liars.insert(
        L,
        Box::new(move |_, _| SyncResponse {
            records: records.clone(),
            want: vec![],
            down: vec![],
        }),
    );
    // A whole record inline (as gossip used to carry them): refused by the decoder.
    let mut inline = vec![2];
    inline.extend_from_slice(&forged.encode().unwrap());
    let now = c.now;
    let errors = c.nodes[B].stats().swim_errors;
    let d = broadcast(&c, &[inline]);
    c.nodes[B].handle_datagram(now, addr(L), &d);
    assert_eq!(c.nodes[B].stats().swim_errors, errors + 1);
    // Digests of newer versions of A, one at generation u64::MAX: B pulls from L, refuses the
    // forgeries, asks A itself, and keeps what it had.
    let digests: Vec<Vec<u8>> = [
        (forged.id, forged.version),
        (MemberId::new(addr(A), u64::MAX), 1),
    ]
    .into_iter()
    .map(|(id, version)| Item::Digest { id, version }.encode())
    .collect();
    c.syncs.clear();
    let d = broadcast(&c, &digests[..1]);
    c.nodes[B].handle_datagram(now, addr(L), &d);
    c.run(Duration::from_millis(200));
    let (d, now) = (broadcast(&c, &digests[1..]), c.now);
    c.nodes[B].handle_datagram(now, addr(L), &d);
    c.run(Duration::from_secs(2));
    assert!(
        c.syncs.contains(&(B, L)),
        "B pulled from the peer that gossiped"
    );
    assert!(c.syncs.contains(&(B, A)), "then from the owner");
    assert!(c.nodes[B].stats().records_forged >= 4);
    assert_eq!(c.view(B), before);
    assert_a_untouched(&c);
}

#[test]
fn a_down_list_is_a_hint_never_a_verdict() {
    let mut c = Cluster::new(3);
    let before = c.view(B);
    let a = c.nodes[A].id();
    let now = c.now;
    let down = vec![a, MemberId::new(a.addr, a.generation + 1), c.nodes[B].id()];
    c.nodes[B].handle_sync_response::<String>(
        now,
        addr(L),
        Ok(SyncResponse {
            records: vec![],
            want: vec![],
            down: down.clone(),
        }),
    );
    // Also as the answer to B's next full syncs with L.
    c.liars.insert(
        L,
        Box::new(move |_, _| SyncResponse {
            records: vec![],
            want: vec![],
            down: down.clone(),
        }),
    );
    c.run(Duration::from_secs(10));
    assert_eq!(c.view(B), before);
    assert_a_untouched(&c);
    assert!(c.syncs.contains(&(B, L)), "B synced with the liar");
}

#[test]
fn a_record_relayed_by_any_member_is_accepted_with_its_owners_proof() {
    let mut c = Cluster::new(3);
    // A changes its record; L (a relay) holds it and gossips its digest to B before A does.
    let now = c.now;
    c.nodes[A].update_record(now, |r| {
        r.labels.insert("zone".into(), "b".into());
    });
    let fresh = c.nodes[A].own_record().clone();
    let relayed = signed_by(addr(A), &fresh);
    let _ = c.nodes[L].handle_sync_request(
        now,
        addr(A),
        SyncRequest {
            digests: vec![],
            full: false,
            records: vec![relayed],
        },
    );
    let digest = Item::Digest {
        id: fresh.id,
        version: fresh.version,
    }
    .encode();
    while c.nodes[A].poll_transmit().is_some() {} // A's own gossip is lost
    let d = broadcast(&c, &[digest]);
    c.nodes[B].handle_datagram(now, addr(L), &d);
    // B pulls from the peer that gossiped the digest, which relays A's signed record.
    let task = c.nodes[B].poll_sync().unwrap();
    assert_eq!(task.peer, addr(L));
    let resp = c.nodes[L].handle_sync_request(now, addr(B), task.request);
    c.nodes[B].handle_sync_response::<String>(now, addr(L), Ok(resp));
    let held = c.nodes[B]
        .visible_records()
        .into_iter()
        .find(|r| r.id.addr == addr(A));
    assert_eq!(held, Some(fresh));
    assert_eq!(c.nodes[B].stats().records_forged, 0);
}
