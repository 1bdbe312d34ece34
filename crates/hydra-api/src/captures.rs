//! Fan-out captures on the wire (issue 12, `fan-out-capture.md`): an agent's monitor feed
//! (`GET /api/v1/monitor` on the agent, NDJSON: one [`MonitorLine`] per line) and the server's
//! capture API (`/api/v1/captures`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a monitor line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MonitorKind {
    /// One of the agent's own log events.
    Log,
    /// A line a session process wrote (tagged with its session).
    Output,
    /// Something happened: a session started, ended or failed, health changed.
    Event,
    /// Lines were dropped for this reader because it fell behind (`dropped` says how many).
    Dropped,
}

/// One line of an agent's monitor feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MonitorLine {
    /// The node's sequence number: one more for every line the node emits, so a gap is visible.
    /// A `dropped` line carries the sequence number of the next line kept.
    pub seq: u64,
    /// When the node emitted it (RFC 3339).
    pub time: String,
    /// The same instant as unix milliseconds.
    pub ms: i64,
    /// What it is.
    pub kind: MonitorKind,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`) of log lines and events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// The session it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The text (`dropped: N` on a dropped line).
    pub message: String,
    /// How many lines were dropped, on a `dropped` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
}

/// A line of a capture: a node's monitor line marked with its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CapturedLine {
    /// The node that emitted it.
    pub node: String,
    /// The line as the node sent it.
    #[serde(flatten)]
    pub line: MonitorLine,
}

/// Filters of a monitor feed (query of `GET /api/v1/monitor`) and of a capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitorFilters {
    /// Least severe level kept (`error`, `warn`, `info`, `debug`, `trace`); lines without a
    /// level are always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Only lines about this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Only lines whose message contains this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
}

/// The query of an agent's `GET /api/v1/monitor`: the filters, and `after`, the sequence of the
/// last line a returning reader stored (it gets the kept lines past it first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitorQuery {
    /// As [`MonitorFilters::level`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// As [`MonitorFilters::session`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// As [`MonitorFilters::contains`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// Only lines after this sequence number (those still kept), lines no longer kept
    /// announced as `dropped: N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

impl MonitorQuery {
    /// The filters of this query.
    pub fn filters(&self) -> MonitorFilters {
        MonitorFilters {
            level: self.level.clone(),
            session: self.session.clone(),
            contains: self.contains.clone(),
        }
    }
}

/// A capture's or a segment's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaptureStatusWire {
    /// Still recording.
    Running,
    /// Ended as asked.
    Completed,
    /// Ended with lines missing (a limit cut it, or lines were dropped).
    Truncated,
    /// A node's feed could not be opened or broke.
    Failed,
}

impl From<hydra_core::capture::CaptureStatus> for CaptureStatusWire {
    fn from(status: hydra_core::capture::CaptureStatus) -> CaptureStatusWire {
        use hydra_core::capture::CaptureStatus;
        match status {
            CaptureStatus::Running => CaptureStatusWire::Running,
            CaptureStatus::Completed => CaptureStatusWire::Completed,
            CaptureStatus::Truncated => CaptureStatusWire::Truncated,
            CaptureStatus::Failed => CaptureStatusWire::Failed,
        }
    }
}

/// Why a segment or a capture ended (the field's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReasonWire {
    /// An operator stopped it.
    Stopped,
    /// Its duration, line or byte limit was reached.
    LimitReached,
    /// The node's monitor feed broke.
    SourceError,
    /// The node's monitor feed could not be opened.
    MonitorOpenFailed,
    /// The node left the fleet.
    NodeLeft,
    /// The node dropped lines for the capture.
    LinesDropped,
}

impl From<hydra_core::capture::TerminationReason> for TerminationReasonWire {
    fn from(reason: hydra_core::capture::TerminationReason) -> TerminationReasonWire {
        use hydra_core::capture::TerminationReason;
        match reason {
            TerminationReason::Stopped => TerminationReasonWire::Stopped,
            TerminationReason::LimitReached => TerminationReasonWire::LimitReached,
            TerminationReason::SourceError => TerminationReasonWire::SourceError,
            TerminationReason::MonitorOpenFailed => TerminationReasonWire::MonitorOpenFailed,
            TerminationReason::NodeLeft => TerminationReasonWire::NodeLeft,
            TerminationReason::LinesDropped => TerminationReasonWire::LinesDropped,
        }
    }
}

impl TerminationReasonWire {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        hydra_core::capture::TerminationReason::from(self).as_str()
    }
}

impl From<TerminationReasonWire> for hydra_core::capture::TerminationReason {
    fn from(reason: TerminationReasonWire) -> hydra_core::capture::TerminationReason {
        use hydra_core::capture::TerminationReason;
        match reason {
            TerminationReasonWire::Stopped => TerminationReason::Stopped,
            TerminationReasonWire::LimitReached => TerminationReason::LimitReached,
            TerminationReasonWire::SourceError => TerminationReason::SourceError,
            TerminationReasonWire::MonitorOpenFailed => TerminationReason::MonitorOpenFailed,
            TerminationReasonWire::NodeLeft => TerminationReason::NodeLeft,
            TerminationReasonWire::LinesDropped => TerminationReason::LinesDropped,
        }
    }
}

impl CaptureStatusWire {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureStatusWire::Running => "running",
            CaptureStatusWire::Completed => "completed",
            CaptureStatusWire::Truncated => "truncated",
            CaptureStatusWire::Failed => "failed",
        }
    }
}

/// `POST /api/v1/captures`: capture one node's feed (`node_id`) or every online node's
/// (`fan_out: true`; on a one-node fleet, that node alone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCaptureRequest {
    /// The node to capture (not with `fan_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Capture every online node whose agent the control plane knows.
    #[serde(default)]
    pub fan_out: bool,
    /// Filters applied by each node's feed.
    #[serde(default)]
    pub filters: MonitorFilters,
    /// How long to capture, in seconds (1 to 86400; default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    /// Most lines each node's segment keeps (1 to 100,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lines: Option<u64>,
    /// Most bytes each node's segment keeps (1 to 10 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// Bounds of a capture's limits.
pub mod capture_limits {
    /// Longest `duration` (s): a day.
    pub const MAX_DURATION_SECS: u64 = 86_400;
    /// `duration` when none is given (s): ten minutes.
    pub const DEFAULT_DURATION_SECS: u64 = 600;
    /// Largest `max_lines`.
    pub const MAX_LINES: u64 = 100_000_000;
    /// Largest `max_bytes`: 10 GiB.
    pub const MAX_BYTES: u64 = 10 * 1024 * 1024 * 1024;
}

/// One node's part of a capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SegmentView {
    /// The node.
    pub node_id: String,
    /// Its monitor address.
    pub address: String,
    /// Running, completed, truncated or failed.
    pub status: CaptureStatusWire,
    /// Bytes stored.
    pub byte_count: u64,
    /// Lines stored.
    pub line_count: u64,
    /// Lines the node dropped for the capture, or that could not be recovered.
    pub lines_missing: u64,
    /// When it ended (RFC 3339).
    pub ended_at: Option<String>,
    /// Why it ended.
    pub termination_reason: Option<TerminationReasonWire>,
}

/// A capture as the server shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CaptureView {
    /// Its id.
    pub capture_id: String,
    /// Running, then the worst case of its segments.
    pub status: CaptureStatusWire,
    /// The rolled-up reason, once ended.
    pub termination_reason: Option<TerminationReasonWire>,
    /// Whether it was started with `fan_out`.
    pub fan_out: bool,
    /// The feed filters.
    pub filters: MonitorFilters,
    /// Duration limit (s).
    pub duration: Option<u64>,
    /// Line limit of each segment.
    pub max_lines: Option<u64>,
    /// Byte limit of each segment.
    pub max_bytes: Option<u64>,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When it ended (RFC 3339).
    pub ended_at: Option<String>,
    /// Lines stored, all nodes.
    pub line_count: u64,
    /// Bytes stored, all nodes.
    pub byte_count: u64,
    /// One entry per node.
    pub node_segments: Vec<SegmentView>,
}

/// `GET /api/v1/captures`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CaptureList {
    /// The captures.
    pub captures: Vec<CaptureView>,
}
