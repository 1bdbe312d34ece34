//! `GET /api/v1/bodies/eligible` answer.

use std::net::IpAddr;

use hydra_core::selection::{Candidate, Policy, Selection};
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
    /// This head last reached the body over WireGuard only (its LAN probe failed): ranked by
    /// that WireGuard figure. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wg_only: bool,
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
            wg_only: candidate.wg_only,
        }
    }
}

/// Which rule produced an eligible list (`hydra_core::selection::Policy` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyWire {
    /// Same district, venue and owner as the head.
    Quickroute,
    /// Quickroute was empty; same district, usable by the head's owner.
    CrossVenue,
    /// No `head_id`: the district and venue given in the query.
    StrictVenue,
    /// No candidate at all.
    None,
}

impl PolicyWire {
    /// The wire word (`quickroute`, `cross_venue`, `strict_venue`, `none`).
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyWire::Quickroute => "quickroute",
            PolicyWire::CrossVenue => "cross_venue",
            PolicyWire::StrictVenue => "strict_venue",
            PolicyWire::None => "none",
        }
    }
}

impl std::fmt::Display for PolicyWire {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl From<Policy> for PolicyWire {
    fn from(policy: Policy) -> PolicyWire {
        match policy {
            Policy::Quickroute => PolicyWire::Quickroute,
            Policy::CrossVenue => PolicyWire::CrossVenue,
            Policy::StrictVenue => PolicyWire::StrictVenue,
            Policy::None => PolicyWire::None,
        }
    }
}

/// `{"policy": ..., "bodies": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EligibleResponse {
    /// `quickroute`, `cross_venue`, `strict_venue` or `none`.
    pub policy: PolicyWire,
    /// Best first.
    pub bodies: Vec<EligibleBody>,
}

impl From<&Selection<'_>> for EligibleResponse {
    fn from(selection: &Selection<'_>) -> EligibleResponse {
        EligibleResponse {
            policy: selection.policy.into(),
            bodies: selection.bodies.iter().map(EligibleBody::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use hydra_core::NodeStatus;

    use super::*;
    use crate::ErrorCode;
    use crate::nodes::NodeStatusWire;

    /// Every core word on the wire, as JSON, and back: the enums keep the strings the API has
    /// always sent (`policy`, a node's and a worker's `status`, the error codes).
    #[test]
    fn the_wire_enums_send_the_words_they_always_sent() {
        let mut lines = Vec::new();
        for policy in [
            Policy::Quickroute,
            Policy::CrossVenue,
            Policy::StrictVenue,
            Policy::None,
        ] {
            let json = serde_json::to_string(&PolicyWire::from(policy)).unwrap();
            assert_eq!(json, format!("\"{}\"", policy.as_str()), "{policy:?}");
            let back: PolicyWire = serde_json::from_str(&json).unwrap();
            assert_eq!(back, PolicyWire::from(policy));
            lines.push(format!("policy {policy:?} -> {json}"));
        }
        for status in [
            NodeStatus::Online,
            NodeStatus::Offline,
            NodeStatus::Unreachable,
        ] {
            let json = serde_json::to_string(&NodeStatusWire::from(status)).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()), "{status:?}");
            let back: NodeStatusWire = serde_json::from_str(&json).unwrap();
            assert_eq!(back, NodeStatusWire::from(status));
            lines.push(format!("status {status:?} -> {json}"));
        }
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Unavailable,
            ErrorCode::StorageUnavailable,
            ErrorCode::Internal,
            ErrorCode::BadGateway,
        ] {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::from_wire("teapot"), None);
        assert!(serde_json::from_str::<PolicyWire>("\"anywhere\"").is_err());
        expect_test::expect![[r#"
            policy Quickroute -> "quickroute"
            policy CrossVenue -> "cross_venue"
            policy StrictVenue -> "strict_venue"
            policy None -> "none"
            status Online -> "online"
            status Offline -> "offline"
            status Unreachable -> "unreachable""#]]
        .assert_eq(&lines.join("\n"));
    }
}
