//! Registry bodies: enrolment, node views, heartbeats, moves and drains.

use std::net::IpAddr;

use hydra_core::{CostTier, Node, NodeStatus, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest GPU memory accepted, in MB (16 TiB): far above any GPU, far below what storage can hold.
pub const MAX_VRAM_MB: u64 = 16_777_216;

/// A role as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleWire {
    /// GPU host.
    Body,
    /// Relay node.
    Worker,
    /// Client screen.
    Head,
}

impl From<RoleWire> for Role {
    fn from(role: RoleWire) -> Role {
        match role {
            RoleWire::Body => Role::Body,
            RoleWire::Worker => Role::Worker,
            RoleWire::Head => Role::Head,
        }
    }
}

impl From<Role> for RoleWire {
    fn from(role: Role) -> RoleWire {
        match role {
            Role::Body => RoleWire::Body,
            Role::Worker => RoleWire::Worker,
            Role::Head => RoleWire::Head,
        }
    }
}

/// A cost tier as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CostTierWire {
    /// Own hardware.
    #[default]
    Owned,
    /// Shared under an agreement.
    Shared,
    /// Rented.
    Leased,
    /// Bought per use.
    Marketplace,
}

/// Whether a node counts as alive (`hydra_core::NodeStatus` on the wire): `online` while its
/// last heartbeat is younger than the timeout, `unreachable` when the peer mesh declared it down after
/// that heartbeat, else `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatusWire {
    /// Heartbeat fresh.
    Online,
    /// No heartbeat yet, or too old.
    Offline,
    /// The peer mesh declared it down and no heartbeat arrived since (issue 11).
    Unreachable,
}

impl NodeStatusWire {
    /// The wire word (`online`, `offline`, `unreachable`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatusWire::Online => "online",
            NodeStatusWire::Offline => "offline",
            NodeStatusWire::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for NodeStatusWire {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl From<NodeStatus> for NodeStatusWire {
    fn from(status: NodeStatus) -> NodeStatusWire {
        match status {
            NodeStatus::Online => NodeStatusWire::Online,
            NodeStatus::Offline => NodeStatusWire::Offline,
            NodeStatus::Unreachable => NodeStatusWire::Unreachable,
        }
    }
}

impl From<CostTierWire> for CostTier {
    fn from(tier: CostTierWire) -> CostTier {
        match tier {
            CostTierWire::Owned => CostTier::Owned,
            CostTierWire::Shared => CostTier::Shared,
            CostTierWire::Leased => CostTier::Leased,
            CostTierWire::Marketplace => CostTier::Marketplace,
        }
    }
}

impl From<CostTier> for CostTierWire {
    fn from(tier: CostTier) -> CostTierWire {
        match tier {
            CostTier::Owned => CostTierWire::Owned,
            CostTier::Shared => CostTierWire::Shared,
            CostTier::Leased => CostTierWire::Leased,
            CostTier::Marketplace => CostTierWire::Marketplace,
        }
    }
}

/// `POST /api/v1/nodes`: enrol a node. Every field but the roles is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// Identifier; generated as `node-` + 8 hex when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub id: Option<String>,
    /// Human name; defaults to the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 128)]
    pub name: Option<String>,
    /// Any of `body`, `worker`, `head`; at least one.
    #[schema(min_items = 1)]
    pub roles: Vec<RoleWire>,
    /// Region (e.g. `bxl1`).
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub district: String,
    /// Site inside the district (e.g. `rupelmonde`).
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub venue: String,
    /// Owning organisation.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub owner: String,
    /// Other organisations that may use the node.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub allowed_orgs: Vec<String>,
    /// Address on the venue LAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub lan_ip: Option<IpAddr>,
    /// Address on the WireGuard overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub wg_ip: Option<IpAddr>,
    /// GPU memory in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 16_777_216)]
    pub vram_mb: Option<u64>,
    /// Who pays for the node; `owned` by default.
    #[serde(default)]
    pub cost_tier: CostTierWire,
}

/// A node as every read shows it, with its derived `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// Identifier.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Roles.
    pub roles: Vec<RoleWire>,
    /// Region.
    pub district: String,
    /// Site.
    pub venue: String,
    /// Owning organisation.
    pub owner: String,
    /// Other organisations that may use the node.
    pub allowed_orgs: Vec<String>,
    /// LAN address.
    #[schema(value_type = Option<String>)]
    pub lan_ip: Option<IpAddr>,
    /// WireGuard address.
    #[schema(value_type = Option<String>)]
    pub wg_ip: Option<IpAddr>,
    /// GPU memory in MB.
    pub vram_mb: Option<u64>,
    /// Cost tier.
    pub cost_tier: CostTierWire,
    /// Whether the node takes no new work.
    pub drained: bool,
    /// Idle flag from the last heartbeat.
    pub idle: bool,
    /// Sessions from the last heartbeat.
    pub active_sessions: u32,
    /// `online` or `offline`.
    pub status: NodeStatusWire,
    /// Last heartbeat as RFC 3339 UTC, or null.
    pub last_heartbeat: Option<String>,
    /// Enrolment time as RFC 3339 UTC.
    pub enrolled_at: String,
}

impl NodeView {
    /// The view of `node` at time `now_ms` with the given heartbeat timeout.
    pub fn from_node(node: &Node, now_ms: i64, heartbeat_timeout_ms: i64) -> NodeView {
        NodeView {
            id: node.id.clone(),
            name: node.name.clone(),
            roles: node.roles.iter().map(RoleWire::from).collect(),
            district: node.district.clone(),
            venue: node.venue.clone(),
            owner: node.owner.clone(),
            allowed_orgs: node.allowed_orgs.clone(),
            lan_ip: node.lan_ip,
            wg_ip: node.wg_ip,
            vram_mb: node.vram_mb,
            cost_tier: node.cost_tier.into(),
            drained: node.drained,
            idle: node.idle,
            active_sessions: node.active_sessions,
            status: node.status(now_ms, heartbeat_timeout_ms).into(),
            last_heartbeat: node.last_heartbeat.map(crate::system::rfc3339),
            enrolled_at: crate::system::rfc3339(node.enrolled_at),
        }
    }
}

/// `201` answer to an enrolment: the node and its token, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnrolResponse {
    /// The enrolled node.
    pub node: NodeView,
    /// The node's bearer token; stored hashed, never shown again.
    pub token: String,
}

/// `GET /api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// Every enrolled node, by id.
    pub nodes: Vec<NodeView>,
}

/// `POST /api/v1/nodes/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Whether the node is idle (a body streams to nobody).
    pub idle: bool,
    /// Sessions the node runs now.
    #[serde(default)]
    pub active_sessions: u32,
    /// GPU memory in MB, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 16_777_216)]
    pub vram_mb: Option<u64>,
}

/// `POST /api/v1/nodes/{id}/district`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// New district.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub district: String,
    /// New venue.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub venue: String,
}

/// `POST /api/v1/nodes/{id}/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// `true` to drain, `false` to take work again.
    pub drained: bool,
}

/// Longest life of a one-time enrolment token, in seconds (30 days).
pub const MAX_ENROLMENT_TOKEN_SECONDS: u64 = 30 * 24 * 3600;

/// `POST /api/v1/enrolment-tokens` (admin): a one-time token a node may enrol with instead of
/// the admin token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentTokenRequest {
    /// Seconds until the token expires, 1 to 2,592,000 (30 days).
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub expires_in_s: u64,
}

/// `201` answer: the token, shown this once (only its digest is stored), and its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnrolmentTokenResponse {
    /// The one-time token (`hye_...`): enrols one node, once, before `expires_at`.
    pub token: String,
    /// Expiry as RFC 3339 UTC.
    pub expires_at: String,
}
