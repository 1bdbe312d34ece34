//! Write ids (table `write_ids`, migration 0009): a sender that may repeat a write (an agent's
//! journal replaying what it wrote while no master answered) names it with an id; the id is
//! claimed in the same transaction as the write, so a repeat of an applied write is skipped, and
//! answered with the status the first application answered.

/// A write's id as its sender gave it (the `Idempotency-Key` header, a UUID) and the HTTP status
/// its route answers when the write applies (what a repeat is answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteId {
    /// The id (a UUID's 128 bits).
    pub id: u128,
    /// The status the write's first application answered.
    pub status: u16,
}

/// The id as stored: 32 lowercase hex digits.
pub(crate) fn id_column(id: u128) -> String {
    format!("{id:032x}")
}

/// Claims `$write_id` (an `Option<WriteId>`) at `$at` through `$executor` (the write's own
/// transaction): `Ok(true)` when the write should be applied (no id, or an id seen for the first
/// time), `Ok(false)` when the id was already applied (the caller skips the write).
macro_rules! claim_write_on {
    ($executor:expr, $write_id:expr, $at:expr) => {{
        let write_id: Option<crate::WriteId> = $write_id;
        match write_id {
            None => Ok::<bool, StoreError>(true),
            Some(write_id) => {
                let claimed = sqlx::query(
                    "INSERT INTO write_ids (id, status, applied_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(crate::write_ids::id_column(write_id.id))
                .bind(i64::from(write_id.status))
                .bind($at)
                .execute($executor)
                .await?;
                Ok(claimed.rows_affected() > 0)
            }
        }
    }};
}
pub(crate) use claim_write_on;

/// Gives back a claim made in this transaction for a write that found nothing to change (an
/// unknown node): only applied writes are remembered, so a later repeat is answered afresh.
macro_rules! release_write_on {
    ($executor:expr, $write_id:expr) => {{
        let write_id: Option<crate::WriteId> = $write_id;
        if let Some(write_id) = write_id {
            sqlx::query("DELETE FROM write_ids WHERE id = $1")
                .bind(crate::write_ids::id_column(write_id.id))
                .execute($executor)
                .await?;
        }
        Ok::<(), StoreError>(())
    }};
}
pub(crate) use release_write_on;

/// Implements the write-id reads and pruning on an engine's store.
macro_rules! write_id_queries {
    ($store:ident) => {
        impl $store {
            pub(crate) async fn applied_write(&self, id: u128) -> Result<Option<u16>, StoreError> {
                let status: Option<i64> =
                    sqlx::query_scalar("SELECT status FROM write_ids WHERE id = $1")
                        .bind(crate::write_ids::id_column(id))
                        .fetch_optional(&self.reader)
                        .await?;
                status
                    .map(|status| {
                        u16::try_from(status).map_err(|error| StoreError::Corrupt {
                            column: "write_ids.status",
                            detail: error.to_string(),
                        })
                    })
                    .transpose()
            }

            pub(crate) async fn prune_write_ids(
                &self,
                applied_before: i64,
            ) -> Result<u64, StoreError> {
                let mut transaction = self.begin_write().await?;
                let deleted = sqlx::query("DELETE FROM write_ids WHERE applied_at < $1")
                    .bind(applied_before)
                    .execute(&mut *transaction)
                    .await?;
                transaction.commit().await?;
                Ok(deleted.rows_affected())
            }
        }
    };
}
pub(crate) use write_id_queries;
