//! Live fleet events: the bus behind `GET /api/v1/events` (`crate::routes::events`), which streams,
//! as server-sent events, every node and session change once the store acknowledged it, plus
//! nodes turning online or offline.
//!
//! Two sources feed it, so every replica shows every write once: the writing replica publishes
//! after its store write (the `Fleet` service, the session writer), and every replica's change-
//! feed follower publishes what it re-reads (`Fleet::refresh` for a node whose view changed,
//! [`EventBus::publish_session`] for a session, which skips a record already announced), so a
//! follower's dashboard sees the master's writes. Each subscriber reads its own bounded ring
//! (`tokio::sync::broadcast`):
//! publishing never waits, and a subscriber that falls behind gets a `lagged` event and a fresh
//! `snapshot` instead of slowing the writers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydra_core::Node;
use hydra_store::SessionRecord;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it is told `lagged` and resynced.
pub const SUBSCRIBER_BUFFER: usize = 1_024;

/// How often each subscriber looks for nodes whose heartbeats stopped (or started).
pub(crate) const STATUS_TICK: Duration = Duration::from_secs(1);

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
