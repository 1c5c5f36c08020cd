//! Which deliveries a publish makes, round by round, without IO: the first round reaches every
//! node with plain subscribers and one member of each queue group; later rounds (acknowledged
//! publishes only) move each group whose delivery failed to a member not yet tried.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use mesh_protocol::MemberId;

/// One delivery of a round: to one node, for its plain subscribers, some of the topic's queue
/// groups, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Target {
    /// The node's plain subscribers get the message.
    pub(crate) plain: bool,
    /// The queue groups this node serves the message for.
    pub(crate) groups: Vec<String>,
}

/// One round: a target per node.
pub(crate) type Round = BTreeMap<SocketAddr, Target>;

/// The deliveries of one publish.
#[derive(Debug, Default)]
pub(crate) struct Planner {
    plain: BTreeSet<SocketAddr>,
    /// Group name -> member nodes.
    groups: BTreeMap<String, Vec<SocketAddr>>,
    /// Group name -> members already given the message.
    tried: BTreeMap<String, BTreeSet<SocketAddr>>,
}

impl Planner {
    /// A planner for a topic with these subscribers (node, queue group).
    pub(crate) fn new(subscribers: &[(MemberId, Option<String>)]) -> Self {
        let mut plan = Self::default();
        for (node, queue) in subscribers {
            match queue {
                None => {
                    plan.plain.insert(node.addr);
                }
                Some(g) => plan.groups.entry(g.clone()).or_default().push(node.addr),
            }
        }
        plan
    }

    /// The first round: every node with plain subscribers, and for each group the member `pick`
    /// chooses among all of them.
    pub(crate) fn first_round(
        &mut self,
        mut pick: impl FnMut(&[SocketAddr]) -> Option<SocketAddr>,
    ) -> Round {
        let mut round = Round::new();
        for node in &self.plain {
            round.entry(*node).or_default().plain = true;
        }
        for (group, members) in &self.groups {
            if let Some(node) = pick(members) {
                self.tried.entry(group.clone()).or_default().insert(node);
                round.entry(node).or_default().groups.push(group.clone());
            }
        }
        round
    }

    /// The next round, after the deliveries of `failed` groups failed: each goes to a member
    /// `pick` chooses among those not yet tried. A group with none left is dropped; plain
    /// deliveries are never repeated (every plain subscriber node was in the first round).
    pub(crate) fn retry_round(
        &mut self,
        failed: impl IntoIterator<Item = String>,
        mut pick: impl FnMut(&[SocketAddr]) -> Option<SocketAddr>,
    ) -> Round {
        let mut round = Round::new();
        for group in failed {
            let Some(members) = self.groups.get(&group) else {
                continue;
            };
            let tried = self.tried.entry(group.clone()).or_default();
            let untried: Vec<SocketAddr> = members
                .iter()
                .copied()
                .filter(|n| !tried.contains(n))
                .collect();
            if let Some(node) = pick(&untried) {
                tried.insert(node);
                round.entry(node).or_default().groups.push(group);
            }
        }
        round
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn sub(port: u16, group: Option<&str>) -> (MemberId, Option<String>) {
        (MemberId::new(addr(port), 1), group.map(str::to_owned))
    }

    fn first(members: &[SocketAddr]) -> Option<SocketAddr> {
        members.first().copied()
    }

    #[test]
    fn the_first_round_reaches_every_plain_node_and_one_member_per_group() {
        let mut p = Planner::new(&[
            sub(1, None),
            sub(2, None),
            sub(2, Some("billing")),
            sub(3, Some("billing")),
            sub(4, Some("audit")),
        ]);
        let round = p.first_round(first);
        assert_eq!(
            round,
            Round::from([
                (
                    addr(1),
                    Target {
                        plain: true,
                        groups: vec![]
                    }
                ),
                (
                    addr(2),
                    Target {
                        plain: true,
                        groups: vec!["billing".into()]
                    }
                ),
                (
                    addr(4),
                    Target {
                        plain: false,
                        groups: vec!["audit".into()]
                    }
                ),
            ])
        );
    }

    #[test]
    fn a_failed_group_moves_to_each_untried_member_once_then_stops() {
        let mut p = Planner::new(&[sub(1, Some("g")), sub(2, Some("g")), sub(3, Some("g"))]);
        let mut seen = vec![];
        let round = p.first_round(first);
        seen.extend(round.keys().copied());
        loop {
            let round = p.retry_round(["g".to_owned()], first);
            if round.is_empty() {
                break;
            }
            assert_eq!(round.len(), 1);
            let (node, target) = round.into_iter().next().expect("one target");
            assert_eq!(target.groups, ["g"]);
            assert!(!target.plain);
            assert!(!seen.contains(&node), "{node} tried twice");
            seen.push(node);
        }
        seen.sort();
        assert_eq!(seen, [addr(1), addr(2), addr(3)]);
    }

    #[test]
    fn retries_never_repeat_plain_deliveries_nor_invent_groups() {
        let mut p = Planner::new(&[sub(1, None), sub(2, Some("g"))]);
        let _ = p.first_round(first);
        assert!(p.retry_round(["other".to_owned()], first).is_empty());
        // The group's only member is tried: nothing is left.
        assert!(p.retry_round(["g".to_owned()], first).is_empty());
    }

    #[test]
    fn the_picker_sees_only_untried_members() {
        let mut p = Planner::new(&[sub(1, Some("g")), sub(2, Some("g"))]);
        let _ = p.first_round(|m| m.last().copied());
        let mut offered = vec![];
        let round = p.retry_round(["g".to_owned()], |m| {
            offered = m.to_vec();
            m.first().copied()
        });
        assert_eq!(offered, [addr(1)]);
        assert!(round.contains_key(&addr(1)));
    }

    #[test]
    fn a_picker_that_finds_nothing_leaves_the_group_out() {
        let mut p = Planner::new(&[sub(1, None), sub(2, Some("g"))]);
        let round = p.first_round(|_| None);
        assert_eq!(round.len(), 1, "only the plain node: {round:?}");
        assert!(round[&addr(1)].plain);
    }

    #[test]
    fn no_subscribers_no_deliveries() {
        let mut p = Planner::new(&[]);
        assert!(p.first_round(first).is_empty());
        assert!(p.retry_round(["g".to_owned()], first).is_empty());
    }
}
