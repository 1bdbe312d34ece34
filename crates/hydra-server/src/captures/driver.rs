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

impl Driver {
    /// Runs the capture to its end and finalises it, unless abandoned first; `left` brings the
    /// nodes the peer mesh declared down (their writers end with `node_left`).
    pub async fn run(mut self, mut left: mpsc::Receiver<String>) {
        let node_ids: Vec<String> = self
            .targets
            .iter()
            .map(|target| target.node_id.clone())
            .collect();
        let mut agents: HashMap<String, (Option<hydra_client::AgentClient>, Option<ResumePoint>)> =
            self.targets
                .drain(..)
                .map(|target| (target.node_id, (target.agent, target.resume)))
                .collect();
        let started = now_ms();
        let mut orchestrator = match self.resumed.take() {
            Some(resumed) => Orchestrator::resume(
                &node_ids,
                &resumed.ended,
                self.limits,
                resumed.started_at,
                started,
            ),
            None => Orchestrator::new(&node_ids, self.limits, started),
        };
        let mut stops: HashMap<String, watch::Sender<Option<TerminationReason>>> = HashMap::new();
        let mut writers = tokio::task::JoinSet::new();
        let mut task_nodes: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut stop_open = true;
        loop {
            while let Some(action) = orchestrator.poll_action() {
                match action {
                    CaptureAction::OpenWriter { node_id } => {
                        let (stop_sender, stop_receiver) = watch::channel(None);
                        stops.insert(node_id.clone(), stop_sender);
                        let (agent, resume) = agents.remove(&node_id).unwrap_or_default();
                        let writer = Writer {
                            store: self.store.clone(),
                            chunks: self.chunks.clone(),
                            capture_id: self.capture_id.clone(),
                            node_id: node_id.clone(),
                            agent,
                            filters: self.filters.clone(),
                            limits: self.limits,
                            tail: self.tail.clone(),
                            stop: stop_receiver,
                            resume,
                        };
                        let task_node = node_id.clone();
                        let handle = writers.spawn(async move { (node_id, writer.run().await) });
                        task_nodes.insert(handle.id(), task_node);
                    }
                    CaptureAction::StopWriter { node_id, reason } => {
                        if let Some(stop) = stops.get(&node_id) {
                            let _ = stop.send(Some(reason));
                        }
                    }
                    CaptureAction::Finalise {
                        status,
                        reason,
                        ended_at,
                    } => {
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
                        return;
                    }
                }
            }
            let deadline = orchestrator.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => {
                        let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = self.abandon.cancelled() => {
                    self.leave(&mut writers).await;
                    return;
                }
                requested = self.stop.recv(), if stop_open => {
                    match requested {
                        Some(()) => orchestrator.handle_stop(now_ms()),
                        None => stop_open = false,
                    }
                }
                joined = writers.join_next_with_id(), if !writers.is_empty() => {
                    let (node_id, end) = match joined {
                        Some(Ok((_, (node_id, Some(end))))) => (node_id, end),
                        // Fenced: this replica is no longer the master.
                        Some(Ok((_, (_, None)))) => {
                            self.leave(&mut writers).await;
                            return;
                        }
                        // A writer that panicked ended its segment as a broken feed.
                        Some(Err(failure)) => match task_nodes.get(&failure.id()) {
                            Some(node_id) => (
                                node_id.clone(),
                                SegmentEnd::for_reason(TerminationReason::SourceError, false),
                            ),
                            None => continue,
                        },
                        None => continue,
                    };
                    orchestrator.handle_event(WriterEvent::Ended { node_id, end }, now_ms());
                }
                Some(node_id) = left.recv() => {
                    if stops.contains_key(&node_id) {
                        tracing::warn!(capture_id = %self.capture_id, %node_id, "[capture] node declared down by the mesh: its segment ends");
                    }
                    orchestrator.handle_node_left(&node_id, now_ms());
                }
                () = sleep => orchestrator.handle_timeout(now_ms()),
            }
        }
    }

    /// Ends every writer without writing anything more: each store write commits a chunk with
    /// its segment's counts or nothing, so what is stored is where the next master goes on from.
    async fn leave(&self, writers: &mut tokio::task::JoinSet<(String, Option<SegmentEnd>)>) {
        writers.abort_all();
        while writers.join_next().await.is_some() {}
        tracing::info!(capture_id = %self.capture_id, "[capture] capture left to the next master");
    }
}
