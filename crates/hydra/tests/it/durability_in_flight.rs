//! `kill -9` of a busy server, several times a run, on both engines: writers keep enrolments,
//! heartbeats, moves and drains in flight (group-commit batches open) when the server dies. After
//! each restart every acknowledged write is there, and nothing is there that was never asked for.
//!
//! Each writer owns its nodes and changes each one by one request at a time, so per node there is
//! at most one write in flight at a kill: the stored value must be the last acknowledged one or
//! that single unacknowledged one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ServerProcess, ServerSetup, call, eventually, free_loopback_port, http};

/// Writers at once.
const WRITERS: usize = 12;
/// Kills per run.
const KILLS: usize = 3;
/// Writes one writer tries per round at most (the kill usually comes first).
const WRITES_PER_ROUND: usize = 400;

/// What was asked of one node and what was acknowledged, in order.
#[derive(Debug, Default, Clone)]
struct NodeHistory {
    /// The enrolment was acknowledged.
    enrolled: bool,
    /// Per field (`venue`, `drained`, `active_sessions`): the last acknowledged value and the
    /// value of a write sent after it that got no answer.
    acked: HashMap<&'static str, Value>,
    in_flight: HashMap<&'static str, Value>,
}

type Histories = Arc<Mutex<HashMap<String, NodeHistory>>>;

/// What the writers of one round share: the histories, a count of acknowledged writes (the kill
/// waits for some), and the flag that stops them once the server was killed.
#[derive(Clone)]
struct Round {
    histories: Histories,
    acknowledged: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// Sends one write; `Some(status)` when the server answered, `None` when the connection failed.
async fn send(method: Method, url: &str, body: Value) -> Option<u16> {
    let response = http()
        .request(method, url)
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .json(&body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    // The answer counts only once its body arrived whole.
    response.bytes().await.ok()?;
    Some(status)
}

/// One writer's round: enrol a node now and then, and change its nodes until the server stops
/// answering (or the round's bound).
async fn writer(base: String, writer_id: usize, round: usize, shared: Round) {
    let histories = shared.histories;
    let mut owned: Vec<String> = histories
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, history)| id.starts_with(&format!("w{writer_id}-")) && history.enrolled)
        .map(|(id, _)| id.clone())
        .collect();
    owned.sort();
    for step in 0..WRITES_PER_ROUND {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let choice = rand::rng().random_range(0..4);
        let (id, field, value, outcome) = if owned.is_empty() || choice == 0 {
            let id = format!("w{writer_id}-r{round}-n{step}");
            histories.lock().unwrap().entry(id.clone()).or_default();
            let outcome = send(
                Method::POST,
                &format!("{base}/api/v1/nodes"),
                json!({"id": id, "roles": ["body"], "district": "bxl1", "venue": "v0", "owner": "acme"}),
            )
            .await;
            match outcome {
                Some(201) => {
                    let mut all = histories.lock().unwrap();
                    let history = all.get_mut(&id).unwrap();
                    history.enrolled = true;
                    history.acked.insert("venue", json!("v0"));
                    history.acked.insert("drained", json!(false));
                    drop(all);
                    shared.acknowledged.fetch_add(1, Ordering::SeqCst);
                    owned.push(id);
                    continue;
                }
                Some(status) => panic!("enrolment of {id} answered {status}"),
                None => return,
            }
        } else {
            let id = owned[rand::rng().random_range(0..owned.len())].clone();
            let tag = format!("r{round}-s{step}");
            let (field, value, method, path, body) = match choice {
                1 => (
                    "venue",
                    json!(format!("v-{tag}")),
                    Method::POST,
                    format!("/nodes/{id}/district"),
                    json!({"district": "bxl1", "venue": format!("v-{tag}")}),
                ),
                2 => {
                    let drained = rand::rng().random_bool(0.5);
                    (
                        "drained",
                        json!(drained),
                        Method::POST,
                        format!("/nodes/{id}/drain"),
                        json!({ "drained": drained }),
                    )
                }
                _ => {
                    let sessions = u32::try_from(round * WRITES_PER_ROUND + step).unwrap();
                    (
                        "active_sessions",
                        json!(sessions),
                        Method::POST,
                        format!("/nodes/{id}/heartbeat"),
                        json!({"idle": false, "active_sessions": sessions}),
                    )
                }
            };
            histories
                .lock()
                .unwrap()
                .get_mut(&id)
                .unwrap()
                .in_flight
                .insert(field, value.clone());
            let outcome = send(method, &format!("{base}/api/v1{path}"), body).await;
            (id, field, value, outcome)
        };
        match outcome {
            Some(200) => {
                let mut all = histories.lock().unwrap();
                let history = all.get_mut(&id).unwrap();
                history.in_flight.remove(field);
                history.acked.insert(field, value);
                shared.acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            Some(status) => panic!("write of {field} to {id} answered {status}"),
            None => return,
        }
    }
}

/// Reads every node back and checks it against what was acknowledged and asked.
async fn check_against(server: &ServerProcess, histories: &Histories) -> usize {
    let (status, listed) = call(Method::GET, &server.api("/nodes"), None).await;
    assert_eq!(status, 200, "{listed}");
    let nodes: HashMap<String, Value> = listed["nodes"]
        .as_array()
        .expect("nodes array")
        .iter()
        .map(|node| (node["id"].as_str().unwrap().to_owned(), node.clone()))
        .collect();
    let mut all = histories.lock().unwrap();
    for id in nodes.keys() {
        assert!(
            all.contains_key(id),
            "{id} is stored but was never asked for"
        );
    }
    let mut acked_writes = 0;
    for (id, history) in all.iter_mut() {
        let Some(node) = nodes.get(id) else {
            assert!(!history.enrolled, "acknowledged enrolment of {id} lost");
            continue;
        };
        // An enrolment in flight at the kill may have committed: it counts from now on.
        history.enrolled = true;
        for field in ["venue", "drained", "active_sessions"] {
            let stored = &node[field];
            let acked = history.acked.get(field);
            let in_flight = history.in_flight.get(field);
            let default = match field {
                "venue" => json!("v0"),
                "drained" => json!(false),
                _ => json!(0),
            };
            assert!(
                Some(stored) == in_flight || stored == acked.unwrap_or(&default),
                "{id}.{field} is {stored}; acknowledged {acked:?}, in flight {in_flight:?}"
            );
            acked_writes += usize::from(acked.is_some());
            // What is stored now is the truth the next round builds on.
            history.acked.insert(field, stored.clone());
            history.in_flight.remove(field);
        }
    }
    acked_writes
}

async fn acknowledged_writes_survive_kills_under_load(setup: ServerSetup) {
    let listen = format!("127.0.0.1:{}", free_loopback_port());
    let mut server = ServerProcess::start_listening(&setup, &listen);
    let histories: Histories = Arc::default();
    for round in 0..KILLS {
        let shared = Round {
            histories: Arc::clone(&histories),
            acknowledged: Arc::default(),
            stop: Arc::default(),
        };
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer_id| {
                tokio::spawn(writer(server.url.clone(), writer_id, round, shared.clone()))
            })
            .collect();
        // Kill once writes are flowing (bounded wait), a random moment later.
        let flowing = eventually(Duration::from_secs(60), async || {
            shared.acknowledged.load(Ordering::SeqCst) >= 40
        })
        .await;
        assert!(flowing, "round {round}: writes never got going");
        let delay = rand::rng().random_range(0..300);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        shared.stop.store(true, Ordering::SeqCst);
        server.restart_after_kill_9(&setup);
        for writer in writers {
            writer.await.expect("writer task");
        }
        let acked = check_against(&server, &histories).await;
        assert!(
            acked > 0,
            "round {round}: no write was acknowledged before the kill"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_write_across_kills_under_load() {
    let dir = tempfile::tempdir().unwrap();
    acknowledged_writes_survive_kills_under_load(ServerSetup::sqlite(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_write_across_kills_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.database_url =
        Some(hydra_store::testing::fresh_postgres_database("kills_under_load").await);
    acknowledged_writes_survive_kills_under_load(setup).await;
}
