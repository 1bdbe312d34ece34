//! Session-aware drain with real processes (a `hydra server` on SQLite or PostgreSQL, a `hydra
//! agent` running stand-in session processes, and `hydra nodes drain --wait` as the operator
//! runs it): the drained worker takes no new session while its running ones go on;
//! `GET /api/v1/workers` shows it `draining` with the sessions left; the command prints an
//! estimate from the sessions' ages; at the deadline each session's page is told its stream
//! ends soon, then the sessions are ended, and the command returns once none is left.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::agent::{Agent, Fleet, WORKER_ID};
use crate::support::{ADMIN_TOKEN, call, eventually, http};

/// Creates a session through the server; returns its id and stream URL (with the viewer
/// capability).
async fn create(fleet: &Fleet) -> (String, String) {
    let (status, session) = call(
        Method::POST,
        &fleet.server.api("/sessions"),
        Some(json!({"body_ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(status, 201, "{session}");
    (
        session["session_id"].as_str().unwrap().to_owned(),
        session["stream_url"].as_str().unwrap().to_owned(),
    )
}

/// What the session's page reads at `/session/{id}/notice` (with its capability).
async fn page_notice(stream_url: &str, session_id: &str) -> Value {
    let query = stream_url.split_once('?').map(|(_, query)| query).unwrap();
    let base = stream_url.split("/session/").next().unwrap();
    let url = format!("{base}/session/{session_id}/notice?{query}");
    let answer = http().get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 200, "{url}");
    answer.json().await.unwrap()
}

async fn drain_waits_notifies_and_ends(database_url: Option<String>) {
    let fleet = Fleet::start_with_room(database_url, 3);
    let mut agent = Agent::start(&fleet, "agent");
    fleet.wait_worker(&mut agent).await;
    let (first, first_url) = create(&fleet).await;
    let (second, _) = create(&fleet).await;
    assert_eq!(
        page_notice(&first_url, &first).await,
        json!({"ends_in_s": null})
    );

    let output = tempfile::NamedTempFile::new().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hydra"));
    command
        .args([
            "nodes",
            "drain",
            WORKER_ID,
            "--wait",
            "--deadline",
            "4s",
            "--notice",
            "3s",
        ])
        .args(["--server", &fleet.server.url])
        .env("HYDRA_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .stdout(output.reopen().unwrap())
        .stderr(Stdio::piped());
    let mut drain = command.spawn().expect("spawn hydra nodes drain");
    let started = Instant::now();

    // Drained, its sessions running: `draining` with two left, and no new session.
    let draining = eventually(Duration::from_secs(10), async || {
        let worker = fleet.server_worker().await;
        worker["draining"] == true && worker["sessions_left"] == 2
    })
    .await;
    assert!(draining, "{}", fleet.server_worker().await);
    let (status, refused) = call(
        Method::POST,
        &fleet.server.api("/sessions"),
        Some(json!({"body_ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(
        (status, refused["message"].as_str()),
        (503, Some("no healthy workers available")),
        "{refused}"
    );
    assert_eq!(fleet.server_session(&first).await["status"], "running");

    // At the deadline the page hears that its stream ends soon.
    let told = eventually(Duration::from_secs(20), async || {
        page_notice(&first_url, &first).await["ends_in_s"].is_u64()
    })
    .await;
    assert!(told, "no notice reached the page");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the notice came before the deadline"
    );

    // Then the sessions end and the command returns.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = drain.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "hydra nodes drain --wait did not return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let printed = std::fs::read_to_string(output.path()).unwrap();
    assert!(status.success(), "{status}: {printed}");
    for id in [&first, &second] {
        assert_eq!(
            fleet.server_session(id).await["status"],
            "stopped",
            "{printed}"
        );
    }
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("node {WORKER_ID} is drained: it takes no new work").as_str()),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "node {WORKER_ID}: 2 sessions left; done in about "
        )),
        "{printed}"
    );
    assert!(
        printed.contains("deadline reached: told 2 of 2 session pages the stream ends in 3 s"),
        "{printed}"
    );
    assert!(
        printed.contains("ended 2 sessions at the deadline"),
        "{printed}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(format!("node {WORKER_ID} is drained: no session left").as_str()),
        "{printed}"
    );
    let worker = fleet.server_worker().await;
    assert_eq!(
        (
            &worker["drained"],
            &worker["draining"],
            &worker["sessions_left"]
        ),
        (&json!(true), &json!(false), &json!(0)),
        "{worker}"
    );
}

#[tokio::test]
async fn sqlite_drain_waits_for_sessions_tells_the_pages_and_ends_them_at_the_deadline() {
    drain_waits_notifies_and_ends(None).await;
}

#[tokio::test]
async fn postgres_drain_waits_for_sessions_tells_the_pages_and_ends_them_at_the_deadline() {
    let url = hydra_store::testing::fresh_postgres_database("drain_wait").await;
    drain_waits_notifies_and_ends(Some(url)).await;
}
