//! The session record queries, written once for both engines (see `engine_queries!`): the
//! group-committed batch of inserts and updates, reads, pages newest first, pruning of ended
//! sessions, and the live sessions reconciliation reads through the `sessions_live` index.

/// Implements the session methods on `$store` (see `engine_queries!` for the pools).
macro_rules! session_queries {
    ($store:ident) => {
        impl $store {
            pub(crate) async fn write_sessions(&self, batch: &[crate::SessionWrite]) -> Result<Vec<bool>, StoreError> {
                let mut transaction = self.begin_write().await?;
                let mut applied = Vec::with_capacity(batch.len());
                for write in batch {
                    // A taken id is answered `false` instead of failing the statement: a unique
                    // violation would abort the whole PostgreSQL transaction, and with it the
                    // other writes of the batch.
                    let done = match write {
                        crate::SessionWrite::Insert(session) => sqlx::query(concat!(
                            "INSERT INTO sessions (",
                            crate::engine::session_columns!(),
                            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING"
                        ))
                        .bind(&session.id)
                        .bind(&session.worker_id)
                        .bind(&session.body_ip)
                        .bind(&session.body_id)
                        .bind(&session.head_id)
                        .bind(&session.experience)
                        .bind(session.port.map(i64::from))
                        .bind(&session.stream_url)
                        .bind(session.status.as_str())
                        .bind(&session.error)
                        .bind(session.created_at)
                        .bind(session.updated_at)
                        .execute(&mut *transaction)
                        .await?,
                        crate::SessionWrite::Update(session) => sqlx::query(
                            "UPDATE sessions SET worker_id = $2, port = $3, stream_url = $4, status = $5, \
                             error = $6, updated_at = $7 WHERE id = $1",
                        )
                        .bind(&session.id)
                        .bind(&session.worker_id)
                        .bind(session.port.map(i64::from))
                        .bind(&session.stream_url)
                        .bind(session.status.as_str())
                        .bind(&session.error)
                        .bind(session.updated_at)
                        .execute(&mut *transaction)
                        .await?,
                    };
                    applied.push(done.rows_affected() > 0);
                    if done.rows_affected() > 0 {
                        let id = match write {
                            crate::SessionWrite::Insert(session) | crate::SessionWrite::Update(session) => &session.id,
                        };
                        Self::record_change(&mut transaction, crate::ChangeKind::Session, id).await?;
                    }
                }
                transaction.commit().await?;
                Ok(applied)
            }

            pub(crate) async fn get_session(&self, id: &str) -> Result<Option<crate::SessionRecord>, StoreError> {
                let row: Option<crate::engine::SessionRow> =
                    sqlx::query_as(concat!("SELECT ", crate::engine::session_columns!(), " FROM sessions WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&self.reader)
                        .await?;
                row.map(crate::SessionRecord::try_from).transpose()
            }

            pub(crate) async fn list_sessions(&self) -> Result<Vec<crate::SessionRecord>, StoreError> {
                let rows: Vec<crate::engine::SessionRow> =
                    sqlx::query_as(concat!("SELECT ", crate::engine::session_columns!(), " FROM sessions ORDER BY created_at, id"))
                        .fetch_all(&self.reader)
                        .await?;
                rows.into_iter().map(crate::SessionRecord::try_from).collect()
            }

            pub(crate) async fn list_sessions_page(
                &self,
                filter: &crate::SessionFilter,
                limit: u32,
                after: Option<(i64, &str)>,
            ) -> Result<Vec<crate::SessionRecord>, StoreError> {
                // Only the filters given become clauses, so each query can use its index.
                let mut clauses: Vec<String> = Vec::new();
                let mut next = 0;
                let mut parameter = || {
                    next += 1;
                    format!("${next}")
                };
                if filter.status.is_some() {
                    clauses.push(format!("status = {}", parameter()));
                }
                if filter.worker_id.is_some() {
                    clauses.push(format!("worker_id = {}", parameter()));
                }
                if filter.head_id.is_some() {
                    clauses.push(format!("head_id = {}", parameter()));
                }
                if after.is_some() {
                    let (created, id) = (parameter(), parameter());
                    clauses.push(format!("(created_at < {created} OR (created_at = {created} AND id < {id}))"));
                }
                let mut sql = String::from(concat!("SELECT ", crate::engine::session_columns!(), " FROM sessions"));
                if !clauses.is_empty() {
                    sql.push_str(" WHERE ");
                    sql.push_str(&clauses.join(" AND "));
                }
                sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT {}", parameter()));
                // Safe: the text is built only from fixed fragments and `$n` placeholders; every
                // value is bound.
                let mut query = sqlx::query_as::<_, crate::engine::SessionRow>(sqlx::AssertSqlSafe(sql));
                if let Some(status) = filter.status {
                    query = query.bind(status.as_str());
                }
                if let Some(worker_id) = &filter.worker_id {
                    query = query.bind(worker_id);
                }
                if let Some(head_id) = &filter.head_id {
                    query = query.bind(head_id);
                }
                if let Some((created_at, id)) = after {
                    query = query.bind(created_at).bind(id);
                }
                let rows = query.bind(i64::from(limit)).fetch_all(&self.reader).await?;
                rows.into_iter().map(crate::SessionRecord::try_from).collect()
            }

            pub(crate) async fn prune_ended_sessions(&self, ended_before: i64, batch: u32) -> Result<u64, StoreError> {
                let mut transaction = self.begin_write().await?;
                let deleted: Vec<String> = sqlx::query_scalar(
                    "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions \
                     WHERE status IN ('stopped', 'error') AND updated_at < $1 LIMIT $2) RETURNING id",
                )
                .bind(ended_before)
                .bind(i64::from(batch))
                .fetch_all(&mut *transaction)
                .await?;
                for id in &deleted {
                    Self::record_change(&mut transaction, crate::ChangeKind::Session, id).await?;
                }
                transaction.commit().await?;
                Ok(deleted.len() as u64)
            }

            pub(crate) async fn list_sessions_of_worker(&self, worker_id: &str) -> Result<Vec<crate::SessionRecord>, StoreError> {
                let rows: Vec<crate::engine::SessionRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    crate::engine::session_columns!(),
                    " FROM sessions WHERE worker_id = $1 ORDER BY created_at, id"
                ))
                .bind(worker_id)
                .fetch_all(&self.reader)
                .await?;
                rows.into_iter().map(crate::SessionRecord::try_from).collect()
            }

            pub(crate) async fn list_live_sessions_of_worker(&self, worker_id: &str) -> Result<Vec<crate::SessionRecord>, StoreError> {
                // The condition is written as the `sessions_live` index's, so both engines use it.
                let rows: Vec<crate::engine::SessionRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    crate::engine::session_columns!(),
                    " FROM sessions WHERE worker_id = $1 AND status IN ('starting', 'running') ORDER BY created_at, id"
                ))
                .bind(worker_id)
                .fetch_all(&self.reader)
                .await?;
                rows.into_iter().map(crate::SessionRecord::try_from).collect()
            }

            pub(crate) async fn list_live_sessions(&self) -> Result<Vec<crate::SessionRecord>, StoreError> {
                let rows: Vec<crate::engine::SessionRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    crate::engine::session_columns!(),
                    " FROM sessions WHERE status IN ('starting', 'running') ORDER BY created_at, id"
                ))
                .fetch_all(&self.reader)
                .await?;
                rows.into_iter().map(crate::SessionRecord::try_from).collect()
            }

            pub(crate) async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
                let mut transaction = self.begin_write().await?;
                let deleted = sqlx::query("DELETE FROM sessions WHERE id = $1").bind(id).execute(&mut *transaction).await?;
                if deleted.rows_affected() > 0 {
                    Self::record_change(&mut transaction, crate::ChangeKind::Session, id).await?;
                }
                transaction.commit().await?;
                Ok(deleted.rows_affected() > 0)
            }

            pub(crate) async fn active_sessions_by_worker(&self) -> Result<std::collections::HashMap<String, u32>, StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT worker_id, COUNT(*) FROM sessions WHERE status IN ('starting', 'running') \
                     GROUP BY worker_id",
                )
                .fetch_all(&self.reader)
                .await?;
                rows.into_iter()
                    .map(|(worker_id, count)| {
                        u32::try_from(count)
                            .map(|count| (worker_id, count))
                            .map_err(|error| crate::engine::corrupt_value("sessions.worker_id", error))
                    })
                    .collect()
            }
        }
    };
}
pub(crate) use session_queries;
