//! A session a worker started itself while no control plane answered (issue 11: placement
//! through peers) appears on the server when the worker's report reaches it, owned by that
//! worker; a session whose id names another node, an old `s-` id, and a session the server
//! already ended are not taken on. Against the real server on both engines.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ServerProcess, ServerSetup, call, free_loopback_port, http};

const UUID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const OTHER_UUID: &str = "1f8fad5b-d9cb-469f-a165-70867728950e";

fn live(session_id: &str) -> Value {
    json!({"session_id": session_id, "body_ip": "127.0.0.1", "port": 21000,
           "stream_url": format!("http://127.0.0.1:7071/session/{session_id}/"),
           "status": "running", "error": null})
}

async fn report(server: &ServerProcess, token: &str, sequence: u64, sessions: Vec<Value>) {
    let answer = http()
        .post(server.api("/workers/w-1/report"))
        .bearer_auth(token)
        .json(
            &json!({"agent_url": "http://127.0.0.1:7071", "agent_key": "k".repeat(32),
                      "max_sessions": 4, "sessions": sessions, "sequence": sequence}),
        )
        .send()
        .await
        .expect("report");
    assert_eq!(answer.status(), 204, "{}", answer.text().await.unwrap());
}

async fn session(server: &ServerProcess, id: &str) -> (u16, Value) {
    call(Method::GET, &server.api(&format!("/sessions/{id}")), None).await
}

async fn a_session_started_by_a_worker_is_taken_on(setup: ServerSetup) {
    let server =
        ServerProcess::start_listening(&setup, &format!("127.0.0.1:{}", free_loopback_port()));
    let (status, enrolled) = call(
        Method::POST,
        &server.api("/nodes"),
        Some(json!({"id": "w-1", "roles": ["worker"], "district": "bxl1", "venue": "v", "owner": "o", "lan_ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(status, 201, "{enrolled}");
    let token = enrolled["token"].as_str().unwrap().to_owned();
    let own = format!("w-1:{UUID}");
    // Still starting: not taken on yet (a starting record would wait for an answer that never
    // comes), and not ended either.
    let mut starting = live(&own);
    starting["status"] = json!("starting");
    report(&server, &token, 1, vec![starting]).await;
    let (status, answer) = session(&server, &own).await;
    assert_eq!(status, 404, "not taken on while starting: {answer}");
    let foreign = format!("w-2:{OTHER_UUID}");
    let legacy = "s-0123456789abcdef";
    report(
        &server,
        &token,
        2,
        vec![live(&own), live(&foreign), live(legacy)],
    )
    .await;

    let (status, taken) = session(&server, &own).await;
    assert_eq!(status, 200, "{taken}");
    assert_eq!(
        (&taken["worker_id"], &taken["status"], &taken["port"]),
        (&json!("w-1"), &json!("running"), &json!(21000))
    );
    for refused in [foreign.as_str(), legacy] {
        let (status, answer) = session(&server, refused).await;
        assert_eq!(status, 404, "{refused} is not taken on: {answer}");
    }
    // Ended by the operator: a later report that still lists it does not bring it back.
    let (status, ended) = call(
        Method::DELETE,
        &server.api(&format!("/sessions/{own}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{ended}");
    report(&server, &token, 3, vec![live(&own)]).await;
    let (_, after) = session(&server, &own).await;
    assert_ne!(
        after["status"], "running",
        "an ended session stays ended: {after}"
    );
}

#[tokio::test]
async fn sqlite_a_session_a_worker_started_while_the_server_was_away_is_taken_on() {
    let dir = tempfile::tempdir().unwrap();
    a_session_started_by_a_worker_is_taken_on(ServerSetup::sqlite(dir.path())).await;
}

#[tokio::test]
async fn postgres_a_session_a_worker_started_while_the_server_was_away_is_taken_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.database_url = Some(hydra_store::testing::fresh_postgres_database("adopted").await);
    a_session_started_by_a_worker_is_taken_on(setup).await;
}
