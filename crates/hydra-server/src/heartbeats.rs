//! Group commit of heartbeats: every heartbeat waiting when the writer is free goes into one
//! transaction, so a thousand nodes cost a few fsyncs a second instead of a thousand.
//!
//! Invariant: a heartbeat is answered only after the transaction holding it committed.

use hydra_store::{Heartbeat, Store};
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;

/// Most heartbeats in one transaction.
const MAX_BATCH: usize = 512;
/// Heartbeats waiting for the writer before callers wait for room.
const QUEUE: usize = 8_192;

struct Pending {
    id: String,
    heartbeat: Heartbeat,
    reply: oneshot::Sender<Result<bool, ApiError>>,
}

/// Handle to the batching writer; the writer task ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct HeartbeatWriter {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl HeartbeatWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(store: Store) -> (HeartbeatWriter, tokio::task::JoinHandle<()>) {
        let (queue, pending) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_batches(store, pending));
        (HeartbeatWriter { queue }, task)
    }

    /// Records one heartbeat durably; `false` when the node does not exist.
    pub async fn record(&self, id: &str, heartbeat: Heartbeat) -> Result<bool, ApiError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            id: id.to_owned(),
            heartbeat,
            reply,
        };
        let stopped = || {
            ApiError::new(
                hydra_api::ErrorCode::Unavailable,
                "the server is shutting down",
            )
        };
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn write_batches(store: Store, mut pending: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let items: Vec<(String, Heartbeat)> = batch
            .iter()
            .map(|item| (item.id.clone(), item.heartbeat))
            .collect();
        metrics::histogram!("hydra_heartbeat_batch_size").record(items.len() as f64);
        match store.record_heartbeats(&items).await {
            Ok(found) => {
                for (item, exists) in batch.drain(..).zip(found) {
                    let _ = item.reply.send(Ok(exists));
                }
            }
            Err(error) => {
                let error = ApiError::from(error);
                for item in batch.drain(..) {
                    let _ = item.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
