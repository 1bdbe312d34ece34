//! Config bundles on both engines: versions count replacements, unknown nodes get nothing, the
//! bundle goes with its node, concurrent replacements get distinct versions.

use hydra_core::{Node, Role, Roles};
use hydra_store::{NodeConfigRecord, Store};

use super::{postgres, sqlite};

on_both_engines!(
    node_config_versions_count_replacements,
    node_config_of_an_unknown_node_is_not_written,
    node_config_goes_with_its_node,
    node_config_concurrent_replacements_get_distinct_versions,
);

async fn worker(store: &Store, id: &str) {
    let mut node = Node::new(id, Roles::NONE.with(Role::Worker));
    node.enrolled_at = 1;
    store.insert_node(&node, "h").await.unwrap();
}

async fn node_config_versions_count_replacements(store: Store) {
    worker(&store, "w-1").await;
    worker(&store, "w-2").await;
    assert_eq!(store.get_node_config("w-1").await.unwrap(), None);
    let first = store
        .put_node_config("w-1", r#"{"sessions":{"max":4}}"#, 100)
        .await
        .unwrap();
    let expected_first = NodeConfigRecord {
        node_id: "w-1".into(),
        version: 1,
        bundle: r#"{"sessions":{"max":4}}"#.into(),
        updated_at: 100,
    };
    assert_eq!(first.as_ref(), Some(&expected_first));
    let second = store
        .put_node_config("w-1", r#"{"ice_servers":[]}"#, 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.version, second.bundle.as_str(), second.updated_at),
        (2, r#"{"ice_servers":[]}"#, 200),
        "a replacement replaces the whole bundle and bumps the version"
    );
    assert_eq!(store.get_node_config("w-1").await.unwrap(), Some(second));
    assert_eq!(
        store.get_node_config("w-2").await.unwrap(),
        None,
        "another node's bundle is untouched"
    );
}

async fn node_config_of_an_unknown_node_is_not_written(store: Store) {
    assert_eq!(store.put_node_config("ghost", "{}", 1).await.unwrap(), None);
    assert_eq!(store.get_node_config("ghost").await.unwrap(), None);
    // Enrolled later, the node starts from version 1: nothing was kept for the unknown id.
    worker(&store, "ghost").await;
    let record = store.put_node_config("ghost", "{}", 2).await.unwrap();
    assert_eq!(record.map(|record| record.version), Some(1));
}

async fn node_config_goes_with_its_node(store: Store) {
    worker(&store, "w-1").await;
    store.put_node_config("w-1", "{}", 1).await.unwrap();
    store.put_node_config("w-1", "{}", 2).await.unwrap();
    assert!(store.delete_node("w-1").await.unwrap());
    assert_eq!(store.get_node_config("w-1").await.unwrap(), None);
    worker(&store, "w-1").await;
    let record = store.put_node_config("w-1", "{}", 3).await.unwrap();
    assert_eq!(
        record.map(|record| record.version),
        Some(1),
        "a node enrolled again under the same id does not inherit the old bundle"
    );
}

async fn node_config_concurrent_replacements_get_distinct_versions(store: Store) {
    worker(&store, "w-1").await;
    let writers = (0..8).map(|index| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_node_config(
                    "w-1",
                    &format!(r#"{{"sessions":{{"max":{}}}}}"#, index + 1),
                    index,
                )
                .await
                .unwrap()
                .unwrap()
                .version
        })
    });
    let mut versions = Vec::new();
    for writer in writers {
        versions.push(writer.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u64>>());
    let last = store.get_node_config("w-1").await.unwrap().unwrap();
    assert_eq!(last.version, 8);
}
