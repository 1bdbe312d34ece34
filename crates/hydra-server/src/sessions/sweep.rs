//! The sweep: the background duty that ends the live sessions of workers that are gone.

use std::collections::HashMap;
use std::time::Duration;

use hydra_api::system::now_ms;
use hydra_core::NodeStatus;
use hydra_core::session::{DEFAULT_AGENT_START_MS, SessionState, start_deadline_ms};
use hydra_store::{SessionRecord, SessionStatus};

use crate::error::{ApiError, store_error};
use crate::state::AppState;

/// The background duty that cleans up after workers that are gone: every live session of a
/// worker that was removed or is offline past the heartbeat timeout, and every `starting`
/// session past its deadline, turns `error` and gives its slot back; removed workers leave the
/// directory. Runs until `shutdown`.
pub async fn sweep(state: AppState, shutdown: tokio_util::sync::CancellationToken) {
    let timeout = state.settings().heartbeat_timeout;
    let period = (timeout / 2).clamp(Duration::from_millis(200), Duration::from_secs(10));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // A singleton duty: only the master sweeps (it moves with the lease).
        if !state.replica().is_master() {
            continue;
        }
        if let Err(error) = sweep_once(&state, now_ms()).await {
            tracing::warn!(error = %error.message, "[controller] sweep of gone workers failed; trying again");
        }
    }
}

/// One round of [`sweep`] at `now`; returns the sessions it marked `error`.
pub async fn sweep_once(state: &AppState, now: i64) -> Result<Vec<String>, ApiError> {
    let timeout_ms = state.heartbeat_timeout_ms();
    let live = state
        .store()
        .list_live_sessions()
        .await
        .map_err(store_error)?;
    let start_bounds: HashMap<String, i64> = state
        .workers()
        .all()
        .into_iter()
        .map(|(id, info)| (id, info.start_timeout_ms))
        .collect();
    let mut gone: Vec<(SessionRecord, String)> = Vec::new();
    {
        let registry = state.registry().read().expect("registry lock poisoned");
        for record in live {
            let reason = match registry.get(&record.worker_id) {
                None => "the worker was removed".to_owned(),
                Some(node) if node.status(now, timeout_ms) == NodeStatus::Offline => {
                    "the worker stopped heartbeating".to_owned()
                }
                // A start past its deadline, even on a worker whose reports do not arrive.
                Some(_) if record.status == SessionStatus::Starting => {
                    let bound = start_bounds
                        .get(&record.worker_id)
                        .copied()
                        .unwrap_or(DEFAULT_AGENT_START_MS);
                    let deadline = start_deadline_ms(bound);
                    if now.saturating_sub(record.updated_at) < deadline {
                        continue;
                    }
                    format!("the session did not start within {} s", deadline / 1_000)
                }
                Some(_) => continue,
            };
            gone.push((record, reason));
        }
    }
    // The directory is read before the registry is locked: placement takes the directory's
    // lock and then the registry's, never the other way round.
    let known: Vec<String> = start_bounds.keys().cloned().collect();
    let removed: Vec<String> = {
        let registry = state.registry().read().expect("registry lock poisoned");
        known
            .into_iter()
            .filter(|id| registry.get(id).is_none())
            .collect()
    };
    for id in removed {
        state.workers().remove(&id);
    }
    let mut updates = Vec::new();
    let mut marked = Vec::new();
    for (mut record, reason) in gone {
        let from: SessionState = record.status.into();
        if !from.can_become(SessionState::Error) {
            continue;
        }
        tracing::warn!(session_id = %record.id, worker_id = %record.worker_id, %reason, "[controller] session marked error by the sweep");
        record.status = SessionStatus::Error;
        record.error = Some(reason);
        record.updated_at = now;
        marked.push((record.worker_id.clone(), record.id.clone()));
        updates.push(state.session_writes().update(record));
    }
    futures::future::try_join_all(updates).await?;
    for (worker_id, session_id) in &marked {
        state.workers().release(worker_id, session_id);
    }
    Ok(marked
        .into_iter()
        .map(|(_, session_id)| session_id)
        .collect())
}
