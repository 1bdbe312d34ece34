//! Fan-out captures (tables `captures`, `capture_segments`, `capture_chunks`, migration 0010):
//! the capture row the orchestrator finalises, one segment per node that only its writer
//! updates, and the lines in chunks keyed by (capture, node, sequence). A chunk and its
//! segment's counts are written in one transaction, so a writer that resumes from
//! `last_sequence` never stores a line twice.

use hydra_core::capture::{CaptureStatus, TerminationReason};
use sqlx::FromRow;

use crate::{Store, StoreError};

/// A capture as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRecord {
    /// Its id.
    pub id: String,
    /// Running until the orchestrator finalises it, then the segments' worst case.
    pub status: CaptureStatus,
    /// The rolled-up reason, once finalised.
    pub termination_reason: Option<TerminationReason>,
    /// Whether it was started with `fan_out`.
    pub fan_out: bool,
    /// The feed filters as JSON text (the store does not read them).
    pub filters: String,
    /// Duration limit (ms).
    pub duration_ms: Option<i64>,
    /// Line limit of each segment.
    pub max_lines: Option<i64>,
    /// Byte limit of each segment.
    pub max_bytes: Option<i64>,
    /// When it started (unix ms).
    pub created_at: i64,
    /// When it was finalised (unix ms).
    pub ended_at: Option<i64>,
}

/// One node's segment of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    /// The capture.
    pub capture_id: String,
    /// The node.
    pub node_id: String,
    /// The node's monitor address.
    pub address: String,
    /// Running, then how it ended.
    pub status: CaptureStatus,
    /// Why it ended.
    pub termination_reason: Option<TerminationReason>,
    /// Bytes stored (lines with their newlines).
    pub byte_count: i64,
    /// Lines stored.
    pub line_count: i64,
    /// The node's sequence number of the last stored line.
    pub last_sequence: Option<i64>,
    /// Lines the node reported dropped, or that could not be recovered.
    pub lines_missing: i64,
    /// When it ended (unix ms).
    pub ended_at: Option<i64>,
}

/// A chunk of one node's lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// The capture.
    pub capture_id: String,
    /// The node whose lines these are.
    pub node_id: String,
    /// The chunk's number within the node's segment, from 0.
    pub sequence: i64,
    /// The node's sequence number of the first line.
    pub first_sequence: i64,
    /// The node's sequence number of the last line.
    pub last_sequence: i64,
    /// Lines in `data`.
    pub line_count: i64,
    /// The lines, each ending with a newline.
    pub data: String,
    /// When it was stored (unix ms).
    pub created_at: i64,
}

/// One chunk to append with what it adds to its segment (see [`crate::Store::append_capture_chunks`]).
#[derive(Debug, Clone)]
pub struct ChunkAppend {
    /// The chunk (shared: a group commit keeps a copy of its batch for a retry).
    pub chunk: std::sync::Arc<ChunkRecord>,
    /// Bytes it adds to the segment.
    pub bytes: i64,
    /// Lines it adds to the segment's missing count.
    pub lines_missing: i64,
}

fn corrupt(column: &'static str, word: &str) -> StoreError {
    StoreError::Corrupt {
        column,
        detail: format!("unknown word {word:?}"),
    }
}

fn status_of(column: &'static str, word: &str) -> Result<CaptureStatus, StoreError> {
    CaptureStatus::parse(word).ok_or_else(|| corrupt(column, word))
}

fn reason_of(
    column: &'static str,
    word: Option<String>,
) -> Result<Option<TerminationReason>, StoreError> {
    word.map(|word| TerminationReason::parse(&word).ok_or_else(|| corrupt(column, &word)))
        .transpose()
}

/// A `captures` row as both engines decode it.
#[derive(Debug, FromRow)]
pub(crate) struct CaptureRow {
    id: String,
    status: String,
    termination_reason: Option<String>,
    fan_out: bool,
    filters: String,
    duration_ms: Option<i64>,
    max_lines: Option<i64>,
    max_bytes: Option<i64>,
    created_at: i64,
    ended_at: Option<i64>,
}

impl TryFrom<CaptureRow> for CaptureRecord {
    type Error = StoreError;
    fn try_from(row: CaptureRow) -> Result<CaptureRecord, StoreError> {
        Ok(CaptureRecord {
            status: status_of("captures.status", &row.status)?,
            termination_reason: reason_of("captures.termination_reason", row.termination_reason)?,
            id: row.id,
            fan_out: row.fan_out,
            filters: row.filters,
            duration_ms: row.duration_ms,
            max_lines: row.max_lines,
            max_bytes: row.max_bytes,
            created_at: row.created_at,
            ended_at: row.ended_at,
        })
    }
}

/// A `capture_segments` row as both engines decode it.
#[derive(Debug, FromRow)]
pub(crate) struct SegmentRow {
    capture_id: String,
    node_id: String,
    address: String,
    status: String,
    termination_reason: Option<String>,
    byte_count: i64,
    line_count: i64,
    last_sequence: Option<i64>,
    lines_missing: i64,
    ended_at: Option<i64>,
}

impl TryFrom<SegmentRow> for SegmentRecord {
    type Error = StoreError;
    fn try_from(row: SegmentRow) -> Result<SegmentRecord, StoreError> {
        Ok(SegmentRecord {
            status: status_of("capture_segments.status", &row.status)?,
            termination_reason: reason_of(
                "capture_segments.termination_reason",
                row.termination_reason,
            )?,
            capture_id: row.capture_id,
            node_id: row.node_id,
            address: row.address,
            byte_count: row.byte_count,
            line_count: row.line_count,
            last_sequence: row.last_sequence,
            lines_missing: row.lines_missing,
            ended_at: row.ended_at,
        })
    }
}

/// A `capture_chunks` row as both engines decode it.
#[derive(Debug, FromRow)]
pub(crate) struct ChunkRow {
    capture_id: String,
    node_id: String,
    sequence: i64,
    first_sequence: i64,
    last_sequence: i64,
    line_count: i64,
    data: String,
    created_at: i64,
}

impl From<ChunkRow> for ChunkRecord {
    fn from(row: ChunkRow) -> ChunkRecord {
        ChunkRecord {
            capture_id: row.capture_id,
            node_id: row.node_id,
            sequence: row.sequence,
            first_sequence: row.first_sequence,
            last_sequence: row.last_sequence,
            line_count: row.line_count,
            data: row.data,
            created_at: row.created_at,
        }
    }
}

/// Implements the capture queries on an engine's store (both engines accept the same SQL).
macro_rules! capture_queries {
    ($store:ident) => {
        impl $store {
            pub(crate) async fn insert_capture(
                &self,
                capture: &crate::CaptureRecord,
                segments: &[crate::SegmentRecord],
            ) -> Result<(), StoreError> {
                let mut transaction = self.begin_write().await?;
                let inserted = sqlx::query(
                    "INSERT INTO captures (id, status, termination_reason, fan_out, filters, \
                     duration_ms, max_lines, max_bytes, created_at, ended_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&capture.id)
                .bind(capture.status.as_str())
                .bind(capture.termination_reason.map(|reason| reason.as_str()))
                .bind(capture.fan_out)
                .bind(&capture.filters)
                .bind(capture.duration_ms)
                .bind(capture.max_lines)
                .bind(capture.max_bytes)
                .bind(capture.created_at)
                .bind(capture.ended_at)
                .execute(&mut *transaction)
                .await?;
                if inserted.rows_affected() == 0 {
                    return Err(StoreError::Conflict {
                        what: format!("capture {:?}", capture.id),
                    });
                }
                for segment in segments {
                    sqlx::query(
                        "INSERT INTO capture_segments (capture_id, node_id, address, status, \
                         termination_reason, byte_count, line_count, last_sequence, lines_missing, \
                         ended_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(&capture.id)
                    .bind(&segment.node_id)
                    .bind(&segment.address)
                    .bind(segment.status.as_str())
                    .bind(segment.termination_reason.map(|reason| reason.as_str()))
                    .bind(segment.byte_count)
                    .bind(segment.line_count)
                    .bind(segment.last_sequence)
                    .bind(segment.lines_missing)
                    .bind(segment.ended_at)
                    .execute(&mut *transaction)
                    .await?;
                }
                transaction.commit().await?;
                Ok(())
            }

            pub(crate) async fn append_capture_chunks(
                &self,
                appends: &[crate::ChunkAppend],
            ) -> Result<Vec<bool>, StoreError> {
                let mut transaction = self.begin_write().await?;
                let mut stored = Vec::with_capacity(appends.len());
                for append in appends {
                    let chunk = &*append.chunk;
                    let inserted = sqlx::query(
                        "INSERT INTO capture_chunks (capture_id, node_id, sequence, first_sequence, \
                         last_sequence, line_count, data, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (capture_id, node_id, sequence) DO NOTHING",
                    )
                    .bind(&chunk.capture_id)
                    .bind(&chunk.node_id)
                    .bind(chunk.sequence)
                    .bind(chunk.first_sequence)
                    .bind(chunk.last_sequence)
                    .bind(chunk.line_count)
                    .bind(&chunk.data)
                    .bind(chunk.created_at)
                    .execute(&mut *transaction)
                    .await?;
                    if inserted.rows_affected() == 0 {
                        stored.push(false);
                        continue;
                    }
                    sqlx::query(
                        "UPDATE capture_segments SET byte_count = byte_count + $3, \
                         line_count = line_count + $4, last_sequence = $5, \
                         lines_missing = lines_missing + $6 WHERE capture_id = $1 AND node_id = $2",
                    )
                    .bind(&chunk.capture_id)
                    .bind(&chunk.node_id)
                    .bind(append.bytes)
                    .bind(chunk.line_count)
                    .bind(chunk.last_sequence)
                    .bind(append.lines_missing)
                    .execute(&mut *transaction)
                    .await?;
                    stored.push(true);
                }
                transaction.commit().await?;
                Ok(stored)
            }

            pub(crate) async fn end_capture_segment(
                &self,
                capture_id: &str,
                node_id: &str,
                status: &str,
                reason: &str,
                lines_missing: i64,
                ended_at: i64,
            ) -> Result<bool, StoreError> {
                let mut transaction = self.begin_write().await?;
                let updated = sqlx::query(
                    "UPDATE capture_segments SET status = $3, termination_reason = $4, \
                     lines_missing = lines_missing + $5, ended_at = $6 \
                     WHERE capture_id = $1 AND node_id = $2 AND status = 'running'",
                )
                .bind(capture_id)
                .bind(node_id)
                .bind(status)
                .bind(reason)
                .bind(lines_missing)
                .bind(ended_at)
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
                Ok(updated.rows_affected() > 0)
            }

            pub(crate) async fn finalise_capture(
                &self,
                capture_id: &str,
                status: &str,
                reason: Option<&str>,
                ended_at: i64,
            ) -> Result<bool, StoreError> {
                let mut transaction = self.begin_write().await?;
                let updated = sqlx::query(
                    "UPDATE captures SET status = $2, termination_reason = $3, ended_at = $4 \
                     WHERE id = $1 AND status = 'running'",
                )
                .bind(capture_id)
                .bind(status)
                .bind(reason)
                .bind(ended_at)
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
                Ok(updated.rows_affected() > 0)
            }

            pub(crate) async fn get_capture(
                &self,
                capture_id: &str,
            ) -> Result<Option<crate::CaptureRecord>, StoreError> {
                let row: Option<crate::captures::CaptureRow> = sqlx::query_as(
                    "SELECT id, status, termination_reason, fan_out, filters, duration_ms, \
                     max_lines, max_bytes, created_at, ended_at FROM captures WHERE id = $1",
                )
                .bind(capture_id)
                .fetch_optional(&self.reader)
                .await?;
                row.map(crate::CaptureRecord::try_from).transpose()
            }

            pub(crate) async fn list_captures(
                &self,
                limit: u32,
            ) -> Result<Vec<crate::CaptureRecord>, StoreError> {
                let rows: Vec<crate::captures::CaptureRow> = sqlx::query_as(
                    "SELECT id, status, termination_reason, fan_out, filters, duration_ms, \
                     max_lines, max_bytes, created_at, ended_at FROM captures \
                     ORDER BY created_at DESC, id DESC LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
                rows.into_iter().map(crate::CaptureRecord::try_from).collect()
            }

            pub(crate) async fn open_captures(
                &self,
            ) -> Result<Vec<crate::CaptureRecord>, StoreError> {
                let rows: Vec<crate::captures::CaptureRow> = sqlx::query_as(
                    "SELECT id, status, termination_reason, fan_out, filters, duration_ms, \
                     max_lines, max_bytes, created_at, ended_at FROM captures \
                     WHERE status = 'running' ORDER BY created_at, id",
                )
                .fetch_all(&self.reader)
                .await?;
                rows.into_iter().map(crate::CaptureRecord::try_from).collect()
            }

            pub(crate) async fn next_capture_chunk(
                &self,
                capture_id: &str,
                node_id: &str,
            ) -> Result<i64, StoreError> {
                let next: (i64,) = sqlx::query_as(
                    "SELECT COALESCE(MAX(sequence) + 1, 0) FROM capture_chunks \
                     WHERE capture_id = $1 AND node_id = $2",
                )
                .bind(capture_id)
                .bind(node_id)
                .fetch_one(&self.reader)
                .await?;
                Ok(next.0)
            }

            pub(crate) async fn capture_segments(
                &self,
                capture_id: &str,
            ) -> Result<Vec<crate::SegmentRecord>, StoreError> {
                let rows: Vec<crate::captures::SegmentRow> = sqlx::query_as(
                    "SELECT capture_id, node_id, address, status, termination_reason, byte_count, \
                     line_count, last_sequence, lines_missing, ended_at FROM capture_segments \
                     WHERE capture_id = $1 ORDER BY node_id",
                )
                .bind(capture_id)
                .fetch_all(&self.reader)
                .await?;
                rows.into_iter().map(crate::SegmentRecord::try_from).collect()
            }

            pub(crate) async fn capture_chunks(
                &self,
                capture_id: &str,
                node_id: Option<&str>,
                after: Option<(&str, i64)>,
                limit: u32,
            ) -> Result<Vec<crate::ChunkRecord>, StoreError> {
                // Keyset paging on the primary key: each page starts where the last one ended.
                let (after_node, after_sequence) = after.unwrap_or(("", -1));
                let rows: Vec<crate::captures::ChunkRow> = sqlx::query_as(
                    "SELECT capture_id, node_id, sequence, first_sequence, last_sequence, \
                     line_count, data, created_at FROM capture_chunks \
                     WHERE capture_id = $1 AND ($2 IS NULL OR node_id = $2) \
                     AND (node_id > $3 OR (node_id = $3 AND sequence > $4)) \
                     ORDER BY node_id, sequence LIMIT $5",
                )
                .bind(capture_id)
                .bind(node_id)
                .bind(after_node)
                .bind(after_sequence)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
                Ok(rows.into_iter().map(crate::ChunkRecord::from).collect())
            }

            pub(crate) async fn prune_ended_captures(
                &self,
                ended_before: i64,
                batch: u32,
            ) -> Result<u64, StoreError> {
                let mut transaction = self.begin_write().await?;
                // Chunks and segments go with their capture (ON DELETE CASCADE).
                let deleted = sqlx::query(
                    "DELETE FROM captures WHERE id IN (SELECT id FROM captures \
                     WHERE status <> 'running' AND ended_at < $1 LIMIT $2)",
                )
                .bind(ended_before)
                .bind(i64::from(batch))
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
                Ok(deleted.rows_affected())
            }
        }
    };
}
pub(crate) use capture_queries;

/// Calls the same method on whichever engine backs the store.
macro_rules! on_engine {
    ($store:expr, $method:ident($($arg:expr),*)) => {
        match $store {
            Store::Sqlite(engine) => engine.$method($($arg),*).await,
            Store::Postgres(engine) => engine.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Stores a new capture (status running) and its segments in one transaction; `Conflict`
    /// when the id exists (nothing written).
    pub async fn insert_capture(
        &self,
        capture: &CaptureRecord,
        segments: &[SegmentRecord],
    ) -> Result<(), StoreError> {
        on_engine!(self, insert_capture(capture, segments))
    }

    /// Stores a chunk and adds it to its segment's counts (`bytes` bytes, its lines,
    /// `last_sequence`, `lines_missing` more missing), atomically. `false` when a chunk with the
    /// same (capture, node, sequence) exists: nothing is written, so a retried chunk is not
    /// counted twice.
    pub async fn append_capture_chunk(
        &self,
        chunk: &ChunkRecord,
        bytes: i64,
        lines_missing: i64,
    ) -> Result<bool, StoreError> {
        let append = ChunkAppend {
            chunk: std::sync::Arc::new(chunk.clone()),
            bytes,
            lines_missing,
        };
        let stored = self
            .append_capture_chunks(std::slice::from_ref(&append))
            .await?;
        Ok(stored.first().copied().unwrap_or(false))
    }

    /// [`Store::append_capture_chunk`] for several chunks (of any captures and nodes) in one
    /// transaction, so writers of many nodes share one commit: one answer per chunk, in order.
    pub async fn append_capture_chunks(
        &self,
        appends: &[ChunkAppend],
    ) -> Result<Vec<bool>, StoreError> {
        on_engine!(self, append_capture_chunks(appends))
    }

    /// Ends a running segment (only its writer calls this); `false` when it is not running.
    pub async fn end_capture_segment(
        &self,
        capture_id: &str,
        node_id: &str,
        status: CaptureStatus,
        reason: TerminationReason,
        lines_missing: i64,
        ended_at: i64,
    ) -> Result<bool, StoreError> {
        on_engine!(
            self,
            end_capture_segment(
                capture_id,
                node_id,
                status.as_str(),
                reason.as_str(),
                lines_missing,
                ended_at
            )
        )
    }

    /// Finalises a running capture (only the orchestrator calls this); `false` when it is not
    /// running.
    pub async fn finalise_capture(
        &self,
        capture_id: &str,
        status: CaptureStatus,
        reason: Option<TerminationReason>,
        ended_at: i64,
    ) -> Result<bool, StoreError> {
        on_engine!(
            self,
            finalise_capture(
                capture_id,
                status.as_str(),
                reason.map(TerminationReason::as_str),
                ended_at
            )
        )
    }

    /// One capture, or `None`.
    pub async fn get_capture(&self, capture_id: &str) -> Result<Option<CaptureRecord>, StoreError> {
        on_engine!(self, get_capture(capture_id))
    }

    /// The newest `limit` captures, newest first.
    pub async fn list_captures(&self, limit: u32) -> Result<Vec<CaptureRecord>, StoreError> {
        on_engine!(self, list_captures(limit))
    }

    /// The captures still running (oldest first): what a new master resumes.
    pub async fn open_captures(&self) -> Result<Vec<CaptureRecord>, StoreError> {
        on_engine!(self, open_captures())
    }

    /// The sequence the next chunk of (`capture_id`, `node_id`) takes: one past the highest
    /// stored, 0 for none; where a resumed writer numbers on from.
    pub async fn next_capture_chunk(
        &self,
        capture_id: &str,
        node_id: &str,
    ) -> Result<i64, StoreError> {
        on_engine!(self, next_capture_chunk(capture_id, node_id))
    }

    /// A capture's segments, ordered by node id.
    pub async fn capture_segments(
        &self,
        capture_id: &str,
    ) -> Result<Vec<SegmentRecord>, StoreError> {
        on_engine!(self, capture_segments(capture_id))
    }

    /// Up to `limit` chunks of a capture (of one node when `node_id` is given), ordered by
    /// (node, sequence), after the chunk `after` = (node, sequence) when given.
    pub async fn capture_chunks(
        &self,
        capture_id: &str,
        node_id: Option<&str>,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<ChunkRecord>, StoreError> {
        on_engine!(self, capture_chunks(capture_id, node_id, after, limit))
    }

    /// Deletes up to `batch` ended captures finalised before `ended_before` (unix ms), with
    /// their segments and chunks; how many were deleted.
    pub async fn prune_ended_captures(
        &self,
        ended_before: i64,
        batch: u32,
    ) -> Result<u64, StoreError> {
        on_engine!(self, prune_ended_captures(ended_before, batch))
    }
}
