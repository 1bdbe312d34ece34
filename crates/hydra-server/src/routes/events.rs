//! `GET /api/v1/events`: the server-sent stream of fleet changes, one subscriber per request.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use hydra_api::events::event_names;
use hydra_api::system::now_ms;
use hydra_api::{FleetSnapshot, Lagged, NodeRemoved, NodeStatusChanged, NodeStatusWire, NodeView};
use hydra_core::NodeStatus;
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::events::{Change, STATUS_TICK};
use crate::state::AppState;

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
