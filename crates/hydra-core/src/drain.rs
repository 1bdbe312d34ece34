//! A session-aware drain (`hydra nodes drain W --wait`): how long a drained worker's running
//! sessions are expected to last, judged from their ages alone, and what the follower does
//! next: wait, tell the browsers their stream ends soon, or end the sessions. Time is passed in.

use crate::node::UnixMillis;

/// Least time a running session is still expected to take: a session that just started is not
/// about to end.
pub const MIN_REMAINING_MS: i64 = 60_000;

/// When the drain is expected to be over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainEstimate {
    /// Sessions still running.
    pub sessions_left: usize,
    /// When the last of them is expected to end (`now` when none is left); never after the
    /// deadline, when there is one.
    pub expected_end: UnixMillis,
    /// Whether the deadline, not the sessions, sets `expected_end`.
    pub by_deadline: bool,
}

/// The estimate from the sessions' start times: with nothing known of a session's length but
/// its age, it is expected to run as long again as it already has (the median of the remaining
/// life under Gott's principle), at least [`MIN_REMAINING_MS`]; the drain ends when the last
/// session does, or at the deadline if that comes first. A start in the future counts as now.
pub fn drain_estimate(
    now: UnixMillis,
    started_at: &[UnixMillis],
    deadline: Option<UnixMillis>,
) -> DrainEstimate {
    let natural_end = started_at
        .iter()
        .map(|&start| {
            let age = now.saturating_sub(start).max(0);
            now.saturating_add(age.max(MIN_REMAINING_MS))
        })
        .max()
        .unwrap_or(now);
    match deadline {
        Some(deadline) if !started_at.is_empty() && deadline.max(now) < natural_end => {
            DrainEstimate {
                sessions_left: started_at.len(),
                expected_end: deadline.max(now),
                by_deadline: true,
            }
        }
        _ => DrainEstimate {
            sessions_left: started_at.len(),
            expected_end: natural_end,
            by_deadline: false,
        },
    }
}

/// What the drain follower does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    /// No session is left: the drain is over.
    Done,
    /// Sessions run and the deadline (if any) has not come: look again later.
    Wait,
    /// The deadline came: tell each session's browser its stream ends in `notice_ms`.
    Notify,
    /// The notice was given `notice_ms` ago (or more): end the sessions left.
    End,
}

/// The follower's next step: `Done` with no session left, else `Wait` before the deadline,
/// `Notify` at it (once: `notified_at` is when the notice went out), and `End` once the notice
/// had its time.
pub fn drain_step(
    now: UnixMillis,
    sessions_left: usize,
    deadline: Option<UnixMillis>,
    notified_at: Option<UnixMillis>,
    notice_ms: i64,
) -> DrainStep {
    if sessions_left == 0 {
        return DrainStep::Done;
    }
    match (deadline, notified_at) {
        (None, _) => DrainStep::Wait,
        (Some(deadline), None) if now < deadline => DrainStep::Wait,
        (Some(_), None) => DrainStep::Notify,
        (Some(_), Some(at)) if now.saturating_sub(at) >= notice_ms => DrainStep::End,
        (Some(_), Some(_)) => DrainStep::Wait,
    }
}

#[cfg(test)]
mod tests;
