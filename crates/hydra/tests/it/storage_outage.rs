//! The storage engine failing for real under a running server (its PostgreSQL database stops
//! taking connections): writes answer 503 with the JSON error, health says `degraded` and the log
//! says why, body selection keeps answering from memory, and everything recovers once the
//! database is back.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{ServerProcess, ServerSetup, call, eventually, ids};

async fn health_status(server: &ServerProcess) -> String {
    let (status, health) = call(Method::GET, &server.api("/health"), None).await;
    assert_eq!(status, 200, "{health}");
    health["status"].as_str().unwrap_or_default().to_owned()
}

async fn eligible_ids(server: &ServerProcess) -> Vec<String> {
    let (status, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=h-1"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["policy"], "quickroute", "{answer}");
    ids(&answer)
}

#[tokio::test]
async fn postgres_outage_degrades_writes_not_selection_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let url = hydra_store::testing::fresh_postgres_database("outage").await;
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.database_url = Some(url.clone());
    let server = ServerProcess::start(&setup);
    for body in [
        json!({"id": "b-1", "roles": ["body"], "district": "bxl1", "venue": "v1", "owner": "acme", "vram_mb": 8192}),
        json!({"id": "b-2", "roles": ["body"], "district": "bxl1", "venue": "v1", "owner": "acme", "vram_mb": 24576}),
        json!({"id": "h-1", "roles": ["head"], "district": "bxl1", "venue": "v1", "owner": "acme"}),
    ] {
        let (status, answer) = call(Method::POST, &server.api("/nodes"), Some(body)).await;
        assert_eq!(status, 201, "{answer}");
    }
    for id in ["b-1", "b-2"] {
        let (status, answer) = call(
            Method::POST,
            &server.api(&format!("/nodes/{id}/heartbeat")),
            Some(json!({"idle": true})),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(eligible_ids(&server).await, ["b-2", "b-1"]);
    assert_eq!(health_status(&server).await, "ok");

    hydra_store::testing::set_database_accepting(&url, false).await;
    // A write fails with the storage error, and changes nothing the API shows.
    let (status, answer) = call(
        Method::POST,
        &server.api("/nodes"),
        Some(json!({"id": "b-3", "roles": ["body"], "district": "bxl1", "venue": "v1", "owner": "acme"})),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "storage_unavailable", "{answer}");
    let (status, answer) = call(
        Method::POST,
        &server.api("/nodes/b-1/heartbeat"),
        Some(json!({"idle": false})),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    let (status, _) = call(Method::GET, &server.api("/nodes/b-3"), None).await;
    assert_eq!(status, 404);
    // Health turns degraded on the store probe's next round, and the log says why.
    assert!(
        eventually(Duration::from_secs(30), async || health_status(&server)
            .await
            == "degraded")
        .await,
        "health never said degraded"
    );
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains("storage engine stopped answering; status degraded"),
        "{}",
        server.log.lock().unwrap()
    );
    // Selection never reads the database: the same answer, from memory.
    assert_eq!(eligible_ids(&server).await, ["b-2", "b-1"]);

    hydra_store::testing::set_database_accepting(&url, true).await;
    assert!(
        eventually(Duration::from_secs(30), async || health_status(&server)
            .await
            == "ok")
        .await,
        "health never came back to ok"
    );
    // The line reaches the test through a pipe and a reader thread, maybe after the answer.
    assert!(
        eventually(Duration::from_secs(10), async || server
            .log
            .lock()
            .unwrap()
            .contains("storage engine answers again; status ok"))
        .await,
        "{}",
        server.log.lock().unwrap()
    );
    let (status, answer) = call(
        Method::POST,
        &server.api("/nodes"),
        Some(json!({"id": "b-3", "roles": ["body"], "district": "bxl1", "venue": "v1", "owner": "acme"})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
}
