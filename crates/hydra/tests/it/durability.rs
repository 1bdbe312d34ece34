//! An acknowledged write survives `kill -9` of the server, on both engines.

use reqwest::Method;
use serde_json::json;

use crate::support::{ServerProcess, ServerSetup, call, call_as};

/// Enrols, heartbeats, moves, drains and measures; SIGKILLs the server right after the last
/// acknowledgement; restarts it on the same storage and reads every write back.
async fn acknowledged_writes_survive_sigkill(setup: ServerSetup) {
    let server = ServerProcess::start(&setup);
    let (status, enrolled) = call(Method::POST, &server.api("/nodes"), Some(json!({
        "id": "b-kept", "roles": ["body"], "district": "bxl1", "venue": "rupelmonde", "owner": "acme",
        "allowed_orgs": ["globex"], "lan_ip": "10.1.0.7", "wg_ip": "10.99.0.7", "vram_mb": 24_576, "cost_tier": "leased"
    }))).await;
    assert_eq!(status, 201);
    let node_token = enrolled["token"].as_str().unwrap().to_owned();
    call(Method::POST, &server.api("/nodes"), Some(json!({"id": "h", "roles": ["head"], "district": "bxl1", "venue": "ghent", "owner": "acme"}))).await;
    call(Method::POST, &server.api("/nodes"), Some(json!({"id": "b-gone", "roles": ["body"], "district": "bxl1", "venue": "v", "owner": "acme"}))).await;
    let (status, _) = call(Method::DELETE, &server.api("/nodes/b-gone"), None).await;
    assert_eq!(status, 204);
    let (status, beat) = call_as(
        &node_token,
        Method::POST,
        &server.api("/nodes/b-kept/heartbeat"),
        Some(json!({"idle": true, "active_sessions": 1})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=h&measured=b-kept:wireguard:17"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        Method::POST,
        &server.api("/nodes/b-kept/district"),
        Some(json!({"district": "bxl1", "venue": "cloud-seven"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        Method::POST,
        &server.api("/nodes/b-kept/drain"),
        Some(json!({"drained": true})),
    )
    .await;
    assert_eq!(status, 200);
    server.kill_9();

    let server = ServerProcess::start(&setup);
    let (status, node) = call(Method::GET, &server.api("/nodes/b-kept"), None).await;
    assert_eq!(status, 200);
    assert_eq!(node["venue"], "cloud-seven");
    assert_eq!(node["drained"], true);
    assert_eq!(node["idle"], true);
    assert_eq!(node["active_sessions"], 1);
    assert_eq!(node["last_heartbeat"], beat["last_heartbeat"]);
    assert_eq!(node["allowed_orgs"], json!(["globex"]));
    assert_eq!(node["cost_tier"], "leased");
    let (status, _) = call(Method::GET, &server.api("/nodes/b-gone"), None).await;
    assert_eq!(status, 404, "a delete was lost");
    // The node token still authenticates (its digest was stored), and the latency sample is back.
    let (status, _) = call_as(
        &node_token,
        Method::POST,
        &server.api("/nodes/b-kept/heartbeat"),
        Some(json!({"idle": true})),
    )
    .await;
    assert_eq!(status, 200);
    call(
        Method::POST,
        &server.api("/nodes/b-kept/drain"),
        Some(json!({"drained": false})),
    )
    .await;
    let (_, answer) = call(Method::GET, &server.api("/bodies/eligible?head_id=h"), None).await;
    assert_eq!(answer["bodies"][0]["rtt_ms"], 17, "{answer}");
}

#[tokio::test]
async fn sqlite_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    acknowledged_writes_survive_sigkill(ServerSetup::sqlite(dir.path())).await;
}

#[tokio::test]
async fn postgres_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let url = hydra_store::testing::fresh_postgres_database("sigkill").await;
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.database_url = Some(url);
    acknowledged_writes_survive_sigkill(setup).await;
}

#[tokio::test]
async fn generated_admin_token_is_private_and_stable_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.admin_token = None;
    let server = ServerProcess::start(&setup);
    let first_log = server.log.lock().unwrap().clone();
    server.kill_9();
    let token_path = dir.path().join("admin-token");
    let token = std::fs::read_to_string(&token_path).unwrap();
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(first_log.contains("generated one"), "{first_log}");
    assert!(
        first_log.contains(token_path.to_str().unwrap()),
        "the log must say where: {first_log}"
    );
    assert!(
        !first_log.contains(token.trim()),
        "the token itself reached the log"
    );
    let server = ServerProcess::start(&setup);
    assert_eq!(
        std::fs::read_to_string(&token_path).unwrap(),
        token,
        "restart replaced the token"
    );
    assert!(!server.log.lock().unwrap().contains("generated one"));
    let (status, _) = call_as(token.trim(), Method::GET, &server.api("/nodes"), None).await;
    assert_eq!(status, 200, "the stored token is the admin token");
}
