//! The in-memory view of the registry that serves every read, so that the hot path
//! (`GET /api/v1/bodies/eligible`) never reads the whole registry from the database.
//!
//! Invariant: the store is written first; the view is patched only after the store acknowledged,
//! and writes to one node are serialised (see `NodeLocks`), so the view never shows a write the
//! store does not have, and field patches to one node land in the store's order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use hydra_core::{LatencySample, Node};
use hydra_store::{Store, StoreError};

/// Nodes, token digests and latency samples, indexed for the queries the API makes.
#[derive(Debug, Default)]
pub struct Registry {
    nodes: BTreeMap<String, Node>,
    /// district -> ids of nodes in it; selection only looks at the head's district.
    by_district: HashMap<String, HashSet<String>>,
    /// node id -> token digest.
    token_of: HashMap<String, String>,
    /// token digest -> node id.
    node_of_token: HashMap<String, String>,
    /// head id -> body id -> latest sample.
    latency: HashMap<String, HashMap<String, LatencySample>>,
}

impl Registry {
    /// Loads everything from the store (at start).
    pub async fn load(store: &Store) -> Result<Registry, StoreError> {
        let mut registry = Registry::default();
        for node in store.list_nodes().await? {
            registry.put(node);
        }
        for (id, digest) in store.list_token_hashes().await? {
            registry.set_token(&id, digest);
        }
        registry.latency = store.list_latencies().await?;
        Ok(registry)
    }

    /// Inserts or replaces a node.
    pub fn put(&mut self, node: Node) {
        if let Some(previous) = self.nodes.get(&node.id)
            && previous.district != node.district
        {
            let previous_district = previous.district.clone();
            self.unindex(&node.id, &previous_district);
        }
        self.by_district
            .entry(node.district.clone())
            .or_default()
            .insert(node.id.clone());
        self.nodes.insert(node.id.clone(), node);
    }

    fn unindex(&mut self, id: &str, district: &str) {
        if let Some(ids) = self.by_district.get_mut(district) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_district.remove(district);
            }
        }
    }

    /// Records a node's token digest.
    pub fn set_token(&mut self, id: &str, digest: String) {
        if let Some(old) = self.token_of.insert(id.to_owned(), digest.clone()) {
            self.node_of_token.remove(&old);
        }
        self.node_of_token.insert(digest, id.to_owned());
    }

    /// Removes a node, its token and its latency samples.
    pub fn remove(&mut self, id: &str) -> Option<Node> {
        let node = self.nodes.remove(id)?;
        self.unindex(id, &node.district);
        if let Some(digest) = self.token_of.remove(id) {
            self.node_of_token.remove(&digest);
        }
        self.latency.remove(id);
        for samples in self.latency.values_mut() {
            samples.remove(id);
        }
        Some(node)
    }

    /// Applies `change` to a node in place; `None` when it is not known.
    pub fn patch<T>(&mut self, id: &str, change: impl FnOnce(&mut Node) -> T) -> Option<T> {
        let node = self.nodes.get_mut(id)?;
        let old_district = node.district.clone();
        let outcome = change(node);
        if node.district != old_district {
            let new_district = node.district.clone();
            self.unindex(id, &old_district);
            self.by_district
                .entry(new_district)
                .or_default()
                .insert(id.to_owned());
        }
        Some(outcome)
    }

    /// One node.
    pub fn get(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Every node, by id.
    pub fn all(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is enrolled.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes of one district (any role, any status).
    pub fn in_district<'a>(&'a self, district: &str) -> impl Iterator<Item = &'a Node> + 'a {
        self.by_district
            .get(district)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.nodes.get(id))
    }

    /// The token digest of a node.
    pub fn token_digest(&self, id: &str) -> Option<&str> {
        self.token_of.get(id).map(String::as_str)
    }

    /// The node whose token has this digest.
    pub fn node_with_token(&self, digest: &str) -> Option<&str> {
        self.node_of_token.get(digest).map(String::as_str)
    }

    /// Latest latency samples a head measured.
    pub fn latency_of(&self, head_id: &str) -> Option<&HashMap<String, LatencySample>> {
        self.latency.get(head_id)
    }

    /// Records a latency sample.
    pub fn set_latency(&mut self, head_id: &str, body_id: &str, sample: LatencySample) {
        self.latency
            .entry(head_id.to_owned())
            .or_default()
            .insert(body_id.to_owned(), sample);
    }
}

/// Serialises writes per node (store write, then view patch) without one global write lock:
/// a fixed set of async mutexes, chosen by a hash of the node id.
#[derive(Debug)]
pub struct NodeLocks {
    shards: Vec<tokio::sync::Mutex<()>>,
}

impl NodeLocks {
    /// `count` shards.
    pub fn new(count: usize) -> NodeLocks {
        NodeLocks {
            shards: (0..count.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Holds the lock of `id`'s shard until the guard drops.
    pub async fn lock(&self, id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::Hasher;
        // A fixed-key hasher keeps one id on one shard for the life of the process.
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(id.as_bytes());
        let index = (hasher.finish() % self.shards.len() as u64) as usize;
        self.shards[index].lock().await
    }
}

/// The shared, lockable view.
pub type SharedRegistry = Arc<RwLock<Registry>>;
