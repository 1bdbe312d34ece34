//! The body role and a worker's calls to its body (issue 14): `POST /api/v1/launch` and
//! `/api/v1/stop` on a real agent with the body role run the configured argv in a process group
//! (a forked child included) and end it; a session created with `exe_path` registers the app
//! with a stand-in Sunshine API (which records what it was asked) and has the body launch it, and
//! ending the session has the body stop it; a refusing Sunshine gives the field's
//! `pair failed: ... (crypto handshake rejected by Sunshine)` and the session goes on.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hydra_api::{CreateSessionRequest, SessionState};
use serde_json::{Value, json};

use super::fleet::{Agent, Server, healthy_workers, state_dir};
use super::support::{Body, Logs, wait_for};

/// The fleet's body token (workers send it, bodies accept it).
const WORKER_TOKEN: &str = "body-worker-token-0123456789";
/// The body agent's operator token.
const API_TOKEN: &str = "body-operator-token-0123456789";

/// Writes `exe_path|experience|session_id` to `launched.txt` and forks a child that stays in
/// the group (as a game's launcher does), then waits on it.
fn launch_command() -> Vec<String> {
    [
        "/bin/sh",
        "-c",
        "printf '%s|%s|%s\\n' \"$0\" \"$1\" \"$2\" >> launched.txt; sleep 600 & wait",
        "{exe_path}",
        "{experience}",
        "{session_id}",
    ]
    .map(String::from)
    .to_vec()
}

/// Writes `experience|session_id` to `stopped.txt`.
fn stop_command() -> Vec<String> {
    [
        "/bin/sh",
        "-c",
        "printf '%s|%s\\n' \"$0\" \"$1\" >> stopped.txt",
        "{experience}",
        "{session_id}",
    ]
    .map(String::from)
    .to_vec()
}

/// An agent with the body role only.
async fn body_agent(server: &Server, id: &str, dir: &Path, body: &Body) -> Agent {
    Agent::start_with(server, id, &state_dir(dir, id), body, 1, |config| {
        config.node.roles = vec!["body".into()];
        config.body.launch_command = launch_command();
        config.body.stop_command = stop_command();
        config.body.worker_token = Some(WORKER_TOKEN.into());
        config.body.stop_grace = 2.0;
        config.api_token = Some(API_TOKEN.into());
    })
    .await
}

/// Text of `file` in the body's run dir (empty when missing).
fn run_file(dir: &Path, id: &str, file: &str) -> String {
    std::fs::read_to_string(state_dir(dir, id).join("body").join(file)).unwrap_or_default()
}

async fn post_json(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(20))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// Whether a live (not zombie) process is in group `pgid`.
fn group_alive(pgid: i64) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
}

/// Waits until the agent at `base` answers its health route.
async fn answering(base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = reqwest::Client::new()
            .get(format!("{base}/api/v1/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if answer.is_ok_and(|answer| answer.status() == 200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base} does not answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_launches_replaces_and_stops_its_experience_as_a_process_group() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let agent = body_agent(&server, "b-1", temp.path(), &body).await;
    let base = format!("http://{}", agent.address);
    answering(&base).await;
    let launch = format!("{base}/api/v1/launch");
    let stop = format!("{base}/api/v1/stop");
    let racing =
        json!({"exe_path": r"C:\Games\racing.exe", "experience": "racing", "session_id": "s-1"});

    // Refused before anything runs: no token, a wrong one, bad fields (named).
    assert_eq!(post_json(&launch, None, racing.clone()).await.0, 401);
    assert_eq!(
        post_json(&launch, Some("wrong"), racing.clone()).await.0,
        401
    );
    for (bad, field) in [
        (json!({"experience": "racing"}), "exe_path"),
        (json!({"exe_path": " "}), "exe_path"),
        (
            json!({"exe_path": "/x", "experiance": "racing"}),
            "experiance",
        ),
        (json!({"exe_path": "/x", "experience": ""}), "experience"),
    ] {
        let (status, answer) = post_json(&launch, Some(WORKER_TOKEN), bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert_eq!(answer["error"], "invalid_request");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(field), "{bad}: {message}");
    }
    assert_eq!(run_file(temp.path(), "b-1", "launched.txt"), "");

    // Launched, in a group of its own with the forked child.
    let (status, first) = post_json(&launch, Some(WORKER_TOKEN), racing).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "launched");
    let first_group = first["pid"].as_i64().unwrap();
    wait_for("the launch command ran", Duration::from_secs(10), || {
        run_file(temp.path(), "b-1", "launched.txt").contains(r"C:\Games\racing.exe|racing|s-1")
    })
    .await;
    assert!(group_alive(first_group));

    // A second launch (the operator's token) replaces the first: its group ends, the stop
    // command runs for it.
    let (status, second) = post_json(
        &launch,
        Some(API_TOKEN),
        json!({"exe_path": "/games/fly", "experience": "flying", "session_id": "s-2"}),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["replaced"], "s-1");
    let second_group = second["pid"].as_i64().unwrap();
    wait_for("the first group ended", Duration::from_secs(10), || {
        !group_alive(first_group)
    })
    .await;
    assert!(run_file(temp.path(), "b-1", "stopped.txt").contains("racing|s-1"));

    // A late stop of the replaced session does not end its successor.
    let (status, late) = post_json(&stop, Some(WORKER_TOKEN), json!({"session_id": "s-1"})).await;
    assert_eq!(status, 409, "{late}");
    assert!(late["message"].as_str().unwrap().contains("s-2"), "{late}");
    assert!(group_alive(second_group));

    let (status, stopped) = post_json(
        &stop,
        Some(WORKER_TOKEN),
        json!({"session_id": "s-2", "experience": "flying"}),
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    wait_for("the second group ended", Duration::from_secs(10), || {
        !group_alive(second_group)
    })
    .await;
    assert!(run_file(temp.path(), "b-1", "stopped.txt").contains("flying|s-2"));
    let (status, idle) = post_json(&stop, Some(WORKER_TOKEN), json!({})).await;
    assert_eq!((status, idle["status"].as_str()), (200, Some("idle")));
    agent.stop().await;
}

/// What the stand-in Sunshine was asked.
#[derive(Debug, Clone)]
struct Asked {
    path: String,
    authorization: Option<String>,
    body: Value,
}

/// A stand-in for Sunshine's HTTP API: records each `POST /api/apps`, accepts it or (refusing)
/// answers 401 as Sunshine does for credentials it rejects. Also the port the worker checks
/// the body on.
struct Sunshine {
    port: u16,
    asked: Arc<Mutex<Vec<Asked>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sunshine {
    async fn start(refuse: bool) -> Sunshine {
        type Shared = (Arc<Mutex<Vec<Asked>>>, bool);
        async fn apps(
            State((asked, refuse)): State<Shared>,
            headers: HeaderMap,
            axum::Json(body): axum::Json<Value>,
        ) -> (StatusCode, axum::Json<Value>) {
            asked.lock().unwrap().push(Asked {
                path: "/api/apps".into(),
                authorization: headers
                    .get("authorization")
                    .and_then(|value| value.to_str().ok())
                    .map(String::from),
                body,
            });
            if refuse {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"status": false})),
                )
            } else {
                (StatusCode::OK, axum::Json(json!({"status": true})))
            }
        }
        let asked = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/api/apps", post(apps))
            .with_state((asked.clone(), refuse));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Sunshine { port, asked, task }
    }

    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for Sunshine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A worker that reaches `sunshine` and the body agent at `body_agent`.
async fn worker_for(
    server: &Server,
    dir: &Path,
    body: &Body,
    sunshine: &Sunshine,
    body_agent: &Agent,
) -> Agent {
    let sunshine_port = sunshine.port;
    let agent_port = body_agent.address.port();
    Agent::start_with(
        server,
        "w-sun",
        &state_dir(dir, "w-sun"),
        body,
        2,
        |config| {
            config.sessions.body_port = sunshine_port;
            config.sunshine.api_scheme = "http".into();
            config.body.worker_token = Some(WORKER_TOKEN.into());
            config.body.agent_port = agent_port;
        },
    )
    .await
}

fn racing_session() -> CreateSessionRequest {
    CreateSessionRequest {
        body_ip: Some("127.0.0.1".into()),
        experience: Some("racing".into()),
        exe_path: Some(r"C:\Games\racing.exe".into()),
        sunshine_user: Some("sun-user".into()),
        sunshine_pass: Some("sun-pass".into()),
        ..CreateSessionRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_exe_path_registers_the_app_with_sunshine_and_the_body_launches_and_stops_it()
 {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let sunshine = Sunshine::start(false).await;
    let server = Server::start(Duration::from_secs(10)).await;
    let body_node = body_agent(&server, "b-sun", temp.path(), &body).await;
    let worker = worker_for(&server, temp.path(), &body, &sunshine, &body_node).await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();

    let session = admin.create_session(&racing_session()).await.unwrap();
    assert_eq!(session.status, SessionState::Running);
    wait_for("Sunshine was asked", Duration::from_secs(10), || {
        !sunshine.asked().is_empty()
    })
    .await;
    let asked = sunshine.asked();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].path, "/api/apps");
    // base64("sun-user:sun-pass"): the session's Sunshine credentials.
    assert_eq!(
        asked[0].authorization.as_deref(),
        Some("Basic c3VuLXVzZXI6c3VuLXBhc3M=")
    );
    assert_eq!(asked[0].body["name"], "racing");
    assert_eq!(asked[0].body["cmd"], r"C:\Games\racing.exe");
    assert_eq!(asked[0].body["index"], -1);
    let launched_line = format!(r"C:\Games\racing.exe|racing|{}", session.session_id);
    wait_for("the body launched it", Duration::from_secs(10), || {
        run_file(temp.path(), "b-sun", "launched.txt").contains(&launched_line)
    })
    .await;

    admin.end_session(&session.session_id).await.unwrap();
    let stopped_line = format!("racing|{}", session.session_id);
    wait_for("the body stopped it", Duration::from_secs(15), || {
        run_file(temp.path(), "b-sun", "stopped.txt").contains(&stopped_line)
    })
    .await;
    let (status, idle) = post_json(
        &format!("http://{}/api/v1/stop", body_node.address),
        Some(WORKER_TOKEN),
        json!({}),
    )
    .await;
    assert_eq!((status, idle["status"].as_str()), (200, Some("idle")));

    // A worker is not a body.
    let (status, answer) = post_json(
        &format!("http://{}/api/v1/launch", worker.address),
        Some(WORKER_TOKEN),
        json!({"exe_path": "/x"}),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["message"], "this agent has no body role");
    worker.stop().await;
    body_node.stop().await;
}

/// One thread, so the captured log sees the agents' lines.
#[tokio::test(flavor = "current_thread")]
async fn a_sunshine_that_refuses_gives_pair_failed_and_the_session_goes_on() {
    let logs = Logs::capture();
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let sunshine = Sunshine::start(true).await;
    let server = Server::start(Duration::from_secs(10)).await;
    let body_node = body_agent(&server, "b-ref", temp.path(), &body).await;
    let worker = worker_for(&server, temp.path(), &body, &sunshine, &body_node).await;
    healthy_workers(&server, 1).await;

    let session = server
        .admin()
        .create_session(&racing_session())
        .await
        .unwrap();
    assert_eq!(session.status, SessionState::Running);
    wait_for("the pairing failure is logged", Duration::from_secs(10), || {
        logs.text().contains(
            "[pairing] pair failed: Sunshine answered 401 Unauthorized (crypto handshake rejected by Sunshine)",
        )
    })
    .await;
    // Non-fatal: the body still launches, the session still runs.
    let launched_line = format!("racing|{}", session.session_id);
    wait_for("the body launched it", Duration::from_secs(10), || {
        run_file(temp.path(), "b-ref", "launched.txt").contains(&launched_line)
    })
    .await;
    assert!(
        !logs.text().contains("sun-pass"),
        "the password is never logged"
    );
    worker.stop().await;
    body_node.stop().await;
}
