//! Bodies of an agent's local API: `GET /api/v1/health` (the field's fields) and
//! `GET /api/v1/status` (what `hydra status` prints). Without a token both carry counts only:
//! session ids and body addresses are what a viewer must not learn from them. Served by
//! `hydra-agent`, read by `hydra_client::AgentClient`.

use serde::{Deserialize, Serialize};

use crate::sessions::SessionState;

/// `GET /api/v1/health` of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// `ok`, or `degraded` when no WireGuard interface is up.
    pub status: String,
    /// Build version.
    pub version: String,
    /// The details the field's health answer carries.
    pub extra: HealthExtra,
}

/// The `extra` object of the health answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthExtra {
    /// The agent's process id.
    pub process_id: u32,
    /// Seconds since the agent started.
    pub uptime: u64,
    /// Whether a WireGuard interface is up.
    pub wireguard: bool,
    /// Sessions starting or running.
    pub active_sessions: u32,
    /// Sessions at most (0 without the worker role).
    pub max_sessions: u32,
    /// Every session the worker knows; only with a token (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<SessionHealth>>,
}

/// One session in the health answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHealth {
    /// Session id.
    pub id: String,
    /// The body's address.
    pub body_ip: String,
    /// `starting`, `running`, `stopped` or `error`.
    pub status: SessionState,
    /// Whether its process runs.
    pub process_alive: bool,
    /// Whether its data dir exists.
    pub data_directory_ok: bool,
    /// Connections through the proxy now.
    pub active_connections: u32,
    /// Seconds since it was created.
    pub age: u64,
    /// Port of its process.
    pub port: u16,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/v1/status` of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The node id, once enrolled.
    pub node_id: Option<String>,
    /// Roles the agent runs.
    pub roles: Vec<String>,
    /// Control-plane replicas it talks to.
    pub servers: Vec<String>,
    /// The master it last wrote to, when known.
    pub master: Option<String>,
    /// Last successful heartbeat, RFC 3339 UTC.
    pub last_heartbeat: Option<String>,
    /// The last heartbeat failure since then.
    pub last_heartbeat_error: Option<String>,
    /// Seconds since the agent started.
    pub uptime: u64,
    /// `ok` or `degraded` (as in health).
    pub health: String,
    /// Sessions starting or running.
    #[serde(default)]
    pub active_sessions: u32,
    /// Sessions at most (0 without the worker role).
    pub max_sessions: u32,
    /// Every session the worker knows; only with a token (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<SessionHealth>>,
    /// What the agent knows of the control plane while it rides out its loss (absent from
    /// agents that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneStatus>,
}

/// The agent's view of the control plane: its health state, each replica, the config it runs
/// on and the writes it owes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneStatus {
    /// `healthy`, `degraded` (no master answers) or `recovering` (a master is back; the
    /// journal is being replayed and the bundle polled).
    pub state: String,
    /// When the agent lost its master (RFC 3339 UTC), while degraded or recovering.
    pub degraded_since: Option<String>,
    /// Each replica as the last health round saw it.
    pub replicas: Vec<ReplicaHealth>,
    /// When the config bundle poller last had an answer (RFC 3339 UTC).
    pub last_poll: Option<String>,
    /// The config bundle version in use (0: none).
    pub config_version: u64,
    /// Where the config in use came from: `server`, `kept_copy` or `local_yaml`.
    pub config_source: String,
    /// Writes waiting in the journal for a master.
    pub journal_length: u64,
    /// Writes the journal dropped to stay within its bound since the agent started.
    pub journal_dropped: u64,
}

/// One replica as the agent's health checker saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaHealth {
    /// Its base URL.
    pub url: String,
    /// Whether it answered `check-master` in the last round.
    pub healthy: bool,
    /// Whether it said it is the master.
    pub is_master: bool,
    /// The master's term, when the replica says it (`check-master` of replicated servers).
    pub term: Option<u64>,
}
