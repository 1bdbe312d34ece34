//! The PostgreSQL engine: the same schema, shared by every replica.

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
        })
    }
}

crate::engine::engine_queries!(PgStore);
crate::session_queries::session_queries!(PgStore);
crate::enrolment::enrolment_queries!(PgStore);
crate::node_config::node_config_queries!(PgStore);
crate::write_ids::write_id_queries!(PgStore);
