//! What every handler shares: the store, the registry view, the relay workers' reports, settings
//! and the admin token digest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hydra_core::SelectionSettings;
use hydra_store::Store;

use crate::auth::{Caller, bearer, digests_equal, hash_token};
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::group_commit::{ChunkWriter, HeartbeatWriter, ReportWriter, SessionWriter};
use crate::registry::{Registry, SharedRegistry};
use crate::sealing::Sealer;
use crate::workers::WorkerDirectory;

/// Settings of a running server, resolved from flags, environment and config file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A node is online while its last heartbeat is younger than this.
    pub heartbeat_timeout: Duration,
    /// The URL other replicas and clients reach this one at.
    pub public_url: String,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Most sessions the server places on one worker, whatever its report says.
    pub max_sessions_per_worker: u32,
    /// Hosts a worker's `agent_url` may name besides the node's enrolled addresses (IPs or DNS
    /// names; e.g. `127.0.0.1` for a colocated worker or loopback tests).
    pub agent_url_hosts: Vec<String>,
    /// Ended sessions (`stopped`, `error`) older than this are pruned.
    pub session_retention: Duration,
    /// This replica's id (`--replica-id`), unique among the replicas of one database.
    pub replica_id: String,
    /// The master lease's TTL and renewal period (replicas on PostgreSQL).
    pub lease: hydra_core::mastership::LeaseTiming,
    /// Ended captures finalised longer ago than this are pruned (issue 12).
    pub capture_retention: Duration,
    /// A body a head reported unreachable on both paths is left out of that head's answers this
    /// long, unless nothing else is left (`--unreachable-for`, issue 13).
    pub unreachable_for: Duration,
}

impl Settings {
    /// Default of `max_sessions_per_worker`.
    pub const DEFAULT_MAX_SESSIONS_PER_WORKER: u32 = 64;
    /// Default of `session_retention`: 7 days.
    pub const DEFAULT_SESSION_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Default of `capture_retention`: 7 days.
    pub const DEFAULT_CAPTURE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Default of `unreachable_for`: 60 s.
    pub const DEFAULT_UNREACHABLE_FOR: Duration = Duration::from_secs(60);
}

impl Default for Settings {
    /// The defaults of `hydra server` (listening on 127.0.0.1:7070); tests and benchmarks
    /// override what they need with `..Settings::default()`.
    fn default() -> Settings {
        Settings {
            heartbeat_timeout: Duration::from_secs(60),
            public_url: "http://127.0.0.1:7070".to_owned(),
            body_limit_bytes: 64 * 1024,
            max_sessions_per_worker: Settings::DEFAULT_MAX_SESSIONS_PER_WORKER,
            agent_url_hosts: Vec::new(),
            session_retention: Settings::DEFAULT_SESSION_RETENTION,
            replica_id: "local".to_owned(),
            lease: hydra_core::mastership::LeaseTiming::DEFAULT,
            capture_retention: Settings::DEFAULT_CAPTURE_RETENTION,
            unreachable_for: Settings::DEFAULT_UNREACHABLE_FOR,
        }
    }
}

/// Shared state of the server; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    registry: SharedRegistry,
    fleet: Fleet,
    settings: Settings,
    admin_digest: String,
    store_healthy: AtomicBool,
    /// A request failed on the storage engine since the probe's last round.
    storage_failed: AtomicBool,
    heartbeats: HeartbeatWriter,
    session_writes: SessionWriter,
    report_writes: ReportWriter,
    chunk_writes: ChunkWriter,
    _writer_tasks: [tokio::task::JoinHandle<()>; 4],
    workers: WorkerDirectory,
    sealer: Sealer,
    feed: crate::feed::ViewFeed,
    replica: crate::replica::ReplicaState,
    captures: crate::captures::Captures,
    /// The peer mesh as this replica sees it (off unless [`AppState::join_mesh`]).
    cluster: hydra_mesh::ClusterHandle,
    /// The mesh's socket and section, taken by `serve_with`, which runs it as a duty.
    mesh_start: std::sync::Mutex<Option<crate::mesh::MeshStart>>,
    /// What heads reported about their bodies' paths (this replica's memory, bounded).
    head_memory: std::sync::Mutex<hydra_core::learning::HeadMemory>,
}

impl AppState {
    /// Loads the registry view and the relay workers' last reports from `store` (so sessions
    /// can be placed before any worker reports again).
    pub async fn new(
        store: Store,
        settings: Settings,
        admin_token: &str,
    ) -> Result<AppState, hydra_store::StoreError> {
        // Read before the views load: what is written meanwhile is applied again, harmlessly.
        let feed = crate::feed::start_feed(&store).await?;
        let registry = Registry::load(&store).await?;
        let sealer = Sealer::from_admin_token(admin_token);
        let workers = WorkerDirectory::load(&store, &sealer).await?;
        crate::report_checks::recheck_stored(
            &registry,
            &workers,
            settings.max_sessions_per_worker,
            &settings.agent_url_hosts,
        );
        let (heartbeats, heartbeat_task) = HeartbeatWriter::heartbeats(store.clone());
        let events = crate::events::EventBus::default();
        let (session_writes, session_task) =
            SessionWriter::sessions_with_events(store.clone(), events.clone());
        let (report_writes, report_task) = ReportWriter::reports(store.clone());
        let (chunk_writes, chunk_task) = ChunkWriter::chunks(store.clone());
        let registry: SharedRegistry = Arc::new(RwLock::new(registry));
        let fleet = Fleet::with_events(store.clone(), registry.clone(), heartbeats.clone(), events);
        let replica = crate::replica::ReplicaState::new(
            settings.replica_id.clone(),
            settings.public_url.clone(),
            settings.lease,
        );
        let settings_unreachable_for_ms = settings.unreachable_for.as_millis();
        Ok(AppState {
            inner: Arc::new(Inner {
                store,
                registry,
                fleet,
                settings,
                admin_digest: hash_token(admin_token),
                store_healthy: AtomicBool::new(true),
                storage_failed: AtomicBool::new(false),
                heartbeats,
                session_writes,
                report_writes,
                chunk_writes,
                _writer_tasks: [heartbeat_task, session_task, report_task, chunk_task],
                workers,
                sealer,
                feed,
                replica,
                captures: crate::captures::Captures::default(),
                cluster: hydra_mesh::ClusterHandle::default(),
                mesh_start: std::sync::Mutex::new(None),
                head_memory: std::sync::Mutex::new(hydra_core::learning::HeadMemory::new(
                    hydra_core::learning::LearningSettings {
                        unreachable_for_ms: i64::try_from(settings_unreachable_for_ms)
                            .unwrap_or(i64::MAX),
                        ..hydra_core::learning::LearningSettings::default()
                    },
                )),
            }),
        })
    }

    /// Makes this replica a member of the peer mesh (`cluster:`) once served: the socket and
    /// keys are ready (`hydra_mesh::start::prepare`); `serve_with` runs the mesh and the watcher
    /// that marks nodes the mesh declares down `unreachable`.
    pub fn join_mesh(
        &self,
        prepared: hydra_mesh::start::Prepared,
        section: hydra_mesh::ClusterSection,
    ) {
        *self
            .inner
            .mesh_start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(crate::mesh::MeshStart { prepared, section });
    }

    /// The peer mesh as this replica sees it (`GET /api/v1/cluster`).
    pub fn cluster(&self) -> &hydra_mesh::ClusterHandle {
        &self.inner.cluster
    }

    pub(crate) fn take_mesh_start(&self) -> Option<crate::mesh::MeshStart> {
        self.inner
            .mesh_start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The durable store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The registry view (read it under the lock, never across an await). Nodes change only
    /// through [`AppState::fleet`].
    pub fn registry(&self) -> &RwLock<Registry> {
        &self.inner.registry
    }

    /// The fleet service: the only way to change a node (store and view together).
    pub fn fleet(&self) -> &Fleet {
        &self.inner.fleet
    }

    /// The group-commit heartbeat writer.
    pub fn heartbeats(&self) -> &HeartbeatWriter {
        &self.inner.heartbeats
    }

    /// The group-commit writer of session records: every session insert and update goes
    /// through it, so concurrent placements share fsyncs.
    pub fn session_writes(&self) -> &SessionWriter {
        &self.inner.session_writes
    }

    /// The group-commit writer of worker reports.
    pub fn report_writes(&self) -> &ReportWriter {
        &self.inner.report_writes
    }

    /// The relay workers' reports (placement reads them from memory).
    pub fn workers(&self) -> &WorkerDirectory {
        &self.inner.workers
    }

    /// Where the views are in the change feed (see `crate::feed`).
    pub fn feed(&self) -> &crate::feed::ViewFeed {
        &self.inner.feed
    }

    /// Seals and opens the agent keys kept in the store.
    pub fn sealer(&self) -> &Sealer {
        &self.inner.sealer
    }

    /// This replica's identity and who is master.
    pub fn replica(&self) -> &crate::replica::ReplicaState {
        &self.inner.replica
    }

    /// The capture chunk writer (group commit), shared by every capture writer.
    pub fn chunk_writes(&self) -> &ChunkWriter {
        &self.inner.chunk_writes
    }

    /// The captures this server runs now.
    pub fn captures(&self) -> &crate::captures::Captures {
        &self.inner.captures
    }

    /// What heads reported about their bodies' paths; lock it briefly, never across an await.
    pub fn head_memory(&self) -> std::sync::MutexGuard<'_, hydra_core::learning::HeadMemory> {
        self.inner
            .head_memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Server settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Selection settings derived from the server settings.
    pub fn selection_settings(&self) -> SelectionSettings {
        SelectionSettings {
            heartbeat_timeout_ms: self.heartbeat_timeout_ms(),
            ..SelectionSettings::default()
        }
    }

    /// The heartbeat timeout in ms.
    pub fn heartbeat_timeout_ms(&self) -> i64 {
        i64::try_from(self.inner.settings.heartbeat_timeout.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether storage is healthy: the last probe answered and no request failed on it since.
    pub fn store_healthy(&self) -> bool {
        self.inner.store_healthy.load(Ordering::Relaxed)
    }

    /// A request failed on the storage engine: health is `degraded` until a probe round passes
    /// without another failure.
    pub fn note_storage_failure(&self) {
        self.inner.storage_failed.store(true, Ordering::Relaxed);
        self.set_store_healthy(false);
    }

    /// Whether a request failed on storage since the last call (and forgets it).
    pub fn take_storage_failure(&self) -> bool {
        self.inner.storage_failed.swap(false, Ordering::Relaxed)
    }

    /// Records the outcome of a store probe; logs only changes.
    pub fn set_store_healthy(&self, healthy: bool) {
        let was = self.inner.store_healthy.swap(healthy, Ordering::Relaxed);
        match (was, healthy) {
            (true, false) => {
                tracing::warn!("[controller] storage engine stopped answering; status degraded")
            }
            (false, true) => tracing::info!("[controller] storage engine answers again; status ok"),
            _ => {}
        }
    }

    /// Requires the admin token.
    pub fn require_admin(&self, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
        match self.caller(headers)? {
            Caller::Admin => Ok(()),
            Caller::Node(_) => Err(ApiError::forbidden("this call needs the admin token")),
        }
    }

    /// Identifies the caller by its bearer token: the admin token or a node's own token.
    pub fn caller(&self, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
        let digest = hash_token(bearer(headers)?);
        if digests_equal(&digest, &self.inner.admin_digest) {
            return Ok(Caller::Admin);
        }
        // The map lookup is keyed by a SHA-256 digest: its timing says nothing about the token.
        let registry = self.registry().read().expect("registry lock poisoned");
        match registry.node_with_token(&digest) {
            Some(id) => Ok(Caller::Node(id.to_owned())),
            None => Err(ApiError::unauthorized("unknown token")),
        }
    }
}
