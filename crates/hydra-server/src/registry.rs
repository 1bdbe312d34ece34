//! The in-memory view of the registry that serves every read, so that the hot path
//! (`GET /api/v1/bodies/eligible`) never reads the whole registry from the database.
//!
//! Invariant: the store is written first; the view is patched only after the store acknowledged,
//! and writes to one node are serialised (see `NodeLocks`), so the view never shows a write the
//! store does not have, and field patches to one node land in the store's order.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hydra_core::{LatencySample, Node};
use hydra_store::{Store, StoreError};

/// Nodes, token digests and latency samples, indexed for the queries the API makes.
///
/// Nodes are stored grouped by district, so that selection walks one district's nodes without
/// a lookup per node.
#[derive(Debug, Default)]
pub struct Registry {
    /// district -> node id -> node.
    districts: HashMap<String, HashMap<String, Node>>,
    /// node id -> its district.
    district_of: HashMap<String, String>,
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

    /// Inserts or replaces a node; a replacement re-read from the store keeps the mesh's
    /// `unreachable` mark, which only the view holds.
    pub fn put(&mut self, mut node: Node) {
        if let Some(old) = self.take(&node.id)
            && node.unreachable_since.is_none()
        {
            node.unreachable_since = old.unreachable_since;
        }
        self.district_of
            .insert(node.id.clone(), node.district.clone());
        self.districts
            .entry(node.district.clone())
            .or_default()
            .insert(node.id.clone(), node);
    }

    /// Removes a node from the district index only.
    fn take(&mut self, id: &str) -> Option<Node> {
        let district = self.district_of.remove(id)?;
        let nodes = self.districts.get_mut(&district)?;
        let node = nodes.remove(id);
        if nodes.is_empty() {
            self.districts.remove(&district);
        }
        node
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
        let node = self.take(id)?;
        if let Some(digest) = self.token_of.remove(id) {
            self.node_of_token.remove(&digest);
        }
        self.latency.remove(id);
        for samples in self.latency.values_mut() {
            samples.remove(id);
        }
        Some(node)
    }

    /// Applies `change` to a node in place; `None` when it is not known. A change of district
    /// moves the node to its new district's group.
    pub fn patch<T>(&mut self, id: &str, change: impl FnOnce(&mut Node) -> T) -> Option<T> {
        let district = self.district_of.get(id)?;
        let node = self.districts.get_mut(district)?.get_mut(id)?;
        let outcome = change(node);
        if node.district != *district {
            let moved = node.clone();
            self.put(moved);
        }
        Some(outcome)
    }

    /// One node.
    pub fn get(&self, id: &str) -> Option<&Node> {
        self.districts.get(self.district_of.get(id)?)?.get(id)
    }

    /// Every node, ordered by id.
    pub fn all(&self) -> Vec<&Node> {
        let mut nodes: Vec<&Node> = self.districts.values().flat_map(HashMap::values).collect();
        nodes.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.district_of.len()
    }

    /// Whether no node is enrolled.
    pub fn is_empty(&self) -> bool {
        self.district_of.is_empty()
    }

    /// Nodes of one district (any role, any status), in no particular order.
    pub fn in_district<'a>(&'a self, district: &str) -> impl Iterator<Item = &'a Node> + 'a {
        self.districts
            .get(district)
            .into_iter()
            .flat_map(HashMap::values)
    }

    /// The node whose token has this digest.
    pub fn node_with_token(&self, digest: &str) -> Option<&str> {
        self.node_of_token.get(digest).map(String::as_str)
    }

    /// Latest latency samples a head measured.
    pub fn latency_of(&self, head_id: &str) -> Option<&HashMap<String, LatencySample>> {
        self.latency.get(head_id)
    }

    /// Forgets the sample `head_id` measured to `body_id` (another replica removed it).
    pub fn remove_latency(&mut self, head_id: &str, body_id: &str) {
        if let Some(samples) = self.latency.get_mut(head_id) {
            samples.remove(body_id);
        }
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

#[cfg(test)]
mod tests {
    use hydra_core::{Node, Role, Roles};

    use super::Registry;

    fn node(id: &str, district: &str) -> Node {
        let mut node = Node::new(id, Roles::NONE.with(Role::Body));
        node.district = district.into();
        node
    }

    fn ids_in(registry: &Registry, district: &str) -> Vec<String> {
        let mut ids: Vec<String> = registry
            .in_district(district)
            .map(|n| n.id.clone())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn district_index_follows_puts_moves_and_removals() {
        let mut registry = Registry::default();
        registry.put(node("b", "bxl1"));
        registry.put(node("a", "bxl1"));
        registry.put(node("c", "ams1"));
        assert_eq!(ids_in(&registry, "bxl1"), ["a", "b"]);
        assert_eq!(
            registry
                .all()
                .iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        registry.patch("a", |n| n.district = "bxl1-test".into());
        assert_eq!(ids_in(&registry, "bxl1"), ["b"]);
        assert_eq!(ids_in(&registry, "bxl1-test"), ["a"]);
        assert_eq!(registry.get("a").unwrap().district, "bxl1-test");
        registry.put(node("b", "ams1"));
        assert_eq!(ids_in(&registry, "bxl1"), Vec::<String>::new());
        assert_eq!(ids_in(&registry, "ams1"), ["b", "c"]);
        registry.set_token("c", "digest-c".into());
        assert_eq!(registry.node_with_token("digest-c"), Some("c"));
        assert!(registry.remove("c").is_some());
        assert_eq!(registry.node_with_token("digest-c"), None);
        assert_eq!(registry.get("c"), None);
        assert_eq!(registry.len(), 2);
        assert!(registry.remove("c").is_none());
    }
}
