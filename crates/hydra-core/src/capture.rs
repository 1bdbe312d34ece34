//! Fan-out captures: how a segment ends, the capture's worst-case status and rolled-up reason
//! ([`aggregate_status`]), each writer's line budget ([`SegmentBudget`]) and the capture
//! orchestrator ([`Orchestrator`]) as a sans-IO state machine.
//!
//! A capture records the monitor feed of one or more nodes; each node's part is a segment that
//! only that node's writer updates. Only the orchestrator finalises the capture, so writers
//! never race on it. The orchestrator takes writers' events and time in and gives actions out
//! (open a writer, stop a writer, finalise); the server runs the I/O around it.

use std::collections::{BTreeMap, VecDeque};

/// Milliseconds on the caller's clock (unix ms on the server); only differences matter here.
pub type Millis = i64;

/// Where a segment (or the whole capture) stands; ordered from best to worst once ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CaptureStatus {
    /// Still recording.
    Running,
    /// Ended as asked: stopped, or its duration elapsed.
    Completed,
    /// Ended with lines missing: a line or byte limit cut it, or lines were dropped.
    Truncated,
    /// The node's feed could not be opened or broke.
    Failed,
}

impl CaptureStatus {
    /// The word used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureStatus::Running => "running",
            CaptureStatus::Completed => "completed",
            CaptureStatus::Truncated => "truncated",
            CaptureStatus::Failed => "failed",
        }
    }

    /// Parses [`CaptureStatus::as_str`]'s word.
    pub fn parse(word: &str) -> Option<CaptureStatus> {
        [
            CaptureStatus::Running,
            CaptureStatus::Completed,
            CaptureStatus::Truncated,
            CaptureStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == word)
    }
}

/// Why a segment (or the capture) ended; ordered from least to most severe, which decides the
/// rolled-up reason among segments of the same status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TerminationReason {
    /// An operator stopped it.
    Stopped,
    /// Its duration elapsed, or its line or byte limit was reached.
    LimitReached,
    /// The agent dropped lines for this reader (it fell behind).
    LinesDropped,
    /// The node left the fleet mid-capture.
    NodeLeft,
    /// The node's monitor feed could not be opened.
    MonitorOpenFailed,
    /// The node's monitor feed broke mid-capture.
    SourceError,
}

impl TerminationReason {
    /// Every reason, least severe first.
    pub const ALL: [TerminationReason; 6] = [
        TerminationReason::Stopped,
        TerminationReason::LimitReached,
        TerminationReason::LinesDropped,
        TerminationReason::NodeLeft,
        TerminationReason::MonitorOpenFailed,
        TerminationReason::SourceError,
    ];

    /// The word used on the wire and in the store (the field's words).
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::Stopped => "stopped",
            TerminationReason::LimitReached => "limit_reached",
            TerminationReason::LinesDropped => "lines_dropped",
            TerminationReason::NodeLeft => "node_left",
            TerminationReason::MonitorOpenFailed => "monitor_open_failed",
            TerminationReason::SourceError => "source_error",
        }
    }

    /// Parses [`TerminationReason::as_str`]'s word.
    pub fn parse(word: &str) -> Option<TerminationReason> {
        TerminationReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == word)
    }
}

/// How a segment ended: its final status and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentEnd {
    /// Completed, truncated or failed (never running).
    pub status: CaptureStatus,
    /// Why.
    pub reason: TerminationReason,
}

impl SegmentEnd {
    /// The status a segment ending for `reason` gets: stopped or timed out is complete; a line
    /// or byte limit (`cut` true) or dropped lines leave it truncated; a feed that broke, could
    /// not open or whose node left fails it.
    pub fn for_reason(reason: TerminationReason, cut: bool) -> SegmentEnd {
        let status = match reason {
            TerminationReason::Stopped => CaptureStatus::Completed,
            TerminationReason::LimitReached if cut => CaptureStatus::Truncated,
            TerminationReason::LimitReached => CaptureStatus::Completed,
            TerminationReason::LinesDropped => CaptureStatus::Truncated,
            TerminationReason::NodeLeft
            | TerminationReason::MonitorOpenFailed
            | TerminationReason::SourceError => CaptureStatus::Failed,
        };
        SegmentEnd { status, reason }
    }
}

/// The capture's status from its segments' (status, reason): running while any segment runs;
/// otherwise the worst case (any failed: failed; else any truncated: truncated; else completed),
/// with the most severe reason among the segments of that status. A capture without segments
/// captured nothing: failed, `monitor_open_failed`.
pub fn aggregate_status(
    segments: &[(CaptureStatus, Option<TerminationReason>)],
) -> (CaptureStatus, Option<TerminationReason>) {
    if segments.is_empty() {
        return (
            CaptureStatus::Failed,
            Some(TerminationReason::MonitorOpenFailed),
        );
    }
    if segments
        .iter()
        .any(|(status, _)| *status == CaptureStatus::Running)
    {
        return (CaptureStatus::Running, None);
    }
    let worst = segments
        .iter()
        .map(|(status, _)| *status)
        .max()
        .unwrap_or(CaptureStatus::Failed);
    let reason = segments
        .iter()
        .filter(|(status, _)| *status == worst)
        .filter_map(|(_, reason)| *reason)
        .max();
    (worst, reason)
}

/// A capture's limits; `None` is unlimited. Line and byte limits apply to each node's segment,
/// so one busy node cannot use up the others' share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptureLimits {
    /// How long the capture runs.
    pub duration_ms: Option<Millis>,
    /// Most lines one segment keeps.
    pub max_lines: Option<u64>,
    /// Most bytes one segment keeps.
    pub max_bytes: Option<u64>,
}

/// What a writer does with the next line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Keep it and go on.
    Keep,
    /// Keep it; the segment is now full: end it (limit reached, truncated).
    KeepAndEnd,
    /// Do not keep it; the segment is full: end it (limit reached, truncated).
    Refuse,
}

/// One segment's use of the line and byte limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentBudget {
    limits: CaptureLimits,
    lines: u64,
    bytes: u64,
}

impl SegmentBudget {
    /// A segment that has kept `lines` lines of `bytes` bytes so far (0 and 0 when new).
    pub fn new(limits: CaptureLimits, lines: u64, bytes: u64) -> SegmentBudget {
        SegmentBudget {
            limits,
            lines,
            bytes,
        }
    }

    /// Whether a line of `line_bytes` bytes fits; counts it when kept. A line never splits: one
    /// that would pass `max_bytes` is refused.
    pub fn admit(&mut self, line_bytes: u64) -> Admit {
        let lines_after = self.lines.saturating_add(1);
        let bytes_after = self.bytes.saturating_add(line_bytes);
        let over_lines = self.limits.max_lines.is_some_and(|max| lines_after > max);
        let over_bytes = self.limits.max_bytes.is_some_and(|max| bytes_after > max);
        if over_lines || over_bytes {
            return Admit::Refuse;
        }
        self.lines = lines_after;
        self.bytes = bytes_after;
        let full_lines = self.limits.max_lines.is_some_and(|max| lines_after >= max);
        let full_bytes = self.limits.max_bytes.is_some_and(|max| bytes_after >= max);
        if full_lines || full_bytes {
            Admit::KeepAndEnd
        } else {
            Admit::Keep
        }
    }
}

/// What happened to a writer, as the orchestrator hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterEvent {
    /// The writer ended and stored its segment's end.
    Ended {
        /// Its node.
        node_id: String,
        /// How it ended.
        end: SegmentEnd,
    },
}

/// What the orchestrator wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureAction {
    /// Start the writer of `node_id`'s segment.
    OpenWriter {
        /// The node.
        node_id: String,
    },
    /// Ask the writer of `node_id` to end its segment for `reason`.
    StopWriter {
        /// The node.
        node_id: String,
        /// Why.
        reason: TerminationReason,
    },
    /// Every segment has ended: store the capture's final status (once).
    Finalise {
        /// The worst case of the segments.
        status: CaptureStatus,
        /// The rolled-up reason.
        reason: Option<TerminationReason>,
        /// When.
        ended_at: Millis,
    },
}

/// A writer as the orchestrator tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    Running,
    Stopping,
    Ended(SegmentEnd),
}

/// The capture orchestrator: opens one writer per node, stops them all on a stop request or when
/// the duration elapses, and finalises once every writer has ended. A writer that ends early
/// (its feed broke) ends only its own segment; the others go on.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    writers: BTreeMap<String, WriterState>,
    deadline: Option<Millis>,
    actions: VecDeque<CaptureAction>,
    finalised: bool,
}

impl Orchestrator {
    /// A capture of `node_ids` started at `now`; its first actions open every writer.
    pub fn new(node_ids: &[String], limits: CaptureLimits, now: Millis) -> Orchestrator {
        let writers: BTreeMap<String, WriterState> = node_ids
            .iter()
            .map(|node_id| (node_id.clone(), WriterState::Running))
            .collect();
        let actions = writers
            .keys()
            .map(|node_id| CaptureAction::OpenWriter {
                node_id: node_id.clone(),
            })
            .collect();
        let mut orchestrator = Orchestrator {
            writers,
            deadline: limits
                .duration_ms
                .map(|duration| now.saturating_add(duration)),
            actions,
            finalised: false,
        };
        orchestrator.finalise_if_done(now);
        orchestrator
    }

    /// A capture taken over mid-way (a restarted server, a new master) at `now`: the writers
    /// of the segments still running are opened again, the segments that ended keep their end,
    /// and the duration counts from `started_at` (when the capture began), so a capture whose
    /// time ran out while no one drove it is stopped at the first timeout. Finalises at once
    /// when no segment runs any more.
    pub fn resume(
        running: &[String],
        ended: &[(String, SegmentEnd)],
        limits: CaptureLimits,
        started_at: Millis,
        now: Millis,
    ) -> Orchestrator {
        let mut writers: BTreeMap<String, WriterState> = ended
            .iter()
            .map(|(node_id, end)| (node_id.clone(), WriterState::Ended(*end)))
            .collect();
        for node_id in running {
            writers.insert(node_id.clone(), WriterState::Running);
        }
        let actions = writers
            .iter()
            .filter(|(_, state)| **state == WriterState::Running)
            .map(|(node_id, _)| CaptureAction::OpenWriter {
                node_id: node_id.clone(),
            })
            .collect();
        let mut orchestrator = Orchestrator {
            writers,
            deadline: limits
                .duration_ms
                .map(|duration| started_at.saturating_add(duration)),
            actions,
            finalised: false,
        };
        orchestrator.finalise_if_done(now);
        orchestrator
    }

    /// An operator asked to stop: every running writer is stopped (`stopped`).
    pub fn handle_stop(&mut self, _now: Millis) {
        self.stop_all(TerminationReason::Stopped);
    }

    /// A writer's event.
    pub fn handle_event(&mut self, event: WriterEvent, now: Millis) {
        match event {
            WriterEvent::Ended { node_id, end } => {
                if let Some(state) = self.writers.get_mut(&node_id) {
                    debug_assert!(end.status != CaptureStatus::Running);
                    *state = WriterState::Ended(end);
                }
            }
        }
        self.finalise_if_done(now);
    }

    /// The peer mesh declared `node_id` down (the control plane marked it unreachable): its
    /// writer, if still running, is stopped at once with `node_left` (its segment fails)
    /// instead of waiting for its feed to break; the others go on. A writer already stopping
    /// or ended keeps its end.
    pub fn handle_node_left(&mut self, node_id: &str, _now: Millis) {
        if let Some(state) = self.writers.get_mut(node_id)
            && *state == WriterState::Running
        {
            *state = WriterState::Stopping;
            self.actions.push_back(CaptureAction::StopWriter {
                node_id: node_id.to_owned(),
                reason: TerminationReason::NodeLeft,
            });
        }
    }

    /// Time passed: once the duration elapsed, every running writer is stopped
    /// (`limit_reached`).
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            self.deadline = None;
            self.stop_all(TerminationReason::LimitReached);
        }
    }

    /// When [`Orchestrator::handle_timeout`] wants to be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if self.finalised { None } else { self.deadline }
    }

    /// The next action to carry out, if any.
    pub fn poll_action(&mut self) -> Option<CaptureAction> {
        self.actions.pop_front()
    }

    /// Whether the capture has been finalised.
    pub fn is_finalised(&self) -> bool {
        self.finalised
    }

    fn stop_all(&mut self, reason: TerminationReason) {
        for (node_id, state) in &mut self.writers {
            if *state == WriterState::Running {
                *state = WriterState::Stopping;
                self.actions.push_back(CaptureAction::StopWriter {
                    node_id: node_id.clone(),
                    reason,
                });
            }
        }
    }

    fn finalise_if_done(&mut self, now: Millis) {
        if self.finalised {
            return;
        }
        let mut ends = Vec::with_capacity(self.writers.len());
        for state in self.writers.values() {
            match state {
                WriterState::Ended(end) => ends.push((end.status, Some(end.reason))),
                WriterState::Running | WriterState::Stopping => return,
            }
        }
        let (status, reason) = aggregate_status(&ends);
        self.finalised = true;
        self.deadline = None;
        self.actions.push_back(CaptureAction::Finalise {
            status,
            reason,
            ended_at: now,
        });
    }
}

/// The levels of a monitor feed, most severe first.
pub const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// A level's severity rank: 0 for `error` up to 4 for `trace`; `None` for an unknown word.
pub fn level_rank(word: &str) -> Option<usize> {
    LEVELS
        .iter()
        .position(|level| level.eq_ignore_ascii_case(word))
}

/// What a monitor feed keeps (a reader's `level`, `session` and `contains`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedFilter {
    /// Least severe level kept, as a [`level_rank`]; lines without a level pass.
    pub level: Option<usize>,
    /// Only lines about this session.
    pub session: Option<String>,
    /// Only lines whose message contains this text.
    pub contains: Option<String>,
}

impl FeedFilter {
    /// Whether a line of `level`, about `session`, saying `message` passes the filter.
    pub fn keeps(&self, level: Option<&str>, session: Option<&str>, message: &str) -> bool {
        let level_ok = match (self.level, level.and_then(level_rank)) {
            (Some(least), Some(rank)) => rank <= least,
            _ => true,
        };
        let session_ok = self
            .session
            .as_deref()
            .is_none_or(|wanted| session == Some(wanted));
        let text_ok = self
            .contains
            .as_deref()
            .is_none_or(|text| message.contains(text));
        level_ok && session_ok && text_ok
    }
}

#[cfg(test)]
mod tests;
