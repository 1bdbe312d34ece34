//! Tables for the capture's status roll-up, the segment budget and the orchestrator's scripts,
//! and properties checked against oracles written from the field's rules.

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

/// `"failed/source_error"`, `"running"`: a segment as text.
fn segment(spec: &str) -> (CaptureStatus, Option<TerminationReason>) {
    let (status, reason) = spec
        .split_once('/')
        .map_or((spec, None), |(s, r)| (s, Some(r)));
    (
        CaptureStatus::parse(status).expect("status word"),
        reason.map(|word| TerminationReason::parse(word).expect("reason word")),
    )
}

fn check_aggregate(specs: &[&str], expected: Expect) {
    let segments: Vec<_> = specs.iter().map(|spec| segment(spec)).collect();
    let (status, reason) = aggregate_status(&segments);
    let text = match reason {
        Some(reason) => format!("{}/{}", status.as_str(), reason.as_str()),
        None => status.as_str().to_owned(),
    };
    expected.assert_eq(&text);
}

#[test]
fn aggregate_is_the_worst_case_with_its_reason() {
    check_aggregate(
        &["completed/stopped", "completed/stopped"],
        expect!["completed/stopped"],
    );
    check_aggregate(
        &["completed/stopped", "completed/limit_reached"],
        expect!["completed/limit_reached"],
    );
    check_aggregate(
        &[
            "completed/stopped",
            "truncated/lines_dropped",
            "completed/stopped",
        ],
        expect!["truncated/lines_dropped"],
    );
    check_aggregate(
        &[
            "truncated/limit_reached",
            "failed/source_error",
            "completed/stopped",
        ],
        expect!["failed/source_error"],
    );
    check_aggregate(
        &["failed/monitor_open_failed", "failed/source_error"],
        expect!["failed/source_error"],
    );
    check_aggregate(
        &["failed/node_left", "failed/monitor_open_failed"],
        expect!["failed/monitor_open_failed"],
    );
    check_aggregate(&["failed/source_error", "running"], expect!["running"]);
    check_aggregate(&["completed/stopped"], expect!["completed/stopped"]);
    check_aggregate(&[], expect!["failed/monitor_open_failed"]);
}

#[test]
fn a_segment_end_follows_its_reason() {
    let table: Vec<String> = TerminationReason::ALL
        .into_iter()
        .flat_map(|reason| [false, true].map(move |cut| (reason, cut)))
        .map(|(reason, cut)| {
            let end = SegmentEnd::for_reason(reason, cut);
            format!("{} cut={cut} -> {}", reason.as_str(), end.status.as_str())
        })
        .collect();
    expect![[r#"
        stopped cut=false -> completed
        stopped cut=true -> completed
        limit_reached cut=false -> completed
        limit_reached cut=true -> truncated
        lines_dropped cut=false -> truncated
        lines_dropped cut=true -> truncated
        node_left cut=false -> failed
        node_left cut=true -> failed
        monitor_open_failed cut=false -> failed
        monitor_open_failed cut=true -> failed
        source_error cut=false -> failed
        source_error cut=true -> failed"#]]
    .assert_eq(&table.join("\n"));
}

#[test]
fn the_budget_keeps_lines_up_to_the_limits_and_never_splits_one() {
    let limits = CaptureLimits {
        duration_ms: None,
        max_lines: Some(3),
        max_bytes: Some(100),
    };
    let mut budget = SegmentBudget::new(limits, 0, 0);
    let answers: Vec<String> = [10, 10, 10, 10]
        .into_iter()
        .map(|bytes| format!("{:?}", budget.admit(bytes)))
        .collect();
    expect!["Keep Keep KeepAndEnd Refuse"].assert_eq(&answers.join(" "));
    let mut by_bytes = SegmentBudget::new(limits, 0, 90);
    let answers: Vec<String> = [20, 10]
        .into_iter()
        .map(|bytes| format!("{:?}", by_bytes.admit(bytes)))
        .collect();
    expect!["Refuse KeepAndEnd"].assert_eq(&answers.join(" "));
    let mut unlimited = SegmentBudget::new(CaptureLimits::default(), u64::MAX - 1, 0);
    expect!["Keep"].assert_eq(&format!("{:?}", unlimited.admit(u64::MAX)));
}

/// Runs a script against an orchestrator of `nodes` (limits: a duration of 1000 ms) and logs
/// every action with the time it came out. Steps: `t=N` (time passes), `stop`,
/// `end NODE STATUS/REASON`, `left NODE` (the mesh declared it down).
fn run_script(nodes: &[&str], steps: &[&str]) -> String {
    let node_ids: Vec<String> = nodes.iter().map(|node| (*node).to_owned()).collect();
    let limits = CaptureLimits {
        duration_ms: Some(1_000),
        ..CaptureLimits::default()
    };
    let now = 0;
    let orchestrator = Orchestrator::new(&node_ids, limits, now);
    run_steps(orchestrator, now, steps)
}

/// Runs `steps` (as [`run_script`]) against `orchestrator` from `now`.
fn run_steps(mut orchestrator: Orchestrator, mut now: Millis, steps: &[&str]) -> String {
    let mut log = Vec::new();
    let drain = |orchestrator: &mut Orchestrator, log: &mut Vec<String>, now: Millis| {
        while let Some(action) = orchestrator.poll_action() {
            log.push(match action {
                CaptureAction::OpenWriter { node_id } => format!("{now}: open {node_id}"),
                CaptureAction::StopWriter { node_id, reason } => {
                    format!("{now}: stop {node_id} {}", reason.as_str())
                }
                CaptureAction::Finalise {
                    status,
                    reason,
                    ended_at,
                } => format!(
                    "{now}: finalise {} {} at {ended_at}",
                    status.as_str(),
                    reason.map_or("-", TerminationReason::as_str)
                ),
            });
        }
    };
    drain(&mut orchestrator, &mut log, now);
    for step in steps {
        if let Some(time) = step.strip_prefix("t=") {
            now = time.parse().expect("time");
            if orchestrator.poll_timeout().is_some_and(|due| due <= now) {
                orchestrator.handle_timeout(now);
            }
        } else if *step == "stop" {
            orchestrator.handle_stop(now);
        } else if let Some(node_id) = step.strip_prefix("left ") {
            orchestrator.handle_node_left(node_id, now);
        } else if let Some(rest) = step.strip_prefix("end ") {
            let (node_id, spec) = rest.split_once(' ').expect("end NODE STATUS/REASON");
            let (status, reason) = segment(spec);
            orchestrator.handle_event(
                WriterEvent::Ended {
                    node_id: node_id.to_owned(),
                    end: SegmentEnd {
                        status,
                        reason: reason.expect("reason"),
                    },
                },
                now,
            );
        } else {
            panic!("unknown step {step}");
        }
        drain(&mut orchestrator, &mut log, now);
    }
    log.join("\n")
}

/// A capture of 1000 ms started at 0 and resumed at `now` with `segments` (`NODE running` or
/// `NODE STATUS/REASON`), then driven by `steps`.
fn resume_script(segments: &[&str], now: Millis, steps: &[&str]) -> String {
    let mut running = Vec::new();
    let mut ended = Vec::new();
    for spec in segments {
        let (node_id, state) = spec.split_once(' ').expect("NODE STATE");
        if state == "running" {
            running.push(node_id.to_owned());
        } else {
            let (status, reason) = segment(state);
            ended.push((
                node_id.to_owned(),
                SegmentEnd {
                    status,
                    reason: reason.expect("reason"),
                },
            ));
        }
    }
    let limits = CaptureLimits {
        duration_ms: Some(1_000),
        ..CaptureLimits::default()
    };
    let orchestrator = Orchestrator::resume(&running, &ended, limits, 0, now);
    run_steps(orchestrator, now, steps)
}

#[test]
fn a_resumed_capture_reopens_only_running_segments_and_keeps_the_ended_ones() {
    expect![[r#"
        400: open a
        400: open c
        1000: stop a limit_reached
        1000: stop c limit_reached
        1005: finalise failed source_error at 1005"#]]
    .assert_eq(&resume_script(
        &["a running", "b failed/source_error", "c running"],
        400,
        &[
            "t=999",
            "t=1000",
            "end a completed/limit_reached",
            "t=1005",
            "end c completed/limit_reached",
        ],
    ));
    // Its time ran out while no server drove it: the first timeout stops the writers.
    expect![[r#"
        5000: open a
        5000: stop a limit_reached
        5001: finalise completed limit_reached at 5001"#]]
    .assert_eq(&resume_script(
        &["a running"],
        5000,
        &["t=5000", "t=5001", "end a completed/limit_reached"],
    ));
    // Every segment had ended (the old driver died before finalising): finalised at once.
    expect!["300: finalise truncated lines_dropped at 300"].assert_eq(&resume_script(
        &["a completed/stopped", "b truncated/lines_dropped"],
        300,
        &[],
    ));
}

#[test]
fn writers_open_per_node_and_a_failed_one_ends_only_its_segment() {
    expect![[r#"
        0: open n1
        0: open n2
        0: open n3
        1000: stop n1 limit_reached
        1000: stop n3 limit_reached
        1010: finalise failed source_error at 1010"#]]
    .assert_eq(&run_script(
        &["n1", "n2", "n3"],
        &[
            "t=400",
            "end n2 failed/source_error",
            "t=999",
            "t=1000",
            "end n1 completed/limit_reached",
            "t=1010",
            "end n3 completed/limit_reached",
        ],
    ));
}

#[test]
fn a_stop_stops_every_running_writer_once_and_finalises_when_all_ended() {
    expect![[r#"
        0: open n1
        0: open n2
        5: stop n1 stopped
        5: stop n2 stopped
        7: finalise completed stopped at 7"#]]
    .assert_eq(&run_script(
        &["n1", "n2"],
        &[
            "t=5",
            "stop",
            "stop",
            "t=1500",
            "end n2 completed/stopped",
            "t=7",
            "end n1 completed/stopped",
            "end n1 completed/stopped",
        ],
    ));
}

#[test]
fn a_monitor_that_cannot_open_fails_only_its_segment() {
    expect![[r#"
        0: open a
        0: open b
        5: stop b stopped
        6: finalise failed monitor_open_failed at 6"#]]
    .assert_eq(&run_script(
        &["a", "b"],
        &[
            "end a failed/monitor_open_failed",
            "t=5",
            "stop",
            "t=6",
            "end b completed/stopped",
        ],
    ));
}

#[test]
fn a_node_the_mesh_declares_down_has_its_writer_stopped_at_once_and_only_it() {
    expect![[r#"
        0: open a
        0: open b
        0: open c
        300: stop b node_left
        1000: stop a limit_reached
        1000: stop c limit_reached
        1002: finalise failed node_left at 1002"#]]
    .assert_eq(&run_script(
        &["a", "b", "c"],
        &[
            "t=300",
            "left b",
            // Said twice (two mesh events), or of a node the capture does not have: nothing.
            "left b",
            "left zz",
            "t=310",
            "end b failed/node_left",
            "t=1000",
            "end a completed/limit_reached",
            "t=1002",
            "end c completed/limit_reached",
        ],
    ));
    // A writer already stopping (an operator's stop) or ended keeps its end.
    expect![[r#"
        0: open a
        0: open b
        5: stop a stopped
        9: finalise failed source_error at 9"#]]
    .assert_eq(&run_script(
        &["a", "b"],
        &[
            "t=5",
            "end b failed/source_error",
            "left b",
            "stop",
            "left a",
            "t=9",
            "end a completed/stopped",
        ],
    ));
}

#[test]
fn an_event_of_an_unknown_node_changes_nothing() {
    expect![[r#"
        0: open a
        3: finalise truncated lines_dropped at 3"#]]
    .assert_eq(&run_script(
        &["a"],
        &[
            "end zz failed/source_error",
            "t=3",
            "end a truncated/lines_dropped",
        ],
    ));
}

/// The field's rule, written out independently: failed beats truncated beats completed.
fn oracle_status(ends: &[CaptureStatus]) -> CaptureStatus {
    if ends.contains(&CaptureStatus::Failed) {
        CaptureStatus::Failed
    } else if ends.contains(&CaptureStatus::Truncated) {
        CaptureStatus::Truncated
    } else {
        CaptureStatus::Completed
    }
}

fn any_end() -> impl Strategy<Value = (TerminationReason, bool)> {
    (0..TerminationReason::ALL.len(), any::<bool>())
        .prop_map(|(index, cut)| (TerminationReason::ALL[index], cut))
}

proptest! {
    #[test]
    fn the_orchestrator_finalises_once_after_every_writer_with_the_worst_case(
        ends in prop::collection::vec(any_end(), 1..8),
        stop_after in 0usize..8,
        order_seed in any::<u64>(),
    ) {
        let node_ids: Vec<String> = (0..ends.len()).map(|index| format!("n{index}")).collect();
        let mut orchestrator = Orchestrator::new(&node_ids, CaptureLimits::default(), 0);
        let mut opened = Vec::new();
        while let Some(action) = orchestrator.poll_action() {
            match action {
                CaptureAction::OpenWriter { node_id } => opened.push(node_id),
                other => prop_assert!(false, "unexpected {other:?}"),
            }
        }
        prop_assert_eq!(&opened, &node_ids);
        // End the writers in a shuffled order, with a stop somewhere in between.
        let mut order: Vec<usize> = (0..ends.len()).collect();
        let mut seed = order_seed;
        for index in (1..order.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(index, usize::try_from(seed >> 33).unwrap_or(0) % (index + 1));
        }
        let mut finalised = Vec::new();
        for (step, index) in order.iter().enumerate() {
            if step == stop_after {
                orchestrator.handle_stop(1);
            }
            prop_assert!(finalised.is_empty(), "finalised before every writer ended");
            let (reason, cut) = ends[*index];
            orchestrator.handle_event(
                WriterEvent::Ended { node_id: node_ids[*index].clone(), end: SegmentEnd::for_reason(reason, cut) },
                2,
            );
            while let Some(action) = orchestrator.poll_action() {
                if let CaptureAction::Finalise { status, reason, .. } = action {
                    finalised.push((status, reason));
                }
            }
        }
        prop_assert_eq!(finalised.len(), 1);
        let statuses: Vec<CaptureStatus> =
            ends.iter().map(|(reason, cut)| SegmentEnd::for_reason(*reason, *cut).status).collect();
        prop_assert_eq!(finalised[0].0, oracle_status(&statuses));
        let reason = finalised[0].1.expect("a reason");
        prop_assert!(ends.iter().any(|(r, cut)| *r == reason
            && SegmentEnd::for_reason(*r, *cut).status == finalised[0].0));
        prop_assert!(orchestrator.is_finalised());
        prop_assert_eq!(orchestrator.poll_timeout(), None);
    }
}

#[test]
fn the_feed_filter_keeps_by_level_session_and_text() {
    let filter = FeedFilter {
        level: level_rank("warn"),
        session: Some("s1".to_owned()),
        contains: Some("relay".to_owned()),
    };
    let cases = [
        (Some("error"), Some("s1"), "relay died"),
        (Some("warn"), Some("s1"), "relay slow"),
        (Some("info"), Some("s1"), "relay ok"),
        (None, Some("s1"), "relay output"),
        (Some("error"), Some("s2"), "relay died"),
        (Some("error"), None, "relay died"),
        (Some("error"), Some("s1"), "proxy died"),
        (Some("nonsense"), Some("s1"), "relay ?"),
    ];
    let table: Vec<String> = cases
        .iter()
        .map(|(level, session, message)| {
            format!(
                "{level:?} {session:?} {message:?} -> {}",
                filter.keeps(*level, *session, message)
            )
        })
        .collect();
    expect![[r#"
        Some("error") Some("s1") "relay died" -> true
        Some("warn") Some("s1") "relay slow" -> true
        Some("info") Some("s1") "relay ok" -> false
        None Some("s1") "relay output" -> true
        Some("error") Some("s2") "relay died" -> false
        Some("error") None "relay died" -> false
        Some("error") Some("s1") "proxy died" -> false
        Some("nonsense") Some("s1") "relay ?" -> true"#]]
    .assert_eq(&table.join("\n"));
    assert!(FeedFilter::default().keeps(Some("trace"), None, ""));
    assert_eq!(level_rank("WARN"), Some(1));
    assert_eq!(level_rank("loud"), None);
}
