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
}
