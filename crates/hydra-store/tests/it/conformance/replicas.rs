//! The master lease, the replicas table and the write fence on both engines, and the advisory
//! lock beacon on PostgreSQL: one holder at a time, a new term on every takeover, a deposed
//! holder's renewals and writes refused.

use std::time::{Duration, Instant};

use hydra_core::{Node, Role, Roles};
use hydra_store::{Store, StoreError};

use super::{postgres, sqlite};

on_both_engines!(
    lease_has_one_holder_and_a_new_term_on_every_takeover,
    replicas_are_listed_with_their_heartbeat_age_and_name_the_holder_url,
    an_armed_fence_refuses_writes_unless_the_lease_holds_its_term,
);

const MINUTE_MS: i64 = 60_000;

async fn lease_has_one_holder_and_a_new_term_on_every_takeover(store: Store) {
    assert_eq!(store.lease().await.unwrap(), None);
    assert_eq!(
        store.acquire_lease("a", MINUTE_MS, false).await.unwrap(),
        Some(1)
    );
    // Held and not expired: another replica cannot take it, nor renew it.
    assert_eq!(
        store.acquire_lease("b", MINUTE_MS, false).await.unwrap(),
        None
    );
    assert!(!store.renew_lease("b", 1, MINUTE_MS).await.unwrap());
    assert!(store.renew_lease("a", 1, MINUTE_MS).await.unwrap());
    let lease = store.lease().await.unwrap().expect("lease row");
    assert_eq!((lease.holder.as_str(), lease.term), ("a", 1));
    assert!(
        (50_000..=MINUTE_MS).contains(&lease.remaining_ms),
        "remaining {} ms of a one-minute lease",
        lease.remaining_ms
    );
    // Forced (the beacon says a's session ended): b takes it with term 2; a is deposed.
    assert_eq!(
        store.acquire_lease("b", MINUTE_MS, true).await.unwrap(),
        Some(2)
    );
    assert!(!store.renew_lease("a", 1, MINUTE_MS).await.unwrap());
    assert!(!store.release_lease("a", 1).await.unwrap());
    // A clean release expires it at once: the next replica takes it without force.
    assert!(store.release_lease("b", 2).await.unwrap());
    assert_eq!(
        store.acquire_lease("a", MINUTE_MS, false).await.unwrap(),
        Some(3)
    );
    // A lease that ran out is taken over without force.
    assert!(store.renew_lease("a", 3, 1).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.acquire_lease("c", MINUTE_MS, false).await.unwrap(),
        Some(4)
    );
    let lease = store.lease().await.unwrap().expect("lease row");
    assert_eq!((lease.holder.as_str(), lease.term), ("c", 4));
}

async fn replicas_are_listed_with_their_heartbeat_age_and_name_the_holder_url(store: Store) {
    assert!(store.list_replicas().await.unwrap().is_empty());
    store
        .heartbeat_replica("r2", "http://127.0.0.1:2")
        .await
        .unwrap();
    store
        .heartbeat_replica("r1", "http://127.0.0.1:1")
        .await
        .unwrap();
    store
        .heartbeat_replica("r1", "http://127.0.0.1:11")
        .await
        .unwrap();
    let replicas = store.list_replicas().await.unwrap();
    let seen: Vec<(&str, &str)> = replicas
        .iter()
        .map(|replica| (replica.id.as_str(), replica.base_url.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("r1", "http://127.0.0.1:11"), ("r2", "http://127.0.0.1:2")]
    );
    for replica in &replicas {
        assert!(
            (0..10_000).contains(&replica.heartbeat_age_ms),
            "{replica:?}: a heartbeat just now"
        );
    }
    assert_eq!(
        store.acquire_lease("r2", MINUTE_MS, false).await.unwrap(),
        Some(1)
    );
    let lease = store.lease().await.unwrap().expect("lease row");
    assert_eq!(lease.holder_url.as_deref(), Some("http://127.0.0.1:2"));
}

fn node(id: &str) -> Node {
    let mut node = Node::new(id, Roles::NONE.with(Role::Body));
    node.enrolled_at = 1;
    node
}

async fn an_armed_fence_refuses_writes_unless_the_lease_holds_its_term(store: Store) {
    // Another handle on the same database stands for another replica: its fence is its own.
    let other = store.unfenced();
    store.arm_fence("a");
    let refused = store.insert_node(&node("n-before"), "h").await.unwrap_err();
    assert!(
        matches!(refused, StoreError::NotMaster { term: None }),
        "{refused:?}"
    );
    let term = store
        .acquire_lease("a", MINUTE_MS, false)
        .await
        .unwrap()
        .expect("free lease");
    store.set_fence_term(Some(term));
    store.insert_node(&node("n-master"), "h").await.unwrap();
    // b takes over (as after a's database session ended): a's next write is fenced.
    assert_eq!(
        other.acquire_lease("b", MINUTE_MS, true).await.unwrap(),
        Some(term + 1)
    );
    let fenced = store
        .insert_node(&node("n-deposed"), "h")
        .await
        .unwrap_err();
    assert!(
        matches!(fenced, StoreError::NotMaster { term: Some(t) } if t == term),
        "{fenced:?}"
    );
    let fenced = store
        .record_heartbeat(
            "n-master",
            &hydra_store::Heartbeat {
                at: 5,
                idle: true,
                active_sessions: 0,
                vram_mb: None,
                write_id: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(fenced, StoreError::NotMaster { .. }), "{fenced:?}");
    // Nothing of the refused writes exists; the unfenced handle still writes.
    assert_eq!(other.get_node("n-before").await.unwrap(), None);
    assert_eq!(other.get_node("n-deposed").await.unwrap(), None);
    assert_eq!(
        other
            .get_node("n-master")
            .await
            .unwrap()
            .unwrap()
            .last_heartbeat,
        None
    );
    other.insert_node(&node("n-other"), "h").await.unwrap();
    // Not master any more: refused at once, without a term.
    store.set_fence_term(None);
    let refused = store.insert_node(&node("n-after"), "h").await.unwrap_err();
    assert!(
        matches!(refused, StoreError::NotMaster { term: None }),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_beacon_is_held_by_one_session_and_passes_on_when_it_ends() {
    let store = postgres("beacon").await.store;
    let mut master = store.beacon().expect("postgres has a beacon");
    let mut standby = store.beacon().expect("postgres has a beacon");
    assert!(master.lock(Duration::ZERO).await.unwrap());
    assert!(!standby.lock(Duration::ZERO).await.unwrap());
    assert!(!standby.lock(Duration::from_millis(200)).await.unwrap());
    // Held: a second call checks that the session (and so the lock) is alive.
    assert!(master.lock(Duration::ZERO).await.unwrap());
    // The standby waits; the master's session ends; the standby gets it at once, well before
    // its wait is over.
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let held = standby.lock(Duration::from_secs(20)).await.unwrap();
        (held, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    master.unlock().await;
    assert!(!master.is_held());
    let (held, waited) = waiting.await.unwrap();
    assert!(
        held,
        "the standby got the lock once the master's session ended"
    );
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
}

#[tokio::test]
async fn sqlite_has_no_beacon() {
    assert!(sqlite().await.store.beacon().is_none());
}
