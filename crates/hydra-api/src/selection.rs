//! `GET /api/v1/bodies/eligible` answer.

use std::net::IpAddr;

use hydra_core::selection::{Candidate, Selection};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::nodes::CostTierWire;

/// One body of the eligible list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EligibleBody {
    /// Node id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Region.
    pub district: String,
    /// Site.
    pub venue: String,
    /// Owning organisation.
    pub owner: String,
    /// LAN address.
    #[schema(value_type = Option<String>)]
    pub lan_ip: Option<IpAddr>,
    /// WireGuard address.
    #[schema(value_type = Option<String>)]
    pub wg_ip: Option<IpAddr>,
    /// GPU memory in MB.
    pub vram_mb: Option<u64>,
    /// Idle flag from the last heartbeat.
    pub idle: bool,
    /// Cost tier.
    pub cost_tier: CostTierWire,
    /// Whether the body is in the head's venue.
    pub same_venue: bool,
    /// Latest connect time the head measured to this body, when fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u32>,
}

impl From<&Candidate<'_>> for EligibleBody {
    fn from(candidate: &Candidate<'_>) -> EligibleBody {
        let node = candidate.node;
        EligibleBody {
            id: node.id.clone(),
            name: node.name.clone(),
            district: node.district.clone(),
            venue: node.venue.clone(),
            owner: node.owner.clone(),
            lan_ip: node.lan_ip,
            wg_ip: node.wg_ip,
            vram_mb: node.vram_mb,
            idle: node.idle,
            cost_tier: node.cost_tier.into(),
            same_venue: candidate.same_venue,
            rtt_ms: candidate.rtt_ms,
        }
    }
}

/// `{"policy": ..., "bodies": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EligibleResponse {
    /// `quickroute`, `cross_venue`, `strict_venue` or `none`.
    pub policy: String,
    /// Best first.
    pub bodies: Vec<EligibleBody>,
}

impl From<&Selection<'_>> for EligibleResponse {
    fn from(selection: &Selection<'_>) -> EligibleResponse {
        EligibleResponse {
            policy: selection.policy.as_str().to_owned(),
            bodies: selection.bodies.iter().map(EligibleBody::from).collect(),
        }
    }
}

/// A connect time a head measured to a body, reported with its next request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencyReport {
    /// The head that measured.
    pub head_id: String,
    /// The body measured.
    pub body_id: String,
    /// `lan` or `wireguard`.
    pub transport: String,
    /// TCP connect time in milliseconds.
    pub rtt_ms: u32,
}
