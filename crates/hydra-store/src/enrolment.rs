//! One-time enrolment tokens: stored as SHA-256 digests, single use, expiring, and consumed in
//! the same transaction that inserts the node they enrol (so a crash never leaves a token used
//! without its node, or a node enrolled with a token still usable).

/// Implements the enrolment-token methods on `$store` (see `engine_queries!` for the pools).
macro_rules! enrolment_queries {
    ($store:ident) => {
        impl $store {
            pub(crate) async fn create_enrolment_token(
                &self,
                token_hash: &str,
                created_at: i64,
                expires_at: i64,
            ) -> Result<(), StoreError> {
                let mut transaction = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO enrolment_tokens (token_hash, created_at, expires_at) VALUES ($1, $2, $3)",
                )
                .bind(token_hash)
                .bind(created_at)
                .bind(expires_at)
                .execute(&mut *transaction)
                .await
                .map_err(|error| crate::engine::conflict_or(error, || "enrolment token".to_owned()))?;
                transaction.commit().await?;
                Ok(())
            }

            pub(crate) async fn enrol_with_token(
                &self,
                node: &hydra_core::Node,
                node_token_hash: &str,
                enrolment_token_hash: &str,
                now: i64,
            ) -> Result<bool, StoreError> {
                let mut transaction = self.begin_write().await?;
                let consumed = sqlx::query(
                    "UPDATE enrolment_tokens SET used_at = $2, used_by = $3 \
                     WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
                )
                .bind(enrolment_token_hash)
                .bind(now)
                .bind(&node.id)
                .execute(&mut *transaction)
                .await?;
                if consumed.rows_affected() != 1 {
                    // Dropping the transaction rolls it back: nothing was written.
                    return Ok(false);
                }
                let inserted: Result<(), StoreError> =
                    crate::engine::insert_node_on!(&mut *transaction, node, node_token_hash);
                inserted?;
                Self::record_change(&mut transaction, crate::ChangeKind::Node, &node.id).await?;
                transaction.commit().await?;
                Ok(true)
            }
        }
    };
}

pub(crate) use enrolment_queries;
