//! The change feed: every write transaction takes the next revision and lists what it changed,
//! so replicas can follow the store by revision (table `changes`, migration 0008).
//!
//! Gap safety: the revision comes from one counter row (`UPDATE revisions SET value = value + 1
//! RETURNING value`), whose row lock is held until the transaction ends. A second writer waits
//! for that lock, so revision `n + 1` is handed out only once `n` committed (or rolled back, which
//! gives `n` back). Hence once a follower reads the counter's committed value `c`, every revision
//! up to `c` is committed and visible: reading `changes` in `(last, c]` can never skip one that
//! commits later.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::StoreError;

/// The channel PostgreSQL replicas `LISTEN` on; each write transaction notifies its revision,
/// delivered at commit.
pub const CHANGES_CHANNEL: &str = "hydra_changes";

/// What a change touched; followers re-read that row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A `nodes` row (with its token hash); its removal also removes its latency and report.
    Node,
    /// A `latency` row; the key is the head id, a tab, the body id.
    Latency,
    /// A `worker_reports` row.
    WorkerReport,
    /// A `sessions` row.
    Session,
    /// A `node_configs` row.
    NodeConfig,
}

impl ChangeKind {
    /// The word stored in `changes.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Node => "node",
            ChangeKind::Latency => "latency",
            ChangeKind::WorkerReport => "worker_report",
            ChangeKind::Session => "session",
            ChangeKind::NodeConfig => "node_config",
        }
    }

    fn parse(word: &str) -> Result<ChangeKind, StoreError> {
        Ok(match word {
            "node" => ChangeKind::Node,
            "latency" => ChangeKind::Latency,
            "worker_report" => ChangeKind::WorkerReport,
            "session" => ChangeKind::Session,
            "node_config" => ChangeKind::NodeConfig,
            other => {
                return Err(StoreError::Corrupt {
                    column: "changes.kind",
                    detail: format!("unknown kind {other:?}"),
                });
            }
        })
    }
}

/// The key of a latency change: head id and body id joined by a tab (ids hold no tab).
pub fn latency_key(head_id: &str, body_id: &str) -> String {
    format!("{head_id}\t{body_id}")
}

/// One row a write changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    /// The write's revision.
    pub revision: i64,
    /// Which table.
    pub kind: ChangeKind,
    /// The row's id (see [`ChangeKind`]).
    pub key: String,
}

/// What [`crate::Store::changes_since`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangesSince {
    /// Every change of the revisions after the one asked, up to and including `through`, in
    /// revision order; `through` equals `latest` when the follower is caught up.
    Changes {
        /// The last revision covered: a follower that applied `changes` is at `through`.
        through: i64,
        /// The newest committed revision when read.
        latest: i64,
        /// What changed.
        changes: Vec<Change>,
    },
    /// The change rows after the revision asked were pruned (up to `pruned_through`): the
    /// follower reloads its whole view, then follows from `latest` (read before the reload).
    Pruned {
        /// Change rows up to here are gone.
        pruned_through: i64,
        /// The newest committed revision when read.
        latest: i64,
    },
}

/// A write transaction with its revision: every store write goes through one
/// (`begin_write`). Derefs to the engine's connection, so statements run on it as on a plain
/// transaction; [`Write::commit`] also makes the revision known to [`crate::Store::written_revision`].
pub(crate) struct Write<DB: sqlx::Database> {
    pub(crate) transaction: sqlx::Transaction<'static, DB>,
    pub(crate) revision: i64,
    pub(crate) written: Arc<AtomicI64>,
}

impl<DB: sqlx::Database> Write<DB> {
    /// Commits, then raises the store's highest revision this process wrote.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.transaction.commit().await?;
        self.written.fetch_max(self.revision, Ordering::SeqCst);
        Ok(())
    }
}

impl<DB: sqlx::Database> std::ops::Deref for Write<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.transaction
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for Write<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.transaction
    }
}

/// Decodes `changes` rows.
pub(crate) fn decode_changes(rows: Vec<(i64, String, String)>) -> Result<Vec<Change>, StoreError> {
    rows.into_iter()
        .map(|(revision, kind, key)| {
            Ok(Change {
                revision,
                kind: ChangeKind::parse(&kind)?,
                key,
            })
        })
        .collect()
}

/// Implements the feed's queries on `$store` (see `engine_queries!` for the pools).
macro_rules! feed_queries {
    ($store:ident) => {
        impl $store {
            /// Records that the write's transaction changed `kind`/`key`, at its revision.
            pub(crate) async fn record_change(
                write: &mut crate::feed::Write<Db>,
                kind: crate::feed::ChangeKind,
                key: &str,
            ) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO changes (revision, kind, key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(write.revision)
                    .bind(kind.as_str())
                    .bind(key)
                    .execute(&mut **write)
                    .await?;
                Ok(())
            }

            pub(crate) async fn feed_id(&self) -> Result<String, StoreError> {
                Ok(sqlx::query_scalar("SELECT feed_id FROM revisions WHERE id = 1").fetch_one(&self.reader).await?)
            }

            pub(crate) async fn current_revision(&self) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar("SELECT value FROM revisions WHERE id = 1").fetch_one(&self.reader).await?)
            }

            pub(crate) async fn changes_since(&self, after: i64, revisions: u32) -> Result<crate::ChangesSince, StoreError> {
                // The counter first: every revision up to it is committed (see the module doc),
                // so the changes read next cover `(after, through]` whole.
                let (latest, pruned_through): (i64, i64) =
                    sqlx::query_as("SELECT value, pruned_through FROM revisions WHERE id = 1")
                        .fetch_one(&self.reader)
                        .await?;
                if after < pruned_through {
                    return Ok(crate::ChangesSince::Pruned { pruned_through, latest });
                }
                let through = latest.min(after.saturating_add(i64::from(revisions.max(1))));
                let rows: Vec<(i64, String, String)> = sqlx::query_as(
                    "SELECT revision, kind, key FROM changes WHERE revision > $1 AND revision <= $2 \
                     ORDER BY revision, kind, key",
                )
                .bind(after)
                .bind(through)
                .fetch_all(&self.reader)
                .await?;
                Ok(crate::ChangesSince::Changes {
                    through: through.max(after),
                    latest,
                    changes: crate::feed::decode_changes(rows)?,
                })
            }

            pub(crate) async fn prune_changes(&self, through: i64) -> Result<u64, StoreError> {
                let mut write = self.begin_write().await?;
                let deleted = sqlx::query("DELETE FROM changes WHERE revision <= $1")
                    .bind(through)
                    .execute(&mut *write)
                    .await?;
                sqlx::query("UPDATE revisions SET pruned_through = $1 WHERE id = 1 AND pruned_through < $1")
                    .bind(through)
                    .execute(&mut *write)
                    .await?;
                write.commit().await?;
                Ok(deleted.rows_affected())
            }
        }
    };
}
pub(crate) use feed_queries;
