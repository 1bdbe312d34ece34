//! The naive body selection, written from the field's rules (`DESIGN.md`, "Body selection")
//! without any of `select_bodies`' helpers: clone every node, filter, sort. It is the oracle of
//! the selection property test and the baseline of the selection benchmark (which includes this
//! file with `#[path]`, so both judge against the same code).
//!
//! It uses only `Node`'s plain fields; `crate::node` and `crate::selection` resolve to
//! `hydra_core`'s modules in the benchmark, whose crate root re-exports them.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

use crate::node::{Node, Role};
use crate::selection::{Head, LatencySample, SelectionSettings};

/// What the naive selection answers: the policy word and `(body id, fresh rtt)` best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaiveAnswer {
    /// `quickroute`, `cross_venue` or `none`.
    pub policy: &'static str,
    /// Body ids, best first, each with the fresh latency the head measured, if any.
    pub bodies: Vec<(String, Option<u32>)>,
}

/// Selects for `head` by the field's rules, the slow and obvious way.
pub fn naive_select(
    head: &Head<'_>,
    nodes: &[Node],
    now: i64,
    settings: &SelectionSettings,
    latency: &HashMap<String, LatencySample>,
    unreachable: &HashSet<String>,
) -> NaiveAnswer {
    // A body can take work: it has the body role, is not drained, heartbeated within the
    // timeout, and the head did not say it could not reach it.
    let can_take_work = |node: &Node| {
        node.roles.contains(Role::Body)
            && !node.drained
            && node
                .last_heartbeat
                .is_some_and(|at| now - at < settings.heartbeat_timeout_ms)
            && !unreachable.contains(&node.id)
    };
    let fresh_rtt = |node: &Node| {
        latency
            .get(&node.id)
            .filter(|sample| now - sample.measured_at <= settings.latency_max_age_ms)
            .map(|sample| sample.rtt_ms)
    };
    let answer = |policy: &'static str, chosen: Vec<Node>| NaiveAnswer {
        policy,
        bodies: chosen
            .iter()
            .map(|node| (node.id.clone(), fresh_rtt(node)))
            .collect(),
    };

    // 1. Quickroute, a gate: the head's own district, venue and owner.
    let mut quickroute: Vec<Node> = nodes
        .iter()
        .filter(|node| {
            node.district == head.district
                && node.venue == head.venue
                && node.owner == head.owner
                && can_take_work(node)
        })
        .cloned()
        .collect();
    if !quickroute.is_empty() {
        quickroute.sort_by_key(|node| {
            (
                !node.idle,
                Reverse(node.vram_mb.unwrap_or(0)),
                node.id.clone(),
            )
        });
        return answer("quickroute", quickroute);
    }

    // 2. Cross-venue: the head's district, owned by the head's organisation or shared with it.
    let mut fallback: Vec<Node> = nodes
        .iter()
        .filter(|node| {
            node.district == head.district
                && (node.owner == head.owner
                    || node.allowed_orgs.iter().any(|org| org == head.owner))
                && can_take_work(node)
        })
        .cloned()
        .collect();
    if fallback.is_empty() {
        return answer("none", fallback);
    }
    fallback.sort_by_key(|node| {
        let rtt = fresh_rtt(node);
        (
            rtt.is_none(),
            rtt.unwrap_or(0),
            node.owner != head.owner,
            node.cost_tier,
            !node.idle,
            Reverse(node.vram_mb.unwrap_or(0)),
            node.id.clone(),
        )
    });
    answer("cross_venue", fallback)
}
