//! Scripts of observations against the mastership machine, as tables, plus a property: whatever
//! happens, a replica is never master later than two thirds of the TTL after the last renewal
//! (or acquisition) that succeeded was sent.

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

/// Runs `script` (lines `AT EVENT`: `acquired TERM|none SENT`, `renewed ok|lost SENT`,
/// `failed`, `beacon held|free`, `lease none|TERM live|mine|expired`, `tick`) on a 6 s / 2 s machine; prints each decision that is
/// not `Stay`, then the role and next call.
fn check(script: &[&str], expected: Expect) {
    let mut machine = Mastership::new(LeaseTiming::DEFAULT);
    let mut out = String::new();
    for line in script {
        let words: Vec<&str> = line.split_whitespace().collect();
        let now: u64 = words[0].parse().unwrap();
        let observation = match &words[1..] {
            ["acquired", term, sent] => Observation::Acquired {
                sent_at: sent.parse().unwrap(),
                term: term.parse().ok(),
            },
            ["renewed", outcome, sent] => Observation::Renewed {
                sent_at: sent.parse().unwrap(),
                renewed: *outcome == "ok",
            },
            ["failed"] => Observation::LeaseFailed,
            ["beacon", state] => Observation::Beacon {
                held: *state == "held",
            },
            ["tick"] => Observation::Tick,
            ["beacon", "given", "back"] => Observation::BeaconGivenBack,
            ["lease", "none"] => Observation::LeaseSeen(None),
            ["lease", term, state] => Observation::LeaseSeen(Some(LeaseView {
                term: term.parse().unwrap(),
                held_by_me: *state == "mine",
                expired: *state == "expired",
            })),
            other => panic!("bad script line {other:?}"),
        };
        let decision = machine.observe(now, observation);
        if decision != Decision::Stay {
            out.push_str(&format!("{now}: {decision:?}\n"));
        }
    }
    out.push_str(&format!(
        "role {:?}, next {:?}\n",
        machine.role(),
        machine.next_call()
    ));
    expected.assert_eq(&out);
}

#[test]
fn a_follower_forces_only_when_the_beacon_it_saw_busy_under_this_term_comes_free() {
    // Never taken, or expired: try without force.
    check(
        &["0 lease none"],
        expect![[r#"
        role Follower, next Acquire { force: false }
    "#]],
    );
    check(
        &["0 lease 4 expired", "0 beacon free"],
        expect![[r#"
        role Follower, next Acquire { force: false }
    "#]],
    );
    // A live lease and a busy beacon: wait.
    check(
        &["0 lease 4 live", "0 beacon free"],
        expect![[r#"
        role Follower, next Wait
    "#]],
    );
    // The beacon was busy under term 4 and is now ours with term 4 still there: its holder's
    // session ended, take it at once.
    check(
        &[
            "0 lease 4 live",
            "0 beacon free",
            "900 lease 4 live",
            "900 beacon held",
        ],
        expect![[r#"
            role Follower, next Acquire { force: true }
        "#]],
    );
    // Ours, but never seen busy under this term (the master took the lease by expiry, without
    // the lock, and we are a deposed master that woke up): no force, give the lock back.
    check(
        &[
            "0 lease 4 live",
            "0 beacon free",
            "900 lease 5 live",
            "900 beacon held",
        ],
        expect![[r#"
            role Follower, next Wait
        "#]],
    );
    // Given back by ourselves and taken again under the same term: still no force.
    check(
        &[
            "0 lease 4 live",
            "0 beacon held",
            "0 beacon given back",
            "900 lease 4 live",
            "900 beacon held",
        ],
        expect![[r#"
            role Follower, next Wait
        "#]],
    );
    // The lease names this replica (its previous run, killed) and the lock is free: take it.
    check(
        &["0 lease 4 mine", "0 beacon held"],
        expect![[r#"
        role Follower, next Acquire { force: true }
    "#]],
    );
}

#[test]
fn a_taken_lease_makes_a_master_that_renews_with_its_term() {
    check(
        &["0 beacon held", "10 acquired 7 5"],
        expect![[r#"
            10: BecomeMaster { term: 7 }
            role Master { term: 7 }, next Renew { term: 7, deadline: 4005 }
        "#]],
    );
}

#[test]
fn renewals_push_the_deadline_from_when_they_were_sent() {
    check(
        &[
            "0 acquired 1 0",
            "2100 renewed ok 2000",
            "4100 renewed ok 4000",
            "7900 tick",
        ],
        expect![[r#"
            0: BecomeMaster { term: 1 }
            role Master { term: 1 }, next Renew { term: 1, deadline: 8000 }
        "#]],
    );
}

#[test]
fn a_master_steps_down_by_itself_two_thirds_into_the_ttl_without_a_renewal() {
    check(
        &["0 acquired 1 0", "2000 failed", "3999 failed", "4000 tick"],
        expect![[r#"
            0: BecomeMaster { term: 1 }
            4000: StepDown { term: 1, reason: RenewalOverdue }
            role Follower, next Acquire { force: false }
        "#]],
    );
    // A paused process wakes up long after: its first observation steps it down.
    check(
        &["0 acquired 1 0", "30000 renewed ok 1000"],
        expect![[r#"
            0: BecomeMaster { term: 1 }
            30000: StepDown { term: 1, reason: RenewalOverdue }
            role Follower, next Acquire { force: false }
        "#]],
    );
}

#[test]
fn a_renewal_that_finds_another_term_deposes_at_once() {
    check(
        &["0 acquired 3 0", "2000 renewed lost 2000"],
        expect![[r#"
            0: BecomeMaster { term: 3 }
            2000: StepDown { term: 3, reason: Deposed }
            role Follower, next Acquire { force: false }
        "#]],
    );
}

#[test]
fn losing_the_beacon_steps_down_but_a_master_by_expiry_may_lack_it() {
    check(
        &["0 beacon held", "0 acquired 2 0", "500 beacon free"],
        expect![[r#"
            0: BecomeMaster { term: 2 }
            500: StepDown { term: 2, reason: BeaconLost }
            role Follower, next Acquire { force: false }
        "#]],
    );
    // Master after the lease expired while another session kept the lock: no beacon yet.
    check(
        &["0 acquired 2 0", "500 beacon free", "2000 renewed ok 2000"],
        expect![[r#"
            0: BecomeMaster { term: 2 }
            role Master { term: 2 }, next Renew { term: 2, deadline: 6000 }
        "#]],
    );
}

#[test]
fn timings_must_renew_before_stepping_down() {
    assert_eq!(LeaseTiming::new(6_000, 2_000), Ok(LeaseTiming::DEFAULT));
    expect![[r#"
        Err(
            "the lease renewal period (4000 ms) must be shorter than two thirds of the lease TTL (6000 ms)",
        )
    "#]]
    .assert_debug_eq(&LeaseTiming::new(6_000, 4_000));
    assert!(LeaseTiming::new(6_000, 0).is_err());
}

fn arbitrary_observation() -> impl Strategy<Value = (u64, u8, Option<i64>, bool)> {
    (
        0u64..3_000,
        0u8..5,
        proptest::option::of(1i64..100),
        any::<bool>(),
    )
}

proptest! {
    #[test]
    fn never_master_past_two_thirds_of_the_ttl_after_the_last_success(
        steps in proptest::collection::vec(arbitrary_observation(), 1..60)
    ) {
        let timing = LeaseTiming::DEFAULT;
        let mut machine = Mastership::new(timing);
        let mut now = 0u64;
        // The oracle: when the last success was sent, tracked from the observations alone.
        let mut last_success_sent: Option<u64> = None;
        for (advance, kind, term, flag) in steps {
            now += advance;
            let sent_at = now.saturating_sub(advance / 2);
            let observation = match kind {
                0 => Observation::Acquired { sent_at, term },
                1 => Observation::Renewed { sent_at, renewed: flag },
                2 => Observation::LeaseFailed,
                3 => Observation::Beacon { held: flag },
                4 => Observation::Tick,
                _ => Observation::LeaseSeen(term.map(|term| LeaseView {
                    term,
                    held_by_me: flag,
                    expired: !flag,
                })),
            };
            let was_master = matches!(machine.role(), Role::Master { .. });
            let decision = machine.observe(now, observation);
            match (was_master, observation) {
                (false, Observation::Acquired { term: Some(_), .. }) => last_success_sent = Some(sent_at),
                (true, Observation::Renewed { renewed: true, .. }) => {
                    last_success_sent = last_success_sent.max(Some(sent_at));
                }
                _ => {}
            }
            if let Role::Master { .. } = machine.role() {
                let since = last_success_sent.expect("a master took the lease once");
                prop_assert!(now < since + timing.ttl_ms * 2 / 3,
                    "master at {now} though the last success was sent at {since} ({decision:?})");
            }
        }
    }
}
