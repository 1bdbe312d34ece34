//! The PostgreSQL engine: the same schema, shared by every replica.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::StoreError;

/// The engine the shared query macros are expanded for.
type Db = sqlx::Postgres;

/// PostgreSQL-backed store.
#[derive(Debug, Clone)]
pub struct PgStore {
    /// The highest revision this process committed (see [`crate::Store::written_revision`]).
    written: std::sync::Arc<std::sync::atomic::AtomicI64>,
    reader: PgPool,
    writer: PgPool,
    /// Where the store connects: the change listener opens its own connection there.
    url: String,
    /// The lease term this replica writes under, once armed (see `crate::lease`).
    fence: Arc<crate::lease::Fence>,
}

impl PgStore {
    /// Connects to `url` and applies the migrations.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PgStore {
            written: Default::default(),
            reader: pool.clone(),
            writer: pool,
            url: url.to_owned(),
            fence: Arc::default(),
        })
    }

    /// A liveness beacon on a connection of its own, to the same database as the pool.
    pub(crate) fn beacon(&self) -> crate::lease::MasterBeacon {
        crate::lease::MasterBeacon::new((*self.writer.connect_options()).clone())
    }

    /// A dedicated connection (not from the pool) listening on the change feed's channel.
    pub(crate) async fn listen_changes(&self) -> Result<crate::ChangeListener, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(crate::feed::CHANGES_CHANNEL).await?;
        Ok(crate::ChangeListener { listener })
    }
}

/// The statement that wakes followers at commit, when the engine has one.
const NOTIFY_REVISION: Option<&str> = Some("SELECT pg_notify($1, $2)");

crate::feed::feed_queries!(PgStore);
crate::engine::engine_queries!(PgStore);
crate::session_queries::session_queries!(PgStore);
crate::enrolment::enrolment_queries!(PgStore);
crate::node_config::node_config_queries!(PgStore);
crate::lease::lease_queries!(
    PgStore,
    now = "(EXTRACT(EPOCH FROM now()) * 1000)::BIGINT",
    lock = " FOR KEY SHARE",
    takeover_lock = " FOR UPDATE"
);
crate::captures::capture_queries!(PgStore);
crate::write_ids::write_id_queries!(PgStore);
