//! One capture writer: reads one node's monitor feed and writes only that node's segment, in
//! chunks of up to [`CHUNK_BYTES`] or [`CHUNK_AGE`], each with its segment's counts in one
//! transaction; ends when told to, at its line or byte limit, or when the feed breaks.
//!
//! A writer resumed by a new master (or a restarted server) goes on from its segment's stored
//! `last_sequence`: it asks the agent for the lines after it, numbers its chunks on from the
//! last stored one and counts its limits from the stored counts, so no line is stored twice;
//! lines the agent no longer had come announced as dropped and leave the segment truncated
//! with their number in `lines_missing`. A writer whose write is fenced (this replica is no
//! longer the master) stops at once and writes nothing more: the new master resumes it.

use std::sync::Arc;
use std::time::Duration;

use hydra_api::captures::{MonitorFilters, MonitorKind};
use hydra_api::system::now_ms;
use hydra_client::LineStream;
use hydra_core::capture::{
    Admit, CaptureLimits, CaptureStatus, SegmentBudget, SegmentEnd, TerminationReason,
};
use hydra_store::{ChunkAppend, ChunkRecord, Store, StoreError};

use crate::group_commit::{ChunkWriter, CommitError};
use tokio::sync::{broadcast, watch};

/// A chunk is written once it holds this many bytes.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// A chunk is written once its first line is this old.
pub const CHUNK_AGE: Duration = Duration::from_secs(1);
/// A feed silent for this long (the agent sends a keep-alive every 5 s) is broken.
const FEED_SILENCE: Duration = Duration::from_secs(15);

/// What a writer needs.
pub struct Writer {
    /// The store.
    pub store: Store,
    /// Where its chunks are stored (shared with every other writer: one commit for many).
    pub chunks: ChunkWriter,
    /// The capture.
    pub capture_id: String,
    /// The node whose segment this writer owns.
    pub node_id: String,
    /// The node's agent, when the control plane knows it.
    pub agent: Option<hydra_client::AgentClient>,
    /// The feed's filters.
    pub filters: MonitorFilters,
    /// The segment's limits.
    pub limits: CaptureLimits,
    /// Lines for live tails (as stored: NDJSON text marked with the node).
    pub tail: broadcast::Sender<Arc<(String, i64, String)>>,
    /// Set when the orchestrator asks this writer to stop, with why.
    pub stop: watch::Receiver<Option<TerminationReason>>,
    /// Where a resumed segment goes on from; `None` for a new one.
    pub resume: Option<ResumePoint>,
}

/// What a resumed writer goes on from: its segment as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumePoint {
    /// The node sequence of the last stored line (`None`: none stored yet, the feed is read
    /// from the next line on).
    pub after: Option<u64>,
    /// The number the next chunk takes.
    pub next_chunk: i64,
    /// Lines stored so far.
    pub lines: u64,
    /// Bytes stored so far.
    pub bytes: u64,
}

/// How a chunk's write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flushed {
    Stored,
    Failed,
    /// Refused because this replica is no longer the master.
    Fenced,
}

/// The fields of a monitor line the writer decides on (the rest is kept as sent).
#[derive(serde::Deserialize)]
struct LineHead {
    seq: u64,
    #[serde(default)]
    ms: i64,
    kind: MonitorKind,
    #[serde(default)]
    dropped: Option<u64>,
}

/// How following a feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The segment ends for this reason (`true`: cut at a limit).
    Segment(TerminationReason, bool),
    /// A write was refused because this replica is no longer the master: nothing more is
    /// written.
    Fenced,
}

/// What became of one feed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Not stored: a keep-alive, not a JSON object, or stored before a resume.
    Skipped,
    /// Added to the pending chunk.
    Kept,
    /// The segment's line or byte limit is reached (the line is kept if it fitted).
    LimitReached,
}

/// What a writer keeps while it follows its feed.
struct Recording {
    budget: SegmentBudget,
    /// `{"node":"<id>",`: put before a node's line without its `{`, it makes a `CapturedLine`.
    node_prefix: String,
    pending: Pending,
    /// The number the next chunk takes.
    chunk_sequence: i64,
    /// Bytes of a line not complete yet.
    buffer: Vec<u8>,
    /// Whether the feed announced lines it dropped.
    dropped_any: bool,
    /// Lines up to this sequence are stored already (a resumed segment).
    resume_after: Option<u64>,
    /// The chunk being stored while the next one fills (at most one, see
    /// [`Writer::flush_recording`]).
    in_flight: Option<tokio::task::JoinHandle<Flushed>>,
}

impl Recording {
    fn new(node_id: &str, limits: CaptureLimits, resume: ResumePoint) -> Recording {
        Recording {
            budget: SegmentBudget::new(limits, resume.lines, resume.bytes),
            node_prefix: format!(
                "{{\"node\":{},",
                serde_json::to_string(node_id).unwrap_or_else(|_| "\"\"".to_owned())
            ),
            pending: Pending::default(),
            chunk_sequence: resume.next_chunk,
            buffer: Vec::new(),
            dropped_any: false,
            resume_after: resume.after,
            in_flight: None,
        }
    }
}

/// The lines gathered for the next chunk.
#[derive(Default)]
struct Pending {
    data: String,
    first_sequence: Option<i64>,
    last_sequence: i64,
    lines: i64,
    started: Option<tokio::time::Instant>,
    missing: i64,
}

impl Writer {
    /// Runs to the segment's end and stores it; answers how it ended, or `None` when this
    /// replica stopped being the master (nothing more is written; the new master resumes it).
    pub async fn run(mut self) -> Option<SegmentEnd> {
        let Some(end) = self.record().await else {
            tracing::info!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] writer stopped: this replica is no longer the master");
            return None;
        };
        // The segment's end is written by its writer only; a store failure leaves it running,
        // which the orchestrator's finalise still covers.
        if let Err(error) = self
            .store
            .end_capture_segment(
                &self.capture_id,
                &self.node_id,
                end.status,
                end.reason,
                0,
                now_ms(),
            )
            .await
        {
            tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, %error, "[capture] cannot store a segment's end");
        }
        tracing::info!(capture_id = %self.capture_id, node_id = %self.node_id, status = end.status.as_str(), reason = end.reason.as_str(), "[capture] segment ended");
        Some(end)
    }

    /// Opens the feed, follows it to the segment's end, then stores what is pending; `None`
    /// when this replica stopped being the master.
    async fn record(&mut self) -> Option<SegmentEnd> {
        let resume = self.resume.unwrap_or_default();
        let mut feed = match self.open_feed(resume.after).await {
            Ok(feed) => feed,
            Err(end) => return Some(end),
        };
        let mut recording = Recording::new(&self.node_id, self.limits, resume);
        let ending = self.follow(&mut feed, &mut recording).await;
        self.finish(ending, &mut recording).await
    }

    /// The node's monitor feed from the line after `after`; the segment's end
    /// (`monitor_open_failed`) when it cannot be opened.
    async fn open_feed(&self, after: Option<u64>) -> Result<LineStream, SegmentEnd> {
        let open_failed = SegmentEnd::for_reason(TerminationReason::MonitorOpenFailed, false);
        let Some(agent) = self.agent.clone() else {
            tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] no known agent address; monitor cannot be opened");
            return Err(open_failed);
        };
        let feed = agent
            .monitor_after(&self.filters, after)
            .await
            .map_err(|error| {
                tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, %error, "[capture] monitor cannot be opened");
                open_failed
            })?;
        if let Some(after) = after {
            tracing::info!(capture_id = %self.capture_id, node_id = %self.node_id, after, "[capture] writer resumed after the last stored line");
        }
        Ok(feed)
    }

    /// Reads the feed until the segment ends: a stop from the orchestrator, a limit, a broken or
    /// silent feed, a failed store; a chunk is written when full or [`CHUNK_AGE`] old.
    async fn follow(&mut self, feed: &mut LineStream, recording: &mut Recording) -> Ending {
        let mut flush_tick = tokio::time::interval(CHUNK_AGE / 4);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                changed = self.stop.changed() => {
                    match (changed, *self.stop.borrow()) {
                        (Ok(()), Some(reason)) => return Ending::Segment(reason, false),
                        (Err(_), _) => return Ending::Segment(TerminationReason::Stopped, false),
                        _ => continue,
                    }
                }
                _ = flush_tick.tick() => {
                    let due = recording
                        .pending
                        .started
                        .is_some_and(|started| started.elapsed() >= CHUNK_AGE);
                    if due && let Some(ending) = self.flush_recording(recording).await {
                        return ending;
                    }
                    continue;
                }
                received = tokio::time::timeout(FEED_SILENCE, feed.next_chunk()) => received,
            };
            let bytes = match received {
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => {
                    tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] monitor feed ended");
                    return Ending::Segment(TerminationReason::SourceError, false);
                }
                Ok(Err(error)) => {
                    tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, %error, "[capture] monitor feed broke");
                    return Ending::Segment(TerminationReason::SourceError, false);
                }
                Err(_silent) => {
                    tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] monitor feed silent; counted broken");
                    return Ending::Segment(TerminationReason::SourceError, false);
                }
            };
            if let Some(ending) = self.take_bytes(recording, &bytes).await {
                return ending;
            }
        }
    }

    /// Takes the complete lines of what the feed sent (a partial last line waits for the rest),
    /// writing a chunk each time one is full; `Some` when the segment ends (a limit reached, a
    /// store that failed or fenced the write).
    async fn take_bytes(&self, recording: &mut Recording, bytes: &[u8]) -> Option<Ending> {
        recording.buffer.extend_from_slice(bytes);
        let mut buffer = std::mem::take(&mut recording.buffer);
        let mut ending = None;
        let mut consumed = 0;
        while let Some(offset) = buffer[consumed..].iter().position(|byte| *byte == b'\n') {
            let raw = &buffer[consumed..consumed + offset];
            consumed += offset + 1;
            if self.take_line(recording, raw) == Taken::LimitReached {
                ending = Some(Ending::Segment(TerminationReason::LimitReached, true));
                break;
            }
            if recording.pending.data.len() >= CHUNK_BYTES {
                ending = self.flush_recording(recording).await;
                if ending.is_some() {
                    break;
                }
            }
        }
        buffer.drain(..consumed.min(buffer.len()));
        recording.buffer = buffer;
        ending
    }

    /// Adds one feed line to the pending chunk (and to live tails), marked with the node, within
    /// the segment's budget. Keep-alives, lines that are not JSON objects and lines stored
    /// before a resume are skipped; a `dropped` line counts its lines as missing.
    fn take_line(&self, recording: &mut Recording, raw: &[u8]) -> Taken {
        if raw.is_empty() {
            return Taken::Skipped;
        }
        // Only the fields the writer decides on are read; the line is kept as the node sent it,
        // marked with the node (what `CapturedLine` serializes to), so busy nodes cost no
        // re-encoding.
        let line = match serde_json::from_slice::<LineHead>(raw) {
            Ok(line) if raw.first() == Some(&b'{') => line,
            _ => {
                tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] a monitor line is not a JSON line object; skipped");
                return Taken::Skipped;
            }
        };
        let pending = &mut recording.pending;
        if line.kind == MonitorKind::Dropped {
            recording.dropped_any = true;
            pending.missing += i64::try_from(line.dropped.unwrap_or(0)).unwrap_or(i64::MAX);
        }
        // A line at or before the resume point is stored already (never twice).
        if line.kind != MonitorKind::Dropped
            && recording
                .resume_after
                .is_some_and(|after| line.seq <= after)
        {
            return Taken::Skipped;
        }
        let sequence = i64::try_from(line.seq).unwrap_or(i64::MAX);
        let mut text = String::with_capacity(recording.node_prefix.len() + raw.len());
        text.push_str(&recording.node_prefix);
        text.push_str(&String::from_utf8_lossy(&raw[1..]));
        text.push('\n');
        let admit = recording
            .budget
            .admit(u64::try_from(text.len()).unwrap_or(u64::MAX));
        if admit == Admit::Refuse {
            return Taken::LimitReached;
        }
        if self.tail.receiver_count() > 0 {
            let _ = self
                .tail
                .send(Arc::new((self.node_id.clone(), line.ms, text.clone())));
        }
        pending.data.push_str(&text);
        pending.first_sequence.get_or_insert(sequence);
        pending.last_sequence = sequence;
        pending.lines += 1;
        pending
            .started
            .get_or_insert_with(tokio::time::Instant::now);
        if admit == Admit::KeepAndEnd {
            Taken::LimitReached
        } else {
            Taken::Kept
        }
    }

    /// Hands the pending chunk to the store and goes on reading the feed while it commits; `Some`
    /// when the segment ends because the chunk before it was not stored (the store failed: a
    /// `source_error`; or fenced the write: this replica is no longer the master). At most one
    /// chunk is in flight, and a chunk is handed over only once the one before it is stored, so
    /// a node's chunks commit in order and a failed one leaves no later one stored (its
    /// segment's `last_sequence` never passes a line that is not stored).
    async fn flush_recording(&self, recording: &mut Recording) -> Option<Ending> {
        if let Some(ending) = Self::settle(recording).await {
            return Some(ending);
        }
        let append = self.take_chunk(&mut recording.pending, &mut recording.chunk_sequence)?;
        recording.in_flight = Some(tokio::spawn(store_chunk(
            self.chunks.clone(),
            append,
            self.capture_id.clone(),
            self.node_id.clone(),
        )));
        None
    }

    /// Waits for the chunk in flight, if any; `Some` when it was not stored.
    async fn settle(recording: &mut Recording) -> Option<Ending> {
        let in_flight = recording.in_flight.take()?;
        match in_flight.await.unwrap_or(Flushed::Failed) {
            Flushed::Stored => None,
            Flushed::Failed => Some(Ending::Segment(TerminationReason::SourceError, false)),
            Flushed::Fenced => Some(Ending::Fenced),
        }
    }

    /// Stores what is still pending and answers the segment's end: a segment that would end
    /// `completed` after lines were dropped ends `truncated` (`lines_dropped`) instead.
    async fn finish(&self, ending: Ending, recording: &mut Recording) -> Option<SegmentEnd> {
        let Ending::Segment(reason, cut) = ending else {
            return None;
        };
        let last = match self.flush_recording(recording).await {
            None => Self::settle(recording).await,
            ending => ending,
        };
        match last {
            None => {}
            Some(Ending::Fenced) => return None,
            Some(Ending::Segment(reason, cut)) => {
                return Some(SegmentEnd::for_reason(reason, cut));
            }
        }
        let end = SegmentEnd::for_reason(reason, cut);
        if recording.dropped_any && end.status == CaptureStatus::Completed {
            return Some(SegmentEnd::for_reason(
                TerminationReason::LinesDropped,
                false,
            ));
        }
        Some(end)
    }

    /// The pending chunk with its number (the next one is counted), or `None` when nothing is
    /// pending.
    fn take_chunk(&self, pending: &mut Pending, chunk_sequence: &mut i64) -> Option<ChunkAppend> {
        let first_sequence = pending.first_sequence?;
        let taken = std::mem::take(pending);
        let chunk = ChunkRecord {
            capture_id: self.capture_id.clone(),
            node_id: self.node_id.clone(),
            sequence: *chunk_sequence,
            first_sequence,
            last_sequence: taken.last_sequence,
            line_count: taken.lines,
            data: taken.data,
            created_at: now_ms(),
        };
        *chunk_sequence += 1;
        Some(ChunkAppend {
            bytes: i64::try_from(chunk.data.len()).unwrap_or(i64::MAX),
            chunk: Arc::new(chunk),
            lines_missing: taken.missing,
        })
    }
}

/// Stores one chunk; `Failed` when the store refused it twice, `Fenced` at once when this
/// replica is no longer the master.
async fn store_chunk(
    chunks: ChunkWriter,
    append: ChunkAppend,
    capture_id: String,
    node_id: String,
) -> Flushed {
    for attempt in 0..2 {
        match chunks.submit(append.clone()).await {
            Ok(_) => return Flushed::Stored,
            Err(CommitError::Store(error)) if matches!(*error, StoreError::NotMaster { .. }) => {
                return Flushed::Fenced;
            }
            Err(error) => {
                tracing::warn!(%capture_id, %node_id, attempt, %error, "[capture] cannot store a chunk");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Flushed::Failed
}
