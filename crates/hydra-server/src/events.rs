//! Live fleet events: `GET /api/v1/events` streams, as server-sent events, every node and
//! session change once the store acknowledged it, plus nodes turning online or offline.
//!
//! Two sources feed it, so every replica shows every write once: the writing replica publishes
//! after its store write (the `Fleet` service, the session writer), and every replica's change-
//! feed follower publishes what it re-reads (`Fleet::refresh` for a node whose view changed,
//! [`EventBus::publish_session`] for a session, which skips a record already announced), so a
//! follower's dashboard sees the master's writes. Each subscriber reads its own bounded ring
//! (`tokio::sync::broadcast`):
//! publishing never waits, and a subscriber that falls behind gets a `lagged` event and a fresh
//! `snapshot` instead of slowing the writers.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use hydra_api::events::event_names;
use hydra_api::{FleetSnapshot, Lagged, NodeRemoved, NodeStatusChanged, NodeStatusWire, NodeView};
use hydra_core::{Node, NodeStatus};
use hydra_store::SessionRecord;
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::state::{AppState, now_ms};

/// Events a subscriber may fall behind by before it is told `lagged` and resynced.
pub const SUBSCRIBER_BUFFER: usize = 1_024;

/// How often each subscriber looks for nodes whose heartbeats stopped (or started).
const STATUS_TICK: Duration = Duration::from_secs(1);

/// A change the store has acknowledged.
#[derive(Debug, Clone)]
pub enum Change {
    /// A node was enrolled.
    NodeEnrolled(Node),
    /// A node was moved, drained or undrained, or sent a heartbeat.
    NodeChanged(Node),
    /// A node was removed.
    NodeRemoved(String),
    /// A session record was inserted or updated.
    Session(SessionRecord),
}

/// The fan-out of acknowledged changes to live subscribers; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Change>>,
    /// The (status, updated_at) last announced per session id: the writer and the feed
    /// follower both announce a session write, the second is skipped.
    announced_sessions: Arc<Mutex<HashMap<String, (hydra_store::SessionStatus, i64)>>>,
}

/// Sessions remembered as announced, at most; past it the memory starts over (a repeat then
/// costs one duplicate event, never a lost one).
const ANNOUNCED_SESSIONS: usize = 16_384;

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(SUBSCRIBER_BUFFER)
    }
}

impl EventBus {
    /// A bus whose subscribers may each fall `buffer` events behind.
    pub fn new(buffer: usize) -> EventBus {
        let (sender, _) = broadcast::channel(buffer.max(1));
        EventBus {
            sender,
            announced_sessions: Arc::default(),
        }
    }

    /// Announces a session record unless this exact version (status, `updated_at`) was
    /// announced already.
    pub fn publish_session(&self, record: SessionRecord) {
        {
            let mut announced = self
                .announced_sessions
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let version = (record.status, record.updated_at);
            if announced.get(&record.id) == Some(&version) {
                return;
            }
            if announced.len() >= ANNOUNCED_SESSIONS {
                announced.clear();
            }
            announced.insert(record.id.clone(), version);
        }
        self.publish(Change::Session(record));
    }

    /// Tells every subscriber about `change`; never waits (no subscriber: nothing to do).
    pub fn publish(&self, change: Change) {
        let _ = self.sender.send(Arc::new(change));
    }

    /// A new subscriber, seeing changes published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.sender.subscribe()
    }
}

/// Server-sent events of fleet changes (admin token): first a `snapshot` of every node, then
/// `node_enrolled`, `node_changed`, `node_removed`, `node_status` and `session` as they happen;
/// `lagged` then a new `snapshot` when this subscriber fell behind. Read it with any SSE client
/// that can send an `Authorization` header (the token never goes in the URL).
#[utoipa::path(get, path = "/api/v1/events", tag = "system", security(("bearer" = [])),
    responses((status = 200, description = "text/event-stream of fleet changes (see hydra_api::events)", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    state.require_admin(&headers)?;
    let receiver = state.fleet().events().subscribe();
    let mut subscriber = Subscriber {
        state,
        receiver,
        ticker: tokio::time::interval(STATUS_TICK),
        known: HashMap::new(),
        pending: VecDeque::new(),
    };
    subscriber.push_snapshot();
    let stream = futures::stream::unfold(subscriber, |mut subscriber| async move {
        let event = subscriber.next_event().await?;
        Some((Ok(event), subscriber))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One subscriber's stream state.
struct Subscriber {
    state: AppState,
    receiver: broadcast::Receiver<Arc<Change>>,
    ticker: tokio::time::Interval,
    /// The status this subscriber was last told for each node.
    known: HashMap<String, NodeStatus>,
    pending: VecDeque<Event>,
}

impl Subscriber {
    /// The next event to send; `None` when the bus is gone (the server is stopping).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            tokio::select! {
                received = self.receiver.recv() => match received {
                    Ok(change) => self.push_change(&change),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "[events] subscriber fell behind, resyncing");
                        self.pending.push_back(json_event(event_names::LAGGED, &Lagged { missed }));
                        self.push_snapshot();
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.ticker.tick() => self.push_status_changes(),
            }
        }
    }

    fn timeout_ms(&self) -> i64 {
        self.state.heartbeat_timeout_ms()
    }

    fn push_snapshot(&mut self) {
        let (now, timeout) = (now_ms(), self.timeout_ms());
        let nodes: Vec<NodeView> = {
            let view = self.state.fleet().view();
            view.all()
                .into_iter()
                .map(|node| NodeView::from_node(node, now, timeout))
                .collect()
        };
        self.known = nodes
            .iter()
            .map(|node| (node.id.clone(), status_of(node.status)))
            .collect();
        self.pending.push_back(json_event(
            event_names::SNAPSHOT,
            &FleetSnapshot {
                nodes,
                heartbeat_timeout_ms: timeout,
            },
        ));
    }

    fn push_change(&mut self, change: &Change) {
        let (now, timeout) = (now_ms(), self.timeout_ms());
        let event = match change {
            Change::NodeEnrolled(node) | Change::NodeChanged(node) => {
                let view = NodeView::from_node(node, now, timeout);
                self.known.insert(node.id.clone(), status_of(view.status));
                let name = if matches!(change, Change::NodeEnrolled(_)) {
                    event_names::NODE_ENROLLED
                } else {
                    event_names::NODE_CHANGED
                };
                json_event(name, &view)
            }
            Change::NodeRemoved(id) => {
                self.known.remove(id);
                json_event(event_names::NODE_REMOVED, &NodeRemoved { id: id.clone() })
            }
            Change::Session(record) => {
                json_event(event_names::SESSION, &crate::sessions::view(record))
            }
        };
        self.pending.push_back(event);
    }

    /// Statuses change with time, not only with writes: a node whose heartbeats stopped turns
    /// offline without any write to announce it.
    fn push_status_changes(&mut self) {
        let (now, timeout) = (now_ms(), self.timeout_ms());
        let changed: Vec<(String, NodeStatus)> = {
            let view = self.state.fleet().view();
            view.all()
                .into_iter()
                .filter_map(|node| {
                    let status = node.status(now, timeout);
                    (self.known.get(&node.id) != Some(&status)).then(|| (node.id.clone(), status))
                })
                .collect()
        };
        for (id, status) in changed {
            self.known.insert(id.clone(), status);
            self.pending.push_back(json_event(
                event_names::NODE_STATUS,
                &NodeStatusChanged {
                    id,
                    status: status.into(),
                },
            ));
        }
    }
}

fn status_of(status: NodeStatusWire) -> NodeStatus {
    match status {
        NodeStatusWire::Online => NodeStatus::Online,
        NodeStatusWire::Offline => NodeStatus::Offline,
        NodeStatusWire::Unreachable => NodeStatus::Unreachable,
    }
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned()))
}
