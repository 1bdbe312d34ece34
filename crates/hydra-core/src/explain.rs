//! "Why this body": for every node of the head's district, whether selection kept it (and on
//! which rank keys, in order) or left it out (and the one reason that decided it).
//!
//! It walks the same rules as [`select_bodies`](crate::selection::select_bodies) and shares its
//! rank keys, so the kept bodies are, in order, exactly its answer (a property test checks it);
//! the reasons are what operators ask about when a head streams from an unexpected body.

use crate::node::{CostTier, Node, NodeStatus, Role, UnixMillis};
use crate::selection::{
    Head, Observations, Policy, SelectionSettings, cross_venue_key, fresh_sample, quickroute_key,
};

/// Why a node of the head's district is not in the answer; the first that applies, in this
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeftOut {
    /// The node does not have the body role (a head or a worker only).
    NotABody,
    /// No heartbeat within the heartbeat timeout.
    Offline,
    /// An operator drained it.
    Drained,
    /// Another organisation owns it and the head's owner is not in its `allowed_orgs`.
    OtherOwner,
    /// The head named it in `unreachable=` for this answer.
    NamedUnreachable,
    /// The head reported it unreachable on both paths within the memory's window
    /// (`learning`); left out while anything else is left.
    LearnedUnreachable,
    /// Usable, but quickroute (the head's venue and owner) has a body, and the gate keeps
    /// everything else out.
    QuickrouteOpen,
}

impl LeftOut {
    /// The wire word for the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            LeftOut::NotABody => "not_a_body",
            LeftOut::Offline => "offline",
            LeftOut::Drained => "drained",
            LeftOut::OtherOwner => "other_owner",
            LeftOut::NamedUnreachable => "named_unreachable",
            LeftOut::LearnedUnreachable => "learned_unreachable",
            LeftOut::QuickrouteOpen => "quickroute_open",
        }
    }
}

/// One key a kept body was ranked on; a kept body's keys come in the order they are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankKey {
    /// The head's fresh measured connect time and how old it is.
    Latency {
        /// Connect time in milliseconds.
        rtt_ms: u32,
        /// Age of the measurement in milliseconds.
        age_ms: i64,
    },
    /// No fresh measurement: ranked after every measured body.
    Unmeasured,
    /// Whether the head's own organisation owns it (own before shared).
    Own(bool),
    /// Cost tier (owned < shared < leased < marketplace).
    Cost(CostTier),
    /// Idle bodies first.
    Idle(bool),
    /// More VRAM first (unknown counts as 0).
    VramMb(u64),
}

/// The verdict on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// In the answer at `rank` (1 = best), ranked on `keys` (the node id breaks the last tie).
    Kept {
        /// Position in the answer, from 1.
        rank: usize,
        /// The keys compared, in order.
        keys: Vec<RankKey>,
    },
    /// Not in the answer.
    LeftOut(LeftOut),
}

/// One node of the head's district and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Considered<'a> {
    /// The node.
    pub node: &'a Node,
    /// Whether it is in the head's venue.
    pub same_venue: bool,
    /// Kept (with rank and keys) or left out (with the reason).
    pub verdict: Verdict,
    /// Kept, and the head last reached it over WireGuard only (set by `learning`).
    pub wg_only: bool,
}

/// The trace of one selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation<'a> {
    /// The rule that produced the answer, as `select_bodies` reports it.
    pub policy: Policy,
    /// Every node of the head's district: kept ones first in rank order, then the left-out ones
    /// by id.
    pub considered: Vec<Considered<'a>>,
}

/// The reason `node` can never be in `head`'s answer, whatever the gate decides.
fn disqualified(
    head: &Head<'_>,
    node: &Node,
    now: UnixMillis,
    settings: &SelectionSettings,
    observations: &Observations<'_>,
) -> Option<LeftOut> {
    if !node.roles.contains(Role::Body) {
        Some(LeftOut::NotABody)
    } else if node.status(now, settings.heartbeat_timeout_ms) != NodeStatus::Online {
        Some(LeftOut::Offline)
    } else if node.drained {
        Some(LeftOut::Drained)
    } else if !node.usable_by(head.owner) {
        Some(LeftOut::OtherOwner)
    } else if observations
        .unreachable
        .is_some_and(|unreachable| unreachable.contains(&node.id))
    {
        Some(LeftOut::NamedUnreachable)
    } else {
        None
    }
}

/// Explains `head`'s selection over `bodies` (nodes outside the head's district are not
/// considered): the verdict on each, with the same policy and the same kept bodies, in the same
/// order, as [`select_bodies`](crate::selection::select_bodies) given the same arguments.
pub fn explain_selection<'a>(
    head: &Head<'_>,
    bodies: impl IntoIterator<Item = &'a Node>,
    now: UnixMillis,
    settings: &SelectionSettings,
    observations: &Observations<'_>,
) -> Explanation<'a> {
    let mut usable: Vec<&'a Node> = Vec::new();
    let mut left_out: Vec<(&'a Node, LeftOut)> = Vec::new();
    for node in bodies {
        if node.district != head.district {
            continue;
        }
        match disqualified(head, node, now, settings, observations) {
            Some(reason) => left_out.push((node, reason)),
            None => usable.push(node),
        }
    }
    let in_quickroute = |node: &Node| node.venue == head.venue && node.owner == head.owner;
    let gate_closed = usable.iter().any(|node| in_quickroute(node));
    let mut kept: Vec<&'a Node> = Vec::new();
    for node in usable {
        if gate_closed && !in_quickroute(node) {
            left_out.push((node, LeftOut::QuickrouteOpen));
        } else {
            kept.push(node);
        }
    }
    let policy = if kept.is_empty() {
        Policy::None
    } else if gate_closed {
        Policy::Quickroute
    } else {
        Policy::CrossVenue
    };
    let sample_of = |node: &Node| fresh_sample(node, now, settings, observations);
    if gate_closed {
        kept.sort_unstable_by(|a, b| quickroute_key(a).cmp(&quickroute_key(b)));
    } else {
        kept.sort_unstable_by(|a, b| {
            let rtt = |node: &Node| sample_of(node).map(|sample| sample.rtt_ms);
            cross_venue_key(head, a, rtt(a)).cmp(&cross_venue_key(head, b, rtt(b)))
        });
    }
    let mut considered: Vec<Considered<'a>> = kept
        .into_iter()
        .enumerate()
        .map(|(index, node)| {
            let mut keys = Vec::new();
            if !gate_closed {
                keys.push(match sample_of(node) {
                    Some(sample) => RankKey::Latency {
                        rtt_ms: sample.rtt_ms,
                        age_ms: now.saturating_sub(sample.measured_at),
                    },
                    None => RankKey::Unmeasured,
                });
                keys.push(RankKey::Own(node.owner == head.owner));
                keys.push(RankKey::Cost(node.cost_tier));
            }
            keys.push(RankKey::Idle(node.idle));
            keys.push(RankKey::VramMb(node.vram_mb.unwrap_or(0)));
            Considered {
                node,
                same_venue: node.venue == head.venue,
                verdict: Verdict::Kept {
                    rank: index + 1,
                    keys,
                },
                wg_only: false,
            }
        })
        .collect();
    // By id, so a trace reads the same whichever pass left a node out.
    left_out.sort_unstable_by(|a, b| a.0.id.cmp(&b.0.id));
    considered.extend(left_out.into_iter().map(|(node, reason)| Considered {
        node,
        same_venue: node.venue == head.venue,
        verdict: Verdict::LeftOut(reason),
        wg_only: false,
    }));
    Explanation { policy, considered }
}

#[cfg(test)]
mod tests;
