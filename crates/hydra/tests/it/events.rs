//! `GET /api/v1/events`: the real server's event stream as a script or the dashboard reads it
//! (node changes, a node turning offline), and in process: a slow subscriber is told `lagged`
//! and resynced while writers never wait, and a committed session write is announced.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call, call_as, http};

/// Splits server-sent events out of the bytes read so far: `(event, data as JSON)` for every
/// complete block, leaving an incomplete one in `buffer`.
pub(crate) fn take_events(buffer: &mut String) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let mut name = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(rest) = line.strip_prefix("event:") {
                name = rest.trim().to_owned();
            } else if let Some(rest) = line.strip_prefix("data:") {
                data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
        }
        if !data.is_empty() {
            events.push((
                name,
                serde_json::from_str(&data).expect("event data is JSON"),
            ));
        }
    }
    events
}

/// Reads `response` until an event satisfies `wanted` (at most 10 s); the events seen before it
/// are kept in `seen`.
pub(crate) async fn until(
    response: &mut reqwest::Response,
    buffer: &mut String,
    seen: &mut Vec<(String, Value)>,
    wanted: impl Fn(&str, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (name, data) in take_events(buffer) {
            if wanted(&name, &data) {
                return data;
            }
            seen.push((name, data));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no wanted event within 10 s; seen {seen:?}"))
            .expect("read the event stream")
            .expect("the event stream ended");
        buffer.push_str(std::str::from_utf8(&chunk).expect("utf-8 events"));
    }
}

#[tokio::test]
async fn the_stream_announces_node_changes_and_a_node_whose_heartbeats_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.extra = vec!["--heartbeat-timeout".into(), "1".into()];
    let server = ServerProcess::start(&setup);

    let (status, _) = call_as("wrong", Method::GET, &server.api("/events"), None).await;
    assert_eq!(status, 401, "the stream needs the admin token");

    let mut response = http()
        .get(server.api("/events"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("subscribe");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (mut buffer, mut seen) = (String::new(), Vec::new());
    let snapshot = until(&mut response, &mut buffer, &mut seen, |name, _| {
        name == "snapshot"
    })
    .await;
    assert_eq!(snapshot["nodes"], json!([]));
    assert_eq!(snapshot["heartbeat_timeout_ms"], 1_000);

    let (status, answer) = call(
        Method::POST,
        &server.api("/nodes"),
        Some(json!({"id": "b-1", "roles": ["body"], "district": "bxl1", "venue": "rupelmonde", "owner": "acme"})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let enrolled = until(&mut response, &mut buffer, &mut seen, |name, data| {
        name == "node_enrolled" && data["id"] == "b-1"
    })
    .await;
    assert_eq!(enrolled["venue"], "rupelmonde");

    let (status, _) = call(
        Method::POST,
        &server.api("/nodes/b-1/heartbeat"),
        Some(json!({"idle": true})),
    )
    .await;
    assert_eq!(status, 200);
    until(&mut response, &mut buffer, &mut seen, |name, data| {
        name == "node_changed" && data["id"] == "b-1" && data["status"] == "online"
    })
    .await;
    // No write announces a silence: the stream itself sees the heartbeat grow too old.
    until(&mut response, &mut buffer, &mut seen, |name, data| {
        name == "node_status" && data["id"] == "b-1" && data["status"] == "offline"
    })
    .await;

    let (status, _) = call(
        Method::POST,
        &server.api("/nodes/b-1/drain"),
        Some(json!({"drained": true})),
    )
    .await;
    assert_eq!(status, 200);
    until(&mut response, &mut buffer, &mut seen, |name, data| {
        name == "node_changed" && data["id"] == "b-1" && data["drained"] == true
    })
    .await;

    let (status, _) = call(Method::DELETE, &server.api("/nodes/b-1"), None).await;
    assert_eq!(status, 204);
    until(&mut response, &mut buffer, &mut seen, |name, data| {
        name == "node_removed" && data["id"] == "b-1"
    })
    .await;
    // A refused write announces nothing.
    let (status, _) = call(
        Method::POST,
        &server.api("/nodes/ghost/drain"),
        Some(json!({"drained": true})),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        !seen.iter().any(|(_, data)| data["id"] == "ghost"),
        "{seen:?}"
    );
}

/// The server in process, on a fresh SQLite file.
async fn state_in(dir: &std::path::Path) -> hydra_server::AppState {
    let store = hydra_store::Store::open_sqlite(&dir.join("hydra.db"))
        .await
        .expect("open SQLite");
    hydra_server::AppState::new(
        store,
        hydra_server::Settings::default(),
        "admin-of-this-test",
    )
    .await
    .expect("state")
}

fn admin_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        "Bearer admin-of-this-test".parse().unwrap(),
    );
    headers
}

/// The events a subscriber's body yields next, decoded; at most `count`, within 10 s.
async fn read_events(
    body: &mut axum::body::BodyDataStream,
    buffer: &mut String,
    count: usize,
) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.len() < count {
        events.extend(take_events(buffer));
        if events.len() >= count {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, body.next())
            .await
            .unwrap_or_else(|_| panic!("only {events:?} within 10 s"))
            .expect("stream open")
            .expect("chunk");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    events
}

#[tokio::test]
async fn a_slow_subscriber_is_told_lagged_and_resynced_and_writers_never_wait() {
    use hydra_server::events::{Change, SUBSCRIBER_BUFFER};
    let dir = tempfile::tempdir().expect("temp dir");
    let state = state_in(dir.path()).await;
    let response = hydra_server::routes::events::events(State(state.clone()), admin_headers())
        .await
        .expect("subscribe")
        .into_response();
    let mut body = response.into_body().into_data_stream();
    let mut buffer = String::new();
    let first = read_events(&mut body, &mut buffer, 1).await;
    assert_eq!(first[0].0, "snapshot");

    // The subscriber reads nothing while writers publish well past its buffer; `publish` is
    // not async, so a writer cannot wait for it.
    for index in 0..SUBSCRIBER_BUFFER + 500 {
        state
            .fleet()
            .events()
            .publish(Change::NodeRemoved(format!("gone-{index}")));
    }
    let next = read_events(&mut body, &mut buffer, 2).await;
    assert_eq!(next[0].0, "lagged", "{next:?}");
    assert_eq!(next[0].1["missed"], 500);
    assert_eq!(next[1].0, "snapshot", "a resync follows: {next:?}");
    // Then the newest events it kept, in order.
    let kept = read_events(&mut body, &mut buffer, 1).await;
    assert_eq!(kept[0].1["id"], "gone-500", "{kept:?}");
}

#[tokio::test]
async fn a_committed_session_write_is_announced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = state_in(dir.path()).await;
    let response = hydra_server::routes::events::events(State(state.clone()), admin_headers())
        .await
        .expect("subscribe")
        .into_response();
    let mut body = response.into_body().into_data_stream();
    let mut buffer = String::new();
    assert_eq!(
        read_events(&mut body, &mut buffer, 1).await[0].0,
        "snapshot"
    );
    let record = hydra_store::SessionRecord {
        id: "s-1".into(),
        worker_id: "w-1".into(),
        body_ip: "10.1.0.7".into(),
        body_id: None,
        head_id: None,
        experience: None,
        port: None,
        stream_url: None,
        status: hydra_store::SessionStatus::Starting,
        error: None,
        created_at: 1_000,
        updated_at: 1_000,
    };
    state
        .session_writes()
        .insert(record.clone())
        .await
        .expect("insert");
    let event = read_events(&mut body, &mut buffer, 1).await;
    assert_eq!(event[0].0, "session");
    assert_eq!(event[0].1["session_id"], "s-1");
    assert_eq!(event[0].1["status"], "starting");
    // A write that does not apply (the id exists) is not announced; the next one is.
    assert!(state.session_writes().insert(record.clone()).await.is_err());
    let mut running = record;
    running.status = hydra_store::SessionStatus::Running;
    running.updated_at = 2_000;
    assert!(
        state
            .session_writes()
            .update(running)
            .await
            .expect("update")
    );
    let event = read_events(&mut body, &mut buffer, 1).await;
    assert_eq!(event[0].1["status"], "running", "{event:?}");
}
