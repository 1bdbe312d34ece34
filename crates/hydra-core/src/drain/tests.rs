//! The drain estimate and the follower's steps, as tables and properties.

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

const MINUTE: i64 = 60_000;
const NOW: i64 = 1_000 * MINUTE;

/// `ages` in minutes, a deadline in minutes from now: the estimate in minutes from now.
fn check(ages: &[i64], deadline: Option<i64>, expected: Expect) {
    let started: Vec<i64> = ages.iter().map(|age| NOW - age * MINUTE).collect();
    let estimate = drain_estimate(NOW, &started, deadline.map(|d| NOW + d * MINUTE));
    let text = format!(
        "{} left, ends in {} min{}",
        estimate.sessions_left,
        (estimate.expected_end - NOW) / MINUTE,
        if estimate.by_deadline {
            " (deadline)"
        } else {
            ""
        }
    );
    expected.assert_eq(&text);
}

#[test]
fn the_drain_is_expected_to_last_as_long_again_as_its_oldest_session() {
    check(&[], None, expect!["0 left, ends in 0 min"]);
    check(&[], Some(10), expect!["0 left, ends in 0 min"]);
    check(&[30], None, expect!["1 left, ends in 30 min"]);
    check(&[5, 45, 20], None, expect!["3 left, ends in 45 min"]);
    // A session that just started is not about to end.
    check(&[0], None, expect!["1 left, ends in 1 min"]);
    check(&[-5], None, expect!["1 left, ends in 1 min"]);
    // The deadline cuts it short, or does not matter when the sessions end before it.
    check(
        &[45],
        Some(10),
        expect!["1 left, ends in 10 min (deadline)"],
    );
    check(&[5], Some(10), expect!["1 left, ends in 5 min"]);
    // A deadline already past ends them now.
    check(&[45], Some(-3), expect!["1 left, ends in 0 min (deadline)"]);
}

#[test]
fn the_follower_waits_notifies_once_then_ends() {
    let steps: Vec<String> = [
        (0, None, None),
        (2, None, None),
        (2, Some(NOW + MINUTE), None),
        (2, Some(NOW), None),
        (2, Some(NOW - MINUTE), Some(NOW - 10_000)),
        (2, Some(NOW - MINUTE), Some(NOW - 30_000)),
        (0, Some(NOW - MINUTE), Some(NOW - 30_000)),
    ]
    .iter()
    .map(|(left, deadline, notified)| {
        format!(
            "{left} {deadline:?} {notified:?} -> {:?}",
            drain_step(NOW, *left, *deadline, *notified, 30_000)
        )
        .replace(&NOW.to_string(), "now")
    })
    .collect();
    expect![[r#"
        [
            "0 None None -> Done",
            "2 None None -> Wait",
            "2 Some(60060000) None -> Wait",
            "2 Some(now) None -> Notify",
            "2 Some(59940000) Some(59990000) -> Wait",
            "2 Some(59940000) Some(59970000) -> End",
            "0 Some(59940000) Some(59970000) -> Done",
        ]
    "#]]
    .assert_debug_eq(&steps);
}

proptest! {
    /// Never before now; with a deadline that cuts it short, exactly at the deadline (or now,
    /// when it passed) and some session would have run past it; else exactly the end of the
    /// longest session, each session judged on its own (its age again, at least a minute).
    #[test]
    fn the_estimate_is_bounded_by_now_the_sessions_and_the_deadline(
        ages in proptest::collection::vec(-10_000i64..10_000_000, 0..20),
        deadline in proptest::option::of(-10_000_000i64..10_000_000),
    ) {
        let started: Vec<i64> = ages.iter().map(|age| NOW - age).collect();
        let deadline = deadline.map(|offset| NOW + offset);
        let estimate = drain_estimate(NOW, &started, deadline);
        prop_assert_eq!(estimate.sessions_left, ages.len());
        prop_assert!(estimate.expected_end >= NOW);
        let own_ends: Vec<i64> = ages.iter().map(|age| NOW + (*age).max(MIN_REMAINING_MS)).collect();
        if estimate.by_deadline {
            let cut = deadline.expect("a deadline").max(NOW);
            prop_assert_eq!(estimate.expected_end, cut);
            prop_assert!(own_ends.iter().any(|end| *end > cut));
        } else {
            prop_assert!(own_ends.iter().all(|end| *end <= estimate.expected_end));
            prop_assert!(ages.is_empty() || own_ends.contains(&estimate.expected_end));
            if let Some(deadline) = deadline {
                prop_assert!(ages.is_empty() || own_ends.iter().all(|end| *end <= deadline.max(NOW)));
            }
        }
    }
}
