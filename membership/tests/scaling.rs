//! SWIM's cluster-size-dependent timings follow the members a core sees (memberlist's
//! `suspicionTimeout` and `retransmitLimit`), not a size guessed once at start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Cluster;

#[test]
fn swim_rescales_to_the_members_it_sees() {
    let mut cfg = mesh_membership::MembershipConfig::lan(2);
    // LAN timings converge slowly on a virtual clock; the scaling is what is checked here.
    cfg.swim.probe_period = Duration::from_millis(200);
    cfg.swim.probe_rtt = Duration::from_millis(100);
    let scaling = cfg.scaling.expect("lan scales");
    let alone = mesh_membership::Membership::new(
        cfg.clone(),
        mesh_protocol::MemberId::new(common::addr(99), 1),
        "alone",
        1,
    );
    let period = cfg.swim.probe_period;
    assert_eq!(
        alone.config().swim.suspect_to_down_after,
        scaling.suspect_to_down_after(1, period)
    );
    let c = Cluster::with_config(24, cfg);
    for node in &c.nodes {
        let swim = &node.config().swim;
        assert_eq!(
            swim.suspect_to_down_after,
            scaling.suspect_to_down_after(24, period)
        );
        assert_eq!(swim.max_transmissions, scaling.max_transmissions(24));
        assert!(swim.suspect_to_down_after > alone.config().swim.suspect_to_down_after);
    }
}
