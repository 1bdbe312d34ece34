//! "What if": the body every head of the affected districts gets now and would get without a
//! venue, a district or a node, and which heads would be left with nothing (the shortfall).
//!
//! Both answers come from [`select_bodies`] itself, so the what-if never disagrees with what
//! the heads would really be told.

use std::collections::HashMap;

use crate::node::{Node, Role, UnixMillis};
use crate::selection::{
    Head, LatencySample, Observations, Policy, SelectionSettings, select_bodies,
};

/// What to take away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Without<'a> {
    /// Every node of this venue (in whichever district).
    Venue(&'a str),
    /// Every node of this district.
    District(&'a str),
    /// One node.
    Node(&'a str),
}

impl Without<'_> {
    /// Whether `node` goes away.
    pub fn removes(&self, node: &Node) -> bool {
        match *self {
            Without::Venue(venue) => node.venue == venue,
            Without::District(district) => node.district == district,
            Without::Node(id) => node.id == id,
        }
    }
}

/// One head's answer now and without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadOutcome<'a> {
    /// The head.
    pub head: &'a Node,
    /// Whether the head itself goes away (it then needs nothing).
    pub head_removed: bool,
    /// The policy and first body of its answer now.
    pub now: (Policy, Option<&'a Node>),
    /// The policy and first body of its answer without them (`Policy::None` when removed).
    pub without: (Policy, Option<&'a Node>),
}

impl HeadOutcome<'_> {
    /// A head that stays, has a body now and would have none: part of the shortfall.
    pub fn is_shortfall(&self) -> bool {
        !self.head_removed && self.now.1.is_some() && self.without.1.is_none()
    }
}

/// Every head of every district that loses a node to `without`, with its first body now and
/// without (ranked with its own measured latencies from `latency_of`), by head id.
pub fn what_if<'a, 'l>(
    nodes: &[&'a Node],
    without: Without<'_>,
    now: UnixMillis,
    settings: &SelectionSettings,
    latency_of: impl Fn(&str) -> Option<&'l HashMap<String, LatencySample>>,
) -> Vec<HeadOutcome<'a>> {
    let mut districts: Vec<&str> = nodes
        .iter()
        .filter(|node| without.removes(node))
        .map(|node| node.district.as_str())
        .collect();
    districts.sort_unstable();
    districts.dedup();
    let mut heads: Vec<&'a Node> = nodes
        .iter()
        .copied()
        .filter(|node| {
            node.roles.contains(Role::Head) && districts.contains(&node.district.as_str())
        })
        .collect();
    heads.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    heads
        .into_iter()
        .map(|head_node| {
            let head = Head {
                district: &head_node.district,
                venue: &head_node.venue,
                owner: &head_node.owner,
            };
            let observations = Observations {
                latency: latency_of(&head_node.id),
                unreachable: None,
            };
            let first = |bodies: Vec<&'a Node>| {
                let selection = select_bodies(&head, bodies, now, settings, &observations);
                (
                    selection.policy,
                    selection.bodies.first().map(|candidate| candidate.node),
                )
            };
            let head_removed = without.removes(head_node);
            let in_district = |node: &&'a Node| node.district == head_node.district;
            let before = first(nodes.iter().copied().filter(in_district).collect());
            let after = if head_removed {
                (Policy::None, None)
            } else {
                first(
                    nodes
                        .iter()
                        .copied()
                        .filter(in_district)
                        .filter(|node| !without.removes(node))
                        .collect(),
                )
            };
            HeadOutcome {
                head: head_node,
                head_removed,
                now: before,
                without: after,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;
    use crate::node::Roles;
    use crate::selection::tests::{NOW, SETTINGS, body, idle};

    fn head(id: &str, district: &str, venue: &str) -> Node {
        let mut node = body(id, district, venue, "acme");
        node.roles = Roles::NONE.with(Role::Head);
        node
    }

    fn check(fleet: &[Node], without: Without<'_>, expected: Expect) {
        let nodes: Vec<&Node> = fleet.iter().collect();
        let outcomes = what_if(&nodes, without, NOW, &SETTINGS, |_| None);
        let name = |(policy, body): (Policy, Option<&Node>)| {
            format!(
                "{}/{}",
                body.map_or("-", |node| node.id.as_str()),
                policy.as_str()
            )
        };
        let lines: Vec<String> = outcomes
            .iter()
            .map(|outcome| {
                format!(
                    "{}: now {} without {}{}{}",
                    outcome.head.id,
                    name(outcome.now),
                    name(outcome.without),
                    if outcome.head_removed {
                        " (head removed)"
                    } else {
                        ""
                    },
                    if outcome.is_shortfall() {
                        " SHORTFALL"
                    } else {
                        ""
                    },
                )
            })
            .collect();
        expected.assert_eq(&lines.join("\n"));
    }

    fn fleet() -> Vec<Node> {
        vec![
            head("h-rupel", "bxl1", "rupelmonde"),
            head("h-ghent", "bxl1", "ghent"),
            head("h-ams", "ams1", "zuid"),
            idle(body("b-rupel", "bxl1", "rupelmonde", "acme")),
            body("b-cloud", "bxl1", "cloud-seven", "acme"),
            body("b-ams", "ams1", "zuid", "acme"),
        ]
    }

    #[test]
    fn without_a_venue_its_heads_fall_back_across_venues() {
        check(
            &fleet(),
            Without::Venue("rupelmonde"),
            expect![[r#"
                h-ghent: now b-rupel/cross_venue without b-cloud/cross_venue
                h-rupel: now b-rupel/quickroute without -/none (head removed)"#]],
        );
    }

    #[test]
    fn without_the_last_bodies_the_heads_are_the_shortfall() {
        check(
            &fleet(),
            Without::Node("b-ams"),
            expect!["h-ams: now b-ams/quickroute without -/none SHORTFALL"],
        );
        let mut fleet = fleet();
        fleet.retain(|node| node.id != "b-cloud");
        check(
            &fleet,
            Without::Node("b-rupel"),
            expect![[r#"
                h-ghent: now b-rupel/cross_venue without -/none SHORTFALL
                h-rupel: now b-rupel/quickroute without -/none SHORTFALL"#]],
        );
    }

    #[test]
    fn a_district_nobody_uses_changes_nothing() {
        check(&fleet(), Without::District("nowhere"), expect![""]);
    }
}
