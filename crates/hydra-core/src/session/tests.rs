//! Table tests of the session state machine and of `reconcile`, a property test of one report
//! against a plain model of what a report means, and a reference model of one agent and one
//! server driven through random steps (create, ready, report, agent crash, server restart,
//! delete, time) that checks the real `reconcile` keeps them in step.

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

const NOW: UnixMillis = 1_000_000;
/// The default agent's bound on a start gives a deadline of 52 s.
const CONTEXT: ReportContext = ReportContext {
    run_seen_at: 0,
    start_deadline_ms: 52_000,
};

fn state(word: &str) -> SessionState {
    match word {
        "starting" => SessionState::Starting,
        "running" => SessionState::Running,
        "stopped" => SessionState::Stopped,
        "error" => SessionState::Error,
        other => panic!("unknown state {other}"),
    }
}

/// `stored`: `id state age=<ms>` (age of its last change; 1000 by default).
/// `reported`: `id state` with an optional `why=<word>` error.
fn check_with(stored: &[&str], reported: &[&str], context: ReportContext, expected: Expect) {
    let stored: Vec<StoredSession<'_>> = stored
        .iter()
        .map(|spec| {
            let mut words = spec.split_whitespace();
            let id = words.next().expect("id");
            let session_state = state(words.next().expect("state"));
            let age = words
                .next()
                .and_then(|word| word.strip_prefix("age="))
                .map_or(1_000, |age| age.parse::<i64>().expect("age"));
            StoredSession {
                id,
                state: session_state,
                since: NOW - age,
            }
        })
        .collect();
    let reported: Vec<ReportedSession<'_>> = reported
        .iter()
        .map(|spec| {
            let mut words = spec.split_whitespace();
            ReportedSession {
                id: words.next().expect("id"),
                state: state(words.next().expect("state")),
                error: words.next().and_then(|word| word.strip_prefix("why=")),
            }
        })
        .collect();
    let changes = reconcile(&stored, &reported, NOW, &context);
    let text: Vec<String> = changes
        .iter()
        .map(|change| match change {
            Change::Mark { id, state, error } => match error {
                Some(error) => format!("{id} -> {} ({error})", state.as_str()),
                None => format!("{id} -> {}", state.as_str()),
            },
            Change::EndOnWorker { id } => format!("end {id} on the worker"),
        })
        .collect();
    expected.assert_eq(&text.join("\n"));
}

fn check(stored: &[&str], reported: &[&str], expected: Expect) {
    check_with(stored, reported, CONTEXT, expected);
}

#[test]
fn transitions_go_forward_only() {
    let all = ["starting", "running", "stopped", "error"];
    let mut table = String::new();
    for from in all {
        let to: Vec<&str> = all
            .iter()
            .copied()
            .filter(|to| state(from).can_become(state(to)))
            .collect();
        let kind = if state(from).is_final() {
            "final"
        } else {
            "live"
        };
        table.push_str(&format!("{from} ({kind}): {}\n", to.join(", ")));
    }
    expect![[r#"
        starting (live): running, stopped, error
        running (live): stopped, error
        stopped (final): 
        error (final): 
    "#]]
    .assert_eq(&table);
}

#[test]
fn a_start_is_retried_once_elsewhere_unless_the_request_is_invalid() {
    let mut table = String::new();
    for failure in [
        StartFailure::Invalid,
        StartFailure::Refused,
        StartFailure::Unreachable,
    ] {
        for attempt in [1, 2] {
            table.push_str(&format!(
                "{failure:?} on attempt {attempt}: {}\n",
                retry_on_next_worker(failure, attempt)
            ));
        }
    }
    expect![[r#"
        Invalid on attempt 1: false
        Invalid on attempt 2: false
        Refused on attempt 1: true
        Refused on attempt 2: false
        Unreachable on attempt 1: true
        Unreachable on attempt 2: false
    "#]]
    .assert_eq(&table);
}

#[test]
fn the_start_deadline_follows_the_agents_bound() {
    expect!["42000 52000"].assert_eq(&format!(
        "{} {}",
        start_wait_ms(DEFAULT_AGENT_START_MS),
        start_deadline_ms(DEFAULT_AGENT_START_MS)
    ));
    // An agent with a 120 s readiness wait is waited for, not cut at a fixed 45 s.
    expect!["132000 142000"].assert_eq(&format!(
        "{} {}",
        start_wait_ms(122_000),
        start_deadline_ms(122_000)
    ));
}

#[test]
fn reported_live_sessions_change_nothing() {
    check(
        &["s1 running", "s2 starting"],
        &["s1 running", "s2 starting"],
        expect![""],
    );
    check(&["s1 starting"], &["s1 running"], expect![""]);
}

#[test]
fn reported_ends_are_taken() {
    check(
        &["s1 running", "s2 starting", "s3 running"],
        &["s1 stopped", "s2 error why=pairing", "s3 error"],
        expect![[r#"
            s1 -> stopped
            s2 -> error (pairing)
            s3 -> error (the worker reported an error)"#]],
    );
}

#[test]
fn final_stored_sessions_are_left_alone() {
    check(
        &["s1 stopped", "s2 error age=900000"],
        &["s1 error", "s2 stopped"],
        expect![""],
    );
}

#[test]
fn a_start_past_its_deadline_is_given_up_and_ended_on_the_worker() {
    check(
        &[
            "young starting age=51999",
            "late starting age=52000",
            "gone starting age=80000",
        ],
        &["young starting", "late starting"],
        expect![[r#"
            end late on the worker
            late -> error (the session did not start within 52 s)
            gone -> error (the session did not start within 52 s)"#]],
    );
    // Past its deadline even when the worker says it runs: nobody records the answer any more.
    check(
        &["s1 starting age=60000"],
        &["s1 running"],
        expect![[r#"
            end s1 on the worker
            s1 -> error (the session did not start within 52 s)"#]],
    );
}

#[test]
fn a_missing_session_is_lost_once_the_report_must_know_it() {
    check(
        &[
            "fresh-start starting age=100",
            "fresh-run running age=100",
            "old-run running age=52000",
        ],
        &[],
        expect!["old-run -> error (the worker no longer runs this session)"],
    );
}

#[test]
fn a_new_agent_run_knows_nothing_placed_before_it() {
    let context = ReportContext {
        run_seen_at: NOW - 500,
        ..CONTEXT
    };
    check_with(
        &["before running age=1000", "after starting age=100"],
        &[],
        context,
        expect!["before -> error (the worker no longer runs this session)"],
    );
}

#[test]
fn sessions_the_store_does_not_hold_live_are_ended_on_the_worker() {
    check(
        &["ended stopped", "known running"],
        &[
            "ended running",
            "known running",
            "stranger starting",
            "done stopped",
        ],
        expect![[r#"
            end ended on the worker
            end stranger on the worker"#]],
    );
}

/// What a report means, written from the rules' words rather than from `reconcile`'s code:
/// the final state a stored live session should get, if any.
fn model(
    stored: (SessionState, i64),
    reported: Option<SessionState>,
    context: &ReportContext,
) -> Option<SessionState> {
    let (stored_state, age) = stored;
    if !stored_state.is_live() {
        return None;
    }
    let late_start = stored_state == SessionState::Starting && age >= context.start_deadline_ms;
    match reported {
        Some(SessionState::Stopped) => Some(SessionState::Stopped),
        Some(SessionState::Error) => Some(SessionState::Error),
        Some(_) if late_start => Some(SessionState::Error),
        Some(_) => None,
        None if late_start => Some(SessionState::Error),
        None if NOW - age < context.run_seen_at => Some(SessionState::Error),
        None if age >= context.start_deadline_ms => Some(SessionState::Error),
        None => None,
    }
}

fn any_state() -> impl Strategy<Value = SessionState> {
    prop_oneof![
        Just(SessionState::Starting),
        Just(SessionState::Running),
        Just(SessionState::Stopped),
        Just(SessionState::Error),
    ]
}

proptest! {
    #[test]
    fn reconcile_agrees_with_the_model(
        sessions in proptest::collection::vec(
            (any_state(), 0i64..120_000, proptest::option::of(any_state())),
            0..12,
        ),
        run_age in 0i64..120_000,
    ) {
        let context = ReportContext { run_seen_at: NOW - run_age, start_deadline_ms: 52_000 };
        let ids: Vec<String> = (0..sessions.len()).map(|index| format!("s{index}")).collect();
        let stored: Vec<StoredSession<'_>> = sessions
            .iter()
            .zip(&ids)
            .map(|((state, age, _), id)| StoredSession { id, state: *state, since: NOW - age })
            .collect();
        let reported: Vec<ReportedSession<'_>> = sessions
            .iter()
            .zip(&ids)
            .filter_map(|((_, _, reported), id)| {
                reported.map(|state| ReportedSession { id, state, error: None })
            })
            .collect();
        let changes = reconcile(&stored, &reported, NOW, &context);
        for ((stored_state, age, reported_state), id) in sessions.iter().zip(&ids) {
            let marked = changes.iter().find_map(|change| match change {
                Change::Mark { id: changed, state, .. } if changed == id => Some(*state),
                _ => None,
            });
            prop_assert_eq!(marked, model((*stored_state, *age), *reported_state, &context), "{}", id);
            if let Some(next) = marked {
                prop_assert!(stored_state.can_become(next));
            }
            // The worker is asked to end exactly what it runs while the store does not hold it
            // live (or is about to give it up).
            let ended = changes.iter().any(|change| matches!(change, Change::EndOnWorker { id: ended } if ended == id));
            let runs = reported_state.is_some_and(SessionState::is_live);
            prop_assert_eq!(ended, runs && (!stored_state.is_live() || marked.is_some()), "{}", id);
        }
    }
}

/// One step of the reference-model run: what a fleet of one agent and one server can do.
#[derive(Debug, Clone)]
enum Step {
    /// The server places a session; the agent gets the start at once.
    Create,
    /// The agent's `n`-th starting session becomes ready; the server's start task records it.
    Ready(usize),
    /// The agent reports; the server reconciles and applies the changes.
    Report,
    /// The agent dies and starts again with nothing (a new run).
    AgentCrash,
    /// The server restarts: the store stays, what it knew of the agent's run does not.
    ServerRestart,
    /// An operator ends the `n`-th stored session.
    Delete(usize),
    /// Time passes.
    Wait(i64),
}

fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Create),
        3 => (0usize..8).prop_map(Step::Ready),
        4 => Just(Step::Report),
        1 => Just(Step::AgentCrash),
        1 => Just(Step::ServerRestart),
        1 => (0usize..8).prop_map(Step::Delete),
        3 => (0i64..40_000).prop_map(Step::Wait),
    ]
}

/// The plain model of "agent + server" the real `reconcile` is checked against.
#[derive(Debug, Default)]
struct Fleet {
    now: UnixMillis,
    next_id: usize,
    /// The agent's sessions (live or ended) of its current run.
    agent: std::collections::BTreeMap<String, SessionState>,
    agent_run: u32,
    /// The store: state and when it last changed.
    store: std::collections::BTreeMap<String, (SessionState, UnixMillis)>,
    /// The agent run the server last heard from, and since when (0 after a restart).
    known_run: Option<u32>,
    run_seen_at: UnixMillis,
}

const DEADLINE: i64 = 52_000;

impl Fleet {
    fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step {
            Step::Create => {
                let id = format!("s{}", self.next_id);
                self.next_id += 1;
                // The server asks with the key of the run it last heard from: a new run
                // refuses it, and the start task records the failure.
                if self.known_run == Some(self.agent_run) {
                    self.store
                        .insert(id.clone(), (SessionState::Starting, self.now));
                    self.agent.insert(id, SessionState::Starting);
                } else {
                    self.store.insert(id, (SessionState::Error, self.now));
                }
            }
            Step::Ready(n) => {
                let starting: Vec<String> = self
                    .agent
                    .iter()
                    .filter(|(_, state)| **state == SessionState::Starting)
                    .map(|(id, _)| id.clone())
                    .collect();
                if let Some(id) = starting.get(n % starting.len().max(1)) {
                    self.agent.insert(id.clone(), SessionState::Running);
                    let stored = self.store.get_mut(id).expect("placed sessions are stored");
                    if stored.0.can_become(SessionState::Running) {
                        *stored = (SessionState::Running, self.now);
                    }
                }
            }
            Step::Report => self.report()?,
            Step::AgentCrash => {
                self.agent.clear();
                self.agent_run += 1;
            }
            Step::ServerRestart => self.run_seen_at = 0,
            Step::Delete(n) => {
                let ids: Vec<String> = self.store.keys().cloned().collect();
                if let Some(id) = ids.get(n % ids.len().max(1)) {
                    let stored = self.store.get_mut(id).expect("listed");
                    if stored.0.is_live() {
                        *stored = (SessionState::Stopped, self.now);
                        if let Some(state) = self.agent.get_mut(id) {
                            *state = SessionState::Stopped;
                        }
                    }
                }
            }
            Step::Wait(ms) => self.now += ms,
        }
        Ok(())
    }

    fn report(&mut self) -> Result<(), TestCaseError> {
        if self.known_run != Some(self.agent_run) {
            self.known_run = Some(self.agent_run);
            self.run_seen_at = self.now;
        }
        let context = ReportContext {
            run_seen_at: self.run_seen_at,
            start_deadline_ms: DEADLINE,
        };
        let stored: Vec<StoredSession<'_>> = self
            .store
            .iter()
            .map(|(id, (state, since))| StoredSession {
                id,
                state: *state,
                since: *since,
            })
            .collect();
        let reported: Vec<ReportedSession<'_>> = self
            .agent
            .iter()
            .map(|(id, state)| ReportedSession {
                id,
                state: *state,
                error: None,
            })
            .collect();
        let changes = reconcile(&stored, &reported, self.now, &context);
        let mut marked = Vec::new();
        let mut ended = Vec::new();
        for change in changes {
            match change {
                Change::Mark { id, state, .. } => marked.push((id, state)),
                Change::EndOnWorker { id } => ended.push(id),
            }
        }
        for (id, next) in &marked {
            let (from, since) = self.store[id];
            prop_assert!(from.can_become(*next), "{id}: {from:?} -> {next:?}");
            // Never an error for a session the agent runs, unless its start ran out of time.
            let on_agent = self.agent.get(id).copied();
            if *next == SessionState::Error && on_agent.is_some_and(SessionState::is_live) {
                prop_assert!(
                    from == SessionState::Starting && self.now - since >= DEADLINE,
                    "{id} marked error while the agent runs it"
                );
            }
            self.store.insert(id.clone(), (*next, self.now));
        }
        for id in &ended {
            if let Some(state) = self.agent.get_mut(id) {
                *state = SessionState::Stopped;
            }
        }
        // After the report: what the agent runs, the store holds live, and the reverse, but for
        // sessions too young (or placed on this run too recently) for the report to know them.
        for (id, state) in &self.agent {
            if state.is_live() {
                prop_assert!(
                    self.store
                        .get(id)
                        .is_some_and(|(stored, _)| stored.is_live()),
                    "the agent still runs {id}, which the store does not hold live"
                );
            }
        }
        for (id, (state, since)) in &self.store {
            if state.is_live() && !self.agent.get(id).is_some_and(|state| state.is_live()) {
                prop_assert!(
                    self.now - since < DEADLINE && *since >= self.run_seen_at,
                    "{id} is live in the store but not on the agent"
                );
            }
            if *state == SessionState::Starting {
                prop_assert!(
                    self.now - since < DEADLINE,
                    "{id} is starting past its deadline"
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn reconcile_keeps_server_and_agent_in_step(steps in proptest::collection::vec(any_step(), 1..60)) {
        let mut fleet = Fleet { now: NOW, ..Fleet::default() };
        for step in &steps {
            fleet.step(step)?;
        }
        // A last report after every deadline: store and agent agree exactly.
        fleet.now += DEADLINE;
        fleet.report()?;
        let live_in_store: Vec<&String> = fleet.store.iter().filter(|(_, (state, _))| state.is_live()).map(|(id, _)| id).collect();
        let live_on_agent: Vec<&String> = fleet.agent.iter().filter(|(_, state)| state.is_live()).map(|(id, _)| id).collect();
        prop_assert_eq!(live_in_store, live_on_agent);
    }
}

#[test]
fn a_worker_keeps_only_its_own_unrecorded_sessions() {
    let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let cases = [
        ("w-1", format!("w-1:{uuid}"), false),
        ("w-1", format!("w-1:{uuid}"), true),
        ("w-1", format!("w-2:{uuid}"), false),
        ("w-1", "s-0123456789abcdef".to_owned(), false),
        ("w-1", format!("w-1:{}", uuid.to_uppercase()), false),
    ];
    let answers: Vec<String> = cases
        .iter()
        .map(|(worker, id, recorded)| {
            let verdict = if super::adopt_unplaced(worker, id, *recorded) {
                "adopt"
            } else {
                "end on worker"
            };
            format!("{worker} reports {id} (recorded: {recorded}) -> {verdict}")
        })
        .collect();
    expect_test::expect![[r#"
        w-1 reports w-1:0f8fad5b-d9cb-469f-a165-70867728950e (recorded: false) -> adopt
        w-1 reports w-1:0f8fad5b-d9cb-469f-a165-70867728950e (recorded: true) -> end on worker
        w-1 reports w-2:0f8fad5b-d9cb-469f-a165-70867728950e (recorded: false) -> end on worker
        w-1 reports s-0123456789abcdef (recorded: false) -> end on worker
        w-1 reports w-1:0F8FAD5B-D9CB-469F-A165-70867728950E (recorded: false) -> end on worker"#]]
    .assert_eq(&answers.join("\n"));
}
