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
//!
//! This module is the directory (reports, placed sessions, slot reservations, placement rows)
//! and depends on no server state: applying a report (`crate::sessions::worker_report`) and the
//! sweep after workers that are gone (`crate::sessions::sweep`) are session duties that use it.
//! The HTTP handlers are in `crate::routes::workers`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use hydra_core::Role;
use hydra_core::placement::{PlacementError, PlacementSettings, WorkerLoad, least_loaded_worker};
use hydra_core::session::DEFAULT_AGENT_START_MS;
use hydra_store::{Store, StoreError};

use crate::registry::{NodeLocks, Registry};
use crate::sealing::Sealer;

/// How many earlier agent keys of a worker are remembered.
pub(crate) const RETIRED_KEYS: usize = 4;

/// The longest start bound a worker may report (10 min).
pub(crate) const MAX_AGENT_START_MS: i64 = 600_000;

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
    /// The client that asks this worker's agent, with the key it reported.
    pub fn agent(&self) -> hydra_client::AgentClient {
        hydra_client::AgentClient::new(&self.agent_url, Some(&self.agent_key))
    }

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

impl WorkerDirectory {
    /// Holds `id`'s report lock until the guard drops: one report of a worker at a time, so
    /// the sequence check and what follows are one step.
    pub(crate) async fn serialise_report(&self, id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.report_locks.0.lock(id).await
    }

    /// The memory half of a report: under the directory's lock, and only while `still_worker`
    /// holds (a node removed while its report was applied stays out), `update` changes `id`'s
    /// entry (made empty first if there is none).
    pub(crate) fn record_report(
        &self,
        id: &str,
        now: i64,
        still_worker: impl FnOnce() -> bool,
        update: impl FnOnce(&mut WorkerInfo),
    ) {
        let mut reports = self.inner.write().expect("worker directory poisoned");
        if !still_worker() {
            return;
        }
        update(
            reports
                .entry(id.to_owned())
                .or_insert_with(|| WorkerInfo::new(String::new(), String::new(), 0, now)),
        );
    }
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

    /// The session the slot is for.
    pub fn session_id(&self) -> &str {
        &self.session_id
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

    /// Takes in a worker's report as the store holds it (written by any replica): a worker new
    /// to this replica holds `live`, its stored live sessions; a known one keeps what this
    /// replica knows (sequence, placements) and takes the report's fields when not older.
    pub fn follow_report(&self, id: &str, report: WorkerInfo, live: HashSet<String>) {
        let mut reports = self.inner.write().expect("worker directory poisoned");
        match reports.get_mut(id) {
            Some(known) => {
                if report.reported_at >= known.reported_at {
                    known.agent_url = report.agent_url;
                    known.agent_key = report.agent_key;
                    known.max_sessions = report.max_sessions;
                    known.reported_at = report.reported_at;
                }
                for session_id in live {
                    if !known.ended.contains(&session_id) {
                        known.placed.insert(session_id);
                    }
                }
            }
            None => {
                let mut report = report;
                report.placed = live;
                reports.insert(id.to_owned(), report);
            }
        }
    }

    /// Takes in a session as the store holds it (written by any replica): live on `worker_id`
    /// (`Some`) it holds a slot there and nowhere else; ended or gone (`None`) it holds none.
    pub fn follow_session(&self, session_id: &str, worker_id: Option<&str>) {
        let mut reports = self.inner.write().expect("worker directory poisoned");
        for (id, info) in reports.iter_mut() {
            if Some(id.as_str()) == worker_id {
                info.placed.insert(session_id.to_owned());
            } else if info.placed.remove(session_id) {
                info.reported_live.remove(session_id);
                info.ended.insert(session_id.to_owned());
            }
        }
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
        self.reserve_named(
            registry,
            district,
            excluded,
            |_| session_id.to_owned(),
            now,
            settings,
        )
    }

    /// As [`WorkerDirectory::reserve`], for a session whose id is made from the chosen worker's
    /// id (`session_id_for`), so the id can carry its node (`<node_id>:<uuid>`).
    pub fn reserve_named(
        &self,
        registry: &RwLock<Registry>,
        district: Option<&str>,
        excluded: &[String],
        session_id_for: impl FnOnce(&str) -> String,
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
        let session_id = session_id_for(&chosen);
        if let Some(info) = reports.get_mut(&chosen) {
            info.placed.insert(session_id.clone());
        }
        Ok(SlotReservation {
            directory: self.clone(),
            worker_id: chosen,
            session_id,
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
            // A node the mesh declared down since its last heartbeat is not placed on.
            last_heartbeat: node.counted_heartbeat(),
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
