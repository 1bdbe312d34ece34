//! Durable state of the control plane behind one API, on two engines: SQLite (the embedded
//! default, one file in the data dir, WAL) and PostgreSQL (shared by replicas).
//!
//! Architecture invariant: every method returns only after the write is durable (SQLite WAL with
//! `synchronous=FULL`, PostgreSQL commit), so an acknowledged write survives `kill -9`.
//! Migrations of each engine live in `migrations/<engine>/` and run at [`Store::connect`].
//! One conformance suite (`tests/it/conformance.rs`) runs against both engines.

mod captures;
mod engine;
mod enrolment;
mod error;
mod feed;
mod lease;
mod node_config;
mod postgres;
mod records;
mod session_queries;
mod sqlite;
pub mod testing;
mod write_ids;

use std::collections::HashMap;
use std::path::Path;

use hydra_core::{LatencySample, Node, Transport};

pub use captures::{CaptureRecord, ChunkAppend, ChunkRecord, SegmentRecord};
pub use error::StoreError;
pub use feed::{CHANGES_CHANNEL, Change, ChangeKind, ChangesSince, latency_key};
pub use lease::{LeaseRecord, MasterBeacon, ReplicaRecord};
pub use node_config::NodeConfigRecord;
pub use records::{SessionRecord, SessionStatus, SessionWrite, WorkerReportRecord};
pub use write_ids::WriteId;

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Engine {
    /// The engine's name as shown in health answers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// A handle to the store; cheap to clone (a connection pool inside).
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite engine.
    Sqlite(sqlite::SqliteStore),
    /// PostgreSQL engine.
    Postgres(postgres::PgStore),
}

/// Calls the same method on whichever engine backs the store.
macro_rules! dispatch {
    ($store:expr, $method:ident($($arg:expr),*)) => {
        match $store {
            Store::Sqlite(engine) => engine.$method($($arg),*).await,
            Store::Postgres(engine) => engine.$method($($arg),*).await,
        }
    };
}

/// Calls the same non-async method on whichever engine backs the store.
macro_rules! dispatch_sync {
    ($store:expr, $method:ident($($arg:expr),*)) => {
        match $store {
            Store::Sqlite(engine) => engine.$method($($arg),*),
            Store::Postgres(engine) => engine.$method($($arg),*),
        }
    };
}

impl Store {
    /// Opens (creating when missing) the SQLite file at `path` and applies its migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(sqlite::SqliteStore::open(path).await?))
    }

    /// Connects to PostgreSQL at `url` (`postgres://...`) and applies its migrations.
    pub async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        Ok(Store::Postgres(postgres::PgStore::open(url).await?))
    }

    /// The engine behind this store.
    pub fn engine(&self) -> Engine {
        match self {
            Store::Sqlite(_) => Engine::Sqlite,
            Store::Postgres(_) => Engine::Postgres,
        }
    }

    /// Checks that the engine answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, ping())
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        dispatch!(self, close())
    }

    // ---- replicas: the master lease, the fence, the beacon ----

    /// Arms the write fence for `replica_id`: from now on every write of this handle (and its
    /// clones) needs a term ([`Store::set_fence_term`]) and commits only while the lease row
    /// holds this id and term, checked in the write's own transaction. For replicas on
    /// PostgreSQL; a single replica never arms it.
    pub fn arm_fence(&self, replica_id: &str) {
        dispatch_sync!(self, fence()).arm(replica_id);
    }

    /// Another handle on the same pools with a write fence of its own, unarmed: how a test
    /// stands in a second replica on the same database without a second pool.
    pub fn unfenced(&self) -> Store {
        match self {
            Store::Sqlite(engine) => Store::Sqlite(engine.unfenced()),
            Store::Postgres(engine) => Store::Postgres(engine.unfenced()),
        }
    }

    /// The term this replica's writes are fenced with; `None` (not master) refuses every write
    /// at once with [`StoreError::NotMaster`].
    pub fn set_fence_term(&self, term: Option<i64>) {
        dispatch_sync!(self, fence()).set_term(term);
    }

    /// The lease row, or `None` before any replica took it.
    pub async fn lease(&self) -> Result<Option<LeaseRecord>, StoreError> {
        dispatch!(self, lease())
    }

    /// Takes the lease for `holder` for `ttl_ms` (by the database clock) with a new term, when
    /// it has expired or `force` (the caller holds the beacon, so the holder's session ended).
    /// Answers the new term, or `None` when another replica holds it. Never fenced.
    pub async fn acquire_lease(
        &self,
        holder: &str,
        ttl_ms: i64,
        force: bool,
    ) -> Result<Option<i64>, StoreError> {
        dispatch!(self, acquire_lease(holder, ttl_ms, force))
    }

    /// Extends the lease by `ttl_ms` from the database's now, only while it still holds
    /// `holder` and `term`; `false`: another replica took it (this one is deposed).
    pub async fn renew_lease(
        &self,
        holder: &str,
        term: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, renew_lease(holder, term, ttl_ms))
    }

    /// Expires the lease now when it holds `holder` and `term` (a clean step-down, so another
    /// replica takes it at once); `false` when it did not.
    pub async fn release_lease(&self, holder: &str, term: i64) -> Result<bool, StoreError> {
        dispatch!(self, release_lease(holder, term))
    }

    /// Records that replica `id` is alive and reached at `base_url` (by the database clock).
    pub async fn heartbeat_replica(&self, id: &str, base_url: &str) -> Result<(), StoreError> {
        dispatch!(self, heartbeat_replica(id, base_url))
    }

    /// Every replica that ever ran on this database, ordered by id.
    pub async fn list_replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        dispatch!(self, list_replicas())
    }

    /// The master's liveness beacon on a dedicated connection (PostgreSQL); `None` on SQLite,
    /// which runs a single replica.
    pub fn beacon(&self) -> Option<MasterBeacon> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(engine) => Some(engine.beacon()),
        }
    }

    // ---- nodes ----

    /// Inserts a new node with the hash of its token; `Conflict` when the id exists.
    pub async fn insert_node(&self, node: &Node, token_hash: &str) -> Result<(), StoreError> {
        dispatch!(self, insert_node(node, token_hash))
    }

    /// Every node, ordered by id.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        dispatch!(self, list_nodes())
    }

    /// One node, or `None`.
    pub async fn get_node(&self, id: &str) -> Result<Option<Node>, StoreError> {
        dispatch!(self, get_node(id))
    }

    /// The stored hash of a node's token, or `None` when the node does not exist.
    pub async fn node_token_hash(&self, id: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, node_token_hash(id))
    }

    /// `(node id, token hash)` of every node, for the server's token index.
    pub async fn list_token_hashes(&self) -> Result<Vec<(String, String)>, StoreError> {
        dispatch!(self, list_token_hashes())
    }

    /// Removes a node (and its latency samples and worker report); `false` when it did not
    /// exist.
    pub async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
        dispatch!(self, delete_node(id))
    }

    /// Records a heartbeat; `vram_mb` replaces the stored value only when given.
    /// `false` when the node does not exist.
    pub async fn record_heartbeat(
        &self,
        id: &str,
        heartbeat: &Heartbeat,
    ) -> Result<bool, StoreError> {
        let found = self
            .record_heartbeats(&[(id.to_owned(), *heartbeat)])
            .await?;
        Ok(found.first().copied().unwrap_or(false))
    }

    /// Records many heartbeats in one transaction (group commit: one fsync for the batch).
    /// Answers, in order, whether each node exists; all or none are written.
    pub async fn record_heartbeats(
        &self,
        batch: &[(String, Heartbeat)],
    ) -> Result<Vec<bool>, StoreError> {
        dispatch!(self, record_heartbeats(batch))
    }

    /// Moves a node to another district and venue; `false` when it does not exist.
    pub async fn move_node(
        &self,
        id: &str,
        district: &str,
        venue: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, move_node(id, district, venue))
    }

    /// Drains or undrains a node; `false` when it does not exist.
    pub async fn set_drained(&self, id: &str, drained: bool) -> Result<bool, StoreError> {
        dispatch!(self, set_drained(id, drained))
    }

    // ---- enrolment tokens ----

    /// Stores a new one-time enrolment token (its digest), usable until `expires_at` (unix ms).
    pub async fn create_enrolment_token(
        &self,
        token_hash: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        dispatch!(
            self,
            create_enrolment_token(token_hash, created_at, expires_at)
        )
    }

    /// Enrols `node` (with its own token's hash) by consuming the enrolment token with
    /// `enrolment_token_hash`, both in one transaction. `false`, with nothing written, when that
    /// token is unknown, used or expired at `now`; `Conflict` (token left unused) when the id
    /// is taken.
    pub async fn enrol_with_token(
        &self,
        node: &Node,
        node_token_hash: &str,
        enrolment_token_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(
            self,
            enrol_with_token(node, node_token_hash, enrolment_token_hash, now)
        )
    }

    // ---- latency ----

    /// Records the latest connect time a head measured to a body (replacing the previous one).
    pub async fn record_latency(&self, sample: &LatencyRecord) -> Result<(), StoreError> {
        dispatch!(self, record_latency(sample))
    }

    /// Records many samples in one transaction (one fsync); a later sample of the same (head,
    /// body) in the batch wins. All or none are written.
    pub async fn record_latencies(&self, samples: &[LatencyRecord]) -> Result<(), StoreError> {
        dispatch!(self, record_latencies(samples))
    }

    /// The latest sample per (head, body): `head_id -> body_id -> sample`.
    pub async fn list_latencies(
        &self,
    ) -> Result<HashMap<String, HashMap<String, LatencySample>>, StoreError> {
        dispatch!(self, list_latencies())
    }

    // ---- sessions ----

    /// Inserts a session record; `Conflict` when the id exists.
    pub async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let applied = self
            .write_sessions(&[SessionWrite::Insert(session.clone())])
            .await?;
        if applied.first().copied().unwrap_or(false) {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                what: format!("session {:?}", session.id),
            })
        }
    }

    /// Replaces the mutable fields of a session (worker, status, error, port, stream URL,
    /// updated_at); `false` when it does not exist.
    pub async fn update_session(&self, session: &SessionRecord) -> Result<bool, StoreError> {
        let applied = self
            .write_sessions(&[SessionWrite::Update(session.clone())])
            .await?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    /// Applies many session writes, in order, in one transaction (group commit: one fsync for
    /// the batch). Answers, in order, whether each was applied (see [`SessionWrite`]); all or
    /// none are durable when it returns.
    pub async fn write_sessions(&self, batch: &[SessionWrite]) -> Result<Vec<bool>, StoreError> {
        dispatch!(self, write_sessions(batch))
    }

    /// One session, or `None`.
    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        dispatch!(self, get_session(id))
    }

    /// Every session, oldest first.
    pub async fn list_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        dispatch!(self, list_sessions())
    }

    /// One page of sessions matching `filter`, newest first (by `created_at`, then id), at most
    /// `limit`, starting after `after` (`(created_at, id)` of the last session of the previous
    /// page), through the `sessions_created` index.
    pub async fn list_sessions_page(
        &self,
        filter: &SessionFilter,
        limit: u32,
        after: Option<(i64, &str)>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        dispatch!(self, list_sessions_page(filter, limit, after))
    }

    /// Deletes at most `batch` ended sessions (`stopped`, `error`) last changed before
    /// `ended_before` (unix ms), in one transaction; answers how many went (fewer than `batch`:
    /// none is left).
    pub async fn prune_ended_sessions(
        &self,
        ended_before: i64,
        batch: u32,
    ) -> Result<u64, StoreError> {
        dispatch!(self, prune_ended_sessions(ended_before, batch))
    }

    /// Every session of one worker, oldest first (through the `sessions_worker` index).
    pub async fn list_sessions_of_worker(
        &self,
        worker_id: &str,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        dispatch!(self, list_sessions_of_worker(worker_id))
    }

    /// The live (`starting` or `running`) sessions of one worker, oldest first, through the
    /// `sessions_live` partial index: ended sessions are never read.
    pub async fn list_live_sessions_of_worker(
        &self,
        worker_id: &str,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        dispatch!(self, list_live_sessions_of_worker(worker_id))
    }

    /// Every live (`starting` or `running`) session, oldest first.
    pub async fn list_live_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        dispatch!(self, list_live_sessions())
    }

    /// Removes a session record; `false` when it did not exist.
    pub async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        dispatch!(self, delete_session(id))
    }

    /// How many sessions each worker has `starting` or `running` (workers with none are absent).
    pub async fn active_sessions_by_worker(&self) -> Result<HashMap<String, u32>, StoreError> {
        dispatch!(self, active_sessions_by_worker())
    }

    // ---- relay worker reports ----

    /// Stores a worker's report, replacing its previous one.
    pub async fn put_worker_report(&self, report: &WorkerReportRecord) -> Result<(), StoreError> {
        self.put_worker_reports(std::slice::from_ref(report)).await
    }

    /// Stores many worker reports in one transaction (group commit); all or none are written,
    /// and a later report of one worker in the batch wins.
    pub async fn put_worker_reports(&self, batch: &[WorkerReportRecord]) -> Result<(), StoreError> {
        dispatch!(self, put_worker_reports(batch))
    }

    /// One worker's stored report, or `None`.
    pub async fn get_worker_report(
        &self,
        worker_id: &str,
    ) -> Result<Option<WorkerReportRecord>, StoreError> {
        dispatch!(self, get_worker_report(worker_id))
    }

    /// The latest sample `head_id` measured to `body_id`, or `None`.
    pub async fn get_latency(
        &self,
        head_id: &str,
        body_id: &str,
    ) -> Result<Option<LatencySample>, StoreError> {
        dispatch!(self, get_latency(head_id, body_id))
    }

    // ---- change feed ----

    /// The highest revision this process's writes committed (0 before the first): a write's
    /// answer carries it, so a client can ask any replica to have reached it. Never below the
    /// write's own revision, and always committed.
    pub fn written_revision(&self) -> i64 {
        match self {
            Store::Sqlite(engine) => engine.written_revision(),
            Store::Postgres(engine) => engine.written_revision(),
        }
    }

    /// The identity of this database's change feed (random, made once): revisions of two
    /// feeds are not comparable.
    pub async fn feed_id(&self) -> Result<String, StoreError> {
        dispatch!(self, feed_id())
    }

    /// The newest committed revision.
    pub async fn current_revision(&self) -> Result<i64, StoreError> {
        dispatch!(self, current_revision())
    }

    /// The changes of the revisions after `after`, at most `revisions` revisions of them, in
    /// revision order; or [`ChangesSince::Pruned`] when some of them were pruned.
    pub async fn changes_since(
        &self,
        after: i64,
        revisions: u32,
    ) -> Result<ChangesSince, StoreError> {
        dispatch!(self, changes_since(after, revisions))
    }

    /// Deletes the change rows up to revision `through` (followers behind it reload whole
    /// views); answers how many went.
    pub async fn prune_changes(&self, through: i64) -> Result<u64, StoreError> {
        dispatch!(self, prune_changes(through))
    }

    /// A listener woken at each commit of any replica's write (PostgreSQL), on a connection of
    /// its own; `None` on SQLite, whose only writer is this process.
    pub async fn listen_changes(&self) -> Result<Option<ChangeListener>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(engine) => engine.listen_changes().await.map(Some),
        }
    }

    // ---- write ids ----

    /// The status the write with id `id` answered when it was applied, or `None` when no write
    /// with that id was applied (or its id was pruned).
    pub async fn applied_write(&self, id: u128) -> Result<Option<u16>, StoreError> {
        dispatch!(self, applied_write(id))
    }

    /// Forgets the write ids applied before `applied_before` (unix ms); answers how many went.
    pub async fn prune_write_ids(&self, applied_before: i64) -> Result<u64, StoreError> {
        dispatch!(self, prune_write_ids(applied_before))
    }

    /// Every stored worker report, ordered by worker id.
    pub async fn list_worker_reports(&self) -> Result<Vec<WorkerReportRecord>, StoreError> {
        dispatch!(self, list_worker_reports())
    }
}

/// Wake-ups of the change feed (PostgreSQL `LISTEN`), on a dedicated connection.
#[derive(Debug)]
pub struct ChangeListener {
    listener: sqlx::postgres::PgListener,
}

impl ChangeListener {
    /// Waits for the next committed revision any replica announced. An error means the
    /// connection was lost (notifications may be lost with it): the caller catches up from the
    /// table and listens again.
    pub async fn recv(&mut self) -> Result<i64, StoreError> {
        match self.listener.try_recv().await? {
            Some(notification) => Ok(notification.payload().parse().unwrap_or(0)),
            None => Err(StoreError::Engine(sqlx::Error::PoolClosed)),
        }
    }
}

/// What a heartbeat changes on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// When the server received it (unix ms).
    pub at: i64,
    /// Idle flag.
    pub idle: bool,
    /// Sessions the node runs.
    pub active_sessions: u32,
    /// GPU memory, when reported.
    pub vram_mb: Option<u64>,
    /// The sender's write id, claimed in the heartbeat's transaction: a repeat of an applied
    /// heartbeat changes nothing.
    pub write_id: Option<WriteId>,
}

/// Which sessions a listing shows; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only this state.
    pub status: Option<SessionStatus>,
    /// Only this worker's.
    pub worker_id: Option<String>,
    /// Only those asked for this head.
    pub head_id: Option<String>,
}

/// A connect time measured by a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyRecord {
    /// The head that measured.
    pub head_id: String,
    /// The body measured.
    pub body_id: String,
    /// The address family used.
    pub transport: Transport,
    /// Connect time in ms.
    pub rtt_ms: u32,
    /// When it was reported (unix ms).
    pub measured_at: i64,
}
