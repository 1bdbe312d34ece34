//! Config bundles: each node's desired config, kept as the JSON the API accepted, with a version
//! that counts replacements (table `node_configs`, migration 0006). The store does not read the
//! bundle: the server decodes and validates it with `hydra_api::ConfigBundle`.

use sqlx::FromRow;

use crate::{Store, StoreError};

/// A node's stored config bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfigRecord {
    /// The node it configures.
    pub node_id: String,
    /// 1 for the first bundle, one more for each replacement.
    pub version: u64,
    /// The bundle as JSON text.
    pub bundle: String,
    /// When it was last replaced (unix ms).
    pub updated_at: i64,
}

/// A `node_configs` row as both engines decode it.
#[derive(Debug, FromRow)]
pub(crate) struct NodeConfigRow {
    node_id: String,
    version: i64,
    bundle: String,
    updated_at: i64,
}

impl TryFrom<NodeConfigRow> for NodeConfigRecord {
    type Error = StoreError;
    fn try_from(row: NodeConfigRow) -> Result<NodeConfigRecord, StoreError> {
        Ok(NodeConfigRecord {
            version: u64::try_from(row.version).map_err(|error| StoreError::Corrupt {
                column: "node_configs.version",
                detail: error.to_string(),
            })?,
            node_id: row.node_id,
            bundle: row.bundle,
            updated_at: row.updated_at,
        })
    }
}

/// Implements the bundle queries on an engine's store (both engines accept the same SQL).
macro_rules! node_config_queries {
    ($store:ident) => {
        impl $store {
            pub(crate) async fn get_node_config(
                &self,
                node_id: &str,
            ) -> Result<Option<crate::NodeConfigRecord>, StoreError> {
                let row: Option<crate::node_config::NodeConfigRow> = sqlx::query_as(
                    "SELECT node_id, version, bundle, updated_at FROM node_configs WHERE node_id = $1",
                )
                .bind(node_id)
                .fetch_optional(&self.reader)
                .await?;
                row.map(crate::NodeConfigRecord::try_from).transpose()
            }

            pub(crate) async fn put_node_config(
                &self,
                node_id: &str,
                bundle: &str,
                now_ms: i64,
            ) -> Result<Option<crate::NodeConfigRecord>, StoreError> {
                // One statement: the version is bumped under the row's lock, so two replicas
                // replacing at once get two versions; selecting from `nodes` makes an unknown
                // node insert nothing (`WHERE` also keeps SQLite's upsert parser unambiguous).
                let mut transaction = self.begin_write().await?;
                let row: Option<crate::node_config::NodeConfigRow> = sqlx::query_as(
                    "INSERT INTO node_configs (node_id, version, bundle, updated_at) \
                     SELECT id, 1, $2, $3 FROM nodes WHERE id = $1 \
                     ON CONFLICT (node_id) DO UPDATE SET version = node_configs.version + 1, \
                     bundle = excluded.bundle, updated_at = excluded.updated_at \
                     RETURNING node_id, version, bundle, updated_at",
                )
                .bind(node_id)
                .bind(bundle)
                .bind(now_ms)
                .fetch_optional(&mut *transaction)
                .await?;
                if row.is_some() {
                    Self::record_change(&mut transaction, crate::ChangeKind::NodeConfig, node_id).await?;
                }
                transaction.commit().await?;
                row.map(crate::NodeConfigRecord::try_from).transpose()
            }
        }
    };
}
pub(crate) use node_config_queries;

impl Store {
    /// A node's config bundle, or `None` when none was ever set (or the node does not exist).
    pub async fn get_node_config(
        &self,
        node_id: &str,
    ) -> Result<Option<NodeConfigRecord>, StoreError> {
        match self {
            Store::Sqlite(engine) => engine.get_node_config(node_id).await,
            Store::Postgres(engine) => engine.get_node_config(node_id).await,
        }
    }

    /// Replaces a node's bundle (JSON text) and bumps its version, atomically; the stored
    /// record, or `None` when the node does not exist (nothing written). The bundle goes with
    /// its node when the node is deleted.
    pub async fn put_node_config(
        &self,
        node_id: &str,
        bundle: &str,
        now_ms: i64,
    ) -> Result<Option<NodeConfigRecord>, StoreError> {
        match self {
            Store::Sqlite(engine) => engine.put_node_config(node_id, bundle, now_ms).await,
            Store::Postgres(engine) => engine.put_node_config(node_id, bundle, now_ms).await,
        }
    }
}
