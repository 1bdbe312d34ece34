//! Table tests and property tests of session placement.

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

const NOW: UnixMillis = 1_000_000;
const SETTINGS: PlacementSettings = PlacementSettings {
    heartbeat_timeout_ms: 60_000,
};

/// Parses a compact worker description: `id active/max` plus modifiers `drained`,
/// `silent` (no heartbeat ever) and `age=<ms>` (heartbeat age; 1000 by default).
fn worker(spec: &str) -> WorkerLoad<'_> {
    let mut words = spec.split_whitespace();
    let id = words.next().expect("id");
    let (active, max) = words
        .next()
        .and_then(|load| load.split_once('/'))
        .expect("active/max");
    let mut load = WorkerLoad {
        id,
        last_heartbeat: Some(NOW - 1_000),
        drained: false,
        active_sessions: active.parse().expect("active"),
        max_sessions: max.parse().expect("max"),
    };
    for modifier in words {
        match modifier {
            "drained" => load.drained = true,
            "silent" => load.last_heartbeat = None,
            age if age.starts_with("age=") => {
                load.last_heartbeat = Some(NOW - age[4..].parse::<i64>().expect("age"));
            }
            other => panic!("unknown modifier {other}"),
        }
    }
    load
}

fn check(specs: &[&str], expected: Expect) {
    let workers: Vec<WorkerLoad<'_>> = specs.iter().map(|spec| worker(spec)).collect();
    let answer = match least_loaded_worker(&workers, NOW, &SETTINGS) {
        Ok(id) => id.to_owned(),
        Err(error) => format!("error: {error}"),
    };
    expected.assert_eq(&answer);
}

#[test]
fn lowest_load_ratio_wins() {
    check(&["w1 3/15", "w2 1/15", "w3 2/15"], expect!["w2"]);
    // Ratio, not count: 2/4 = 50 % is more loaded than 5/15 = 33 %.
    check(&["small 2/4", "big 5/15"], expect!["big"]);
}

#[test]
fn stale_drained_and_silent_workers_are_not_healthy() {
    check(
        &["stale 0/15 age=60000", "drained 0/15 drained", "busy 14/15"],
        expect!["busy"],
    );
    check(
        &[
            "fresh-enough 0/15 age=59999",
            "idle-but-late 0/15 age=60001",
        ],
        expect!["fresh-enough"],
    );
    check(
        &[
            "stale 0/15 age=120000",
            "silent 0/15 silent",
            "drained 0/15 drained",
        ],
        expect!["error: no healthy workers available"],
    );
    check(&[], expect!["error: no healthy workers available"]);
}

#[test]
fn full_workers_are_skipped() {
    check(&["full 15/15", "almost 14/15"], expect!["almost"]);
    // A full fleet is the field's `no healthy workers available` (`max sessions reached` is a
    // worker's own answer when asked directly).
    check(
        &["full 15/15", "over 16/15", "none 0/0"],
        expect!["error: no healthy workers available"],
    );
    check(
        &["full 15/15", "stale 0/15 age=90000"],
        expect!["error: no healthy workers available"],
    );
}

#[test]
fn ties_are_broken_by_free_slots_then_id() {
    check(&["w-b 0/15", "w-a 0/15"], expect!["w-a"]);
    check(&["w-a 0/5", "w-b 0/15"], expect!["w-b"]);
    check(&["w-a 1/5", "w-b 3/15"], expect!["w-b"]);
}

#[test]
fn load_comparison_is_exact() {
    let a = worker("a 1/3");
    let b = worker("b 2/6");
    let c = worker("c 1/2");
    let zero = worker("z 0/0");
    assert_eq!(compare_load(&a, &b), Ordering::Equal);
    assert_eq!(compare_load(&a, &c), Ordering::Less);
    assert_eq!(compare_load(&c, &zero), Ordering::Less);
    assert_eq!(compare_load(&zero, &zero), Ordering::Equal);
}

fn arb_worker(index: usize) -> impl Strategy<Value = (String, Option<i64>, bool, u32, u32)> {
    (
        prop::option::weighted(0.9, 0i64..120_000),
        prop::bool::weighted(0.15),
        0u32..20,
        0u32..20,
    )
        .prop_map(move |(age, drained, active, max)| {
            (format!("w-{index:02}"), age, drained, active, max)
        })
}

fn arb_fleet() -> impl Strategy<Value = Vec<(String, Option<i64>, bool, u32, u32)>> {
    (0usize..30).prop_flat_map(|count| (0..count).map(arb_worker).collect::<Vec<_>>())
}

fn loads(fleet: &[(String, Option<i64>, bool, u32, u32)]) -> Vec<WorkerLoad<'_>> {
    fleet
        .iter()
        .map(|(id, age, drained, active, max)| WorkerLoad {
            id,
            last_heartbeat: age.map(|age| NOW - age),
            drained: *drained,
            active_sessions: *active,
            max_sessions: *max,
        })
        .collect()
}

proptest! {
    #[test]
    fn the_choice_is_healthy_not_full_and_no_other_is_less_loaded(fleet in arb_fleet()) {
        let workers = loads(&fleet);
        match least_loaded_worker(&workers, NOW, &SETTINGS) {
            Ok(id) => {
                let chosen = workers.iter().find(|worker| worker.id == id).expect("chosen exists");
                prop_assert!(chosen.is_healthy(NOW, &SETTINGS));
                prop_assert!(!chosen.drained);
                prop_assert!(!chosen.is_full());
                for other in workers.iter().filter(|w| w.is_healthy(NOW, &SETTINGS) && !w.is_full()) {
                    prop_assert_ne!(compare_load(other, chosen), Ordering::Less);
                }
            }
            Err(PlacementError::NoHealthyWorkers) => {
                prop_assert!(workers.iter().filter(|w| w.is_healthy(NOW, &SETTINGS)).all(WorkerLoad::is_full));
            }
        }
    }

    #[test]
    fn the_choice_does_not_depend_on_input_order(fleet in arb_fleet(), seed in any::<u64>()) {
        let workers = loads(&fleet);
        let mut shuffled = workers.clone();
        // A deterministic permutation from the seed (no randomness of the core's own).
        let len = shuffled.len();
        if len > 1 {
            let mut state = seed;
            for index in (1..len).rev() {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let other = (state >> 33) as usize % (index + 1);
                shuffled.swap(index, other);
            }
        }
        prop_assert_eq!(
            least_loaded_worker(&workers, NOW, &SETTINGS),
            least_loaded_worker(&shuffled, NOW, &SETTINGS)
        );
    }
}

proptest! {
    /// `least_loaded_worker` picks what the naive reading of the field's rule picks (float load
    /// ratios, a sort, the first), and fails with the same words.
    #[test]
    fn the_choice_agrees_with_the_naive_oracle(fleet in arb_fleet()) {
        let workers = loads(&fleet);
        let ours = least_loaded_worker(&workers, NOW, &SETTINGS)
            .map(str::to_owned)
            .map_err(|error| error.to_string());
        let oracle = super::naive::naive_place(&workers, NOW, SETTINGS.heartbeat_timeout_ms)
            .map_err(str::to_owned);
        prop_assert_eq!(ours, oracle);
    }
}
