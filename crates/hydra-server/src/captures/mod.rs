//! Fan-out captures (issue 12, `fan-out-capture.md`); the routes are `crate::routes::captures`:
//! `POST /api/v1/captures` records the
//! monitor feed of one node or of every online node into one capture with a segment per node;
//! `stop`, list, show (with `node_segments`), `lines` (stored lines, streamed) and `tail` (live,
//! all nodes interleaved, filtered by node). Admin token.
//!
//! The decisions are `hydra_core::capture`'s; `driver.rs` runs its orchestrator, `writer.rs` one
//! writer per node. The duties `crate::duties::capture_retention` (prunes ended captures by age)
//! and `crate::duties::capture_resume` (a new master or a restarted server goes on with the
//! captures still running, a deposed one leaves them) run beside it.

pub mod driver;
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydra_api::captures::{CaptureView, CreateCaptureRequest, SegmentView, capture_limits};
use hydra_core::capture::{CaptureLimits, level_rank};
use hydra_store::{CaptureRecord, SegmentRecord};
use tokio::sync::{broadcast, mpsc};

use crate::error::ApiError;

/// Live lines kept for tails that fall behind.
const TAIL_CAPACITY: usize = 16 * 1024;
/// Most lines sent in one chunk of a tail.
pub(crate) const TAIL_LINES_PER_CHUNK: usize = 512;
/// A tail quiet this long sends a keep-alive (an empty line), so a client's idle timeout tells
/// a quiet capture from a stalled stream.
pub(crate) const TAIL_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Nodes-left notices queued for one capture's driver (more than its nodes would be odd).
const NODES_LEFT_QUEUED: usize = 64;
/// Chunks read from the store per page of a download.
pub(crate) const CHUNKS_PER_PAGE: u32 = 16;

/// A live line: (node, emission ms, NDJSON text).
type TailLine = Arc<(String, i64, String)>;

/// The captures this server runs now: how to stop each and where its live lines go.
#[derive(Debug, Clone, Default)]
pub struct Captures {
    running: Arc<Mutex<HashMap<String, Running>>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Running {
    stop: mpsc::Sender<()>,
    /// Nodes the peer mesh declared down, for the driver (see [`Captures::node_left`]).
    left: mpsc::Sender<String>,
    tail: broadcast::Sender<TailLine>,
    ended: tokio_util::sync::CancellationToken,
    abandon: tokio_util::sync::CancellationToken,
}

impl Running {
    /// Asks the driver to stop the capture (a second ask while one waits changes nothing).
    pub(crate) fn request_stop(&self) {
        let _ = self.stop.try_send(());
    }

    /// Cancelled once the capture's driver ended (the capture is final).
    pub(crate) fn ended(&self) -> tokio_util::sync::CancellationToken {
        self.ended.clone()
    }

    /// The capture's live lines from now on.
    pub(crate) fn subscribe_tail(&self) -> broadcast::Receiver<TailLine> {
        self.tail.subscribe()
    }
}

/// A capture this server has claimed to run: what its driver gets.
pub(crate) struct Claim {
    stop: mpsc::Receiver<()>,
    left: mpsc::Receiver<String>,
    tail: broadcast::Sender<TailLine>,
    ended: tokio_util::sync::CancellationToken,
    abandon: tokio_util::sync::CancellationToken,
}

impl Captures {
    pub(crate) fn get(&self, id: &str) -> Option<Running> {
        self.running
            .lock()
            .expect("captures poisoned")
            .get(id)
            .cloned()
    }

    /// Claims `capture_id` for a driver of this server; `None` when one runs it already (a
    /// capture is started and resumed under the same lock, so it never gets two drivers).
    pub(crate) fn claim(&self, capture_id: &str) -> Option<Claim> {
        let mut running = self.running.lock().expect("captures poisoned");
        if running.contains_key(capture_id) {
            return None;
        }
        let (stop_sender, stop) = mpsc::channel(1);
        let (left_sender, left) = mpsc::channel(NODES_LEFT_QUEUED);
        let (tail, _) = broadcast::channel(TAIL_CAPACITY);
        let ended = tokio_util::sync::CancellationToken::new();
        let abandon = tokio_util::sync::CancellationToken::new();
        running.insert(
            capture_id.to_owned(),
            Running {
                stop: stop_sender,
                left: left_sender,
                tail: tail.clone(),
                ended: ended.clone(),
                abandon: abandon.clone(),
            },
        );
        Some(Claim {
            stop,
            left,
            tail,
            ended,
            abandon,
        })
    }

    pub(crate) fn release(&self, capture_id: &str) {
        self.running
            .lock()
            .expect("captures poisoned")
            .remove(capture_id);
    }

    /// Whether this server runs `capture_id` now.
    pub fn runs(&self, capture_id: &str) -> bool {
        self.get(capture_id).is_some()
    }

    /// The peer mesh declared `node_id` down and the control plane marked it unreachable: in
    /// every capture this server runs, its writer ends its segment `failed` with `node_left` at
    /// once, instead of waiting for its feed to break or fall silent.
    pub fn node_left(&self, node_id: &str) {
        let running = self.running.lock().expect("captures poisoned");
        for (capture_id, capture) in running.iter() {
            if capture.left.try_send(node_id.to_owned()).is_err() {
                tracing::warn!(%capture_id, %node_id, "[capture] a node that left could not be told to its capture; its feed's end still ends its segment");
            }
        }
    }

    /// Leaves every capture this server runs to the next master: their drivers end their
    /// writers and return without writing anything more.
    pub fn abandon_all(&self) {
        let running = self.running.lock().expect("captures poisoned");
        for capture in running.values() {
            capture.abandon.cancel();
        }
    }

    /// Runs the driver `build` makes from `claim`'s tail, stop requests and abandon token until
    /// its capture is finalised or abandoned; then this server no longer runs it.
    pub(crate) fn spawn_driver(
        &self,
        claim: Claim,
        build: impl FnOnce(
            broadcast::Sender<TailLine>,
            mpsc::Receiver<()>,
            tokio_util::sync::CancellationToken,
        ) -> driver::Driver,
    ) {
        let driver = build(claim.tail, claim.stop, claim.abandon);
        let captures = self.clone();
        let ended = claim.ended;
        let finished_id = driver.capture_id.clone();
        let left = claim.left;
        tokio::spawn(async move {
            driver.run(left).await;
            captures.release(&finished_id);
            ended.cancel();
        });
    }
}

/// The view of a stored capture and its segments.
pub fn view(record: &CaptureRecord, segments: &[SegmentRecord]) -> CaptureView {
    let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
    CaptureView {
        capture_id: record.id.clone(),
        status: record.status.into(),
        termination_reason: record.termination_reason.map(Into::into),
        fan_out: record.fan_out,
        filters: serde_json::from_str(&record.filters).unwrap_or_default(),
        duration: record.duration_ms.map(|ms| unsigned(ms) / 1000),
        max_lines: record.max_lines.map(unsigned),
        max_bytes: record.max_bytes.map(unsigned),
        created_at: hydra_api::rfc3339(record.created_at),
        ended_at: record.ended_at.map(hydra_api::rfc3339),
        line_count: segments
            .iter()
            .map(|segment| unsigned(segment.line_count))
            .sum(),
        byte_count: segments
            .iter()
            .map(|segment| unsigned(segment.byte_count))
            .sum(),
        node_segments: segments
            .iter()
            .map(|segment| SegmentView {
                node_id: segment.node_id.clone(),
                address: segment.address.clone(),
                status: segment.status.into(),
                byte_count: unsigned(segment.byte_count),
                line_count: unsigned(segment.line_count),
                lines_missing: unsigned(segment.lines_missing),
                ended_at: segment.ended_at.map(hydra_api::rfc3339),
                termination_reason: segment.termination_reason.map(Into::into),
            })
            .collect(),
    }
}

/// Checks a request's limits and filters; the error names the field.
pub(crate) fn checked_limits(request: &CreateCaptureRequest) -> Result<CaptureLimits, ApiError> {
    let duration = request
        .duration
        .unwrap_or(capture_limits::DEFAULT_DURATION_SECS);
    if !(1..=capture_limits::MAX_DURATION_SECS).contains(&duration) {
        return Err(ApiError::invalid(format!(
            "duration: {duration} s is out of range (1 to {})",
            capture_limits::MAX_DURATION_SECS
        )));
    }
    if let Some(max_lines) = request.max_lines
        && !(1..=capture_limits::MAX_LINES).contains(&max_lines)
    {
        return Err(ApiError::invalid(format!(
            "max_lines: {max_lines} is out of range (1 to {})",
            capture_limits::MAX_LINES
        )));
    }
    if let Some(max_bytes) = request.max_bytes
        && !(1..=capture_limits::MAX_BYTES).contains(&max_bytes)
    {
        return Err(ApiError::invalid(format!(
            "max_bytes: {max_bytes} is out of range (1 to {})",
            capture_limits::MAX_BYTES
        )));
    }
    if let Some(level) = &request.filters.level
        && level_rank(level).is_none()
    {
        return Err(ApiError::invalid(format!(
            "filters.level: unknown level {level:?} (error, warn, info, debug or trace)"
        )));
    }
    Ok(CaptureLimits {
        duration_ms: Some(i64::try_from(duration * 1000).unwrap_or(i64::MAX)),
        max_lines: request.max_lines,
        max_bytes: request.max_bytes,
    })
}
