//! Body selection: which bodies a head may stream from, best first.
//!
//! Quickroute is a gate, not a sort key: when the head's own venue has a usable body of its owner,
//! nothing else is looked at. Only an empty quickroute opens the cross-venue fallback, ranked by
//! measured latency, then ownership, cost tier, idleness and VRAM. See `DESIGN.md` and the field
//! notes `body-selection.md`.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

use crate::node::{CostTier, Node, NodeStatus, Role, UnixMillis};

/// The head asking, reduced to what selection needs.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The head's district; selection never leaves it.
    pub district: &'a str,
    /// The head's venue.
    pub venue: &'a str,
    /// The head's owning organisation.
    pub owner: &'a str,
}

/// Knobs of the policy that the operator sets.
#[derive(Debug, Clone, Copy)]
pub struct SelectionSettings {
    /// A body is online while its last heartbeat is younger than this.
    pub heartbeat_timeout_ms: i64,
    /// A latency measurement older than this is ignored.
    pub latency_max_age_ms: i64,
}

impl Default for SelectionSettings {
    fn default() -> Self {
        SelectionSettings {
            heartbeat_timeout_ms: 60_000,
            latency_max_age_ms: 15 * 60_000,
        }
    }
}

/// The latest connect time a head measured to a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySample {
    /// TCP connect time in milliseconds.
    pub rtt_ms: u32,
    /// When it was measured.
    pub measured_at: UnixMillis,
}

/// What the head has told the server about the bodies it tried.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observations<'a> {
    /// Latest measured latency per body id.
    pub latency: Option<&'a HashMap<String, LatencySample>>,
    /// Bodies the head could not reach on either address; left out of this one answer.
    pub unreachable: Option<&'a HashSet<String>>,
}

/// Which rule produced the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Same district, venue and owner as the head.
    Quickroute,
    /// Quickroute was empty; same district, usable by the head's owner.
    CrossVenue,
    /// No `head_id`: the district and venue given in the query.
    StrictVenue,
    /// No candidate at all.
    None,
}

impl Policy {
    /// The wire word for the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Quickroute => "quickroute",
            Policy::CrossVenue => "cross_venue",
            Policy::StrictVenue => "strict_venue",
            Policy::None => "none",
        }
    }
}

/// One body in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The body.
    pub node: &'a Node,
    /// Whether it is in the head's venue.
    pub same_venue: bool,
    /// The latest fresh latency the head measured to it, if any.
    pub rtt_ms: Option<u32>,
    /// The head last reached it over WireGuard only (set by `learning::select_learning`).
    pub wg_only: bool,
}

/// The ordered answer to a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection<'a> {
    /// Which rule produced it.
    pub policy: Policy,
    /// Best first.
    pub bodies: Vec<Candidate<'a>>,
}

/// A body that can take work now: has the body role, is not drained and is online.
pub fn is_available(node: &Node, now: UnixMillis, settings: &SelectionSettings) -> bool {
    node.roles.contains(Role::Body)
        && !node.drained
        && node.status(now, settings.heartbeat_timeout_ms) == NodeStatus::Online
}

/// The bodies `head` may use, best first: quickroute when it has any, else the cross-venue
/// fallback, else `Policy::None` with no bodies.
///
/// Guarantees: every body returned is available (see [`is_available`]), in the head's district,
/// usable by the head's owner and not named unreachable; a quickroute answer holds only bodies of
/// the head's venue and owner.
pub fn select_bodies<'a>(
    head: &Head<'_>,
    bodies: impl IntoIterator<Item = &'a Node>,
    now: UnixMillis,
    settings: &SelectionSettings,
    observations: &Observations<'_>,
) -> Selection<'a> {
    let mut quickroute: Vec<&'a Node> = Vec::new();
    let mut cross_venue: Vec<&'a Node> = Vec::new();
    for node in bodies {
        if node.district != head.district {
            continue;
        }
        let in_quickroute = node.venue == head.venue && node.owner == head.owner;
        // Once quickroute has a body the fallback can never be the answer: the cheap string
        // comparisons above are all that a body outside quickroute costs from then on.
        if !in_quickroute && !quickroute.is_empty() {
            continue;
        }
        if !node.usable_by(head.owner)
            || !is_available(node, now, settings)
            || observations
                .unreachable
                .is_some_and(|unreachable| unreachable.contains(&node.id))
        {
            continue;
        }
        if in_quickroute {
            if quickroute.is_empty() {
                cross_venue.clear();
            }
            quickroute.push(node);
        } else {
            cross_venue.push(node);
        }
    }
    let rtt_of = |node: &Node| -> Option<u32> {
        fresh_sample(node, now, settings, observations).map(|sample| sample.rtt_ms)
    };
    if !quickroute.is_empty() {
        quickroute.sort_unstable_by(|a, b| quickroute_key(a).cmp(&quickroute_key(b)));
        let bodies = quickroute
            .into_iter()
            .map(|node| Candidate {
                node,
                same_venue: true,
                rtt_ms: rtt_of(node),
                wg_only: false,
            })
            .collect();
        return Selection {
            policy: Policy::Quickroute,
            bodies,
        };
    }
    if cross_venue.is_empty() {
        return Selection {
            policy: Policy::None,
            bodies: Vec::new(),
        };
    }
    let mut ranked: Vec<(CrossVenueKey<'a>, Candidate<'a>)> = cross_venue
        .into_iter()
        .map(|node| {
            let rtt_ms = rtt_of(node);
            let same_venue = node.venue == head.venue;
            let key = cross_venue_key(head, node, rtt_ms);
            (
                key,
                Candidate {
                    node,
                    same_venue,
                    rtt_ms,
                    wg_only: false,
                },
            )
        })
        .collect();
    ranked.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Selection {
        policy: Policy::CrossVenue,
        bodies: ranked.into_iter().map(|(_, candidate)| candidate).collect(),
    }
}

/// The head's latest measurement of `node`, when it is younger than `latency_max_age_ms`.
pub(crate) fn fresh_sample(
    node: &Node,
    now: UnixMillis,
    settings: &SelectionSettings,
    observations: &Observations<'_>,
) -> Option<LatencySample> {
    let sample = observations.latency?.get(&node.id)?;
    (now.saturating_sub(sample.measured_at) <= settings.latency_max_age_ms).then_some(*sample)
}

/// Idle first, then VRAM descending, then id so that ties have one answer.
pub(crate) fn quickroute_key(node: &Node) -> (bool, Reverse<u64>, &str) {
    (!node.idle, Reverse(node.vram_mb.unwrap_or(0)), &node.id)
}

/// The cross-venue rank of `node` for `head`, given its fresh latency (one definition, for
/// `select_bodies` and the explain trace).
pub(crate) fn cross_venue_key<'a>(
    head: &Head<'_>,
    node: &'a Node,
    rtt_ms: Option<u32>,
) -> CrossVenueKey<'a> {
    CrossVenueKey {
        unmeasured: rtt_ms.is_none(),
        rtt_ms: rtt_ms.unwrap_or(u32::MAX),
        foreign: node.owner != head.owner,
        cost_tier: node.cost_tier,
        busy: !node.idle,
        vram: Reverse(node.vram_mb.unwrap_or(0)),
        id: &node.id,
    }
}

/// Cross-venue order: measured latency first (known before unknown), then the head's own bodies
/// before bodies shared with it, cost tier, idle first, VRAM descending, id.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CrossVenueKey<'a> {
    unmeasured: bool,
    rtt_ms: u32,
    foreign: bool,
    cost_tier: CostTier,
    busy: bool,
    vram: Reverse<u64>,
    id: &'a str,
}

/// The strict-venue answer for old clients that send no `head_id`: available bodies of exactly
/// this district and venue, whoever owns them, idle first then VRAM descending.
pub fn strict_venue<'a>(
    district: &str,
    venue: &str,
    bodies: impl IntoIterator<Item = &'a Node>,
    now: UnixMillis,
    settings: &SelectionSettings,
) -> Selection<'a> {
    let mut chosen: Vec<&'a Node> = bodies
        .into_iter()
        .filter(|node| {
            node.district == district && node.venue == venue && is_available(node, now, settings)
        })
        .collect();
    chosen.sort_unstable_by(|a, b| quickroute_key(a).cmp(&quickroute_key(b)));
    let policy = if chosen.is_empty() {
        Policy::None
    } else {
        Policy::StrictVenue
    };
    Selection {
        policy,
        bodies: chosen
            .into_iter()
            .map(|node| Candidate {
                node,
                same_venue: true,
                rtt_ms: None,
                wg_only: false,
            })
            .collect(),
    }
}

#[cfg(test)]
pub(crate) mod naive;
#[cfg(test)]
pub(crate) mod tests;
