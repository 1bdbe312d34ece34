//! The dashboard's panels in a real headless Chromium against two real `hydra server` replicas on
//! one PostgreSQL (issue 13): each head's body now (with `wg_only`), the captures panel with the
//! field's "Fan-out segments (N nodes)" and its "fan out across all nodes" choice shown only with
//! more than one node, and the replicas panel (master, term, lag), each checked against the API's
//! own answer; axe-core clean at 390 px and 1280 px. Without the admin token the page fetches
//! nothing from the API, and with a node's token it shows no address and no session id.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::browser::Browser;
use crate::support::{ADMIN_TOKEN, ServerProcess, call, eventually, free_loopback_port, http};

fn artifacts() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

/// Replicas `r1` and `r2` on `database_url`, short lease so the master is known quickly.
fn start_replicas(database_url: &str) -> (Vec<ServerProcess>, Vec<tempfile::TempDir>) {
    // The head's report below must outlive a slow browser start.
    crate::support::start_replicas(database_url, 2, &["--unreachable-for", "10m"])
}

/// Enrols a node of `acme` in `bxl1`; answers its token.
async fn enrol(server: &ServerProcess, id: &str, role: &str, venue: &str, lan_ip: &str) -> String {
    let (status, answer) = call(
        Method::POST,
        &server.api("/nodes"),
        Some(
            json!({"id": id, "roles": [role], "district": "bxl1", "venue": venue,
                    "owner": "acme", "lan_ip": lan_ip, "vram_mb": 16384}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    answer["token"].as_str().expect("token").to_owned()
}

/// A worker report naming an agent on loopback that does not answer: its capture segment fails
/// to open, which is real data for the panel.
async fn report(server: &ServerProcess, id: &str, token: &str) {
    let answer = http()
        .post(server.api(&format!("/workers/{id}/report")))
        .bearer_auth(token)
        .json(
            &json!({"agent_url": format!("http://127.0.0.1:{}", free_loopback_port()),
                      "agent_key": "k".repeat(32), "max_sessions": 4, "sessions": [],
                      "sequence": 1}),
        )
        .send()
        .await
        .expect("report");
    assert_eq!(answer.status(), 204, "{}", answer.text().await.unwrap());
}

/// Rows of `table` on the page: each row's `th` and its `[data-field]` cells.
fn rows_of(table: &str) -> String {
    format!(
        "[...document.querySelectorAll('{table} tbody tr')].map(row => {{
            const cells = {{id: row.querySelector('th').textContent}};
            for (const cell of row.querySelectorAll('[data-field]')) cells[cell.dataset.field] = cell.textContent;
            return cells; }})"
    )
}

/// Whether any request the page made went to the API.
const API_REQUESTS: &str = "performance.getEntriesByType('resource').map(entry => entry.name).filter(name => name.includes('/api/'))";

#[tokio::test]
async fn the_dashboard_shows_each_heads_body_captures_and_replicas_in_chromium() {
    let url = hydra_store::testing::fresh_postgres_database("dashboard_panels").await;
    let (servers, _dirs) = start_replicas(&url);
    // The page reads from the master (a follower's worker directory is not the subject here).
    let mut master_id = String::new();
    assert!(
        eventually(Duration::from_secs(20), async || {
            let (_, master) = call(Method::GET, &servers[0].api("/check-master"), None).await;
            master_id = master["master_id"].as_str().unwrap_or_default().to_owned();
            !master_id.is_empty() && master["term"].is_i64()
        })
        .await,
        "no master within 20 s"
    );
    let server = if master_id == "r1" {
        &servers[0]
    } else {
        &servers[1]
    };
    enrol(server, "b-rup", "body", "rupelmonde", "127.0.0.71").await;
    enrol(server, "b-c7", "body", "cloud-seven", "127.0.0.72").await;
    enrol(server, "h-rup", "head", "rupelmonde", "127.0.0.73").await;
    let w1 = enrol(server, "w1", "worker", "rupelmonde", "127.0.0.1").await;
    let w2 = enrol(server, "w2", "worker", "cloud-seven", "127.0.0.1").await;
    // Every node heartbeats for the whole test.
    let stop = CancellationToken::new();
    let keep_alive = {
        let (stop, api) = (stop.clone(), server.api(""));
        tokio::spawn(async move {
            for _ in 0..600 {
                for id in ["b-rup", "b-c7", "h-rup", "w1", "w2"] {
                    let _ = http()
                        .post(format!("{api}/nodes/{id}/heartbeat"))
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&json!({"idle": true}))
                        .send()
                        .await;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        })
    };
    let online = eventually(Duration::from_secs(15), async || {
        let (_, node) = call(Method::GET, &server.api("/nodes/b-c7"), None).await;
        node["status"] == "online"
    })
    .await;
    assert!(online, "the heartbeats reach the server");
    report(server, "w1", &w1).await;
    // The head's discovery said: its venue's body failed on both paths, b-c7 answered over
    // WireGuard only. The replica the page reads remembers it.
    let (status, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=h-rup&unreachable=b-rup&measured=b-c7:wireguard:12"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    let mut browser = Browser::start().await;
    browser
        .command("Page.setBypassCSP", json!({"enabled": true}))
        .await;
    browser.open(&server.url).await;
    assert!(
        browser
            .until(
                Duration::from_secs(10),
                "!document.getElementById('token-panel').hidden"
            )
            .await
    );
    // Without a token the page asks for one and reads nothing from the API.
    assert_eq!(browser.eval(API_REQUESTS).await, json!([]));

    // A node's own token is not the admin token: asked again, and nothing it could read
    // (replica addresses, session ids) is fetched or shown.
    browser
        .eval(&format!(
            "document.getElementById('token-input').value = '{w1}';
             document.getElementById('token-form').requestSubmit(); true"
        ))
        .await;
    assert!(
        browser
            .until(
                Duration::from_secs(10),
                "!document.getElementById('token-panel').hidden && document.getElementById('live').textContent.includes('not the admin token')"
            )
            .await,
        "a node token is asked again: {}",
        browser
            .eval("document.getElementById('live').textContent")
            .await
    );
    let fetched = browser.eval(API_REQUESTS).await;
    let fetched: Vec<&str> = fetched
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        fetched.iter().all(|name| name.ends_with("/api/v1/workers")),
        "with a node token only the admin check is made: {fetched:?}"
    );
    let text = browser.eval("document.body.innerText").await;
    let text = text.as_str().expect("page text");
    for (index, replica) in servers.iter().enumerate() {
        assert!(
            !text.contains(replica.url.trim_start_matches("http://")),
            "replica {index}'s address shown to a node token: {text}"
        );
    }

    // The admin token: the fleet, the panels.
    browser
        .eval(&format!(
            "document.getElementById('token-input').value = '{ADMIN_TOKEN}';
             document.getElementById('token-form').requestSubmit(); true"
        ))
        .await;

    // The head's body now is the API's first body, marked WireGuard only.
    let (_, eligible) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=h-rup"),
        None,
    )
    .await;
    let first = &eligible["bodies"][0];
    assert_eq!(first["id"], "b-c7", "{eligible}");
    assert_eq!(first["wg_only"], true, "{eligible}");
    let body_cell = "document.querySelector('tr[data-node-id=\"h-rup\"] [data-field=\"body-now\"]')?.textContent";
    assert!(
        browser
            .until(
                Duration::from_secs(15),
                &format!("{body_cell} === 'b-c7 (WireGuard only)'")
            )
            .await,
        "the head's row shows its body now; it shows {}",
        browser.eval(body_cell).await
    );
    // A click on it opens the trace, which agrees.
    browser
        .eval("document.querySelector('tr[data-node-id=\"h-rup\"] [data-field=\"body-now\"] button').click(); true")
        .await;
    let why = "document.querySelector('#explain-table tr[data-explain-id=\"b-rup\"] [data-field=\"why\"]')?.textContent";
    assert!(
        browser
            .until(
                Duration::from_secs(10),
                &format!("{why}?.startsWith('reported unreachable')")
            )
            .await,
        "the trace says why b-rup is left out; it shows {}",
        browser.eval(why).await
    );

    // Replicas: the API's list and term.
    let (status, replicas) = call(Method::GET, &server.api("/replicas"), None).await;
    assert_eq!(status, 200, "{replicas}");
    let (_, master) = call(Method::GET, &server.api("/check-master"), None).await;
    assert!(
        browser
            .until(
                Duration::from_secs(15),
                "document.querySelectorAll('#replicas-table tbody tr').length === 2"
            )
            .await,
        "two replicas on the page"
    );
    let shown = browser.eval(&rows_of("#replicas-table")).await;
    for replica in replicas.as_array().expect("replicas") {
        let id = replica["id"].as_str().expect("id");
        let row = shown
            .as_array()
            .expect("rows")
            .iter()
            .find(|row| row["id"] == id)
            .unwrap_or_else(|| panic!("replica {id} not on the page: {shown}"));
        assert_eq!(row["url"], replica["base_url"], "{shown}");
        let role = if replica["is_master"] == true {
            "master"
        } else {
            "follower"
        };
        assert_eq!(row["role"], role, "{shown} vs {replicas}");
        if let Some(lag) = replica["lag_ms"].as_u64() {
            assert!(
                row["lag"]
                    .as_str()
                    .is_some_and(|text| text.ends_with(" ms")),
                "{shown}: {lag}"
            );
        }
    }
    let summary = browser
        .eval("document.getElementById('replicas-summary').textContent")
        .await;
    let expected = format!(
        "Master: {}, term {}.",
        master["master_id"].as_str().expect("master"),
        master["term"]
    );
    assert!(
        browser
            .until(
                Duration::from_secs(15),
                &format!(
                    "document.getElementById('replicas-summary').textContent === {expected:?}"
                )
            )
            .await,
        "the summary names the master and its term: {summary} vs {expected}"
    );

    // Captures: one node with a known agent, so no fan-out choice; then two, and it appears.
    assert!(
        browser
            .until(
                Duration::from_secs(15),
                "!document.getElementById('captures-panel').hidden && document.querySelectorAll('#capture-node option').length === 1"
            )
            .await,
        "the capture form lists w1"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('fan-out-choice').hidden")
            .await,
        json!(true),
        "one node: no fan-out choice"
    );
    report(server, "w2", &w2).await;
    assert!(
        browser
            .until(
                Duration::from_secs(15),
                "!document.getElementById('fan-out-choice').hidden"
            )
            .await,
        "two nodes: the fan-out choice is shown"
    );
    browser
        .eval(
            "document.getElementById('capture-fan-out').click();
             document.getElementById('capture-form').requestSubmit(); true",
        )
        .await;
    let mut capture = Value::Null;
    assert!(
        eventually(Duration::from_secs(15), async || {
            let (_, list) = call(Method::GET, &server.api("/captures"), None).await;
            capture = list["captures"][0].clone();
            capture.is_object()
        })
        .await,
        "the page started a capture"
    );
    assert_eq!(capture["fan_out"], true, "{capture}");
    let capture_id = capture["capture_id"].as_str().expect("id").to_owned();
    assert!(
        browser
            .until(
                Duration::from_secs(15),
                "document.getElementById('segments-title').textContent === 'Fan-out segments (2 nodes)'"
            )
            .await,
        "the field's panel title; it shows {}",
        browser
            .eval("document.getElementById('segments-title').textContent")
            .await
    );
    // Each segment on the page is the API's (polled: the writers end on their own).
    let mut last = (Value::Null, Value::Null);
    let agreed = eventually(Duration::from_secs(30), async || {
        let (_, capture) = call(
            Method::GET,
            &server.api(&format!("/captures/{capture_id}")),
            None,
        )
        .await;
        let expected: Vec<Value> = capture["node_segments"]
            .as_array()
            .expect("segments")
            .iter()
            .map(|segment| {
                json!({"id": segment["node_id"], "address": segment["address"],
                       "status": segment["status"],
                       "lines": segment["line_count"].to_string(),
                       "reason": segment["termination_reason"].as_str().unwrap_or("-")})
            })
            .collect();
        let shown = browser.eval(&rows_of("#segments-table")).await;
        let mut shown_rows: Vec<Value> = shown.as_array().cloned().unwrap_or_default();
        shown_rows.sort_by_key(|row| row["id"].to_string());
        let mut expected_rows = expected;
        expected_rows.sort_by_key(|row| row["id"].to_string());
        let ended = capture["status"] != "running";
        last = (
            Value::from(shown_rows.clone()),
            Value::from(expected_rows.clone()),
        );
        ended && shown_rows == expected_rows
    })
    .await;
    assert!(
        agreed,
        "the segments on the page are the API's once ended: {last:?}"
    );
    browser
        .screenshot(1280, 1400, false, &artifacts().join("panels-desktop.png"))
        .await;
    browser
        .screenshot(390, 844, true, &artifacts().join("panels-phone.png"))
        .await;

    // axe-core with every panel shown, on the phone layout and the desktop one.
    browser.assert_axe_clean().await;
    stop.cancel();
    keep_alive.await.expect("heartbeat task");
}
