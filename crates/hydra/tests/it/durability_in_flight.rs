//! `kill -9` of a busy server, several times a run, on both engines: writers keep enrolments,
//! heartbeats, moves, drains and session records (starts and ends on a real agent) in flight
//! (group-commit batches open) when the server dies. After each restart every acknowledged write
//! is there, and nothing is there that was never asked for.
//!
//! Each writer owns its nodes and changes each one by one request at a time, so per node there is
//! at most one write in flight at a kill: the stored value must be the last acknowledged one or
//! that single unacknowledged one. Session writers likewise have one start or end in flight at a
//! time; a start in flight at the kill has an id nobody was told, so unknown stored sessions are
//! bounded by the starts that were in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use reqwest::Method;
use serde_json::{Value, json};

use crate::agent::{Agent, Fleet, WORKER_ID};
use crate::support::{ServerProcess, call, eventually, http};

/// Writers at once.
const WRITERS: usize = 12;
/// Kills per run.
const KILLS: usize = 3;
/// Writes one writer tries per round at most (the kill usually comes first).
const WRITES_PER_ROUND: usize = 400;
/// Session writers at once; each keeps at most [`LIVE_PER_SESSION_WRITER`] sessions running.
const SESSION_WRITERS: usize = 2;
const LIVE_PER_SESSION_WRITER: usize = 2;
/// The worker's room: the writers' live sessions, plus one start per writer in flight at each
/// kill that the agent may have begun (the server reconciles those away later).
const WORKER_ROOM: u32 = 16;

/// What was asked of one session and what was acknowledged.
#[derive(Debug, Default, Clone, PartialEq)]
enum SessionFate {
    /// Its start was acknowledged (201); nothing since.
    #[default]
    Started,
    /// An end was sent and got no answer.
    EndInFlight,
    /// Its end was acknowledged (200, `stopped`).
    Ended,
}

/// The session writers' shared record: every acknowledged session and how many starts got no
/// answer (each may have stored a session under an id nobody was told).
#[derive(Debug, Default)]
struct SessionBook {
    fates: HashMap<String, SessionFate>,
    unanswered_starts: usize,
    /// Every session stored by the end of an earlier round (checked then, ended since).
    earlier: std::collections::HashSet<String>,
}

type Sessions = Arc<Mutex<SessionBook>>;

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
    send_for_answer(method, url, body)
        .await
        .map(|(status, _)| status)
}

/// Sends one write; the status and body when the server answered whole, `None` otherwise.
async fn send_for_answer(method: Method, url: &str, body: Value) -> Option<(u16, Value)> {
    let response = http()
        .request(method, url)
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .json(&body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    // The answer counts only once its body arrived whole.
    let body = response.bytes().await.ok()?;
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// One session writer's round: start sessions on the worker and end them, one request at a time,
/// until the server stops answering (or the round's bound).
async fn session_writer(base: String, round: Round, sessions: Sessions) {
    let mut live: Vec<String> = Vec::new();
    for _ in 0..WRITES_PER_ROUND {
        if round.stop.load(Ordering::SeqCst) {
            return;
        }
        if live.len() < LIVE_PER_SESSION_WRITER && rand::rng().random_bool(0.6) || live.is_empty() {
            let answer = send_for_answer(
                Method::POST,
                &format!("{base}/api/v1/sessions"),
                json!({"body_ip": "127.0.0.1"}),
            )
            .await;
            let Some((status, session)) = answer else {
                sessions.lock().unwrap().unanswered_starts += 1;
                return;
            };
            assert_eq!(status, 201, "a session start answered {status}: {session}");
            let id = session["session_id"]
                .as_str()
                .expect("session_id")
                .to_owned();
            sessions
                .lock()
                .unwrap()
                .fates
                .insert(id.clone(), SessionFate::Started);
            round.acknowledged.fetch_add(1, Ordering::SeqCst);
            live.push(id);
        } else {
            let id = live.swap_remove(rand::rng().random_range(0..live.len()));
            sessions
                .lock()
                .unwrap()
                .fates
                .insert(id.clone(), SessionFate::EndInFlight);
            let answer = send_for_answer(
                Method::DELETE,
                &format!("{base}/api/v1/sessions/{id}"),
                Value::Null,
            )
            .await;
            let Some((status, ended)) = answer else {
                return;
            };
            assert!(
                status == 200 && ended["status"] == "stopped",
                "the end of {id} answered {status}: {ended}"
            );
            sessions
                .lock()
                .unwrap()
                .fates
                .insert(id, SessionFate::Ended);
            round.acknowledged.fetch_add(1, Ordering::SeqCst);
        }
    }
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
    for id in nodes.keys().filter(|id| *id != WORKER_ID) {
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

/// Reads every session back and checks it against what was acknowledged: an acknowledged start
/// is stored (`running`, or `stopped` once its end was acknowledged; either while an end was in
/// flight); stored sessions nobody was told of are at most the starts left unanswered.
async fn check_sessions(server: &ServerProcess, sessions: &Sessions) -> usize {
    let known: Vec<(String, SessionFate)> = sessions
        .lock()
        .unwrap()
        .fates
        .iter()
        .map(|(id, fate)| (id.clone(), fate.clone()))
        .collect();
    for (id, fate) in &known {
        let (status, session) =
            call(Method::GET, &server.api(&format!("/sessions/{id}")), None).await;
        assert_eq!(status, 200, "acknowledged session {id} lost: {session}");
        let stored = session["status"].as_str().unwrap_or_default();
        let allowed: &[&str] = match fate {
            SessionFate::Started => &["running"],
            SessionFate::EndInFlight => &["running", "stopped"],
            SessionFate::Ended => &["stopped"],
        };
        assert!(
            allowed.contains(&stored),
            "session {id} is {stored} after the restart; it was {fate:?}: {session}"
        );
    }
    let mut stored_ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let query = match &cursor {
            Some(cursor) => format!("/sessions?limit=200&cursor={cursor}"),
            None => "/sessions?limit=200".to_owned(),
        };
        let (status, page) = call(Method::GET, &server.api(&query), None).await;
        assert_eq!(status, 200, "{page}");
        stored_ids.extend(session_ids(&page));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    let mut book = sessions.lock().unwrap();
    let unknown = stored_ids
        .iter()
        .filter(|id| !book.fates.contains_key(*id) && !book.earlier.contains(*id))
        .count();
    assert!(
        unknown <= book.unanswered_starts,
        "{unknown} stored sessions were never acknowledged, but only {} starts went unanswered",
        book.unanswered_starts
    );
    eprintln!(
        "sessions checked: {} acknowledged, {} stored in all, {unknown} unknown, {} starts unanswered",
        known.len(),
        stored_ids.len(),
        book.unanswered_starts
    );
    // The next round's writers start afresh (this round's sessions are ended before it).
    book.fates.clear();
    book.earlier.extend(stored_ids);
    book.unanswered_starts = 0;
    known.len()
}

async fn acknowledged_writes_survive_kills_under_load(database_url: Option<String>) {
    let mut fleet = Fleet::start_with_room(database_url, WORKER_ROOM);
    let mut agent = Agent::start(&fleet, "agent");
    fleet.wait_worker(&mut agent).await;
    let histories: Histories = Arc::default();
    let sessions: Sessions = Arc::default();
    for round in 0..KILLS {
        let shared = Round {
            histories: Arc::clone(&histories),
            acknowledged: Arc::default(),
            stop: Arc::default(),
        };
        let mut writers: Vec<_> = (0..WRITERS)
            .map(|writer_id| {
                tokio::spawn(writer(
                    fleet.server.url.clone(),
                    writer_id,
                    round,
                    shared.clone(),
                ))
            })
            .collect();
        writers.extend((0..SESSION_WRITERS).map(|_| {
            tokio::spawn(session_writer(
                fleet.server.url.clone(),
                shared.clone(),
                Arc::clone(&sessions),
            ))
        }));
        // Kill once writes are flowing (bounded wait), a random moment later.
        let flowing = eventually(Duration::from_secs(60), async || {
            shared.acknowledged.load(Ordering::SeqCst) >= 40
        })
        .await;
        assert!(flowing, "round {round}: writes never got going");
        let delay = rand::rng().random_range(0..300);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        shared.stop.store(true, Ordering::SeqCst);
        fleet.restart_server_after_sigkill();
        for writer in writers {
            writer.await.expect("writer task");
        }
        let acked = check_against(&fleet.server, &histories).await;
        assert!(
            acked > 0,
            "round {round}: no write was acknowledged before the kill"
        );
        let sessions_checked = check_sessions(&fleet.server, &sessions).await;
        assert!(
            sessions_checked > 0,
            "round {round}: no session start was acknowledged before the kill; agent log:\n{}",
            agent.log()
        );
        // Every session this round started ends before the next, so the worker has room.
        end_every_live_session(&fleet.server).await;
    }
}

/// The session ids of a `GET /api/v1/sessions` page.
fn session_ids(page: &Value) -> Vec<String> {
    page["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .map(|session| {
            session["session_id"]
                .as_str()
                .expect("session_id")
                .to_owned()
        })
        .collect()
}

/// Ends every `starting` or `running` session through the server (the agent ends its process).
async fn end_every_live_session(server: &ServerProcess) {
    for status in ["running", "starting"] {
        let (code, page) = call(
            Method::GET,
            &server.api(&format!("/sessions?status={status}&limit=200")),
            None,
        )
        .await;
        assert_eq!(code, 200, "{page}");
        for id in session_ids(&page) {
            let (code, ended) = call(
                Method::DELETE,
                &server.api(&format!("/sessions/{id}")),
                None,
            )
            .await;
            assert!(code == 200 || code == 404, "ending {id}: {code} {ended}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_write_across_kills_under_load() {
    acknowledged_writes_survive_kills_under_load(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_write_across_kills_under_load() {
    let database_url = hydra_store::testing::fresh_postgres_database("kills_under_load").await;
    acknowledged_writes_survive_kills_under_load(Some(database_url)).await;
}
