//! The agent's HTTP surface over real sockets: the proxy with the injected page, a WebSocket
//! echo through it with the connection count, quit, rating, and the session API's token and
//! input checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hydra_agent::http::{AgentState, HttpSettings, router};
use hydra_agent::local_api::AgentHealth;
use hydra_agent::worker::Worker;
use hydra_proxy::proxy::Proxy;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::support::{Body, process_exists, settings, wait_for};

const API_TOKEN: &str = "test-api-token";

/// An agent's HTTP surface with a worker, served on a loopback port.
pub struct Agent {
    pub address: SocketAddr,
    pub worker: Arc<Worker>,
    pub state: AgentState,
    shutdown: CancellationToken,
    _body: Body,
    _temp: tempfile::TempDir,
}

impl Agent {
    pub async fn start() -> Agent {
        let temp = tempfile::tempdir().unwrap();
        let body = Body::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut worker_settings = settings(temp.path(), &body);
        worker_settings.stream_base_url = format!("http://{address}");
        let worker = Worker::new(worker_settings);
        let shutdown = CancellationToken::new();
        let state = AgentState::new(
            HttpSettings {
                roles: vec!["worker".into()],
                servers: Vec::new(),
                return_url: "https://kiosk.example/home".into(),
                report_url: "https://support.example/report".into(),
                rating_url: None,
                api_token: Some(API_TOKEN.into()),
                wireguard_optional: true,
            },
            Some(worker.clone()),
            Proxy::new(shutdown.clone()),
        );
        let app = router(state.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
        });
        Agent {
            address,
            worker,
            state,
            shutdown,
            _body: body,
            _temp: temp,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Starts a session through the session API, as the server does.
    pub async fn start_session(&self, id: &str) -> serde_json::Value {
        let answer = reqwest::Client::new()
            .post(self.url("/api/v1/sessions"))
            .bearer_auth(API_TOKEN)
            .json(&serde_json::json!({ "session_id": id, "body_ip": "127.0.0.1" }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
        answer.json().await.unwrap()
    }

    pub async fn health(&self) -> AgentHealth {
        reqwest::get(self.url("/api/v1/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn the_page_comes_through_the_proxy_with_the_injected_script() {
    let agent = Agent::start().await;
    let session = agent.start_session("page").await;
    assert_eq!(session["status"], "running");
    assert_eq!(
        session["stream_url"],
        format!("http://{}/session/page/", agent.address)
    );

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let bare = client.get(agent.url("/session/page")).send().await.unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(bare.headers()["location"], "/session/page/");

    let page = client
        .get(agent.url("/session/page/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("<h1>stand-in stream</h1>"), "{html}");
    assert!(html.contains("data-hydra-injected"));
    assert!(html.contains(r#"<button id="exit" type="button" data-hydra-exit="1">Exit</button>"#));
    assert!(html.contains("Stream ended"));
    assert!(html.contains("https://kiosk.example/home"));
    assert!(html.contains("session_id=page"));

    let missing = client
        .get(agent.url("/session/nobody/"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_websocket_echoes_through_the_proxy_and_counts_as_a_connection() {
    let agent = Agent::start().await;
    agent.start_session("ws").await;
    let url = format!("ws://{}/session/ws/ws", agent.address);
    let (mut socket, answer) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(answer.status(), 101);
    socket.send(Message::text("hi")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::text("echo: hi"));
    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply, Message::binary(vec![1u8, 2, 3]));

    let health = agent.health().await;
    assert_eq!(health.extra.sessions[0].active_connections, 1);
    socket.close(None).await.unwrap();
    drop(socket);
    let worker = agent.worker.clone();
    wait_for("the connection count drops", Duration::from_secs(5), || {
        worker.session("ws").unwrap().active_connections == 0
    })
    .await;
}

#[tokio::test]
async fn quit_ends_the_session_and_rating_is_checked() {
    let agent = Agent::start().await;
    agent.start_session("q").await;
    let pid = agent.worker.session("q").unwrap().process_id.unwrap();
    let client = reqwest::Client::new();

    let rated = client
        .post(agent.url("/session/q/rating"))
        .json(&serde_json::json!({ "stars": 4 }))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), 200);
    assert_eq!(agent.worker.session("q").unwrap().rating, Some(4));
    let too_many = client
        .post(agent.url("/session/q/rating"))
        .json(&serde_json::json!({ "stars": 9 }))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 400);
    assert!(
        too_many
            .text()
            .await
            .unwrap()
            .contains("stars must be 1 to 5")
    );
    let unknown_field = client
        .post(agent.url("/session/q/rating"))
        .json(&serde_json::json!({ "stars": 3, "mood": "happy" }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_field.status(), 400);
    assert!(unknown_field.text().await.unwrap().contains("mood"));
    assert_eq!(agent.worker.session("q").unwrap().rating, Some(4));

    let quit = client
        .post(agent.url("/session/q/quit"))
        .send()
        .await
        .unwrap();
    assert_eq!(quit.status(), 200);
    let answer: serde_json::Value = quit.json().await.unwrap();
    assert_eq!(answer["status"], "stopped");
    assert!(!process_exists(pid));
    let after = client.get(agent.url("/session/q/")).send().await.unwrap();
    assert_eq!(after.status(), 404);
    let health = agent.health().await;
    assert_eq!(health.extra.sessions[0].status, "stopped");
    assert_eq!(health.extra.active_sessions, 0);
    let unknown = client
        .post(agent.url("/session/nobody/quit"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn the_session_api_needs_a_token_and_names_bad_fields() {
    let agent = Agent::start().await;
    let client = reqwest::Client::new();
    let anonymous = client
        .post(agent.url("/api/v1/sessions"))
        .json(&serde_json::json!({ "body_ip": "127.0.0.1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = client
        .get(agent.url("/api/v1/sessions"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let with_key = client
        .get(agent.url("/api/v1/sessions"))
        .bearer_auth(agent.state.agent_key())
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 200);

    let unknown_field = client
        .post(agent.url("/api/v1/sessions"))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({ "body_ip": "127.0.0.1", "colour": "red" }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_field.status(), 400);
    assert!(unknown_field.text().await.unwrap().contains("colour"));
    let bad_ip = client
        .post(agent.url("/api/v1/sessions"))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({ "body_ip": "10.0.0.999" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_ip.status(), 400);
    let message = bad_ip.text().await.unwrap();
    assert!(message.contains("body_ip"), "{message}");
    let oversize = client
        .post(agent.url("/api/v1/sessions"))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        .body(format!(r#"{{"body_ip":"{}"}}"#, "1".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(oversize.status(), 413);
    assert!(agent.worker.snapshot().is_empty(), "nothing started");

    let stopped = client
        .delete(agent.url("/api/v1/sessions/nobody"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), 404);
}
