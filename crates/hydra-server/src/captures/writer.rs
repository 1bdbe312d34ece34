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
use hydra_core::capture::{
    Admit, CaptureLimits, CaptureStatus, SegmentBudget, SegmentEnd, TerminationReason,
};
use hydra_store::{ChunkRecord, Store, StoreError};
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

    async fn record(&mut self) -> Option<SegmentEnd> {
        let Some(agent) = self.agent.clone() else {
            tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] no known agent address; monitor cannot be opened");
            return Some(SegmentEnd::for_reason(
                TerminationReason::MonitorOpenFailed,
                false,
            ));
        };
        let resume = self.resume.unwrap_or_default();
        let mut feed = match agent.monitor_after(&self.filters, resume.after).await {
            Ok(feed) => feed,
            Err(error) => {
                tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, %error, "[capture] monitor cannot be opened");
                return Some(SegmentEnd::for_reason(
                    TerminationReason::MonitorOpenFailed,
                    false,
                ));
            }
        };
        if let Some(after) = resume.after {
            tracing::info!(capture_id = %self.capture_id, node_id = %self.node_id, after, "[capture] writer resumed after the last stored line");
        }
        let mut budget = SegmentBudget::new(self.limits, resume.lines, resume.bytes);
        // `{"node":"<id>",` then the node's line without its `{`: a `CapturedLine`.
        let node_prefix = format!(
            "{{\"node\":{},",
            serde_json::to_string(&self.node_id).unwrap_or_else(|_| "\"\"".to_owned())
        );
        let mut pending = Pending::default();
        let mut chunk_sequence: i64 = resume.next_chunk;
        let mut buffer: Vec<u8> = Vec::new();
        let mut dropped_any = false;
        let mut flush_tick = tokio::time::interval(CHUNK_AGE / 4);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome: (TerminationReason, bool) = loop {
            let received = tokio::select! {
                changed = self.stop.changed() => {
                    match (changed, *self.stop.borrow()) {
                        (Ok(()), Some(reason)) => break (reason, false),
                        (Err(_), _) => break (TerminationReason::Stopped, false),
                        _ => continue,
                    }
                }
                _ = flush_tick.tick() => {
                    if pending.started.is_some_and(|started| started.elapsed() >= CHUNK_AGE) {
                        match self.flush(&mut pending, &mut chunk_sequence).await {
                            Flushed::Stored => {}
                            Flushed::Failed => break (TerminationReason::SourceError, false),
                            Flushed::Fenced => return None,
                        }
                    }
                    continue;
                }
                received = tokio::time::timeout(FEED_SILENCE, feed.next_chunk()) => received,
            };
            let bytes = match received {
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => {
                    tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] monitor feed ended");
                    break (TerminationReason::SourceError, false);
                }
                Ok(Err(error)) => {
                    tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, %error, "[capture] monitor feed broke");
                    break (TerminationReason::SourceError, false);
                }
                Err(_silent) => {
                    tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] monitor feed silent; counted broken");
                    break (TerminationReason::SourceError, false);
                }
            };
            buffer.extend_from_slice(&bytes);
            let mut cut = false;
            let mut store_failed = Flushed::Stored;
            let mut consumed = 0;
            while let Some(offset) = buffer[consumed..].iter().position(|byte| *byte == b'\n') {
                let raw = &buffer[consumed..consumed + offset];
                consumed += offset + 1;
                if raw.is_empty() {
                    continue;
                }
                // Only the fields the writer decides on are read; the line is kept as the node
                // sent it, marked with the node (what `CapturedLine` serializes to), so busy
                // nodes cost no re-encoding.
                let line = match serde_json::from_slice::<LineHead>(raw) {
                    Ok(line) if raw.first() == Some(&b'{') => line,
                    _ => {
                        tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] a monitor line is not a JSON line object; skipped");
                        continue;
                    }
                };
                if line.kind == MonitorKind::Dropped {
                    dropped_any = true;
                    pending.missing += i64::try_from(line.dropped.unwrap_or(0)).unwrap_or(i64::MAX);
                }
                // A line at or before the resume point is stored already (never twice).
                if line.kind != MonitorKind::Dropped
                    && resume.after.is_some_and(|after| line.seq <= after)
                {
                    continue;
                }
                let sequence = i64::try_from(line.seq).unwrap_or(i64::MAX);
                let emitted_ms = line.ms;
                let mut text = String::with_capacity(node_prefix.len() + raw.len());
                text.push_str(&node_prefix);
                text.push_str(&String::from_utf8_lossy(&raw[1..]));
                text.push('\n');
                match budget.admit(u64::try_from(text.len()).unwrap_or(u64::MAX)) {
                    Admit::Refuse => {
                        cut = true;
                        break;
                    }
                    admit => {
                        if self.tail.receiver_count() > 0 {
                            let _ = self.tail.send(Arc::new((
                                self.node_id.clone(),
                                emitted_ms,
                                text.clone(),
                            )));
                        }
                        pending.data.push_str(&text);
                        pending.first_sequence.get_or_insert(sequence);
                        pending.last_sequence = sequence;
                        pending.lines += 1;
                        pending
                            .started
                            .get_or_insert_with(tokio::time::Instant::now);
                        if admit == Admit::KeepAndEnd {
                            cut = true;
                            break;
                        }
                    }
                }
                if pending.data.len() >= CHUNK_BYTES {
                    store_failed = self.flush(&mut pending, &mut chunk_sequence).await;
                    if store_failed != Flushed::Stored {
                        break;
                    }
                }
            }
            buffer.drain(..consumed.min(buffer.len()));
            match store_failed {
                Flushed::Stored => {}
                Flushed::Failed => break (TerminationReason::SourceError, false),
                Flushed::Fenced => return None,
            }
            if cut {
                break (TerminationReason::LimitReached, true);
            }
        };
        match self.flush(&mut pending, &mut chunk_sequence).await {
            Flushed::Stored => {}
            Flushed::Failed => {
                return Some(SegmentEnd::for_reason(
                    TerminationReason::SourceError,
                    false,
                ));
            }
            Flushed::Fenced => return None,
        }
        let (reason, cut) = outcome;
        let end = SegmentEnd::for_reason(reason, cut);
        if dropped_any && end.status == CaptureStatus::Completed {
            return Some(SegmentEnd::for_reason(
                TerminationReason::LinesDropped,
                false,
            ));
        }
        Some(end)
    }

    /// Writes the pending chunk, if any; `Failed` when the store refused it twice, `Fenced` at
    /// once when this replica is no longer the master.
    async fn flush(&self, pending: &mut Pending, chunk_sequence: &mut i64) -> Flushed {
        let Some(first_sequence) = pending.first_sequence else {
            return Flushed::Stored;
        };
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
        let bytes = i64::try_from(chunk.data.len()).unwrap_or(i64::MAX);
        for attempt in 0..2 {
            match self
                .store
                .append_capture_chunk(&chunk, bytes, taken.missing)
                .await
            {
                Ok(_) => {
                    *chunk_sequence += 1;
                    return Flushed::Stored;
                }
                Err(StoreError::NotMaster { .. }) => return Flushed::Fenced,
                Err(error) => {
                    tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, attempt, %error, "[capture] cannot store a chunk");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Flushed::Failed
    }
}
