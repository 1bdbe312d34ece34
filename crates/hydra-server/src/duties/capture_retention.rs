//! Retention of captures: ended captures finalised longer than `Settings::capture_retention` ago
//! are deleted with their segments and chunks, in bounded batches, by the master only (the
//! singleton duty and batch loop of `crate::duties::retention`).

use std::time::Duration;

use hydra_api::system::now_ms;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How often the duty runs (the first run is at start).
const EVERY: Duration = Duration::from_secs(600);
/// Captures deleted per transaction (each with up to thousands of chunks).
const BATCH: u32 = 20;
/// Most batches per run; what is left waits for the next run.
const MAX_BATCHES: usize = 50;

/// Runs until `shutdown`: every [`EVERY`], while master, deletes ended captures past their
/// retention.
pub async fn prune_ended_captures(state: AppState, shutdown: CancellationToken) {
    crate::duties::retention::singleton_duty(&state, &shutdown, EVERY, || {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move {
            let retention_ms =
                i64::try_from(state.settings().capture_retention.as_millis()).unwrap_or(i64::MAX);
            let ended_before = now_ms().saturating_sub(retention_ms);
            let pruned = crate::duties::retention::prune_in_batches(
                &shutdown,
                BATCH,
                MAX_BATCHES,
                "ended captures",
                async |batch| {
                    state
                        .store()
                        .prune_ended_captures(ended_before, batch)
                        .await
                },
            )
            .await;
            if pruned > 0 {
                tracing::info!(
                    captures = pruned,
                    ended_before,
                    "[cleanup] ended captures past their retention pruned"
                );
            }
        }
    })
    .await;
}
