//! Views that follow every write: the feed's state ([`ViewFeed`]: revision reached, lag, wake-ups)
//! behind the follower duty (`crate::duties::feed`) that keeps this replica's in-memory views
//! (registry nodes, token digests, latencies, worker reports, placed sessions) current with what
//! every replica wrote, and behind the read-your-writes layer (`crate::routes::layers`:
//! `X-Hydra-Revision` on answers, `min_revision=N` on requests).
//!
//! The follower is woken by PostgreSQL `LISTEN` (a dedicated connection), by this replica's own
//! writes, and by a timer; each time it catches up by revision from the `changes` table, so a
//! lost notification or a reconnect loses nothing. Each change re-reads the changed row: applying
//! one twice is harmless. On SQLite this process is the only writer and patches its views itself
//! after each write, so no follower runs and the view's revision is the store's last write's.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use hydra_api::system::now_ms;
use hydra_store::{Engine, Store, StoreError};
use tokio::sync::{Notify, watch};

/// How often the follower catches up without a wake-up (the bound on a lost notification).
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Revisions read per round trip.
pub(crate) const WINDOW: u32 = 1_000;
/// Most windows per catch-up: the rest waits for the next wake-up.
pub(crate) const MAX_WINDOWS: usize = 1_000;
/// Bound on one store call of the follower.
pub(crate) const STORE_CALL: Duration = Duration::from_secs(10);
/// How long a read with `min_revision` waits for the view by default.
pub const MIN_REVISION_WAIT: Duration = Duration::from_secs(2);

/// Where this replica's views are in the change feed; shared by the follower, health and the
/// read-your-writes layer.
#[derive(Debug)]
pub struct ViewFeed {
    /// The revision every change up to which the views show.
    revision: watch::Sender<i64>,
    /// Since when (unix ms) the views are known to be behind (0: not behind): a wake-up named a
    /// newer revision, or a catch-up failed (then: since the last one that succeeded).
    behind_since_ms: AtomicI64,
    /// When the last catch-up reached the newest revision (unix ms).
    caught_up_at_ms: AtomicI64,
    /// Wakes the follower (this replica wrote).
    wake: Notify,
    /// Whether the follower failed last time (to log the change of state once).
    failing: Mutex<bool>,
    /// The store's feed identity (see `hydra_api::FEED_HEADER`).
    feed_id: String,
}

impl ViewFeed {
    /// Views of the feed `feed_id` loaded at `revision` (read before they were loaded).
    pub fn new(feed_id: String, revision: i64) -> ViewFeed {
        ViewFeed {
            feed_id,
            revision: watch::Sender::new(revision),
            behind_since_ms: AtomicI64::new(0),
            caught_up_at_ms: AtomicI64::new(now_ms()),
            wake: Notify::new(),
            failing: Mutex::new(false),
        }
    }

    /// The cluster id `check-master` answers: the store's feed id, made once per database, so
    /// every replica of one store names the same one and an independent server another.
    pub fn cluster_id(&self) -> &str {
        &self.feed_id
    }

    /// The views' revision.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Raises the views' revision (never lowers it).
    pub fn advance(&self, revision: i64) {
        self.revision.send_if_modified(|current| {
            let raised = revision > *current;
            if raised {
                *current = revision;
            }
            raised
        });
    }

    /// How far behind the views are known to be, in ms (0 when caught up).
    pub fn lag_ms(&self, now: i64) -> u64 {
        match self.behind_since_ms.load(Ordering::Relaxed) {
            0 => 0,
            since => u64::try_from(now.saturating_sub(since)).unwrap_or(0),
        }
    }

    pub(crate) fn note_behind(&self, since: i64) {
        let _ = self.behind_since_ms.compare_exchange(
            0,
            since.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn note_caught_up(&self, now: i64) {
        self.caught_up_at_ms.store(now, Ordering::Relaxed);
        self.behind_since_ms.store(0, Ordering::Relaxed);
    }

    /// Waits until the views reached `wanted`, at most `within`; `Err(revision)` with where
    /// they stand when time ran out.
    pub async fn wait_for(&self, wanted: i64, within: Duration) -> Result<(), i64> {
        let mut receiver = self.revision.subscribe();
        match tokio::time::timeout(within, receiver.wait_for(|revision| *revision >= wanted)).await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(self.revision()),
        }
    }

    /// Wakes the follower (this replica just wrote).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when the follower is woken ([`ViewFeed::wake`]).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The store's feed identity (see `hydra_api::FEED_HEADER`).
    pub fn feed_id(&self) -> &str {
        &self.feed_id
    }

    /// A catch-up failed: the views are behind since the last one that succeeded.
    pub(crate) fn note_failed_catch_up(&self) {
        self.note_behind(self.caught_up_at_ms.load(Ordering::Relaxed));
    }

    /// Records whether the follower's last catch-up failed; answers whether the one before it
    /// did (so a change of state is logged once).
    pub(crate) fn set_failing(&self, failing: bool) -> bool {
        std::mem::replace(
            &mut *self.failing.lock().expect("feed lock poisoned"),
            failing,
        )
    }
}

/// The revision health reports: on SQLite, the store's last write (the views follow it at
/// once).
pub fn view_revision(feed: &ViewFeed, store: &Store) -> i64 {
    if store.engine() == Engine::Sqlite {
        feed.advance(store.written_revision());
    }
    feed.revision()
}

/// The feed's identity and the revision the views start from, read before they are loaded, so
/// nothing written while they load is skipped (it is applied again, harmlessly).
pub async fn start_feed(store: &Store) -> Result<ViewFeed, StoreError> {
    Ok(ViewFeed::new(
        store.feed_id().await?,
        store.current_revision().await?,
    ))
}
