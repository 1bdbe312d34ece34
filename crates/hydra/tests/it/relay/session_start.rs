//! A session started through the server reaches the session process with what the README
//! promises (the Sunshine credentials, the ICE servers, the experience and its executable), and
//! a start that a worker refuses is tried once on the next-best worker.

use std::path::Path;
use std::time::Duration;

use hydra_api::{CreateSessionRequest, SessionState};

use super::fleet::{Agent, Server, for_body, healthy_workers, state_dir};
use super::recording_standin_command;
use super::support::{Body, recorded_env, value_of};

/// The request's `sunshine_user`/`sunshine_pass` (else the agent's
/// `sunshine.username/password`), the agent's `ice_servers` as JSON, `experience` and `exe_path`
/// reach the session process as `SUNSHINE_USERNAME`, `SUNSHINE_PASSWORD`, `HYDRA_ICE_SERVERS`,
/// `HYDRA_EXPERIENCE` and `HYDRA_EXE_PATH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_process_gets_the_credentials_ice_servers_and_experience() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let (command, records) = recording_standin_command(temp.path());
    let ice = serde_json::json!([{"urls": ["turn:turn.example:3478"], "username": "u", "credential": "c"}]);
    let agent = Agent::start_with(
        &server,
        "w-env",
        &state_dir(temp.path(), "w-env"),
        &body,
        2,
        |config| {
            config.sessions.command = command;
            config.sunshine.username = "node-user".into();
            config.sunshine.password = "node-pass".into();
            config.ice_servers = ice.as_array().unwrap().clone();
        },
    )
    .await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();

    let given = admin
        .create_session(&CreateSessionRequest {
            sunshine_user: Some("viewer-user".into()),
            sunshine_pass: Some("viewer-pass".into()),
            experience: Some("racing".into()),
            exe_path: Some(r"C:\Games\Racing\racing.exe".into()),
            ..for_body()
        })
        .await
        .unwrap();
    assert_eq!(given.status, SessionState::Running);
    let env = recorded_env(&records.join(format!("{}.env", given.session_id)));
    assert_eq!(value_of(&env, "SUNSHINE_USERNAME"), Some("viewer-user"));
    assert_eq!(value_of(&env, "SUNSHINE_PASSWORD"), Some("viewer-pass"));
    assert_eq!(value_of(&env, "HYDRA_EXPERIENCE"), Some("racing"));
    assert_eq!(
        value_of(&env, "HYDRA_EXE_PATH"),
        Some(r"C:\Games\Racing\racing.exe")
    );
    let handed: serde_json::Value =
        serde_json::from_str(value_of(&env, "HYDRA_ICE_SERVERS").unwrap()).unwrap();
    assert_eq!(handed, ice);
    assert_eq!(
        value_of(&env, "HYDRA_SESSION_ID"),
        Some(given.session_id.as_str())
    );

    // Without them in the request: the agent's own credentials, and no experience variables.
    let plain = admin.create_session(&for_body()).await.unwrap();
    let env = recorded_env(&records.join(format!("{}.env", plain.session_id)));
    assert_eq!(value_of(&env, "SUNSHINE_USERNAME"), Some("node-user"));
    assert_eq!(value_of(&env, "SUNSHINE_PASSWORD"), Some("node-pass"));
    assert_eq!(value_of(&env, "HYDRA_EXPERIENCE"), None);
    assert_eq!(value_of(&env, "HYDRA_EXE_PATH"), None);
    drop(agent);
}

/// A session command that writes the session id to `asked` and exits at once: the worker
/// refuses every start.
fn refusing_command(asked: &Path) -> Vec<String> {
    [
        "sh".to_owned(),
        "-c".to_owned(),
        format!("echo {{session_id}} >> '{}'; exit 3", asked.display()),
    ]
    .to_vec()
}

/// The node a session id names (`<node_id>:<uuid>`).
fn owner_of(session_id: &str) -> &str {
    hydra_core::session_id::parse_session_id(session_id)
        .ok()
        .and_then(|id| id.owner())
        .unwrap_or_else(|| panic!("{session_id} does not name its node"))
}

fn asked_ids(asked: &Path) -> Vec<String> {
    std::fs::read_to_string(asked)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Two workers, w-a (first by placement: both empty, ties go by id) and w-b, each refusing every
/// start when `refuses` says so.
async fn two_workers(root: &Path, body: &Body, refuses: [bool; 2]) -> (Server, Vec<Agent>) {
    let server = Server::start(Duration::from_secs(10)).await;
    let mut agents = Vec::new();
    for (id, refuse) in ["w-a", "w-b"].into_iter().zip(refuses) {
        let asked = root.join(format!("asked-{id}"));
        agents.push(
            Agent::start_with(&server, id, &state_dir(root, id), body, 2, |config| {
                if refuse {
                    config.sessions.command = refusing_command(&asked);
                }
            })
            .await,
        );
    }
    healthy_workers(&server, 2).await;
    (server, agents)
}

/// The server's count of taken slots on `worker_id`.
fn slots_taken(server: &Server, worker_id: &str) -> u32 {
    server
        .state
        .workers()
        .get(worker_id)
        .map_or(0, |info| info.active_sessions())
}

/// `sessions/start.rs` retries the next-best worker once: w-a refuses because its command exits
/// at once; the session lands on w-b, and w-a's slot is free again. Each attempt's id names its
/// worker (`<worker_id>:<uuid>`), so the refused attempt stays recorded `error` on w-a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_refused_by_one_worker_lands_on_the_other() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let (server, _agents) = two_workers(temp.path(), &body, [true, false]).await;

    let moved = server.admin().create_session(&for_body()).await.unwrap();
    assert_eq!(moved.worker_id, "w-b");
    assert_eq!(moved.status, SessionState::Running);
    assert_eq!(owner_of(&moved.session_id), "w-b");
    let asked_a = asked_ids(&temp.path().join("asked-w-a"));
    assert_eq!(asked_a.len(), 1, "w-a was asked first, once: {asked_a:?}");
    assert_eq!(owner_of(&asked_a[0]), "w-a");
    let listed = server.admin().list_sessions().await.unwrap();
    let refused = listed
        .sessions
        .iter()
        .find(|session| session.session_id == asked_a[0])
        .expect("w-a's attempt is recorded");
    assert_eq!(
        (refused.worker_id.as_str(), refused.status),
        ("w-a", SessionState::Error)
    );
    assert_eq!(slots_taken(&server, "w-a"), 0);
    assert_eq!(slots_taken(&server, "w-b"), 1);
}

/// Both workers refuse: each is asked once (no third try), the answer is the refusal of the last
/// worker tried (the code returns the last failure; it does not name both), the session is
/// recorded `error` on that worker with the same message, and no slot stays taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_refused_by_both_workers_names_both() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let (server, _agents) = two_workers(temp.path(), &body, [true, true]).await;
    let admin = server.admin();

    let refused = admin.create_session(&for_body()).await.unwrap_err();
    let listed = admin.list_sessions().await.unwrap();
    assert_eq!(
        listed.sessions.len(),
        2,
        "one attempt per worker: {listed:?}"
    );
    assert!(
        listed
            .sessions
            .iter()
            .all(|session| session.status == SessionState::Error
                && owner_of(&session.session_id) == session.worker_id),
        "{listed:?}"
    );
    let on = |worker_id: &str| {
        listed
            .sessions
            .iter()
            .find(|session| session.worker_id == worker_id)
            .unwrap_or_else(|| panic!("an attempt on {worker_id}: {listed:?}"))
    };
    // The last worker tried holds the answer's message, naming both.
    let failed = on("w-b");
    assert_eq!(
        asked_ids(&temp.path().join("asked-w-a")),
        [on("w-a").session_id.as_str()]
    );
    assert_eq!(
        asked_ids(&temp.path().join("asked-w-b")),
        [failed.session_id.as_str()]
    );
    let recorded = failed.error.clone().unwrap();
    let text = refused.to_string();
    assert!(
        text.contains(&recorded),
        "answer {text} vs recorded {recorded}"
    );
    assert!(
        recorded.contains("worker w-b: ") && recorded.contains("worker w-a: "),
        "both refusals are named: {recorded}"
    );
    assert_eq!(slots_taken(&server, "w-a"), 0);
    assert_eq!(slots_taken(&server, "w-b"), 0);
}
