//! Session records (issue 14): at the end of a session the worker journals its record
//! (`reports.jsonl`) and sends it to `report.url` with `report.token` and an `Idempotency-Key`,
//! retrying with backoff until the endpoint takes it; the page's beacon adds disconnects and the
//! ICE candidate type, the server's start adds the district. A real server and agent in this
//! process; a loopback endpoint that fails twice, then accepts. (The same across a kill -9 of a
//! real `hydra agent`: `crates/hydra/tests/it/reports.rs`.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hydra_api::CreateSessionRequest;
use serde_json::{Value, json};

use super::fleet::{Agent, Server, healthy_workers, state_dir};
use super::support::capability_of;
use super::support::{Body, Logs, wait_for};

const REPORT_TOKEN: &str = "report-secret-token-4b1d";

/// One POST the endpoint saw.
#[derive(Debug, Clone)]
struct Seen {
    key: Option<String>,
    authorization: Option<String>,
    record: Value,
    answered: u16,
}

/// A report endpoint on loopback: answers 503 to the first `failures` POSTs, then 200; keeps
/// the records it took by `Idempotency-Key` (a repeat is answered 200 and not kept again).
struct Endpoint {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    taken: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

type Shared = (
    Arc<Mutex<Vec<Seen>>>,
    Arc<Mutex<Vec<(String, Value)>>>,
    Arc<AtomicU32>,
);

impl Endpoint {
    async fn start(failures: u32) -> Endpoint {
        async fn receive(
            State((seen, taken, failures)): State<Shared>,
            headers: HeaderMap,
            axum::Json(record): axum::Json<Value>,
        ) -> StatusCode {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .map(String::from)
            };
            let key = header("idempotency-key");
            let failing = failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
            let answered = if failing {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                let mut taken = taken.lock().unwrap();
                let key = key.clone().unwrap_or_default();
                if !taken.iter().any(|(kept, _)| *kept == key) {
                    taken.push((key, record.clone()));
                }
                StatusCode::OK
            };
            seen.lock().unwrap().push(Seen {
                key,
                authorization: header("authorization"),
                record,
                answered: answered.as_u16(),
            });
            answered
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/records", listener.local_addr().unwrap());
        let app = Router::new().route("/records", post(receive)).with_state((
            seen.clone(),
            taken.clone(),
            Arc::new(AtomicU32::new(failures)),
        ));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Endpoint {
            url,
            seen,
            taken,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn taken(&self) -> Vec<(String, Value)> {
        self.taken.lock().unwrap().clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn beacon(agent: &Agent, session_id: &str, viewer: &str, body: Value) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .post(format!(
            "http://{}/session/{session_id}/stats",
            agent.address
        ))
        .header("cookie", format!("hydra_viewer={viewer}"))
        .timeout(Duration::from_secs(10))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// One thread, so the captured log sees the agent's lines (the token must not be among them).
#[tokio::test(flavor = "current_thread")]
async fn a_session_record_reaches_the_endpoint_once_after_two_failures_with_the_page_s_stats() {
    let logs = Logs::capture();
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let endpoint = Endpoint::start(2).await;
    let server = Server::start(Duration::from_secs(10)).await;
    let url = endpoint.url.clone();
    let agent = Agent::start_with(
        &server,
        "w-rep",
        &state_dir(temp.path(), "w-rep"),
        &body,
        2,
        |config| {
            // The field's `nps:` is moved onto `report:` when a file is read (config_words).
            config.report.url = Some(url);
            config.report.token = Some(REPORT_TOKEN.into());
            config.report.retry_base = 0.05;
            config.report.retry_max = 0.2;
        },
    )
    .await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();
    let session = admin
        .create_session(&CreateSessionRequest {
            body_ip: Some("127.0.0.1".into()),
            experience: Some("racing".into()),
            district: Some("bxl1".into()),
            ..CreateSessionRequest::default()
        })
        .await
        .unwrap();
    let id = session.session_id.clone();
    let viewer = capability_of(session.stream_url.as_deref().unwrap());

    // The page's beacons: checked (the field named), and without a capability refused.
    for stats in [
        json!({"disconnects": 1}),
        json!({"disconnects": 1, "ice_candidate_type": "relay"}),
    ] {
        assert_eq!(beacon(&agent, &id, &viewer, stats).await.0, 204);
    }
    for (bad, field) in [
        (json!({"ice_candidate_type": "tcp"}), "ice_candidate_type"),
        (json!({"disconnects": 1000}), "disconnects"),
        (json!({"disconects": 1}), "disconects"),
    ] {
        let (status, answer) = beacon(&agent, &id, &viewer, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{bad}: {answer}"
        );
    }
    assert_eq!(
        beacon(&agent, &id, "forged", json!({"disconnects": 5}))
            .await
            .0,
        404
    );
    let rated = reqwest::Client::new()
        .post(format!("http://{}/session/{id}/rating", agent.address))
        .header("cookie", format!("hydra_viewer={viewer}"))
        .json(&json!({"stars": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), 200);

    admin.end_session(&id).await.unwrap();
    wait_for(
        "the endpoint takes the record on the third attempt",
        Duration::from_secs(20),
        || endpoint.seen().len() >= 3 && !endpoint.taken().is_empty(),
    )
    .await;
    let journal = state_dir(temp.path(), "w-rep").join("reports.jsonl");
    wait_for("the journal is emptied", Duration::from_secs(10), || {
        std::fs::read_to_string(&journal).is_ok_and(|text| text.is_empty())
    })
    .await;
    let seen = endpoint.seen();
    assert_eq!(
        seen.iter().map(|seen| seen.answered).collect::<Vec<_>>(),
        [503, 503, 200],
        "{seen:?}"
    );
    let key = seen[0].key.clone().expect("an Idempotency-Key");
    assert!(
        seen.iter()
            .all(|attempt| attempt.key.as_ref() == Some(&key))
    );
    assert!(seen.iter().all(|attempt| attempt.record == seen[0].record));
    let bearer = format!("Bearer {REPORT_TOKEN}");
    assert!(
        seen.iter()
            .all(|attempt| attempt.authorization.as_deref() == Some(bearer.as_str()))
    );
    let taken = endpoint.taken();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let record = &taken[0].1;
    assert_eq!(record["session_id"], id.as_str());
    assert_eq!(record["worker"], "w-rep");
    assert_eq!(record["body_ip"], "127.0.0.1");
    assert_eq!(record["experience"], "racing");
    assert_eq!(record["district"], "bxl1");
    assert_eq!(record["end_reason"], "deleted");
    assert_eq!(record["disconnect_count"], 2);
    assert_eq!(record["ice_candidate_type"], "relay");
    assert_eq!(record["rating"], 4);
    assert!(record["duration_ms"].as_i64().unwrap() >= 0, "{record}");
    assert!(record["start"].as_str().unwrap() <= record["end"].as_str().unwrap());
    let text = logs.text();
    assert!(text.contains("[report] session record accepted"), "{text}");
    assert!(!text.contains(REPORT_TOKEN), "the token is never logged");
    agent.stop().await;
}
