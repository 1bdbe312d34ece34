//! The change-feed follower: re-reads what other replicas (or this one) wrote, so the views
//! (registry, workers, sessions, events) follow the store; and the pruning of old change rows.

use std::collections::HashSet;
use std::time::Duration;

use hydra_api::system::now_ms;
use hydra_store::{ChangeKind, ChangesSince, Engine, SessionStatus, StoreError};
use tokio_util::sync::CancellationToken;

use crate::feed::{FOLLOW_EVERY, MAX_WINDOWS, STORE_CALL, WINDOW};
use crate::state::AppState;

/// The follower duty (PostgreSQL; returns at once on SQLite): runs until `shutdown`.
pub async fn follow(state: AppState, shutdown: CancellationToken) {
    if state.store().engine() != Engine::Postgres {
        return;
    }
    let mut listener: Option<hydra_store::ChangeListener> = None;
    let mut ticker = tokio::time::interval(FOLLOW_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listening_failed = false;
    loop {
        if listener.is_none() {
            match tokio::time::timeout(STORE_CALL, state.store().listen_changes()).await {
                Ok(Ok(Some(opened))) => {
                    if listening_failed {
                        tracing::info!("[controller] change feed: listening again");
                    }
                    listening_failed = false;
                    listener = Some(opened);
                }
                Ok(Ok(None)) => return,
                Ok(Err(error)) => {
                    if !listening_failed {
                        tracing::warn!(%error, "[controller] change feed: cannot listen; catching up on the timer");
                    }
                    listening_failed = true;
                }
                Err(_) => listening_failed = true,
            }
        }
        // Always after (re)listening: what was announced while nobody listened is in the table.
        catch_up(&state).await;
        let feed = state.feed();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            () = feed.woken() => {}
            heard = async {
                match listener.as_mut() {
                    Some(listener) => listener.recv().await,
                    None => std::future::pending().await,
                }
            } => match heard {
                Ok(revision) => {
                    if revision > feed.revision() {
                        feed.note_behind(now_ms());
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "[controller] change feed: listening connection lost; catching up from the table");
                    listening_failed = true;
                    listener = None;
                }
            },
        }
        metrics::gauge!("hydra_view_lag_seconds").set(feed.lag_ms(now_ms()) as f64 / 1000.0);
    }
}

/// Applies every change after the views' revision, window by window, up to the newest.
pub async fn catch_up(state: &AppState) {
    let feed = state.feed();
    for _window in 0..MAX_WINDOWS {
        let at = feed.revision();
        let outcome = async {
            let found = tokio::time::timeout(STORE_CALL, state.store().changes_since(at, WINDOW))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|error| error.to_string())?;
            match found {
                ChangesSince::Changes {
                    through,
                    latest,
                    changes,
                } => {
                    let mut seen = HashSet::new();
                    for change in changes {
                        if seen.insert((change.kind, change.key.clone())) {
                            apply(state, change.kind, &change.key)
                                .await
                                .map_err(|error| error.to_string())?;
                        }
                    }
                    Ok::<_, String>((through, latest))
                }
                ChangesSince::Pruned { latest, .. } => {
                    reload(state).await.map_err(|error| error.to_string())?;
                    Ok((latest, latest))
                }
            }
        }
        .await;
        match outcome {
            Ok((through, latest)) => {
                feed.advance(through);
                if through >= latest {
                    feed.note_caught_up(now_ms());
                    if feed.set_failing(false) {
                        tracing::info!(
                            revision = through,
                            "[controller] change feed: caught up again"
                        );
                    }
                    return;
                }
                feed.note_behind(now_ms());
            }
            Err(error) => {
                feed.note_failed_catch_up();
                if !feed.set_failing(true) {
                    tracing::warn!(%error, revision = at, "[controller] change feed: cannot catch up; views stay at their revision");
                }
                return;
            }
        }
    }
}

/// Re-reads one changed row into the views.
async fn apply(state: &AppState, kind: ChangeKind, key: &str) -> Result<(), StoreError> {
    let store = state.store();
    match kind {
        ChangeKind::Node => state.fleet().refresh(key).await?,
        ChangeKind::Latency => {
            let Some((head_id, body_id)) = key.split_once('\t') else {
                return Ok(());
            };
            let sample = store.get_latency(head_id, body_id).await?;
            let mut registry = state.registry().write().expect("registry lock poisoned");
            match sample {
                Some(sample) => registry.set_latency(head_id, body_id, sample),
                None => registry.remove_latency(head_id, body_id),
            }
        }
        ChangeKind::WorkerReport => refresh_worker(state, key).await?,
        ChangeKind::Session => {
            let session = store.get_session(key).await?;
            let live = session.as_ref().filter(|session| {
                matches!(
                    session.status,
                    SessionStatus::Starting | SessionStatus::Running
                )
            });
            state
                .workers()
                .follow_session(key, live.map(|session| session.worker_id.as_str()));
            // Another replica's write reaches this replica's event stream here (its own was
            // announced by its writer, and is skipped).
            if let Some(session) = session {
                state.fleet().events().publish_session(session);
            }
        }
        // Bundles are read from the store on each request.
        ChangeKind::NodeConfig => {}
    }
    Ok(())
}

/// Re-reads a worker's stored report into the directory (its placed sessions from the store
/// when the worker is new to this replica).
async fn refresh_worker(state: &AppState, worker_id: &str) -> Result<(), StoreError> {
    let store = state.store();
    let Some(stored) = store.get_worker_report(worker_id).await? else {
        state.workers().remove(worker_id);
        return Ok(());
    };
    let Ok(agent_key) = state.sealer().open(worker_id, &stored.agent_key_sealed) else {
        return Ok(());
    };
    let live: HashSet<String> = store
        .list_live_sessions_of_worker(worker_id)
        .await?
        .into_iter()
        .map(|session| session.id)
        .collect();
    state.workers().follow_report(
        worker_id,
        crate::workers::WorkerInfo::new(
            stored.agent_url,
            agent_key,
            stored.max_sessions,
            stored.reported_at,
        ),
        live,
    );
    Ok(())
}

/// Reloads every view from the store (the change rows this replica needed were pruned).
async fn reload(state: &AppState) -> Result<(), StoreError> {
    let store = state.store();
    let loaded = crate::registry::Registry::load(store).await?;
    *state.registry().write().expect("registry lock poisoned") = loaded;
    let mut workers: HashSet<String> = state.workers().all().into_keys().collect();
    workers.extend(
        store
            .list_worker_reports()
            .await?
            .into_iter()
            .map(|report| report.worker_id),
    );
    for worker_id in workers {
        refresh_worker(state, &worker_id).await?;
    }
    tracing::info!("[controller] change feed: views reloaded (behind the pruned horizon)");
    Ok(())
}

/// How often old change rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Change rows kept behind the newest revision: a replica further behind reloads its views.
const KEEP_REVISIONS: i64 = 100_000;

/// Runs until `shutdown`: every [`PRUNE_EVERY`], deletes change rows more than
/// [`KEEP_REVISIONS`] behind the newest (on any replica: pruning twice is harmless).
pub async fn prune_changes(state: AppState, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(PRUNE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let store = state.store();
        let pruned = async {
            let latest = store.current_revision().await?;
            match latest.checked_sub(KEEP_REVISIONS) {
                Some(through) if through > 0 => store.prune_changes(through).await,
                _ => Ok(0),
            }
        };
        match tokio::time::timeout(STORE_CALL, pruned).await {
            Ok(Ok(0)) => {}
            Ok(Ok(count)) => {
                tracing::info!(count, "[controller] change feed: old change rows pruned")
            }
            Ok(Err(error)) => tracing::warn!(%error, "[controller] change feed: pruning failed"),
            Err(_) => tracing::warn!("[controller] change feed: pruning timed out"),
        }
    }
}
