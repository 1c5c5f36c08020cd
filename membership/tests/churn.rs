//! A node that runs among short-lived members (CLI processes that join and leave, or crash)
//! stays the same size: 10,000 of them join and leave through one node on a virtual clock, and
//! every table it holds stays under its cap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mesh_membership::{Membership, MembershipConfig, TableSizes};
use mesh_protocol::{to_msgpack, MemberId, ServiceInfo, SyncRequest};

fn transient_addr(i: u32) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(0x0a01_0000 + i), 7946))
}

/// Routes everything between the hub and the transient `t` (while it lives); whatever else the
/// hub sends goes nowhere, and its syncs with the dead fail at once.
fn exchange(hub: &mut Membership, t: Option<&mut Membership>, now: Instant) {
    let hub_addr = hub.id().addr;
    let mut t = t;
    for _ in 0..3 {
        let peer = t.as_ref().map(|t| t.id().addr);
        while let Some(x) = hub.poll_transmit() {
            if let Some(t) = t.as_deref_mut().filter(|_| Some(x.dst) == peer) {
                t.handle_datagram(now, hub_addr, &x.data);
            }
        }
        while let Some(s) = hub.poll_sync() {
            match t.as_deref_mut().filter(|_| Some(s.peer) == peer) {
                Some(t) => {
                    let r = t.handle_sync_request(now, hub_addr, s.request);
                    hub.handle_sync_response::<String>(now, s.peer, Ok(r));
                }
                None => hub.handle_sync_response::<String>(now, s.peer, Err("gone".into())),
            }
        }
        if let Some(t) = t.as_deref_mut() {
            let a = t.id().addr;
            while let Some(x) = t.poll_transmit() {
                if x.dst == hub_addr {
                    hub.handle_datagram(now, a, &x.data);
                }
            }
            while let Some(s) = t.poll_sync() {
                if s.peer == hub_addr {
                    let r = hub.handle_sync_request(now, a, s.request);
                    t.handle_sync_response::<String>(now, s.peer, Ok(r));
                } else {
                    t.handle_sync_response::<String>(now, s.peer, Err("gone".into()));
                }
            }
        }
    }
}

fn assert_bounded(s: &TableSizes, cfg: &MembershipConfig, cycle: u32) {
    let ctx = format!("after {cycle} cycles: {s:?}");
    assert!(s.registry <= cfg.max_records, "{ctx}");
    assert!(s.dormant <= cfg.max_dead, "{ctx}");
    assert!(s.swim_down <= cfg.max_dead, "{ctx}");
    // SWIM's table: the down ones, plus the few alive (or crashed, not yet detected) at once.
    assert!(s.swim_members <= cfg.max_dead + s.swim_active, "{ctx}");
    assert!(s.swim_active <= 32, "{ctx}");
    assert!(
        s.wanted <= cfg.max_wanted && s.verify <= cfg.max_wanted,
        "{ctx}"
    );
    assert!(s.pulls_in_flight <= cfg.max_concurrent_syncs, "{ctx}");
    // Timers: a few per live member and the periodic ones, none per dead member.
    assert!(s.timers <= 64, "{ctx}");
    assert!(s.swim_updates <= cfg.max_dead + s.swim_active, "{ctx}");
    assert!(
        s.registry_broadcasts <= cfg.max_dead + s.swim_active,
        "{ctx}"
    );
}

#[test]
fn ten_thousand_join_leave_cycles_keep_every_table_bounded() {
    let mut cfg = MembershipConfig::local();
    // Small caps, so that 10,000 cycles (2,000 virtual seconds, 60 s retention) overflow them.
    cfg.max_dead = 128;
    cfg.max_wanted = 32;
    cfg.max_down_list = 16;
    let hub_addr: SocketAddr = "10.0.0.1:7946".parse().unwrap();
    let mut hub = Membership::new(cfg.clone(), MemberId::new(hub_addr, 1), "hub", 1);
    let mut now = Instant::now();
    let mut peak = TableSizes::default();
    for i in 0..10_000u32 {
        let a = transient_addr(i);
        let mut t = Membership::new(
            cfg.clone(),
            MemberId::new(a, 1),
            format!("t{i}"),
            7 + u64::from(i),
        );
        t.update_record(now, |r| {
            r.services.push(ServiceInfo {
                name: "cli".into(),
                ..Default::default()
            })
        });
        t.join(now, &[hub_addr]);
        let mut t = Some(t);
        for step in 0..20 {
            now += Duration::from_millis(10);
            hub.handle_timeout(now);
            if let Some(t) = t.as_mut() {
                t.handle_timeout(now);
            }
            if step == 12 {
                // Half leave gracefully, half crash.
                if i % 2 == 0 {
                    if let Some(t) = t.as_mut() {
                        t.leave(now);
                    }
                } else {
                    t = None;
                }
            }
            exchange(&mut hub, t.as_mut(), now);
        }
        let s = hub.table_sizes();
        assert_bounded(&s, &cfg, i);
        peak = TableSizes {
            registry: peak.registry.max(s.registry),
            dormant: peak.dormant.max(s.dormant),
            swim_members: peak.swim_members.max(s.swim_members),
            swim_active: peak.swim_active.max(s.swim_active),
            swim_down: peak.swim_down.max(s.swim_down),
            wanted: peak.wanted.max(s.wanted),
            verify: peak.verify.max(s.verify),
            pulls_in_flight: peak.pulls_in_flight.max(s.pulls_in_flight),
            timers: peak.timers.max(s.timers),
            swim_updates: peak.swim_updates.max(s.swim_updates),
            registry_broadcasts: peak.registry_broadcasts.max(s.registry_broadcasts),
        };
    }
    let stats = hub.stats().clone();
    println!("peak {peak:?}\n{stats:?}");
    // The caps were reached, and held by forgetting the oldest dead.
    assert!(stats.dead_evicted > 0, "{stats:?}");
    assert!(peak.dormant == cfg.max_dead, "{peak:?}");
    // The hub still works, and a full sync's down list is the capped hint, not the history.
    let full = hub.handle_sync_request(
        now,
        transient_addr(99_999),
        SyncRequest {
            digests: vec![],
            full: true,
            records: vec![],
        },
    );
    assert!(full.down.len() <= cfg.max_down_list, "{}", full.down.len());
    assert!(to_msgpack(&full).unwrap().len() < 64 * 1024);
    // After a quiet retention period (and the detection of the last crashes), only the hub is
    // left.
    let end = now + cfg.dead_retention + Duration::from_secs(10);
    while now < end {
        now += Duration::from_millis(100);
        hub.handle_timeout(now);
        exchange(&mut hub, None, now);
    }
    let s = hub.table_sizes();
    assert_eq!(
        (s.registry, s.dormant, s.swim_down, s.swim_members),
        (1, 0, 0, 0),
        "{s:?}"
    );
    assert!(hub.stats().dead_expired > 0);
}

#[test]
fn members_past_max_records_are_refused_and_counted() {
    let mut cfg = MembershipConfig::local();
    cfg.max_records = 4;
    let hub_addr: SocketAddr = "10.0.0.1:7946".parse().unwrap();
    let mut hub = Membership::new(cfg.clone(), MemberId::new(hub_addr, 1), "hub", 1);
    let mut now = Instant::now();
    // Ten members join and stay: the hub registers three besides itself, refuses the rest.
    let mut others: Vec<Membership> = (0..10u32)
        .map(|i| {
            let mut t = Membership::new(
                MembershipConfig::local(),
                MemberId::new(transient_addr(i), 1),
                format!("t{i}"),
                u64::from(i) + 3,
            );
            t.join(now, &[hub_addr]);
            t
        })
        .collect();
    for _ in 0..100 {
        now += Duration::from_millis(10);
        hub.handle_timeout(now);
        for t in &mut others {
            t.handle_timeout(now);
            exchange(&mut hub, Some(t), now);
        }
        let s = hub.table_sizes();
        assert!(s.registry <= cfg.max_records, "{s:?}");
        assert!(s.swim_active <= cfg.max_records, "{s:?}");
    }
    assert!(hub.stats().members_refused > 0, "{:?}", hub.stats());
    assert_eq!(hub.num_active(), cfg.max_records);
}
