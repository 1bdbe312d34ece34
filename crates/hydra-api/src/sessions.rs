//! Relay sessions and workers on the wire: the server's session API, the server-to-agent start
//! call and the agent's worker report (`relay.md`).

use crate::nodes::NodeStatusWire;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Life of a relay session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Placed; the worker is starting the process.
    Starting,
    /// The process runs and answers on its port.
    Running,
    /// Ended by a user or an operator.
    Stopped,
    /// Failed: the process died, its data dir vanished, or it never started.
    Error,
}

impl SessionState {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Running => "running",
            SessionState::Stopped => "stopped",
            SessionState::Error => "error",
        }
    }

    /// Whether the session holds a worker slot (starting or running): the core's rule
    /// (`hydra_core::session::SessionState::is_live`).
    pub fn is_active(self) -> bool {
        hydra_core::session::SessionState::from(self).is_live()
    }
}

/// `POST /api/v1/sessions` on the server: a session for a body, named by `body_ip` or chosen for
/// `head_id` by the selection policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// Address of the body's Sunshine (LAN or WireGuard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_ip: Option<String>,
    /// A head to choose the body for, instead of `body_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_id: Option<String>,
    /// Sunshine user; the worker's configured one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunshine_user: Option<String>,
    /// Sunshine password; the worker's configured one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunshine_pass: Option<String>,
    /// Experience to launch on the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experience: Option<String>,
    /// Executable of the experience on the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_path: Option<String>,
    /// Only place on workers of this district.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub district: Option<String>,
}

/// A session as the server shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Session id.
    pub session_id: String,
    /// The worker node that runs it.
    pub worker_id: String,
    /// The body's address.
    pub body_ip: String,
    /// The body's node id, when chosen for a head.
    pub body_id: Option<String>,
    /// The head it was asked for.
    pub head_id: Option<String>,
    /// Experience launched on the body.
    pub experience: Option<String>,
    /// Port of the session process on the worker.
    pub port: Option<u16>,
    /// URL the browser opens. In the answer to `POST /api/v1/sessions` it carries the viewer's
    /// capability (`?hydra_viewer=...`, signed and expiring); stored views leave it out.
    pub stream_url: Option<String>,
    /// Current state.
    pub status: SessionState,
    /// Why it failed.
    pub error: Option<String>,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Last change, RFC 3339 UTC.
    pub updated_at: String,
}

/// `GET /api/v1/sessions`: one page of sessions (see [`SessionQuery`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    /// The sessions of this page, newest first.
    pub sessions: Vec<SessionView>,
    /// Give it as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /api/v1/sessions` on a worker's agent (the server's call, authenticated with the
/// agent key from the worker's report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSessionRequest {
    /// Id chosen by the server; the agent makes one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Address of the body's Sunshine.
    pub body_ip: String,
    /// Sunshine user; the worker's configured one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunshine_user: Option<String>,
    /// Sunshine password; the worker's configured one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunshine_pass: Option<String>,
    /// Experience to launch on the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experience: Option<String>,
    /// Executable of the experience on the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_path: Option<String>,
    /// The district it was placed in (for the session record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub district: Option<String>,
    /// The head it was asked for (for the session record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_id: Option<String>,
    /// The body's node id, when chosen for a head (for the session record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_id: Option<String>,
}

/// A session as its worker's agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerSession {
    /// Session id.
    pub session_id: String,
    /// The body's address.
    pub body_ip: String,
    /// Port of the session process.
    pub port: u16,
    /// URL the browser opens (with the viewer's capability in the agent's start answer; without
    /// it in worker reports).
    pub stream_url: String,
    /// Current state.
    pub status: SessionState,
    /// Why it failed.
    pub error: Option<String>,
}

/// `GET /api/v1/sessions` on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerSessionList {
    /// Every session the agent knows, oldest first.
    pub sessions: Vec<WorkerSession>,
}

/// `POST /api/v1/workers/{id}/report`: what a worker's agent runs and how to reach it; sent at
/// start and with every heartbeat, with the node's own token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerReport {
    /// Base URL of the agent's API, as the server reaches it.
    pub agent_url: String,
    /// Bearer key the server uses on the agent's session API; random per agent start, never
    /// logged.
    pub agent_key: String,
    /// Sessions the agent may run at most (`sessions.max`).
    pub max_sessions: u32,
    /// Every session the agent actually knows; the server marks its other sessions on this
    /// worker `error`.
    pub sessions: Vec<WorkerSession>,
    /// Number of this report in the agent's run (1, 2, ...; a new run starts again with a new
    /// `agent_key`): the server ignores a report older than the last one it applied, so a
    /// stale report cannot end a session a newer one showed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// The agent's bound on one start, in ms (its body check plus `sessions.ready_timeout`): the
    /// server waits that long plus a margin for a start, and gives up a `starting` session
    /// after one more margin. 32,000 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_ms: Option<u64>,
}

/// A worker as `GET /api/v1/workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    /// Node id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Region.
    pub district: String,
    /// Site.
    pub venue: String,
    /// `online` or `offline` (heartbeat age).
    pub status: NodeStatusWire,
    /// Online, not drained and reported: new sessions may go there.
    pub healthy: bool,
    /// Whether the worker takes no new session.
    pub drained: bool,
    /// Sessions it runs.
    pub active_sessions: u32,
    /// Sessions it may run at most; 0 until it reported.
    pub max_sessions: u32,
    /// `active_sessions / max_sessions` (1 when `max_sessions` is 0).
    pub load: f64,
    /// Base URL of its agent, once reported.
    pub agent_url: Option<String>,
    /// Last heartbeat, RFC 3339 UTC.
    pub last_heartbeat: Option<String>,
    /// Drained with sessions still running: they go on until they end (or are ended).
    #[serde(default)]
    pub draining: bool,
    /// The sessions a drained worker still runs (0 when not drained).
    #[serde(default)]
    pub sessions_left: u32,
}

/// `GET /api/v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    /// Every node with the worker role, by id.
    pub workers: Vec<WorkerView>,
}

/// `POST /session/{id}/rating` (from the browser).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatingRequest {
    /// 1 to 5 stars.
    pub stars: u8,
    /// Free text, at most 2,000 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `POST /session/{id}/mic/offer` (from the browser): the page's SDP offer for a send-only audio
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MicOffer {
    /// The offer's SDP text (`RTCSessionDescription.sdp`).
    pub sdp: String,
}

/// The worker's answer to a [`MicOffer`]: a receive-only peer's SDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MicAnswer {
    /// Always `answer` (the `RTCSessionDescriptionInit.type`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The answer's SDP text.
    pub sdp: String,
}

/// `GET /api/v1/sessions` query: filters and one page, newest first. Encoded by the SDK with
/// [`SessionQuery::to_query`] and decoded by the server with [`SessionQuery::from_query`], so the
/// wire form has one owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    /// Only sessions in this state (`starting`, `running`, `stopped`, `error`).
    #[param(inline)]
    pub status: Option<SessionState>,
    /// Only sessions on this worker.
    pub worker_id: Option<String>,
    /// Only sessions asked for this head.
    pub head_id: Option<String>,
    /// Sessions per page, 1 to [`SessionQuery::MAX_LIMIT`] (default
    /// [`SessionQuery::DEFAULT_LIMIT`]).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: the page after it.
    pub cursor: Option<String>,
}

impl SessionQuery {
    /// Sessions per page when `limit` is absent.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// Most sessions per page.
    pub const MAX_LIMIT: u32 = 1_000;

    /// The query parameters, for a URL.
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(status) = self.status {
            pairs.push(("status", status.as_str().to_owned()));
        }
        for (name, value) in [("worker_id", &self.worker_id), ("head_id", &self.head_id)] {
            if let Some(value) = value {
                pairs.push((name, value.clone()));
            }
        }
        if let Some(limit) = self.limit {
            pairs.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &self.cursor {
            pairs.push(("cursor", cursor.clone()));
        }
        pairs
    }

    /// Decodes the query parameters; the error names the parameter at fault.
    pub fn from_query(pairs: &[(String, String)]) -> Result<SessionQuery, String> {
        let mut query = SessionQuery::default();
        for (name, value) in pairs {
            let taken = match name.as_str() {
                "status" => {
                    let status = match value.as_str() {
                        "starting" => SessionState::Starting,
                        "running" => SessionState::Running,
                        "stopped" => SessionState::Stopped,
                        "error" => SessionState::Error,
                        _ => {
                            return Err(format!(
                                "status {value:?} is not one of starting, running, stopped, error"
                            ));
                        }
                    };
                    query.status.replace(status).is_some()
                }
                "worker_id" => query.worker_id.replace(value.clone()).is_some(),
                "head_id" => query.head_id.replace(value.clone()).is_some(),
                "limit" => {
                    let limit = value
                        .parse::<u32>()
                        .ok()
                        .filter(|limit| (1..=SessionQuery::MAX_LIMIT).contains(limit))
                        .ok_or_else(|| {
                            format!(
                                "limit must be a whole number from 1 to {}",
                                SessionQuery::MAX_LIMIT
                            )
                        })?;
                    query.limit.replace(limit).is_some()
                }
                "cursor" => {
                    SessionCursor::decode(value)?;
                    query.cursor.replace(value.clone()).is_some()
                }
                _ => {
                    return Err(format!(
                        "unknown parameter {name:?}; expected status, worker_id, head_id, limit, cursor"
                    ));
                }
            };
            if taken {
                return Err(format!("{name} is given more than once"));
            }
        }
        Ok(query)
    }

    /// `limit`, or the default.
    pub fn page_size(&self) -> u32 {
        self.limit.unwrap_or(SessionQuery::DEFAULT_LIMIT)
    }
}

/// Where a page of sessions ends: the creation time and id of its last (oldest) session.
/// On the wire, `<created_at ms>.<id>`; opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCursor {
    /// `created_at` of the last session shown (unix ms).
    pub created_at: i64,
    /// Its id (orders sessions created in the same millisecond).
    pub id: String,
}

impl SessionCursor {
    /// The wire form.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at, self.id)
    }

    /// Parses the wire form; the error names `cursor`.
    pub fn decode(text: &str) -> Result<SessionCursor, String> {
        let invalid = || format!("cursor {text:?} is not a next_cursor this server gave");
        let (created_at, id) = text.split_once('.').ok_or_else(invalid)?;
        let created_at = created_at.parse::<i64>().map_err(|_| invalid())?;
        if id.is_empty() {
            return Err(invalid());
        }
        Ok(SessionCursor {
            created_at,
            id: id.to_owned(),
        })
    }
}

impl From<SessionState> for hydra_core::session::SessionState {
    fn from(state: SessionState) -> hydra_core::session::SessionState {
        match state {
            SessionState::Starting => hydra_core::session::SessionState::Starting,
            SessionState::Running => hydra_core::session::SessionState::Running,
            SessionState::Stopped => hydra_core::session::SessionState::Stopped,
            SessionState::Error => hydra_core::session::SessionState::Error,
        }
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    fn pairs(query: &SessionQuery) -> Vec<(String, String)> {
        query
            .to_query()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }

    #[test]
    fn session_queries_round_trip_and_bad_parameters_are_named() {
        let full = SessionQuery {
            status: Some(SessionState::Stopped),
            worker_id: Some("w-1".into()),
            head_id: Some("h 1&x=y".into()),
            limit: Some(1_000),
            cursor: Some(
                SessionCursor {
                    created_at: 1_700_000_000_123,
                    id: "s-00ff.x".into(),
                }
                .encode(),
            ),
        };
        for query in [SessionQuery::default(), full] {
            assert_eq!(SessionQuery::from_query(&pairs(&query)), Ok(query));
        }
        let bad = |name: &str, value: &str| {
            SessionQuery::from_query(&[(name.to_owned(), value.to_owned())]).unwrap_err()
        };
        assert!(bad("status", "done").contains("status"));
        assert!(bad("limit", "0").contains("limit"));
        assert!(bad("limit", "1001").contains("limit"));
        assert!(bad("cursor", "nope").contains("cursor"));
        assert!(bad("cursor", "12.").contains("cursor"));
        assert!(bad("sort", "asc").contains("sort"));
        let twice = [
            ("limit".to_owned(), "5".to_owned()),
            ("limit".to_owned(), "6".to_owned()),
        ];
        assert!(
            SessionQuery::from_query(&twice)
                .unwrap_err()
                .contains("limit")
        );
        assert_eq!(
            SessionCursor::decode("5.s-1.2"),
            Ok(SessionCursor {
                created_at: 5,
                id: "s-1.2".into()
            })
        );
    }
}

/// `POST /api/v1/sessions/{id}/notice` (server, admin; agent, its key or `api_token`): the
/// session's page shows "this stream ends in N s" (a drain's deadline is coming).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionNotice {
    /// Seconds until the stream ends, 1 to 86400.
    pub ends_in_s: u32,
}

/// `GET /session/{id}/notice` (the page, with its viewer capability): the notice, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PageNotice {
    /// Seconds until the stream ends; absent without a notice.
    pub ends_in_s: Option<u32>,
}
