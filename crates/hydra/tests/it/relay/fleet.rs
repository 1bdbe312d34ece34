//! The whole relay path with a real server (SQLite) and real agents in this process, over
//! loopback: enrolment, heartbeats and reports, placement over three workers, the page and a
//! WebSocket through both proxies, ending sessions, a server that restarts and places on the
//! stored worker reports, an agent that restarts without its sessions, and a second agent on a
//! taken port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hydra_agent::config::AgentConfig;
use hydra_api::{CreateSessionRequest, EnrolRequest, HeartbeatRequest, RoleWire, SessionState};
use hydra_client::{Client, ClientConfig, ClientError, RetryPolicy};
use hydra_server::{AppState, Settings};
use hydra_store::Store;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::support::{Body, port_base, slow_command, standin_command};

const ADMIN: &str = "hya_fleet_test_admin_token";

/// A server on a loopback port with its SQLite file in a temp dir.
pub(crate) struct Server {
    pub(crate) url: String,
    /// The server's state (the same one its routes use), to look at its worker directory.
    pub(crate) state: AppState,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    heartbeat_timeout: Duration,
    dir: Option<tempfile::TempDir>,
}

impl Server {
    pub(crate) async fn start(heartbeat_timeout: Duration) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), heartbeat_timeout).await
    }

    /// A server (new state, new port) on the store in `dir`.
    async fn start_in(dir: tempfile::TempDir, heartbeat_timeout: Duration) -> Server {
        Server::start_in_at(dir, heartbeat_timeout, "127.0.0.1:0").await
    }

    /// A server (new state) on the store in `dir`, listening on `address`.
    async fn start_in_at(
        dir: tempfile::TempDir,
        heartbeat_timeout: Duration,
        address: &str,
    ) -> Server {
        let store = Store::open_sqlite(&dir.path().join("hydra.db"))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let settings = Settings {
            heartbeat_timeout,
            public_url: url.clone(),
            body_limit_bytes: 64 * 1024,
            ..Settings::default()
        };
        let state = AppState::new(store, settings, ADMIN).await.unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let serving = state.clone();
        let task = tokio::spawn(async move {
            hydra_server::serve(listener, serving, stop).await.unwrap();
        });
        Server {
            url,
            state,
            shutdown,
            task,
            heartbeat_timeout,
            dir: Some(dir),
        }
    }

    /// Stops this server (waiting for it to finish) and starts a new one on the same store, on
    /// another port: agents keep sending to the old address, so the new server hears nothing
    /// from them.
    async fn restart(mut self) -> Server {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the server stops within 10 s")
            .unwrap();
        let dir = self.dir.take().unwrap();
        Server::start_in(dir, self.heartbeat_timeout).await
    }

    /// Stops this server (the control plane is away) and gives what brings it back on the same
    /// store and address with [`Server::come_back`].
    pub(crate) async fn go_away(mut self) -> (tempfile::TempDir, Duration, String) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the server stops within 10 s")
            .unwrap();
        let address = self.url.trim_start_matches("http://").to_owned();
        (self.dir.take().unwrap(), self.heartbeat_timeout, address)
    }

    /// A server back on the store and address [`Server::go_away`] left.
    pub(crate) async fn come_back(away: (tempfile::TempDir, Duration, String)) -> Server {
        let (dir, heartbeat_timeout, address) = away;
        Server::start_in_at(dir, heartbeat_timeout, &address).await
    }

    pub(crate) fn admin(&self) -> Client {
        Client::new(
            ClientConfig::new([self.url.clone()])
                .with_token(ADMIN)
                .with_retry(RetryPolicy::once()),
        )
        .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// An agent with the worker role, in this process.
pub(crate) struct Agent {
    pub(crate) address: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), hydra_agent::daemon::DaemonError>>>,
}

impl Agent {
    pub(crate) async fn start(
        server: &Server,
        id: &str,
        state_dir: &Path,
        body: &Body,
        max: u32,
    ) -> Agent {
        Agent::start_with(server, id, state_dir, body, max, |_| {}).await
    }

    /// An agent whose config `adjust` changed first.
    pub(crate) async fn start_with(
        server: &Server,
        id: &str,
        state_dir: &Path,
        body: &Body,
        max: u32,
        adjust: impl FnOnce(&mut AgentConfig),
    ) -> Agent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut config = agent_config(server, id, state_dir, body, max, address);
        adjust(&mut config);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hydra_agent::daemon::serve(
            listener,
            config,
            shutdown.clone(),
        ));
        Agent {
            address,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the agent gracefully (its session processes end).
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn agent_config(
    server: &Server,
    id: &str,
    state_dir: &Path,
    body: &Body,
    max: u32,
    address: SocketAddr,
) -> AgentConfig {
    let mut config = AgentConfig::default();
    config.node.id = Some(id.into());
    config.node.roles = vec!["worker".into()];
    config.node.district = "bxl1".into();
    config.node.venue = "cloud-seven".into();
    config.node.owner = "acme".into();
    // Enrolled with the address its agent URL names (the server checks it).
    config.node.lan_ip = Some(address.ip());
    config.server.listen = address;
    config.controller.url = vec![server.url.clone()];
    config.controller.token = Some(ADMIN.into());
    config.state_dir = state_dir.to_path_buf();
    config.heartbeat.interval = 0.2;
    config.sessions.max = max;
    config.sessions.port_range_start = port_base();
    config.sessions.command = standin_command();
    config.sessions.body_port = body.port();
    config.sessions.check_interval = 0.2;
    config.sessions.return_url = "https://kiosk.example/home".into();
    config.wireguard_optional = true;
    config
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server sees `count` healthy workers.
pub(crate) async fn healthy_workers(server: &Server, count: usize) {
    let admin = server.admin();
    wait_until("workers healthy", Duration::from_secs(20), || {
        let admin = admin.clone();
        async move {
            admin.list_workers().await.is_ok_and(|list| {
                list.workers.iter().filter(|worker| worker.healthy).count() == count
            })
        }
    })
    .await;
}

pub(crate) fn for_body() -> CreateSessionRequest {
    CreateSessionRequest {
        body_ip: Some("127.0.0.1".into()),
        ..CreateSessionRequest::default()
    }
}

pub(crate) fn state_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_created_opened_through_both_proxies_and_ended() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let agent = Agent::start(&server, "w-one", &state_dir(temp.path(), "w-one"), &body, 3).await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();

    let session = admin.create_session(&for_body()).await.unwrap();
    assert_eq!(session.worker_id, "w-one");
    assert_eq!(session.status, SessionState::Running);
    let stream_url = session.stream_url.clone().unwrap();
    let (base, capability) = stream_url.split_once('?').unwrap();
    assert_eq!(
        base,
        format!("http://{}/session/{}/", agent.address, session.session_id)
    );

    // Through the worker's proxy: the stand-in's page with the injected script.
    let page = reqwest::get(&stream_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("stand-in stream") && page.contains("data-hydra-injected"));
    // Through the server (colocated mode): the same page.
    let colocated = format!(
        "{}/session/{}/?{capability}",
        server.url, session.session_id
    );
    let page = reqwest::get(&colocated)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("stand-in stream") && page.contains("data-hydra-injected"));

    // A WebSocket through the server and the worker to the stand-in's echo.
    let ws_url = format!(
        "ws://{}/session/{}/ws?{capability}",
        server.url.trim_start_matches("http://"),
        session.session_id
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    socket.send(Message::text("ping")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::text("echo: ping"));
    drop(socket);

    let listed = admin.list_sessions().await.unwrap();
    assert_eq!(listed.sessions.len(), 1);
    let ended = admin.end_session(&session.session_id).await.unwrap();
    assert_eq!(ended.status, SessionState::Stopped);
    let answer = reqwest::get(&stream_url).await.unwrap();
    assert_eq!(answer.status(), 404, "the worker no longer proxies it");
    let unknown = admin.end_session("s-nobody").await.unwrap_err();
    assert!(matches!(unknown, ClientError::NotFound(_)), "{unknown}");

    // Bad input: named field, nothing started.
    let bad = admin
        .create_session(&CreateSessionRequest {
            body_ip: Some("999.1.1.1".into()),
            ..CreateSessionRequest::default()
        })
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("body_ip"), "{bad}");
    let missing = admin
        .create_session(&CreateSessionRequest::default())
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("body_ip or head_id"),
        "{missing}"
    );
    let unreachable = admin
        .create_session(&CreateSessionRequest {
            body_ip: Some("127.0.0.2".into()),
            ..CreateSessionRequest::default()
        })
        .await
        .unwrap_err();
    assert!(
        unreachable.to_string().contains(&format!(
            "body 127.0.0.2 unreachable on port {}",
            body.port()
        )),
        "{unreachable}"
    );

    // Asked for by head: the selection policy picks the head's body, and its address is used.
    for (id, role, lan_ip) in [
        ("head-1", RoleWire::Head, None),
        ("body-1", RoleWire::Body, Some("127.0.0.1")),
    ] {
        admin
            .enrol(&EnrolRequest {
                id: Some(id.into()),
                roles: vec![role],
                district: "bxl1".into(),
                venue: "rupelmonde".into(),
                owner: "acme".into(),
                lan_ip: lan_ip.map(|ip| ip.parse().unwrap()),
                ..EnrolRequest::default()
            })
            .await
            .unwrap();
    }
    admin
        .heartbeat(
            "body-1",
            &HeartbeatRequest {
                idle: true,
                ..HeartbeatRequest::default()
            },
        )
        .await
        .unwrap();
    let for_head = admin
        .create_session(&CreateSessionRequest {
            head_id: Some("head-1".into()),
            ..CreateSessionRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(for_head.body_id.as_deref(), Some("body-1"));
    assert_eq!(for_head.body_ip, "127.0.0.1");
    assert_eq!(for_head.head_id.as_deref(), Some("head-1"));
    assert_eq!(for_head.status, SessionState::Running);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_follows_load_skips_full_and_silent_workers() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_millis(1_500)).await;
    let a = Agent::start(&server, "w-a", &state_dir(temp.path(), "w-a"), &body, 2).await;
    let b = Agent::start(&server, "w-b", &state_dir(temp.path(), "w-b"), &body, 2).await;
    let c = Agent::start(&server, "w-c", &state_dir(temp.path(), "w-c"), &body, 2).await;
    healthy_workers(&server, 3).await;
    let admin = server.admin();

    let mut placed = Vec::new();
    for _ in 0..6 {
        placed.push(admin.create_session(&for_body()).await.unwrap());
    }
    let workers: Vec<&str> = placed.iter().map(|s| s.worker_id.as_str()).collect();
    assert_eq!(workers, ["w-a", "w-b", "w-c", "w-a", "w-b", "w-c"]);
    let full = admin.create_session(&for_body()).await.unwrap_err();
    assert!(
        full.to_string().contains("no healthy workers available"),
        "{full}"
    );

    // Free both of c's slots and one of a's: c is the least loaded...
    admin.end_session(&placed[2].session_id).await.unwrap();
    admin.end_session(&placed[5].session_id).await.unwrap();
    admin.end_session(&placed[0].session_id).await.unwrap();
    // ...until its heartbeats stop: then it is excluded after the timeout.
    c.stop().await;
    wait_until("w-c offline", Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            admin.list_workers().await.is_ok_and(|list| {
                list.workers.iter().any(|worker| {
                    worker.id == "w-c" && worker.status == hydra_api::NodeStatusWire::Offline
                })
            })
        }
    })
    .await;
    let next = admin.create_session(&for_body()).await.unwrap();
    assert_eq!(next.worker_id, "w-a");
    let full = admin.create_session(&for_body()).await.unwrap_err();
    assert!(
        full.to_string().contains("no healthy workers available"),
        "{full}"
    );

    a.stop().await;
    b.stop().await;
    wait_until("every worker offline", Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            admin.list_workers().await.is_ok_and(|list| {
                list.workers
                    .iter()
                    .all(|worker| worker.status == hydra_api::NodeStatusWire::Offline)
            })
        }
    })
    .await;
    let none = admin.create_session(&for_body()).await.unwrap_err();
    assert!(
        none.to_string().contains("no healthy workers available"),
        "{none}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_places_on_stored_worker_reports_without_a_new_report() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(30)).await;
    let agent = Agent::start(&server, "w-s", &state_dir(temp.path(), "w-s"), &body, 2).await;
    healthy_workers(&server, 1).await;
    let before = server.admin().create_session(&for_body()).await.unwrap();
    assert_eq!(before.status, SessionState::Running);

    // A new AppState on the same store, at an address the agent does not know: nothing it
    // sends reaches the new server, which has only what the store kept.
    let server = server.restart().await;
    let admin = server.admin();
    let workers = admin.list_workers().await.unwrap().workers;
    assert_eq!(workers.len(), 1);
    let worker = &workers[0];
    assert!(worker.healthy, "{worker:?}");
    assert_eq!(
        worker.agent_url.as_deref(),
        Some(format!("http://{}", agent.address).as_str())
    );
    assert_eq!(
        (worker.active_sessions, worker.max_sessions),
        (1, 2),
        "the slot taken before the restart is counted from the stored sessions"
    );

    // Placed and started on the agent with the key the store kept (sealed).
    let after = admin.create_session(&for_body()).await.unwrap();
    assert_eq!(after.worker_id, "w-s");
    assert_eq!(after.status, SessionState::Running);
    let page = reqwest::get(after.stream_url.clone().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("stand-in stream"), "{page}");
    let full = admin.create_session(&for_body()).await.unwrap_err();
    assert!(
        full.to_string().contains("no healthy workers available"),
        "{full}"
    );
    let ended = admin.end_session(&before.session_id).await.unwrap();
    assert_eq!(ended.status, SessionState::Stopped);

    // The key in the store is sealed: not there in clear, and useless with another admin token.
    let db = server.dir.as_ref().unwrap().path().join("hydra.db");
    let store = Store::open_sqlite(&db).await.unwrap();
    let stored = store.list_worker_reports().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].agent_key_sealed.starts_with("v1."));
    assert!(!stored[0].agent_key_sealed.contains("hyk_"));
    let settings = Settings {
        heartbeat_timeout: Duration::from_secs(30),
        public_url: "http://127.0.0.1:9".into(),
        body_limit_bytes: 64 * 1024,
        ..Settings::default()
    };
    let foreign = AppState::new(store, settings, "hya_another_admin_token")
        .await
        .unwrap();
    assert!(foreign.workers().get("w-s").is_none());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_restarts_without_its_sessions_has_them_marked_error() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let dir = state_dir(temp.path(), "w-r");
    let mut first = Agent::start(&server, "w-r", &dir, &body, 2).await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();
    let session = admin.create_session(&for_body()).await.unwrap();
    assert!(dir.join("sessions").join(&session.session_id).is_dir());

    // Gone without a goodbye (its task aborted; nothing tells the server).
    first.task.take().unwrap().abort();
    drop(first);

    // Same state dir: the stored node token is used, no admin token needed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = agent_config(&server, "w-r", &dir, &body, 2, address);
    config.controller.token = None;
    let shutdown = CancellationToken::new();
    let second = tokio::spawn(hydra_agent::daemon::serve(
        listener,
        config,
        shutdown.clone(),
    ));
    wait_until(
        "the session is marked error",
        Duration::from_secs(10),
        || {
            let admin = admin.clone();
            let id = session.session_id.clone();
            async move {
                admin
                    .session(&id)
                    .await
                    .is_ok_and(|view| view.status == SessionState::Error)
            }
        },
    )
    .await;
    let view = admin.session(&session.session_id).await.unwrap();
    assert_eq!(
        view.error.as_deref(),
        Some("the worker no longer runs this session")
    );
    assert!(
        !dir.join("sessions").join(&session.session_id).exists(),
        "orphan dir removed"
    );
    shutdown.cancel();
    second.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_port_exits_and_deletes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let dir = state_dir(temp.path(), "w-first");
    let first = Agent::start(&server, "w-first", &dir, &body, 2).await;
    healthy_workers(&server, 1).await;
    let session = server.admin().create_session(&for_body()).await.unwrap();
    let session_dir = dir.join("sessions").join(&session.session_id);
    assert!(session_dir.is_dir());

    // Same port, same state dir: refused before touching the sessions.
    let config = agent_config(&server, "w-first", &dir, &body, 2, first.address);
    let error = hydra_agent::daemon::run(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("cannot bind — is another hydra agent already running?"),
        "{error}"
    );
    assert!(
        session_dir.is_dir(),
        "the first agent's session dir is intact"
    );
    let page = reqwest::get(session.stream_url.unwrap()).await.unwrap();
    assert_eq!(page.status(), 200, "the first agent's session still runs");
    first.stop().await;
}

/// The worker's slots as the server counts them.
fn slots_taken(server: &Server, worker_id: &str) -> u32 {
    server
        .state
        .workers()
        .get(worker_id)
        .map_or(0, |info| info.active_sessions())
}

async fn sessions_with(admin: &Client, status: SessionState) -> Vec<String> {
    admin
        .list_sessions()
        .await
        .unwrap()
        .sessions
        .into_iter()
        .filter(|session| session.status == status)
        .map(|session| session.session_id)
        .collect()
}

/// Issue 7 item 2, the review's reproduction: clients that hang up on `POST /sessions` at
/// random points of a slow start (`curl -m 1` against a 4 s start) left `starting` sessions and
/// taken slots forever, then `503 max sessions reached`. Now each start reaches an outcome, the
/// slots count exactly the running sessions, and once those end the worker takes new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hang_up_never_leave_a_slot_taken_after_the_deadline() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let agent = Agent::start_with(
        &server,
        "w-slow",
        &state_dir(temp.path(), "w-slow"),
        &body,
        2,
        |config| {
            config.sessions.command = slow_command("1.2");
            config.sessions.ready_timeout = 5.0;
        },
    )
    .await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();

    // Three clients, each hanging up at its own random point of the 1.2 s start.
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let url = format!("{}/api/v1/sessions", server.url);
        let hang_up = Duration::from_millis(20 + rand::random::<u64>() % 1_300);
        clients.spawn(async move {
            let answer = reqwest::Client::new()
                .post(url)
                .bearer_auth(ADMIN)
                .timeout(hang_up)
                .json(&for_body())
                .send()
                .await;
            answer.map(|answer| answer.status().as_u16()).ok()
        });
    }
    while clients.join_next().await.is_some() {}

    wait_until("no session left starting", Duration::from_secs(30), || {
        let admin = admin.clone();
        async move {
            sessions_with(&admin, SessionState::Starting)
                .await
                .is_empty()
        }
    })
    .await;
    let running = sessions_with(&admin, SessionState::Running).await;
    assert!(running.len() <= 2, "{running:?}");
    wait_until(
        "the slots count exactly the running sessions",
        Duration::from_secs(10),
        || {
            let taken = slots_taken(&server, "w-slow");
            let expected = running.len() as u32;
            async move { taken == expected }
        },
    )
    .await;
    for id in &running {
        let view = admin.session(id).await.unwrap();
        let page = reqwest::get(view.stream_url.unwrap()).await.unwrap();
        assert_eq!(page.status(), 200, "running session {id} answers");
        admin.end_session(id).await.unwrap();
    }
    assert_eq!(slots_taken(&server, "w-slow"), 0);
    // Both slots are free: two new sessions start.
    for _ in 0..2 {
        let session = admin.create_session(&for_body()).await.unwrap();
        assert_eq!(session.status, SessionState::Running);
    }
    agent.stop().await;
}

/// Issue 7 item 2 / issue 8 §2: a worker report used to overwrite the slot count while a
/// placement was in flight (the worker had not heard of it yet), so the slot was handed out
/// twice. The reservation stays counted across the report, and goes back when dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_cannot_lose_a_placement_in_flight() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let agent = Agent::start(&server, "w-r", &state_dir(temp.path(), "w-r"), &body, 2).await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();

    let settings = hydra_core::placement::PlacementSettings {
        heartbeat_timeout_ms: 10_000,
    };
    let in_flight = server
        .state
        .workers()
        .reserve(
            server.state.registry(),
            None,
            &[],
            "s-in-flight",
            hydra_api::system::now_ms(),
            &settings,
        )
        .unwrap();
    assert_eq!(in_flight.worker_id(), "w-r");
    // The agent reports (it knows nothing of the placement) a few times meanwhile.
    let before = server.state.workers().get("w-r").unwrap().reported_at;
    wait_until("two reports later", Duration::from_secs(10), || {
        let reported = server.state.workers().get("w-r").unwrap().reported_at;
        async move { reported > before + 200 }
    })
    .await;
    assert_eq!(
        slots_taken(&server, "w-r"),
        1,
        "the placement in flight is counted"
    );
    admin.create_session(&for_body()).await.unwrap();
    let full = admin.create_session(&for_body()).await.unwrap_err();
    assert!(
        full.to_string().contains("no healthy workers available"),
        "{full}"
    );
    drop(in_flight);
    assert_eq!(
        slots_taken(&server, "w-r"),
        1,
        "an uncommitted slot goes back"
    );
    admin.create_session(&for_body()).await.unwrap();
    agent.stop().await;
}

/// Issue 8 §2: many concurrent creates on two workers while reports arrive every 50 ms: every
/// acknowledged session is counted on its worker, and the next create is refused by placement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_while_reports_arrive_are_all_counted() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let fast_reports = |config: &mut AgentConfig| {
        config.heartbeat.interval = 0.05;
        config.sessions.command = slow_command("0.3");
    };
    let a = Agent::start_with(
        &server,
        "w-1",
        &state_dir(temp.path(), "w-1"),
        &body,
        4,
        fast_reports,
    )
    .await;
    let b = Agent::start_with(
        &server,
        "w-2",
        &state_dir(temp.path(), "w-2"),
        &body,
        4,
        fast_reports,
    )
    .await;
    healthy_workers(&server, 2).await;
    let admin = server.admin();

    let mut creates = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let admin = admin.clone();
        creates.spawn(async move { admin.create_session(&for_body()).await });
    }
    let mut acknowledged = Vec::new();
    while let Some(outcome) = creates.join_next().await {
        acknowledged.push(outcome.unwrap().unwrap());
    }
    for session in &acknowledged {
        let info = server.state.workers().get(&session.worker_id).unwrap();
        assert!(
            info.placed.contains(&session.session_id),
            "{} is not counted on {}",
            session.session_id,
            session.worker_id
        );
    }
    assert_eq!(slots_taken(&server, "w-1") + slots_taken(&server, "w-2"), 8);
    let full = admin.create_session(&for_body()).await.unwrap_err();
    assert!(
        full.to_string().contains("no healthy workers available"),
        "{full}"
    );
    a.stop().await;
    b.stop().await;
}

/// Issue 7 "Also": a report older than the last one applied for the same agent run is ignored;
/// a new run (a new agent key) starts its numbering again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_worker_report_is_ignored() {
    let server = Server::start(Duration::from_secs(10)).await;
    let admin = server.admin();
    admin
        .enrol(&EnrolRequest {
            id: Some("w-seq".into()),
            roles: vec![RoleWire::Worker],
            district: "bxl1".into(),
            venue: "cloud-seven".into(),
            owner: "acme".into(),
            // The address its reports name (the server checks it).
            lan_ip: Some("127.0.0.1".parse().unwrap()),
            ..EnrolRequest::default()
        })
        .await
        .unwrap();
    let report = |key: &str, sequence: u64, max_sessions: u32| hydra_api::WorkerReport {
        agent_url: "http://127.0.0.1:9".into(),
        agent_key: key.into(),
        max_sessions,
        sessions: Vec::new(),
        sequence: Some(sequence),
        start_timeout_ms: Some(5_000),
    };
    let max = || server.state.workers().get("w-seq").unwrap().max_sessions;
    let run = "hyk_first_run_key_0123456789";
    admin
        .report_worker("w-seq", &report(run, 2, 3))
        .await
        .unwrap();
    assert_eq!(max(), 3);
    admin
        .report_worker("w-seq", &report(run, 1, 1))
        .await
        .unwrap();
    assert_eq!(max(), 3, "the older report changed nothing");
    admin
        .report_worker("w-seq", &report(run, 2, 1))
        .await
        .unwrap();
    assert_eq!(max(), 3, "a repeated report changed nothing");
    admin
        .report_worker("w-seq", &report(run, 3, 2))
        .await
        .unwrap();
    assert_eq!(max(), 2);
    let next_run = "hyk_second_run_key_0123456789";
    admin
        .report_worker("w-seq", &report(next_run, 1, 4))
        .await
        .unwrap();
    assert_eq!(max(), 4, "a new agent run counts from 1 again");
    // A late report of the earlier run is stale, not a run of its own.
    admin
        .report_worker("w-seq", &report(run, 99, 1))
        .await
        .unwrap();
    assert_eq!(max(), 4, "the earlier run's late report changed nothing");
    assert_eq!(
        server.state.workers().get("w-seq").unwrap().agent_key,
        next_run
    );
    assert_eq!(
        server
            .state
            .workers()
            .get("w-seq")
            .unwrap()
            .start_timeout_ms,
        5_000
    );
}

/// Issue 7 item 11: `DELETE /nodes/{id}` of a worker takes it out of the directory (not placed
/// on, not proxied to) and its live sessions turn `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_worker_is_neither_placed_nor_proxied_and_its_sessions_end() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let agent = Agent::start(
        &server,
        "w-gone",
        &state_dir(temp.path(), "w-gone"),
        &body,
        2,
    )
    .await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();
    let session = admin.create_session(&for_body()).await.unwrap();
    let capability = session
        .stream_url
        .as_deref()
        .and_then(|url| url.split_once('?'))
        .map(|(_, query)| query.to_owned())
        .expect("the stream URL carries the viewer capability");
    let colocated = format!(
        "{}/session/{}/?{capability}",
        server.url, session.session_id
    );
    assert_eq!(reqwest::get(&colocated).await.unwrap().status(), 200);

    admin.remove_node("w-gone").await.unwrap();
    assert!(server.state.workers().get("w-gone").is_none());
    let proxied = reqwest::get(&colocated).await.unwrap();
    // The same answer as an unknown session: nothing about the worker is revealed.
    assert_eq!(
        proxied.status(),
        404,
        "no longer proxied to the removed worker"
    );
    let none = admin.create_session(&for_body()).await.unwrap_err();
    assert!(
        none.to_string().contains("no healthy workers available"),
        "{none}"
    );
    wait_until("its session marked error", Duration::from_secs(10), || {
        let admin = admin.clone();
        let id = session.session_id.clone();
        async move {
            admin.session(&id).await.is_ok_and(|view| {
                view.status == SessionState::Error
                    && view.error.as_deref() == Some("the worker was removed")
            })
        }
    })
    .await;
    assert!(admin.list_workers().await.unwrap().workers.is_empty());
    agent.stop().await;
}

/// Issue 7 item 11: the live sessions of a worker that stopped heartbeating past the timeout
/// are swept to `error` and their slots given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_of_a_worker_offline_past_the_timeout_are_swept() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_millis(1_500)).await;
    let mut agent = Agent::start(
        &server,
        "w-quiet",
        &state_dir(temp.path(), "w-quiet"),
        &body,
        2,
    )
    .await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();
    let session = admin.create_session(&for_body()).await.unwrap();
    assert_eq!(slots_taken(&server, "w-quiet"), 1);

    // Gone without a goodbye: nothing tells the server, it only stops hearing from it.
    agent.task.take().unwrap().abort();
    drop(agent);
    wait_until("its session swept", Duration::from_secs(15), || {
        let admin = admin.clone();
        let id = session.session_id.clone();
        async move {
            admin.session(&id).await.is_ok_and(|view| {
                view.status == SessionState::Error
                    && view.error.as_deref() == Some("the worker stopped heartbeating")
            })
        }
    })
    .await;
    assert_eq!(slots_taken(&server, "w-quiet"), 0, "its slot is free");
}

/// A report the agent made just before a session was ended still lists it running: it must not
/// take the slot again (the server ended it), and once a report no longer lists it, it is
/// forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_made_before_an_end_does_not_count_the_ended_session() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let agent = Agent::start_with(
        &server,
        "w-late",
        &state_dir(temp.path(), "w-late"),
        &body,
        1,
        |config| config.heartbeat.interval = 1_000.0,
    )
    .await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();
    let session = admin.create_session(&for_body()).await.unwrap();
    let info = server.state.workers().get("w-late").unwrap();
    admin.end_session(&session.session_id).await.unwrap();
    assert_eq!(slots_taken(&server, "w-late"), 0);

    // The report the agent made before the end, arriving after it (a newer sequence than any
    // applied: the agent's own reports after the end are slower here).
    let wire = hydra_api::WorkerSession {
        session_id: session.session_id.clone(),
        body_ip: "127.0.0.1".into(),
        port: session.port.unwrap(),
        stream_url: session.stream_url.clone().unwrap(),
        status: SessionState::Running,
        error: None,
    };
    let late = hydra_api::WorkerReport {
        agent_url: info.agent_url.clone(),
        agent_key: info.agent_key.clone(),
        max_sessions: 1,
        sessions: vec![wire],
        sequence: Some(info.sequence.unwrap() + 1_000),
        start_timeout_ms: Some(info.start_timeout_ms as u64),
    };
    admin.report_worker("w-late", &late).await.unwrap();
    assert_eq!(
        slots_taken(&server, "w-late"),
        0,
        "the ended session is not counted"
    );
    assert_eq!(
        admin.session(&session.session_id).await.unwrap().status,
        SessionState::Stopped
    );
    let next = admin.create_session(&for_body()).await.unwrap();
    assert_eq!(next.status, SessionState::Running);
    // A report that no longer lists it: forgotten; the new session still holds the slot.
    let mut later = late.clone();
    later.sessions = Vec::new();
    later.sequence = Some(info.sequence.unwrap() + 2_000);
    admin.report_worker("w-late", &later).await.unwrap();
    let now = server.state.workers().get("w-late").unwrap();
    assert!(!now.ended.contains(&session.session_id));
    assert_eq!(now.active_sessions(), 1);
    agent.stop().await;
}

/// Issue 7 item 2: `starting` has a deadline on the server even when no report comes to apply
/// it: the sweep turns a start past its deadline `error` and frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_past_its_deadline_is_swept_even_without_reports() {
    let server = Server::start(Duration::from_secs(10)).await;
    let admin = server.admin();
    admin
        .enrol(&EnrolRequest {
            id: Some("w-mute".into()),
            roles: vec![RoleWire::Worker],
            district: "bxl1".into(),
            venue: "cloud-seven".into(),
            owner: "acme".into(),
            ..EnrolRequest::default()
        })
        .await
        .unwrap();
    admin
        .heartbeat("w-mute", &HeartbeatRequest::default())
        .await
        .unwrap();
    // A start recorded long ago (a server that died in the middle of it), on a worker that is
    // online; the store is the server's own SQLite file.
    let db = server.dir.as_ref().unwrap().path().join("hydra.db");
    let store = Store::open_sqlite(&db).await.unwrap();
    let long_ago = hydra_api::system::now_ms() - 600_000;
    let record = hydra_store::SessionRecord {
        id: "s-stuck".into(),
        worker_id: "w-mute".into(),
        body_ip: "127.0.0.1".into(),
        body_id: None,
        head_id: None,
        experience: None,
        port: None,
        stream_url: None,
        status: hydra_store::SessionStatus::Starting,
        error: None,
        created_at: long_ago,
        updated_at: long_ago,
    };
    store.insert_session(&record).await.unwrap();
    wait_until("the stuck start swept", Duration::from_secs(15), || {
        let admin = admin.clone();
        async move {
            admin.session("s-stuck").await.is_ok_and(|view| {
                view.status == SessionState::Error
                    && view
                        .error
                        .is_some_and(|error| error.starts_with("the session did not start within"))
            })
        }
    })
    .await;
    store.close().await;
}

/// Issue 7 "Also": `end` gave the slot back with an unlocked decrement, once per request, so
/// concurrent `DELETE`s of one session freed more slots than it held. A slot is now the
/// session's id, given back under the directory's lock: ending one session many times at once
/// frees exactly one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ends_of_one_session_free_one_slot() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let agent = Agent::start_with(
        &server,
        "w-end",
        &state_dir(temp.path(), "w-end"),
        &body,
        3,
        |config| config.heartbeat.interval = 1_000.0,
    )
    .await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();
    let kept = admin.create_session(&for_body()).await.unwrap();
    let ended = admin.create_session(&for_body()).await.unwrap();
    assert_eq!(slots_taken(&server, "w-end"), 2);
    let mut ends = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let admin = admin.clone();
        let id = ended.session_id.clone();
        ends.spawn(async move { admin.end_session(&id).await });
    }
    while let Some(outcome) = ends.join_next().await {
        outcome.unwrap().unwrap();
    }
    assert_eq!(
        slots_taken(&server, "w-end"),
        1,
        "only the ended session's slot is free"
    );
    // Two slots left, not three.
    admin.create_session(&for_body()).await.unwrap();
    admin.create_session(&for_body()).await.unwrap();
    let full = admin.create_session(&for_body()).await.unwrap_err();
    assert!(
        full.to_string().contains("no healthy workers available"),
        "{full}"
    );
    assert_eq!(
        admin.session(&kept.session_id).await.unwrap().status,
        SessionState::Running
    );
    agent.stop().await;
}

/// A session ended (`DELETE`) while its worker starts it stays `stopped`: its start fails, is
/// not tried again on another worker, and frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_while_it_starts_stays_stopped() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let slow = |config: &mut AgentConfig| config.sessions.command = slow_command("1.5");
    let a = Agent::start_with(
        &server,
        "w-a",
        &state_dir(temp.path(), "w-a"),
        &body,
        2,
        slow,
    )
    .await;
    let b = Agent::start_with(
        &server,
        "w-b",
        &state_dir(temp.path(), "w-b"),
        &body,
        2,
        slow,
    )
    .await;
    healthy_workers(&server, 2).await;
    let admin = server.admin();
    let creating = {
        let admin = admin.clone();
        tokio::spawn(async move { admin.create_session(&for_body()).await })
    };
    let id = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(first) = sessions_with(&admin, SessionState::Starting).await.first() {
                break first.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "no session started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ended = admin.end_session(&id).await.unwrap();
    assert_eq!(ended.status, SessionState::Stopped);
    // Usually the worker was starting it and refuses; if the end reached the worker before the
    // start did, the start succeeds there and the create answers the stopped record.
    match creating.await.unwrap() {
        Err(refused) => {
            assert!(
                refused.to_string().contains("ended while it started"),
                "{refused}"
            )
        }
        Ok(answered) => assert_eq!(answered.status, SessionState::Stopped, "{answered:?}"),
    }
    let view = admin.session(&id).await.unwrap();
    assert_eq!(view.status, SessionState::Stopped, "{view:?}");
    assert_eq!(slots_taken(&server, "w-a") + slots_taken(&server, "w-b"), 0);
    assert_eq!(admin.list_sessions().await.unwrap().sessions.len(), 1);
    a.stop().await;
    b.stop().await;
}

/// A session asked for by a head is placed in the head's district (every selection stays inside
/// one district): before, it went to the least-loaded worker anywhere, e.g. an `ams1` worker for a
/// `bxl1` head. A `district` naming another district than the head's is refused, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heads_session_is_placed_in_the_heads_district() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let bxl = Agent::start(&server, "w-bxl", &state_dir(temp.path(), "w-bxl"), &body, 3).await;
    let ams = Agent::start_with(
        &server,
        "w-ams",
        &state_dir(temp.path(), "w-ams"),
        &body,
        3,
        |config| config.node.district = "ams1".into(),
    )
    .await;
    healthy_workers(&server, 2).await;
    let admin = server.admin();
    for (id, role, lan_ip) in [
        ("head-1", RoleWire::Head, None),
        ("body-1", RoleWire::Body, Some("127.0.0.1")),
    ] {
        admin
            .enrol(&EnrolRequest {
                id: Some(id.into()),
                roles: vec![role],
                district: "bxl1".into(),
                venue: "rupelmonde".into(),
                owner: "acme".into(),
                lan_ip: lan_ip.map(|ip| ip.parse().unwrap()),
                ..EnrolRequest::default()
            })
            .await
            .unwrap();
    }
    admin
        .heartbeat(
            "body-1",
            &HeartbeatRequest {
                idle: true,
                ..HeartbeatRequest::default()
            },
        )
        .await
        .unwrap();
    let for_head = || CreateSessionRequest {
        head_id: Some("head-1".into()),
        ..CreateSessionRequest::default()
    };
    // Least-loaded alone would alternate between the two workers.
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(admin.create_session(&for_head()).await.unwrap().worker_id);
    }
    assert_eq!(workers, ["w-bxl", "w-bxl", "w-bxl"]);
    let refused = admin
        .create_session(&CreateSessionRequest {
            district: Some("ams1".into()),
            ..for_head()
        })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("district"), "{refused}");
    bxl.stop().await;
    ams.stop().await;
}
