//! Writes repeated with their write id (`Idempotency-Key`), against the real server on both
//! engines: the agent's journal replays heartbeats and worker reports this way (issue 10), and a
//! repeat, even after a server kill -9, is answered with the first status and applied once.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ServerProcess, ServerSetup, call, free_loopback_port, http};

/// Sends `body` to `path` with `token` and, when given, `Idempotency-Key: key`; answers the
/// status, whether the server marked it a repeat, and the JSON body (or Null).
async fn send(
    server: &ServerProcess,
    token: &str,
    path: &str,
    key: Option<&str>,
    body: Value,
) -> (u16, bool, Value) {
    let mut request = http().post(server.api(path)).bearer_auth(token).json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotency-replayed").is_some();
    let text = response.text().await.unwrap();
    (
        status,
        replayed,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

async fn node(server: &ServerProcess, id: &str) -> Value {
    let (status, node) = call(Method::GET, &server.api(&format!("/nodes/{id}")), None).await;
    assert_eq!(status, 200, "{node}");
    node
}

async fn worker_max(server: &ServerProcess, id: &str) -> Value {
    let (_, list) = call(Method::GET, &server.api("/workers"), None).await;
    list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|worker| worker["id"] == id)
        .map_or(Value::Null, |worker| worker["max_sessions"].clone())
}

async fn a_repeated_write_is_applied_once(setup: ServerSetup) {
    let mut server =
        ServerProcess::start_listening(&setup, &format!("127.0.0.1:{}", free_loopback_port()));
    let (status, enrolled) = call(
        Method::POST,
        &server.api("/nodes"),
        Some(json!({"id": "w-1", "roles": ["worker"], "district": "bxl1", "venue": "v", "owner": "o", "lan_ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(status, 201, "{enrolled}");
    let token = enrolled["token"].as_str().unwrap().to_owned();
    let beat = "0f0e0d0c-0b0a-4908-8706-050403020100";
    let heartbeat = "/nodes/w-1/heartbeat";

    let first = send(
        &server,
        &token,
        heartbeat,
        Some(beat),
        json!({"idle": false, "active_sessions": 2}),
    )
    .await;
    assert_eq!((first.0, first.1), (200, false), "{}", first.2);
    let repeat = send(
        &server,
        &token,
        heartbeat,
        Some(beat),
        json!({"idle": true, "active_sessions": 5}),
    )
    .await;
    assert_eq!(
        (repeat.0, repeat.1),
        (200, true),
        "the first status, marked a repeat: {}",
        repeat.2
    );
    assert_eq!(
        node(&server, "w-1").await["active_sessions"],
        2,
        "not applied twice"
    );

    // Remembered durably: the same id after a kill -9 and restart is still a repeat.
    server.restart_after_kill_9(&setup);
    let repeat = send(
        &server,
        &token,
        heartbeat,
        Some(beat),
        json!({"idle": true, "active_sessions": 7}),
    )
    .await;
    assert_eq!((repeat.0, repeat.1), (200, true), "{}", repeat.2);
    assert_eq!(node(&server, "w-1").await["active_sessions"], 2);

    // A worker report: 204 twice, the second not applied.
    let report = |max: u32| json!({"agent_url": "http://127.0.0.1:7071", "agent_key": "k".repeat(32), "max_sessions": max, "sessions": []});
    let key = "11111111-2222-4333-8444-555555555555";
    let first = send(&server, &token, "/workers/w-1/report", Some(key), report(4)).await;
    assert_eq!((first.0, first.1), (204, false), "{}", first.2);
    let repeat = send(&server, &token, "/workers/w-1/report", Some(key), report(9)).await;
    assert_eq!((repeat.0, repeat.1), (204, true), "{}", repeat.2);
    assert_eq!(worker_max(&server, "w-1").await, 4);
    // Without an id, or with a new one, a write applies as always.
    let fresh = send(
        &server,
        &token,
        heartbeat,
        Some("11111111-2222-4333-8444-666666666666"),
        json!({"idle": false, "active_sessions": 3}),
    )
    .await;
    assert_eq!((fresh.0, fresh.1), (200, false));
    assert_eq!(node(&server, "w-1").await["active_sessions"], 3);

    // Bad input: a 400 naming the header, nothing changes.
    for (path, key, body) in [
        (
            heartbeat,
            "not-a-uuid",
            json!({"idle": true, "active_sessions": 8}),
        ),
        (
            "/nodes/w-1/drain",
            "22222222-2222-4333-8444-555555555555",
            json!({"drained": true}),
        ),
    ] {
        let (status, _, answer) =
            send(&server, crate::support::ADMIN_TOKEN, path, Some(key), body).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["error"], "invalid_request", "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{answer}"
        );
    }
    let after = node(&server, "w-1").await;
    assert_eq!(
        (after["active_sessions"].clone(), after["drained"].clone()),
        (json!(3), json!(false))
    );
    // A repeat is answered only to a caller with a token.
    let (status, replayed, _) = send(
        &server,
        "wrong-token",
        heartbeat,
        Some(beat),
        json!({"idle": true}),
    )
    .await;
    assert_eq!((status, replayed), (401, false));
}

#[tokio::test]
async fn sqlite_a_write_repeated_with_its_write_id_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    a_repeated_write_is_applied_once(ServerSetup::sqlite(dir.path())).await;
}

#[tokio::test]
async fn postgres_a_write_repeated_with_its_write_id_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.database_url = Some(hydra_store::testing::fresh_postgres_database("write_ids").await);
    a_repeated_write_is_applied_once(setup).await;
}
