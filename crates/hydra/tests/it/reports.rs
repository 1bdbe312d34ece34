//! Session records across a kill -9 (issue 14): a real `hydra agent` journals a session's record
//! (`reports.jsonl`, fsynced) and sends it to the field's `nps.url`; the endpoint fails twice,
//! the agent is killed with SIGKILL between the failures, started again on the same state dir,
//! and the record arrives exactly once, with the same `Idempotency-Key` on every attempt.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, call, eventually, free_loopback_port, spawn_agent, standin_web_stream,
};

/// What the endpoint saw: the key and the answer of each POST, and the records it kept.
#[derive(Default)]
struct Seen {
    attempts: Vec<(Option<String>, u16)>,
    kept: Vec<(String, Value)>,
}

type Shared = (Arc<Mutex<Seen>>, Arc<AtomicU32>);

/// A report endpoint on loopback: 503 for the first `failures` POSTs, then 200; a record is kept
/// once per `Idempotency-Key`.
async fn endpoint(failures: u32) -> (String, Arc<Mutex<Seen>>) {
    async fn receive(
        State((seen, failures)): State<Shared>,
        headers: HeaderMap,
        axum::Json(record): axum::Json<Value>,
    ) -> StatusCode {
        let key = headers
            .get("idempotency-key")
            .and_then(|value| value.to_str().ok())
            .map(String::from);
        let failing = failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        let status = if failing {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut seen = seen.lock().unwrap();
        seen.attempts.push((key.clone(), status.as_u16()));
        let key = key.unwrap_or_default();
        if !failing && !seen.kept.iter().any(|(kept, _)| *kept == key) {
            seen.kept.push((key, record));
        }
        status
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/records", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/records", post(receive))
        .with_state((seen.clone(), Arc::new(AtomicU32::new(failures))));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

/// A `hydra agent --config FILE` process; SIGKILLed on drop (its sessions go with it).
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn start(config: &Path, log: PathBuf) -> AgentProcess {
        AgentProcess {
            child: spawn_agent(config, &log, "info"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap: no shutdown code runs.
    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent config in `dir` (worker `w-rec`, no control plane answering: the agent serves its
/// session API with its node id from the config) sending records to `url`, and the stand-in
/// body it checks.
struct AgentSetup {
    config: PathBuf,
    state_dir: PathBuf,
    agent_port: u16,
    _body: std::net::TcpListener,
}

impl AgentSetup {
    fn write(dir: &Path, url: &str, retry_base: u32) -> AgentSetup {
        let body = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let body_port = body.local_addr().unwrap().port();
        let agent_port = free_loopback_port();
        let session_port = free_loopback_port();
        let no_server = free_loopback_port();
        let state_dir = dir.join("state");
        let retry_max = retry_base * 2;
        let yaml = format!(
            r#"node: {{id: w-rec, roles: [worker], district: bxl1, venue: v, owner: acme, lan_ip: 127.0.0.1}}
server: {{listen: "127.0.0.1:{agent_port}"}}
controller: {{url: ["http://127.0.0.1:{no_server}"], token: "{ADMIN_TOKEN}"}}
state_dir: "{state}"
wireguard_optional: true
api_token: "{ADMIN_TOKEN}"
sessions:
  max: 2
  port_range_start: {session_port}
  root: "{root}"
  body_port: {body_port}
  ready_timeout: 20
  report_url: "https://support.example/report"
  command: ["{standin}", --bind, "{{bind}}", --port, "{{port}}", --data-dir, "{{data_dir}}"]
nps: {{url: "{url}", token: "nps-token-for-the-test", retry_base: {retry_base}, retry_max: {retry_max}, project: venue-ops}}
"#,
            state = state_dir.display(),
            root = dir.join("sessions").display(),
            standin = standin_web_stream().display(),
        );
        let config = dir.join("agent.yaml");
        std::fs::write(&config, yaml).unwrap();
        AgentSetup {
            config,
            state_dir,
            agent_port,
            _body: body,
        }
    }

    fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/api/v1{path}", self.agent_port)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_record_arrives_exactly_once_across_a_kill_9_of_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen) = endpoint(2).await;
    let setup = AgentSetup::write(dir.path(), &url, 2);
    let (config, state_dir) = (setup.config.clone(), setup.state_dir.clone());
    let agent_api = |path: &str| setup.api(path);

    let mut agent = AgentProcess::start(&config, dir.path().join("first.log"));
    let up = eventually(Duration::from_secs(30), async || {
        reqwest::get(agent_api("/health"))
            .await
            .is_ok_and(|answer| answer.status() == 200)
    })
    .await;
    assert!(up, "the agent does not answer; its log:\n{}", agent.log());
    let (status, started) = call(
        Method::POST,
        &agent_api("/sessions"),
        Some(json!({"session_id": "s-rec-1", "body_ip": "127.0.0.1", "experience": "racing"})),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let (status, ended) = call(Method::DELETE, &agent_api("/sessions/s-rec-1"), None).await;
    assert_eq!(status, 200, "{ended}");

    // The first attempt fails; the agent dies before the record is taken.
    let failed_once = eventually(Duration::from_secs(20), async || {
        !seen.lock().unwrap().attempts.is_empty()
    })
    .await;
    assert!(failed_once, "no attempt; agent log:\n{}", agent.log());
    agent.kill_9();
    let journal = state_dir.join("reports.jsonl");
    let kept = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(kept.lines().count(), 1, "{kept}");
    assert!(kept.contains("\"session_id\":\"s-rec-1\""), "{kept}");
    assert!(seen.lock().unwrap().kept.is_empty());

    let again = AgentProcess::start(&config, dir.path().join("second.log"));
    let taken = eventually(Duration::from_secs(30), async || {
        !seen.lock().unwrap().kept.is_empty()
            && std::fs::read_to_string(&journal).is_ok_and(|text| text.is_empty())
    })
    .await;
    assert!(taken, "not taken; agent log:\n{}", again.log());
    let seen = seen.lock().unwrap();
    let statuses: Vec<u16> = seen.attempts.iter().map(|(_, status)| *status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    let key = seen.attempts[0].0.clone().expect("an Idempotency-Key");
    assert!(
        seen.attempts
            .iter()
            .all(|(attempt, _)| attempt.as_ref() == Some(&key))
    );
    assert_eq!(seen.kept.len(), 1);
    let record = &seen.kept[0].1;
    assert_eq!(record["session_id"], "s-rec-1");
    assert_eq!(record["worker"], "w-rec");
    assert_eq!(record["experience"], "racing");
    assert_eq!(record["end_reason"], "deleted");
    assert!(
        !again.log().contains("nps-token-for-the-test"),
        "the token is never logged"
    );
    drop(setup);
}

/// The page script in a real headless Chromium (Debian `chromium`): the overlay's "Start new
/// stream" link, the "Report a problem" link opening in a new tab with every field parameter,
/// a disconnect counted by the script reaching the session record through its beacon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_counts_a_disconnect_and_the_report_link_carries_every_field_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen) = endpoint(0).await;
    let setup = AgentSetup::write(dir.path(), &url, 1);
    let agent = AgentProcess::start(&setup.config, dir.path().join("agent.log"));
    let up = eventually(Duration::from_secs(30), async || {
        reqwest::get(setup.api("/health"))
            .await
            .is_ok_and(|answer| answer.status() == 200)
    })
    .await;
    assert!(up, "the agent does not answer; its log:\n{}", agent.log());
    let (status, started) = call(
        Method::POST,
        &setup.api("/sessions"),
        Some(json!({"session_id": "s-page-1", "body_ip": "127.0.0.1", "experience": "racing", "district": "bxl1", "head_id": "h-7"})),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let stream_url = started["stream_url"].as_str().unwrap().to_owned();

    let mut browser = crate::browser::Browser::start().await;
    browser.open(&stream_url).await;
    assert!(
        browser
            .until(
                Duration::from_secs(10),
                "typeof window.__hydraShowEnded === 'function'"
            )
            .await,
        "the page script did not run"
    );
    // The page's connection fails: the script counts it, beacons it and shows the overlay. The
    // page's fetches are kept, so the test can wait for the beacon's answer.
    browser
        .eval(
            "(() => { const f = window.fetch; window.__beacons = []; \
              window.fetch = (...a) => { const p = f(...a); window.__beacons.push(p); return p; }; \
              const pc = new RTCPeerConnection(); \
              Object.defineProperty(pc, 'connectionState', {value: 'failed'}); \
              pc.dispatchEvent(new Event('connectionstatechange')); return true; })()",
        )
        .await;
    assert!(
        browser
            .until(
                Duration::from_secs(10),
                "document.getElementById('hydra-report')"
            )
            .await
    );
    let overlay = browser
        .eval(
            "(() => { const r = document.getElementById('hydra-report'); \
              return {href: r.href, target: r.target, back: document.getElementById('hydra-return').textContent}; })()",
        )
        .await;
    assert_eq!(overlay["target"], "_blank", "{overlay}");
    assert_eq!(overlay["back"], "Start new stream", "{overlay}");
    let href = reqwest::Url::parse(overlay["href"].as_str().unwrap()).unwrap();
    let parameters: std::collections::HashMap<String, String> =
        href.query_pairs().into_owned().collect();
    for key in [
        "project",
        "category",
        "title",
        "session_id",
        "experience",
        "district",
        "body",
        "head",
        "body_ip",
        "disconnect_count",
        "duration_ms",
        "end_reason",
        "ice_candidate_type",
    ] {
        assert!(parameters.contains_key(key), "{key} missing from {href}");
    }
    assert_eq!(parameters["project"], "venue-ops");
    assert_eq!(parameters["session_id"], "s-page-1");
    assert_eq!(parameters["experience"], "racing");
    assert_eq!(parameters["district"], "bxl1");
    assert_eq!(parameters["head"], "h-7");
    assert_eq!(parameters["body_ip"], "127.0.0.1");
    assert_eq!(parameters["disconnect_count"], "1");
    assert_eq!(parameters["end_reason"], "failed");
    assert!(parameters["duration_ms"].parse::<u64>().is_ok(), "{href}");

    let beacons = browser
        .eval("Promise.all(window.__beacons).then(answers => answers.map(a => a.status))")
        .await;
    assert_eq!(beacons, json!([204]), "the beacon was taken");
    let (status, ended) = call(Method::DELETE, &setup.api("/sessions/s-page-1"), None).await;
    assert_eq!(status, 200, "{ended}");
    let taken = eventually(Duration::from_secs(20), async || {
        !seen.lock().unwrap().kept.is_empty()
    })
    .await;
    assert!(taken, "no record; agent log:\n{}", agent.log());
    let record = seen.lock().unwrap().kept[0].1.clone();
    assert_eq!(record["disconnect_count"], 1, "{record}");
    assert_eq!(record["head"], "h-7", "{record}");
    assert_eq!(record["end_reason"], "deleted", "{record}");
}
