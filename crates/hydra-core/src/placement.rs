//! Placement of relay sessions on workers: the least-loaded healthy worker that has room.
//!
//! A worker is a candidate when its last heartbeat is younger than the heartbeat timeout and it
//! is not drained; among candidates that are not full, the lowest load ratio (active / max) wins.
//! The error texts are the field's own words (`relay.md`), which operators grep for.

use std::cmp::Ordering;
use std::fmt;

use crate::node::UnixMillis;

/// A worker's identifier as placement returns it: the node id, borrowed from the input.
pub type WorkerId<'a> = &'a str;

/// What placement needs to know of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLoad<'a> {
    /// The worker's node id.
    pub id: &'a str,
    /// Time of its last heartbeat, if any.
    pub last_heartbeat: Option<UnixMillis>,
    /// Drained workers take no new session.
    pub drained: bool,
    /// Sessions it runs now.
    pub active_sessions: u32,
    /// Sessions it may run at most (`sessions.max`); 0 means it takes none.
    pub max_sessions: u32,
}

impl WorkerLoad<'_> {
    /// Healthy: not drained and heard from within `heartbeat_timeout_ms` (same rule as
    /// [`crate::Node::status`]).
    pub fn is_healthy(&self, now: UnixMillis, settings: &PlacementSettings) -> bool {
        !self.drained
            && self
                .last_heartbeat
                .is_some_and(|at| now.saturating_sub(at) < settings.heartbeat_timeout_ms)
    }

    /// Full: no free slot left.
    pub fn is_full(&self) -> bool {
        self.active_sessions >= self.max_sessions
    }

    /// Free slots (0 when full).
    pub fn free_slots(&self) -> u32 {
        self.max_sessions.saturating_sub(self.active_sessions)
    }

    /// The load ratio `active / max` for display (1.0 when it takes no session); placement
    /// compares loads exactly with [`compare_load`], never with this float.
    pub fn load_ratio(&self) -> f64 {
        if self.max_sessions == 0 {
            1.0
        } else {
            f64::from(self.active_sessions) / f64::from(self.max_sessions)
        }
    }
}

/// Knobs of placement that the operator sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementSettings {
    /// A worker is healthy while its last heartbeat is younger than this (`heartbeat_timeout`).
    pub heartbeat_timeout_ms: i64,
}

impl Default for PlacementSettings {
    /// The field's default: 60 s.
    fn default() -> Self {
        PlacementSettings {
            heartbeat_timeout_ms: 60_000,
        }
    }
}

/// Why no worker was chosen; `Display` gives the field's words exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementError {
    /// No worker is heard from recently, not drained and below its maximum: the field's one
    /// answer when the fleet is full (a worker asked directly says `max sessions reached`).
    NoHealthyWorkers,
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlacementError::NoHealthyWorkers => "no healthy workers available",
        })
    }
}

impl std::error::Error for PlacementError {}

/// Compares the load ratios `active / max` of two workers exactly (no floating point);
/// a worker with `max == 0` counts as infinitely loaded.
pub fn compare_load(a: &WorkerLoad<'_>, b: &WorkerLoad<'_>) -> Ordering {
    compare_ratio(
        (a.active_sessions, a.max_sessions),
        (b.active_sessions, b.max_sessions),
    )
}

/// Compares two load ratios given as `(load, max)` exactly (no floating point); `max == 0`
/// counts as infinitely loaded. Shared by placement and the mesh's best-peer rule.
pub fn compare_ratio((load_a, max_a): (u32, u32), (load_b, max_b): (u32, u32)) -> Ordering {
    match (max_a, max_b) {
        (0, 0) => Ordering::Equal,
        (0, _) => Ordering::Greater,
        (_, 0) => Ordering::Less,
        (max_a, max_b) => {
            let left = u64::from(load_a) * u64::from(max_b);
            let right = u64::from(load_b) * u64::from(max_a);
            left.cmp(&right)
        }
    }
}

/// The worker a new session goes to: healthy (see [`WorkerLoad::is_healthy`]), not full, with
/// the lowest load ratio. Ties go to the worker with more free slots, then to the smallest id, so
/// the same input always gives the same answer whatever its order.
///
/// Errors: [`PlacementError::NoHealthyWorkers`] when no worker is healthy or every healthy one
/// is full (the field's words for both).
pub fn least_loaded_worker<'a>(
    workers: &[WorkerLoad<'a>],
    now: UnixMillis,
    settings: &PlacementSettings,
) -> Result<WorkerId<'a>, PlacementError> {
    let mut best: Option<&WorkerLoad<'a>> = None;
    for worker in workers {
        if !worker.is_healthy(now, settings) || worker.is_full() {
            continue;
        }
        best = match best {
            Some(current) if placement_order(current, worker) != Ordering::Greater => Some(current),
            _ => Some(worker),
        };
    }
    match best {
        Some(worker) => Ok(worker.id),
        None => Err(PlacementError::NoHealthyWorkers),
    }
}

/// The total order placement picks the minimum of: load ratio, then free slots descending,
/// then id.
fn placement_order(a: &WorkerLoad<'_>, b: &WorkerLoad<'_>) -> Ordering {
    compare_load(a, b)
        .then_with(|| b.free_slots().cmp(&a.free_slots()))
        .then_with(|| a.id.cmp(b.id))
}

#[cfg(test)]
mod naive;
#[cfg(test)]
mod tests;
