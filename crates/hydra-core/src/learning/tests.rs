//! Table tests of the heads' memory and property tests against a naive oracle (a replay of the
//! reports plus the naive selection).

use std::collections::{HashMap, HashSet};

use expect_test::expect;
use proptest::prelude::*;

use super::*;
use crate::selection::LatencySample;
use crate::selection::tests::{HEAD, NOW, SETTINGS, body, fleet_with_observations, idle};

const HEAD_ID: &str = "head-rup";

fn settings() -> LearningSettings {
    LearningSettings {
        unreachable_for_ms: 60_000,
        wg_only_for_ms: SETTINGS.latency_max_age_ms,
        max_entries: 1_000,
    }
}

fn reached(pairs: &[(&str, Transport)]) -> Vec<(String, Transport)> {
    pairs.iter().map(|(id, t)| ((*id).to_owned(), *t)).collect()
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|id| (*id).to_owned()).collect()
}

fn render(selection: &Selection<'_>) -> String {
    let mut out = format!("{}:", selection.policy.as_str());
    for candidate in &selection.bodies {
        out.push(' ');
        out.push_str(&candidate.node.id);
        if candidate.wg_only {
            out.push_str("(wg_only)");
        }
    }
    out
}

fn answer(memory: &HeadMemory, fleet: &[Node], now: UnixMillis) -> String {
    let refs: Vec<&Node> = fleet.iter().collect();
    let view = memory.view(HEAD_ID, now);
    let selection = select_learning(
        &HEAD,
        &refs,
        now,
        &SETTINGS,
        &Observations::default(),
        &view,
    );
    render(&selection)
}

fn fleet() -> Vec<Node> {
    vec![
        idle(body("b-rup", "bxl1", "rupelmonde", "acme")),
        body("b-c7", "bxl1", "cloud-seven", "acme"),
        body("b-ghent", "bxl1", "ghent", "acme"),
    ]
}

#[test]
fn a_body_reached_over_wireguard_only_is_marked_until_lan_answers_or_the_mark_ages() {
    let fleet = fleet();
    let mut memory = HeadMemory::new(settings());
    let mut lines = vec![format!("fresh        {}", answer(&memory, &fleet, NOW))];
    memory.record(
        HEAD_ID,
        HeadReport {
            unreachable: &[],
            reached: &reached(&[("b-rup", Transport::Wireguard)]),
        },
        NOW,
    );
    lines.push(format!("wg only      {}", answer(&memory, &fleet, NOW)));
    let later = NOW + SETTINGS.latency_max_age_ms + 1;
    // (The bodies' heartbeats are older still by then: the view is what is checked.)
    lines.push(format!(
        "aged         wg_only {:?}",
        memory.view(HEAD_ID, later).wg_only
    ));
    memory.record(
        HEAD_ID,
        HeadReport {
            unreachable: &[],
            reached: &reached(&[("b-rup", Transport::Lan), ("b-rup", Transport::Wireguard)]),
        },
        NOW + 1,
    );
    lines.push(format!("lan answers  {}", answer(&memory, &fleet, NOW + 1)));
    expect![[r#"
        fresh        quickroute: b-rup
        wg only      quickroute: b-rup(wg_only)
        aged         wg_only {}
        lan answers  quickroute: b-rup"#]]
    .assert_eq(&lines.join("\n"));
}

#[test]
fn a_body_unreachable_on_both_paths_is_left_out_for_the_window_and_the_gate_opens() {
    let fleet = fleet();
    let mut memory = HeadMemory::new(settings());
    memory.record(
        HEAD_ID,
        HeadReport {
            unreachable: &ids(&["b-rup"]),
            reached: &reached(&[("b-c7", Transport::Wireguard)]),
        },
        // Half a window back, so the bodies still heartbeat when it ends.
        NOW - 30_000,
    );
    let lines = [
        format!("at once      {}", answer(&memory, &fleet, NOW - 30_000)),
        format!("59.999 s     {}", answer(&memory, &fleet, NOW + 29_999)),
        format!("60 s         {}", answer(&memory, &fleet, NOW + 30_000)),
    ];
    expect![[r#"
        at once      cross_venue: b-c7(wg_only) b-ghent
        59.999 s     cross_venue: b-c7(wg_only) b-ghent
        60 s         quickroute: b-rup"#]]
    .assert_eq(&lines.join("\n"));
}

#[test]
fn remembered_bodies_come_back_when_nothing_else_is_left() {
    let fleet = vec![idle(body("b-rup", "bxl1", "rupelmonde", "acme"))];
    let mut memory = HeadMemory::new(settings());
    memory.record(
        HEAD_ID,
        HeadReport {
            unreachable: &ids(&["b-rup"]),
            reached: &[],
        },
        NOW,
    );
    expect!["quickroute: b-rup"].assert_eq(&answer(&memory, &fleet, NOW));
    // Named in this very request, it is left out as before: the head asked for that.
    let refs: Vec<&Node> = fleet.iter().collect();
    let named: HashSet<String> = ["b-rup".to_owned()].into();
    let selection = select_learning(
        &HEAD,
        &refs,
        NOW,
        &SETTINGS,
        &Observations {
            latency: None,
            unreachable: Some(&named),
        },
        &memory.view(HEAD_ID, NOW),
    );
    expect!["none:"].assert_eq(&render(&selection));
}

#[test]
fn a_later_measurement_clears_an_unreachable_body_and_other_heads_are_untouched() {
    let fleet = fleet();
    let mut memory = HeadMemory::new(settings());
    memory.record(
        HEAD_ID,
        HeadReport {
            unreachable: &ids(&["b-rup"]),
            reached: &[],
        },
        NOW,
    );
    assert!(memory.view("another-head", NOW).left_out.is_empty());
    memory.record(
        HEAD_ID,
        HeadReport {
            unreachable: &[],
            reached: &reached(&[("b-rup", Transport::Lan)]),
        },
        NOW + 5,
    );
    expect!["quickroute: b-rup"].assert_eq(&answer(&memory, &fleet, NOW + 5));
}

#[test]
fn the_explain_trace_says_learned_unreachable_and_wg_only() {
    let fleet = fleet();
    let refs: Vec<&Node> = fleet.iter().collect();
    let mut memory = HeadMemory::new(settings());
    memory.record(
        HEAD_ID,
        HeadReport {
            unreachable: &ids(&["b-rup"]),
            reached: &reached(&[("b-ghent", Transport::Wireguard)]),
        },
        NOW,
    );
    let explanation = explain_learning(
        &HEAD,
        &refs,
        NOW,
        &SETTINGS,
        &Observations::default(),
        &memory.view(HEAD_ID, NOW),
    );
    let lines: Vec<String> = explanation
        .considered
        .iter()
        .map(|considered| {
            let verdict = match &considered.verdict {
                Verdict::Kept { rank, .. } => format!("kept {rank}"),
                Verdict::LeftOut(reason) => reason.as_str().to_owned(),
            };
            let mark = if considered.wg_only { " wg_only" } else { "" };
            format!("{} {verdict}{mark}", considered.node.id)
        })
        .collect();
    expect![[r#"
        cross_venue
        b-c7 kept 1
        b-ghent kept 2 wg_only
        b-rup learned_unreachable"#]]
    .assert_eq(&format!(
        "{}\n{}",
        explanation.policy.as_str(),
        lines.join("\n")
    ));
}

#[test]
fn the_memory_is_bounded_expired_entries_first_then_the_oldest() {
    let mut memory = HeadMemory::new(LearningSettings {
        max_entries: 2,
        ..settings()
    });
    let unreachable = |memory: &mut HeadMemory, head: &str, body: &str, at: UnixMillis| {
        memory.record(
            head,
            HeadReport {
                unreachable: &ids(&[body]),
                reached: &[],
            },
            at,
        );
    };
    unreachable(&mut memory, "h1", "b1", NOW);
    unreachable(&mut memory, "h1", "b2", NOW + 1);
    unreachable(&mut memory, "h2", "b1", NOW + 2);
    assert_eq!(memory.len(), 2);
    // The oldest (h1, b1) went; the others are kept.
    assert!(memory.view("h1", NOW + 3).left_out == HashSet::from(["b2".to_owned()]));
    assert!(memory.view("h2", NOW + 3).left_out == HashSet::from(["b1".to_owned()]));
    // Once everything has expired, a new pair makes room by dropping the expired ones.
    unreachable(&mut memory, "h3", "b9", NOW + 120_000);
    assert_eq!(memory.len(), 1);
}

// ---- properties ----

/// One report: at which offset from the start, which bodies named unreachable, which reached.
type Report = (i64, Vec<String>, Vec<(String, Transport)>);

/// The oracle: replays every report in order into "last word per (body, path)", then applies
/// the field's rules with the naive selection.
fn naive_learning(
    fleet: &[Node],
    reports: &[Report],
    now: UnixMillis,
    latency: &HashMap<String, LatencySample>,
    named: &HashSet<String>,
    settings: &LearningSettings,
) -> (&'static str, Vec<(String, bool)>) {
    // body -> (lan, wireguard), each the last word: (reached, at).
    type LastWord = Option<(bool, i64)>;
    let mut last: HashMap<String, (LastWord, LastWord)> = HashMap::new();
    for (at, unreachable, reached) in reports {
        let measured: HashSet<&String> = reached.iter().map(|(id, _)| id).collect();
        for id in &measured {
            let lan_ok = reached
                .iter()
                .any(|(b, t)| b == *id && *t == Transport::Lan);
            let wg_ok = reached
                .iter()
                .any(|(b, t)| b == *id && *t == Transport::Wireguard);
            let entry = last.entry((*id).clone()).or_default();
            entry.0 = Some((lan_ok, *at));
            if wg_ok {
                entry.1 = Some((true, *at));
            }
        }
        for id in unreachable {
            if !measured.contains(id) {
                last.insert(id.clone(), (Some((false, *at)), Some((false, *at))));
            }
        }
    }
    let mut left_out = HashSet::new();
    let mut wg_only = HashSet::new();
    for (id, (lan, wireguard)) in &last {
        if let (Some((false, a)), Some((false, b))) = (lan, wireguard)
            && now < (*a).min(*b) + settings.unreachable_for_ms
        {
            left_out.insert(id.clone());
        }
        if let (Some((false, _)), Some((true, at))) = (lan, wireguard)
            && now - at <= settings.wg_only_for_ms
        {
            wg_only.insert(id.clone());
        }
    }
    let both: HashSet<String> = named.union(&left_out).cloned().collect();
    let mut answer =
        crate::selection::naive::naive_select(&HEAD, fleet, now, &SETTINGS, latency, &both);
    if answer.policy == "none" {
        answer =
            crate::selection::naive::naive_select(&HEAD, fleet, now, &SETTINGS, latency, named);
    }
    let bodies = answer
        .bodies
        .into_iter()
        .map(|(id, _)| {
            let mark = wg_only.contains(&id);
            (id, mark)
        })
        .collect();
    (answer.policy, bodies)
}

fn arb_reports(ids: Vec<String>) -> impl Strategy<Value = Vec<Report>> {
    let ids = if ids.is_empty() {
        vec!["none".to_owned()]
    } else {
        ids
    };
    let id = prop::sample::select(ids);
    let transport = prop::sample::select(vec![Transport::Lan, Transport::Wireguard]);
    prop::collection::vec(
        (
            0i64..200_000,
            prop::collection::vec(id.clone(), 0..3),
            prop::collection::vec((id, transport), 0..4),
        ),
        0..6,
    )
    .prop_map(|mut reports| {
        reports.sort_by_key(|report| report.0);
        reports
    })
}

proptest! {
    /// Whatever the heads reported, in whatever order: the answer with the memory is the naive
    /// replay's (same policy, same bodies in order, same `wg_only` marks), and a head is never
    /// left with nothing while a usable body exists that it did not name in this request.
    #[test]
    fn select_learning_agrees_with_the_naive_replay(
        (fleet, latency, named, reports) in fleet_with_observations().prop_flat_map(|(fleet, latency, named)| {
            let ids: Vec<String> = fleet.iter().map(|node| node.id.clone()).collect();
            (Just(fleet), Just(latency), Just(named), arb_reports(ids))
        }),
        elapsed in 0i64..260_000,
    ) {
        let start = NOW - 200_000;
        let now = start + elapsed;
        let mut memory = HeadMemory::new(settings());
        let shifted: Vec<Report> = reports
            .into_iter()
            .filter(|(at, _, _)| *at <= elapsed)
            .map(|(at, unreachable, reached)| (start + at, unreachable, reached))
            .collect();
        for (at, unreachable, reached) in &shifted {
            memory.record(HEAD_ID, HeadReport { unreachable, reached }, *at);
        }
        let refs: Vec<&Node> = fleet.iter().collect();
        let observations = Observations { latency: Some(&latency), unreachable: Some(&named) };
        let selection = select_learning(&HEAD, &refs, now, &SETTINGS, &observations, &memory.view(HEAD_ID, now));
        let ours: Vec<(String, bool)> = selection
            .bodies
            .iter()
            .map(|candidate| (candidate.node.id.clone(), candidate.wg_only))
            .collect();
        let (policy, oracle) = naive_learning(&fleet, &shifted, now, &latency, &named, &settings());
        prop_assert_eq!(selection.policy.as_str(), policy);
        prop_assert_eq!(&ours, &oracle);
        // The explain trace keeps exactly the same bodies in the same order.
        let explanation = explain_learning(&HEAD, &refs, now, &SETTINGS, &observations, &memory.view(HEAD_ID, now));
        let kept: Vec<(String, bool)> = explanation
            .considered
            .iter()
            .filter(|considered| matches!(considered.verdict, Verdict::Kept { .. }))
            .map(|considered| (considered.node.id.clone(), considered.wg_only))
            .collect();
        prop_assert_eq!(kept, ours);
        prop_assert_eq!(explanation.policy, selection.policy);
    }
}
