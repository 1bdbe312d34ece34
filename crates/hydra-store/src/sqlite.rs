//! The SQLite engine: one file in the data dir, WAL journal, `synchronous=FULL` so that a commit
//! is on disk before the call returns.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::StoreError;

/// The engine the shared query macros are expanded for.
type Db = sqlx::Sqlite;

/// SQLite-backed store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The highest revision this process committed (see [`crate::Store::written_revision`]).
    written: std::sync::Arc<std::sync::atomic::AtomicI64>,
    reader: SqlitePool,
    writer: SqlitePool,
    fence: Arc<crate::lease::Fence>,
}

impl SqliteStore {
    /// Opens or creates the database file and applies the migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let path_text = path.to_str().ok_or_else(|| StoreError::Path {
            path: path.display().to_string(),
            detail: "path is not valid UTF-8".into(),
        })?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path_text}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let path_error = |error: sqlx::Error| StoreError::Path {
            path: path_text.to_owned(),
            detail: error.to_string(),
        };
        // One writer connection: SQLite has one writer at a time anyway, and queueing in the
        // pool is fair where SQLite's busy handler sleeps and retries.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(path_error)?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await
            .map_err(path_error)?;
        Ok(SqliteStore {
            written: Default::default(),
            reader,
            writer,
            fence: Arc::default(),
        })
    }
}

/// The statement that wakes followers at commit, when the engine has one.
const NOTIFY_REVISION: Option<&str> = None;

crate::feed::feed_queries!(SqliteStore);
crate::engine::engine_queries!(SqliteStore);
crate::session_queries::session_queries!(SqliteStore);
crate::enrolment::enrolment_queries!(SqliteStore);
crate::node_config::node_config_queries!(SqliteStore);
crate::lease::lease_queries!(
    SqliteStore,
    now = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    lock = "",
    takeover_lock = ""
);
crate::captures::capture_queries!(SqliteStore);
crate::write_ids::write_id_queries!(SqliteStore);
