//! Stored records that are not core types: relay sessions and relay worker reports.

use std::fmt;
use std::str::FromStr;

/// Life of a relay session on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    /// Placed; the worker is starting the process.
    Starting,
    /// The process runs and answers on its port.
    Running,
    /// Ended by a user or an operator.
    Stopped,
    /// Failed: the process died, its data dir vanished, or it never started.
    Error,
}

impl SessionStatus {
    /// Every status.
    pub const ALL: [SessionStatus; 4] = [
        SessionStatus::Starting,
        SessionStatus::Running,
        SessionStatus::Stopped,
        SessionStatus::Error,
    ];

    /// The wire and storage word.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Starting => "starting",
            SessionStatus::Running => "running",
            SessionStatus::Stopped => "stopped",
            SessionStatus::Error => "error",
        }
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionStatus {
    type Err = String;
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        SessionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == word)
            .ok_or_else(|| format!("unknown session status {word:?}"))
    }
}

impl From<SessionStatus> for hydra_core::session::SessionState {
    fn from(status: SessionStatus) -> hydra_core::session::SessionState {
        match status {
            SessionStatus::Starting => hydra_core::session::SessionState::Starting,
            SessionStatus::Running => hydra_core::session::SessionState::Running,
            SessionStatus::Stopped => hydra_core::session::SessionState::Stopped,
            SessionStatus::Error => hydra_core::session::SessionState::Error,
        }
    }
}

impl From<hydra_core::session::SessionState> for SessionStatus {
    fn from(state: hydra_core::session::SessionState) -> SessionStatus {
        match state {
            hydra_core::session::SessionState::Starting => SessionStatus::Starting,
            hydra_core::session::SessionState::Running => SessionStatus::Running,
            hydra_core::session::SessionState::Stopped => SessionStatus::Stopped,
            hydra_core::session::SessionState::Error => SessionStatus::Error,
        }
    }
}

/// A relay session as the control plane records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub id: String,
    /// The worker node that runs it.
    pub worker_id: String,
    /// The body's address the session pairs with.
    pub body_ip: String,
    /// The body's node id, when the session was asked for by `head_id`.
    pub body_id: Option<String>,
    /// The head it was asked for, if any.
    pub head_id: Option<String>,
    /// Experience to launch on the body, if any.
    pub experience: Option<String>,
    /// Port of the session process on the worker.
    pub port: Option<u16>,
    /// URL the browser opens.
    pub stream_url: Option<String>,
    /// Current status.
    pub status: SessionStatus,
    /// Why it failed, when `Error`.
    pub error: Option<String>,
    /// Creation time (unix ms).
    pub created_at: i64,
    /// Last change (unix ms).
    pub updated_at: i64,
}

/// One change to the `sessions` table, as a batch of them is applied in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionWrite {
    /// A new record; applied as `false` when a session with its id exists (nothing written).
    Insert(SessionRecord),
    /// New values for the mutable fields (worker, status, error, port, stream URL,
    /// updated_at); applied as `false` when the session does not exist.
    Update(SessionRecord),
}

/// What a relay worker's agent last reported, as stored so that placement works right after a
/// server restart (the live load is not stored: it is recounted from the session records).
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerReportRecord {
    /// The worker node.
    pub worker_id: String,
    /// Base URL of its agent.
    pub agent_url: String,
    /// The agent's per-start key, sealed by the server: the store never sees the key itself
    /// (see `hydra_server::sealing`), and this text is not shown by `Debug`.
    pub agent_key_sealed: String,
    /// Sessions the worker may run at most.
    pub max_sessions: u32,
    /// When the report came (unix ms).
    pub reported_at: i64,
    /// The sender's write id, claimed in the report's transaction (a repeat is not applied);
    /// not stored with the report, so `None` when read back.
    pub write_id: Option<crate::WriteId>,
}

impl fmt::Debug for WorkerReportRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerReportRecord")
            .field("worker_id", &self.worker_id)
            .field("agent_url", &self.agent_url)
            .field("max_sessions", &self.max_sessions)
            .field("reported_at", &self.reported_at)
            .field("write_id", &self.write_id)
            .finish_non_exhaustive()
    }
}
