//! Node changes that clients abandon half-way (issue 7 item 5): a client that hangs up at random
//! points never leaves the served view and the store apart, on both engines.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call, call_as, eventually};

/// Node ids the random operations pick from (few, so operations on one node interleave).
const NODES: usize = 12;
/// Operations sent in all, each on a socket closed 0-4 ms after the request was written.
const OPERATIONS: usize = 400;
/// Sockets open at once.
const CONCURRENCY: usize = 8;

/// Writes one HTTP/1.1 request on a fresh connection and closes the socket `hang_up_ms`
/// milliseconds later, without reading the answer.
async fn send_and_hang_up(
    address: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &Value,
    hang_up_ms: u64,
) {
    let Ok(mut socket) = tokio::net::TcpStream::connect(address).await else {
        return;
    };
    let body = body.to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(request.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(hang_up_ms)).await;
    // Dropping the socket closes it: the server sees the client go away mid-request.
    drop(socket);
}

/// Writes one request and reads the whole answer (the server closes after `connection: close`);
/// returns the status and the JSON body.
async fn send_and_read(
    address: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> Option<(u16, Value)> {
    let mut socket = tokio::net::TcpStream::connect(address).await.ok()?;
    let body = body.to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    Some((status, json))
}

fn enrol_body(id: &str) -> Value {
    json!({"id": id, "roles": ["body"], "district": "bxl1", "venue": "rupelmonde", "owner": "acme"})
}

/// One random node change, sent and abandoned 0-4 ms later; one in five is read to the end
/// instead, so that some node tokens are known to the test.
async fn random_operation(address: String, seed: u64) -> Option<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let id = format!("c-{}", rng.random_range(0..NODES));
    let (method, path, body) = match rng.random_range(0..5) {
        0 => ("POST", "/api/v1/nodes".to_owned(), enrol_body(&id)),
        1 => {
            let district = ["bxl1", "bxl1-test", "ams1"][rng.random_range(0..3)];
            (
                "POST",
                format!("/api/v1/nodes/{id}/district"),
                json!({"district": district, "venue": "rupelmonde"}),
            )
        }
        2 => (
            "POST",
            format!("/api/v1/nodes/{id}/drain"),
            json!({"drained": rng.random_bool(0.5)}),
        ),
        3 => (
            "POST",
            format!("/api/v1/nodes/{id}/heartbeat"),
            json!({"idle": rng.random_bool(0.5), "active_sessions": rng.random_range(0..4)}),
        ),
        _ => ("DELETE", format!("/api/v1/nodes/{id}"), json!({})),
    };
    if rng.random_range(0..5) == 0 {
        let (status, answer) = send_and_read(&address, method, &path, &body).await?;
        if method == "POST" && path == "/api/v1/nodes" && status == 201 {
            return Some((id, answer["token"].as_str()?.to_owned()));
        }
        return None;
    }
    let hang_up_ms = rng.random_range(0..=4);
    send_and_hang_up(&address, method, &path, ADMIN_TOKEN, &body, hang_up_ms).await;
    None
}

/// What the view serves for a node and what the store holds, in comparable form.
fn comparable(
    id: &str,
    district: &str,
    drained: bool,
    idle: bool,
    active: u64,
    beat: Option<String>,
) -> String {
    format!("{id} {district} drained={drained} idle={idle} active={active} beat={beat:?}")
}

/// The view as `GET /api/v1/nodes` serves it, node by node.
async fn served(server: &ServerProcess) -> BTreeMap<String, String> {
    let (status, answer) = call(Method::GET, &server.api("/nodes"), None).await;
    assert_eq!(status, 200, "{answer}");
    answer["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| {
            let id = node["id"].as_str().expect("id").to_owned();
            let text = comparable(
                &id,
                node["district"].as_str().expect("district"),
                node["drained"].as_bool().expect("drained"),
                node["idle"].as_bool().expect("idle"),
                node["active_sessions"].as_u64().expect("active_sessions"),
                node["last_heartbeat"].as_str().map(str::to_owned),
            );
            (id, text)
        })
        .collect()
}

/// The store's nodes, read from the database directly.
async fn stored(store: &hydra_store::Store) -> BTreeMap<String, String> {
    store
        .list_nodes()
        .await
        .expect("list nodes from the store")
        .into_iter()
        .map(|node| {
            let text = comparable(
                &node.id,
                &node.district,
                node.drained,
                node.idle,
                u64::from(node.active_sessions),
                node.last_heartbeat.map(hydra_api::rfc3339),
            );
            (node.id, text)
        })
        .collect()
}

/// Sends [`OPERATIONS`] random node changes whose clients hang up 0-4 ms after writing them,
/// then checks node by node that the served view equals the database, that tokens of nodes
/// that are gone are refused, and that an enrolment retried after a hang-up is consistent.
async fn abandoned_changes_leave_view_and_store_equal(
    setup: ServerSetup,
    open_store: impl AsyncFnOnce() -> hydra_store::Store,
) {
    let server = ServerProcess::start(&setup);
    let address = server
        .url
        .strip_prefix("http://")
        .expect("http URL")
        .to_owned();
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut tokens: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut running = tokio::task::JoinSet::new();
    for operation in 0..OPERATIONS {
        if running.len() >= CONCURRENCY
            && let Some(joined) = running.join_next().await
            && let Some((id, token)) = joined.expect("operation task")
        {
            tokens.entry(id).or_default().insert(token);
        }
        running.spawn(random_operation(
            address.clone(),
            seed.wrapping_add(operation as u64),
        ));
    }
    while let Some(joined) = running.join_next().await {
        if let Some((id, token)) = joined.expect("operation task") {
            tokens.entry(id).or_default().insert(token);
        }
    }

    let store = open_store().await;
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let settled = eventually(Duration::from_secs(30), async || {
        last = (served(&server).await, stored(&store).await);
        last.0 == last.1
    })
    .await;
    let (view, rows) = last;
    assert!(
        settled,
        "view and store differ (seed {seed}):\nonly served: {:?}\nonly stored: {:?}",
        view.iter()
            .filter(|(id, text)| rows.get(*id) != Some(*text))
            .collect::<Vec<_>>(),
        rows.iter()
            .filter(|(id, text)| view.get(*id) != Some(*text))
            .collect::<Vec<_>>(),
    );
    for id in (0..NODES).map(|index| format!("c-{index}")) {
        // Every token ever handed out for this id: only the one whose digest the store holds
        // for a node that still exists may work.
        let stored_digest = store.node_token_hash(&id).await.expect("token hash");
        for token in tokens.get(&id).into_iter().flatten() {
            let (status, _) = call_as(
                token,
                Method::POST,
                &server.api(&format!("/nodes/{id}/heartbeat")),
                Some(json!({"idle": true})),
            )
            .await;
            let digest = hex_sha256(token);
            if stored_digest.as_deref() == Some(digest.as_str()) {
                assert_eq!(status, 200, "the token of {id} is refused (seed {seed})");
            } else {
                assert_eq!(
                    status, 401,
                    "a token of removed {id} still works (seed {seed})"
                );
            }
        }
    }
    // An enrolment abandoned at once, then retried: either the retry enrols (201) or it finds
    // the node (409), and then the node is served and its store row exists.
    for attempt in 0..10u64 {
        let id = format!("retry-{attempt}");
        send_and_hang_up(
            &address,
            "POST",
            "/api/v1/nodes",
            ADMIN_TOKEN,
            &enrol_body(&id),
            attempt % 3,
        )
        .await;
        let (status, answer) =
            call(Method::POST, &server.api("/nodes"), Some(enrol_body(&id))).await;
        assert!(status == 201 || status == 409, "{status} {answer}");
        let (status, answer) = call(Method::GET, &server.api(&format!("/nodes/{id}")), None).await;
        assert_eq!(
            status, 200,
            "retry of {id} answered 409 but the node is not served: {answer}"
        );
    }

    store.close().await;
}

/// SHA-256 of a token, hex: how the store keeps it.
fn hex_sha256(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[tokio::test]
async fn sqlite_abandoned_node_changes_leave_view_and_store_equal() {
    let dir = tempfile::tempdir().unwrap();
    let setup = ServerSetup::sqlite(dir.path());
    let path = dir.path().join("hydra.db");
    abandoned_changes_leave_view_and_store_equal(setup, async || {
        hydra_store::Store::open_sqlite(&path)
            .await
            .expect("open the server's SQLite file")
    })
    .await;
}

#[tokio::test]
async fn postgres_abandoned_node_changes_leave_view_and_store_equal() {
    let dir = tempfile::tempdir().unwrap();
    let url = hydra_store::testing::fresh_postgres_database("abandoned").await;
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.database_url = Some(url.clone());
    abandoned_changes_leave_view_and_store_equal(setup, async || {
        hydra_store::Store::open_postgres(&url)
            .await
            .expect("open the server's PostgreSQL database")
    })
    .await;
}
