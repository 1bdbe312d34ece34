//! `GET /api/v1/events`: the server-sent events of fleet changes. Each SSE `event:` name has one
//! `data:` JSON shape: `snapshot` ([`FleetSnapshot`]), `node_enrolled` and `node_changed`
//! ([`NodeView`]), `node_removed` ([`NodeRemoved`]), `node_status` ([`NodeStatusChanged`]),
//! `session` ([`SessionView`](crate::sessions::SessionView)) and `lagged` ([`Lagged`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::nodes::{NodeStatusWire, NodeView};

/// The SSE event names, one per data shape.
pub mod event_names {
    /// The whole fleet: first on connect, again after `lagged`.
    pub const SNAPSHOT: &str = "snapshot";
    /// A node was enrolled (data: the node).
    pub const NODE_ENROLLED: &str = "node_enrolled";
    /// A node was moved, drained, undrained or heartbeat (data: the node).
    pub const NODE_CHANGED: &str = "node_changed";
    /// A node was removed.
    pub const NODE_REMOVED: &str = "node_removed";
    /// A node turned online or offline (its heartbeats started or stopped).
    pub const NODE_STATUS: &str = "node_status";
    /// A relay session was recorded (data: the session).
    pub const SESSION: &str = "session";
    /// The subscriber fell behind and missed events; a `snapshot` follows.
    pub const LAGGED: &str = "lagged";
}

/// Every node, for a subscriber to start from (or start again from after `lagged`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetSnapshot {
    /// Every enrolled node, by id.
    pub nodes: Vec<NodeView>,
    /// A node is offline once its last heartbeat is older than this.
    pub heartbeat_timeout_ms: i64,
}

/// `node_removed` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeRemoved {
    /// The removed node's id.
    pub id: String,
}

/// `node_status` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeStatusChanged {
    /// The node.
    pub id: String,
    /// Its status now.
    pub status: NodeStatusWire,
}

/// `lagged` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lagged {
    /// How many events this subscriber missed.
    pub missed: u64,
}
