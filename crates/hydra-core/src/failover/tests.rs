//! The failover loop as data: a script of what each discovery and launch does, and the steps
//! the loop takes.

use expect_test::{Expect, expect};

use super::*;

/// Drives the loop through `script` (`discovery fails`, `launch fails`, `ends`, and for a
/// discovery `no replica (kept)` / `no replica (none kept)`), one entry per `Discover` or
/// `WalkKept` step, with the backoff's random unit at 0.5, and prints every step.
fn check(settings: FailoverSettings, script: &[&str], expected: Expect) {
    let mut failover = FailoverLoop::new(settings);
    let mut script = script.iter();
    let mut trace = Vec::new();
    for _ in 0..100 {
        let step = failover.next_step(0.5);
        match &step {
            Step::Discover | Step::WalkKept => {
                let what = if step == Step::Discover {
                    "discover"
                } else {
                    "walk kept"
                };
                let Some(outcome) = script.next() else {
                    trace.push(format!("{what} (script ended)"));
                    break;
                };
                trace.push(format!("{what} -> {outcome}"));
                match *outcome {
                    "discovery fails" => failover.discovery_failed("no body reachable"),
                    "launch fails" => failover.launch_failed("exited in the launch window"),
                    "ends" => failover.stream_ended(),
                    "no replica (kept)" => failover.control_plane_unreachable("no replica", true),
                    "no replica (none kept)" => {
                        failover.control_plane_unreachable("no replica", false);
                    }
                    other => panic!("unknown script entry {other:?}"),
                }
            }
            Step::Backoff { delay_ms, attempt } => {
                trace.push(format!("wait {delay_ms} ms before attempt {attempt}"));
            }
            Step::Done => {
                trace.push("done".to_owned());
                break;
            }
            Step::GiveUp {
                failures,
                last_failure,
            } => {
                trace.push(format!("give up after {failures}: {last_failure}"));
                break;
            }
        }
    }
    expected.assert_eq(&trace.join("\n"));
}

fn streams(limit: u32) -> FailoverSettings {
    FailoverSettings {
        streams: Some(limit),
        ..FailoverSettings::default()
    }
}

#[test]
fn each_stream_discovers_again() {
    check(
        streams(2),
        &["ends", "ends"],
        expect![[r#"
            discover -> ends
            discover -> ends
            done"#]],
    );
}

#[test]
fn a_failed_launch_backs_off_then_discovers_again() {
    check(
        streams(1),
        &["launch fails", "launch fails", "ends"],
        expect![[r#"
            discover -> launch fails
            wait 500 ms before attempt 2
            discover -> launch fails
            wait 1000 ms before attempt 3
            discover -> ends
            done"#]],
    );
}

#[test]
fn a_stream_that_ran_forgives_earlier_failures() {
    check(
        streams(2),
        &["discovery fails", "ends", "launch fails", "ends"],
        expect![[r#"
            discover -> discovery fails
            wait 500 ms before attempt 2
            discover -> ends
            discover -> launch fails
            wait 500 ms before attempt 2
            discover -> ends
            done"#]],
    );
}

#[test]
fn gives_up_after_the_bound_of_failures_in_a_row() {
    check(
        FailoverSettings {
            max_attempts: 3,
            ..FailoverSettings::default()
        },
        &["discovery fails", "launch fails", "launch fails", "ends"],
        expect![[r#"
            discover -> discovery fails
            wait 500 ms before attempt 2
            discover -> launch fails
            wait 1000 ms before attempt 3
            discover -> launch fails
            give up after 3: exited in the launch window"#]],
    );
}

#[test]
fn the_backoff_is_capped() {
    check(
        FailoverSettings {
            max_attempts: 9,
            backoff_max_ms: 3_000,
            ..FailoverSettings::default()
        },
        &["discovery fails"; 9],
        expect![[r#"
            discover -> discovery fails
            wait 500 ms before attempt 2
            discover -> discovery fails
            wait 1000 ms before attempt 3
            discover -> discovery fails
            wait 1500 ms before attempt 4
            discover -> discovery fails
            wait 1500 ms before attempt 5
            discover -> discovery fails
            wait 1500 ms before attempt 6
            discover -> discovery fails
            wait 1500 ms before attempt 7
            discover -> discovery fails
            wait 1500 ms before attempt 8
            discover -> discovery fails
            wait 1500 ms before attempt 9
            discover -> discovery fails
            give up after 9: no body reachable"#]],
    );
}

#[test]
fn no_stream_limit_runs_until_the_caller_stops() {
    check(
        FailoverSettings::default(),
        &["ends", "ends", "ends"],
        expect![[r#"
            discover -> ends
            discover -> ends
            discover -> ends
            discover (script ended)"#]],
    );
}

#[test]
fn exits_are_classified_by_pairing_code_then_launch_window() {
    let cases = [
        (100, Some(0), "exit 0 after 100 ms"),
        (100, Some(7), "exit 7 after 100 ms"),
        (20_000, Some(7), "exit 7 after 20 s"),
        (20_000, Some(0), "exit 0 after 20 s"),
        (10_000, None, "killed at exactly the window"),
        (9_999, None, "killed just inside the window"),
    ];
    let lines: Vec<String> = cases
        .iter()
        .map(|(ran_for_ms, code, label)| {
            let exit = classify_exit(*ran_for_ms, *code, 10_000, &[7]);
            format!(
                "{label}: {exit:?} (launch failed: {})",
                exit.launch_failed()
            )
        })
        .collect();
    expect![[r#"
        exit 0 after 100 ms: ExitedInLaunchWindow (launch failed: true)
        exit 7 after 100 ms: PairingFailed (launch failed: true)
        exit 7 after 20 s: PairingFailed (launch failed: true)
        exit 0 after 20 s: Ended (launch failed: false)
        killed at exactly the window: Ended (launch failed: false)
        killed just inside the window: ExitedInLaunchWindow (launch failed: true)"#]]
    .assert_eq(&lines.join("\n"));
}

/// Issue 10: with no replica answering, the head walks its kept list at once (not a failure),
/// and asks the control plane first again for the next stream.
#[test]
fn without_a_control_plane_the_kept_list_is_walked_and_the_control_plane_asked_first_again() {
    check(
        streams(3),
        &[
            "ends",
            "no replica (kept)",
            "ends",
            "no replica (kept)",
            "launch fails",
            "no replica (kept)",
            "ends",
            "ends",
        ],
        expect![[r#"
            discover -> ends
            discover -> no replica (kept)
            walk kept -> ends
            discover -> no replica (kept)
            walk kept -> launch fails
            wait 500 ms before attempt 2
            discover -> no replica (kept)
            walk kept -> ends
            done"#]],
    );
    // Nothing kept: the control plane's silence is a failed discovery, as before.
    check(
        FailoverSettings {
            max_attempts: 2,
            ..streams(1)
        },
        &["no replica (none kept)", "no replica (none kept)"],
        expect![[r#"
            discover -> no replica (none kept)
            wait 500 ms before attempt 2
            discover -> no replica (none kept)
            give up after 2: no replica"#]],
    );
}
