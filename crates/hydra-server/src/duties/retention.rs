//! Retention of session history: ended sessions (`stopped`, `error`) whose last change is older
//! than `Settings::session_retention` are deleted by a background duty, in bounded batches, so
//! the sessions table (and every listing of it) stops growing with the fleet's age. Applied write
//! ids (`write_ids.rs`) older than [`WRITE_ID_RETENTION`] are forgotten by the same duty.

use std::time::Duration;

use hydra_api::system::now_ms;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How often the duty runs (the first run is at start).
const EVERY: Duration = Duration::from_secs(600);
/// Sessions deleted per transaction: short enough not to hold the writer long.
const BATCH: u32 = 1_000;
/// Most batches per run; what is left waits for the next run.
const MAX_BATCHES: usize = 100;
/// How long an applied write id is remembered: a journal replayed later than this (an agent cut
/// off from every master for a week) may apply a write twice, so the agent drops such writes at
/// replay (`hydra_core::journal::expired`, from the same constant).
pub const WRITE_ID_RETENTION: Duration =
    Duration::from_millis(hydra_core::journal::WRITE_ID_RETENTION_MS.unsigned_abs());

/// Runs until `shutdown`: every [`EVERY`], deletes ended sessions past their retention.
pub async fn prune_ended_sessions(state: AppState, shutdown: CancellationToken) {
    singleton_duty(&state, &shutdown, EVERY, || {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move {
            let retention_ms =
                i64::try_from(state.settings().session_retention.as_millis()).unwrap_or(i64::MAX);
            let ended_before = now_ms().saturating_sub(retention_ms);
            let pruned = prune_in_batches(
                &shutdown,
                BATCH,
                MAX_BATCHES,
                "ended sessions",
                async |batch| {
                    state
                        .store()
                        .prune_ended_sessions(ended_before, batch)
                        .await
                },
            )
            .await;
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
    })
    .await;
}

/// How often a singleton duty looks at mastership: a new master runs it within this.
const MASTERSHIP_CHECK: Duration = Duration::from_secs(1);

/// Runs `run` while this replica is the master, until `shutdown`: at once when it becomes the
/// master (at start, or on a takeover, so a new master does not wait a whole period), then every
/// `every`. A singleton duty, which moves with the lease.
pub(crate) async fn singleton_duty<Fut>(
    state: &AppState,
    shutdown: &CancellationToken,
    every: Duration,
    mut run: impl FnMut() -> Fut,
) where
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(every.min(MASTERSHIP_CHECK));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_run: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !state.replica().is_master() {
            last_run = None;
            continue;
        }
        if last_run.is_none_or(|at| at.elapsed() >= every) {
            last_run = Some(tokio::time::Instant::now());
            run().await;
        }
    }
}

/// Calls `prune(batch)` (one transaction each) until a call deletes fewer than `batch` rows,
/// `max_batches` calls or shutdown; answers how many rows went. A failure is logged, naming
/// `what`, and ends the run (the next run retries).
pub(crate) async fn prune_in_batches<Fut>(
    shutdown: &CancellationToken,
    batch: u32,
    max_batches: usize,
    what: &str,
    mut prune: impl FnMut(u32) -> Fut,
) -> u64
where
    Fut: std::future::Future<Output = Result<u64, hydra_store::StoreError>>,
{
    let mut pruned: u64 = 0;
    for _ in 0..max_batches {
        if shutdown.is_cancelled() {
            break;
        }
        match prune(batch).await {
            Ok(count) => {
                pruned += count;
                if count < u64::from(batch) {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "[cleanup] pruning {what} failed; next run retries");
                break;
            }
        }
    }
    pruned
}
