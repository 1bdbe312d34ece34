//! Retention of captures: ended captures finalised longer than `Settings::capture_retention` ago
//! are deleted with their segments and chunks, in bounded batches. Issue 9 makes this a
//! master-only duty; it runs beside the other background duties in `lib.rs`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::state::{AppState, now_ms};

/// How often the duty runs (the first run is at start).
const EVERY: Duration = Duration::from_secs(600);
/// Captures deleted per transaction (each with up to thousands of chunks).
const BATCH: u32 = 20;
/// Most batches per run; what is left waits for the next run.
const MAX_BATCHES: usize = 50;

/// Runs until `shutdown`: every [`EVERY`], deletes ended captures past their retention.
pub async fn prune_ended_captures(state: AppState, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // A singleton duty: only the master prunes (it moves with the lease).
        if !state.replica().is_master() {
            continue;
        }
        let retention_ms =
            i64::try_from(state.settings().capture_retention.as_millis()).unwrap_or(i64::MAX);
        let ended_before = now_ms().saturating_sub(retention_ms);
        let mut pruned: u64 = 0;
        for _batch in 0..MAX_BATCHES {
            if shutdown.is_cancelled() {
                return;
            }
            match state
                .store()
                .prune_ended_captures(ended_before, BATCH)
                .await
            {
                Ok(count) => {
                    pruned += count;
                    if count < u64::from(BATCH) {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "[cleanup] pruning ended captures failed; next run retries");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::info!(
                captures = pruned,
                ended_before,
                "[cleanup] ended captures past their retention pruned"
            );
        }
    }
}
