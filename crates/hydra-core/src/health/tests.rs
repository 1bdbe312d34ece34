//! The health checker as data: scripts of `check-master` rounds and resyncs, and what the
//! machine did and logged; plus properties over generated scripts (WARN and INFO alternate).

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

/// A replica's answer written as `a=master`, `a=silent`, `a=replica` (answers, knows no master)
/// or `a=replica->b` (answers, names `b` as master); replica `a` is `http://a`. A suffix `@c`
/// names the answer's cluster id `c` (without one, the replica names none, as older servers).
fn parse_check(word: &str) -> ReplicaCheck {
    let (name, answer) = word.split_once('=').expect("replica=answer");
    let (answer, cluster_id) = match answer.split_once('@') {
        Some((answer, cluster)) => (answer, Some(cluster.to_owned())),
        None => (answer, None),
    };
    let answer = match answer {
        "silent" => ReplicaAnswer::Silent,
        "master" => ReplicaAnswer::Answered {
            is_master: true,
            master_url: Some(format!("http://{name}")),
            cluster_id,
        },
        "replica" => ReplicaAnswer::Answered {
            is_master: false,
            master_url: None,
            cluster_id,
        },
        other => {
            let pointed = other.strip_prefix("replica->").expect("replica->x");
            ReplicaAnswer::Answered {
                is_master: false,
                master_url: Some(format!("http://{pointed}")),
                cluster_id,
            }
        }
    };
    ReplicaCheck {
        base_url: format!("http://{name}"),
        answer,
    }
}

fn describe(state: HealthState) -> String {
    match state {
        HealthState::Healthy => "healthy".to_owned(),
        HealthState::Degraded { since_ms } => format!("degraded since {since_ms}"),
        HealthState::Recovering { since_ms } => format!("recovering (degraded since {since_ms})"),
    }
}

/// Runs `script` (one step a line: `@<ms> v<config version> <replica answers>` for a round, or
/// `@<ms> caught up`) on a checker that starts following `master`, printing each step, its
/// outputs (log lines as they are logged) and the state after it.
fn check(master: Option<&str>, script: &[&str], expected: Expect) {
    check_on(
        HealthChecker::new(master.map(|name| format!("http://{name}"))),
        script,
        expected,
    );
}

/// As [`check`], on a given checker (e.g. one that refreshes the replica list on a timer).
fn check_on(mut checker: HealthChecker, script: &[&str], expected: Expect) {
    let mut trace = Vec::new();
    for step in script {
        let mut words = step.split_whitespace();
        let now_ms: i64 = words
            .next()
            .and_then(|at| at.strip_prefix('@'))
            .and_then(|ms| ms.parse().ok())
            .expect("@<ms>");
        let rest: Vec<&str> = words.collect();
        let outputs = if rest == ["caught", "up"] {
            checker.caught_up(now_ms)
        } else {
            let version: u64 = rest
                .first()
                .and_then(|word| word.strip_prefix('v'))
                .and_then(|version| version.parse().ok())
                .expect("v<config version>");
            let checks: Vec<ReplicaCheck> =
                rest[1..].iter().map(|word| parse_check(word)).collect();
            checker.round(&checks, now_ms, version)
        };
        trace.push((*step).to_owned());
        for output in &outputs {
            trace.push(format!("  {output}"));
        }
        trace.push(format!("  = {}", describe(checker.state())));
    }
    expected.assert_eq(&trace.join("\n"));
}

#[test]
fn a_steady_master_changes_nothing() {
    check(
        Some("a"),
        &[
            "@0 v3 a=master b=replica->a",
            "@60000 v3 a=master b=replica->a",
        ],
        expect![[r#"
            @0 v3 a=master b=replica->a
              = healthy
            @60000 v3 a=master b=replica->a
              = healthy"#]],
    );
}

#[test]
fn the_first_round_finds_the_master() {
    check(
        None,
        &["@0 v0 a=replica->b b=master"],
        expect![[r#"
            @0 v0 a=replica->b b=master
              [health] following master http://b
              = healthy"#]],
    );
}

#[test]
fn a_new_master_is_followed_and_the_list_refreshed() {
    // The old master is killed; the survivor takes the lease.
    check(
        Some("a"),
        &[
            "@0 v3 a=master b=replica->a",
            "@1000 v3 a=silent b=master",
            "@2000 v3 a=silent b=master",
        ],
        expect![[r#"
            @0 v3 a=master b=replica->a
              = healthy
            @1000 v3 a=silent b=master
              [health] master changed from http://a to http://b
              [health] refreshing the replica list from http://b
              = healthy
            @2000 v3 a=silent b=master
              [health] refreshing the replica list from http://b
              = healthy"#]],
    );
}

#[test]
fn a_pointer_to_a_silent_replica_is_no_master() {
    // b still names a, but a did not answer: writes would fail there, so the agent degrades,
    // reading the replica list from b, which answers.
    check(
        Some("a"),
        &["@5000 v7 a=silent b=replica->a"],
        expect![[r#"
            @5000 v7 a=silent b=replica->a
              [health] no master reachable; degraded mode, running on config version 7
              [health] refreshing the replica list from http://b
              = degraded since 5000"#]],
    );
}

#[test]
fn a_pointer_to_an_answering_master_is_followed() {
    check(
        Some("a"),
        &["@0 v1 a=silent b=replica->c c=replica"],
        expect![[r#"
            @0 v1 a=silent b=replica->c c=replica
              [health] master changed from http://a to http://c
              [health] refreshing the replica list from http://c
              = healthy"#]],
    );
}

#[test]
fn all_down_warns_once_then_recovers_with_one_info() {
    check(
        Some("a"),
        &[
            "@0 v4 a=master b=replica->a",
            "@60000 v4 a=silent b=silent",
            "@120000 v4 a=silent b=silent",
            "@180000 v4 a=master b=replica->a",
            "@181500 caught up",
            "@240000 v4 a=master b=replica->a",
        ],
        expect![[r#"
            @0 v4 a=master b=replica->a
              = healthy
            @60000 v4 a=silent b=silent
              [health] no master reachable; degraded mode, running on config version 4
              = degraded since 60000
            @120000 v4 a=silent b=silent
              = degraded since 60000
            @180000 v4 a=master b=replica->a
              [health] master back; resyncing
              = recovering (degraded since 60000)
            @181500 caught up
              [health] master reachable again; recovered after 121 s in degraded mode
              = healthy
            @240000 v4 a=master b=replica->a
              = healthy"#]],
    );
}

#[test]
fn replicas_that_answer_without_a_master_still_degrade() {
    // The lease is vacant: reads can go to a and b, writes cannot.
    check(
        Some("a"),
        &["@0 v2 a=replica b=replica"],
        expect![[r#"
            @0 v2 a=replica b=replica
              [health] no master reachable; degraded mode, running on config version 2
              = degraded since 0"#]],
    );
}

#[test]
fn a_master_that_flaps_during_the_resync_logs_nothing_twice() {
    check(
        Some("a"),
        &[
            "@0 v5 a=silent",
            "@1000 v5 a=master",
            "@2000 v5 a=silent",
            "@3000 v5 a=master",
            "@3500 caught up",
        ],
        expect![[r#"
            @0 v5 a=silent
              [health] no master reachable; degraded mode, running on config version 5
              = degraded since 0
            @1000 v5 a=master
              [health] master back; resyncing
              = recovering (degraded since 0)
            @2000 v5 a=silent
              = degraded since 0
            @3000 v5 a=master
              [health] master back; resyncing
              = recovering (degraded since 0)
            @3500 caught up
              [health] master reachable again; recovered after 3 s in degraded mode
              = healthy"#]],
    );
}

#[test]
fn a_resync_that_outlived_a_new_outage_changes_nothing() {
    check(
        Some("a"),
        &[
            "@0 v1 a=silent",
            "@1000 v1 a=master",
            "@2000 v1 a=silent",
            "@2500 caught up",
        ],
        expect![[r#"
            @0 v1 a=silent
              [health] no master reachable; degraded mode, running on config version 1
              = degraded since 0
            @1000 v1 a=master
              [health] master back; resyncing
              = recovering (degraded since 0)
            @2000 v1 a=silent
              = degraded since 0
            @2500 caught up
              = degraded since 0"#]],
    );
}

#[test]
fn recovery_on_another_master_follows_it() {
    check(
        Some("a"),
        &[
            "@0 v9 a=silent b=silent",
            "@1000 v9 a=silent b=master",
            "@1200 caught up",
        ],
        expect![[r#"
            @0 v9 a=silent b=silent
              [health] no master reachable; degraded mode, running on config version 9
              = degraded since 0
            @1000 v9 a=silent b=master
              [health] master changed from http://a to http://b
              [health] master back; resyncing
              [health] refreshing the replica list from http://b
              = recovering (degraded since 0)
            @1200 caught up
              [health] master reachable again; recovered after 1 s in degraded mode
              = healthy"#]],
    );
}

#[test]
fn two_claimants_do_not_flip_the_followed_master() {
    // During a lease hand-over both may say master for a round; the followed one is kept.
    check(
        Some("b"),
        &["@0 v1 a=master b=master", "@1000 v1 a=master b=replica->a"],
        expect![[r#"
            @0 v1 a=master b=master
              = healthy
            @1000 v1 a=master b=replica->a
              [health] master changed from http://b to http://a
              [health] refreshing the replica list from http://a
              = healthy"#]],
    );
}

#[test]
fn the_replica_list_is_read_first_then_on_a_timer_and_on_failure() {
    // Every 5 s (5 rounds of 1 s): an agent configured with `a` alone learns replicas added
    // later while `a` still answers; a failure asks at once and starts the timer again.
    check_on(
        HealthChecker::new(None).with_refresh_every(5_000),
        &[
            "@0 v1 a=master",
            "@1000 v1 a=master",
            "@4999 v1 a=master",
            "@5000 v1 a=master b=replica->a",
            "@6000 v1 a=master b=silent",
            "@7000 v1 a=master b=replica->a",
            "@11000 v1 a=master b=replica->a",
            "@12000 v1 a=silent b=silent",
            "@13000 v1 a=silent b=master",
        ],
        expect![[r#"
            @0 v1 a=master
              [health] following master http://a
              [health] refreshing the replica list from http://a
              = healthy
            @1000 v1 a=master
              = healthy
            @4999 v1 a=master
              = healthy
            @5000 v1 a=master b=replica->a
              [health] refreshing the replica list from http://a
              = healthy
            @6000 v1 a=master b=silent
              [health] refreshing the replica list from http://a
              = healthy
            @7000 v1 a=master b=replica->a
              = healthy
            @11000 v1 a=master b=replica->a
              [health] refreshing the replica list from http://a
              = healthy
            @12000 v1 a=silent b=silent
              [health] no master reachable; degraded mode, running on config version 1
              = degraded since 12000
            @13000 v1 a=silent b=master
              [health] master changed from http://a to http://b
              [health] master back; resyncing
              [health] refreshing the replica list from http://b
              = recovering (degraded since 12000)"#]],
    );
}

#[test]
fn the_cluster_is_learned_from_the_first_master_and_a_foreign_claimant_is_never_followed() {
    // The flaky run of issue 10: the master a is killed, b takes over; a foreign `hydra server`
    // (its own store, cluster x) takes a's address and claims the lease. It is ignored with one
    // WARN, b is followed; when all of the agent's own replicas are gone the agent degrades
    // rather than recover on the foreign one, and recovers on its own master.
    check(
        None,
        &[
            "@0 v1 a=master@c1 b=replica->a@c1",
            "@1000 v1 a=master@x b=master@c1",
            "@2000 v1 a=master@x b=master@c1",
            "@3000 v1 a=master@x b=silent",
            "@4000 v1 a=master@x b=silent",
            "@5000 v1 a=silent b=master@c1",
            "@5500 caught up",
        ],
        expect![[r#"
            @0 v1 a=master@c1 b=replica->a@c1
              [health] this agent's control plane is cluster c1; replicas of another cluster are ignored
              [health] following master http://a
              = healthy
            @1000 v1 a=master@x b=master@c1
              [health] replica http://a belongs to another cluster (id x); ignored
              [health] master changed from http://a to http://b
              [health] refreshing the replica list from http://b
              = healthy
            @2000 v1 a=master@x b=master@c1
              [health] refreshing the replica list from http://b
              = healthy
            @3000 v1 a=master@x b=silent
              [health] no master reachable; degraded mode, running on config version 1
              = degraded since 3000
            @4000 v1 a=master@x b=silent
              = degraded since 3000
            @5000 v1 a=silent b=master@c1
              [health] master back; resyncing
              [health] refreshing the replica list from http://b
              = recovering (degraded since 3000)
            @5500 caught up
              [health] master reachable again; recovered after 2 s in degraded mode
              = healthy"#]],
    );
}

#[test]
fn a_kept_cluster_ignores_a_foreign_replica_from_the_first_round_and_warns_again_after_it_left() {
    // An agent restarted while a foreign server sits on its only replica's address: degraded
    // from the first round, never following it; its own server back at the address clears the
    // warning, so a second squatter is named again. A server naming no cluster (older) counts.
    check_on(
        HealthChecker::new(Some("http://a".to_owned())).with_cluster(Some("c1".to_owned())),
        &[
            "@0 v2 a=master@x",
            "@1000 v2 a=master@x",
            "@2000 v2 a=master@c1",
            "@2100 caught up",
            "@3000 v2 a=master@y",
            "@4000 v2 a=master",
        ],
        expect![[r#"
            @0 v2 a=master@x
              [health] replica http://a belongs to another cluster (id x); ignored
              [health] no master reachable; degraded mode, running on config version 2
              = degraded since 0
            @1000 v2 a=master@x
              = degraded since 0
            @2000 v2 a=master@c1
              [health] master back; resyncing
              = recovering (degraded since 0)
            @2100 caught up
              [health] master reachable again; recovered after 2 s in degraded mode
              = healthy
            @3000 v2 a=master@y
              [health] replica http://a belongs to another cluster (id y); ignored
              [health] no master reachable; degraded mode, running on config version 2
              = degraded since 3000
            @4000 v2 a=master
              [health] master back; resyncing
              = recovering (degraded since 3000)"#]],
    );
}

#[test]
fn membership_is_foreign_only_when_both_clusters_are_known_and_differ() {
    let table: Vec<String> = [
        (None, None),
        (None, Some("c1")),
        (Some("c1"), None),
        (Some("c1"), Some("c1")),
        (Some("c1"), Some("c2")),
    ]
    .into_iter()
    .map(|(known, named)| format!("{known:?} {named:?} -> {:?}", membership(known, named)))
    .collect();
    expect![[r#"
        None None -> Member
        None Some("c1") -> Member
        Some("c1") None -> Member
        Some("c1") Some("c1") -> Member
        Some("c1") Some("c2") -> Foreign"#]]
    .assert_eq(&table.join("\n"));
}

#[test]
fn the_interval_defaults_to_a_minute_and_goes_down_to_a_second() {
    let table: Vec<String> = [None, Some(1_000), Some(999), Some(0), Some(300_000)]
        .into_iter()
        .map(|configured| format!("{configured:?} -> {:?}", health_interval_ms(configured)))
        .collect();
    expect![[r#"
        None -> Ok(60000)
        Some(1000) -> Ok(1000)
        Some(999) -> Err("must be at least 1000 ms (1 s), got 999 ms")
        Some(0) -> Err("must be at least 1000 ms (1 s), got 0 ms")
        Some(300000) -> Ok(300000)"#]]
    .assert_eq(&table.join("\n"));
}

/// One generated step: a round over replicas a, b, c, or the caller's resync finishing.
#[derive(Debug, Clone)]
enum Step {
    Round(Vec<ReplicaCheck>),
    CaughtUp,
}

/// The cluster the generated agent belongs to; answers name it, another one (`c2`), or none.
const OWN_CLUSTER: &str = "c1";

fn step() -> impl Strategy<Value = Step> {
    let cluster = prop_oneof![
        2 => Just(Some(OWN_CLUSTER.to_owned())),
        1 => Just(Some("c2".to_owned())),
        1 => Just(None),
    ];
    let answer = prop_oneof![
        Just(ReplicaAnswer::Silent),
        (any::<bool>(), cluster.clone()).prop_map(|(is_master, cluster_id)| {
            ReplicaAnswer::Answered {
                is_master,
                master_url: None,
                cluster_id,
            }
        }),
        (0..3u8, cluster).prop_map(|(target, cluster_id)| ReplicaAnswer::Answered {
            is_master: false,
            master_url: Some(format!("http://{}", (b'a' + target) as char)),
            cluster_id,
        }),
    ];
    prop_oneof![
        3 => proptest::collection::vec(answer, 3).prop_map(|answers| {
            Step::Round(
                answers
                    .into_iter()
                    .zip(["a", "b", "c"])
                    .map(|(answer, name)| ReplicaCheck { base_url: format!("http://{name}"), answer })
                    .collect(),
            )
        }),
        1 => Just(Step::CaughtUp),
    ]
}

/// Whether `check` answered from the agent's own cluster (or named none): written plainly, a
/// replica of cluster `c2` is as if it had not answered.
fn own_answer(check: &ReplicaCheck) -> bool {
    match &check.answer {
        ReplicaAnswer::Silent => false,
        ReplicaAnswer::Answered { cluster_id, .. } => cluster_id.as_deref() != Some("c2"),
    }
}

/// The field's rule read plainly, independent of the machine: is there a master to write to?
fn some_master_answers(checks: &[ReplicaCheck]) -> bool {
    let answered = |url: &str| {
        checks
            .iter()
            .any(|check| check.base_url == url && own_answer(check))
    };
    checks
        .iter()
        .filter(|check| own_answer(check))
        .any(|check| match &check.answer {
            ReplicaAnswer::Silent => false,
            ReplicaAnswer::Answered {
                is_master,
                master_url,
                ..
            } => *is_master || master_url.as_deref().is_some_and(answered),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Whatever the replicas say: the WARN and the INFO alternate, starting with the WARN; the
    /// agent is degraded exactly when the last round found no master of its own cluster; a
    /// followed master (and a replica list's source) is one of its cluster that answered this
    /// round, never a foreign one.
    #[test]
    fn warn_and_info_alternate(steps in proptest::collection::vec(step(), 0..40)) {
        let mut checker = HealthChecker::new(None).with_cluster(Some(OWN_CLUSTER.to_owned()));
        let mut logged = String::new();
        for (index, step) in steps.iter().enumerate() {
            let now_ms = index as i64 * 1_000;
            let outputs = match step {
                Step::Round(checks) => checker.round(checks, now_ms, 1),
                Step::CaughtUp => checker.caught_up(now_ms),
            };
            for output in &outputs {
                match output {
                    Output::EnteredDegraded { .. } => logged.push('W'),
                    Output::Recovered { degraded_for_ms } => {
                        prop_assert!(*degraded_for_ms >= 0);
                        logged.push('I');
                    }
                    Output::FollowMaster { to, .. } => {
                        let Step::Round(checks) = step else { unreachable!() };
                        prop_assert!(checks.iter().any(|check| &check.base_url == to && own_answer(check)));
                    }
                    Output::RefreshReplicas { from } => {
                        let Step::Round(checks) = step else { unreachable!() };
                        prop_assert!(checks.iter().any(|check| &check.base_url == from && own_answer(check)));
                    }
                    Output::ForeignReplica { cluster_id, .. } => prop_assert_eq!(cluster_id, "c2"),
                    Output::LearnedCluster { .. } => prop_assert!(false, "the cluster was known"),
                    Output::Resync => {}
                }
            }
            if let Step::Round(checks) = step {
                let degraded = matches!(checker.state(), HealthState::Degraded { .. });
                prop_assert_eq!(degraded, !some_master_answers(checks), "after {:?}", checks);
            }
        }
        prop_assert!(!logged.contains("WW") && !logged.contains("II") && !logged.starts_with('I'), "{}", logged);
    }
}
