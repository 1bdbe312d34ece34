//! Group commit: every write of one kind that is waiting when the store's writer is free goes
//! into one transaction, so a thousand heartbeats, session records or worker reports cost a few
//! fsyncs a second instead of a thousand.
//!
//! Invariant: a caller is answered only after the transaction holding its write committed, so
//! an acknowledged write survives `kill -9` exactly as a single write would. A batch fails or
//! commits as a whole; on failure every caller in it gets the error.

use std::future::Future;

use hydra_store::{Heartbeat, SessionRecord, SessionWrite, Store, StoreError, WorkerReportRecord};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::ApiError;

/// Most writes in one transaction.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer before callers wait for room.
const QUEUE: usize = 8_192;

struct Pending<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, ApiError>>,
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

fn shutting_down() -> ApiError {
    ApiError::new(
        hydra_api::ErrorCode::Unavailable,
        "the server is shutting down",
    )
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
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
    pub async fn submit(&self, item: I) -> Result<O, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { item, reply })
            .await
            .map_err(|_| shutting_down())?;
        answer.await.map_err(|_| shutting_down())?
    }
}

async fn write_batches<C, I, O, W, F>(
    name: &'static str,
    context: C,
    write: W,
    mut pending: mpsc::Receiver<Pending<I, O>>,
) where
    C: Clone,
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
        match write(context.clone(), items).await {
            Ok(outcomes) => {
                debug_assert_eq!(outcomes.len(), count, "{name}: one outcome per write");
                let mut outcomes = outcomes.into_iter();
                for reply in replies {
                    let outcome = outcomes.next().ok_or_else(|| {
                        ApiError::new(
                            hydra_api::ErrorCode::Internal,
                            format!("{name}: the store answered fewer writes than it was given"),
                        )
                    });
                    let _ = reply.send(outcome);
                }
            }
            Err(error) => {
                let error = ApiError::from(error);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
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
    pub async fn record(&self, id: &str, heartbeat: Heartbeat) -> Result<bool, ApiError> {
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

    /// Inserts a session record durably; `Conflict` when the id exists.
    pub async fn insert(&self, session: SessionRecord) -> Result<(), ApiError> {
        let what = format!("session {:?}", session.id);
        if self.submit(SessionWrite::Insert(session)).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict { what }.into())
        }
    }

    /// Replaces a session's mutable fields durably; `false` when it does not exist.
    pub async fn update(&self, session: SessionRecord) -> Result<bool, ApiError> {
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
    async fn a_failed_transaction_fails_every_write_in_it() {
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
        recorder.commit.add_permits(2);
        assert_eq!(blocker.await.unwrap().unwrap(), 10);
        for task in doomed {
            let error = task.await.unwrap().unwrap_err();
            assert_eq!(error.code, hydra_api::ErrorCode::Conflict, "{error:?}");
        }
    }

    #[tokio::test]
    async fn a_writer_whose_task_ended_answers_shutting_down() {
        let (writer, task) = recorder_writer(Recorder::default());
        task.abort();
        let _ = task.await;
        let error = writer.submit(1).await.unwrap_err();
        assert_eq!(error.message, "the server is shutting down");
    }
}
