//! The agent's HTTP surface over real sockets: the proxy with the injected page, a WebSocket
//! echo through it with the connection count, quit, rating, and the session API's token and
//! input checks; the viewer capability (the review's reproduction refused, the cookie that the
//! page's own requests carry, expired and foreign capabilities), health without a token, the raw
//! path forwarded byte for byte, and malformed session ids.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hydra_agent::http::{AgentState, HttpSettings, router};
use hydra_agent::local_api::AgentHealth;
use hydra_agent::worker::{Worker, WorkerSettings};
use hydra_proxy::capability;
use hydra_proxy::proxy::Proxy;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::support::{Body, capability_of, http_get, process_exists, settings, wait_for};

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
        Agent::start_with(|_, _| {}).await
    }

    /// An agent whose settings `adjust` changed first.
    pub async fn start_with(adjust: impl FnOnce(&mut WorkerSettings, &mut HttpSettings)) -> Agent {
        let temp = tempfile::tempdir().unwrap();
        let body = Body::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut worker_settings = settings(temp.path(), &body);
        worker_settings.stream_base_url = format!("http://{address}");
        let mut http_settings = HttpSettings {
            roles: vec!["worker".into()],
            servers: Vec::new(),
            return_url: "https://kiosk.example/home".into(),
            report_url: "https://support.example/report".into(),
            rating_url: None,
            api_token: Some(API_TOKEN.into()),
            wireguard_optional: true,
            viewer_ttl: Duration::from_secs(600),
            ice: Default::default(),
        };
        adjust(&mut worker_settings, &mut http_settings);
        let worker = Worker::new(worker_settings);
        let shutdown = CancellationToken::new();
        let state = AgentState::new(
            http_settings,
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

    /// The health answer with details (the operator's token).
    pub async fn health(&self) -> AgentHealth {
        reqwest::Client::new()
            .get(self.url("/api/v1/health"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// What the session process `id` logged (the stand-in logs each request's URI).
    pub fn session_log(&self, id: &str) -> String {
        std::fs::read_to_string(
            self._temp
                .path()
                .join("sessions")
                .join(id)
                .join("web-server.log"),
        )
        .unwrap_or_default()
    }
}

/// The `Cookie` header a browser sends after the page set the capability.
fn cookie(token: &str) -> String {
    format!("hydra_viewer={token}")
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
    let stream_url = session["stream_url"].as_str().unwrap();
    let token = capability_of(stream_url);
    assert_eq!(
        stream_url,
        format!(
            "http://{}/session/page/?hydra_viewer={token}",
            agent.address
        )
    );

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let bare = client
        .get(agent.url(&format!("/session/page?hydra_viewer={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(
        bare.headers()["location"],
        format!("/session/page/?hydra_viewer={token}").as_str()
    );

    let page = client.get(stream_url).send().await.unwrap();
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
        .header("cookie", cookie(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_websocket_echoes_through_the_proxy_and_counts_as_a_connection() {
    let agent = Agent::start().await;
    let session = agent.start_session("ws").await;
    let token = capability_of(session["stream_url"].as_str().unwrap());
    let url = format!("ws://{}/session/ws/ws?hydra_viewer={token}", agent.address);
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
    assert_eq!(health.extra.sessions.unwrap()[0].active_connections, 1);
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
    let session = agent.start_session("q").await;
    let viewer = cookie(&capability_of(session["stream_url"].as_str().unwrap()));
    let pid = agent.worker.session("q").unwrap().process_id.unwrap();
    let client = reqwest::Client::new();

    let rated = client
        .post(agent.url("/session/q/rating"))
        .header("cookie", &viewer)
        .json(&serde_json::json!({ "stars": 4 }))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), 200);
    assert_eq!(agent.worker.session("q").unwrap().rating, Some(4));
    let too_many = client
        .post(agent.url("/session/q/rating"))
        .header("cookie", &viewer)
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
        .header("cookie", &viewer)
        .json(&serde_json::json!({ "stars": 3, "mood": "happy" }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_field.status(), 400);
    assert!(unknown_field.text().await.unwrap().contains("mood"));
    assert_eq!(agent.worker.session("q").unwrap().rating, Some(4));

    let quit = client
        .post(agent.url("/session/q/quit"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(quit.status(), 200);
    let answer: serde_json::Value = quit.json().await.unwrap();
    assert_eq!(answer["status"], "stopped");
    assert!(!process_exists(pid));
    let after = client
        .get(agent.url("/session/q/"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 404);
    let health = agent.health().await;
    assert_eq!(
        health.extra.sessions.unwrap()[0].status,
        hydra_api::SessionState::Stopped
    );
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

/// Issue 7 item 1, the review's reproduction: session ids read from health, then the stream page
/// and quit. Health has no ids without a token; the page and quit need the capability.
#[tokio::test]
async fn the_reviews_reproduction_no_longer_works_on_the_agent() {
    let agent = Agent::start().await;
    agent.start_session("victim").await;
    let pid = agent.worker.session("victim").unwrap().process_id.unwrap();
    let client = reqwest::Client::new();

    for path in ["/api/v1/health", "/api/v1/status"] {
        let answer = client.get(agent.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let text = answer.text().await.unwrap();
        assert!(
            !text.contains("victim") && !text.contains("127.0.0.1") && !text.contains("body_ip"),
            "{path} without a token tells too much: {text}"
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let active = json["extra"]["active_sessions"]
            .as_u64()
            .or(json["active_sessions"].as_u64());
        assert_eq!(active, Some(1), "{path} still counts: {text}");
    }

    let page = client
        .get(agent.url("/session/victim/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
    let unknown = client
        .get(agent.url("/session/nobody/"))
        .send()
        .await
        .unwrap();
    let refused_text = page.text().await.unwrap();
    assert_eq!(
        refused_text.replace("victim", "ID"),
        unknown.text().await.unwrap().replace("nobody", "ID"),
        "a refused capability answers as an unknown session"
    );
    let quit = client
        .post(agent.url("/session/victim/quit"))
        .send()
        .await
        .unwrap();
    assert_eq!(quit.status(), 404);
    let rating = client
        .post(agent.url("/session/victim/rating"))
        .json(&serde_json::json!({ "stars": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(rating.status(), 404);
    let ws =
        tokio_tungstenite::connect_async(format!("ws://{}/session/victim/ws", agent.address)).await;
    assert!(ws.is_err(), "a websocket opened without the capability");
    assert!(process_exists(pid), "the session process was ended");
    assert_eq!(agent.worker.session("victim").unwrap().rating, None);
    assert_eq!(agent.health().await.extra.active_sessions, 1);
}

/// With the capability in the stream URL, the first answer sets it as a cookie scoped to the
/// session; the page's sub-resources, its WebSocket, rating and quit then work with the cookie
/// alone, and the session process never sees the capability.
#[tokio::test]
async fn the_capability_becomes_a_session_cookie_for_the_pages_own_requests() {
    let agent = Agent::start().await;
    let session = agent.start_session("viewer").await;
    let stream_url = session["stream_url"].as_str().unwrap();
    let token = capability_of(stream_url);
    let pid = agent.worker.session("viewer").unwrap().process_id.unwrap();
    let client = reqwest::Client::new();

    let page = client.get(stream_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let set_cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.starts_with(&format!("hydra_viewer={token}; Path=/session/viewer/;"))
            && set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert_eq!(page.headers()["referrer-policy"], "same-origin");
    let viewer = format!("other=1; {}", cookie(&token));
    let asset = client
        .get(agent.url("/session/viewer/assets/app.js?v=2"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(asset.status(), 200);
    assert!(!asset.headers().contains_key("set-cookie"));

    let mut request = format!("ws://{}/session/viewer/ws", agent.address)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", viewer.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket.send(Message::text("hi")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::text("echo: hi"));
    drop(socket);

    let rated = client
        .post(agent.url("/session/viewer/rating"))
        .header("cookie", &viewer)
        .json(&serde_json::json!({ "stars": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), 200);

    let log = agent.session_log("viewer");
    assert!(
        log.contains("GET /\n") && log.contains("GET /assets/app.js?v=2\n"),
        "the stand-in saw other requests: {log}"
    );
    assert!(
        !log.contains("hydra_viewer"),
        "the capability reached the session process: {log}"
    );

    let quit = client
        .post(agent.url("/session/viewer/quit"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(quit.status(), 200);
    assert!(!process_exists(pid));
}

/// An expired capability, or one minted for another session or under another key, opens
/// nothing.
#[tokio::test]
async fn an_expired_or_foreign_capability_is_refused() {
    let agent = Agent::start().await;
    let first = agent.start_session("first").await;
    agent.start_session("second").await;
    let first_token = capability_of(first["stream_url"].as_str().unwrap());
    let key = agent.state.agent_key().as_bytes().to_vec();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = capability::mint(&key, "second", now_s - 1);
    let foreign = capability::mint(b"hyk_the_key_of_another_worker_0000", "second", now_s + 600);
    let fresh = capability::mint(&key, "second", now_s + 600);
    let client = reqwest::Client::new();
    for (what, token) in [
        ("another session's", &first_token),
        ("an expired", &expired),
        ("another worker's", &foreign),
    ] {
        let page = client
            .get(agent.url(&format!("/session/second/?hydra_viewer={token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 404, "{what} capability opened the page");
        let quit = client
            .post(agent.url("/session/second/quit"))
            .header("cookie", cookie(token))
            .send()
            .await
            .unwrap();
        assert_eq!(quit.status(), 404, "{what} capability ended the session");
    }
    let page = client
        .get(agent.url(&format!("/session/second/?hydra_viewer={fresh}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "a valid capability is refused");
    assert_eq!(agent.health().await.extra.active_sessions, 2);
}

/// Health and status without a token: counts only; with the agent key or the API token: the
/// sessions; with a wrong token: 401.
#[tokio::test]
async fn health_without_a_token_has_counts_only_and_with_a_token_the_details() {
    let agent = Agent::start().await;
    agent.start_session("counted").await;
    let client = reqwest::Client::new();
    let anonymous: serde_json::Value = client
        .get(agent.url("/api/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anonymous["extra"]["active_sessions"], 1);
    assert!(anonymous["extra"].get("sessions").is_none(), "{anonymous}");
    for token in [API_TOKEN, agent.state.agent_key()] {
        for path in ["/api/v1/health", "/api/v1/status"] {
            let detailed: serde_json::Value = client
                .get(agent.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let sessions = detailed["extra"]
                .get("sessions")
                .or(detailed.get("sessions"))
                .unwrap_or_else(|| panic!("{path}: {detailed}"));
            assert_eq!(sessions[0]["id"], "counted", "{path}: {detailed}");
            assert_eq!(sessions[0]["body_ip"], "127.0.0.1", "{path}: {detailed}");
        }
    }
    let wrong = client
        .get(agent.url("/api/v1/status"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
}

/// Issue 7 item 9: the path after `/session/{id}` and the query reach the session process
/// exactly as the browser sent them (not decoded and formatted back).
#[tokio::test]
async fn the_proxy_forwards_the_raw_path_and_query_byte_for_byte() {
    let agent = Agent::start().await;
    let session = agent.start_session("raw").await;
    let token = capability_of(session["stream_url"].as_str().unwrap());
    let cases = [
        "/..%2F..%2Fapi%2Fv1%2Fsessions",
        "/a%2Fb/%2541?q=%25&r=%2F",
        "/%C3%A9t%C3%A9/caf%C3%A9?name=%C3%A9",
        "/%2e%2e/%2E/x",
        "/dir/?a=1&&b",
    ];
    for raw in cases {
        let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
        let sent = if query.is_empty() {
            format!("/session/raw{path}?hydra_viewer={token}")
        } else {
            format!("/session/raw{path}?{query}&hydra_viewer={token}")
        };
        let answer = http_get(agent.address, &sent).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{sent}: {answer}");
        let expected = format!("GET {raw}\n");
        wait_for(
            &format!("the stand-in logs {raw}"),
            Duration::from_secs(5),
            || agent.session_log("raw").contains(&expected),
        )
        .await;
    }
    assert!(!agent.session_log("raw").contains("hydra_viewer"));
}

/// Issue 7 ("Also") and item 3: a control character in `/session/{id}` is a 400 naming the id
/// (it was an empty 200 for CRLF), and so is an id that cannot be a session's.
#[tokio::test]
async fn a_control_character_or_a_malformed_session_id_is_a_400() {
    let agent = Agent::start().await;
    for path in [
        "/session/%0D%0A",
        "/session/a%0D%0ALocation:%20x",
        "/session/%00/",
        "/session/%00/page",
        "/session/a.b/",
    ] {
        let answer = http_get(agent.address, path).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(
            answer.contains(r#""error":"invalid_request""#) && answer.contains("session id"),
            "{path}: {answer}"
        );
    }
    for path in ["/session/%0D%0A/quit", "/session/a%09b/rating"] {
        let answer = reqwest::Client::new()
            .post(agent.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{path}");
    }
}

/// Issue 7 ("Also"): ratings need no token and each forward is an outbound POST. One rating per
/// session (a second is 409 and changes nothing); at most 4 forwards in flight (the next rating
/// is 503 and recorded nowhere), under a rate limit (`hydra_core::rate_limit`).
#[tokio::test]
async fn ratings_are_one_per_session_and_their_forwards_are_bounded() {
    // A rating endpoint that accepts and never answers: every forward stays in flight.
    let endpoint = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint_address = endpoint.local_addr().unwrap();
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = accepted.clone();
    let accepting = tokio::spawn(async move {
        while let Ok((stream, _)) = endpoint.accept().await {
            holder.lock().unwrap().push(stream);
        }
    });
    let agent = Agent::start_with(|worker, http| {
        worker.max_sessions = 6;
        http.rating_url = Some(format!("http://{endpoint_address}/ratings"));
    })
    .await;
    let mut viewers = Vec::new();
    for index in 0..6 {
        let id = format!("r{index}");
        let session = agent.start_session(&id).await;
        viewers.push((
            id,
            cookie(&capability_of(session["stream_url"].as_str().unwrap())),
        ));
    }
    let client = reqwest::Client::new();
    let rate = |index: usize, stars: u8| {
        let (id, viewer) = &viewers[index];
        client
            .post(agent.url(&format!("/session/{id}/rating")))
            .header("cookie", viewer)
            .json(&serde_json::json!({ "stars": stars }))
            .send()
    };

    for index in 0..4 {
        assert_eq!(rate(index, 4).await.unwrap().status(), 200, "r{index}");
    }
    let again = rate(0, 1).await.unwrap();
    assert_eq!(again.status(), 409);
    assert!(again.text().await.unwrap().contains("already rated"));
    assert_eq!(agent.worker.session("r0").unwrap().rating, Some(4));
    let holding = accepted.clone();
    wait_for(
        "4 forwards reach the endpoint",
        Duration::from_secs(5),
        || holding.lock().unwrap().len() == 4,
    )
    .await;

    for index in [4, 5] {
        let refused = rate(index, 5).await.unwrap();
        assert_eq!(refused.status(), 503, "r{index}");
        assert!(refused.text().await.unwrap().contains("try again later"));
        assert_eq!(
            agent.worker.session(&format!("r{index}")).unwrap().rating,
            None
        );
    }
    assert_eq!(
        accepted.lock().unwrap().len(),
        4,
        "a refused rating was forwarded"
    );
    accepting.abort();
}

/// Issue 8 §3: `hydra_client::AgentClient`, the one way the server and `hydra status` talk to an
/// agent, against the real agent over loopback: health and status with and without a token, a
/// session started, listed and ended, and refusals decoded into the agent's own code and message.
#[tokio::test]
async fn the_agent_client_starts_lists_and_ends_sessions_and_decodes_refusals() {
    use hydra_api::{ErrorBody, ErrorCode, SessionState, StartSessionRequest};
    use hydra_client::{AgentClient, ClientError};

    let agent = Agent::start().await;
    let base = agent.url("");
    let operator = AgentClient::new(&base, Some(API_TOKEN));
    let worker_key = AgentClient::new(&base, Some(agent.state.agent_key()));
    let anonymous = AgentClient::new(&base, None);

    let start = |id: &str, body_ip: &str| StartSessionRequest {
        session_id: Some(id.to_owned()),
        body_ip: body_ip.to_owned(),
        sunshine_user: None,
        sunshine_pass: None,
        experience: None,
        exe_path: None,
        district: None,
        head_id: None,
        body_id: None,
    };
    let started = worker_key
        .start_session(&start("via-client", "127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(started.session_id, "via-client");
    assert!(started.stream_url.contains("via-client"), "{started:?}");
    let listed = worker_key.list_sessions().await.unwrap();
    assert_eq!(
        listed
            .sessions
            .iter()
            .map(|session| session.session_id.as_str())
            .collect::<Vec<_>>(),
        ["via-client"]
    );

    let health = operator.health().await.unwrap();
    assert_eq!(health.extra.active_sessions, 1, "{health:?}");
    let details = health.extra.sessions.expect("details with the token");
    assert_eq!(details[0].id, "via-client");
    let counts = anonymous.health().await.unwrap();
    assert_eq!(counts.extra.active_sessions, 1, "{counts:?}");
    assert_eq!(counts.extra.sessions, None, "no details without a token");
    let status = anonymous.status().await.unwrap();
    assert_eq!(
        (status.active_sessions, status.sessions),
        (1, None),
        "counts only without a token"
    );
    assert_eq!(
        operator.status().await.unwrap().sessions.map(|s| s.len()),
        Some(1)
    );

    let bad_ip = worker_key
        .start_session(&start("bad", "10.0.0.999"))
        .await
        .unwrap_err();
    assert!(
        matches!(&bad_ip, ClientError::Rejected { status: 400, code, message }
            if code == "invalid_request" && message.contains("body_ip")),
        "{bad_ip:?}"
    );
    assert_eq!(
        bad_ip.error_body().map(|body| body.error),
        Some(ErrorCode::InvalidRequest)
    );
    let refused = AgentClient::new(&base, Some("nope"))
        .start_session(&start("nope", "127.0.0.1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused.error_body(),
            Some(ErrorBody {
                error: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(refused.status(), Some(401));

    let ended = worker_key.end_session("via-client").await.unwrap();
    assert_eq!(ended.status, SessionState::Stopped, "{ended:?}");
    let unknown = worker_key.end_session("nobody").await.unwrap_err();
    assert!(matches!(unknown, ClientError::NotFound(_)), "{unknown:?}");
    assert_eq!(agent.worker.snapshot().len(), 1, "only the one start ran");

    // Nothing listens there any more: a transport failure, not a refusal.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let gone = AgentClient::new(&format!("http://{closed}"), Some(API_TOKEN))
        .health()
        .await
        .unwrap_err();
    assert!(matches!(gone, ClientError::Unreachable { .. }), "{gone:?}");
    assert_eq!(gone.status(), None);
}
