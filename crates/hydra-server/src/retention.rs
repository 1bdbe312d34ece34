//! Retention of session history: ended sessions (`stopped`, `error`) whose last change is older
//! than `Settings::session_retention` are deleted by a background duty, in bounded batches, so
//! the sessions table (and every listing of it) stops growing with the fleet's age. Applied write
//! ids (`write_ids.rs`) older than [`WRITE_ID_RETENTION`] are forgotten by the same duty.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::state::{AppState, now_ms};

/// How often the duty runs (the first run is at start).
const EVERY: Duration = Duration::from_secs(600);
/// Sessions deleted per transaction: short enough not to hold the writer long.
const BATCH: u32 = 1_000;
/// Most batches per run; what is left waits for the next run.
const MAX_BATCHES: usize = 100;
/// How long an applied write id is remembered: a journal replayed later than this (an agent cut
/// off from every master for a week) may apply a write twice.
pub const WRITE_ID_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Runs until `shutdown`: every [`EVERY`], deletes ended sessions past their retention.
pub async fn prune_ended_sessions(state: AppState, shutdown: CancellationToken) {
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
            i64::try_from(state.settings().session_retention.as_millis()).unwrap_or(i64::MAX);
        let ended_before = now_ms().saturating_sub(retention_ms);
        let mut pruned: u64 = 0;
        for _batch in 0..MAX_BATCHES {
            if shutdown.is_cancelled() {
                return;
            }
            match state
                .store()
                .prune_ended_sessions(ended_before, BATCH)
                .await
            {
                Ok(count) => {
                    pruned += count;
                    if count < u64::from(BATCH) {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "[cleanup] pruning ended sessions failed; next run retries");
                    break;
                }
            }
        }
        let ids_before = now_ms()
            .saturating_sub(i64::try_from(WRITE_ID_RETENTION.as_millis()).unwrap_or(i64::MAX));
        match state.store().prune_write_ids(ids_before).await {
            Ok(0) => {}
            Ok(count) => {
                tracing::info!(
                    write_ids = count,
                    "[cleanup] applied write ids past their retention pruned"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "[cleanup] pruning write ids failed; next run retries");
            }
        }
        if pruned > 0 {
            tracing::info!(
                sessions = pruned,
                ended_before,
                "[cleanup] ended sessions past their retention pruned"
            );
        }
    }
}
