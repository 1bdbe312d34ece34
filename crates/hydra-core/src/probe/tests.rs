//! Table tests and property tests of the probe race, driven by a discrete-event simulator.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

/// How one address answers a probe in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Connects after this many ms.
    Reach(u32),
    /// Refused after this many ms.
    Refuse(u32),
    /// Never answers (a firewall drop).
    Hang,
    /// The body has no such address.
    Missing,
}

/// One body: its LAN and WireGuard answers.
type Body = (Answer, Answer);

fn ip(body: usize, transport: Transport) -> IpAddr {
    let net = match transport {
        Transport::Lan => 18,
        Transport::Wireguard => 19,
    };
    IpAddr::V4(Ipv4Addr::new(198, net, 0, body as u8 + 1))
}

fn probe_bodies(bodies: &[Body]) -> Vec<ProbeBody> {
    bodies
        .iter()
        .enumerate()
        .map(|(index, (lan, wireguard))| ProbeBody {
            lan: (*lan != Answer::Missing).then(|| ip(index, Transport::Lan)),
            wireguard: (*wireguard != Answer::Missing).then(|| ip(index, Transport::Wireguard)),
        })
        .collect()
}

/// The field's loop, one probe at a time: the reference the race must agree with.
fn sequential_reference(bodies: &[Body], timeout_ms: u32) -> (Option<ProbeKey>, Millis) {
    let mut elapsed: Millis = 0;
    for (index, (lan, wireguard)) in bodies.iter().enumerate() {
        for (transport, answer) in [(Transport::Lan, lan), (Transport::Wireguard, wireguard)] {
            match *answer {
                Answer::Missing => {}
                Answer::Reach(ms) if ms < timeout_ms => {
                    return (
                        Some(ProbeKey {
                            body: index,
                            transport,
                        }),
                        elapsed + Millis::from(ms),
                    );
                }
                Answer::Refuse(ms) if ms < timeout_ms => elapsed += Millis::from(ms),
                Answer::Reach(_) | Answer::Refuse(_) | Answer::Hang => {
                    elapsed += Millis::from(timeout_ms)
                }
            }
        }
    }
    (None, elapsed)
}

/// What a simulated race did.
struct Run {
    outcome: RaceOutcome,
    settled_at: Millis,
    timeline: Vec<String>,
    race: ProbeRace,
    started: Vec<ProbeKey>,
}

/// Drives a race against scripted answers with simulated time; checks the machine's own
/// invariants on the way (no double start, no start after settling, cancels only in flight).
fn simulate(bodies: &[Body], settings: ProbeSettings) -> Run {
    let mut race = ProbeRace::new(&probe_bodies(bodies), settings);
    let mut now: Millis = 0;
    let mut timeline = Vec::new();
    let mut started: Vec<ProbeKey> = Vec::new();
    // Scheduled answers: time -> probes answering then (in start order).
    let mut scheduled: BTreeMap<(Millis, usize), (ProbeKey, Result<u32, ProbeError>)> =
        BTreeMap::new();
    let mut sequence = 0usize;
    for _round in 0..10_000 {
        while let Some(action) = race.poll_action(now) {
            match action {
                ProbeAction::Start { probe, ip: address } => {
                    assert!(race.outcome().is_none(), "started {probe} after settling");
                    assert!(!started.contains(&probe), "started {probe} twice");
                    assert_eq!(address, ip(probe.body, probe.transport));
                    started.push(probe);
                    timeline.push(format!("{now:<5} start {probe}"));
                    let (lan, wireguard) = bodies[probe.body];
                    let answer = match probe.transport {
                        Transport::Lan => lan,
                        Transport::Wireguard => wireguard,
                    };
                    let event = match answer {
                        Answer::Reach(ms) => Some((ms, Ok(ms))),
                        Answer::Refuse(ms) => Some((ms, Err(ProbeError::Refused))),
                        Answer::Hang => None,
                        Answer::Missing => panic!("started {probe} which has no address"),
                    };
                    if let Some((ms, result)) = event {
                        sequence += 1;
                        scheduled.insert((now + Millis::from(ms), sequence), (probe, result));
                    }
                }
                ProbeAction::Cancel { probe } => {
                    assert!(started.contains(&probe), "cancelled {probe} never started");
                    let status = race.probe(probe).1.clone();
                    let word = match status {
                        ProbeStatus::Failed(ProbeError::TimedOut { .. }) => "timeout",
                        ProbeStatus::Failed(ProbeError::Silent { .. }) => "silent",
                        ProbeStatus::Cancelled => "cancel",
                        other => panic!("cancel of {probe} in status {other:?}"),
                    };
                    timeline.push(format!("{now:<5} {word} {probe}"));
                    scheduled.retain(|_, (scheduled_probe, _)| *scheduled_probe != probe);
                }
            }
        }
        if let Some(outcome) = race.outcome() {
            timeline.push(format!("{now:<5} settled {}", render_outcome(outcome)));
            return Run {
                outcome,
                settled_at: now,
                timeline,
                race,
                started,
            };
        }
        let next_answer = scheduled.keys().next().map(|(at, _)| *at);
        let next = match (next_answer, race.poll_timeout()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => panic!("race stuck at {now} with nothing scheduled"),
        };
        assert!(next >= now, "time went backwards: {next} < {now}");
        now = next;
        while let Some(entry) = scheduled.first_entry() {
            if entry.key().0 != now {
                break;
            }
            let (probe, result) = entry.remove();
            let word = if result.is_ok() { "reach" } else { "refuse" };
            timeline.push(format!("{now:<5} {word} {probe}"));
            race.handle_result(probe, result, now);
        }
        race.handle_timeout(now);
    }
    panic!("race did not settle in 10000 rounds");
}

fn render_outcome(outcome: RaceOutcome) -> String {
    match outcome {
        RaceOutcome::Reached { probe, rtt_ms } => format!("{probe} rtt {rtt_ms}"),
        RaceOutcome::AllFailed => "all failed".to_owned(),
    }
}

fn check(bodies: &[Body], mode: ProbeMode, expected: Expect) {
    let settings = ProbeSettings {
        mode,
        ..ProbeSettings::default()
    };
    let run = simulate(bodies, settings);
    expected.assert_eq(&(run.timeline.join("\n") + "\n"));
}

use Answer::{Hang, Missing, Reach, Refuse};

#[test]
fn first_lan_answers_and_nothing_else_starts() {
    check(
        &[(Reach(2), Reach(5)), (Reach(1), Reach(1))],
        ProbeMode::Concurrent,
        expect![[r#"
            0     start b0/lan
            2     reach b0/lan
            2     settled b0/lan rtt 2
        "#]],
    );
}

#[test]
fn dead_bodies_ahead_cost_one_timeout_concurrently() {
    check(
        &[(Hang, Hang), (Hang, Hang), (Reach(3), Reach(1))],
        ProbeMode::Concurrent,
        expect![[r#"
            0     start b0/lan
            10    start b0/wireguard
            20    start b1/lan
            30    start b1/wireguard
            40    start b2/lan
            43    reach b2/lan
            1000  timeout b0/lan
            1010  timeout b0/wireguard
            1020  timeout b1/lan
            1030  timeout b1/wireguard
            1030  settled b2/lan rtt 3
        "#]],
    );
}

#[test]
fn dead_bodies_ahead_cost_two_timeouts_each_sequentially() {
    check(
        &[(Hang, Hang), (Hang, Hang), (Reach(3), Reach(1))],
        ProbeMode::Sequential,
        expect![[r#"
            0     start b0/lan
            1000  timeout b0/lan
            1000  start b0/wireguard
            2000  timeout b0/wireguard
            2000  start b1/lan
            3000  timeout b1/lan
            3000  start b1/wireguard
            4000  timeout b1/wireguard
            4000  start b2/lan
            4003  reach b2/lan
            4003  settled b2/lan rtt 3
        "#]],
    );
}

#[test]
fn a_faster_later_body_waits_for_the_earlier_one_and_is_cancelled() {
    // b0's WireGuard is slow but answers; b1 answers first but comes later in the list.
    check(
        &[(Refuse(1), Reach(300)), (Reach(2), Reach(2))],
        ProbeMode::Concurrent,
        expect![[r#"
            0     start b0/lan
            1     refuse b0/lan
            1     start b0/wireguard
            11    start b1/lan
            13    reach b1/lan
            301   reach b0/wireguard
            301   settled b0/wireguard rtt 300
        "#]],
    );
}

#[test]
fn refused_lan_falls_back_to_wireguard_at_once() {
    check(
        &[(Refuse(1), Reach(4))],
        ProbeMode::Concurrent,
        expect![[r#"
            0     start b0/lan
            1     refuse b0/lan
            1     start b0/wireguard
            5     reach b0/wireguard
            5     settled b0/wireguard rtt 4
        "#]],
    );
}

#[test]
fn missing_addresses_are_skipped_without_a_probe() {
    check(
        &[(Missing, Missing), (Missing, Reach(7))],
        ProbeMode::Sequential,
        expect![[r#"
            0     start b1/wireguard
            7     reach b1/wireguard
            7     settled b1/wireguard rtt 7
        "#]],
    );
}

#[test]
fn an_answer_at_the_timeout_counts_as_timed_out() {
    check(
        &[(Reach(1_000), Reach(999))],
        ProbeMode::Sequential,
        expect![[r#"
            0     start b0/lan
            1000  reach b0/lan
            1000  start b0/wireguard
            1999  reach b0/wireguard
            1999  settled b0/wireguard rtt 999
        "#]],
    );
}

#[test]
fn every_body_dead_ends_in_all_failed_after_about_one_timeout() {
    check(
        &[(Hang, Refuse(5)), (Hang, Hang)],
        ProbeMode::Concurrent,
        expect![[r#"
            0     start b0/lan
            10    start b0/wireguard
            15    refuse b0/wireguard
            15    start b1/lan
            25    start b1/wireguard
            1000  timeout b0/lan
            1015  timeout b1/lan
            1025  timeout b1/wireguard
            1025  settled all failed
        "#]],
    );
}

#[test]
fn an_empty_list_fails_at_once() {
    let race = ProbeRace::new(&[], ProbeSettings::default());
    assert_eq!(race.outcome(), Some(RaceOutcome::AllFailed));
    assert_eq!(race.poll_timeout(), None);
}

#[test]
fn in_flight_is_capped() {
    let bodies = vec![(Hang, Hang); 4];
    let settings = ProbeSettings {
        max_in_flight: 3,
        ..ProbeSettings::default()
    };
    let run = simulate(&bodies, settings);
    assert_eq!(run.outcome, RaceOutcome::AllFailed);
    // Three start staggered, the rest only as timeouts free a place.
    let starts: Vec<&String> = run
        .timeline
        .iter()
        .filter(|l| l.contains("start"))
        .collect();
    expect![[r#"
        [
            "0     start b0/lan",
            "10    start b0/wireguard",
            "20    start b1/lan",
            "1000  start b1/wireguard",
            "1010  start b2/lan",
            "1020  start b2/wireguard",
            "2000  start b3/lan",
            "2010  start b3/wireguard",
        ]
    "#]]
    .assert_debug_eq(&starts);
}

#[test]
fn late_results_and_unknown_probes_are_ignored() {
    let bodies = [(Hang, Reach(1))];
    let mut race = ProbeRace::new(&probe_bodies(&bodies), ProbeSettings::default());
    let lan = ProbeKey {
        body: 0,
        transport: Transport::Lan,
    };
    assert!(matches!(race.poll_action(0), Some(ProbeAction::Start { probe, .. }) if probe == lan));
    // Timed out at 1000; a success reported afterwards does not resurrect it.
    race.handle_timeout(1_000);
    race.handle_result(lan, Ok(3), 1_001);
    assert_eq!(
        race.probe(lan).1,
        &ProbeStatus::Failed(ProbeError::TimedOut { after_ms: 1_000 })
    );
    race.handle_result(
        ProbeKey {
            body: 9,
            transport: Transport::Lan,
        },
        Ok(1),
        1_001,
    );
    assert_eq!(race.outcome(), None);
}

fn check_preferring(bodies: &[Body], expected: Expect) {
    let run = simulate(bodies, ProbeSettings::preferring());
    expected.assert_eq(&(run.timeline.join("\n") + "\n"));
}

#[test]
fn with_a_preference_delay_sixteen_dead_bodies_cost_the_starts_and_the_delay() {
    let mut bodies = vec![(Hang, Hang); 16];
    bodies.push((Reach(1), Reach(1)));
    let run = simulate(&bodies, ProbeSettings::preferring());
    assert_eq!(
        winner(run.outcome),
        Some(ProbeKey {
            body: 16,
            transport: Transport::Lan
        })
    );
    // 32 dead probes 2 ms apart, the last silent 250 ms: chosen at 312 ms, not 1,062 ms.
    assert_eq!(run.settled_at, 31 * 2 + 250);
    let exact = simulate(
        &bodies,
        ProbeSettings {
            prefer_delay_ms: None,
            ..ProbeSettings::preferring()
        },
    );
    assert_eq!(exact.settled_at, 31 * 2 + 1_000);
}

/// What the head reports as passed over (`unreachable=` with its next request), per race.
#[test]
fn the_bodies_passed_over_are_those_before_the_winner_failed_on_both_paths() {
    let cases: [(&str, Vec<Body>, ProbeSettings); 5] = [
        (
            "16 silent ahead",
            [vec![(Hang, Hang); 16], vec![(Reach(1), Reach(1))]].concat(),
            ProbeSettings::preferring(),
        ),
        (
            "refused and missing ahead",
            vec![(Refuse(1), Missing), (Missing, Refuse(2)), (Reach(1), Hang)],
            ProbeSettings::default(),
        ),
        (
            "the winner's own LAN failed",
            vec![(Refuse(1), Reach(3))],
            ProbeSettings::default(),
        ),
        (
            "first body wins",
            vec![(Reach(1), Hang), (Hang, Hang)],
            ProbeSettings::preferring(),
        ),
        (
            "all failed",
            vec![(Hang, Refuse(1)), (Refuse(1), Refuse(1))],
            ProbeSettings::default(),
        ),
    ];
    let table: String = cases
        .iter()
        .map(|(name, bodies, settings)| {
            let run = simulate(bodies, *settings);
            format!("{name}: {:?}\n", run.race.passed_over())
        })
        .collect();
    expect![[r#"
        16 silent ahead: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        refused and missing ahead: [0, 1]
        the winner's own LAN failed: []
        first body wins: []
        all failed: []
    "#]]
    .assert_eq(&table);
}

#[test]
fn a_later_body_wins_once_the_earlier_one_is_silent_for_the_delay() {
    check_preferring(
        &[(Hang, Hang), (Reach(3), Reach(1))],
        expect![[r#"
            0     start b0/lan
            2     start b0/wireguard
            4     start b1/lan
            6     start b1/wireguard
            7     reach b1/lan
            7     reach b1/wireguard
            7     cancel b1/wireguard
            252   silent b0/lan
            252   silent b0/wireguard
            252   settled b1/lan rtt 3
        "#]],
    );
}

#[test]
fn an_earlier_body_answering_within_the_delay_still_wins() {
    check_preferring(
        &[(Reach(200), Hang), (Reach(1), Reach(1))],
        expect![[r#"
            0     start b0/lan
            2     start b0/wireguard
            4     start b1/lan
            5     reach b1/lan
            200   reach b0/lan
            200   cancel b0/wireguard
            200   settled b0/lan rtt 200
        "#]],
    );
}

#[test]
fn a_silent_lan_falls_back_to_wireguard_after_the_delay() {
    check_preferring(
        &[(Hang, Reach(4))],
        expect![[r#"
            0     start b0/lan
            2     start b0/wireguard
            6     reach b0/wireguard
            250   silent b0/lan
            250   settled b0/wireguard rtt 4
        "#]],
    );
}

#[test]
fn silence_with_nothing_answered_still_waits_for_the_timeouts() {
    check_preferring(
        &[(Hang, Hang)],
        expect![[r#"
            0     start b0/lan
            2     start b0/wireguard
            1000  timeout b0/lan
            1002  timeout b0/wireguard
            1002  settled all failed
        "#]],
    );
}

#[test]
fn sequential_mode_ignores_the_preference_delay() {
    let race = ProbeRace::new(
        &probe_bodies(&[(Hang, Hang)]),
        ProbeSettings {
            mode: ProbeMode::Sequential,
            ..ProbeSettings::preferring()
        },
    );
    assert_eq!(race.settings().prefer_delay_ms, None);
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        3 => (0u32..1_500).prop_map(Reach),
        3 => (0u32..1_500).prop_map(Refuse),
        3 => Just(Hang),
        1 => Just(Missing),
    ]
}

fn bodies() -> impl Strategy<Value = Vec<Body>> {
    prop::collection::vec((answer(), answer()), 0..12)
}

fn settings() -> impl Strategy<Value = ProbeSettings> {
    (1u32..1_500, 0u32..400, 1usize..8).prop_map(|(timeout_ms, stagger_ms, max_in_flight)| {
        ProbeSettings {
            timeout_ms,
            stagger_ms,
            max_in_flight,
            mode: ProbeMode::Concurrent,
            prefer_delay_ms: None,
        }
    })
}

fn preferring_settings() -> impl Strategy<Value = ProbeSettings> {
    (settings(), 0u32..1_600).prop_map(|(settings, delay)| ProbeSettings {
        prefer_delay_ms: Some(delay),
        ..settings
    })
}

/// When `probe`'s scripted answer is a success that the race counts (before the timeout).
fn reach_time(bodies: &[Body], probe: ProbeKey, timeout_ms: u32) -> Option<u32> {
    let (lan, wireguard) = bodies[probe.body];
    let answer = match probe.transport {
        Transport::Lan => lan,
        Transport::Wireguard => wireguard,
    };
    match answer {
        Reach(ms) if ms < timeout_ms => Some(ms),
        _ => None,
    }
}

fn winner(outcome: RaceOutcome) -> Option<ProbeKey> {
    match outcome {
        RaceOutcome::Reached { probe, .. } => Some(probe),
        RaceOutcome::AllFailed => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Whatever answers, timeouts and schedule: the race picks what the sequential walk picks.
    #[test]
    fn concurrent_chooses_what_sequential_chooses(bodies in bodies(), settings in settings()) {
        let (expected, _) = sequential_reference(&bodies, settings.timeout_ms);
        let run = simulate(&bodies, settings);
        prop_assert_eq!(winner(run.outcome), expected);
        // Every probe before the winner failed (what the head logs as skipped bodies).
        let before = expected.map_or(run.race.slots.len(), ProbeKey::index);
        for index in 0..before {
            let probe = ProbeKey::from_index(index);
            prop_assert!(matches!(run.race.probe(probe).1, ProbeStatus::Failed(_)), "{probe} not failed");
        }
        // Nothing is left in flight once settled.
        let left_in_flight = run.started.iter().any(|probe| matches!(run.race.probe(*probe).1, ProbeStatus::InFlight { .. }));
        prop_assert!(!left_in_flight, "a probe is still in flight after settling");
    }

    /// Sequential mode is the field loop itself, choice and elapsed time.
    #[test]
    fn sequential_mode_is_the_field_loop(bodies in bodies(), timeout_ms in 1u32..1_500) {
        let settings = ProbeSettings { timeout_ms, mode: ProbeMode::Sequential, ..ProbeSettings::default() };
        let (expected, elapsed) = sequential_reference(&bodies, timeout_ms);
        let run = simulate(&bodies, settings);
        prop_assert_eq!(winner(run.outcome), expected);
        prop_assert_eq!(run.settled_at, elapsed);
    }

    /// Concurrent mode never takes longer than starting every probe once plus one timeout.
    #[test]
    fn concurrent_is_bounded_by_one_timeout_past_the_last_start(bodies in bodies(), settings in settings()) {
        let run = simulate(&bodies, settings);
        let probes = bodies.len() as u64 * 2;
        let waves = probes.div_ceil(settings.max_in_flight as u64) as Millis;
        let probes = probes as Millis;
        let bound = probes * Millis::from(settings.stagger_ms) + waves * Millis::from(settings.timeout_ms);
        prop_assert!(run.settled_at <= bound, "settled at {} > {}", run.settled_at, bound);
    }

    /// With a preference delay: a body is always found when the walk would find one, and every
    /// probe before the winner failed or had no answer within the delay (an earlier answer in
    /// time always wins); nothing is left in flight.
    #[test]
    fn preferring_passes_over_only_probes_silent_for_the_delay(bodies in bodies(), settings in preferring_settings()) {
        let (expected, _) = sequential_reference(&bodies, settings.timeout_ms);
        let run = simulate(&bodies, settings);
        let delay = settings.prefer_delay_ms.unwrap();
        prop_assert_eq!(winner(run.outcome).is_some(), expected.is_some());
        if let Some(won) = winner(run.outcome) {
            prop_assert!(expected.is_some_and(|first| first.index() <= won.index()));
            for index in 0..won.index() {
                let probe = ProbeKey::from_index(index);
                prop_assert!(matches!(run.race.probe(probe).1, ProbeStatus::Failed(_)), "{probe} not failed");
                if let Some(reach) = reach_time(&bodies, probe, settings.timeout_ms) {
                    prop_assert!(reach >= delay, "{probe} answered in {reach} ms, within the delay {delay}, and lost");
                }
            }
        }
        // The bodies the head reports passed over are exactly those before the winner.
        let passed_over: Vec<usize> = winner(run.outcome).map_or_else(Vec::new, |won| (0..won.body).collect());
        prop_assert_eq!(run.race.passed_over(), passed_over);
        let left_in_flight = run.started.iter().any(|probe| matches!(run.race.probe(*probe).1, ProbeStatus::InFlight { .. }));
        prop_assert!(!left_in_flight, "a probe is still in flight after settling");
        let probes = bodies.len() as u64 * 2;
        let waves = probes.div_ceil(settings.max_in_flight as u64) as Millis;
        let bound = probes as Millis * Millis::from(settings.stagger_ms) + waves * Millis::from(settings.timeout_ms);
        prop_assert!(run.settled_at <= bound, "settled at {} > {}", run.settled_at, bound);
    }
}
