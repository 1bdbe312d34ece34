//! The fleet service: the only way to change a node (enrol, move, drain, heartbeat, remove, the
//! peer mesh's `unreachable` mark).
//!
//! Invariant: a change's store write and its view patch happen together whatever the caller
//! does. Each change runs to completion in a task of its own, under the node's lock; the handler
//! only awaits its answer, so a client that hangs up mid-request cannot leave the store changed
//! and the view not (issue 7 item 5). The view is written nowhere else for nodes.

use std::sync::{Arc, RwLockReadGuard};

use hydra_core::Node;
use hydra_store::{Heartbeat, Store};

use crate::error::{ApiError, store_error};
use crate::events::{Change, EventBus};
use crate::group_commit::HeartbeatWriter;
use crate::registry::{NodeLocks, Registry, SharedRegistry};

/// Store, registry view and node locks behind one set of methods; cheap to clone.
#[derive(Debug, Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    view: SharedRegistry,
    locks: NodeLocks,
    heartbeats: HeartbeatWriter,
    /// Where acknowledged node changes are announced (`GET /api/v1/events`).
    events: EventBus,
}

/// The answer to a node change that names no node.
fn unknown_node(id: &str) -> ApiError {
    ApiError::not_found(format!("node {id:?} is not enrolled"))
}

impl Fleet {
    /// The service over `view` (loaded from `store`); heartbeats are written through the
    /// group-commit `heartbeats` writer.
    pub fn new(store: Store, view: SharedRegistry, heartbeats: HeartbeatWriter) -> Fleet {
        Fleet::with_events(store, view, heartbeats, EventBus::default())
    }

    /// [`Fleet::new`] announcing every acknowledged change on `events`.
    pub fn with_events(
        store: Store,
        view: SharedRegistry,
        heartbeats: HeartbeatWriter,
        events: EventBus,
    ) -> Fleet {
        Fleet {
            inner: Arc::new(Inner {
                store,
                view,
                locks: NodeLocks::new(64),
                heartbeats,
                events,
            }),
        }
    }

    /// The bus node changes are announced on, once the store acknowledged them.
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// Read access to the view (never hold it across an await).
    pub fn view(&self) -> RwLockReadGuard<'_, Registry> {
        self.inner.view.read().expect("registry lock poisoned")
    }

    /// Runs `change` to completion in a task of its own and answers its outcome: dropping the
    /// returned future (a client that hung up) does not stop the change.
    async fn owned<T, F>(&self, change: impl FnOnce(Fleet) -> F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        crate::error::run_to_completion("the node change", change(self.clone())).await
    }

    /// Under `id`'s lock: `store_write` (answering whether the node exists), then, once the
    /// store acknowledged it, `patch` on the view. Answers the node as changed.
    async fn change_node<W>(
        self,
        id: String,
        store_write: W,
        patch: impl FnOnce(&mut Node) + Send + 'static,
    ) -> Result<Node, ApiError>
    where
        W: Future<Output = Result<bool, ApiError>> + Send + 'static,
    {
        let _guard = self.inner.locks.lock(&id).await;
        if !store_write.await? {
            return Err(unknown_node(&id));
        }
        let changed = {
            let mut view = self.inner.view.write().expect("registry lock poisoned");
            view.patch(&id, |node| {
                patch(node);
                node.clone()
            })
            .ok_or_else(|| unknown_node(&id))?
        };
        self.inner
            .events
            .publish(Change::NodeChanged(changed.clone()));
        Ok(changed)
    }

    /// Enrols `node` whose token has `token_digest`; `409` when the id is taken.
    pub async fn enrol(&self, node: Node, token_digest: String) -> Result<Node, ApiError> {
        self.owned(move |fleet| async move {
            let _guard = fleet.inner.locks.lock(&node.id).await;
            fleet
                .inner
                .store
                .insert_node(&node, &token_digest)
                .await
                .map_err(store_error)?;
            Ok(fleet.show_enrolled(node, token_digest))
        })
        .await
    }

    /// Enrols `node` by consuming the one-time enrolment token with `enrolment_digest` in the
    /// same store transaction; `401` when that token is unknown, used or expired at `now`.
    pub async fn enrol_with_token(
        &self,
        node: Node,
        token_digest: String,
        enrolment_digest: String,
        now: i64,
    ) -> Result<Node, ApiError> {
        self.owned(move |fleet| async move {
            let _guard = fleet.inner.locks.lock(&node.id).await;
            let store = &fleet.inner.store;
            if !store
                .enrol_with_token(&node, &token_digest, &enrolment_digest, now)
                .await
                .map_err(store_error)?
            {
                return Err(ApiError::unauthorized(
                    "the enrolment token is unknown, used or expired",
                ));
            }
            Ok(fleet.show_enrolled(node, token_digest))
        })
        .await
    }

    /// Puts a node the store just enrolled, and its token digest, into the view.
    fn show_enrolled(&self, node: Node, token_digest: String) -> Node {
        let mut view = self.inner.view.write().expect("registry lock poisoned");
        view.put(node.clone());
        view.set_token(&node.id, token_digest);
        drop(view);
        self.inner
            .events
            .publish(Change::NodeEnrolled(node.clone()));
        node
    }

    /// Re-reads a node (and its token digest) that a write, maybe another replica's, changed,
    /// under the node's lock, so it cannot interleave with this replica's own store write and
    /// view patch of that node; a node gone from the store leaves the view.
    pub async fn refresh(&self, id: &str) -> Result<(), hydra_store::StoreError> {
        let _guard = self.inner.locks.lock(id).await;
        let node = self.inner.store.get_node(id).await?;
        let token = self.inner.store.node_token_hash(id).await?;
        let mut view = self.inner.view.write().expect("registry lock poisoned");
        let before = view.get(id).cloned();
        // What the view did not know yet is another replica's write (this replica's own were
        // patched in and announced by the writer): announced here, once, so every replica's
        // event stream shows every write.
        let change = match (node, token) {
            (Some(node), Some(token)) => {
                let change = match &before {
                    None => Some(Change::NodeEnrolled(node.clone())),
                    Some(known) if *known != node => Some(Change::NodeChanged(node.clone())),
                    Some(_) => None,
                };
                view.put(node);
                view.set_token(id, token);
                change
            }
            _ => {
                view.remove(id);
                before.map(|_| Change::NodeRemoved(id.to_owned()))
            }
        };
        drop(view);
        if let Some(change) = change {
            self.inner.events.publish(change);
        }
        Ok(())
    }

    /// Moves a node to another district and venue.
    pub async fn move_node(&self, id: &str, district: &str, venue: &str) -> Result<Node, ApiError> {
        let (id, district, venue) = (id.to_owned(), district.to_owned(), venue.to_owned());
        self.owned(move |fleet| {
            let store = fleet.inner.store.clone();
            let (key, to_district, to_venue) = (id.clone(), district.clone(), venue.clone());
            let write = async move {
                store
                    .move_node(&key, &to_district, &to_venue)
                    .await
                    .map_err(store_error)
            };
            fleet.change_node(id, write, move |node| {
                node.district = district;
                node.venue = venue;
            })
        })
        .await
    }

    /// Drains (`true`) or undrains (`false`) a node.
    pub async fn set_drained(&self, id: &str, drained: bool) -> Result<Node, ApiError> {
        let id = id.to_owned();
        self.owned(move |fleet| {
            let store = fleet.inner.store.clone();
            let key = id.clone();
            let write = async move { store.set_drained(&key, drained).await.map_err(store_error) };
            fleet.change_node(id, write, move |node| node.drained = drained)
        })
        .await
    }

    /// Records a heartbeat (group-committed with whatever else is waiting).
    pub async fn heartbeat(&self, id: &str, heartbeat: Heartbeat) -> Result<Node, ApiError> {
        let id = id.to_owned();
        self.owned(move |fleet| {
            let writer = fleet.inner.heartbeats.clone();
            let key = id.clone();
            let write = async move { writer.record(&key, heartbeat).await.map_err(ApiError::from) };
            fleet.change_node(id, write, move |node| {
                node.last_heartbeat = Some(heartbeat.at);
                node.idle = heartbeat.idle;
                node.active_sessions = heartbeat.active_sessions;
                if let Some(vram_mb) = heartbeat.vram_mb {
                    node.vram_mb = Some(vram_mb);
                }
            })
        })
        .await
    }

    /// Applies what the peer mesh said about node `id` (issue 11), under the node's lock so no
    /// heartbeat interleaves: `hydra_core::liveness::mesh_verdict` decides; a mark is the view's
    /// alone (never stored: a restarted replica falls back to heartbeats) and is announced.
    pub async fn apply_mesh_signal(
        &self,
        id: &str,
        signal: hydra_core::liveness::MeshSignal,
        agent_answered: Option<bool>,
        now: i64,
        heartbeat_timeout_ms: i64,
    ) -> hydra_core::liveness::MeshVerdict {
        use hydra_core::liveness::{MeshVerdict, mesh_verdict};
        let _guard = self.inner.locks.lock(id).await;
        let (verdict, changed) = {
            let mut view = self.inner.view.write().expect("registry lock poisoned");
            let verdict = mesh_verdict(
                signal,
                view.get(id),
                agent_answered,
                now,
                heartbeat_timeout_ms,
            );
            let changed = match verdict {
                MeshVerdict::MarkUnreachable { since } => view.patch(id, |node| {
                    node.unreachable_since = Some(since);
                    node.clone()
                }),
                MeshVerdict::Keep(_) => None,
            };
            (verdict, changed)
        };
        if let Some(changed) = changed {
            self.inner.events.publish(Change::NodeChanged(changed));
        }
        verdict
    }

    /// Removes a node, its token and its latency samples; then, still in the owned task and
    /// under the node's lock, runs `also` (what other services forget about the node, e.g. the
    /// relay's worker directory), so it is not skipped when the client hangs up.
    pub async fn remove(
        &self,
        id: &str,
        also: impl FnOnce(&str) + Send + 'static,
    ) -> Result<(), ApiError> {
        let id = id.to_owned();
        self.owned(move |fleet| async move {
            let _guard = fleet.inner.locks.lock(&id).await;
            if !fleet
                .inner
                .store
                .delete_node(&id)
                .await
                .map_err(store_error)?
            {
                return Err(unknown_node(&id));
            }
            fleet
                .inner
                .view
                .write()
                .expect("registry lock poisoned")
                .remove(&id);
            also(&id);
            fleet.inner.events.publish(Change::NodeRemoved(id.clone()));
            Ok(())
        })
        .await
    }
}
