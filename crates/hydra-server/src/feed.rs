//! Views that follow every write: the follower task that keeps this replica's in-memory views
//! (registry nodes, token digests, latencies, worker reports, placed sessions) current with what
//! every replica wrote, and the read-your-writes layer (`X-Hydra-Revision` on answers,
//! `min_revision=N` on requests).
//!
//! The follower is woken by PostgreSQL `LISTEN` (a dedicated connection), by this replica's own
//! writes, and by a timer; each time it catches up by revision from the `changes` table, so a
//! lost notification or a reconnect loses nothing. Each change re-reads the changed row: applying
//! one twice is harmless. On SQLite this process is the only writer and patches its views itself
//! after each write, so no follower runs and the view's revision is the store's last write's.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hydra_api::ErrorCode;
use hydra_store::{ChangeKind, ChangesSince, Engine, SessionStatus, Store, StoreError};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::state::{AppState, now_ms};

/// How often the follower catches up without a wake-up (the bound on a lost notification).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Revisions read per round trip.
const WINDOW: u32 = 1_000;
/// Most windows per catch-up: the rest waits for the next wake-up.
const MAX_WINDOWS: usize = 1_000;
/// Bound on one store call of the follower.
const STORE_CALL: Duration = Duration::from_secs(10);
/// How long a read with `min_revision` waits for the view by default.
pub const MIN_REVISION_WAIT: Duration = Duration::from_secs(2);

/// Where this replica's views are in the change feed; shared by the follower, health and the
/// read-your-writes layer.
#[derive(Debug)]
pub struct ViewFeed {
    /// The revision every change up to which the views show.
    revision: watch::Sender<i64>,
    /// Since when (unix ms) the views are known to be behind (0: not behind): a wake-up named a
    /// newer revision, or a catch-up failed (then: since the last one that succeeded).
    behind_since_ms: AtomicI64,
    /// When the last catch-up reached the newest revision (unix ms).
    caught_up_at_ms: AtomicI64,
    /// Wakes the follower (this replica wrote).
    wake: Notify,
    /// Whether the follower failed last time (to log the change of state once).
    failing: Mutex<bool>,
    /// The store's feed identity (see `hydra_api::FEED_HEADER`).
    feed_id: String,
}

impl ViewFeed {
    /// Views of the feed `feed_id` loaded at `revision` (read before they were loaded).
    pub fn new(feed_id: String, revision: i64) -> ViewFeed {
        ViewFeed {
            feed_id,
            revision: watch::Sender::new(revision),
            behind_since_ms: AtomicI64::new(0),
            caught_up_at_ms: AtomicI64::new(now_ms()),
            wake: Notify::new(),
            failing: Mutex::new(false),
        }
    }

    /// The cluster id `check-master` answers: the store's feed id, made once per database, so
    /// every replica of one store names the same one and an independent server another.
    pub fn cluster_id(&self) -> &str {
        &self.feed_id
    }

    /// The views' revision.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Raises the views' revision (never lowers it).
    pub fn advance(&self, revision: i64) {
        self.revision.send_if_modified(|current| {
            let raised = revision > *current;
            if raised {
                *current = revision;
            }
            raised
        });
    }

    /// How far behind the views are known to be, in ms (0 when caught up).
    pub fn lag_ms(&self, now: i64) -> u64 {
        match self.behind_since_ms.load(Ordering::Relaxed) {
            0 => 0,
            since => u64::try_from(now.saturating_sub(since)).unwrap_or(0),
        }
    }

    fn note_behind(&self, since: i64) {
        let _ = self.behind_since_ms.compare_exchange(
            0,
            since.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn note_caught_up(&self, now: i64) {
        self.caught_up_at_ms.store(now, Ordering::Relaxed);
        self.behind_since_ms.store(0, Ordering::Relaxed);
    }

    /// Waits until the views reached `wanted`, at most `within`; `Err(revision)` with where
    /// they stand when time ran out.
    pub async fn wait_for(&self, wanted: i64, within: Duration) -> Result<(), i64> {
        let mut receiver = self.revision.subscribe();
        match tokio::time::timeout(within, receiver.wait_for(|revision| *revision >= wanted)).await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(self.revision()),
        }
    }

    /// Wakes the follower (this replica just wrote).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

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
            _ = feed.wake.notified() => {}
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
                    let mut failing = feed.failing.lock().expect("feed lock poisoned");
                    if *failing {
                        tracing::info!(
                            revision = through,
                            "[controller] change feed: caught up again"
                        );
                    }
                    *failing = false;
                    return;
                }
                feed.note_behind(now_ms());
            }
            Err(error) => {
                feed.note_behind(feed.caught_up_at_ms.load(Ordering::Relaxed));
                let mut failing = feed.failing.lock().expect("feed lock poisoned");
                if !*failing {
                    tracing::warn!(%error, revision = at, "[controller] change feed: cannot catch up; views stay at their revision");
                }
                *failing = true;
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

/// The read-your-writes layer: waits for `min_revision=N` (then removes it from the query, so
/// routes never see it) and sets `X-Hydra-Revision` on every answer: the revision the views
/// reached or, after a write, this replica's last write's, whichever is higher.
pub async fn read_your_writes(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match take_min_revision(request.uri()) {
        Err(error) => return error.into_response(),
        Ok((None, _, _)) => {}
        Ok((Some(_), Some(feed_id), uri)) if feed_id != state.feed().feed_id => {
            // A revision of another database (an independent server): it says nothing here.
            *request.uri_mut() = uri;
        }
        Ok((Some(wanted), _, uri)) => {
            *request.uri_mut() = uri;
            let feed = state.feed();
            if state.store().engine() == Engine::Sqlite {
                feed.advance(state.store().written_revision());
            }
            if let Err(at) = feed.wait_for(wanted, MIN_REVISION_WAIT).await {
                let lag_ms = feed.lag_ms(now_ms());
                return ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "this replica's view is at revision {at}, behind the min_revision {wanted} asked for (lag {lag_ms} ms); try another replica"
                    ),
                )
                .into_response();
            }
        }
    }
    let writes = !matches!(*request.method(), Method::GET | Method::HEAD);
    let mut response = next.run(request).await;
    let store = state.store();
    let feed = state.feed();
    if writes {
        if store.engine() == Engine::Sqlite {
            // The only writer patched its views before answering.
            feed.advance(store.written_revision());
        } else {
            feed.wake();
        }
    }
    let revision = feed.revision().max(store.written_revision());
    if let Ok(value) = HeaderValue::from_str(&revision.to_string()) {
        response
            .headers_mut()
            .insert(hydra_api::REVISION_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&feed.feed_id) {
        response.headers_mut().insert(hydra_api::FEED_HEADER, value);
    }
    response
}

/// `min_revision` from the query (a 400 naming it when it is not a revision), the feed it
/// counts in (`min_revision_feed`) and the URI without either.
type MinRevision = (Option<i64>, Option<String>, Uri);

fn take_min_revision(uri: &Uri) -> Result<MinRevision, ApiError> {
    let Some(query) = uri.query() else {
        return Ok((None, None, uri.clone()));
    };
    let mut wanted = None;
    let mut feed_id = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((hydra_api::MIN_REVISION_PARAM, value)) => {
                let revision = value.parse::<i64>().ok().filter(|revision| *revision >= 0);
                wanted = Some(revision.ok_or_else(|| {
                    ApiError::invalid(format!(
                        "min_revision: expected a revision (a whole number >= 0), got {value:?}"
                    ))
                })?);
            }
            Some((hydra_api::MIN_REVISION_FEED_PARAM, value)) => feed_id = Some(value.to_owned()),
            _ => kept.push(pair),
        }
    }
    if wanted.is_none() && feed_id.is_none() {
        return Ok((None, None, uri.clone()));
    }
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        rebuilt
            .parse()
            .map_err(|_| ApiError::invalid("min_revision: the query cannot be rebuilt"))?,
    );
    let uri = Uri::from_parts(parts).map_err(|_| ApiError::invalid("min_revision: bad URI"))?;
    Ok((wanted, feed_id, uri))
}

/// The revision health reports: on SQLite, the store's last write (the views follow it at
/// once).
pub fn view_revision(state: &AppState) -> i64 {
    let feed = state.feed();
    if state.store().engine() == Engine::Sqlite {
        feed.advance(state.store().written_revision());
    }
    feed.revision()
}

/// The feed's identity and the revision the views start from, read before they are loaded, so
/// nothing written while they load is skipped (it is applied again, harmlessly).
pub async fn start_feed(store: &Store) -> Result<ViewFeed, StoreError> {
    Ok(ViewFeed::new(
        store.feed_id().await?,
        store.current_revision().await?,
    ))
}

#[cfg(test)]
mod tests {
    use axum::http::Uri;

    use super::take_min_revision;

    #[test]
    fn min_revision_is_taken_out_of_the_query_and_checked() {
        let cases = [
            ("/a", "None None /a"),
            ("/a?x=1", "None None /a?x=1"),
            ("/a?min_revision=7", "Some(7) None /a"),
            ("/a?x=1&min_revision=7&y=2", "Some(7) None /a?x=1&y=2"),
            (
                "/a?min_revision=7&min_revision_feed=f1&x=1",
                "Some(7) Some(\"f1\") /a?x=1",
            ),
            ("/a?min_revision=-1", "400"),
            ("/a?min_revision=seven", "400"),
        ];
        for (input, expected) in cases {
            let uri: Uri = input.parse().unwrap();
            let got = match take_min_revision(&uri) {
                Ok((wanted, feed_id, uri)) => format!("{wanted:?} {feed_id:?} {uri}"),
                Err(error) => {
                    assert!(error.message.contains("min_revision"), "{}", error.message);
                    "400".to_owned()
                }
            };
            assert_eq!(got, expected, "{input}");
        }
    }
}
