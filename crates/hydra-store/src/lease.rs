//! The master lease, the replicas table, the write fence and the liveness beacon: what lets
//! several `hydra server` replicas on one PostgreSQL agree on one master (DESIGN decision 4).
//!
//! The lease row is the only authority: its expiry is computed by the database clock, its
//! `term` grows on every takeover, and every write checks, in its own transaction, that the row
//! still names this replica and term ([`Fence`]). The advisory lock of [`MasterBeacon`] is only
//! a wake-up: a standby that gets it knows the master's database session ended.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::StoreError;

/// The lease row as a replica reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The replica id that holds (or last held) the lease.
    pub holder: String,
    /// Grows by one on every takeover.
    pub term: i64,
    /// Milliseconds until it expires by the database clock (negative: expired).
    pub remaining_ms: i64,
    /// The holder's advertised base URL, when its replica row exists.
    pub holder_url: Option<String>,
}

/// A replica's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// The replica id (`--replica-id`).
    pub id: String,
    /// Its advertised base URL.
    pub base_url: String,
    /// Milliseconds since its last heartbeat, by the database clock.
    pub heartbeat_age_ms: i64,
}

/// The write fence of one store handle (shared by its clones): once armed with a replica id,
/// every write needs a term and commits only while the lease row holds that id and term.
#[derive(Debug, Default)]
pub(crate) struct Fence {
    holder: OnceLock<String>,
    /// The term this replica holds; 0 while it is not master.
    term: AtomicI64,
}

impl Fence {
    /// Arms the fence for `holder`; later calls keep the first id.
    pub(crate) fn arm(&self, holder: &str) {
        let _ = self.holder.set(holder.to_owned());
    }

    /// Sets the term writes are fenced with (`None`: not master, every write is refused).
    pub(crate) fn set_term(&self, term: Option<i64>) {
        self.term.store(term.unwrap_or(0), Ordering::SeqCst);
    }

    /// `None` when unarmed (a single replica); else the holder and term to check, or
    /// `NotMaster` at once when this replica holds no term.
    pub(crate) fn guard(&self) -> Result<Option<(&str, i64)>, StoreError> {
        let Some(holder) = self.holder.get() else {
            return Ok(None);
        };
        match self.term.load(Ordering::SeqCst) {
            term if term > 0 => Ok(Some((holder, term))),
            _ => Err(StoreError::NotMaster { term: None }),
        }
    }
}

/// Implements the lease, replica and fence queries on `$store` (a struct with `writer`,
/// `reader` and `fence`). `$now` is the engine's SQL for "now in unix ms" by the database clock.
/// `$lock` is the row-lock clause of the fence's read and `$takeover_lock` the one a takeover
/// takes first (on PostgreSQL `FOR KEY SHARE` and `FOR UPDATE`, which conflict, so a takeover
/// waits for every write of the old term to commit; empty on SQLite, whose one writer
/// serialises everything anyway). A renewal only moves `expires_at`, a non-key column, so it
/// takes `FOR NO KEY UPDATE`, which does not wait for the writes' `FOR KEY SHARE`: a master
/// under a steady stream of writes (capture chunks) still renews on time. With `FOR SHARE` the
/// renewal queued behind every write in flight, and new writes kept overtaking it, until the
/// lease ran out under load.
macro_rules! lease_queries {
    ($store:ident, now = $now:literal, lock = $lock:literal, takeover_lock = $takeover_lock:literal) => {
        impl $store {
            /// Inside a write's transaction: fails with `NotMaster` unless the lease row still
            /// holds this replica's id and term and has not expired (a no-op while unarmed).
            pub(crate) async fn check_fence(
                &self,
                transaction: &mut sqlx::Transaction<'static, Db>,
            ) -> Result<(), StoreError> {
                let Some((holder, term)) = self.fence.guard()? else {
                    return Ok(());
                };
                let held: Option<i64> = sqlx::query_scalar(concat!(
                    "SELECT term FROM master_lease WHERE id = 1 AND holder = $1 AND term = $2 \
                     AND expires_at > ", $now, $lock
                ))
                .bind(holder)
                .bind(term)
                .fetch_optional(&mut **transaction)
                .await?;
                match held {
                    Some(_) => Ok(()),
                    None => Err(StoreError::NotMaster { term: Some(term) }),
                }
            }

            pub(crate) fn fence(&self) -> &crate::lease::Fence {
                &self.fence
            }

            pub(crate) fn unfenced(&self) -> $store {
                $store {
                    fence: std::sync::Arc::default(),
                    ..self.clone()
                }
            }

            pub(crate) async fn lease(&self) -> Result<Option<crate::lease::LeaseRecord>, StoreError> {
                let row: Option<(String, i64, i64, Option<String>)> = sqlx::query_as(concat!(
                    "SELECT l.holder, l.term, l.expires_at - ", $now, ", r.base_url \
                     FROM master_lease l LEFT JOIN replicas r ON r.id = l.holder WHERE l.id = 1"
                ))
                .fetch_optional(&self.writer)
                .await?;
                Ok(row.map(|(holder, term, remaining_ms, holder_url)| crate::lease::LeaseRecord {
                    holder,
                    term,
                    remaining_ms,
                    holder_url,
                }))
            }

            pub(crate) async fn acquire_lease(
                &self,
                holder: &str,
                ttl_ms: i64,
                force: bool,
            ) -> Result<Option<i64>, StoreError> {
                let mut transaction = self.writer.begin().await?;
                // Waits for the writes in flight (they hold the fence's lock until they end), so
                // no write of the old term commits after the new term begins.
                sqlx::query(concat!("SELECT 1 FROM master_lease WHERE id = 1", $takeover_lock))
                    .execute(&mut *transaction)
                    .await?;
                let term = sqlx::query_scalar(concat!(
                    "INSERT INTO master_lease (id, holder, term, expires_at) VALUES (1, $1, 1, ", $now, " + $2) \
                     ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, term = master_lease.term + 1, \
                     expires_at = excluded.expires_at \
                     WHERE master_lease.expires_at <= ", $now, " OR $3 RETURNING term"
                ))
                .bind(holder)
                .bind(ttl_ms)
                .bind(force)
                .fetch_optional(&mut *transaction)
                .await?;
                transaction.commit().await?;
                Ok(term)
            }

            pub(crate) async fn renew_lease(&self, holder: &str, term: i64, ttl_ms: i64) -> Result<bool, StoreError> {
                let renewed = sqlx::query(concat!(
                    "UPDATE master_lease SET expires_at = ", $now, " + $3 WHERE id = 1 AND holder = $1 AND term = $2"
                ))
                .bind(holder)
                .bind(term)
                .bind(ttl_ms)
                .execute(&self.writer)
                .await?;
                Ok(renewed.rows_affected() > 0)
            }

            pub(crate) async fn release_lease(&self, holder: &str, term: i64) -> Result<bool, StoreError> {
                let released = sqlx::query(concat!(
                    "UPDATE master_lease SET expires_at = ", $now, " WHERE id = 1 AND holder = $1 AND term = $2"
                ))
                .bind(holder)
                .bind(term)
                .execute(&self.writer)
                .await?;
                Ok(released.rows_affected() > 0)
            }

            pub(crate) async fn heartbeat_replica(&self, id: &str, base_url: &str) -> Result<(), StoreError> {
                sqlx::query(concat!(
                    "INSERT INTO replicas (id, base_url, heartbeat_at) VALUES ($1, $2, ", $now, ") \
                     ON CONFLICT (id) DO UPDATE SET base_url = excluded.base_url, heartbeat_at = excluded.heartbeat_at"
                ))
                .bind(id)
                .bind(base_url)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            pub(crate) async fn list_replicas(&self) -> Result<Vec<crate::lease::ReplicaRecord>, StoreError> {
                let rows: Vec<(String, String, i64)> = sqlx::query_as(concat!(
                    "SELECT id, base_url, ", $now, " - heartbeat_at FROM replicas ORDER BY id"
                ))
                .fetch_all(&self.writer)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, base_url, heartbeat_age_ms)| crate::lease::ReplicaRecord { id, base_url, heartbeat_age_ms })
                    .collect())
            }
        }
    };
}
pub(crate) use lease_queries;

/// The advisory lock's key: one per database, so every replica of a control plane contends for
/// the same lock ("hydra_ms" in ASCII).
const BEACON_KEY: i64 = 0x6879_6472_615f_6d73;

/// The master's liveness beacon: a session-level advisory lock on ONE dedicated connection,
/// never from the pool (a pooled connection could be handed to other work or recycled, and a
/// transaction pooler such as PgBouncer would move the session and with it the lock). The
/// master holds it; a standby that gets it knows the master's database session ended.
#[derive(Debug)]
pub struct MasterBeacon {
    options: PgConnectOptions,
    connection: Option<PgConnection>,
    held: bool,
    /// Whether the last [`MasterBeacon::lock`] found the lock held by another session before it
    /// waited.
    found_busy: bool,
}

impl MasterBeacon {
    pub(crate) fn new(options: PgConnectOptions) -> MasterBeacon {
        MasterBeacon {
            options,
            connection: None,
            held: false,
            found_busy: false,
        }
    }

    /// Whether the last [`MasterBeacon::lock`] that had to take the lock found it held by
    /// another session at once, before waiting (whatever the wait's outcome): the caller read
    /// the lease just before, so the lock's holder was that lease's master, and getting the lock
    /// later in the same wait means that master's session ended.
    pub fn found_busy(&self) -> bool {
        self.found_busy
    }

    /// Whether this beacon holds the lock (as of its last call).
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Takes the lock, waiting at most `wait` for its holder's session to end (answering at
    /// once when it does); when already held, checks that the connection (and so the lock) is
    /// still alive. `Ok(false)`: another session holds it. An error drops the connection (and
    /// the lock with it) so the next call starts afresh.
    pub async fn lock(&mut self, wait: Duration) -> Result<bool, StoreError> {
        let bound = wait + Duration::from_secs(3);
        match tokio::time::timeout(bound, self.lock_unbounded(wait)).await {
            Ok(Ok(held)) => {
                self.held = held;
                Ok(held)
            }
            Ok(Err(error)) => {
                self.forget();
                Err(error)
            }
            Err(_) => {
                self.forget();
                Err(StoreError::Engine(sqlx::Error::PoolTimedOut))
            }
        }
    }

    async fn lock_unbounded(&mut self, wait: Duration) -> Result<bool, StoreError> {
        self.found_busy = false;
        if self.connection.is_none() {
            self.connection = Some(PgConnection::connect_with(&self.options).await?);
            self.held = false;
        }
        let connection = self.connection.as_mut().expect("connected above");
        if self.held {
            sqlx::query("SELECT 1").execute(&mut *connection).await?;
            return Ok(true);
        }
        // Try first: a lock taken at once says nothing; one found busy says its holder was
        // alive right now (see `found_busy`), which a wait that ends with the lock cannot tell.
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(BEACON_KEY)
            .fetch_one(&mut *connection)
            .await?;
        if taken || wait.is_zero() {
            return Ok(taken);
        }
        self.found_busy = true;
        // lock_timeout bounds the wait on the server side; 55P03 is "lock not available".
        sqlx::query("SELECT set_config('lock_timeout', $1, false)")
            .bind(format!("{}ms", wait.as_millis().max(1)))
            .execute(&mut *connection)
            .await?;
        match sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(BEACON_KEY)
            .execute(&mut *connection)
            .await
        {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Gives the lock up (closing the connection, which releases it even if the unlock could
    /// not be sent).
    pub async fn unlock(&mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.close()).await;
        }
        self.held = false;
    }

    fn forget(&mut self) {
        self.connection = None;
        self.held = false;
        self.found_busy = false;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::postgres::PgStore;

    const MINUTE_MS: i64 = 60_000;

    /// On PostgreSQL (the test command's server): a master whose writes never stop still renews,
    /// and a takeover still waits for the old term's write in flight. With the fence's old
    /// `FOR SHARE` the renewal waited here until the write ended, which under a stream of
    /// capture chunks was never, and the master stepped down (`renewal_overdue`).
    #[tokio::test]
    async fn a_renewal_passes_a_write_in_flight_and_a_takeover_waits_for_it() {
        let url = crate::testing::fresh_postgres_database("lease_renewal_passes").await;
        let store = PgStore::open(&url).await.expect("open the test database");
        store.fence().arm("a");
        let term = store
            .acquire_lease("a", MINUTE_MS, false)
            .await
            .unwrap()
            .expect("a free lease");
        store.fence().set_term(Some(term));
        // A write in flight: it has passed the fence and holds its lock until it commits.
        let write = store.begin_write().await.expect("a fenced write begins");
        let renewed = tokio::time::timeout(
            Duration::from_secs(10),
            store.renew_lease("a", term, MINUTE_MS),
        )
        .await
        .expect("the renewal waited for a write in flight")
        .unwrap();
        assert!(renewed, "the holder renews its own term");
        // Another replica takes over by force: it must wait until the old term's write ends.
        let other = store.unfenced();
        let takeover = tokio::spawn(async move { other.acquire_lease("b", MINUTE_MS, true).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !takeover.is_finished(),
            "a takeover went ahead of the old term's write in flight"
        );
        write.commit().await.expect("the old term's write commits");
        let taken = tokio::time::timeout(Duration::from_secs(10), takeover)
            .await
            .expect("the takeover went ahead once the write ended")
            .unwrap()
            .unwrap();
        assert_eq!(taken, Some(term + 1));
    }
}
