//! The queries, written once: both engines accept the same SQL (`$n` parameters, `ON CONFLICT`
//! upserts), so one macro implements every store method for each engine's pool type.

use std::net::IpAddr;

use hydra_core::{CostTier, Node, Roles};
use sqlx::FromRow;

use crate::{SessionRecord, SessionStatus, StoreError, WorkerReportRecord};

/// A `nodes` row as both engines decode it.
#[derive(Debug, FromRow)]
pub(crate) struct NodeRow {
    id: String,
    name: String,
    roles: String,
    district: String,
    venue: String,
    owner: String,
    allowed_orgs: String,
    lan_ip: Option<String>,
    wg_ip: Option<String>,
    vram_mb: Option<i64>,
    cost_tier: String,
    drained: bool,
    idle: bool,
    active_sessions: i64,
    last_heartbeat: Option<i64>,
    enrolled_at: i64,
}

fn corrupt(column: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        column,
        detail: detail.to_string(),
    }
}

fn parse_ip(column: &'static str, text: Option<String>) -> Result<Option<IpAddr>, StoreError> {
    text.map(|text| {
        text.parse()
            .map_err(|error| corrupt(column, format!("{text:?}: {error}")))
    })
    .transpose()
}

impl TryFrom<NodeRow> for Node {
    type Error = StoreError;
    fn try_from(row: NodeRow) -> Result<Node, StoreError> {
        Ok(Node {
            roles: row
                .roles
                .parse::<Roles>()
                .map_err(|error| corrupt("nodes.roles", error))?,
            allowed_orgs: serde_json::from_str(&row.allowed_orgs)
                .map_err(|error| corrupt("nodes.allowed_orgs", error))?,
            lan_ip: parse_ip("nodes.lan_ip", row.lan_ip)?,
            wg_ip: parse_ip("nodes.wg_ip", row.wg_ip)?,
            vram_mb: row
                .vram_mb
                .map(|mb| u64::try_from(mb).map_err(|error| corrupt("nodes.vram_mb", error)))
                .transpose()?,
            cost_tier: row
                .cost_tier
                .parse::<CostTier>()
                .map_err(|error| corrupt("nodes.cost_tier", error))?,
            active_sessions: u32::try_from(row.active_sessions)
                .map_err(|error| corrupt("nodes.active_sessions", error))?,
            id: row.id,
            name: row.name,
            district: row.district,
            venue: row.venue,
            owner: row.owner,
            drained: row.drained,
            idle: row.idle,
            last_heartbeat: row.last_heartbeat,
            enrolled_at: row.enrolled_at,
            unreachable_since: None,
        })
    }
}

/// A `sessions` row as both engines decode it.
#[derive(Debug, FromRow)]
pub(crate) struct SessionRow {
    id: String,
    worker_id: String,
    body_ip: String,
    body_id: Option<String>,
    head_id: Option<String>,
    experience: Option<String>,
    port: Option<i64>,
    stream_url: Option<String>,
    status: String,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SessionRow> for SessionRecord {
    type Error = StoreError;
    fn try_from(row: SessionRow) -> Result<SessionRecord, StoreError> {
        Ok(SessionRecord {
            port: row
                .port
                .map(|port| u16::try_from(port).map_err(|error| corrupt("sessions.port", error)))
                .transpose()?,
            status: row
                .status
                .parse::<SessionStatus>()
                .map_err(|error| corrupt("sessions.status", error))?,
            id: row.id,
            worker_id: row.worker_id,
            body_ip: row.body_ip,
            body_id: row.body_id,
            head_id: row.head_id,
            experience: row.experience,
            stream_url: row.stream_url,
            error: row.error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A `worker_reports` row as both engines decode it.
#[derive(FromRow)]
pub(crate) struct WorkerReportRow {
    worker_id: String,
    agent_url: String,
    agent_key_sealed: String,
    max_sessions: i64,
    reported_at: i64,
}

impl TryFrom<WorkerReportRow> for WorkerReportRecord {
    type Error = StoreError;
    fn try_from(row: WorkerReportRow) -> Result<WorkerReportRecord, StoreError> {
        Ok(WorkerReportRecord {
            max_sessions: u32::try_from(row.max_sessions)
                .map_err(|error| corrupt("worker_reports.max_sessions", error))?,
            worker_id: row.worker_id,
            agent_url: row.agent_url,
            agent_key_sealed: row.agent_key_sealed,
            reported_at: row.reported_at,
            write_id: None,
        })
    }
}

/// Maps a unique-key violation to `Conflict`, anything else to `Engine`.
pub(crate) fn conflict_or(error: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &error {
        sqlx::Error::Database(database_error) if database_error.is_unique_violation() => {
            StoreError::Conflict { what: what() }
        }
        _ => StoreError::Engine(error),
    }
}

/// The `nodes` columns read into [`NodeRow`], as a literal so queries stay `&'static str`.
macro_rules! node_columns {
    () => {
        "id, name, roles, district, venue, owner, allowed_orgs, lan_ip, wg_ip, vram_mb, cost_tier, \
         drained, idle, active_sessions, last_heartbeat, enrolled_at"
    };
}
pub(crate) use node_columns;

/// The `sessions` columns read into [`SessionRow`].
macro_rules! session_columns {
    () => {
        "id, worker_id, body_ip, body_id, head_id, experience, port, stream_url, status, error, \
         created_at, updated_at"
    };
}
pub(crate) use session_columns;

/// Implements the store methods on `$store`, a struct with two pools of its engine: `reader`
/// for queries and `writer` for writes (SQLite: one connection, so writers queue in the pool
/// instead of sleeping in SQLite's busy handler; PostgreSQL: the same pool twice).
macro_rules! engine_queries {
    ($store:ident) => {
        use std::collections::HashMap;

        use hydra_core::{LatencySample, Node};

        use crate::engine::{NodeRow, WorkerReportRow, node_columns};
        use crate::{Heartbeat, LatencyRecord, WorkerReportRecord};

        impl $store {
            pub(crate) async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.reader).await?;
                Ok(())
            }

            /// Begins a write's transaction: every write of the store goes through here, so this
            /// is the one place where a write can be fenced (a replica that is no longer master
            /// writes nothing) and given a revision (the change feed replicas follow).
            pub(crate) async fn begin_write(&self) -> Result<crate::feed::Write<Db>, StoreError> {
                let mut transaction = self.writer.begin().await?;
                // A replica that no longer holds the lease's term writes nothing.
                self.check_fence(&mut transaction).await?;
                // The counter row stays locked until this transaction ends: revisions commit in
                // order (see `crate::feed`).
                let revision: i64 =
                    sqlx::query_scalar("UPDATE revisions SET value = value + 1 WHERE id = 1 RETURNING value")
                        .fetch_one(&mut *transaction)
                        .await?;
                if let Some(notify) = NOTIFY_REVISION {
                    sqlx::query(notify)
                        .bind(crate::feed::CHANGES_CHANNEL)
                        .bind(revision.to_string())
                        .execute(&mut *transaction)
                        .await?;
                }
                Ok(crate::feed::Write { transaction, revision, written: self.written.clone() })
            }

            pub(crate) fn written_revision(&self) -> i64 {
                self.written.load(std::sync::atomic::Ordering::SeqCst)
            }

            pub(crate) async fn close(&self) {
                self.writer.close().await;
                self.reader.close().await;
            }

            pub(crate) async fn insert_node(&self, node: &Node, token_hash: &str) -> Result<(), StoreError> {
                let mut transaction = self.begin_write().await?;
                let inserted: Result<(), StoreError> =
                    crate::engine::insert_node_on!(&mut *transaction, node, token_hash);
                inserted?;
                Self::record_change(&mut transaction, crate::ChangeKind::Node, &node.id).await?;
                transaction.commit().await?;
                Ok(())
            }

            pub(crate) async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
                let rows: Vec<NodeRow> = sqlx::query_as(concat!("SELECT ", node_columns!(), " FROM nodes ORDER BY id"))
                    .fetch_all(&self.reader)
                    .await?;
                rows.into_iter().map(Node::try_from).collect()
            }

            pub(crate) async fn get_node(&self, id: &str) -> Result<Option<Node>, StoreError> {
                let row: Option<NodeRow> = sqlx::query_as(concat!("SELECT ", node_columns!(), " FROM nodes WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.reader)
                    .await?;
                row.map(Node::try_from).transpose()
            }

            pub(crate) async fn node_token_hash(&self, id: &str) -> Result<Option<String>, StoreError> {
                Ok(sqlx::query_scalar("SELECT token_hash FROM nodes WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.reader)
                    .await?)
            }

            pub(crate) async fn list_token_hashes(&self) -> Result<Vec<(String, String)>, StoreError> {
                Ok(sqlx::query_as("SELECT id, token_hash FROM nodes").fetch_all(&self.reader).await?)
            }

            pub(crate) async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
                let mut transaction = self.begin_write().await?;
                sqlx::query("DELETE FROM latency WHERE head_id = $1 OR body_id = $1")
                    .bind(id)
                    .execute(&mut *transaction)
                    .await?;
                sqlx::query("DELETE FROM worker_reports WHERE worker_id = $1")
                    .bind(id)
                    .execute(&mut *transaction)
                    .await?;
                let deleted = sqlx::query("DELETE FROM nodes WHERE id = $1").bind(id).execute(&mut *transaction).await?;
                Self::record_change(&mut transaction, crate::ChangeKind::Node, id).await?;
                Self::record_change(&mut transaction, crate::ChangeKind::WorkerReport, id).await?;
                transaction.commit().await?;
                Ok(deleted.rows_affected() > 0)
            }

            pub(crate) async fn record_heartbeats(
                &self,
                batch: &[(String, Heartbeat)],
            ) -> Result<Vec<bool>, StoreError> {
                let mut transaction = self.begin_write().await?;
                let mut found = Vec::with_capacity(batch.len());
                for (id, heartbeat) in batch {
                    // A repeat of an applied write (same write id) changes nothing.
                    let apply: bool =
                        crate::write_ids::claim_write_on!(&mut *transaction, heartbeat.write_id, heartbeat.at)?;
                    if !apply {
                        found.push(true);
                        continue;
                    }
                    let updated = sqlx::query(
                        "UPDATE nodes SET last_heartbeat = $2, idle = $3, active_sessions = $4, \
                         vram_mb = COALESCE($5, vram_mb) WHERE id = $1",
                    )
                    .bind(id)
                    .bind(heartbeat.at)
                    .bind(heartbeat.idle)
                    .bind(i64::from(heartbeat.active_sessions))
                    .bind(crate::engine::vram_column(heartbeat.vram_mb)?)
                    .execute(&mut *transaction)
                    .await?;
                    if updated.rows_affected() == 0 {
                        let released: Result<(), StoreError> =
                            crate::write_ids::release_write_on!(&mut *transaction, heartbeat.write_id);
                        released?;
                    }
                    found.push(updated.rows_affected() > 0);
                    if updated.rows_affected() > 0 {
                        Self::record_change(&mut transaction, crate::ChangeKind::Node, id).await?;
                    }
                }
                transaction.commit().await?;
                Ok(found)
            }

            pub(crate) async fn move_node(&self, id: &str, district: &str, venue: &str) -> Result<bool, StoreError> {
                let mut transaction = self.begin_write().await?;
                let updated = sqlx::query("UPDATE nodes SET district = $2, venue = $3 WHERE id = $1")
                    .bind(id)
                    .bind(district)
                    .bind(venue)
                    .execute(&mut *transaction)
                    .await?;
                if updated.rows_affected() > 0 {
                    Self::record_change(&mut transaction, crate::ChangeKind::Node, id).await?;
                }
                transaction.commit().await?;
                Ok(updated.rows_affected() > 0)
            }

            pub(crate) async fn set_drained(&self, id: &str, drained: bool) -> Result<bool, StoreError> {
                let mut transaction = self.begin_write().await?;
                let updated = sqlx::query("UPDATE nodes SET drained = $2 WHERE id = $1")
                    .bind(id)
                    .bind(drained)
                    .execute(&mut *transaction)
                    .await?;
                if updated.rows_affected() > 0 {
                    Self::record_change(&mut transaction, crate::ChangeKind::Node, id).await?;
                }
                transaction.commit().await?;
                Ok(updated.rows_affected() > 0)
            }

            pub(crate) async fn record_latency(&self, sample: &LatencyRecord) -> Result<(), StoreError> {
                self.record_latencies(std::slice::from_ref(sample)).await
            }

            pub(crate) async fn record_latencies(&self, samples: &[LatencyRecord]) -> Result<(), StoreError> {
                let mut transaction = self.begin_write().await?;
                for sample in samples {
                    sqlx::query(
                        "INSERT INTO latency (head_id, body_id, transport, rtt_ms, measured_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (head_id, body_id) DO UPDATE SET transport = excluded.transport, \
                         rtt_ms = excluded.rtt_ms, measured_at = excluded.measured_at",
                    )
                    .bind(&sample.head_id)
                    .bind(&sample.body_id)
                    .bind(sample.transport.as_str())
                    .bind(i64::from(sample.rtt_ms))
                    .bind(sample.measured_at)
                    .execute(&mut *transaction)
                    .await?;
                    let key = crate::latency_key(&sample.head_id, &sample.body_id);
                    Self::record_change(&mut transaction, crate::ChangeKind::Latency, &key).await?;
                }
                transaction.commit().await?;
                Ok(())
            }

            pub(crate) async fn list_latencies(
                &self,
            ) -> Result<HashMap<String, HashMap<String, LatencySample>>, StoreError> {
                let rows: Vec<(String, String, i64, i64)> =
                    sqlx::query_as("SELECT head_id, body_id, rtt_ms, measured_at FROM latency")
                        .fetch_all(&self.reader)
                        .await?;
                let mut by_head: HashMap<String, HashMap<String, LatencySample>> = HashMap::new();
                for (head_id, body_id, rtt_ms, measured_at) in rows {
                    let rtt_ms = u32::try_from(rtt_ms)
                        .map_err(|error| crate::engine::corrupt_value("latency.rtt_ms", error))?;
                    by_head.entry(head_id).or_default().insert(body_id, LatencySample { rtt_ms, measured_at });
                }
                Ok(by_head)
            }

            pub(crate) async fn put_worker_reports(&self, batch: &[WorkerReportRecord]) -> Result<(), StoreError> {
                let mut transaction = self.begin_write().await?;
                for report in batch {
                    let apply: bool =
                        crate::write_ids::claim_write_on!(&mut *transaction, report.write_id, report.reported_at)?;
                    if !apply {
                        continue;
                    }
                    sqlx::query(
                        "INSERT INTO worker_reports (worker_id, agent_url, agent_key_sealed, max_sessions, reported_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (worker_id) DO UPDATE SET agent_url = excluded.agent_url, \
                         agent_key_sealed = excluded.agent_key_sealed, max_sessions = excluded.max_sessions, \
                         reported_at = excluded.reported_at",
                    )
                    .bind(&report.worker_id)
                    .bind(&report.agent_url)
                    .bind(&report.agent_key_sealed)
                    .bind(i64::from(report.max_sessions))
                    .bind(report.reported_at)
                    .execute(&mut *transaction)
                    .await?;
                    Self::record_change(&mut transaction, crate::ChangeKind::WorkerReport, &report.worker_id).await?;
                }
                transaction.commit().await?;
                Ok(())
            }

            pub(crate) async fn get_worker_report(&self, worker_id: &str) -> Result<Option<WorkerReportRecord>, StoreError> {
                let row: Option<WorkerReportRow> = sqlx::query_as(
                    "SELECT worker_id, agent_url, agent_key_sealed, max_sessions, reported_at \
                     FROM worker_reports WHERE worker_id = $1",
                )
                .bind(worker_id)
                .fetch_optional(&self.reader)
                .await?;
                row.map(WorkerReportRecord::try_from).transpose()
            }

            pub(crate) async fn get_latency(&self, head_id: &str, body_id: &str) -> Result<Option<LatencySample>, StoreError> {
                let row: Option<(i64, i64)> =
                    sqlx::query_as("SELECT rtt_ms, measured_at FROM latency WHERE head_id = $1 AND body_id = $2")
                        .bind(head_id)
                        .bind(body_id)
                        .fetch_optional(&self.reader)
                        .await?;
                row.map(|(rtt_ms, measured_at)| {
                    let rtt_ms = u32::try_from(rtt_ms)
                        .map_err(|error| crate::engine::corrupt_value("latency.rtt_ms", error))?;
                    Ok(LatencySample { rtt_ms, measured_at })
                })
                .transpose()
            }

            pub(crate) async fn list_worker_reports(&self) -> Result<Vec<WorkerReportRecord>, StoreError> {
                let rows: Vec<WorkerReportRow> = sqlx::query_as(
                    "SELECT worker_id, agent_url, agent_key_sealed, max_sessions, reported_at \
                     FROM worker_reports ORDER BY worker_id",
                )
                .fetch_all(&self.reader)
                .await?;
                rows.into_iter().map(WorkerReportRecord::try_from).collect()
            }
        }
    };
}

pub(crate) use engine_queries;

/// Inserts `$node` with `$token_hash` through `$executor` (a pool connection or a transaction):
/// one statement shared by a plain enrolment and one that consumes an enrolment token.
macro_rules! insert_node_on {
    ($executor:expr, $node:expr, $token_hash:expr) => {{
        let node: &hydra_core::Node = $node;
        let token_hash: &str = $token_hash;
        let allowed_orgs = serde_json::to_string(&node.allowed_orgs)
            .map_err(|error| crate::engine::corrupt_value("nodes.allowed_orgs", error))?;
        sqlx::query(
            "INSERT INTO nodes (id, name, roles, district, venue, owner, allowed_orgs, lan_ip, wg_ip, \
             vram_mb, cost_tier, drained, idle, active_sessions, last_heartbeat, enrolled_at, token_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&node.id)
        .bind(&node.name)
        .bind(node.roles.to_string())
        .bind(&node.district)
        .bind(&node.venue)
        .bind(&node.owner)
        .bind(allowed_orgs)
        .bind(node.lan_ip.map(|ip| ip.to_string()))
        .bind(node.wg_ip.map(|ip| ip.to_string()))
        .bind(crate::engine::vram_column(node.vram_mb)?)
        .bind(node.cost_tier.as_str())
        .bind(node.drained)
        .bind(node.idle)
        .bind(i64::from(node.active_sessions))
        .bind(node.last_heartbeat)
        .bind(node.enrolled_at)
        .bind(token_hash)
        .execute($executor)
        .await
        .map_err(|error| crate::engine::conflict_or(error, || format!("node {:?}", node.id)))?;
        Ok(())
    }};
}
pub(crate) use insert_node_on;

/// `vram_mb` as stored (a signed 64-bit column); a value that does not fit is refused rather
/// than written as a negative number that could not be read back.
pub(crate) fn vram_column(vram_mb: Option<u64>) -> Result<Option<i64>, StoreError> {
    vram_mb
        .map(|mb| {
            i64::try_from(mb).map_err(|error| corrupt("nodes.vram_mb", format!("{mb}: {error}")))
        })
        .transpose()
}

/// A value that cannot be written or read back in the expected form.
pub(crate) fn corrupt_value(column: &'static str, error: impl ToString) -> StoreError {
    corrupt(column, error)
}
