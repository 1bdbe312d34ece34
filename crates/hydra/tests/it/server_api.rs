//! The registry and selection API as a user meets it: the real server process over HTTP.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ServerProcess, ServerSetup, call, call_as, eventually, http, ids};

fn start() -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    (dir, server)
}

async fn enrol(server: &ServerProcess, body: Value) -> Value {
    let (status, answer) = call(Method::POST, &server.api("/nodes"), Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    answer
}

async fn heartbeat(server: &ServerProcess, id: &str, idle: bool) {
    let (status, answer) = call(
        Method::POST,
        &server.api(&format!("/nodes/{id}/heartbeat")),
        Some(json!({"idle": idle})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn readme_walkthrough_quickroute_then_cross_venue_after_parking() {
    let (_dir, server) = start();
    // Each body its own addresses, so an answer that mixed bodies up would show.
    let bodies = [
        ("b-rup-1", "rupelmonde", 8_192, "10.1.0.11", "10.99.0.11"),
        ("b-rup-2", "rupelmonde", 24_576, "10.1.0.12", "10.99.0.12"),
        ("b-c7", "cloud-seven", 16_384, "10.2.0.21", "10.99.0.21"),
    ];
    for (id, venue, vram, lan_ip, wg_ip) in bodies {
        enrol(
            &server,
            json!({"id": id, "roles": ["body"], "district": "bxl1", "venue": venue, "owner": "acme",
                   "lan_ip": lan_ip, "wg_ip": wg_ip, "vram_mb": vram}),
        )
        .await;
        heartbeat(&server, id, true).await;
    }
    enrol(&server, json!({"id": "h-rup", "roles": ["head"], "district": "bxl1", "venue": "rupelmonde", "owner": "acme"})).await;

    let url = server.api("/bodies/eligible?head_id=h-rup");
    let (status, answer) = call(Method::GET, &url, None).await;
    assert_eq!(status, 200);
    assert_eq!(answer["policy"], "quickroute");
    assert_eq!(
        ids(&answer),
        ["b-rup-2", "b-rup-1"],
        "idle first, then VRAM descending"
    );
    assert_eq!(answer["bodies"][0]["same_venue"], true);
    let addresses = |answer: &Value| -> Vec<(String, String, String)> {
        answer["bodies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|body| {
                let text = |field: &str| body[field].as_str().unwrap_or("-").to_owned();
                (text("id"), text("lan_ip"), text("wg_ip"))
            })
            .collect()
    };
    assert_eq!(
        addresses(&answer),
        [
            ("b-rup-2".into(), "10.1.0.12".into(), "10.99.0.12".into()),
            ("b-rup-1".into(), "10.1.0.11".into(), "10.99.0.11".into()),
        ]
    );

    // Park both venue bodies in the spare district: the head falls over to the other venue.
    for id in ["b-rup-1", "b-rup-2"] {
        let (status, _) = call(
            Method::POST,
            &server.api(&format!("/nodes/{id}/district")),
            Some(json!({"district": "bxl1-test", "venue": "rupelmonde"})),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (_, answer) = call(Method::GET, &url, None).await;
    assert_eq!(answer["policy"], "cross_venue");
    assert_eq!(ids(&answer), ["b-c7"]);
    assert_eq!(answer["bodies"][0]["same_venue"], false);

    // Drain the last one: nothing left.
    let (status, node) = call(
        Method::POST,
        &server.api("/nodes/b-c7/drain"),
        Some(json!({"drained": true})),
    )
    .await;
    assert_eq!((status, node["drained"].clone()), (200, json!(true)));
    let (_, answer) = call(Method::GET, &url, None).await;
    assert_eq!(answer, json!({"policy": "none", "bodies": []}));

    // Move one back: quickroute again.
    call(
        Method::POST,
        &server.api("/nodes/b-rup-1/district"),
        Some(json!({"district": "bxl1", "venue": "rupelmonde"})),
    )
    .await;
    let (_, answer) = call(Method::GET, &url, None).await;
    assert_eq!(
        (answer["policy"].as_str(), ids(&answer)),
        (Some("quickroute"), vec!["b-rup-1".to_owned()])
    );

    // Strict venue without head_id ignores the owner and needs both district and venue.
    let (status, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?district=bxl1&venue=rupelmonde"),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["policy"].as_str()),
        (200, Some("strict_venue"))
    );
    let (status, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?district=bxl1"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("district and venue"),
        "{answer}"
    );
}

#[tokio::test]
async fn unreachable_bodies_open_the_fallback_and_measured_latency_ranks_it() {
    let (_dir, server) = start();
    for (id, venue) in [
        ("b-venue", "rupelmonde"),
        ("b-far", "cloud-seven"),
        ("b-near", "ghent"),
    ] {
        enrol(&server, json!({"id": id, "roles": ["body"], "district": "bxl1", "venue": venue, "owner": "acme"})).await;
        heartbeat(&server, id, true).await;
    }
    enrol(&server, json!({"id": "h", "roles": ["head"], "district": "bxl1", "venue": "rupelmonde", "owner": "acme"})).await;
    let (_, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=h&unreachable=b-venue"),
        None,
    )
    .await;
    assert_eq!(
        (answer["policy"].as_str(), ids(&answer)),
        (
            Some("cross_venue"),
            vec!["b-far".to_owned(), "b-near".to_owned()]
        )
    );
    // The head reports what it measured; from then on latency ranks the fallback.
    let (_, answer) =
        call(Method::GET, &server.api("/bodies/eligible?head_id=h&unreachable=b-venue&measured=b-near:wireguard:4,b-far:wireguard:35"), None).await;
    assert_eq!(ids(&answer), ["b-near", "b-far"]);
    assert_eq!(answer["bodies"][0]["rtt_ms"], 4);
    // The server remembers what the head said (issue 13): b-venue, unreachable on both paths,
    // stays out of this head's answers for `--unreachable-for` (60 s), and the bodies it reached
    // over WireGuard only are marked `wg_only`.
    let (_, answer) = call(Method::GET, &server.api("/bodies/eligible?head_id=h"), None).await;
    assert_eq!(ids(&answer), ["b-near", "b-far"]);
    assert_eq!(answer["bodies"][0]["wg_only"], true, "{answer}");
    assert_eq!(answer["bodies"][1]["wg_only"], true, "{answer}");
    // A LAN answer clears the mark.
    let (_, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=h&measured=b-near:lan:2"),
        None,
    )
    .await;
    assert_eq!(ids(&answer), ["b-near", "b-far"]);
    assert!(answer["bodies"][0].get("wg_only").is_none(), "{answer}");
    let (status, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=h&measured=b-near:udp:4"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["message"].as_str().unwrap().contains("transport"),
        "{answer}"
    );
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_field_and_changes_nothing() {
    let (_dir, server) = start();
    let nodes = server.api("/nodes");
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o", "colour": "red"}),
            400,
            "colour",
        ),
        (
            json!({"roles": ["gpu"], "district": "bxl1", "venue": "v", "owner": "o"}),
            400,
            "roles",
        ),
        (
            json!({"roles": [], "district": "bxl1", "venue": "v", "owner": "o"}),
            400,
            "roles",
        ),
        (
            json!({"roles": ["body"], "venue": "v", "owner": "o"}),
            400,
            "district",
        ),
        (
            json!({"roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o", "lan_ip": "10.0.0.300"}),
            400,
            "lan_ip",
        ),
        (
            json!({"roles": ["body"], "district": "bxl 1", "venue": "v", "owner": "o"}),
            400,
            "district",
        ),
        (
            json!({"roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o", "cost_tier": "free"}),
            400,
            "cost_tier",
        ),
        (
            json!({"roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o", "vram_mb": -1}),
            400,
            "vram_mb",
        ),
        (
            json!({"roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o", "vram_mb": 9_223_372_036_854_775_808u64}),
            400,
            "vram_mb",
        ),
        (
            json!({"district": "bxl1", "venue": "v", "owner": "o"}),
            400,
            "roles",
        ),
        (
            json!({"id": "x".repeat(65), "roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o"}),
            400,
            "id",
        ),
    ];
    for (body, status, field) in cases {
        let (got, answer) = call(Method::POST, &nodes, Some(body.clone())).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert_eq!(answer["error"], "invalid_request", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{body}: message should name {field}: {answer}"
        );
    }
    // Not JSON, and too large.
    let response = http()
        .post(&nodes)
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let huge = json!({"roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o", "name": "n".repeat(100_000)});
    let (status, answer) = call(Method::POST, &nodes, Some(huge)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    // Nothing was enrolled by any of it.
    let (_, list) = call(Method::GET, &nodes, None).await;
    assert_eq!(list["nodes"], json!([]));
    // Unknown resources are 404s with a JSON body; a duplicate id is a 409.
    let (status, answer) = call(Method::GET, &server.api("/nodes/ghost"), None).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));
    assert!(answer["message"].as_str().unwrap().contains("ghost"));
    let (status, _) = call(
        Method::POST,
        &server.api("/nodes/ghost/drain"),
        Some(json!({"drained": true})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=ghost"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    enrol(
        &server,
        json!({"id": "b1", "roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o"}),
    )
    .await;
    let (status, answer) = call(
        Method::POST,
        &nodes,
        Some(json!({"id": "b1", "roles": ["head"], "district": "d", "venue": "v", "owner": "o"})),
    )
    .await;
    assert_eq!((status, answer["error"].as_str()), (409, Some("conflict")));
    let (status, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=b1"),
        None,
    )
    .await;
    assert_eq!(status, 400, "a node without the head role: {answer}");
    let (status, _) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=b1&colour=red"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, answer) = call(Method::GET, &server.api("/no/such/route"), None).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn tokens_admin_node_and_wrong() {
    let (_dir, server) = start();
    let enrolled = enrol(
        &server,
        json!({"id": "b1", "roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o"}),
    )
    .await;
    let node_token = enrolled["token"].as_str().unwrap().to_owned();
    enrol(
        &server,
        json!({"id": "b2", "roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o"}),
    )
    .await;
    // No token, a wrong token.
    let response = http().get(server.api("/nodes")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let (status, answer) = call_as("wrong", Method::GET, &server.api("/nodes"), None).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("unauthorized"))
    );
    // A node token heartbeats its own node, not another, and is not an admin token.
    let beat = Some(json!({"idle": true, "active_sessions": 2, "vram_mb": 12_000}));
    let (status, node) = call_as(
        &node_token,
        Method::POST,
        &server.api("/nodes/b1/heartbeat"),
        beat.clone(),
    )
    .await;
    assert_eq!(
        (status, node["status"].as_str(), node["vram_mb"].as_u64()),
        (200, Some("online"), Some(12_000))
    );
    let (status, _) = call_as(
        &node_token,
        Method::POST,
        &server.api("/nodes/b2/heartbeat"),
        beat,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call_as(&node_token, Method::GET, &server.api("/nodes"), None).await;
    assert_eq!(status, 403);
    // A GPU size that storage could not read back is refused and changes nothing.
    let huge = Some(json!({"idle": true, "vram_mb": 9_223_372_036_854_775_808u64}));
    let (status, answer) = call_as(
        &node_token,
        Method::POST,
        &server.api("/nodes/b1/heartbeat"),
        huge,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("vram_mb"),
        "{answer}"
    );
    let (_, node) = call(Method::GET, &server.api("/nodes/b1"), None).await;
    assert_eq!(node["vram_mb"], 12_000);
    // The token is never shown again, and never stored in the clear.
    let (_, shown) = call(Method::GET, &server.api("/nodes/b1"), None).await;
    assert!(!shown.to_string().contains(&node_token));
    // A removed node's token stops working.
    let (status, _) = call(Method::DELETE, &server.api("/nodes/b1"), None).await;
    assert_eq!(status, 204);
    let (status, _) = call_as(
        &node_token,
        Method::POST,
        &server.api("/nodes/b1/heartbeat"),
        Some(json!({"idle": true})),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        !server.log.lock().unwrap().contains(&node_token),
        "a token reached the log"
    );
}

#[tokio::test]
async fn a_node_goes_offline_when_heartbeats_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = ServerSetup::sqlite(dir.path());
    // 3 s, not 1: the GET right after the heartbeat must land inside it on a loaded machine.
    setup.extra = vec!["--heartbeat-timeout".into(), "3".into()];
    let server = ServerProcess::start(&setup);
    enrol(
        &server,
        json!({"id": "b1", "roles": ["body"], "district": "bxl1", "venue": "v", "owner": "o"}),
    )
    .await;
    let (_, node) = call(Method::GET, &server.api("/nodes/b1"), None).await;
    assert_eq!(
        (node["status"].as_str(), &node["last_heartbeat"]),
        (Some("offline"), &Value::Null)
    );
    heartbeat(&server, "b1", true).await;
    let (_, node) = call(Method::GET, &server.api("/nodes/b1"), None).await;
    assert_eq!(node["status"], "online");
    assert!(node["last_heartbeat"].as_str().unwrap().ends_with('Z'));
    let went_offline = eventually(Duration::from_secs(15), async || {
        call(Method::GET, &server.api("/nodes/b1"), None).await.1["status"] == "offline"
    })
    .await;
    assert!(
        went_offline,
        "node stayed online past the 1 s heartbeat timeout"
    );
}

#[tokio::test]
async fn health_master_and_openapi_document() {
    let (_dir, server) = start();
    let (status, health) = call(Method::GET, &server.api("/health"), None).await;
    assert_eq!(
        (
            status,
            health["status"].as_str(),
            health["storage"].as_str()
        ),
        (200, Some("ok"), Some("sqlite"))
    );
    // A single replica on SQLite is its own master, under its generated id, without a term.
    let (_, master) = call(Method::GET, &server.api("/check-master"), None).await;
    let id = master["master_id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("r-"), "{master}");
    // It names itself and its cluster: the store's id, 32 hex digits made once per database.
    let cluster = master["cluster_id"].as_str().unwrap_or_default().to_owned();
    assert!(
        cluster.len() == 32 && cluster.bytes().all(|byte| byte.is_ascii_hexdigit()),
        "{master}"
    );
    assert_eq!(
        master,
        json!({"is_master": true, "master_url": server.url, "master_id": id, "replica_id": id, "cluster_id": cluster})
    );
    // Every replica's address is for callers with a token only.
    let (status, refused) =
        crate::support::call_as("", Method::GET, &server.api("/replicas"), None).await;
    assert_eq!(status, 401, "{refused}");
    let (status, replicas) = call(Method::GET, &server.api("/replicas"), None).await;
    assert_eq!(status, 200);
    let revision = replicas[0]["revision"].clone();
    assert!(revision.is_u64(), "{replicas}");
    assert_eq!(
        replicas,
        json!([{"id": id, "base_url": server.url, "is_master": true, "is_healthy": true,
                "revision": revision, "lag_ms": 0}])
    );
    let (status, document) = call(Method::GET, &server.api("/openapi.json"), None).await;
    assert_eq!(status, 200);
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/api/v1/nodes",
        "/api/v1/nodes/{id}",
        "/api/v1/nodes/{id}/heartbeat",
        "/api/v1/nodes/{id}/district",
        "/api/v1/nodes/{id}/drain",
        "/api/v1/bodies/eligible",
        "/api/v1/health",
        "/api/v1/check-master",
        "/api/v1/replicas",
    ] {
        assert!(paths.contains_key(path), "OpenAPI document lacks {path}");
    }
}
