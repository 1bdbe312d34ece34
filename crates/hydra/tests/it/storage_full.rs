//! The SQLite engine failing for real: the server's data dir is a small tmpfs in a private
//! mount namespace, filled up under the running server. Writes answer 503 with the JSON error
//! and change nothing the API shows; `/health` turns `degraded` with the failed write (the
//! store probe alone only reads, and a full disk still answers reads); once space is back,
//! writes succeed again and health returns to `ok`.

use std::io::Write;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{ServerProcess, ServerSetup, call, eventually};

fn node(id: &str) -> serde_json::Value {
    // A long name, so each enrolment needs new pages.
    json!({"id": id, "name": "n".repeat(120), "roles": ["body"], "district": "bxl1", "venue": "v1", "owner": "acme"})
}

#[tokio::test]
async fn a_full_sqlite_disk_fails_writes_with_503_and_they_recover_when_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let setup = ServerSetup::sqlite(&dir.path().join("server"));
    let server = ServerProcess::start_on_tmpfs(&setup, "4m");
    let (status, answer) = call(Method::POST, &server.api("/nodes"), Some(node("b-0"))).await;
    assert_eq!(status, 201, "{answer}");

    // Fill the tmpfs (bounded: it is 4 MiB).
    let filler = server.namespace_path(&setup.data_dir.join("filler"));
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0usize;
    let full = loop {
        match file.write_all(&chunk) {
            Ok(()) => written += chunk.len(),
            Err(error) => break error,
        }
        assert!(written <= 8 << 20, "the tmpfs took more than 8 MiB");
    };
    assert_eq!(full.raw_os_error(), Some(28), "ENOSPC: {full}");
    let _ = file.sync_all();

    // Writes now fail: each enrolment grows the database until one cannot (bounded count).
    let mut refused = None;
    for index in 1..=200 {
        let id = format!("b-{index}");
        let (status, answer) = call(Method::POST, &server.api("/nodes"), Some(node(&id))).await;
        if status != 201 {
            refused = Some((id, status, answer));
            break;
        }
    }
    let (id, status, answer) = refused.expect("200 enrolments on a full disk all succeeded");
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "storage_unavailable", "{answer}");
    assert!(answer["message"].is_string(), "{answer}");
    let (status, _) = call(Method::GET, &server.api(&format!("/nodes/{id}")), None).await;
    assert_eq!(status, 404, "a refused enrolment left nothing");
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains("[store] request failed on the storage engine"),
        "{}",
        server.log.lock().unwrap()
    );
    let (_, health) = call(Method::GET, &server.api("/health"), None).await;
    assert_eq!(health["status"], "degraded", "{health}");

    // Space back: the same write succeeds (bounded wait for the engine to take it).
    drop(file);
    std::fs::remove_file(&filler).unwrap();
    let recovered = eventually(Duration::from_secs(30), async || {
        call(Method::POST, &server.api("/nodes"), Some(node(&id)))
            .await
            .0
            == 201
    })
    .await;
    assert!(recovered, "{}", server.log.lock().unwrap());
    let (status, _) = call(Method::GET, &server.api(&format!("/nodes/{id}")), None).await;
    assert_eq!(status, 200);
    // The store probe's next clean round (every 5 s) restores health.
    let healthy = eventually(Duration::from_secs(30), async || {
        call(Method::GET, &server.api("/health"), None).await.1["status"] == "ok"
    })
    .await;
    assert!(healthy, "health never came back to ok");
}
