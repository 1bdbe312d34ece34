//! What the server accepts and believes (issue 7 items 3 and 4): control characters refused at
//! the boundary with a 400 naming the field and nothing written; one bad write in a
//! group-commit batch fails alone, on both engines; a worker's report about itself is checked
//! (agent URL on an enrolled address or allowed, capacity capped) before the worker gets any
//! session or Sunshine credential.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hydra_core::{Node, Role, Roles};
use hydra_server::group_commit::{CommitError, HeartbeatWriter, ReportWriter};
use hydra_store::{Heartbeat, Store, StoreError, WorkerReportRecord};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ServerProcess, ServerSetup, call, call_as};

// ---- one bad write in a batch (below the API, which now refuses NUL) ----

async fn store_with_nodes(store: &Store, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for index in 0..count {
        let id = format!("w-{index:03}");
        let node = Node::new(&id, Roles::NONE.with(Role::Worker));
        store
            .insert_node(&node, &format!("{index:064}"))
            .await
            .expect("insert node");
        ids.push(id);
    }
    ids
}

/// Submits every write before the writer task runs (a current-thread runtime runs the spawned
/// submitters first), so they share one batch, as thousands of concurrent reports do.
async fn one_bad_heartbeat_fails_alone(store: Store) {
    let ids = store_with_nodes(&store, 50).await;
    let (writer, _task) = HeartbeatWriter::heartbeats(store.clone());
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let writer = writer.clone();
            let id = id.clone();
            // A value the store cannot write (above i64): refused by both engines.
            let vram_mb = Some(if index == 7 { u64::MAX } else { 8_192 });
            let heartbeat = Heartbeat {
                at: 1_000 + index as i64,
                idle: true,
                active_sessions: 0,
                vram_mb,
                write_id: None,
            };
            tokio::spawn(async move { writer.record(&id, heartbeat).await })
        })
        .collect();
    let outcomes = futures::future::join_all(tasks).await;
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome.expect("task");
        if index == 7 {
            assert!(
                matches!(&outcome, Err(CommitError::Store(error)) if matches!(**error, StoreError::Corrupt { .. })),
                "{outcome:?}"
            );
        } else {
            assert!(matches!(outcome, Ok(true)), "write {index}: {outcome:?}");
        }
    }
    let stored = store.list_nodes().await.unwrap();
    let beating = stored
        .iter()
        .filter(|node| node.last_heartbeat.is_some())
        .count();
    assert_eq!(beating, 49, "every write but the bad one is stored");
    assert_eq!(stored[7].last_heartbeat, None);
}

/// The review's reproduction below the API: one worker report with a NUL in its agent URL among
/// fifty. PostgreSQL refuses the NUL, which used to fail the other 49 with it; SQLite stores it.
async fn a_nul_in_one_report_fails_only_that_report(store: Store) {
    let ids = store_with_nodes(&store, 50).await;
    let (writer, _task) = ReportWriter::reports(store.clone());
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let writer = writer.clone();
            let record = WorkerReportRecord {
                worker_id: id.clone(),
                agent_url: if index == 3 {
                    "http://x\u{0}".to_owned()
                } else {
                    format!("http://10.0.0.{index}:7071")
                },
                agent_key_sealed: "v1.sealed".to_owned(),
                max_sessions: 4,
                reported_at: 1_000,
                write_id: None,
            };
            tokio::spawn(async move { writer.submit(record).await })
        })
        .collect();
    let outcomes = futures::future::join_all(tasks).await;
    let postgres = store.engine() == hydra_store::Engine::Postgres;
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome.expect("task");
        if index == 3 && postgres {
            assert!(outcome.is_err(), "PostgreSQL refuses a NUL: {outcome:?}");
        } else {
            assert!(outcome.is_ok(), "report {index}: {outcome:?}");
        }
    }
    let stored = store.list_worker_reports().await.unwrap();
    assert_eq!(stored.len(), if postgres { 49 } else { 50 });
}

async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_sqlite(&dir.path().join("hydra.db"))
        .await
        .expect("open sqlite");
    (store, dir)
}

async fn postgres_store(label: &str) -> Store {
    let url = hydra_store::testing::fresh_postgres_database(label).await;
    Store::open_postgres(&url).await.expect("open postgres")
}

#[tokio::test]
async fn sqlite_one_bad_heartbeat_fails_alone() {
    let (store, _dir) = sqlite_store().await;
    one_bad_heartbeat_fails_alone(store).await;
}

#[tokio::test]
async fn postgres_one_bad_heartbeat_fails_alone() {
    one_bad_heartbeat_fails_alone(postgres_store("bad_heartbeat").await).await;
}

#[tokio::test]
async fn sqlite_a_nul_in_one_report_fails_only_that_report() {
    let (store, _dir) = sqlite_store().await;
    a_nul_in_one_report_fails_only_that_report(store).await;
}

#[tokio::test]
async fn postgres_a_nul_in_one_report_fails_only_that_report() {
    a_nul_in_one_report_fails_only_that_report(postgres_store("nul_report").await).await;
}

// ---- the API boundary ----

fn start(extra: &[&str]) -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.extra = extra.iter().map(|arg| (*arg).to_owned()).collect();
    (dir, ServerProcess::start(&setup))
}

async fn enrol(server: &ServerProcess, body: Value) -> Value {
    let (status, answer) = call(Method::POST, &server.api("/nodes"), Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    answer
}

async fn snapshot(server: &ServerProcess) -> Vec<Value> {
    let mut out = Vec::new();
    for path in ["/nodes", "/sessions", "/workers"] {
        let (status, mut answer) = call(Method::GET, &server.api(path), None).await;
        assert_eq!(status, 200, "{path}: {answer}");
        // Heartbeat ages change between reads; what a write would change stays.
        if let Some(nodes) = answer["nodes"].as_array_mut() {
            for node in nodes {
                node.as_object_mut()
                    .unwrap()
                    .retain(|key, _| key != "status" && key != "last_heartbeat");
            }
        }
        out.push(answer);
    }
    out
}

#[tokio::test]
async fn control_characters_are_refused_naming_the_field_and_nothing_is_written() {
    let (_dir, server) = start(&["--agent-url-hosts", "127.0.0.1"]);
    enrol(
        &server,
        json!({"id": "w1", "roles": ["worker"], "district": "bxl1", "venue": "v", "owner": "o"}),
    )
    .await;
    enrol(
        &server,
        json!({"id": "h1", "roles": ["head"], "district": "bxl1", "venue": "v", "owner": "o"}),
    )
    .await;
    let before = snapshot(&server).await;
    let report = |agent_url: &str, error: &str| {
        json!({"agent_url": agent_url, "agent_key": "k".repeat(32), "max_sessions": 2,
               "sessions": [{"session_id": "s-1", "body_ip": "10.0.0.1", "port": 9000,
                             "stream_url": "http://127.0.0.1:9000/", "status": "error", "error": error}]})
    };
    let node = |field: &str, value: &str| {
        let mut body = json!({"roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o"});
        body[field] = json!(value);
        body
    };
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (
            Method::POST,
            "/nodes".into(),
            Some(node("id", "b\u{0}")),
            "id",
        ),
        (
            Method::POST,
            "/nodes".into(),
            Some(node("name", "b\u{7}")),
            "name",
        ),
        (
            Method::POST,
            "/nodes".into(),
            Some(node("owner", "o\n")),
            "owner",
        ),
        (
            Method::POST,
            "/nodes".into(),
            Some(json!({"roles": ["body\u{0}"], "district": "bxl1", "venue": "v", "owner": "o"})),
            "roles[0]",
        ),
        (
            Method::POST,
            "/nodes/w1/district".into(),
            Some(json!({"district": "bxl1\r\n", "venue": "v"})),
            "district",
        ),
        (
            Method::POST,
            "/workers/w1/report".into(),
            Some(report("http://127.0.0.1:7071\u{0}", "")),
            "agent_url",
        ),
        (
            Method::POST,
            "/workers/w1/report".into(),
            Some(report("http://127.0.0.1:7071", "died\u{0}")),
            "sessions[0].error",
        ),
        (
            Method::POST,
            "/sessions".into(),
            Some(json!({"body_ip": "10.0.0.1", "experience": "game\u{0}"})),
            "experience",
        ),
        (
            Method::POST,
            "/sessions".into(),
            Some(json!({"body_ip": "10.0.0.1", "sunshine_user": "u\u{1b}"})),
            "sunshine_user",
        ),
        (
            Method::GET,
            "/bodies/eligible?head_id=h1%00".into(),
            None,
            "head_id",
        ),
        (
            Method::GET,
            "/bodies/eligible?district=bxl1%0A&venue=v".into(),
            None,
            "district",
        ),
        (Method::GET, "/nodes/w1%00".into(), None, "id"),
        (Method::DELETE, "/nodes/w1%0D%0A".into(), None, "id"),
        (Method::GET, "/sessions/s-1%00".into(), None, "id"),
        (
            Method::POST,
            "/nodes/w1%00/drain".into(),
            Some(json!({"drained": true})),
            "id",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, answer) = call(method.clone(), &server.api(&path), body).await;
        let message = answer["message"].as_str().unwrap_or_default();
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_request")),
            "{method} {path}: {answer}"
        );
        assert!(
            message.contains(&format!("{field} contains a control character")),
            "{method} {path}: {message}"
        );
    }
    assert_eq!(snapshot(&server).await, before, "nothing changed");

    // Free text keeps its newlines and tabs (a log tail): that report is accepted.
    let (status, answer) = call(
        Method::POST,
        &server.api("/workers/w1/report"),
        Some(report("http://127.0.0.1:7071", "line one\n\tline two")),
    )
    .await;
    assert_eq!(status, 204, "{answer}");
}

// ---- a worker's report about itself ----

/// A stand-in agent: a loopback listener that counts the connections it gets.
async fn counting_listener() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (port, connections, task)
}

async fn enrol_worker(server: &ServerProcess, id: &str, lan_ip: &str) -> String {
    let answer = enrol(
        server,
        json!({"id": id, "roles": ["worker"], "district": "bxl1", "venue": "v", "owner": "o", "lan_ip": lan_ip}),
    )
    .await;
    let token = answer["token"].as_str().expect("node token").to_owned();
    let (status, answer) = call_as(
        &token,
        Method::POST,
        &server.api(&format!("/nodes/{id}/heartbeat")),
        Some(json!({"idle": true})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    token
}

async fn send_report(
    server: &ServerProcess,
    token: &str,
    id: &str,
    agent_url: &str,
    max: u64,
) -> (u16, Value) {
    call_as(
        token,
        Method::POST,
        &server.api(&format!("/workers/{id}/report")),
        Some(json!({"agent_url": agent_url, "agent_key": "k".repeat(32), "max_sessions": max, "sessions": []})),
    )
    .await
}

async fn worker(server: &ServerProcess, id: &str) -> Value {
    let (_, list) = call(Method::GET, &server.api("/workers"), None).await;
    list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|worker| worker["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_worker_pointing_elsewhere_is_refused_and_never_gets_a_session() {
    let (_dir, server) = start(&[]);
    let (port, connections, listener) = counting_listener().await;
    // Enrolled on 10.1.0.5; its report names a loopback listener (any other host would do).
    let token = enrol_worker(&server, "w-foreign", "10.1.0.5").await;
    let (status, answer) = send_report(
        &server,
        &token,
        "w-foreign",
        &format!("http://127.0.0.1:{port}"),
        4,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("agent_url host 127.0.0.1") && message.contains("w-foreign"),
        "{message}"
    );
    let shown = worker(&server, "w-foreign").await;
    assert_eq!(
        (shown["healthy"].clone(), shown["agent_url"].clone()),
        (json!(false), Value::Null)
    );

    // A session with Sunshine credentials finds no worker with room (an unreported worker has
    // none); nothing reached the listener.
    let (status, answer) = call(
        Method::POST,
        &server.api("/sessions"),
        Some(json!({"body_ip": "10.0.0.1", "sunshine_user": "u", "sunshine_pass": "secret"})),
    )
    .await;
    assert_eq!(
        (status, answer["message"].as_str()),
        (503, Some("no healthy workers available")),
        "{answer}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    listener.abort();

    // Its enrolled address is accepted, with the capacity capped to the default 64.
    let (status, answer) = send_report(
        &server,
        &token,
        "w-foreign",
        "http://10.1.0.5:7071/",
        u64::from(u32::MAX),
    )
    .await;
    assert_eq!(status, 204, "{answer}");
    let shown = worker(&server, "w-foreign").await;
    assert_eq!(
        (shown["agent_url"].clone(), shown["max_sessions"].clone()),
        (json!("http://10.1.0.5:7071"), json!(64))
    );
    // The next report of the same agent run is capped again, silently.
    let (status, _) = send_report(
        &server,
        &token,
        "w-foreign",
        "http://10.1.0.5:7071",
        u64::from(u32::MAX),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        worker(&server, "w-foreign").await["max_sessions"],
        json!(64)
    );
    let log = server.log.lock().unwrap().clone();
    assert_eq!(
        log.matches("worker reports more sessions than max_sessions_per_worker")
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn the_capacity_cap_and_the_allowlist_are_settings() {
    let (_dir, server) = start(&[
        "--max-sessions-per-worker",
        "3",
        "--agent-url-hosts",
        "127.0.0.1, worker.example",
    ]);
    let token = enrol_worker(&server, "w-local", "10.1.0.6").await;
    let (status, answer) =
        send_report(&server, &token, "w-local", "http://127.0.0.1:7071", 15).await;
    assert_eq!(status, 204, "{answer}");
    assert_eq!(worker(&server, "w-local").await["max_sessions"], json!(3));
    let (status, _) =
        send_report(&server, &token, "w-local", "http://WORKER.example:7071", 2).await;
    assert_eq!(status, 204);
    assert_eq!(worker(&server, "w-local").await["max_sessions"], json!(2));
    let (status, answer) =
        send_report(&server, &token, "w-local", "http://127.0.0.2:7071", 2).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = send_report(
        &server,
        &token,
        "w-local",
        "http://user:pw@127.0.0.1:7071",
        2,
    )
    .await;
    assert_eq!(
        (status, answer["message"].as_str()),
        (400, Some("agent_url must not carry a user or password"))
    );
}

// ---- node tokens speak only for their own head (item 7) ----

#[tokio::test]
async fn a_node_token_reads_and_records_samples_only_for_its_own_head() {
    let (_dir, server) = start(&[]);
    let mut tokens = std::collections::HashMap::new();
    for (id, role, venue) in [
        ("h1", "head", "rupelmonde"),
        ("h2", "head", "rupelmonde"),
        ("b-far", "body", "cloud-seven"),
        ("b-near", "body", "cloud-seven"),
    ] {
        let answer = enrol(
            &server,
            json!({"id": id, "roles": [role], "district": "bxl1", "venue": venue, "owner": "acme"}),
        )
        .await;
        tokens.insert(id, answer["token"].as_str().unwrap().to_owned());
        if role == "body" {
            let (status, _) = call(
                Method::POST,
                &server.api(&format!("/nodes/{id}/heartbeat")),
                Some(json!({"idle": true})),
            )
            .await;
            assert_eq!(status, 200);
        }
    }
    let ranking = async |token: &str| {
        let (status, answer) = call_as(
            token,
            Method::GET,
            &server.api("/bodies/eligible?head_id=h1"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        answer["bodies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|body| {
                (
                    body["id"].as_str().unwrap().to_owned(),
                    body["rtt_ms"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = ranking(crate::support::ADMIN_TOKEN).await;

    // Another head's token and a body's token may neither record for h1 nor read its ranking.
    let push = "/bodies/eligible?head_id=h1&measured=b-near:lan:900,b-far:lan:1";
    for asking in ["h2", "b-far"] {
        for path in [push, "/bodies/eligible?head_id=h1"] {
            let (status, answer) =
                call_as(&tokens[asking], Method::GET, &server.api(path), None).await;
            assert_eq!(
                (status, answer["error"].as_str()),
                (403, Some("forbidden")),
                "{asking} {path}: {answer}"
            );
            assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .contains("head_id \"h1\""),
                "{answer}"
            );
        }
    }
    assert_eq!(
        ranking(crate::support::ADMIN_TOKEN).await,
        before,
        "h1's ranking untouched"
    );

    // h1's own token records (duplicates: the last one given wins), and so may the admin.
    let (status, answer) = call_as(
        &tokens["h1"],
        Method::GET,
        &server.api("/bodies/eligible?head_id=h1&measured=b-near:lan:30,b-far:lan:20,b-near:lan:5"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        ranking(&tokens["h1"]).await,
        [
            ("b-near".to_owned(), json!(5)),
            ("b-far".to_owned(), json!(20))
        ]
    );
    // Strict venue (no head_id) stays open to any token.
    let (status, _) = call_as(
        &tokens["b-far"],
        Method::GET,
        &server.api("/bodies/eligible?district=bxl1&venue=cloud-seven"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn stored_reports_are_checked_again_at_start() {
    let (store, _dir) = sqlite_store().await;
    let sealer = hydra_server::sealing::Sealer::from_admin_token("admin-of-this-test");
    for (id, lan_ip, agent_url, max_sessions) in [
        ("w-foreign", "10.1.0.5", "http://10.9.9.9:7071", 4),
        ("w-big", "10.1.0.6", "http://10.1.0.6:7071", u32::MAX),
        ("w-local", "10.1.0.7", "http://127.0.0.1:7071", 4),
    ] {
        let mut node = Node::new(id, Roles::NONE.with(Role::Worker));
        node.lan_ip = Some(lan_ip.parse().unwrap());
        store
            .insert_node(&node, &format!("{id:0>64}"))
            .await
            .unwrap();
        store
            .put_worker_report(&WorkerReportRecord {
                worker_id: id.into(),
                agent_url: agent_url.into(),
                agent_key_sealed: sealer.seal(id, "agent-key-0123456789abcdef"),
                max_sessions,
                reported_at: 1_000,
                write_id: None,
            })
            .await
            .unwrap();
    }
    let settings = hydra_server::Settings {
        agent_url_hosts: vec!["127.0.0.1".into()],
        ..hydra_server::Settings::default()
    };
    let state = hydra_server::AppState::new(store, settings, "admin-of-this-test")
        .await
        .unwrap();
    let workers = state.workers();
    assert!(
        workers.get("w-foreign").is_none(),
        "a stored foreign host is not used"
    );
    assert_eq!(workers.get("w-big").unwrap().max_sessions, 64);
    assert_eq!(workers.get("w-local").unwrap().max_sessions, 4);
}

#[tokio::test]
async fn the_sdk_cleans_the_error_texts_a_worker_reports() {
    let (_dir, server) = start(&["--agent-url-hosts", "127.0.0.1"]);
    let token = enrol_worker(&server, "w-log", "10.1.0.8").await;
    let report = |error: &str| hydra_api::WorkerReport {
        agent_url: "http://127.0.0.1:7071".into(),
        agent_key: "k".repeat(32),
        max_sessions: 2,
        sessions: vec![hydra_api::WorkerSession {
            session_id: "s-1".into(),
            body_ip: "10.0.0.1".into(),
            port: 9000,
            stream_url: "http://127.0.0.1:9000/".into(),
            status: hydra_api::SessionState::Error,
            error: Some(error.into()),
        }],
        sequence: None,
        start_timeout_ms: None,
    };
    let log_tail = "boot\r\nready\n\u{1b}[31mfatal\u{0}\n";
    // Sent as it is, the server refuses it naming the field...
    let (status, answer) = call_as(
        &token,
        Method::POST,
        &server.api("/workers/w-log/report"),
        Some(serde_json::to_value(report(log_tail)).unwrap()),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("sessions[0].error"),
        "{answer}"
    );
    // ...through the SDK (as the agent sends it), it is cleaned and accepted.
    let client = hydra_client::Client::new(
        hydra_client::ClientConfig::new([server.url.clone()])
            .with_token(&token)
            .with_retry(hydra_client::RetryPolicy::once()),
    )
    .unwrap();
    client
        .report_worker("w-log", &report(log_tail))
        .await
        .unwrap();
    assert_eq!(
        worker(&server, "w-log").await["agent_url"],
        "http://127.0.0.1:7071"
    );
}

#[tokio::test]
async fn a_worker_report_is_capped_by_its_config_bundle_too() {
    let (_dir, server) = start(&[]);
    let token = enrol_worker(&server, "w-bundle", "127.0.0.1").await;
    let (status, answer) = call(
        Method::PUT,
        &server.api("/nodes/w-bundle/config"),
        Some(json!({"sessions": {"max": 2}})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) =
        send_report(&server, &token, "w-bundle", "http://127.0.0.1:7071", 10).await;
    assert_eq!(status, 204, "{answer}");
    assert_eq!(worker(&server, "w-bundle").await["max_sessions"], 2);
    // A bundle above the server's cap does not raise it.
    let (status, _) = call(
        Method::PUT,
        &server.api("/nodes/w-bundle/config"),
        Some(json!({"sessions": {"max": 500}})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send_report(&server, &token, "w-bundle", "http://127.0.0.1:7071", 100).await;
    assert_eq!(status, 204);
    assert_eq!(worker(&server, "w-bundle").await["max_sessions"], 64);
}
