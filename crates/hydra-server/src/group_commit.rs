//! Group commit: every write of one kind that is waiting when the store's writer is free goes
//! into one transaction, so a thousand heartbeats, session records or worker reports cost a few
//! fsyncs a second instead of a thousand.
//!
//! Invariant: a caller is answered only after the transaction holding its write committed, so
//! an acknowledged write survives `kill -9` exactly as a single write would. A batch that the
//! engine refuses because of a value in it (`StoreError::is_refused_write`) is retried write by
//! write, so one bad write fails alone instead of failing every caller that shared its
//! transaction; a batch that fails for any other reason (the engine is unreachable) fails every
//! caller in it.

use std::future::Future;
use std::sync::Arc;

use hydra_store::{
    ChunkAppend, Heartbeat, SessionRecord, SessionWrite, Store, StoreError, WorkerReportRecord,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::ApiError;

/// Most writes in one transaction.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer before callers wait for room.
const QUEUE: usize = 8_192;

/// Why a group-committed write was not acknowledged (the server maps it to HTTP in `error.rs`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The store failed the transaction that held this write (shared by the writes that failed
    /// with it).
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The writer task has ended: the server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The store answered fewer outcomes than writes (a bug in a store method).
    #[error("{writer}: the store answered fewer writes than it was given")]
    ShortAnswer {
        /// The writer's name.
        writer: &'static str,
    },
}

impl From<StoreError> for CommitError {
    fn from(error: StoreError) -> CommitError {
        CommitError::Store(Arc::new(error))
    }
}

struct Pending<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, CommitError>>,
}

/// Handle to a batching writer of items `I` answered with `O`; the writer task ends when the
/// last handle is dropped.
pub struct GroupCommit<I, O> {
    name: &'static str,
    queue: mpsc::Sender<Pending<I, O>>,
}

impl<I, O> Clone for GroupCommit<I, O> {
    fn clone(&self) -> Self {
        GroupCommit {
            name: self.name,
            queue: self.queue.clone(),
        }
    }
}

impl<I, O> std::fmt::Debug for GroupCommit<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<I: Clone + Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Starts the writer task on the current runtime. `write(context, batch)` stores a batch in
    /// one transaction (the context is the store) and answers one `O` per item, in order; `name`
    /// labels the batch-size metric (`hydra_group_commit_batch_size{writer}`).
    pub fn spawn<C, W, F>(name: &'static str, context: C, write: W) -> (Self, JoinHandle<()>)
    where
        C: Clone + Send + 'static,
        W: Fn(C, Vec<I>) -> F + Send + 'static,
        F: Future<Output = Result<Vec<O>, StoreError>> + Send + 'static,
    {
        let (queue, pending) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_batches(name, context, write, pending));
        (GroupCommit { name, queue }, task)
    }

    /// Writes `item` durably (with whatever else is waiting) and answers its outcome.
    pub async fn submit(&self, item: I) -> Result<O, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { item, reply })
            .await
            .map_err(|_| CommitError::ShuttingDown)?;
        answer.await.map_err(|_| CommitError::ShuttingDown)?
    }
}

async fn write_batches<C, I, O, W, F>(
    name: &'static str,
    context: C,
    write: W,
    mut pending: mpsc::Receiver<Pending<I, O>>,
) where
    C: Clone,
    I: Clone,
    W: Fn(C, Vec<I>) -> F,
    F: Future<Output = Result<Vec<O>, StoreError>>,
{
    let mut batch: Vec<Pending<I, O>> = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        metrics::histogram!("hydra_group_commit_batch_size", "writer" => name)
            .record(batch.len() as f64);
        let (items, replies): (Vec<I>, Vec<_>) = batch
            .drain(..)
            .map(|pending| (pending.item, pending.reply))
            .unzip();
        let count = items.len();
        // Kept only when a retry one by one is possible: a batch of one is never retried.
        let retry = (count > 1).then(|| items.clone());
        match write(context.clone(), items).await {
            Ok(outcomes) => answer(name, replies, outcomes),
            Err(error) => match retry {
                Some(items) if error.is_refused_write() => {
                    tracing::warn!(writer = name, writes = count, %error, "[store] group commit refused; writing its writes one by one");
                    metrics::counter!("hydra_group_commit_retried_total", "writer" => name)
                        .increment(1);
                    for (item, reply) in items.into_iter().zip(replies) {
                        let outcome = write(context.clone(), vec![item]).await;
                        let _ = reply.send(match outcome {
                            Ok(outcomes) => outcomes
                                .into_iter()
                                .next()
                                .ok_or(CommitError::ShortAnswer { writer: name }),
                            Err(error) => Err(CommitError::from(error)),
                        });
                    }
                }
                _ => {
                    let error = CommitError::from(error);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            },
        }
    }
}

/// Sends each caller its outcome, in order.
fn answer<O>(
    name: &'static str,
    replies: Vec<oneshot::Sender<Result<O, CommitError>>>,
    outcomes: Vec<O>,
) {
    debug_assert_eq!(
        outcomes.len(),
        replies.len(),
        "{name}: one outcome per write"
    );
    let mut outcomes = outcomes.into_iter();
    for reply in replies {
        let outcome = outcomes
            .next()
            .ok_or(CommitError::ShortAnswer { writer: name });
        let _ = reply.send(outcome);
    }
}

/// Heartbeats: answers whether the node exists.
pub type HeartbeatWriter = GroupCommit<(String, Heartbeat), bool>;

impl HeartbeatWriter {
    /// The heartbeat writer (`Store::record_heartbeats`).
    pub fn heartbeats(store: Store) -> (HeartbeatWriter, JoinHandle<()>) {
        GroupCommit::spawn("heartbeats", store, |store, batch| async move {
            store.record_heartbeats(&batch).await
        })
    }

    /// Records one heartbeat durably; `false` when the node does not exist.
    pub async fn record(&self, id: &str, heartbeat: Heartbeat) -> Result<bool, CommitError> {
        self.submit((id.to_owned(), heartbeat)).await
    }
}

/// Session records: answers whether each write applied.
pub type SessionWriter = GroupCommit<SessionWrite, bool>;

impl SessionWriter {
    /// The session writer (`Store::write_sessions`).
    pub fn sessions(store: Store) -> (SessionWriter, JoinHandle<()>) {
        GroupCommit::spawn("sessions", store, |store, batch| async move {
            store.write_sessions(&batch).await
        })
    }

    /// [`SessionWriter::sessions`] announcing every applied write on `events` once its
    /// transaction committed (before its caller is answered).
    pub fn sessions_with_events(
        store: Store,
        events: crate::events::EventBus,
    ) -> (SessionWriter, JoinHandle<()>) {
        GroupCommit::spawn(
            "sessions",
            (store, events),
            |(store, events), batch| async move {
                let applied = store.write_sessions(&batch).await?;
                for (write, applied) in batch.iter().zip(&applied) {
                    if *applied {
                        let (SessionWrite::Insert(record) | SessionWrite::Update(record)) = write;
                        events.publish_session(record.clone());
                    }
                }
                Ok(applied)
            },
        )
    }

    /// Inserts a session record durably; `Conflict` when the id exists.
    pub async fn insert(&self, session: SessionRecord) -> Result<(), CommitError> {
        let what = format!("session {:?}", session.id);
        if self.submit(SessionWrite::Insert(session)).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict { what }.into())
        }
    }

    /// Replaces a session's mutable fields durably; `false` when it does not exist.
    pub async fn update(&self, session: SessionRecord) -> Result<bool, CommitError> {
        self.submit(SessionWrite::Update(session)).await
    }
}

/// Worker reports.
pub type ReportWriter = GroupCommit<WorkerReportRecord, ()>;

impl ReportWriter {
    /// The worker-report writer (`Store::put_worker_reports`).
    pub fn reports(store: Store) -> (ReportWriter, JoinHandle<()>) {
        GroupCommit::spawn("worker_reports", store, |store, batch| async move {
            let count = batch.len();
            store
                .put_worker_reports(&batch)
                .await
                .map(|()| vec![(); count])
        })
    }
}

/// Capture chunks of every writer (all captures, all nodes): answers whether each chunk was
/// new. Many nodes' writers share a commit, so a fan-out capture costs a few fsyncs a second
/// instead of one per chunk per node, and the lease's renewal is not starved by a stream of
/// one-chunk transactions.
pub type ChunkWriter = GroupCommit<ChunkAppend, bool>;

impl ChunkWriter {
    /// The capture chunk writer (`Store::append_capture_chunks`).
    pub fn chunks(store: Store) -> (ChunkWriter, JoinHandle<()>) {
        GroupCommit::spawn("capture_chunks", store, |store, batch| async move {
            store.append_capture_chunks(&batch).await
        })
    }
}

/// How a failed commit is answered: store failures as the store maps them, a shutdown as 503.
impl From<CommitError> for ApiError {
    fn from(error: CommitError) -> ApiError {
        match error {
            CommitError::Store(store) => crate::error::store_error(store),
            CommitError::ShuttingDown => ApiError::new(
                hydra_api::ErrorCode::Unavailable,
                "the server is shutting down",
            ),
            CommitError::ShortAnswer { .. } => {
                tracing::error!(%error, "[store] group commit answered short");
                ApiError::new(hydra_api::ErrorCode::Internal, error.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    /// A fake transaction: records each batch, then waits for a permit before "committing".
    #[derive(Clone)]
    struct Recorder {
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        commit: Arc<Semaphore>,
    }

    impl Default for Recorder {
        fn default() -> Recorder {
            Recorder {
                batches: Arc::default(),
                commit: Arc::new(Semaphore::new(0)),
            }
        }
    }

    fn recorder_writer(recorder: Recorder) -> (GroupCommit<u32, u32>, JoinHandle<()>) {
        GroupCommit::spawn(
            "test",
            recorder,
            |recorder: Recorder, batch: Vec<u32>| async move {
                recorder.batches.lock().unwrap().push(batch.clone());
                recorder.commit.acquire().await.unwrap().forget();
                if batch.contains(&999) {
                    return Err(StoreError::Conflict {
                        what: "item 999".into(),
                    });
                }
                if batch.contains(&998) {
                    return Err(StoreError::Path {
                        path: "/nowhere".into(),
                        detail: "the engine is unreachable".into(),
                    });
                }
                Ok(batch.into_iter().map(|item| item * 10).collect())
            },
        )
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "{what} within 10 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn writes_waiting_while_one_commits_share_the_next_transaction() {
        let recorder = Recorder::default();
        let (writer, _task) = recorder_writer(recorder.clone());
        let first = tokio::spawn({
            let writer = writer.clone();
            async move { writer.submit(0).await }
        });
        until("the first batch is being written", || {
            recorder.batches.lock().unwrap().len() == 1
        })
        .await;
        let waiting: Vec<_> = (1..=20)
            .map(|item| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.submit(item).await })
            })
            .collect();
        until("twenty writes queued", || {
            QUEUE - writer.queue.capacity() == 20
        })
        .await;
        assert!(!first.is_finished(), "not answered before its commit");
        assert!(waiting.iter().all(|task| !task.is_finished()));

        recorder.commit.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for (index, task) in waiting.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap(), (index as u32 + 1) * 10);
        }
        let batches = recorder.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 2, "{batches:?}");
        let mut second = batches[1].clone();
        second.sort_unstable();
        assert_eq!(second, (1..=20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_refused_transaction_is_retried_write_by_write_so_only_the_bad_one_fails() {
        let recorder = Recorder::default();
        let (writer, _task) = recorder_writer(recorder.clone());
        let blocker = tokio::spawn({
            let writer = writer.clone();
            async move { writer.submit(1).await }
        });
        until("the first batch is being written", || {
            recorder.batches.lock().unwrap().len() == 1
        })
        .await;
        let doomed: Vec<_> = [5, 999]
            .map(|item| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.submit(item).await })
            })
            .into_iter()
            .collect();
        until("both writes queued", || {
            QUEUE - writer.queue.capacity() == 2
        })
        .await;
        // The blocker, the shared batch, then one transaction per write of it.
        recorder.commit.add_permits(4);
        assert_eq!(blocker.await.unwrap().unwrap(), 10);
        let outcomes: Vec<_> = futures::future::join_all(doomed).await;
        assert_eq!(outcomes[0].as_ref().unwrap().as_ref().unwrap(), &50);
        let error = outcomes[1].as_ref().unwrap().as_ref().unwrap_err();
        assert!(
            matches!(error, CommitError::Store(store) if matches!(**store, StoreError::Conflict { .. })),
            "{error:?}"
        );
        let batches = recorder.batches.lock().unwrap().clone();
        assert_eq!(batches, vec![vec![1], vec![5, 999], vec![5], vec![999]]);
    }

    #[tokio::test]
    async fn an_unreachable_store_fails_every_write_of_the_batch_without_retries() {
        let recorder = Recorder::default();
        let (writer, _task) = recorder_writer(recorder.clone());
        let blocker = tokio::spawn({
            let writer = writer.clone();
            async move { writer.submit(1).await }
        });
        until("the first batch is being written", || {
            recorder.batches.lock().unwrap().len() == 1
        })
        .await;
        let doomed: Vec<_> = [5, 998]
            .map(|item| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.submit(item).await })
            })
            .into_iter()
            .collect();
        until("both writes queued", || {
            QUEUE - writer.queue.capacity() == 2
        })
        .await;
        recorder.commit.add_permits(2);
        assert_eq!(blocker.await.unwrap().unwrap(), 10);
        for task in doomed {
            let error = task.await.unwrap().unwrap_err();
            assert!(
                matches!(&error, CommitError::Store(store) if matches!(**store, StoreError::Path { .. })),
                "{error:?}"
            );
        }
        assert_eq!(recorder.batches.lock().unwrap().len(), 2, "no retry");
    }

    #[tokio::test]
    async fn a_writer_whose_task_ended_answers_shutting_down() {
        let (writer, task) = recorder_writer(Recorder::default());
        task.abort();
        let _ = task.await;
        let error = writer.submit(1).await.unwrap_err();
        assert!(matches!(error, CommitError::ShuttingDown), "{error:?}");
        assert_eq!(ApiError::from(error).message, "the server is shutting down");
    }
}
