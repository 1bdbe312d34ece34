//! One capture writer: reads one node's monitor feed and writes only that node's segment, in
//! chunks of up to [`CHUNK_BYTES`] or [`CHUNK_AGE`], each with its segment's counts in one
//! transaction; ends when told to, at its line or byte limit, or when the feed breaks.

use std::sync::Arc;
use std::time::Duration;

use hydra_api::captures::{CapturedLine, MonitorFilters, MonitorKind, MonitorLine};
use hydra_core::capture::{
    Admit, CaptureLimits, CaptureStatus, SegmentBudget, SegmentEnd, TerminationReason,
};
use hydra_store::{ChunkRecord, Store};
use tokio::sync::{broadcast, watch};

use crate::state::now_ms;

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
    /// Runs to the segment's end and stores it; answers how it ended.
    pub async fn run(mut self) -> SegmentEnd {
        let end = self.record().await;
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
        end
    }

    async fn record(&mut self) -> SegmentEnd {
        let Some(agent) = self.agent.clone() else {
            tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] no known agent address; monitor cannot be opened");
            return SegmentEnd::for_reason(TerminationReason::MonitorOpenFailed, false);
        };
        let mut feed = match agent.monitor(&self.filters).await {
            Ok(feed) => feed,
            Err(error) => {
                tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, %error, "[capture] monitor cannot be opened");
                return SegmentEnd::for_reason(TerminationReason::MonitorOpenFailed, false);
            }
        };
        let mut budget = SegmentBudget::new(self.limits, 0, 0);
        let mut pending = Pending::default();
        let mut chunk_sequence: i64 = 0;
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
                    if pending.started.is_some_and(|started| started.elapsed() >= CHUNK_AGE)
                        && !self.flush(&mut pending, &mut chunk_sequence).await
                    {
                        break (TerminationReason::SourceError, false);
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
            let mut store_failed = false;
            let mut consumed = 0;
            while let Some(offset) = buffer[consumed..].iter().position(|byte| *byte == b'\n') {
                let raw = &buffer[consumed..consumed + offset];
                consumed += offset + 1;
                if raw.is_empty() {
                    continue;
                }
                let Ok(line) = serde_json::from_slice::<MonitorLine>(raw) else {
                    tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, "[capture] a monitor line is not JSON; skipped");
                    continue;
                };
                if line.kind == MonitorKind::Dropped {
                    dropped_any = true;
                    pending.missing += i64::try_from(line.dropped.unwrap_or(0)).unwrap_or(i64::MAX);
                }
                let sequence = i64::try_from(line.seq).unwrap_or(i64::MAX);
                let emitted_ms = line.ms;
                let captured = CapturedLine {
                    node: self.node_id.clone(),
                    line,
                };
                let Ok(mut text) = serde_json::to_string(&captured) else {
                    continue;
                };
                text.push('\n');
                match budget.admit(u64::try_from(text.len()).unwrap_or(u64::MAX)) {
                    Admit::Refuse => {
                        cut = true;
                        break;
                    }
                    admit => {
                        let _ = self.tail.send(Arc::new((
                            self.node_id.clone(),
                            emitted_ms,
                            text.clone(),
                        )));
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
                if pending.data.len() >= CHUNK_BYTES
                    && !self.flush(&mut pending, &mut chunk_sequence).await
                {
                    store_failed = true;
                    break;
                }
            }
            buffer.drain(..consumed.min(buffer.len()));
            if store_failed {
                break (TerminationReason::SourceError, false);
            }
            if cut {
                break (TerminationReason::LimitReached, true);
            }
        };
        if !self.flush(&mut pending, &mut chunk_sequence).await {
            return SegmentEnd::for_reason(TerminationReason::SourceError, false);
        }
        let (reason, cut) = outcome;
        let end = SegmentEnd::for_reason(reason, cut);
        if dropped_any && end.status == CaptureStatus::Completed {
            return SegmentEnd::for_reason(TerminationReason::LinesDropped, false);
        }
        end
    }

    /// Writes the pending chunk, if any; `false` when the store refused it twice.
    async fn flush(&self, pending: &mut Pending, chunk_sequence: &mut i64) -> bool {
        let Some(first_sequence) = pending.first_sequence else {
            return true;
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
                    return true;
                }
                Err(error) => {
                    tracing::warn!(capture_id = %self.capture_id, node_id = %self.node_id, attempt, %error, "[capture] cannot store a chunk");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        false
    }
}
