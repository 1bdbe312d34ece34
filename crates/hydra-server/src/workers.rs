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

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hydra_api::{ErrorBody, SessionState, WorkerList, WorkerReport, WorkerView};
use hydra_core::placement::WorkerLoad;
use hydra_core::{NodeStatus, Role};
use hydra_store::{SessionStatus, Store, StoreError, WorkerReportRecord};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::sealing::Sealer;
use crate::state::{AppState, now_ms};

/// A `starting` session younger than this is left alone by reconciliation: its worker may not
/// have registered it when it sent its report.
const STARTING_GRACE_MS: i64 = 60_000;

/// What one worker's agent last reported.
#[derive(Clone)]
pub struct WorkerInfo {
    /// Base URL of the agent.
    pub agent_url: String,
    /// Bearer key for the agent's session API (never logged; stored only sealed).
    pub agent_key: String,
    /// Sessions at most.
    pub max_sessions: u32,
    /// Sessions holding a slot: from the report, plus placements since.
    pub active_sessions: u32,
    /// When the report came (unix ms).
    pub reported_at: i64,
}

impl std::fmt::Debug for WorkerInfo {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WorkerInfo")
            .field("agent_url", &self.agent_url)
            .field("max_sessions", &self.max_sessions)
            .field("active_sessions", &self.active_sessions)
            .finish_non_exhaustive()
    }
}

/// Reports of every worker, shared by the relay routes (in `AppState`).
#[derive(Debug, Clone, Default)]
pub struct WorkerDirectory {
    inner: Arc<RwLock<HashMap<String, WorkerInfo>>>,
}

impl WorkerDirectory {
    /// The reports kept in `store`, with each worker's slots recounted from its stored
    /// `starting`/`running` sessions (placements after the report included). A report whose key
    /// does not open (the admin token changed) is left out: that worker is placed again after
    /// its next report.
    pub async fn load(store: &Store, sealer: &Sealer) -> Result<WorkerDirectory, StoreError> {
        let active = store.active_sessions_by_worker().await?;
        let mut reports = HashMap::new();
        for stored in store.list_worker_reports().await? {
            let Ok(agent_key) = sealer.open(&stored.worker_id, &stored.agent_key_sealed) else {
                tracing::warn!(worker_id = %stored.worker_id, "[controller] stored worker report has a key this admin token cannot open; waiting for the worker's next report");
                continue;
            };
            let info = WorkerInfo {
                agent_url: stored.agent_url,
                agent_key,
                max_sessions: stored.max_sessions,
                active_sessions: active.get(&stored.worker_id).copied().unwrap_or(0),
                reported_at: stored.reported_at,
            };
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

    /// Replaces a worker's report.
    pub fn put(&self, id: &str, info: WorkerInfo) {
        self.inner
            .write()
            .expect("worker directory poisoned")
            .insert(id.to_owned(), info);
    }

    /// Changes a worker's slot count by `delta` (a placement or an end).
    pub fn adjust_active(&self, id: &str, delta: i64) {
        if let Some(info) = self
            .inner
            .write()
            .expect("worker directory poisoned")
            .get_mut(id)
        {
            let next = i64::from(info.active_sessions) + delta;
            info.active_sessions = u32::try_from(next.max(0)).unwrap_or(u32::MAX);
        }
    }

    /// Forgets a worker's report (it is placed again after its next report).
    pub fn remove(&self, id: &str) -> Option<WorkerInfo> {
        self.inner
            .write()
            .expect("worker directory poisoned")
            .remove(id)
    }

    /// Every report, by worker id.
    pub fn all(&self) -> HashMap<String, WorkerInfo> {
        self.inner
            .read()
            .expect("worker directory poisoned")
            .clone()
    }
}

/// The placement inputs: every node with the worker role (in `district`, when given), with
/// its heartbeat and drain flag from the registry and its capacity and load from its report. A
/// worker that never reported has no capacity (it cannot be reached).
pub fn worker_loads(
    state: &AppState,
    directory: &WorkerDirectory,
    district: Option<&str>,
) -> Vec<(String, Option<i64>, bool, u32, u32)> {
    let reports = directory.inner.read().expect("worker directory poisoned");
    let registry = state.registry().read().expect("registry lock poisoned");
    let capacity = |id: &str| {
        reports
            .get(id)
            .map_or((0, 0), |info| (info.active_sessions, info.max_sessions))
    };
    let row = |node: &hydra_core::Node| {
        let (active, max) = capacity(&node.id);
        (
            node.id.clone(),
            node.last_heartbeat,
            node.drained,
            active,
            max,
        )
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

/// Borrowed [`WorkerLoad`]s over [`worker_loads`]' rows.
pub fn as_loads(rows: &[(String, Option<i64>, bool, u32, u32)]) -> Vec<WorkerLoad<'_>> {
    rows.iter()
        .map(|(id, last_heartbeat, drained, active, max)| WorkerLoad {
            id,
            last_heartbeat: *last_heartbeat,
            drained: *drained,
            active_sessions: *active,
            max_sessions: *max,
        })
        .collect()
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
    let reports = state.workers().all();
    let registry = state.registry().read().expect("registry lock poisoned");
    let workers = registry
        .all()
        .into_iter()
        .filter(|node| node.roles.contains(Role::Worker))
        .map(|node| {
            let report = reports.get(&node.id);
            let online = node.status(now, timeout) == NodeStatus::Online;
            let (active, max) = report.map_or((node.active_sessions, 0), |info| {
                (info.active_sessions, info.max_sessions)
            });
            WorkerView {
                id: node.id.clone(),
                name: node.name.clone(),
                district: node.district.clone(),
                venue: node.venue.clone(),
                status: node.status(now, timeout).as_str().to_owned(),
                healthy: online && !node.drained && report.is_some(),
                drained: node.drained,
                active_sessions: active,
                max_sessions: max,
                load: if max == 0 {
                    1.0
                } else {
                    f64::from(active) / f64::from(max)
                },
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
    let now = now_ms();
    reconcile(&state, &id, &report, now).await?;
    let active = report
        .sessions
        .iter()
        .filter(|session| session.status.is_active())
        .count();
    let info = WorkerInfo {
        agent_url: trusted.agent_url,
        agent_key: report.agent_key,
        max_sessions: trusted.max_sessions,
        active_sessions: u32::try_from(active).unwrap_or(u32::MAX),
        reported_at: now,
    };
    // The store first, then memory: the directory never holds a report a restart would lose.
    let stored = WorkerReportRecord {
        worker_id: id.clone(),
        agent_url: info.agent_url.clone(),
        agent_key_sealed: state.sealer().seal(&id, &info.agent_key),
        max_sessions: info.max_sessions,
        reported_at: now,
    };
    state.report_writes().submit(stored).await?;
    let directory = state.workers();
    let known = directory.get(&id);
    if known
        .as_ref()
        .is_none_or(|known| known.agent_key != info.agent_key)
    {
        tracing::info!(worker_id = %id, agent_url = %info.agent_url, max_sessions = info.max_sessions, "[controller] worker registered");
        if let Some(reported) = trusted.clamped_from {
            // Once per agent start (a new key), not on every report.
            tracing::warn!(worker_id = %id, reported_max_sessions = reported, max_sessions = info.max_sessions, "[controller] worker reports more sessions than max_sessions_per_worker; capped");
        }
    }
    directory.put(&id, info);
    Ok(StatusCode::NO_CONTENT)
}

/// Brings the stored sessions of `worker_id` in line with its report.
async fn reconcile(
    state: &AppState,
    worker_id: &str,
    report: &WorkerReport,
    now: i64,
) -> Result<(), ApiError> {
    let reported: HashMap<&str, &hydra_api::WorkerSession> = report
        .sessions
        .iter()
        .map(|session| (session.session_id.as_str(), session))
        .collect();
    let mut updates = Vec::new();
    for mut record in state.store().list_sessions_of_worker(worker_id).await? {
        if !matches!(
            record.status,
            SessionStatus::Starting | SessionStatus::Running
        ) {
            continue;
        }
        let (status, error) = match reported.get(record.id.as_str()) {
            Some(session) => match session.status {
                SessionState::Starting | SessionState::Running => continue,
                SessionState::Stopped => (SessionStatus::Stopped, None),
                SessionState::Error => (SessionStatus::Error, session.error.clone()),
            },
            None if record.status == SessionStatus::Starting
                && now - record.created_at < STARTING_GRACE_MS =>
            {
                continue;
            }
            None => (
                SessionStatus::Error,
                Some("the worker no longer runs this session".to_owned()),
            ),
        };
        tracing::warn!(session_id = %record.id, %worker_id, status = status.as_str(), "[controller] session state taken from the worker's report");
        record.status = status;
        record.error = error;
        record.updated_at = now;
        updates.push(state.session_writes().update(record));
    }
    // Submitted together, so they share one transaction.
    futures::future::try_join_all(updates).await?;
    Ok(())
}
