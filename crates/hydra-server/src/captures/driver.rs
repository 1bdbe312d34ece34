//! The capture driver: runs `hydra_core::capture::Orchestrator` against real writers and time.
//! It opens one writer task per node, passes a stop request or the duration's end to them, and
//! once every writer has ended stores the capture's final status (only it finalises the capture).
//! A node the peer mesh declares down has its writer stopped at once (`node_left`).
//! When this replica stops being the master (`abandon`, or a writer fenced by the store), it ends
//! its writers and returns without writing anything more: the new master resumes the capture.

use std::collections::HashMap;
use std::sync::Arc;

use hydra_api::captures::MonitorFilters;
use hydra_api::system::now_ms;
use hydra_core::capture::{
    CaptureAction, CaptureLimits, Orchestrator, SegmentEnd, TerminationReason, WriterEvent,
};
use hydra_store::Store;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::captures::writer::{ResumePoint, Writer};

/// A node to capture.
pub struct Target {
    /// The node.
    pub node_id: String,
    /// Its agent, when known.
    pub agent: Option<hydra_client::AgentClient>,
    /// Where its segment goes on from, when resumed.
    pub resume: Option<ResumePoint>,
}

/// A capture taken over mid-way: when it began and its segments that ended already.
pub struct Resumed {
    /// When the capture began (its duration counts from here).
    pub started_at: i64,
    /// Segments that ended before the takeover, with how.
    pub ended: Vec<(String, SegmentEnd)>,
}

/// What the driver of one capture needs.
pub struct Driver {
    /// The store.
    pub store: Store,
    /// Where the writers' chunks are stored (one group commit for every capture and node).
    pub chunks: crate::group_commit::ChunkWriter,
    /// The capture.
    pub capture_id: String,
    /// Its nodes.
    pub targets: Vec<Target>,
    /// The feed filters.
    pub filters: MonitorFilters,
    /// Its limits.
    pub limits: CaptureLimits,
    /// Live lines for tails.
    pub tail: broadcast::Sender<Arc<(String, i64, String)>>,
    /// An operator's stop request.
    pub stop: mpsc::Receiver<()>,
    /// Cancelled when this replica is no longer the master (or shuts down): leave the capture
    /// as stored for the next master.
    pub abandon: CancellationToken,
    /// `Some` when this driver resumes a capture another driver began.
    pub resumed: Option<Resumed>,
}

/// What a writer task answers: its node and how its segment ended (`None`: fenced).
type WriterOutcome = (String, Option<SegmentEnd>);

/// The writer tasks of one capture, by node.
#[derive(Default)]
struct Writers {
    /// Each node's agent and resume point, until its writer opens.
    agents: HashMap<String, (Option<hydra_client::AgentClient>, Option<ResumePoint>)>,
    stops: HashMap<String, watch::Sender<Option<TerminationReason>>>,
    tasks: tokio::task::JoinSet<WriterOutcome>,
    task_nodes: HashMap<tokio::task::Id, String>,
}

/// How a writer task ended, as the driver acts on it.
enum Joined {
    /// Its segment ended (a writer that panicked ends as a broken feed).
    Ended(String, SegmentEnd),
    /// Its write was fenced: this replica is no longer the master.
    Fenced,
    /// Nothing to act on.
    Nothing,
}

impl Writers {
    /// Opens the writer of `node_id`.
    fn open(&mut self, driver: &Driver, node_id: String) {
        let (stop_sender, stop) = watch::channel(None);
        self.stops.insert(node_id.clone(), stop_sender);
        let (agent, resume) = self.agents.remove(&node_id).unwrap_or_default();
        let writer = Writer {
            store: driver.store.clone(),
            chunks: driver.chunks.clone(),
            capture_id: driver.capture_id.clone(),
            node_id: node_id.clone(),
            agent,
            filters: driver.filters.clone(),
            limits: driver.limits,
            tail: driver.tail.clone(),
            stop,
            resume,
        };
        let task_node = node_id.clone();
        let handle = self
            .tasks
            .spawn(async move { (node_id, writer.run().await) });
        self.task_nodes.insert(handle.id(), task_node);
    }

    /// Asks the writer of `node_id` to stop, with why.
    fn stop(&self, node_id: &str, reason: TerminationReason) {
        if let Some(stop) = self.stops.get(node_id) {
            let _ = stop.send(Some(reason));
        }
    }

    /// Whether `node_id` has (or had) a writer.
    fn has(&self, node_id: &str) -> bool {
        self.stops.contains_key(node_id)
    }

    /// Waits for the next writer to end (pending while none runs).
    async fn join_next(&mut self) -> Joined {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        match self.tasks.join_next_with_id().await {
            Some(Ok((_, (node_id, Some(end))))) => Joined::Ended(node_id, end),
            Some(Ok((_, (_, None)))) => Joined::Fenced,
            Some(Err(failure)) => match self.task_nodes.get(&failure.id()) {
                Some(node_id) => Joined::Ended(
                    node_id.clone(),
                    SegmentEnd::for_reason(TerminationReason::SourceError, false),
                ),
                None => Joined::Nothing,
            },
            None => Joined::Nothing,
        }
    }
}

/// Sleeps until `deadline` (unix ms), or forever without one.
async fn sleep_until(deadline: Option<i64>) {
    match deadline {
        Some(at) => {
            let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        None => std::future::pending::<()>().await,
    }
}

impl Driver {
    /// Runs the capture to its end and finalises it, unless abandoned first; `left` brings the
    /// nodes the peer mesh declared down (their writers end with `node_left`).
    pub async fn run(mut self, mut left: mpsc::Receiver<String>) {
        let (mut orchestrator, mut writers) = self.orchestrator();
        let mut stop_open = true;
        loop {
            while let Some(action) = orchestrator.poll_action() {
                match action {
                    CaptureAction::OpenWriter { node_id } => writers.open(&self, node_id),
                    CaptureAction::StopWriter { node_id, reason } => writers.stop(&node_id, reason),
                    CaptureAction::Finalise {
                        status,
                        reason,
                        ended_at,
                    } => {
                        self.finalise(status, reason, ended_at).await;
                        return;
                    }
                }
            }
            let deadline = orchestrator.poll_timeout();
            tokio::select! {
                () = self.abandon.cancelled() => {
                    self.leave(&mut writers.tasks).await;
                    return;
                }
                requested = self.stop.recv(), if stop_open => {
                    match requested {
                        Some(()) => orchestrator.handle_stop(now_ms()),
                        None => stop_open = false,
                    }
                }
                joined = writers.join_next() => match joined {
                    Joined::Ended(node_id, end) => {
                        orchestrator.handle_event(WriterEvent::Ended { node_id, end }, now_ms());
                    }
                    Joined::Fenced => {
                        self.leave(&mut writers.tasks).await;
                        return;
                    }
                    Joined::Nothing => {}
                },
                Some(node_id) = left.recv() => {
                    if writers.has(&node_id) {
                        tracing::warn!(capture_id = %self.capture_id, %node_id, "[capture] node declared down by the mesh: its segment ends");
                    }
                    orchestrator.handle_node_left(&node_id, now_ms());
                }
                () = sleep_until(deadline) => orchestrator.handle_timeout(now_ms()),
            }
        }
    }

    /// The orchestrator of this capture (new, or resumed with the segments that ended) and its
    /// writers' nodes, none open yet.
    fn orchestrator(&mut self) -> (Orchestrator, Writers) {
        let node_ids: Vec<String> = self
            .targets
            .iter()
            .map(|target| target.node_id.clone())
            .collect();
        let writers = Writers {
            agents: self
                .targets
                .drain(..)
                .map(|target| (target.node_id, (target.agent, target.resume)))
                .collect(),
            ..Writers::default()
        };
        let started = now_ms();
        let orchestrator = match self.resumed.take() {
            Some(resumed) => Orchestrator::resume(
                &node_ids,
                &resumed.ended,
                self.limits,
                resumed.started_at,
                started,
            ),
            None => Orchestrator::new(&node_ids, self.limits, started),
        };
        (orchestrator, writers)
    }

    /// Stores the capture's final status (only the driver does).
    async fn finalise(
        &self,
        status: hydra_core::capture::CaptureStatus,
        reason: Option<TerminationReason>,
        ended_at: i64,
    ) {
        match self
            .store
            .finalise_capture(&self.capture_id, status, reason, ended_at)
            .await
        {
            Ok(_) => {
                tracing::info!(capture_id = %self.capture_id, status = status.as_str(), reason = reason.map_or("-", TerminationReason::as_str), "[capture] capture finalised")
            }
            Err(error) => {
                tracing::warn!(capture_id = %self.capture_id, %error, "[capture] cannot store the capture's end")
            }
        }
    }

    /// Ends every writer without writing anything more: each store write commits a chunk with
    /// its segment's counts or nothing, so what is stored is where the next master goes on from.
    async fn leave(&self, writers: &mut tokio::task::JoinSet<WriterOutcome>) {
        writers.abort_all();
        while writers.join_next().await.is_some() {}
        tracing::info!(capture_id = %self.capture_id, "[capture] capture left to the next master");
    }
}
