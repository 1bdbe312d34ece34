//! Relay workers: what each worker's agent reported (how to reach it, its capacity, what it
//! runs), `GET /api/v1/workers`, `POST /api/v1/workers/{id}/report`, and the placement inputs
//! built from the registry view and the reports.
//!
//! Every agent sends a report at start and with each heartbeat. Placement reads the reports from
//! memory (`WorkerDirectory`); each report is also written to the store before it reaches
//! memory, and the directory is loaded from the store at server start, so sessions can be placed
//! right after a restart without waiting for every worker to report again. The agent's key is
//! stored sealed (`crate::sealing`), never in clear and never logged. A report is the truth about a worker: a
//! stored session of that worker that the report does not show running is marked `error`, so
//! an agent killed and started again leaves no session the server believes in but nobody runs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hydra_api::{ErrorBody, WorkerList, WorkerReport, WorkerView};
use hydra_core::placement::{PlacementError, PlacementSettings, WorkerLoad, least_loaded_worker};
use hydra_core::session::{
    Change, DEFAULT_AGENT_START_MS, ReportContext, ReportedSession, SessionState, StoredSession,
    reconcile, start_deadline_ms,
};
use hydra_core::{NodeStatus, Role};
use hydra_store::{SessionRecord, SessionStatus, Store, StoreError, WorkerReportRecord};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::registry::{NodeLocks, Registry};
use crate::sealing::Sealer;
use crate::state::{AppState, now_ms};

/// How many earlier agent keys of a worker are remembered.
const RETIRED_KEYS: usize = 4;

/// The longest start bound a worker may report (10 min).
const MAX_AGENT_START_MS: i64 = 600_000;

/// What one worker's agent last reported, and the sessions the server holds live on it.
#[derive(Clone)]
pub struct WorkerInfo {
    /// Base URL of the agent.
    pub agent_url: String,
    /// Bearer key for the agent's session API (never logged; stored only sealed).
    pub agent_key: String,
    /// Sessions at most.
    pub max_sessions: u32,
    /// When the report came (unix ms).
    pub reported_at: i64,
    /// The agent's bound on one start, in ms ([`DEFAULT_AGENT_START_MS`] when it did not say).
    pub start_timeout_ms: i64,
    /// The last report sequence applied for this agent run (`None`: not known).
    pub sequence: Option<u64>,
    /// When the server first heard from this agent run (0: loaded from the store).
    pub run_seen_at: i64,
    /// Keys of the agent's earlier runs (the last few): a late report of an earlier run is
    /// stale, not a new run.
    pub retired_keys: Vec<String>,
    /// Sessions the agent said are live (starting or running).
    pub reported_live: HashSet<String>,
    /// Sessions the server holds live on this worker: placements (in flight or acknowledged)
    /// until they end. A report never replaces this set, so it cannot lose a placement.
    pub placed: HashSet<String>,
    /// Sessions the server ended or gave up here while the agent may still report them live (a
    /// report made before the end): not counted, forgotten once a report no longer lists them.
    pub ended: HashSet<String>,
}

impl WorkerInfo {
    /// A worker as its report describes it, holding no placement yet.
    pub fn new(agent_url: String, agent_key: String, max_sessions: u32, reported_at: i64) -> Self {
        WorkerInfo {
            agent_url,
            agent_key,
            max_sessions,
            reported_at,
            start_timeout_ms: DEFAULT_AGENT_START_MS,
            sequence: None,
            run_seen_at: 0,
            retired_keys: Vec::new(),
            reported_live: HashSet::new(),
            placed: HashSet::new(),
            ended: HashSet::new(),
        }
    }

    /// Slots taken: every session the server placed there or the agent runs, each once.
    pub fn active_sessions(&self) -> u32 {
        let extra = self
            .reported_live
            .iter()
            .filter(|id| !self.placed.contains(*id))
            .count();
        u32::try_from(self.placed.len() + extra).unwrap_or(u32::MAX)
    }
}

impl std::fmt::Debug for WorkerInfo {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WorkerInfo")
            .field("agent_url", &self.agent_url)
            .field("max_sessions", &self.max_sessions)
            .field("active_sessions", &self.active_sessions())
            .finish_non_exhaustive()
    }
}

/// Reports of every worker, shared by the relay routes (in `AppState`). Placement, the end of
/// a session and a report all change a worker's slots under this one lock.
#[derive(Debug, Clone, Default)]
pub struct WorkerDirectory {
    inner: Arc<RwLock<HashMap<String, WorkerInfo>>>,
    /// Serialises the reports of one worker (sequence check, reconcile, apply).
    report_locks: Arc<ReportLocks>,
}

/// Sharded async locks for reports, one shard per worker id.
#[derive(Debug)]
struct ReportLocks(NodeLocks);

impl Default for ReportLocks {
    fn default() -> Self {
        ReportLocks(NodeLocks::new(64))
    }
}

/// A worker slot taken for one session. Dropped without [`SlotReservation::commit`] (the start
/// failed, or its task ended early), it gives the slot back; committed, the slot stays taken
/// until the session ends ([`WorkerDirectory::release`]).
#[derive(Debug)]
#[must_use = "a reservation dropped at once gives its slot back"]
pub struct SlotReservation {
    directory: WorkerDirectory,
    worker_id: String,
    session_id: String,
    committed: bool,
}

impl SlotReservation {
    /// The worker chosen.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Keeps the slot: the session was acknowledged.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for SlotReservation {
    fn drop(&mut self) {
        if !self.committed {
            self.directory.release(&self.worker_id, &self.session_id);
        }
    }
}

impl WorkerDirectory {
    /// The reports kept in `store`, each worker holding its stored live sessions (placements
    /// after the report included). A report whose key does not open (the admin token changed)
    /// is left out: that worker is placed again after its next report.
    pub async fn load(store: &Store, sealer: &Sealer) -> Result<WorkerDirectory, StoreError> {
        let mut live: HashMap<String, HashSet<String>> = HashMap::new();
        for session in store.list_live_sessions().await? {
            live.entry(session.worker_id)
                .or_default()
                .insert(session.id);
        }
        let mut reports = HashMap::new();
        for stored in store.list_worker_reports().await? {
            let Ok(agent_key) = sealer.open(&stored.worker_id, &stored.agent_key_sealed) else {
                tracing::warn!(worker_id = %stored.worker_id, "[controller] stored worker report has a key this admin token cannot open; waiting for the worker's next report");
                continue;
            };
            let mut info = WorkerInfo::new(
                stored.agent_url,
                agent_key,
                stored.max_sessions,
                stored.reported_at,
            );
            info.placed = live.remove(&stored.worker_id).unwrap_or_default();
            reports.insert(stored.worker_id, info);
        }
        if !reports.is_empty() {
            tracing::info!(
                workers = reports.len(),
                "[controller] worker reports loaded from the store"
            );
        }
        Ok(WorkerDirectory {
            inner: Arc::new(RwLock::new(reports)),
            report_locks: Arc::default(),
        })
    }

    /// One worker's report.
    pub fn get(&self, id: &str) -> Option<WorkerInfo> {
        self.inner
            .read()
            .expect("worker directory poisoned")
            .get(id)
            .cloned()
    }

    /// Sets a worker's report (benchmarks and tests; the server goes through `report`).
    pub fn put(&self, id: &str, info: WorkerInfo) {
        self.inner
            .write()
            .expect("worker directory poisoned")
            .insert(id.to_owned(), info);
    }

    /// Forgets a worker (its node was removed): it is neither placed on nor proxied to again.
    pub fn remove(&self, id: &str) -> bool {
        self.inner
            .write()
            .expect("worker directory poisoned")
            .remove(id)
            .is_some()
    }

    /// Gives back the slot `session_id` holds on `worker_id` (the session ended or failed).
    /// Releasing twice is harmless: a slot is a session id, not a count.
    pub fn release(&self, worker_id: &str, session_id: &str) {
        if let Some(info) = self
            .inner
            .write()
            .expect("worker directory poisoned")
            .get_mut(worker_id)
        {
            info.placed.remove(session_id);
            info.reported_live.remove(session_id);
            info.ended.insert(session_id.to_owned());
        }
    }

    /// Chooses the worker for `session_id` among the workers of `registry` (in `district`,
    /// when given; not in `excluded`) and takes one of its slots, all under the directory's
    /// lock, so two placements never take the same last slot and a report cannot overwrite it.
    pub fn reserve(
        &self,
        registry: &RwLock<Registry>,
        district: Option<&str>,
        excluded: &[String],
        session_id: &str,
        now: i64,
        settings: &PlacementSettings,
    ) -> Result<SlotReservation, PlacementError> {
        let mut reports = self.inner.write().expect("worker directory poisoned");
        let rows: Vec<WorkerRow> = {
            let registry = registry.read().expect("registry lock poisoned");
            worker_rows(&registry, &reports, district)
                .into_iter()
                .filter(|row| !excluded.contains(&row.id))
                .collect()
        };
        let loads: Vec<WorkerLoad<'_>> = rows.iter().map(WorkerRow::load).collect();
        let chosen = least_loaded_worker(&loads, now, settings)?.to_owned();
        if let Some(info) = reports.get_mut(&chosen) {
            info.placed.insert(session_id.to_owned());
        }
        Ok(SlotReservation {
            directory: self.clone(),
            worker_id: chosen,
            session_id: session_id.to_owned(),
            committed: false,
        })
    }

    /// Every report, by worker id.
    pub fn all(&self) -> HashMap<String, WorkerInfo> {
        self.inner
            .read()
            .expect("worker directory poisoned")
            .clone()
    }
}

/// One placement input row: a node with the worker role and the load of its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    /// Node id.
    pub id: String,
    /// Its last heartbeat.
    pub last_heartbeat: Option<i64>,
    /// Whether it is drained.
    pub drained: bool,
    /// Slots taken.
    pub active_sessions: u32,
    /// Slots at most (0 until it reported).
    pub max_sessions: u32,
}

impl WorkerRow {
    /// The borrowed form placement decides on.
    pub fn load(&self) -> WorkerLoad<'_> {
        WorkerLoad {
            id: &self.id,
            last_heartbeat: self.last_heartbeat,
            drained: self.drained,
            active_sessions: self.active_sessions,
            max_sessions: self.max_sessions,
        }
    }
}

/// The placement inputs: every node with the worker role (in `district`, when given), with its
/// heartbeat and drain flag from the registry and its capacity and load from its report. A
/// worker that never reported has no capacity (it cannot be reached).
fn worker_rows(
    registry: &Registry,
    reports: &HashMap<String, WorkerInfo>,
    district: Option<&str>,
) -> Vec<WorkerRow> {
    let row = |node: &hydra_core::Node| {
        let (active, max) = reports
            .get(&node.id)
            .map_or((0, 0), |info| (info.active_sessions(), info.max_sessions));
        WorkerRow {
            id: node.id.clone(),
            last_heartbeat: node.last_heartbeat,
            drained: node.drained,
            active_sessions: active,
            max_sessions: max,
        }
    };
    let workers = |node: &&hydra_core::Node| node.roles.contains(Role::Worker);
    match district {
        Some(district) => registry
            .in_district(district)
            .filter(workers)
            .map(row)
            .collect(),
        None => registry
            .all()
            .into_iter()
            .filter(workers)
            .map(row)
            .collect(),
    }
}

/// Every worker with its health and load.
#[utoipa::path(get, path = "/api/v1/workers", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, body = WorkerList), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<WorkerList>, ApiError> {
    state.require_admin(&headers)?;
    let now = now_ms();
    let timeout = state.heartbeat_timeout_ms();
    let settings = PlacementSettings {
        heartbeat_timeout_ms: timeout,
    };
    let reports = state.workers().all();
    let registry = state.registry().read().expect("registry lock poisoned");
    let workers = registry
        .all()
        .into_iter()
        .filter(|node| node.roles.contains(Role::Worker))
        .map(|node| {
            let report = reports.get(&node.id);
            let (active, max) = report.map_or((node.active_sessions, 0), |info| {
                (info.active_sessions(), info.max_sessions)
            });
            // The same rules placement decides with (`hydra_core::placement`).
            let load = WorkerLoad {
                id: &node.id,
                last_heartbeat: node.last_heartbeat,
                drained: node.drained,
                active_sessions: active,
                max_sessions: max,
            };
            WorkerView {
                id: node.id.clone(),
                name: node.name.clone(),
                district: node.district.clone(),
                venue: node.venue.clone(),
                status: node.status(now, timeout).as_str().to_owned(),
                healthy: report.is_some() && load.is_healthy(now, &settings),
                drained: node.drained,
                active_sessions: active,
                max_sessions: max,
                load: load.load_ratio(),
                agent_url: report.map(|info| info.agent_url.clone()),
                last_heartbeat: node.last_heartbeat.map(hydra_api::rfc3339),
            }
        })
        .collect();
    Ok(Json(WorkerList { workers }))
}

/// A worker's agent says how to reach it and what it runs (its own node token, or the admin
/// token). Stored sessions of this worker that it does not run are marked `error`; those it
/// reports stopped or failed take that status.
#[utoipa::path(post, path = "/api/v1/workers/{id}/report", tag = "sessions", request_body = WorkerReport,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Worker node id")),
    responses((status = 204, description = "Recorded"), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(report): Json<WorkerReport>,
) -> Result<StatusCode, ApiError> {
    match state.caller(&headers)? {
        Caller::Admin => {}
        Caller::Node(caller) if caller == id => {}
        Caller::Node(_) => {
            return Err(ApiError::forbidden(format!(
                "a node token may only report for its own node, not {id:?}"
            )));
        }
    }
    // Trust checks (issue 7 items 3 and 4): the node must be an enrolled worker, its agent URL
    // one of its enrolled addresses (or allowed), its capacity capped by the server.
    let enrolled = state
        .registry()
        .read()
        .expect("registry lock poisoned")
        .get(&id)
        .map(|node| {
            let addresses: Vec<std::net::IpAddr> =
                node.lan_ip.into_iter().chain(node.wg_ip).collect();
            (node.roles.contains(Role::Worker), addresses)
        });
    let enrolled = match enrolled {
        None => return Err(ApiError::not_found(format!("node {id:?} is not enrolled"))),
        Some((false, _)) => {
            return Err(ApiError::invalid(format!(
                "node {id:?} does not have the worker role"
            )));
        }
        Some((true, addresses)) => addresses,
    };
    let settings = state.settings();
    let trusted = crate::report_checks::check_report(
        &id,
        &report,
        &enrolled,
        settings.max_sessions_per_worker,
        &settings.agent_url_hosts,
    )?;
    let mut report = report;
    report.agent_url = trusted.agent_url;
    report.max_sessions = trusted.max_sessions;
    apply_report(&state, &id, report, trusted.clamped_from).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Applies a valid report of worker `id`: ignored when older than the last one applied for the
/// same agent run; otherwise the stored sessions are reconciled with it, it is stored, and the
/// directory takes its address, capacity and live sessions (keeping the server's placements).
async fn apply_report(
    state: &AppState,
    id: &str,
    report: WorkerReport,
    clamped_from: Option<u32>,
) -> Result<(), ApiError> {
    let directory = state.workers();
    // One report of a worker at a time, so the sequence check and what follows are one step.
    let _serial = directory.report_locks.0.lock(id).await;
    let now = now_ms();
    let known = directory.get(id);
    let same_run = known
        .as_ref()
        .is_some_and(|known| known.agent_key == report.agent_key);
    if same_run
        && let (Some(last), Some(sequence)) =
            (known.as_ref().and_then(|k| k.sequence), report.sequence)
        && sequence <= last
    {
        tracing::debug!(worker_id = %id, sequence, last, "[controller] stale worker report ignored");
        return Ok(());
    }
    if known
        .as_ref()
        .is_some_and(|known| known.retired_keys.contains(&report.agent_key))
    {
        tracing::debug!(worker_id = %id, "[controller] report of an earlier agent run ignored");
        return Ok(());
    }
    let run_seen_at = match &known {
        Some(known) if same_run => known.run_seen_at,
        _ => now,
    };
    // Bounded, so a report cannot make the server wait on a start (or keep it `starting`)
    // for ever.
    let start_timeout_ms = report
        .start_timeout_ms
        .and_then(|ms| i64::try_from(ms).ok())
        .unwrap_or(DEFAULT_AGENT_START_MS)
        .clamp(1_000, MAX_AGENT_START_MS);
    let context = ReportContext {
        run_seen_at,
        start_deadline_ms: start_deadline_ms(start_timeout_ms),
    };
    reconcile_worker(state, id, &report, now, &context).await?;
    let reported_live: HashSet<String> = report
        .sessions
        .iter()
        .filter(|session| session.status.is_active())
        .map(|session| session.session_id.clone())
        .collect();
    let agent_url = report.agent_url.trim_end_matches('/').to_owned();
    // The store first, then memory: the directory never holds a report a restart would lose.
    let stored = WorkerReportRecord {
        worker_id: id.to_owned(),
        agent_url: agent_url.clone(),
        agent_key_sealed: state.sealer().seal(id, &report.agent_key),
        max_sessions: report.max_sessions,
        reported_at: now,
    };
    state.report_writes().submit(stored).await?;
    if !same_run {
        tracing::info!(worker_id = %id, %agent_url, max_sessions = report.max_sessions, "[controller] worker registered");
        if let Some(reported) = clamped_from {
            // Once per agent run (a new key), not on every report.
            tracing::warn!(worker_id = %id, reported_max_sessions = reported, max_sessions = report.max_sessions, "[controller] worker reports more sessions than max_sessions_per_worker; capped");
        }
    }
    let mut reports = directory.inner.write().expect("worker directory poisoned");
    if !state
        .registry()
        .read()
        .expect("registry lock poisoned")
        .get(id)
        .is_some_and(|node| node.roles.contains(Role::Worker))
    {
        // Removed while this report was being applied: it stays out of the directory.
        return Ok(());
    }
    let info = reports
        .entry(id.to_owned())
        .or_insert_with(|| WorkerInfo::new(String::new(), String::new(), 0, now));
    if info.agent_key != report.agent_key && !info.agent_key.is_empty() {
        let retired = std::mem::take(&mut info.agent_key);
        info.retired_keys.push(retired);
        let excess = info.retired_keys.len().saturating_sub(RETIRED_KEYS);
        info.retired_keys.drain(..excess);
    }
    info.agent_url = agent_url;
    info.agent_key = report.agent_key;
    info.max_sessions = report.max_sessions;
    info.reported_at = now;
    info.start_timeout_ms = start_timeout_ms;
    info.sequence = report.sequence;
    info.run_seen_at = run_seen_at;
    let listed: HashSet<&str> = report
        .sessions
        .iter()
        .map(|session| session.session_id.as_str())
        .collect();
    info.ended.retain(|id| listed.contains(id.as_str()));
    info.reported_live = reported_live
        .into_iter()
        .filter(|id| !info.ended.contains(id))
        .collect();
    Ok(())
}

/// Brings the live stored sessions of `worker_id` in line with its report
/// (`hydra_core::session::reconcile`): the changes are written together (one transaction), their
/// slots given back, and sessions the worker should not run are ended there.
async fn reconcile_worker(
    state: &AppState,
    worker_id: &str,
    report: &WorkerReport,
    now: i64,
    context: &ReportContext,
) -> Result<(), ApiError> {
    let records = state
        .store()
        .list_live_sessions_of_worker(worker_id)
        .await?;
    let stored: Vec<StoredSession<'_>> = records
        .iter()
        .map(|record| StoredSession {
            id: &record.id,
            state: record.status.into(),
            since: record.updated_at,
        })
        .collect();
    let reported: Vec<ReportedSession<'_>> = report
        .sessions
        .iter()
        .map(|session| ReportedSession {
            id: &session.session_id,
            state: session.status.into(),
            error: session.error.as_deref(),
        })
        .collect();
    let changes = reconcile(&stored, &reported, now, context);
    let mut updates = Vec::new();
    let mut released = Vec::new();
    for change in changes {
        match change {
            Change::Mark {
                id,
                state: next,
                error,
            } => {
                let Some(record) = records.iter().find(|record| record.id == id) else {
                    continue;
                };
                tracing::warn!(session_id = %id, %worker_id, status = next.as_str(), reason = error.as_deref().unwrap_or(""), "[controller] session state taken from the worker's report");
                let mut record = record.clone();
                record.status = next.into();
                record.error = error;
                record.updated_at = now;
                released.push(record.id.clone());
                updates.push(state.session_writes().update(record));
            }
            Change::EndOnWorker { id } => {
                if let Some(info) = state.workers().get(worker_id) {
                    end_on_worker(info, worker_id.to_owned(), id);
                }
            }
        }
    }
    // Submitted together, so they share one transaction.
    futures::future::try_join_all(updates).await?;
    for session_id in released {
        state.workers().release(worker_id, &session_id);
    }
    Ok(())
}

/// Asks a worker's agent, in the background, to end a session the control plane does not hold
/// live; a failure is logged and the next report asks again.
fn end_on_worker(info: WorkerInfo, worker_id: String, session_id: String) {
    tokio::spawn(async move {
        let answer = crate::sessions::agent_http()
            .delete(format!("{}/api/v1/sessions/{session_id}", info.agent_url))
            .bearer_auth(&info.agent_key)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match answer {
            Ok(answer)
                if answer.status().is_success() || answer.status() == StatusCode::NOT_FOUND =>
            {
                tracing::info!(%session_id, %worker_id, "[controller] ended a session the worker ran but the control plane does not hold");
            }
            Ok(answer) => {
                tracing::warn!(%session_id, %worker_id, status = answer.status().as_u16(), "[controller] worker refused to end a session it should not run");
            }
            Err(error) => {
                tracing::warn!(%session_id, %worker_id, %error, "[controller] worker does not answer; cannot end a session it should not run");
            }
        }
    });
}

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
        if let Err(error) = sweep_once(&state, now_ms()).await {
            tracing::warn!(error = %error.message, "[controller] sweep of gone workers failed; trying again");
        }
    }
}

/// One round of [`sweep`] at `now`; returns the sessions it marked `error`.
pub async fn sweep_once(state: &AppState, now: i64) -> Result<Vec<String>, ApiError> {
    let timeout_ms = state.heartbeat_timeout_ms();
    let live = state.store().list_live_sessions().await?;
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
