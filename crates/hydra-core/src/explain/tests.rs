//! Table tests of the explain trace and its agreement with `select_bodies`.

use std::collections::{HashMap, HashSet};

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;
use crate::LatencySample;
use crate::node::Roles;
use crate::selection::select_bodies;
use crate::selection::tests::{HEAD, NOW, SETTINGS, body, fleet_with_observations, idle, vram};

fn render(explanation: &Explanation<'_>) -> String {
    let mut lines = vec![format!("policy {}", explanation.policy.as_str())];
    for considered in &explanation.considered {
        let place = if considered.same_venue { "" } else { " (x)" };
        let verdict = match &considered.verdict {
            Verdict::Kept { rank, keys } => {
                let keys: Vec<String> = keys
                    .iter()
                    .map(|key| match key {
                        RankKey::Latency { rtt_ms, age_ms } => {
                            format!("latency {rtt_ms}ms/{age_ms}ms old")
                        }
                        RankKey::Unmeasured => "unmeasured".to_owned(),
                        RankKey::Own(own) => format!("own {own}"),
                        RankKey::Cost(tier) => format!("cost {}", tier.as_str()),
                        RankKey::Idle(idle) => format!("idle {idle}"),
                        RankKey::VramMb(mb) => format!("vram {mb}"),
                    })
                    .collect();
                format!("kept #{rank}: {}", keys.join(", "))
            }
            Verdict::LeftOut(reason) => format!("left out: {}", reason.as_str()),
        };
        lines.push(format!("{}{place} {verdict}", considered.node.id));
    }
    lines.join("\n")
}

fn check(fleet: &[Node], observations: Observations<'_>, expected: Expect) {
    let explanation = explain_selection(&HEAD, fleet, NOW, &SETTINGS, &observations);
    expected.assert_eq(&render(&explanation));
}

#[test]
fn quickroute_keeps_the_venue_and_says_the_gate_left_the_rest_out() {
    let mut drained = body("b-drained", "bxl1", "rupelmonde", "acme");
    drained.drained = true;
    let mut offline = body("b-offline", "bxl1", "rupelmonde", "acme");
    offline.last_heartbeat = Some(NOW - 60_000);
    let mut head = body("h-1", "bxl1", "rupelmonde", "acme");
    head.roles = Roles::NONE.with(Role::Head);
    check(
        &[
            vram(body("b-venue", "bxl1", "rupelmonde", "acme"), 24_000),
            idle(body("b-venue-idle", "bxl1", "rupelmonde", "acme")),
            idle(body("b-other-venue", "bxl1", "cloud-seven", "acme")),
            body("b-far", "ams1", "rupelmonde", "acme"),
            drained,
            offline,
            head,
        ],
        Observations::default(),
        expect![[r#"
            policy quickroute
            b-venue-idle kept #1: idle true, vram 8192
            b-venue kept #2: idle false, vram 24000
            b-drained left out: drained
            b-offline left out: offline
            b-other-venue (x) left out: quickroute_open
            h-1 left out: not_a_body"#]],
    );
}

#[test]
fn cross_venue_shows_latency_ownership_and_cost_in_order() {
    let latency: HashMap<String, LatencySample> = [
        (
            "b-fast".to_owned(),
            LatencySample {
                rtt_ms: 3,
                measured_at: NOW - 2_000,
            },
        ),
        (
            "b-stale".to_owned(),
            LatencySample {
                rtt_ms: 1,
                measured_at: NOW - 700_000,
            },
        ),
    ]
    .into_iter()
    .collect();
    let unreachable: HashSet<String> = ["b-venue".to_owned()].into_iter().collect();
    let mut shared = body("b-shared", "bxl1", "ghent", "globex");
    shared.allowed_orgs = vec!["acme".into()];
    shared.cost_tier = CostTier::Leased;
    let foreign = body("b-foreign", "bxl1", "ghent", "globex");
    check(
        &[
            body("b-venue", "bxl1", "rupelmonde", "acme"),
            body("b-fast", "bxl1", "cloud-seven", "acme"),
            idle(body("b-stale", "bxl1", "cloud-seven", "acme")),
            shared,
            foreign,
        ],
        Observations {
            latency: Some(&latency),
            unreachable: Some(&unreachable),
        },
        expect![[r#"
            policy cross_venue
            b-fast (x) kept #1: latency 3ms/2000ms old, own true, cost owned, idle false, vram 8192
            b-stale (x) kept #2: unmeasured, own true, cost owned, idle true, vram 8192
            b-shared (x) kept #3: unmeasured, own false, cost leased, idle false, vram 8192
            b-foreign (x) left out: other_owner
            b-venue left out: named_unreachable"#]],
    );
}

#[test]
fn nothing_kept_is_policy_none_with_every_reason() {
    let mut drained = body("b-drained", "bxl1", "cloud-seven", "acme");
    drained.drained = true;
    // Offline wins over drained: a node that is both is reported for the heartbeat it lacks.
    let mut both = body("b-both", "bxl1", "cloud-seven", "acme");
    both.drained = true;
    both.last_heartbeat = None;
    check(
        &[drained, both],
        Observations::default(),
        expect![[r#"
            policy none
            b-both (x) left out: offline
            b-drained (x) left out: drained"#]],
    );
}

proptest! {
    /// The trace agrees with `select_bodies`: the same policy, the kept bodies in order are its
    /// answer, every node of the district appears once, and each reason is true of its node.
    #[test]
    fn explain_agrees_with_select_bodies(
        (fleet, latency, unreachable) in fleet_with_observations(),
    ) {
        let observations = Observations { latency: Some(&latency), unreachable: Some(&unreachable) };
        let selection = select_bodies(&HEAD, &fleet, NOW, &SETTINGS, &observations);
        let explanation = explain_selection(&HEAD, &fleet, NOW, &SETTINGS, &observations);
        prop_assert_eq!(explanation.policy, selection.policy);
        let kept: Vec<&str> = explanation
            .considered
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Kept { .. }))
            .map(|c| c.node.id.as_str())
            .collect();
        let chosen: Vec<&str> = selection.bodies.iter().map(|c| c.node.id.as_str()).collect();
        prop_assert_eq!(kept, chosen);
        let in_district = fleet.iter().filter(|n| n.district == HEAD.district).count();
        prop_assert_eq!(explanation.considered.len(), in_district);
        for considered in &explanation.considered {
            let node = considered.node;
            match considered.verdict {
                Verdict::Kept { .. } => {}
                Verdict::LeftOut(LeftOut::NotABody) => prop_assert!(!node.roles.contains(Role::Body)),
                Verdict::LeftOut(LeftOut::Offline) => {
                    prop_assert_eq!(node.status(NOW, SETTINGS.heartbeat_timeout_ms), NodeStatus::Offline)
                }
                Verdict::LeftOut(LeftOut::Drained) => prop_assert!(node.drained),
                Verdict::LeftOut(LeftOut::OtherOwner) => prop_assert!(!node.usable_by(HEAD.owner)),
                Verdict::LeftOut(LeftOut::NamedUnreachable) => prop_assert!(unreachable.contains(&node.id)),
                // Only `learning::explain_learning` gives this reason.
                Verdict::LeftOut(LeftOut::LearnedUnreachable) => prop_assert!(false, "learned without a memory"),
                Verdict::LeftOut(LeftOut::QuickrouteOpen) => {
                    prop_assert_eq!(selection.policy, Policy::Quickroute);
                    prop_assert!(node.venue != HEAD.venue || node.owner != HEAD.owner);
                }
            }
        }
    }
}
