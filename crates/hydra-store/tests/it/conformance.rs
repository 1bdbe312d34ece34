//! One suite, two engines (the pattern of Garage's `db/test.rs` and Quickwit's metastore suite).

use std::net::IpAddr;

use hydra_core::capture::{CaptureStatus, TerminationReason};
use hydra_core::{CostTier, Node, Role, Roles, Transport};
use hydra_store::{
    CaptureRecord, Change, ChangeKind, ChangesSince, ChunkRecord, Heartbeat, LatencyRecord,
    SegmentRecord, SessionFilter, SessionRecord, SessionStatus, SessionWrite, Store, StoreError,
    WorkerReportRecord, WriteId,
};

/// A store on a fresh file or database, kept alive with its temp dir.
struct Fixture {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_sqlite(&dir.path().join("hydra.db"))
        .await
        .expect("open sqlite");
    Fixture {
        store,
        _dir: Some(dir),
    }
}

async fn postgres(label: &str) -> Fixture {
    let url = hydra_store::testing::fresh_postgres_database(label).await;
    let store = Store::open_postgres(&url).await.expect("open postgres");
    Fixture { store, _dir: None }
}

/// Declares `$name` once per engine, calling `$body(store)`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite_engine {
            $(#[tokio::test] async fn $name() { super::$name(super::sqlite().await.store).await; })*
        }
        mod postgres_engine {
            $(#[tokio::test] async fn $name() {
                super::$name(super::postgres(stringify!($name)).await.store).await;
            })*
        }
    };
}

on_both_engines!(
    nodes_round_trip_every_field,
    duplicate_ids_conflict,
    missing_nodes_report_false,
    heartbeat_updates_liveness_and_keeps_vram_when_absent,
    heartbeat_batches_apply_in_order_and_report_missing_nodes,
    move_and_drain_change_only_their_fields,
    delete_removes_node_and_its_latency,
    latency_keeps_the_latest_sample,
    latency_batches_write_every_sample_in_one_call_and_the_last_wins,
    sessions_round_trip_and_update,
    worker_reports_replace_batch_and_leave_with_their_node,
    active_sessions_are_counted_per_worker,
    sessions_of_one_worker_are_listed_oldest_first,
    only_live_sessions_are_read_for_reconciliation,
    session_write_batches_apply_in_order_and_report_each,
    session_pages_are_newest_first_filtered_and_follow_the_cursor,
    pruning_removes_only_ended_sessions_older_than_the_cutoff_in_batches,
    enrolment_tokens_enrol_once_and_expire,
    an_enrolment_refused_for_a_taken_id_leaves_the_token_unused,
    every_write_takes_the_next_revision_and_lists_what_it_changed,
    concurrent_writes_take_dense_revisions,
    changes_are_read_by_revision_windows_and_a_pruned_horizon_is_reported,
    captures_keep_chunks_per_node_without_collisions,
    a_chunk_stored_twice_is_kept_and_counted_once,
    chunks_of_several_nodes_share_one_commit_and_a_repeated_one_is_answered_alone,
    segments_end_once_and_a_capture_is_finalised_once,
    pruning_removes_only_ended_captures_older_than_the_cutoff,
    open_captures_and_their_resume_points_are_read_back,
    a_write_repeated_with_its_write_id_is_applied_once,
);

fn sample_node(id: &str) -> Node {
    let mut node = Node::new(id, Roles::NONE.with(Role::Body).with(Role::Head));
    node.name = format!("{id} name");
    node.district = "bxl1".into();
    node.venue = "rupelmonde".into();
    node.owner = "acme".into();
    node.allowed_orgs = vec!["globex".into(), "initech".into()];
    node.lan_ip = Some("10.1.0.5".parse::<IpAddr>().unwrap());
    node.wg_ip = Some("fd00::5".parse::<IpAddr>().unwrap());
    node.vram_mb = Some(24_576);
    node.cost_tier = CostTier::Leased;
    node.enrolled_at = 1_700_000_000_123;
    node
}

async fn nodes_round_trip_every_field(store: Store) {
    let node = sample_node("node-0a1b2c3d");
    store.insert_node(&node, "hash-1").await.unwrap();
    let mut bare = Node::new("node-bare", Roles::NONE.with(Role::Worker));
    bare.enrolled_at = 5;
    store.insert_node(&bare, "hash-2").await.unwrap();
    assert_eq!(
        store.get_node("node-0a1b2c3d").await.unwrap(),
        Some(node.clone())
    );
    assert_eq!(store.list_nodes().await.unwrap(), vec![node, bare]);
    assert_eq!(
        store.node_token_hash("node-bare").await.unwrap().as_deref(),
        Some("hash-2")
    );
}

async fn duplicate_ids_conflict(store: Store) {
    store
        .insert_node(&sample_node("node-1"), "a")
        .await
        .unwrap();
    let error = store
        .insert_node(&sample_node("node-1"), "b")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict { .. }), "{error:?}");
    assert_eq!(
        store.node_token_hash("node-1").await.unwrap().as_deref(),
        Some("a")
    );
}

async fn missing_nodes_report_false(store: Store) {
    let heartbeat = Heartbeat {
        at: 1,
        idle: true,
        active_sessions: 0,
        vram_mb: None,
        write_id: None,
    };
    assert!(!store.record_heartbeat("ghost", &heartbeat).await.unwrap());
    assert!(!store.move_node("ghost", "d", "v").await.unwrap());
    assert!(!store.set_drained("ghost", true).await.unwrap());
    assert!(!store.delete_node("ghost").await.unwrap());
    assert_eq!(store.get_node("ghost").await.unwrap(), None);
    assert_eq!(store.node_token_hash("ghost").await.unwrap(), None);
}

async fn heartbeat_updates_liveness_and_keeps_vram_when_absent(store: Store) {
    store.insert_node(&sample_node("b"), "h").await.unwrap();
    let first = Heartbeat {
        at: 1_000,
        idle: true,
        active_sessions: 3,
        vram_mb: Some(8_192),
        write_id: None,
    };
    assert!(store.record_heartbeat("b", &first).await.unwrap());
    let second = Heartbeat {
        at: 2_000,
        idle: false,
        active_sessions: 1,
        vram_mb: None,
        write_id: None,
    };
    assert!(store.record_heartbeat("b", &second).await.unwrap());
    let node = store.get_node("b").await.unwrap().unwrap();
    assert_eq!(node.last_heartbeat, Some(2_000));
    assert!(!node.idle);
    assert_eq!(node.active_sessions, 1);
    assert_eq!(node.vram_mb, Some(8_192));
}

async fn move_and_drain_change_only_their_fields(store: Store) {
    let original = sample_node("b");
    store.insert_node(&original, "h").await.unwrap();
    assert!(store.move_node("b", "bxl1-test", "spare").await.unwrap());
    assert!(store.set_drained("b", true).await.unwrap());
    let moved = store.get_node("b").await.unwrap().unwrap();
    let mut expected = original;
    expected.district = "bxl1-test".into();
    expected.venue = "spare".into();
    expected.drained = true;
    assert_eq!(moved, expected);
    assert!(store.set_drained("b", false).await.unwrap());
    assert!(!store.get_node("b").await.unwrap().unwrap().drained);
}

async fn delete_removes_node_and_its_latency(store: Store) {
    store.insert_node(&sample_node("b"), "h").await.unwrap();
    store.insert_node(&sample_node("other"), "h").await.unwrap();
    for body_id in ["b", "other"] {
        let record = LatencyRecord {
            head_id: "head".into(),
            body_id: body_id.into(),
            transport: Transport::Lan,
            rtt_ms: 4,
            measured_at: 10,
        };
        store.record_latency(&record).await.unwrap();
    }
    assert!(store.delete_node("b").await.unwrap());
    assert_eq!(store.get_node("b").await.unwrap(), None);
    let latencies = store.list_latencies().await.unwrap();
    let head = &latencies["head"];
    assert_eq!(head.keys().collect::<Vec<_>>(), vec!["other"]);
}

async fn latency_keeps_the_latest_sample(store: Store) {
    // The latest is neither the first, nor the lowest, nor the only LAN one.
    for (rtt_ms, measured_at, transport) in [
        (30, 1_000, Transport::Wireguard),
        (2, 2_000, Transport::Lan),
        (45, 3_000, Transport::Wireguard),
    ] {
        let record = LatencyRecord {
            head_id: "h1".into(),
            body_id: "b1".into(),
            transport,
            rtt_ms,
            measured_at,
        };
        store.record_latency(&record).await.unwrap();
    }
    let latencies = store.list_latencies().await.unwrap();
    let sample = latencies["h1"]["b1"];
    assert_eq!((sample.rtt_ms, sample.measured_at), (45, 3_000));
}

async fn latency_batches_write_every_sample_in_one_call_and_the_last_wins(store: Store) {
    let sample = |head: &str, body: &str, rtt_ms: u32, measured_at: i64| LatencyRecord {
        head_id: head.into(),
        body_id: body.into(),
        transport: Transport::Lan,
        rtt_ms,
        measured_at,
    };
    store
        .record_latency(&sample("h1", "b9", 50, 500))
        .await
        .unwrap();
    let mut batch: Vec<LatencyRecord> = (0..256)
        .map(|index| sample("h1", &format!("b{index}"), index, 1_000))
        .collect();
    batch.push(sample("h1", "b7", 3, 1_001));
    batch.push(sample("h2", "b7", 4, 1_002));
    store.record_latencies(&batch).await.unwrap();
    store.record_latencies(&[]).await.unwrap();
    let latencies = store.list_latencies().await.unwrap();
    assert_eq!(latencies["h1"].len(), 256);
    let shown = |head: &str, body: &str| {
        let sample = latencies[head][body];
        (sample.rtt_ms, sample.measured_at)
    };
    assert_eq!(
        shown("h1", "b9"),
        (9, 1_000),
        "the batch replaced the older sample"
    );
    assert_eq!(
        shown("h1", "b7"),
        (3, 1_001),
        "a later sample in the batch wins"
    );
    assert_eq!(shown("h2", "b7"), (4, 1_002));
    assert_eq!(shown("h1", "b255"), (255, 1_000));
}

async fn sessions_round_trip_and_update(store: Store) {
    let mut session = SessionRecord {
        id: "s-1".into(),
        worker_id: "w-1".into(),
        body_ip: "10.0.0.7".into(),
        body_id: Some("b-1".into()),
        head_id: None,
        experience: Some("racing".into()),
        port: None,
        stream_url: None,
        status: SessionStatus::Starting,
        error: None,
        created_at: 100,
        updated_at: 100,
    };
    store.insert_session(&session).await.unwrap();
    assert!(matches!(
        store.insert_session(&session).await,
        Err(StoreError::Conflict { .. })
    ));
    session.port = Some(8081);
    session.stream_url = Some("http://w-1:7071/session/s-1/".into());
    session.status = SessionStatus::Error;
    session.error = Some("process exited".into());
    session.updated_at = 200;
    assert!(store.update_session(&session).await.unwrap());
    assert_eq!(
        store.get_session("s-1").await.unwrap(),
        Some(session.clone())
    );
    assert_eq!(store.list_sessions().await.unwrap(), vec![session]);
    assert!(store.delete_session("s-1").await.unwrap());
    assert!(!store.delete_session("s-1").await.unwrap());
    assert_eq!(store.list_sessions().await.unwrap(), vec![]);
}

async fn heartbeat_batches_apply_in_order_and_report_missing_nodes(store: Store) {
    store.insert_node(&sample_node("b1"), "h").await.unwrap();
    store.insert_node(&sample_node("b2"), "h").await.unwrap();
    let beat = |at| Heartbeat {
        at,
        idle: true,
        active_sessions: 0,
        vram_mb: None,
        write_id: None,
    };
    let batch = vec![
        ("b1".to_owned(), beat(10)),
        ("ghost".to_owned(), beat(11)),
        ("b2".to_owned(), beat(12)),
        ("b1".to_owned(), beat(13)),
    ];
    assert_eq!(
        store.record_heartbeats(&batch).await.unwrap(),
        vec![true, false, true, true]
    );
    assert_eq!(
        store.get_node("b1").await.unwrap().unwrap().last_heartbeat,
        Some(13),
        "later heartbeat of one node wins"
    );
    assert_eq!(
        store.get_node("b2").await.unwrap().unwrap().last_heartbeat,
        Some(12)
    );
    assert_eq!(
        store.record_heartbeats(&[]).await.unwrap(),
        Vec::<bool>::new()
    );
}

fn worker_report(worker_id: &str, max_sessions: u32, reported_at: i64) -> WorkerReportRecord {
    WorkerReportRecord {
        worker_id: worker_id.into(),
        agent_url: format!("http://{worker_id}.example:7071"),
        agent_key_sealed: format!("v1.sealed-{worker_id}-{reported_at}"),
        max_sessions,
        reported_at,
        write_id: None,
    }
}

async fn worker_reports_replace_batch_and_leave_with_their_node(store: Store) {
    let mut worker = Node::new("w-1", Roles::NONE.with(Role::Worker));
    worker.enrolled_at = 1;
    store.insert_node(&worker, "h").await.unwrap();
    assert_eq!(store.list_worker_reports().await.unwrap(), vec![]);
    store
        .put_worker_report(&worker_report("w-1", 15, 100))
        .await
        .unwrap();
    let replaced = WorkerReportRecord {
        agent_url: "http://[fd00::9]:7071".into(),
        ..worker_report("w-1", 4, 200)
    };
    store.put_worker_report(&replaced).await.unwrap();
    assert_eq!(
        store.list_worker_reports().await.unwrap(),
        vec![replaced.clone()],
        "a new report replaces every field"
    );

    let batch = vec![
        worker_report("w-3", 2, 300),
        worker_report("w-2", 7, 301),
        worker_report("w-3", 9, 302),
    ];
    store.put_worker_reports(&batch).await.unwrap();
    store.put_worker_reports(&[]).await.unwrap();
    assert_eq!(
        store.list_worker_reports().await.unwrap(),
        vec![
            replaced,
            worker_report("w-2", 7, 301),
            worker_report("w-3", 9, 302),
        ],
        "ordered by worker id; the later report of w-3 in the batch wins"
    );

    assert!(store.delete_node("w-1").await.unwrap());
    let left: Vec<String> = store
        .list_worker_reports()
        .await
        .unwrap()
        .into_iter()
        .map(|report| report.worker_id)
        .collect();
    assert_eq!(left, ["w-2", "w-3"], "a deleted node's report goes with it");
}

async fn active_sessions_are_counted_per_worker(store: Store) {
    let statuses = [
        ("s-1", "w-1", SessionStatus::Starting),
        ("s-2", "w-1", SessionStatus::Running),
        ("s-3", "w-1", SessionStatus::Stopped),
        ("s-4", "w-2", SessionStatus::Error),
        ("s-5", "w-3", SessionStatus::Running),
    ];
    for (index, (id, worker_id, status)) in statuses.into_iter().enumerate() {
        let session = SessionRecord {
            id: id.into(),
            worker_id: worker_id.into(),
            body_ip: "10.0.0.7".into(),
            body_id: None,
            head_id: None,
            experience: None,
            port: None,
            stream_url: None,
            status,
            error: None,
            created_at: index as i64,
            updated_at: index as i64,
        };
        store.insert_session(&session).await.unwrap();
    }
    let counts = store.active_sessions_by_worker().await.unwrap();
    let mut counts: Vec<(String, u32)> = counts.into_iter().collect();
    counts.sort();
    assert_eq!(counts, vec![("w-1".to_owned(), 2), ("w-3".to_owned(), 1)]);
}

async fn sessions_of_one_worker_are_listed_oldest_first(store: Store) {
    let session = |id: &str, worker_id: &str, created_at: i64| SessionRecord {
        id: id.into(),
        worker_id: worker_id.into(),
        body_ip: "10.0.0.7".into(),
        body_id: None,
        head_id: None,
        experience: None,
        port: Some(8080),
        stream_url: None,
        status: SessionStatus::Running,
        error: None,
        created_at,
        updated_at: created_at,
    };
    for (id, worker_id, created_at) in [
        ("s-c", "w-1", 30),
        ("s-x", "w-2", 10),
        ("s-a", "w-1", 10),
        ("s-b", "w-1", 10),
        ("s-y", "w-10", 5),
    ] {
        store
            .insert_session(&session(id, worker_id, created_at))
            .await
            .unwrap();
    }
    let ids = |sessions: Vec<SessionRecord>| -> Vec<String> {
        sessions.into_iter().map(|session| session.id).collect()
    };
    assert_eq!(
        ids(store.list_sessions_of_worker("w-1").await.unwrap()),
        ["s-a", "s-b", "s-c"],
        "by creation time, then id; not w-10's"
    );
    assert_eq!(
        store.list_sessions_of_worker("w-2").await.unwrap(),
        vec![session("s-x", "w-2", 10)],
        "every field read back"
    );
    assert_eq!(
        store.list_sessions_of_worker("w-none").await.unwrap(),
        vec![]
    );
}

async fn only_live_sessions_are_read_for_reconciliation(store: Store) {
    let session =
        |id: &str, worker_id: &str, status: SessionStatus, created_at: i64| SessionRecord {
            id: id.into(),
            worker_id: worker_id.into(),
            body_ip: "10.0.0.7".into(),
            body_id: None,
            head_id: None,
            experience: Some("demo".into()),
            port: Some(8080),
            stream_url: Some(format!("http://w/session/{id}/")),
            status,
            error: None,
            created_at,
            updated_at: created_at,
        };
    let rows = [
        session("s-run", "w-1", SessionStatus::Running, 20),
        session("s-start", "w-1", SessionStatus::Starting, 10),
        session("s-stop", "w-1", SessionStatus::Stopped, 5),
        session("s-err", "w-1", SessionStatus::Error, 6),
        session("s-other", "w-2", SessionStatus::Running, 1),
    ];
    for row in &rows {
        store.insert_session(row).await.unwrap();
    }
    let ids = |sessions: Vec<SessionRecord>| -> Vec<String> {
        sessions.into_iter().map(|session| session.id).collect()
    };
    assert_eq!(
        store.list_live_sessions_of_worker("w-1").await.unwrap(),
        vec![rows[1].clone(), rows[0].clone()],
        "live only, oldest first, every field read back"
    );
    assert_eq!(
        ids(store.list_live_sessions().await.unwrap()),
        ["s-other", "s-start", "s-run"]
    );
    // A session that ends leaves the live set.
    let mut ended = rows[0].clone();
    ended.status = SessionStatus::Stopped;
    ended.updated_at = 30;
    assert!(store.update_session(&ended).await.unwrap());
    assert_eq!(
        ids(store.list_live_sessions_of_worker("w-1").await.unwrap()),
        ["s-start"]
    );
    assert_eq!(
        store.list_live_sessions_of_worker("w-none").await.unwrap(),
        vec![]
    );
}

async fn session_write_batches_apply_in_order_and_report_each(store: Store) {
    let record = |id: &str, worker_id: &str| SessionRecord {
        id: id.into(),
        worker_id: worker_id.into(),
        body_ip: "10.0.0.7".into(),
        body_id: None,
        head_id: Some("h-1".into()),
        experience: None,
        port: None,
        stream_url: None,
        status: SessionStatus::Starting,
        error: None,
        created_at: 1,
        updated_at: 1,
    };
    store.insert_session(&record("s-old", "w-1")).await.unwrap();
    let running = SessionRecord {
        port: Some(8085),
        stream_url: Some("http://w-2:7071/session/s-new/".into()),
        status: SessionStatus::Running,
        updated_at: 2,
        ..record("s-new", "w-2")
    };
    let taken = SessionRecord {
        worker_id: "w-9".into(),
        ..record("s-old", "w-9")
    };
    let batch = vec![
        SessionWrite::Insert(record("s-new", "w-1")),
        SessionWrite::Insert(taken),
        SessionWrite::Update(running.clone()),
        SessionWrite::Update(record("s-ghost", "w-1")),
    ];
    assert_eq!(
        store.write_sessions(&batch).await.unwrap(),
        vec![true, false, true, false]
    );
    assert_eq!(
        store.get_session("s-new").await.unwrap(),
        Some(running),
        "the update after the insert in one batch wins"
    );
    assert_eq!(
        store.get_session("s-old").await.unwrap(),
        Some(record("s-old", "w-1")),
        "a taken id leaves the stored record as it was"
    );
    assert_eq!(store.get_session("s-ghost").await.unwrap(), None);
    assert_eq!(store.list_sessions().await.unwrap().len(), 2);
    assert_eq!(store.write_sessions(&[]).await.unwrap(), Vec::<bool>::new());
}

fn history_session(
    index: usize,
    status: SessionStatus,
    created_at: i64,
    updated_at: i64,
) -> SessionRecord {
    SessionRecord {
        id: format!("s-{index:04}"),
        worker_id: format!("w-{}", index % 3),
        body_ip: "10.0.0.1".into(),
        body_id: None,
        head_id: index.is_multiple_of(2).then(|| "h-even".to_owned()),
        experience: None,
        port: None,
        stream_url: None,
        status,
        error: None,
        created_at,
        updated_at,
    }
}

async fn session_pages_are_newest_first_filtered_and_follow_the_cursor(store: Store) {
    // 25 sessions; pairs share a created_at, so the id orders them.
    let statuses = [
        SessionStatus::Stopped,
        SessionStatus::Running,
        SessionStatus::Error,
    ];
    let writes: Vec<SessionWrite> = (0..25)
        .map(|index| {
            SessionWrite::Insert(history_session(
                index,
                statuses[index % 3],
                1_000 + (index / 2) as i64,
                2_000,
            ))
        })
        .collect();
    store.write_sessions(&writes).await.unwrap();
    let all_ids = |filter: SessionFilter, page: u32| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            let mut after: Option<(i64, String)> = None;
            for _page in 0..100 {
                let rows = store
                    .list_sessions_page(
                        &filter,
                        page,
                        after.as_ref().map(|(at, id)| (*at, id.as_str())),
                    )
                    .await
                    .unwrap();
                assert!(rows.len() <= page as usize);
                let Some(last) = rows.last() else { break };
                after = Some((last.created_at, last.id.clone()));
                ids.extend(rows.into_iter().map(|row| row.id));
            }
            ids
        }
    };
    let expected: Vec<String> = (0..25).rev().map(|index| format!("s-{index:04}")).collect();
    assert_eq!(all_ids(SessionFilter::default(), 7).await, expected);
    assert_eq!(all_ids(SessionFilter::default(), 1).await, expected);
    let first = store
        .list_sessions_page(&SessionFilter::default(), 3, None)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|row| row.id.as_str()).collect::<Vec<_>>(),
        ["s-0024", "s-0023", "s-0022"]
    );
    let running = all_ids(
        SessionFilter {
            status: Some(SessionStatus::Running),
            ..SessionFilter::default()
        },
        2,
    )
    .await;
    let expected_running: Vec<String> = (0..25)
        .rev()
        .filter(|index| index % 3 == 1)
        .map(|index| format!("s-{index:04}"))
        .collect();
    assert_eq!(running, expected_running);
    let narrow = all_ids(
        SessionFilter {
            status: Some(SessionStatus::Stopped),
            worker_id: Some("w-0".into()),
            head_id: Some("h-even".into()),
        },
        2,
    )
    .await;
    let expected_narrow: Vec<String> = (0..25)
        .rev()
        .filter(|index| index % 3 == 0 && index % 2 == 0)
        .map(|index| format!("s-{index:04}"))
        .collect();
    assert_eq!(narrow, expected_narrow);
    assert!(
        all_ids(
            SessionFilter {
                worker_id: Some("nobody".into()),
                ..SessionFilter::default()
            },
            5
        )
        .await
        .is_empty()
    );
}

async fn pruning_removes_only_ended_sessions_older_than_the_cutoff_in_batches(store: Store) {
    let statuses = [
        SessionStatus::Stopped,
        SessionStatus::Error,
        SessionStatus::Running,
        SessionStatus::Starting,
    ];
    // 40 sessions: even ones ended long ago (updated_at 100), odd ones recently (5_000).
    let writes: Vec<SessionWrite> = (0..40)
        .map(|index| {
            let updated_at = if index % 2 == 0 { 100 } else { 5_000 };
            SessionWrite::Insert(history_session(index, statuses[index % 4], 50, updated_at))
        })
        .collect();
    store.write_sessions(&writes).await.unwrap();
    // Old and ended: indexes 0 mod 4 (stopped) and 2 mod 4 (running: kept) -> 10 stopped old.
    // Error sessions are odd indexes (1 mod 4): all recent, kept.
    let mut pruned = Vec::new();
    for _round in 0..10 {
        let count = store.prune_ended_sessions(1_000, 4).await.unwrap();
        pruned.push(count);
        if count < 4 {
            break;
        }
    }
    assert_eq!(pruned, [4, 4, 2]);
    let left = store.list_sessions().await.unwrap();
    assert_eq!(left.len(), 30);
    assert!(left.iter().all(|row| {
        !(matches!(row.status, SessionStatus::Stopped | SessionStatus::Error)
            && row.updated_at < 1_000)
    }));
    assert!(
        left.iter()
            .any(|row| row.status == SessionStatus::Running && row.updated_at == 100),
        "live sessions are never pruned, however old"
    );
    assert_eq!(
        store.prune_ended_sessions(6_000, 100).await.unwrap(),
        10,
        "the recent error ones, once past the cutoff"
    );
}

async fn enrolment_tokens_enrol_once_and_expire(store: Store) {
    store
        .create_enrolment_token("digest-once", 1_000, 5_000)
        .await
        .unwrap();
    let first = sample_node("node-first");
    assert!(
        store
            .enrol_with_token(&first, "node-hash-1", "digest-once", 2_000)
            .await
            .unwrap()
    );
    assert_eq!(store.get_node("node-first").await.unwrap(), Some(first));
    assert_eq!(
        store
            .node_token_hash("node-first")
            .await
            .unwrap()
            .as_deref(),
        Some("node-hash-1")
    );
    // Used once: a second enrolment with it writes nothing.
    let second = sample_node("node-second");
    assert!(
        !store
            .enrol_with_token(&second, "node-hash-2", "digest-once", 2_001)
            .await
            .unwrap()
    );
    assert_eq!(store.get_node("node-second").await.unwrap(), None);
    // Expired at its expiry instant; unknown digests are refused the same way.
    store
        .create_enrolment_token("digest-late", 1_000, 5_000)
        .await
        .unwrap();
    assert!(
        !store
            .enrol_with_token(&second, "node-hash-2", "digest-late", 5_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .enrol_with_token(&second, "node-hash-2", "digest-unknown", 2_000)
            .await
            .unwrap()
    );
    assert_eq!(store.get_node("node-second").await.unwrap(), None);
    let error = store
        .create_enrolment_token("digest-once", 1_000, 9_000)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict { .. }), "{error:?}");
}

async fn an_enrolment_refused_for_a_taken_id_leaves_the_token_unused(store: Store) {
    store
        .insert_node(&sample_node("node-taken"), "h")
        .await
        .unwrap();
    store
        .create_enrolment_token("digest-kept", 1_000, 5_000)
        .await
        .unwrap();
    let error = store
        .enrol_with_token(&sample_node("node-taken"), "h2", "digest-kept", 2_000)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict { .. }), "{error:?}");
    // The failed transaction consumed nothing: the token still enrols another id.
    assert!(
        store
            .enrol_with_token(&sample_node("node-other"), "h3", "digest-kept", 2_000)
            .await
            .unwrap()
    );
}
mod node_config;

/// Every change after `after`, as `(revision, kind, key)` words, read in one window.
async fn changes_after(store: &Store, after: i64) -> Vec<(i64, &'static str, String)> {
    match store.changes_since(after, 10_000).await.unwrap() {
        ChangesSince::Changes {
            changes,
            through,
            latest,
        } => {
            assert_eq!(through, latest, "one window covers everything");
            changes
                .into_iter()
                .map(
                    |Change {
                         revision,
                         kind,
                         key,
                     }| (revision, kind.as_str(), key),
                )
                .collect()
        }
        pruned => panic!("nothing was pruned, got {pruned:?}"),
    }
}

async fn every_write_takes_the_next_revision_and_lists_what_it_changed(store: Store) {
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.written_revision(), 0);
    let feed_id = store.feed_id().await.unwrap();
    assert_eq!(feed_id.len(), 32, "{feed_id}");
    store
        .insert_node(&sample_node("n-1"), "hash-1")
        .await
        .unwrap();
    let beat = Heartbeat {
        at: 5,
        idle: true,
        active_sessions: 0,
        vram_mb: None,
        write_id: None,
    };
    store
        .record_heartbeats(&[("n-1".into(), beat), ("ghost".into(), beat)])
        .await
        .unwrap();
    store.move_node("n-1", "ams1", "dam").await.unwrap();
    // A write that changes nothing takes a revision and lists nothing.
    assert!(!store.set_drained("ghost", true).await.unwrap());
    store
        .record_latency(&LatencyRecord {
            head_id: "n-1".into(),
            body_id: "n-2".into(),
            transport: Transport::Lan,
            rtt_ms: 7,
            measured_at: 9,
        })
        .await
        .unwrap();
    store
        .put_worker_report(&worker_report("n-1", 4, 10))
        .await
        .unwrap();
    let mut session = history_session(1, SessionStatus::Starting, 10, 10);
    store.insert_session(&session).await.unwrap();
    session.status = SessionStatus::Running;
    assert!(store.update_session(&session).await.unwrap());
    store.put_node_config("n-1", "{}", 11).await.unwrap();
    assert!(store.delete_node("n-1").await.unwrap());
    assert_eq!(store.current_revision().await.unwrap(), 10);
    assert_eq!(
        store.written_revision(),
        10,
        "the answer of the last write carries its revision"
    );
    assert_eq!(
        changes_after(&store, 0).await,
        vec![
            (1, "node", "n-1".to_owned()),
            (2, "node", "n-1".to_owned()),
            (3, "node", "n-1".to_owned()),
            (5, "latency", "n-1\tn-2".to_owned()),
            (6, "worker_report", "n-1".to_owned()),
            (7, "session", "s-0001".to_owned()),
            (8, "session", "s-0001".to_owned()),
            (9, "node_config", "n-1".to_owned()),
            (10, "node", "n-1".to_owned()),
            (10, "worker_report", "n-1".to_owned()),
        ]
    );
    assert_eq!(
        changes_after(&store, 8).await.len(),
        3,
        "a follower reads only what it lacks"
    );
    assert_eq!(changes_after(&store, 10).await, vec![]);
}

async fn concurrent_writes_take_dense_revisions(store: Store) {
    let writers: Vec<_> = (0..16)
        .map(|index| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .insert_node(
                        &sample_node(&format!("n-{index:02}")),
                        &format!("hash-{index}"),
                    )
                    .await
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let changes = changes_after(&store, 0).await;
    let revisions: Vec<i64> = changes.iter().map(|(revision, _, _)| *revision).collect();
    assert_eq!(
        revisions,
        (1..=16).collect::<Vec<i64>>(),
        "one revision per write, none skipped"
    );
    let mut keys: Vec<String> = changes.into_iter().map(|(_, _, key)| key).collect();
    keys.sort();
    assert_eq!(
        keys,
        (0..16)
            .map(|index| format!("n-{index:02}"))
            .collect::<Vec<_>>()
    );
}

async fn changes_are_read_by_revision_windows_and_a_pruned_horizon_is_reported(store: Store) {
    for index in 0..5 {
        store
            .insert_node(
                &sample_node(&format!("n-{index}")),
                &format!("hash-{index}"),
            )
            .await
            .unwrap();
    }
    match store.changes_since(1, 2).await.unwrap() {
        ChangesSince::Changes {
            through,
            latest,
            changes,
        } => {
            assert_eq!((through, latest), (3, 5));
            assert_eq!(
                changes
                    .iter()
                    .map(|change| change.revision)
                    .collect::<Vec<_>>(),
                [2, 3]
            );
            assert!(changes.iter().all(|change| change.kind == ChangeKind::Node));
        }
        pruned => panic!("nothing was pruned, got {pruned:?}"),
    }
    // Pruning is a write too: revision 6.
    assert_eq!(store.prune_changes(3).await.unwrap(), 3);
    assert_eq!(
        store.changes_since(2, 100).await.unwrap(),
        ChangesSince::Pruned {
            pruned_through: 3,
            latest: 6
        },
        "a follower behind the horizon must reload"
    );
    assert_eq!(
        changes_after(&store, 3)
            .await
            .iter()
            .map(|(revision, _, _)| *revision)
            .collect::<Vec<_>>(),
        [4, 5]
    );
}

/// PostgreSQL wakes followers at each commit with its revision; a rolled back write wakes
/// nobody.
#[tokio::test]
async fn postgres_listeners_hear_each_committed_revision() {
    let store = postgres("listeners_hear").await.store;
    let mut listener = store
        .listen_changes()
        .await
        .unwrap()
        .expect("postgres listens");
    store
        .insert_node(&sample_node("n-1"), "hash-1")
        .await
        .unwrap();
    // Refused (the id is taken): rolled back, no notification.
    assert!(
        store
            .insert_node(&sample_node("n-1"), "hash-1")
            .await
            .is_err()
    );
    store.set_drained("n-1", true).await.unwrap();
    let heard = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        [
            listener.recv().await.unwrap(),
            listener.recv().await.unwrap(),
        ]
    })
    .await
    .expect("notifications within 10 s");
    assert_eq!(
        heard,
        [1, 2],
        "the rolled back write gave its revision back"
    );
}

#[tokio::test]
async fn sqlite_has_no_listener() {
    assert!(
        sqlite()
            .await
            .store
            .listen_changes()
            .await
            .unwrap()
            .is_none()
    );
}

mod replicas;
// ---- captures (issue 12) ----

fn sample_capture(id: &str, created_at: i64) -> CaptureRecord {
    CaptureRecord {
        id: id.to_owned(),
        status: CaptureStatus::Running,
        termination_reason: None,
        fan_out: true,
        filters: r#"{"contains":"relay"}"#.to_owned(),
        duration_ms: Some(600_000),
        max_lines: Some(1_000),
        max_bytes: None,
        created_at,
        ended_at: None,
    }
}

fn sample_segment(capture_id: &str, node_id: &str) -> SegmentRecord {
    SegmentRecord {
        capture_id: capture_id.to_owned(),
        node_id: node_id.to_owned(),
        address: format!("http://{node_id}:7071"),
        status: CaptureStatus::Running,
        termination_reason: None,
        byte_count: 0,
        line_count: 0,
        last_sequence: None,
        lines_missing: 0,
        ended_at: None,
    }
}

fn chunk(capture_id: &str, node_id: &str, sequence: i64, lines: &[i64]) -> ChunkRecord {
    let data: String = lines
        .iter()
        .map(|line| format!("{{\"seq\":{line},\"node\":\"{node_id}\"}}\n"))
        .collect();
    ChunkRecord {
        capture_id: capture_id.to_owned(),
        node_id: node_id.to_owned(),
        sequence,
        first_sequence: lines[0],
        last_sequence: lines[lines.len() - 1],
        line_count: i64::try_from(lines.len()).unwrap(),
        data,
        created_at: 1_000 + sequence,
    }
}

async fn captures_keep_chunks_per_node_without_collisions(store: Store) {
    let capture = sample_capture("cap-1", 100);
    store
        .insert_capture(
            &capture,
            &[sample_segment("cap-1", "n1"), sample_segment("cap-1", "n2")],
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_capture("cap-1").await.unwrap(),
        Some(capture.clone())
    );
    // Both nodes number their chunks from 0: the node is in the key, so nothing collides.
    for (node, sequence, lines) in [
        ("n1", 0, vec![1, 2]),
        ("n2", 0, vec![7]),
        ("n1", 1, vec![3]),
    ] {
        let stored = chunk("cap-1", node, sequence, &lines);
        let bytes = i64::try_from(stored.data.len()).unwrap();
        assert!(store.append_capture_chunk(&stored, bytes, 0).await.unwrap());
    }
    let segments = store.capture_segments("cap-1").await.unwrap();
    let counts: Vec<(String, i64, Option<i64>)> = segments
        .iter()
        .map(|segment| {
            (
                segment.node_id.clone(),
                segment.line_count,
                segment.last_sequence,
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![("n1".to_owned(), 3, Some(3)), ("n2".to_owned(), 1, Some(7))]
    );
    let n1_bytes = segments[0].byte_count;
    assert_eq!(
        n1_bytes,
        i64::try_from(
            chunk("cap-1", "n1", 0, &[1, 2]).data.len() + chunk("cap-1", "n1", 1, &[3]).data.len()
        )
        .unwrap()
    );
    let all = store.capture_chunks("cap-1", None, None, 10).await.unwrap();
    let keys: Vec<(String, i64)> = all
        .iter()
        .map(|c| (c.node_id.clone(), c.sequence))
        .collect();
    assert_eq!(
        keys,
        vec![("n1".into(), 0), ("n1".into(), 1), ("n2".into(), 0)]
    );
    assert!(
        all.iter()
            .all(|c| c.data.contains(&format!("\"node\":\"{}\"", c.node_id)))
    );
    let page = store
        .capture_chunks("cap-1", None, Some(("n1", 0)), 1)
        .await
        .unwrap();
    assert_eq!((page[0].node_id.as_str(), page[0].sequence), ("n1", 1));
    let only_n2 = store
        .capture_chunks("cap-1", Some("n2"), None, 10)
        .await
        .unwrap();
    assert_eq!(only_n2.len(), 1);
    assert_eq!(only_n2[0].first_sequence, 7);
    assert_eq!(store.list_captures(10).await.unwrap(), vec![capture]);
    assert!(matches!(
        store.insert_capture(&sample_capture("cap-1", 5), &[]).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        store
            .get_capture("cap-1")
            .await
            .unwrap()
            .unwrap()
            .created_at,
        100
    );
}

async fn open_captures_and_their_resume_points_are_read_back(store: Store) {
    for (id, created_at) in [("cap-r2", 200), ("cap-r1", 100), ("cap-r3", 300)] {
        store
            .insert_capture(
                &sample_capture(id, created_at),
                &[sample_segment(id, "n1"), sample_segment(id, "n2")],
            )
            .await
            .unwrap();
    }
    assert!(
        store
            .finalise_capture("cap-r3", CaptureStatus::Completed, None, 400)
            .await
            .unwrap()
    );
    let open: Vec<String> = store
        .open_captures()
        .await
        .unwrap()
        .into_iter()
        .map(|capture| capture.id)
        .collect();
    assert_eq!(open, vec!["cap-r1".to_owned(), "cap-r2".to_owned()]);
    // A writer resumes with the next chunk number of its own node; other nodes do not count.
    assert_eq!(store.next_capture_chunk("cap-r1", "n1").await.unwrap(), 0);
    for (node, sequence, lines) in [
        ("n1", 0, vec![1, 2]),
        ("n1", 1, vec![3]),
        ("n2", 0, vec![9]),
    ] {
        let stored = chunk("cap-r1", node, sequence, &lines);
        assert!(store.append_capture_chunk(&stored, 10, 0).await.unwrap());
    }
    assert_eq!(store.next_capture_chunk("cap-r1", "n1").await.unwrap(), 2);
    assert_eq!(store.next_capture_chunk("cap-r1", "n2").await.unwrap(), 1);
    assert_eq!(store.next_capture_chunk("cap-r2", "n1").await.unwrap(), 0);
}

async fn a_chunk_stored_twice_is_kept_and_counted_once(store: Store) {
    store
        .insert_capture(
            &sample_capture("cap-2", 100),
            &[sample_segment("cap-2", "n1")],
        )
        .await
        .unwrap();
    let stored = chunk("cap-2", "n1", 0, &[10, 11]);
    assert!(store.append_capture_chunk(&stored, 40, 0).await.unwrap());
    assert!(!store.append_capture_chunk(&stored, 40, 0).await.unwrap());
    let segment = &store.capture_segments("cap-2").await.unwrap()[0];
    assert_eq!((segment.line_count, segment.byte_count), (2, 40));
    assert_eq!(
        store
            .capture_chunks("cap-2", None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn chunks_of_several_nodes_share_one_commit_and_a_repeated_one_is_answered_alone(
    store: Store,
) {
    store
        .insert_capture(
            &sample_capture("cap-b", 100),
            &[sample_segment("cap-b", "n1"), sample_segment("cap-b", "n2")],
        )
        .await
        .unwrap();
    let append = |node: &str, sequence: i64, lines: &[i64], bytes: i64| hydra_store::ChunkAppend {
        chunk: std::sync::Arc::new(chunk("cap-b", node, sequence, lines)),
        bytes,
        lines_missing: 0,
    };
    assert!(
        store
            .append_capture_chunk(&chunk("cap-b", "n2", 0, &[7]), 5, 0)
            .await
            .unwrap()
    );
    // One transaction: n1's two chunks and n2's next are new; n2's first is a repeat.
    let stored = store
        .append_capture_chunks(&[
            append("n1", 0, &[1, 2], 20),
            append("n2", 0, &[7], 5),
            append("n1", 1, &[3], 10),
            append("n2", 1, &[8, 9], 30),
        ])
        .await
        .unwrap();
    assert_eq!(stored, [true, false, true, true]);
    let segments = store.capture_segments("cap-b").await.unwrap();
    let counts: Vec<(&str, i64, i64, Option<i64>)> = segments
        .iter()
        .map(|segment| {
            (
                segment.node_id.as_str(),
                segment.line_count,
                segment.byte_count,
                segment.last_sequence,
            )
        })
        .collect();
    assert_eq!(counts, [("n1", 3, 30, Some(3)), ("n2", 3, 35, Some(9))]);
    assert_eq!(store.next_capture_chunk("cap-b", "n1").await.unwrap(), 2);
    assert_eq!(store.next_capture_chunk("cap-b", "n2").await.unwrap(), 2);
}

async fn segments_end_once_and_a_capture_is_finalised_once(store: Store) {
    store
        .insert_capture(
            &sample_capture("cap-3", 100),
            &[sample_segment("cap-3", "n1"), sample_segment("cap-3", "n2")],
        )
        .await
        .unwrap();
    assert!(
        store
            .end_capture_segment(
                "cap-3",
                "n1",
                CaptureStatus::Failed,
                TerminationReason::SourceError,
                0,
                500
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .end_capture_segment(
                "cap-3",
                "n1",
                CaptureStatus::Completed,
                TerminationReason::Stopped,
                0,
                600
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .end_capture_segment(
                "cap-3",
                "n2",
                CaptureStatus::Truncated,
                TerminationReason::LinesDropped,
                4,
                610
            )
            .await
            .unwrap()
    );
    let segments = store.capture_segments("cap-3").await.unwrap();
    assert_eq!(segments[0].status, CaptureStatus::Failed);
    assert_eq!(
        segments[0].termination_reason,
        Some(TerminationReason::SourceError)
    );
    assert_eq!(segments[0].ended_at, Some(500));
    assert_eq!(
        (segments[1].status, segments[1].lines_missing),
        (CaptureStatus::Truncated, 4)
    );
    assert!(
        store
            .finalise_capture(
                "cap-3",
                CaptureStatus::Failed,
                Some(TerminationReason::SourceError),
                700
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .finalise_capture("cap-3", CaptureStatus::Completed, None, 800)
            .await
            .unwrap()
    );
    let capture = store.get_capture("cap-3").await.unwrap().unwrap();
    assert_eq!(
        (capture.status, capture.termination_reason, capture.ended_at),
        (
            CaptureStatus::Failed,
            Some(TerminationReason::SourceError),
            Some(700)
        )
    );
}

async fn pruning_removes_only_ended_captures_older_than_the_cutoff(store: Store) {
    for (id, ended) in [("old", Some(1_000)), ("new", Some(9_000)), ("open", None)] {
        store
            .insert_capture(&sample_capture(id, 10), &[sample_segment(id, "n1")])
            .await
            .unwrap();
        store
            .append_capture_chunk(&chunk(id, "n1", 0, &[1]), 10, 0)
            .await
            .unwrap();
        if let Some(at) = ended {
            store
                .finalise_capture(
                    id,
                    CaptureStatus::Completed,
                    Some(TerminationReason::Stopped),
                    at,
                )
                .await
                .unwrap();
        }
    }
    assert_eq!(store.prune_ended_captures(5_000, 10).await.unwrap(), 1);
    assert_eq!(store.get_capture("old").await.unwrap(), None);
    assert!(
        store
            .capture_chunks("old", None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.capture_segments("old").await.unwrap().is_empty());
    assert!(store.get_capture("new").await.unwrap().is_some());
    assert!(store.get_capture("open").await.unwrap().is_some());
    assert_eq!(
        store
            .capture_chunks("open", None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A journal replays its writes with the ids they were first sent with (issue 10): the id is
/// claimed in the write's transaction, a repeat changes nothing, and a write that found no node
/// is not remembered.
async fn a_write_repeated_with_its_write_id_is_applied_once(store: Store) {
    store.insert_node(&sample_node("b"), "h").await.unwrap();
    let beat = |at, active_sessions, id: u128| Heartbeat {
        at,
        idle: false,
        active_sessions,
        vram_mb: None,
        write_id: Some(WriteId { id, status: 200 }),
    };
    assert!(
        store
            .record_heartbeat("b", &beat(1_000, 3, 0xa))
            .await
            .unwrap()
    );
    assert_eq!(store.applied_write(0xa).await.unwrap(), Some(200));
    assert!(
        store
            .record_heartbeat("b", &beat(2_000, 5, 0xa))
            .await
            .unwrap(),
        "a repeat answers as the first did"
    );
    let node = store.get_node("b").await.unwrap().unwrap();
    assert_eq!(
        (node.last_heartbeat, node.active_sessions),
        (Some(1_000), 3),
        "the repeat is not applied"
    );
    // In one batch: the repeat is skipped, a new id applies.
    let batch = vec![
        ("b".to_owned(), beat(3_000, 7, 0xb)),
        ("b".to_owned(), beat(4_000, 9, 0xa)),
    ];
    assert_eq!(
        store.record_heartbeats(&batch).await.unwrap(),
        vec![true, true]
    );
    let node = store.get_node("b").await.unwrap().unwrap();
    assert_eq!(
        (node.last_heartbeat, node.active_sessions),
        (Some(3_000), 7)
    );
    // A heartbeat of an unknown node applies nothing, so its id is not kept.
    assert!(
        !store
            .record_heartbeat("ghost", &beat(5_000, 1, 0xc))
            .await
            .unwrap()
    );
    assert_eq!(store.applied_write(0xc).await.unwrap(), None);

    let mut worker = Node::new("w-1", Roles::NONE.with(Role::Worker));
    worker.enrolled_at = 1;
    store.insert_node(&worker, "h").await.unwrap();
    let report = |max_sessions, reported_at| WorkerReportRecord {
        write_id: Some(WriteId {
            id: 0xd,
            status: 204,
        }),
        ..worker_report("w-1", max_sessions, reported_at)
    };
    store.put_worker_report(&report(4, 6_000)).await.unwrap();
    store.put_worker_report(&report(9, 7_000)).await.unwrap();
    assert_eq!(
        store.list_worker_reports().await.unwrap(),
        vec![worker_report("w-1", 4, 6_000)],
        "the repeated report is not applied"
    );
    assert_eq!(store.applied_write(0xd).await.unwrap(), Some(204));

    // Pruned by age: ids applied before the cutoff go, later ones stay.
    assert_eq!(store.prune_write_ids(3_500).await.unwrap(), 2);
    assert_eq!(store.applied_write(0xa).await.unwrap(), None);
    assert_eq!(store.applied_write(0xd).await.unwrap(), Some(204));
}
