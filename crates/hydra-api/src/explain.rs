//! "Why this body" and "what if" on the wire: `GET /api/v1/bodies/eligible?...&explain=true`
//! and `GET /api/v1/bodies/what-if?without=venue:V|district:D|node:N`.

use hydra_core::explain::{Considered, Explanation, LeftOut, RankKey, Verdict};
use hydra_core::what_if::{HeadOutcome, Without};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::eligible::QueryError;
use crate::nodes::CostTierWire;
use crate::selection::{EligibleResponse, PolicyWire};

/// Why a node of the head's district is not in the answer (`hydra_core::explain::LeftOut`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeftOutWire {
    /// Not a body (a head or a worker only).
    NotABody,
    /// No heartbeat within the timeout.
    Offline,
    /// Drained by an operator.
    Drained,
    /// Another owner, and the head's owner is not in its `allowed_orgs`.
    OtherOwner,
    /// The head named it in `unreachable=`.
    NamedUnreachable,
    /// The head reported it unreachable on both paths within the server's memory window
    /// (`--unreachable-for`); left out while anything else is left.
    LearnedUnreachable,
    /// Quickroute has a body, so nothing outside the head's venue and owner is looked at.
    QuickrouteOpen,
}

impl From<LeftOut> for LeftOutWire {
    fn from(reason: LeftOut) -> LeftOutWire {
        match reason {
            LeftOut::NotABody => LeftOutWire::NotABody,
            LeftOut::Offline => LeftOutWire::Offline,
            LeftOut::Drained => LeftOutWire::Drained,
            LeftOut::OtherOwner => LeftOutWire::OtherOwner,
            LeftOut::NamedUnreachable => LeftOutWire::NamedUnreachable,
            LeftOut::LearnedUnreachable => LeftOutWire::LearnedUnreachable,
            LeftOut::QuickrouteOpen => LeftOutWire::QuickrouteOpen,
        }
    }
}

impl LeftOutWire {
    /// The wire word (`drained`, `quickroute_open`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LeftOutWire::NotABody => "not_a_body",
            LeftOutWire::Offline => "offline",
            LeftOutWire::Drained => "drained",
            LeftOutWire::OtherOwner => "other_owner",
            LeftOutWire::NamedUnreachable => "named_unreachable",
            LeftOutWire::LearnedUnreachable => "learned_unreachable",
            LeftOutWire::QuickrouteOpen => "quickroute_open",
        }
    }
}

/// One rank key of a kept body, in the order keys are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "key", rename_all = "snake_case")]
pub enum RankKeyWire {
    /// The head's fresh measured connect time and its age.
    Latency {
        /// Connect time in ms.
        rtt_ms: u32,
        /// Age of the measurement in ms.
        age_ms: i64,
    },
    /// No fresh measurement (ranked after measured bodies).
    Unmeasured,
    /// Owned by the head's own organisation (own before shared).
    Own {
        /// Whether it is.
        own: bool,
    },
    /// Cost tier.
    CostTier {
        /// The tier.
        cost_tier: CostTierWire,
    },
    /// Idle first.
    Idle {
        /// Whether it is idle.
        idle: bool,
    },
    /// More VRAM first.
    VramMb {
        /// GPU memory in MB (0 when unknown).
        vram_mb: u64,
    },
}

impl From<RankKey> for RankKeyWire {
    fn from(key: RankKey) -> RankKeyWire {
        match key {
            RankKey::Latency { rtt_ms, age_ms } => RankKeyWire::Latency { rtt_ms, age_ms },
            RankKey::Unmeasured => RankKeyWire::Unmeasured,
            RankKey::Own(own) => RankKeyWire::Own { own },
            RankKey::Cost(tier) => RankKeyWire::CostTier {
                cost_tier: tier.into(),
            },
            RankKey::Idle(idle) => RankKeyWire::Idle { idle },
            RankKey::VramMb(vram_mb) => RankKeyWire::VramMb { vram_mb },
        }
    }
}

/// The verdict on one node of the head's district.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExplainEntry {
    /// Node id.
    pub id: String,
    /// Venue.
    pub venue: String,
    /// Owning organisation.
    pub owner: String,
    /// Whether it is in the head's venue.
    pub same_venue: bool,
    /// Position in the answer from 1, when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// Why it was left out, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<LeftOutWire>,
    /// The rank keys of a kept body, in the order they are compared (the id breaks the last
    /// tie); empty when left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<RankKeyWire>,
    /// Kept, and the head last reached it over WireGuard only. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wg_only: bool,
}

impl From<&Considered<'_>> for ExplainEntry {
    fn from(considered: &Considered<'_>) -> ExplainEntry {
        let node = considered.node;
        let (rank, reason, keys) = match &considered.verdict {
            Verdict::Kept { rank, keys } => (
                Some(*rank),
                None,
                keys.iter().copied().map(RankKeyWire::from).collect(),
            ),
            Verdict::LeftOut(reason) => (None, Some((*reason).into()), Vec::new()),
        };
        ExplainEntry {
            id: node.id.clone(),
            venue: node.venue.clone(),
            owner: node.owner.clone(),
            same_venue: considered.same_venue,
            rank,
            reason,
            keys,
            wg_only: considered.wg_only,
        }
    }
}

/// The eligible answer with its trace: `{"policy", "bodies", "explain": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExplainedEligible {
    /// The answer, as without `explain`.
    #[serde(flatten)]
    pub eligible: EligibleResponse,
    /// Every node of the head's district: kept ones in rank order, then left-out ones by id.
    pub explain: Vec<ExplainEntry>,
}

impl ExplainedEligible {
    /// The answer and the trace of the same selection.
    pub fn new(eligible: EligibleResponse, explanation: &Explanation<'_>) -> ExplainedEligible {
        ExplainedEligible {
            eligible,
            explain: explanation
                .considered
                .iter()
                .map(ExplainEntry::from)
                .collect(),
        }
    }
}

/// `GET /api/v1/bodies/what-if` parameters.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WhatIfParams {
    /// What to take away: `venue:<venue>`, `district:<district>` or `node:<node id>`.
    pub without: Option<String>,
}

/// The kind and name of what a what-if takes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithoutQuery {
    /// `venue`, `district` or `node`.
    pub kind: &'static str,
    /// The venue, district or node id.
    pub name: String,
}

impl WithoutQuery {
    /// Parses `venue:V`, `district:D` or `node:N`; the error names `without`.
    pub fn parse(text: &str) -> Result<WithoutQuery, QueryError> {
        let bad = || QueryError {
            field: "without",
            message: format!(
                "without {text:?} is not venue:<venue>, district:<district> or node:<id>"
            ),
        };
        let (kind, name) = text.split_once(':').ok_or_else(bad)?;
        let kind = match kind {
            "venue" => "venue",
            "district" => "district",
            "node" => "node",
            _ => return Err(bad()),
        };
        if name.is_empty() {
            return Err(bad());
        }
        Ok(WithoutQuery {
            kind,
            name: name.to_owned(),
        })
    }

    /// The core's view of it.
    pub fn as_core(&self) -> Without<'_> {
        match self.kind {
            "venue" => Without::Venue(&self.name),
            "district" => Without::District(&self.name),
            _ => Without::Node(&self.name),
        }
    }
}

/// One head's first body now and without.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeadWhatIf {
    /// The head's node id.
    pub head_id: String,
    /// Its district.
    pub district: String,
    /// Its venue.
    pub venue: String,
    /// The head itself is taken away.
    pub head_removed: bool,
    /// The policy of its answer now.
    pub policy_now: PolicyWire,
    /// The first body of its answer now.
    pub body_now: Option<String>,
    /// The policy of its answer without them.
    pub policy_without: PolicyWire,
    /// The first body of its answer without them.
    pub body_without: Option<String>,
    /// It has a body now and would have none.
    pub shortfall: bool,
}

impl From<&HeadOutcome<'_>> for HeadWhatIf {
    fn from(outcome: &HeadOutcome<'_>) -> HeadWhatIf {
        HeadWhatIf {
            head_id: outcome.head.id.clone(),
            district: outcome.head.district.clone(),
            venue: outcome.head.venue.clone(),
            head_removed: outcome.head_removed,
            policy_now: outcome.now.0.into(),
            body_now: outcome.now.1.map(|node| node.id.clone()),
            policy_without: outcome.without.0.into(),
            body_without: outcome.without.1.map(|node| node.id.clone()),
            shortfall: outcome.is_shortfall(),
        }
    }
}

/// A live relay session on a worker that would go away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionWhatIf {
    /// Session id.
    pub session_id: String,
    /// The worker it runs on now.
    pub worker_id: String,
}

/// `GET /api/v1/bodies/what-if` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhatIfResponse {
    /// What was taken away, as asked (`venue:rupelmonde`).
    pub without: String,
    /// Every head of the districts that lose a node, by id.
    pub heads: Vec<HeadWhatIf>,
    /// Heads that have a body now and would have none.
    pub shortfall: Vec<String>,
    /// Live relay sessions on workers taken away: each would need a new worker.
    pub sessions_needing_worker: Vec<SessionWhatIf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_names_the_field_when_it_is_wrong() {
        let shown: Vec<String> = [
            "venue:rupelmonde",
            "district:bxl1",
            "node:b-1",
            "venue:",
            "shelf:b-1",
            "rupelmonde",
        ]
        .iter()
        .map(|text| match WithoutQuery::parse(text) {
            Ok(query) => format!("{text} -> {:?}", query.as_core()),
            Err(error) => format!("{text} -> {}: {}", error.field, error.message),
        })
        .collect();
        expect_test::expect![[r#"
            venue:rupelmonde -> Venue("rupelmonde")
            district:bxl1 -> District("bxl1")
            node:b-1 -> Node("b-1")
            venue: -> without: without "venue:" is not venue:<venue>, district:<district> or node:<id>
            shelf:b-1 -> without: without "shelf:b-1" is not venue:<venue>, district:<district> or node:<id>
            rupelmonde -> without: without "rupelmonde" is not venue:<venue>, district:<district> or node:<id>"#]]
        .assert_eq(&shown.join("\n"));
    }

    #[test]
    fn rank_keys_are_tagged_by_key() {
        let keys = [
            RankKeyWire::from(RankKey::Latency {
                rtt_ms: 3,
                age_ms: 2_000,
            }),
            RankKeyWire::from(RankKey::Cost(hydra_core::CostTier::Leased)),
            RankKeyWire::from(RankKey::Idle(true)),
        ];
        expect_test::expect![[r#"[{"key":"latency","rtt_ms":3,"age_ms":2000},{"key":"cost_tier","cost_tier":"leased"},{"key":"idle","idle":true}]"#]]
            .assert_eq(&serde_json::to_string(&keys).unwrap());
    }
}
