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
    reader: PgPool,
    writer: PgPool,
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
            reader: pool.clone(),
            writer: pool,
            fence: Arc::default(),
        })
    }

    /// A liveness beacon on a connection of its own, to the same database as the pool.
    pub(crate) fn beacon(&self) -> crate::lease::MasterBeacon {
        crate::lease::MasterBeacon::new((*self.writer.connect_options()).clone())
    }
}

crate::engine::engine_queries!(PgStore);
crate::session_queries::session_queries!(PgStore);
crate::enrolment::enrolment_queries!(PgStore);
crate::node_config::node_config_queries!(PgStore);
crate::lease::lease_queries!(
    PgStore,
    now = "(EXTRACT(EPOCH FROM now()) * 1000)::BIGINT",
    lock = " FOR SHARE"
);
