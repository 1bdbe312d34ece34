//! Body of `GET /api/v1/cluster` (issue 11): how one member sees the peer mesh. Without a token
//! it carries counts only (who is where is a map of the fleet); with the agent's token, each
//! member. Served by `hydra-agent` and `hydra-server` (members with the admin token), read by `hydra_client::AgentClient` and `hydra cluster`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// Whether this node runs the mesh (`cluster.enabled`).
    pub enabled: bool,
    /// This node's mesh id (`cluster.node_id`), when it runs the mesh.
    pub node_id: Option<String>,
    /// The address its datagrams use (`advertise_addr:bind_port`).
    pub addr: Option<String>,
    /// This node's identity generation (grows when it restarts or rejoins after a false down).
    pub generation: Option<u64>,
    /// Ids of the cluster keys in use, the sealing one first (never the keys).
    pub key_ids: Vec<String>,
    /// Members other than this node, by state: `alive`, `suspect`, `down`.
    pub members_by_state: BTreeMap<String, u64>,
    /// Datagrams dropped before parsing, by reason (`bad_seal`, `unknown_key`, `replayed`,
    /// `stale`, `truncated`, ...).
    pub dropped: BTreeMap<String, u64>,
    /// Datagrams sent and received since start.
    pub datagrams_sent: u64,
    /// Datagrams received (opened or not).
    pub datagrams_received: u64,
    /// Probe rounds, indirect probes, suspicions and downs this node saw since start.
    #[serde(default)]
    pub detector: DetectorCounts,
    /// Each member, with a token only.
    pub members: Option<Vec<ClusterMember>>,
}

/// The failure detector's counters on one member since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DetectorCounts {
    /// Probe rounds run (one member probed directly per round).
    pub probes: u64,
    /// Direct probes unanswered in time, handed to others to probe indirectly.
    pub indirect_probes: u64,
    /// Suspicions started or learnt of.
    pub suspicions: u64,
    /// Members declared down.
    pub downs: u64,
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterMember {
    /// Its node id.
    pub node_id: String,
    /// Its mesh address.
    pub addr: String,
    /// Its identity generation.
    pub generation: u64,
    /// `alive`, `suspect` or `down`.
    pub state: String,
    /// Its SWIM incarnation.
    pub incarnation: u16,
    /// When this node last saw it go up or down (RFC 3339), if since start.
    pub last_change: Option<String>,
    /// Roles it publishes.
    pub roles: Vec<String>,
    /// Where its API answers.
    pub api_url: Option<String>,
    /// Sessions running plus starting, as it last published.
    pub pending: Option<u32>,
    /// Sessions at most.
    pub capacity: Option<u32>,
    /// District.
    pub district: Option<String>,
    /// Venue.
    pub venue: Option<String>,
    /// Optional tag.
    pub tag: Option<String>,
}
