//! Table tests and property tests of body selection.

use std::collections::{HashMap, HashSet};

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;
use crate::node::{Role, Roles};

pub(crate) const NOW: UnixMillis = 1_000_000;
pub(crate) const SETTINGS: SelectionSettings = SelectionSettings {
    heartbeat_timeout_ms: 60_000,
    latency_max_age_ms: 600_000,
};

/// A compact body description: `id district/venue owner` plus modifiers.
pub(crate) fn body(id: &str, district: &str, venue: &str, owner: &str) -> Node {
    let mut node = Node::new(id, Roles::NONE.with(Role::Body));
    node.district = district.into();
    node.venue = venue.into();
    node.owner = owner.into();
    node.last_heartbeat = Some(NOW - 1_000);
    node.vram_mb = Some(8_192);
    node
}

pub(crate) fn idle(mut node: Node) -> Node {
    node.idle = true;
    node
}

pub(crate) fn vram(mut node: Node, mb: u64) -> Node {
    node.vram_mb = Some(mb);
    node
}

pub(crate) const HEAD: Head<'static> = Head {
    district: "bxl1",
    venue: "rupelmonde",
    owner: "acme",
};

fn render(selection: &Selection<'_>) -> String {
    let mut out = format!("{}:", selection.policy.as_str());
    for candidate in &selection.bodies {
        out.push(' ');
        out.push_str(&candidate.node.id);
        if !candidate.same_venue {
            out.push_str("(x)");
        }
        if let Some(rtt) = candidate.rtt_ms {
            out.push_str(&format!("@{rtt}ms"));
        }
    }
    out
}

fn check(fleet: &[Node], observations: Observations<'_>, expected: Expect) {
    let selection = select_bodies(&HEAD, fleet, NOW, &SETTINGS, &observations);
    expected.assert_eq(&render(&selection));
}

#[test]
fn quickroute_hit_returns_only_the_venue() {
    check(
        &[
            body("b-venue", "bxl1", "rupelmonde", "acme"),
            idle(body("b-other-venue", "bxl1", "cloud-seven", "acme")),
        ],
        Observations::default(),
        expect!["quickroute: b-venue"],
    );
}

#[test]
fn empty_quickroute_falls_back_to_the_same_owner_across_venues() {
    check(
        &[
            body("b-other-venue", "bxl1", "cloud-seven", "acme"),
            body("b-other-owner", "bxl1", "cloud-seven", "globex"),
        ],
        Observations::default(),
        expect!["cross_venue: b-other-venue(x)"],
    );
}

#[test]
fn no_candidate_at_all() {
    check(
        &[
            body("b-far", "ams1", "rupelmonde", "acme"),
            body("b-foreign", "bxl1", "rupelmonde", "globex"),
        ],
        Observations::default(),
        expect!["none:"],
    );
}

#[test]
fn strict_venue_without_head_ignores_owner() {
    let fleet = [
        body("b-acme", "bxl1", "rupelmonde", "acme"),
        idle(body("b-globex", "bxl1", "rupelmonde", "globex")),
        body("b-elsewhere", "bxl1", "cloud-seven", "acme"),
    ];
    let selection = strict_venue("bxl1", "rupelmonde", &fleet, NOW, &SETTINGS);
    expect!["strict_venue: b-globex b-acme"].assert_eq(&render(&selection));
    let empty = strict_venue("bxl1", "nowhere", &fleet, NOW, &SETTINGS);
    expect!["none:"].assert_eq(&render(&empty));
}

#[test]
fn drained_and_offline_and_non_bodies_are_never_chosen() {
    let mut drained = body("b-drained", "bxl1", "rupelmonde", "acme");
    drained.drained = true;
    let mut offline = body("b-offline", "bxl1", "rupelmonde", "acme");
    offline.last_heartbeat = Some(NOW - 60_000);
    let mut never = body("b-never", "bxl1", "rupelmonde", "acme");
    never.last_heartbeat = None;
    let mut worker = body("w-1", "bxl1", "rupelmonde", "acme");
    worker.roles = Roles::NONE.with(Role::Worker);
    check(
        &[
            drained,
            offline,
            never,
            worker,
            body("b-fallback", "bxl1", "cloud-seven", "acme"),
        ],
        Observations::default(),
        expect!["cross_venue: b-fallback(x)"],
    );
}

#[test]
fn quickroute_orders_idle_first_then_vram_then_id() {
    check(
        &[
            vram(body("b-busy-big", "bxl1", "rupelmonde", "acme"), 24_000),
            idle(vram(
                body("b-idle-small", "bxl1", "rupelmonde", "acme"),
                8_000,
            )),
            idle(vram(
                body("b-idle-big", "bxl1", "rupelmonde", "acme"),
                24_000,
            )),
            idle(vram(
                body("b-idle-big-2", "bxl1", "rupelmonde", "acme"),
                24_000,
            )),
        ],
        Observations::default(),
        expect!["quickroute: b-idle-big b-idle-big-2 b-idle-small b-busy-big"],
    );
}

#[test]
fn allowed_orgs_open_the_district_after_the_heads_own_by_cost_tier() {
    let mut shared_leased = body("b-shared-leased", "bxl1", "cloud-seven", "globex");
    shared_leased.allowed_orgs = vec!["acme".into()];
    shared_leased.cost_tier = CostTier::Leased;
    let mut shared_owned = idle(body("b-shared-owned", "bxl1", "cloud-seven", "initech"));
    shared_owned.allowed_orgs = vec!["umbrella".into(), "acme".into()];
    let mut own_marketplace = body("b-own-market", "bxl1", "cloud-seven", "acme");
    own_marketplace.cost_tier = CostTier::Marketplace;
    let mut not_shared = idle(body("b-not-shared", "bxl1", "cloud-seven", "globex"));
    not_shared.allowed_orgs = vec!["umbrella".into()];
    check(
        &[shared_leased, not_shared, shared_owned, own_marketplace],
        Observations::default(),
        expect!["cross_venue: b-own-market(x) b-shared-owned(x) b-shared-leased(x)"],
    );
}

#[test]
fn a_shared_body_in_the_heads_venue_is_cross_venue_not_quickroute() {
    let mut shared_here = body("b-shared-here", "bxl1", "rupelmonde", "globex");
    shared_here.allowed_orgs = vec!["acme".into()];
    let fleet = [shared_here];
    let selection = select_bodies(&HEAD, &fleet, NOW, &SETTINGS, &Observations::default());
    assert_eq!(selection.policy, Policy::CrossVenue);
    assert!(selection.bodies[0].same_venue);
}

#[test]
fn measured_latency_ranks_cross_venue_before_cost_and_idleness() {
    let latency: HashMap<String, LatencySample> = [
        (
            "b-slow".to_string(),
            LatencySample {
                rtt_ms: 40,
                measured_at: NOW - 1_000,
            },
        ),
        (
            "b-fast".to_string(),
            LatencySample {
                rtt_ms: 3,
                measured_at: NOW - 1_000,
            },
        ),
        (
            "b-stale".to_string(),
            LatencySample {
                rtt_ms: 1,
                measured_at: NOW - 700_000,
            },
        ),
    ]
    .into_iter()
    .collect();
    let mut fast = body("b-fast", "bxl1", "ghent", "acme");
    fast.cost_tier = CostTier::Leased;
    check(
        &[
            idle(body("b-unmeasured", "bxl1", "cloud-seven", "acme")),
            idle(body("b-slow", "bxl1", "cloud-seven", "acme")),
            fast,
            idle(body("b-stale", "bxl1", "cloud-seven", "acme")),
        ],
        Observations {
            latency: Some(&latency),
            unreachable: None,
        },
        expect!["cross_venue: b-fast(x)@3ms b-slow(x)@40ms b-stale(x) b-unmeasured(x)"],
    );
}

#[test]
fn naming_the_unreachable_venue_body_opens_the_fallback() {
    let fleet = [
        body("b-venue", "bxl1", "rupelmonde", "acme"),
        body("b-other", "bxl1", "cloud-seven", "acme"),
    ];
    check(
        &fleet,
        Observations::default(),
        expect!["quickroute: b-venue"],
    );
    let unreachable: HashSet<String> = ["b-venue".to_string()].into_iter().collect();
    check(
        &fleet,
        Observations {
            latency: None,
            unreachable: Some(&unreachable),
        },
        expect!["cross_venue: b-other(x)"],
    );
    let all: HashSet<String> = ["b-venue".to_string(), "b-other".to_string()]
        .into_iter()
        .collect();
    check(
        &fleet,
        Observations {
            latency: None,
            unreachable: Some(&all),
        },
        expect!["none:"],
    );
}

#[test]
fn parked_body_leaves_selection_and_returns_when_moved_back() {
    let mut parked = body("b-venue", "bxl1-test", "rupelmonde", "acme");
    let other = body("b-other", "bxl1", "cloud-seven", "acme");
    check(
        &[parked.clone(), other.clone()],
        Observations::default(),
        expect!["cross_venue: b-other(x)"],
    );
    parked.district = "bxl1".into();
    check(
        &[parked, other],
        Observations::default(),
        expect!["quickroute: b-venue"],
    );
}

// ---- properties ----

fn arb_node() -> impl Strategy<Value = Node> {
    (
        0u32..1_000,
        prop::sample::select(vec!["bxl1", "ams1"]),
        prop::sample::select(vec!["rupelmonde", "cloud-seven", "ghent"]),
        prop::sample::select(vec!["acme", "globex"]),
        prop::collection::vec(
            prop::sample::select(vec!["acme", "globex", "initech"]),
            0..2,
        ),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        prop::option::of(0u64..4),
        prop::option::of(0i64..120_000),
        0usize..4,
    )
        .prop_map(
            |(
                n,
                district,
                venue,
                owner,
                allowed,
                (is_body, drained, idle, is_head),
                vram,
                age,
                tier,
            )| {
                let mut roles = Roles::NONE;
                if is_body {
                    roles = roles.with(Role::Body);
                }
                if is_head {
                    roles = roles.with(Role::Head);
                }
                let mut node = Node::new(format!("n-{n}"), roles);
                node.district = district.into();
                node.venue = venue.into();
                node.owner = owner.into();
                node.allowed_orgs = allowed.into_iter().map(String::from).collect();
                node.drained = drained;
                node.idle = idle;
                node.vram_mb = vram.map(|v| v * 8_192);
                node.last_heartbeat = age.map(|age| NOW - age);
                node.cost_tier = CostTier::ALL[tier];
                node
            },
        )
}

proptest! {
    #[test]
    fn answers_hold_only_usable_bodies_in_order(
        fleet in prop::collection::vec(arb_node(), 0..40),
        unreachable_picks in prop::collection::vec(0usize..40, 0..3),
    ) {
        let unreachable: HashSet<String> =
            unreachable_picks.iter().filter_map(|i| fleet.get(*i)).map(|n| n.id.clone()).collect();
        let observations = Observations { latency: None, unreachable: Some(&unreachable) };
        let selection = select_bodies(&HEAD, &fleet, NOW, &SETTINGS, &observations);
        for candidate in &selection.bodies {
            let node = candidate.node;
            prop_assert!(node.roles.contains(Role::Body));
            prop_assert!(!node.drained);
            prop_assert_eq!(node.status(NOW, SETTINGS.heartbeat_timeout_ms), NodeStatus::Online);
            prop_assert_eq!(&node.district, HEAD.district);
            prop_assert!(node.usable_by(HEAD.owner));
            prop_assert!(!unreachable.contains(&node.id));
            prop_assert_eq!(candidate.same_venue, node.venue == HEAD.venue);
        }
        match selection.policy {
            Policy::Quickroute => {
                for candidate in &selection.bodies {
                    prop_assert_eq!(&candidate.node.venue, HEAD.venue);
                    prop_assert_eq!(&candidate.node.owner, HEAD.owner);
                }
                for pair in selection.bodies.windows(2) {
                    let (a, b) = (pair[0].node, pair[1].node);
                    prop_assert!(a.idle >= b.idle);
                    if a.idle == b.idle {
                        prop_assert!(a.vram_mb.unwrap_or(0) >= b.vram_mb.unwrap_or(0));
                    }
                }
            }
            Policy::CrossVenue => {
                // The gate: a cross-venue answer means no quickroute body was available.
                let gate_open = fleet.iter().any(|n| {
                    n.district == HEAD.district && n.venue == HEAD.venue && n.owner == HEAD.owner
                        && is_available(n, NOW, &SETTINGS) && !unreachable.contains(&n.id)
                });
                prop_assert!(!gate_open);
                for pair in selection.bodies.windows(2) {
                    let (a, b) = (pair[0].node, pair[1].node);
                    let tier = |n: &Node| (n.owner != HEAD.owner, n.cost_tier);
                    prop_assert!(tier(a) <= tier(b));
                    if tier(a) == tier(b) {
                        prop_assert!(a.idle >= b.idle);
                        if a.idle == b.idle {
                            prop_assert!(a.vram_mb.unwrap_or(0) >= b.vram_mb.unwrap_or(0));
                        }
                    }
                }
            }
            Policy::None => prop_assert!(selection.bodies.is_empty()),
            Policy::StrictVenue => prop_assert!(false, "strict venue needs no head"),
        }
        // Nothing usable is lost: an empty answer means no usable body exists.
        if selection.bodies.is_empty() {
            let any_usable = fleet.iter().any(|n| {
                n.district == HEAD.district && n.usable_by(HEAD.owner)
                    && is_available(n, NOW, &SETTINGS) && !unreachable.contains(&n.id)
            });
            prop_assert!(!any_usable);
        }
    }
}

fn arb_latency(fleet: &[Node]) -> impl Strategy<Value = HashMap<String, LatencySample>> + use<> {
    let ids: Vec<String> = fleet.iter().map(|node| node.id.clone()).collect();
    prop::collection::vec(
        (
            prop::sample::select(if ids.is_empty() {
                vec!["none".to_owned()]
            } else {
                ids
            }),
            1u32..200,
            // Some samples are older than `latency_max_age_ms` and must be ignored.
            0i64..(2 * SETTINGS.latency_max_age_ms),
        ),
        0..12,
    )
    .prop_map(|samples| {
        samples
            .into_iter()
            .map(|(id, rtt_ms, age)| {
                (
                    id,
                    LatencySample {
                        rtt_ms,
                        measured_at: NOW - age,
                    },
                )
            })
            .collect()
    })
}

pub(crate) fn fleet_with_observations()
-> impl Strategy<Value = (Vec<Node>, HashMap<String, LatencySample>, HashSet<String>)> {
    prop::collection::vec(arb_node(), 0..40).prop_flat_map(|fleet| {
        let ids: Vec<String> = fleet.iter().map(|node| node.id.clone()).collect();
        let unreachable = prop::collection::hash_set(
            prop::sample::select(if ids.is_empty() {
                vec!["none".to_owned()]
            } else {
                ids
            }),
            0..3,
        );
        (Just(fleet.clone()), arb_latency(&fleet), unreachable)
    })
}

proptest! {
    /// `select_bodies` gives exactly what the naive selection, written from the field's rules
    /// with none of its helpers, gives: the same policy, the same bodies (so nothing usable is
    /// lost and nothing unusable gets in), in the same order, with the same fresh latencies.
    #[test]
    fn select_bodies_agrees_with_the_naive_oracle(
        (fleet, latency, unreachable) in fleet_with_observations(),
    ) {
        let observations = Observations { latency: Some(&latency), unreachable: Some(&unreachable) };
        let selection = select_bodies(&HEAD, &fleet, NOW, &SETTINGS, &observations);
        let ours: Vec<(String, Option<u32>)> = selection
            .bodies
            .iter()
            .map(|candidate| (candidate.node.id.clone(), candidate.rtt_ms))
            .collect();
        let oracle = super::naive::naive_select(&HEAD, &fleet, NOW, &SETTINGS, &latency, &unreachable);
        prop_assert_eq!(selection.policy.as_str(), oracle.policy);
        prop_assert_eq!(ours, oracle.bodies);
    }
}
