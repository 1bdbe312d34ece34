//! Selection that learns from its heads: what each head reported about each body's two paths
//! (`unreachable=`, `measured=`), remembered per (head, body, path), and what that changes in the
//! head's later answers.
//!
//! - A body the head reached over WireGuard only (its LAN probe, which comes first, failed) is
//!   marked `wg_only` for that head while its sample is fresh; it is ranked by that WireGuard
//!   figure, which is the sample the head reported.
//! - A body the head could reach on neither path is left out of that head's answers for
//!   `unreachable_for_ms` (60 s by default), unless nothing else is left: then the answer is the
//!   one without the memory, so a head is never starved by an old failure.
//!
//! A second discovery after a failure then probes only what can work. Pure: time is passed in;
//! the server keeps one [`HeadMemory`] per replica, bounded by `max_entries`.

use std::collections::{HashMap, HashSet};

use crate::explain::{Explanation, LeftOut, Verdict, explain_selection};
use crate::node::{Node, Transport, UnixMillis};
use crate::selection::{Head, Observations, Policy, Selection, SelectionSettings, select_bodies};

/// Knobs of the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearningSettings {
    /// A body unreachable on both paths is left out of the head's answers this long.
    pub unreachable_for_ms: i64,
    /// A WireGuard-only mark lasts as long as a latency sample is fresh.
    pub wg_only_for_ms: i64,
    /// At most this many (head, body) pairs are remembered; past it the oldest go first.
    pub max_entries: usize,
}

impl Default for LearningSettings {
    fn default() -> Self {
        LearningSettings {
            unreachable_for_ms: 60_000,
            wg_only_for_ms: SelectionSettings::default().latency_max_age_ms,
            max_entries: 100_000,
        }
    }
}

/// The last thing a head said about one path to a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathReport {
    Reached(UnixMillis),
    Failed(UnixMillis),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BodyPaths {
    lan: Option<PathReport>,
    wireguard: Option<PathReport>,
    updated_at: UnixMillis,
}

impl BodyPaths {
    fn left_out(&self, now: UnixMillis, settings: &LearningSettings) -> bool {
        match (self.lan, self.wireguard) {
            (Some(PathReport::Failed(lan)), Some(PathReport::Failed(wireguard))) => {
                now < lan
                    .min(wireguard)
                    .saturating_add(settings.unreachable_for_ms)
            }
            _ => false,
        }
    }

    fn wg_only(&self, now: UnixMillis, settings: &LearningSettings) -> bool {
        match (self.lan, self.wireguard) {
            (Some(PathReport::Failed(_)), Some(PathReport::Reached(at))) => {
                now.saturating_sub(at) <= settings.wg_only_for_ms
            }
            _ => false,
        }
    }

    /// Past this, neither mark can hold any more: the entry may go.
    fn expired(&self, now: UnixMillis, settings: &LearningSettings) -> bool {
        !self.left_out(now, settings) && !self.wg_only(now, settings)
    }
}

/// What one request of a head reported: the bodies it named unreachable and every (body, path)
/// it measured, in the order given.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadReport<'a> {
    /// `unreachable=`: bodies that failed on both paths.
    pub unreachable: &'a [String],
    /// `measured=`: each (body, path) that answered.
    pub reached: &'a [(String, Transport)],
}

/// What the memory says about one head's bodies now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadView {
    /// Bodies unreachable on both paths, still within `unreachable_for_ms`.
    pub left_out: HashSet<String>,
    /// Bodies reached over WireGuard only, still fresh.
    pub wg_only: HashSet<String>,
}

/// The per-replica memory of what heads reported, bounded.
#[derive(Debug, Clone, Default)]
pub struct HeadMemory {
    settings: LearningSettings,
    heads: HashMap<String, HashMap<String, BodyPaths>>,
    entries: usize,
}

impl HeadMemory {
    /// An empty memory with these settings.
    pub fn new(settings: LearningSettings) -> HeadMemory {
        HeadMemory {
            settings,
            heads: HashMap::new(),
            entries: 0,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> LearningSettings {
        self.settings
    }

    /// How many (head, body) pairs are remembered.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Takes in one request's report. A body measured on any path is reachable (a WireGuard
    /// answer alone means the LAN probe, which comes first, did not answer); a body named
    /// unreachable and not measured failed on both paths.
    pub fn record(&mut self, head_id: &str, report: HeadReport<'_>, now: UnixMillis) {
        let mut reached: HashMap<&str, (bool, bool)> = HashMap::new();
        for (body_id, transport) in report.reached {
            let paths = reached.entry(body_id.as_str()).or_default();
            match transport {
                Transport::Lan => paths.0 = true,
                Transport::Wireguard => paths.1 = true,
            }
        }
        for (body_id, (lan, wireguard)) in &reached {
            self.update(head_id, body_id, now, |paths| {
                if *lan {
                    paths.lan = Some(PathReport::Reached(now));
                } else {
                    paths.lan = Some(PathReport::Failed(now));
                }
                if *wireguard {
                    paths.wireguard = Some(PathReport::Reached(now));
                }
            });
        }
        for body_id in report.unreachable {
            if reached.contains_key(body_id.as_str()) {
                continue;
            }
            self.update(head_id, body_id, now, |paths| {
                paths.lan = Some(PathReport::Failed(now));
                paths.wireguard = Some(PathReport::Failed(now));
            });
        }
    }

    fn update(
        &mut self,
        head_id: &str,
        body_id: &str,
        now: UnixMillis,
        change: impl FnOnce(&mut BodyPaths),
    ) {
        let known = self
            .heads
            .get(head_id)
            .is_some_and(|bodies| bodies.contains_key(body_id));
        if !known && self.entries >= self.settings.max_entries {
            self.make_room(now);
            if self.entries >= self.settings.max_entries {
                return;
            }
        }
        let bodies = self.heads.entry(head_id.to_owned()).or_default();
        let paths = bodies.entry(body_id.to_owned()).or_insert_with(|| {
            self.entries += 1;
            BodyPaths::default()
        });
        change(paths);
        paths.updated_at = now;
    }

    /// Drops every expired entry; if none was, the least recently updated one.
    fn make_room(&mut self, now: UnixMillis) {
        let settings = self.settings;
        let before = self.entries;
        for bodies in self.heads.values_mut() {
            bodies.retain(|_, paths| !paths.expired(now, &settings));
        }
        self.heads.retain(|_, bodies| !bodies.is_empty());
        self.entries = self.heads.values().map(HashMap::len).sum();
        if self.entries < before || self.entries == 0 {
            return;
        }
        let oldest = self
            .heads
            .iter()
            .flat_map(|(head, bodies)| {
                bodies
                    .iter()
                    .map(move |(body, paths)| (paths.updated_at, head, body))
            })
            .min()
            .map(|(_, head, body)| (head.clone(), body.clone()));
        if let Some((head, body)) = oldest
            && let Some(bodies) = self.heads.get_mut(&head)
        {
            bodies.remove(&body);
            self.entries -= 1;
            if bodies.is_empty() {
                self.heads.remove(&head);
            }
        }
    }

    /// What is remembered about `head_id`'s bodies at `now`.
    pub fn view(&self, head_id: &str, now: UnixMillis) -> HeadView {
        let mut view = HeadView::default();
        for (body_id, paths) in self.heads.get(head_id).into_iter().flatten() {
            if paths.left_out(now, &self.settings) {
                view.left_out.insert(body_id.clone());
            }
            if paths.wg_only(now, &self.settings) {
                view.wg_only.insert(body_id.clone());
            }
        }
        view
    }
}

/// The unreachable set one answer is made with: the request's own names plus the remembered ones,
/// or, when that leaves nothing, the request's names alone (an old failure never starves a head).
fn effective_unreachable<'a>(
    head: &Head<'_>,
    bodies: &[&'a Node],
    now: UnixMillis,
    settings: &SelectionSettings,
    observations: &Observations<'_>,
    view: &HeadView,
) -> (Option<HashSet<String>>, Selection<'a>) {
    let plain = || select_bodies(head, bodies.iter().copied(), now, settings, observations);
    if view.left_out.is_empty() {
        return (None, plain());
    }
    let mut combined: HashSet<String> = view.left_out.clone();
    if let Some(named) = observations.unreachable {
        combined.extend(named.iter().cloned());
    }
    let with_memory = Observations {
        unreachable: Some(&combined),
        ..*observations
    };
    let selection = select_bodies(head, bodies.iter().copied(), now, settings, &with_memory);
    if selection.policy == Policy::None {
        return (None, plain());
    }
    (Some(combined), selection)
}

/// `select_bodies` with the head's memory: remembered-unreachable bodies left out unless nothing
/// else is left, and `wg_only` set on the bodies the head reached over WireGuard only.
pub fn select_learning<'a>(
    head: &Head<'_>,
    bodies: &[&'a Node],
    now: UnixMillis,
    settings: &SelectionSettings,
    observations: &Observations<'_>,
    view: &HeadView,
) -> Selection<'a> {
    let (_, mut selection) = effective_unreachable(head, bodies, now, settings, observations, view);
    for candidate in &mut selection.bodies {
        candidate.wg_only = view.wg_only.contains(&candidate.node.id);
    }
    selection
}

/// The explain trace of [`select_learning`]'s answer: kept bodies in its order (with `wg_only`),
/// and the bodies the memory left out with the reason `learned_unreachable`.
pub fn explain_learning<'a>(
    head: &Head<'_>,
    bodies: &[&'a Node],
    now: UnixMillis,
    settings: &SelectionSettings,
    observations: &Observations<'_>,
    view: &HeadView,
) -> Explanation<'a> {
    let (combined, _) = effective_unreachable(head, bodies, now, settings, observations, view);
    let with_memory = Observations {
        unreachable: combined.as_ref().or(observations.unreachable),
        ..*observations
    };
    let mut explanation =
        explain_selection(head, bodies.iter().copied(), now, settings, &with_memory);
    let named = |id: &str| observations.unreachable.is_some_and(|set| set.contains(id));
    for considered in &mut explanation.considered {
        match considered.verdict {
            Verdict::LeftOut(LeftOut::NamedUnreachable) if !named(&considered.node.id) => {
                considered.verdict = Verdict::LeftOut(LeftOut::LearnedUnreachable);
            }
            Verdict::Kept { .. } => {
                considered.wg_only = view.wg_only.contains(&considered.node.id);
            }
            Verdict::LeftOut(_) => {}
        }
    }
    // Left-out entries stay sorted by id: only reasons changed.
    explanation
}

#[cfg(test)]
mod tests;
