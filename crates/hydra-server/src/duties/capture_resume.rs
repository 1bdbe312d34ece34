//! Captures follow the master: when this replica becomes the master (a SQLite server at start,
//! a PostgreSQL replica that took the lease), it resumes every capture still `running` in the
//! store that no driver of its own runs; when it stops being the master (or shuts down), it
//! leaves the captures it runs to the next one. A resumed writer goes on from its segment's
//! stored `last_sequence` (`writer::ResumePoint`), so no line is stored twice.

use std::time::Duration;

use hydra_api::captures::MonitorFilters;
use hydra_api::system::now_ms;
use hydra_core::capture::{CaptureLimits, CaptureStatus, SegmentEnd};
use hydra_store::{CaptureRecord, StoreError};
use tokio_util::sync::CancellationToken;

use crate::captures::driver::{Driver, Resumed, Target};
use crate::captures::writer::ResumePoint;
use crate::state::AppState;

/// How often mastership is looked at: a takeover resumes the captures within this.
const EVERY: Duration = Duration::from_millis(500);
/// While master, the open captures are looked at again every this many rounds: a replica that
/// lost the lease and took it back between two rounds never looked like a follower here, but its
/// drivers stopped at their first fenced write, and their captures are still `running`.
const RECHECK_ROUNDS: u32 = 10;

/// Runs until `shutdown`: resumes the open captures each time this replica becomes the master
/// (again on the next round if reading them failed) and every [`RECHECK_ROUNDS`] rounds while it
/// is, leaves them when it stops being it.
pub async fn follow_mastership(state: AppState, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resumed_as_master = false;
    let mut rounds_as_master = 0_u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let master = state.replica().is_master();
        rounds_as_master = if master {
            rounds_as_master.wrapping_add(1)
        } else {
            0
        };
        // Resuming skips what this server runs, so looking again is harmless.
        let recheck = rounds_as_master.is_multiple_of(RECHECK_ROUNDS);
        if master && (!resumed_as_master || recheck) {
            match resume_open_captures(&state).await {
                Ok(()) => resumed_as_master = true,
                Err(error) => {
                    tracing::warn!(%error, "[capture] reading the open captures failed; next round retries");
                }
            }
        } else if !master && resumed_as_master {
            state.captures().abandon_all();
            resumed_as_master = false;
        }
    }
    state.captures().abandon_all();
}

/// Starts a driver for every open capture this server does not run.
async fn resume_open_captures(state: &AppState) -> Result<(), StoreError> {
    for record in state.store().open_captures().await? {
        if state.captures().runs(&record.id) {
            continue;
        }
        resume_capture(state, record).await?;
    }
    Ok(())
}

/// Resumes one capture: its running segments' writers go on from what is stored; the ones
/// that ended keep their end.
async fn resume_capture(state: &AppState, record: CaptureRecord) -> Result<(), StoreError> {
    let segments = state.store().capture_segments(&record.id).await?;
    let mut targets = Vec::new();
    let mut ended = Vec::new();
    for segment in segments {
        if segment.status != CaptureStatus::Running {
            let reason = segment
                .termination_reason
                .unwrap_or(hydra_core::capture::TerminationReason::SourceError);
            ended.push((
                segment.node_id,
                SegmentEnd {
                    status: segment.status,
                    reason,
                },
            ));
            continue;
        }
        let next_chunk = state
            .store()
            .next_capture_chunk(&record.id, &segment.node_id)
            .await?;
        let agent = state
            .workers()
            .get(&segment.node_id)
            .map(|worker| worker.agent());
        targets.push(Target {
            resume: Some(ResumePoint {
                after: segment
                    .last_sequence
                    .and_then(|sequence| u64::try_from(sequence).ok()),
                next_chunk,
                lines: u64::try_from(segment.line_count).unwrap_or(0),
                bytes: u64::try_from(segment.byte_count).unwrap_or(0),
            }),
            node_id: segment.node_id,
            agent,
        });
    }
    let Some(claim) = state.captures().claim(&record.id) else {
        return Ok(());
    };
    let limits = CaptureLimits {
        duration_ms: record.duration_ms,
        max_lines: record.max_lines.and_then(|value| u64::try_from(value).ok()),
        max_bytes: record.max_bytes.and_then(|value| u64::try_from(value).ok()),
    };
    let filters: MonitorFilters = serde_json::from_str(&record.filters).unwrap_or_default();
    tracing::info!(
        capture_id = %record.id,
        running = targets.len(),
        ended = ended.len(),
        age_ms = now_ms().saturating_sub(record.created_at),
        "[capture] capture resumed by this master"
    );
    let store = state.store().clone();
    state
        .captures()
        .spawn_driver(claim, |tail, stop, abandon| Driver {
            store,
            chunks: state.chunk_writes().clone(),
            capture_id: record.id,
            targets,
            filters,
            limits,
            tail,
            stop,
            abandon,
            resumed: Some(Resumed {
                started_at: record.created_at,
                ended,
            }),
        });
    Ok(())
}
