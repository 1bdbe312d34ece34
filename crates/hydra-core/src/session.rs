//! The life of a relay session: its states and legal transitions, which start failures are
//! final, the deadline of a start, and `reconcile`, which brings the control plane's records of
//! one worker in line with what that worker's agent reports.
//!
//! The store (`hydra_store::SessionStatus`) and the wire (`hydra_api::SessionState`) each have
//! their own enum; both convert into [`SessionState`], and every decision about a session's
//! state is made here.

use crate::node::UnixMillis;

/// Life of a relay session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Placed on a worker; its process is starting.
    Starting,
    /// The process runs and answers on its port.
    Running,
    /// Ended by a user or an operator (final).
    Stopped,
    /// Failed: it never started, its process died, or its worker lost it (final).
    Error,
}

impl SessionState {
    /// Whether the session holds a worker slot (`starting` or `running`).
    pub fn is_live(self) -> bool {
        matches!(self, SessionState::Starting | SessionState::Running)
    }

    /// Whether nothing follows this state: `stopped` and `error` are final.
    pub fn is_final(self) -> bool {
        !self.is_live()
    }

    /// Whether a session in this state may go to `next`: forward only (starting, then running,
    /// then stopped or error); a final state never changes, so a late answer cannot revive a
    /// session that was already given up.
    pub fn can_become(self, next: SessionState) -> bool {
        matches!(
            (self, next),
            (SessionState::Starting, SessionState::Running)
                | (
                    SessionState::Starting | SessionState::Running,
                    SessionState::Stopped | SessionState::Error
                )
        )
    }

    /// The wire and storage word.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Running => "running",
            SessionState::Stopped => "stopped",
            SessionState::Error => "error",
        }
    }
}

/// How asking a worker to start a session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    /// The worker refused the request itself as invalid: another worker would refuse it too.
    Invalid,
    /// The worker refused for a reason of its own (full, body unreachable from it, ...).
    Refused,
    /// The worker did not answer in time, or not at all.
    Unreachable,
}

/// Whether a start that failed with `failure` on its `attempt`-th worker (1-based) is tried on the
/// next-best worker: once, and never for a request the worker found invalid.
pub fn retry_on_next_worker(failure: StartFailure, attempt: u32) -> bool {
    attempt < 2 && failure != StartFailure::Invalid
}

/// Slack between the agent's own bound on a start and the server's wait for its answer (the
/// request's travel, the store writes around it).
pub const START_MARGIN_MS: i64 = 10_000;

/// The agent's bound on a start when its report does not say (the field's 30 s readiness wait
/// plus the 2 s body check).
pub const DEFAULT_AGENT_START_MS: i64 = 32_000;

/// How long the server waits for a worker's answer to a start: the agent's own bound on a
/// start (from its report) plus [`START_MARGIN_MS`].
pub fn start_wait_ms(agent_start_ms: i64) -> i64 {
    agent_start_ms.max(0).saturating_add(START_MARGIN_MS)
}

/// When a `starting` session is given up by reconciliation: one more margin after the server's
/// own wait, so the task that asked the worker has recorded its outcome first.
pub fn start_deadline_ms(agent_start_ms: i64) -> i64 {
    start_wait_ms(agent_start_ms).saturating_add(START_MARGIN_MS)
}

/// A live session as the control plane has it stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSession<'a> {
    /// Session id.
    pub id: &'a str,
    /// Its stored state; sessions in a final state are ignored.
    pub state: SessionState,
    /// When it last changed (unix ms): for `starting`, when it was placed on this worker.
    pub since: UnixMillis,
}

/// A session as the worker's agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedSession<'a> {
    /// Session id.
    pub id: &'a str,
    /// Its state on the worker.
    pub state: SessionState,
    /// Why it failed, when it did.
    pub error: Option<&'a str>,
}

/// What `reconcile` knows about the report besides its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportContext {
    /// When the control plane first heard from the agent run that sent this report (unix ms),
    /// or 0 when unknown (a report loaded from the store). A session placed before it was asked
    /// of an earlier run of the agent, so this run not having it means it is gone.
    pub run_seen_at: UnixMillis,
    /// The worker's `starting` deadline ([`start_deadline_ms`]). It is also how long a session
    /// missing from a report is given: a report may have been made before the worker took the
    /// session and arrive after it (delivery is bounded by the client's timeout, well below it).
    pub start_deadline_ms: i64,
}

/// One change `reconcile` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The stored session takes this final state, with this reason.
    Mark {
        /// Session id.
        id: String,
        /// `stopped` or `error`.
        state: SessionState,
        /// Why, for `error`.
        error: Option<String>,
    },
    /// The worker runs a session the control plane has given up (or never had): end it there.
    EndOnWorker {
        /// Session id.
        id: String,
    },
}

/// Brings the live stored sessions of one worker in line with its report at `now`:
/// - reported `stopped` or `error`: the stored session takes that state;
/// - `starting` past its deadline: `error`, and ended on the worker if it still has it;
/// - missing from the report: `error`, unless it changed too recently for the report to know
///   it (see [`ReportContext::start_deadline_ms`]) and was placed on this run of the agent;
/// - reported live but not live in the store: ended on the worker.
///
/// Changes come in the order of `stored`, then of `reported`; only legal transitions are
/// returned ([`SessionState::can_become`]).
pub fn reconcile(
    stored: &[StoredSession<'_>],
    reported: &[ReportedSession<'_>],
    now: UnixMillis,
    context: &ReportContext,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let find = |id: &str| reported.iter().find(|session| session.id == id);
    for session in stored.iter().filter(|session| session.state.is_live()) {
        let age = now.saturating_sub(session.since);
        let on_worker = find(session.id);
        let (state, error) = match on_worker {
            Some(report) if report.state == SessionState::Stopped => (SessionState::Stopped, None),
            Some(report) if report.state == SessionState::Error => (
                SessionState::Error,
                Some(
                    report
                        .error
                        .unwrap_or("the worker reported an error")
                        .to_owned(),
                ),
            ),
            _ if session.state == SessionState::Starting && age >= context.start_deadline_ms => {
                if on_worker.is_some() {
                    changes.push(Change::EndOnWorker {
                        id: session.id.to_owned(),
                    });
                }
                (
                    SessionState::Error,
                    Some(format!(
                        "the session did not start within {} s",
                        context.start_deadline_ms / 1_000
                    )),
                )
            }
            Some(_) => continue,
            None if session.since >= context.run_seen_at && age < context.start_deadline_ms => {
                continue;
            }
            None => (
                SessionState::Error,
                Some("the worker no longer runs this session".to_owned()),
            ),
        };
        if session.state.can_become(state) {
            changes.push(Change::Mark {
                id: session.id.to_owned(),
                state,
                error,
            });
        }
    }
    for report in reported.iter().filter(|report| report.state.is_live()) {
        let known_live = stored
            .iter()
            .any(|session| session.id == report.id && session.state.is_live());
        if !known_live {
            changes.push(Change::EndOnWorker {
                id: report.id.to_owned(),
            });
        }
    }
    changes
}

/// Whether a live session a worker reports, which the control plane does not hold live, is
/// taken on as that worker's rather than ended there: a session the worker started while no
/// control plane answered (issue 11). Its id must name the reporting worker
/// (`<node_id>:<uuid>`, [`crate::session_id`]) and the control plane must never have recorded
/// it (`recorded`: a stored record of any state), so a session the control plane ended or gave
/// up stays ended.
pub fn adopt_unplaced(worker_id: &str, session_id: &str, recorded: bool) -> bool {
    !recorded
        && crate::session_id::parse_session_id(session_id)
            .ok()
            .and_then(|id| id.owner())
            == Some(worker_id)
}

#[cfg(test)]
mod tests;
