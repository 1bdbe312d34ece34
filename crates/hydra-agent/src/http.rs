//! The agent's HTTP surface: local API (`/api/v1/health`, `/api/v1/status`), the session API the
//! server calls (bearer: the agent key sent in the worker report, or the configured API token),
//! and the browser's routes: the `/session/{id}/...` proxy, `POST /session/{id}/quit` (no token)
//! and `POST /session/{id}/rating`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hydra_api::{ErrorCode, RatingRequest, StartSessionRequest, WorkerSession, WorkerSessionList};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::local_api::{AgentHealth, AgentStatus, HealthExtra, SessionHealth, wireguard_up};
use crate::worker::{SessionSpec, Worker};
use hydra_proxy::inject::PageContext;
use hydra_proxy::proxy::{Forward, Proxy, error_answer};

/// Largest request body the agent reads.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest rating comment.
const MAX_COMMENT: usize = 2_000;

/// What the heartbeat loop last saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatState {
    /// Node id, once enrolled.
    pub node_id: Option<String>,
    /// Unix ms of the last successful heartbeat.
    pub last_success: Option<i64>,
    /// The last failure since then.
    pub last_error: Option<String>,
    /// The master the client wrote to.
    pub master: Option<String>,
}

/// Settings of the HTTP surface.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Roles, as words.
    pub roles: Vec<String>,
    /// Control-plane replicas.
    pub servers: Vec<String>,
    /// `sessions.return_url`.
    pub return_url: String,
    /// Where "Report a problem" points.
    pub report_url: String,
    /// Where ratings are forwarded (`sessions.rating_url`), if anywhere.
    pub rating_url: Option<String>,
    /// An operator's bearer token for the session API, besides the agent key.
    pub api_token: Option<String>,
    /// Count the node healthy without WireGuard (a lab or a colocated test).
    pub wireguard_optional: bool,
}

/// Shared state of the agent's HTTP surface; cheap to clone.
#[derive(Clone)]
pub struct AgentState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: HttpSettings,
    worker: Option<Arc<Worker>>,
    proxy: Proxy,
    started: Instant,
    agent_key: String,
    accepted_digests: Vec<[u8; 32]>,
    heartbeat: Mutex<HeartbeatState>,
    report_now: Notify,
    http: reqwest::Client,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AgentState")
            .field("settings", &self.inner.settings.roles)
            .finish_non_exhaustive()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AgentState {
    /// State with a fresh random agent key.
    pub fn new(settings: HttpSettings, worker: Option<Arc<Worker>>, proxy: Proxy) -> AgentState {
        let agent_key = {
            use rand::RngCore;
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            format!("hyk_{}", hex::encode(bytes))
        };
        let mut accepted_digests = vec![digest(&agent_key)];
        if let Some(token) = settings.api_token.as_deref().filter(|t| !t.is_empty()) {
            accepted_digests.push(digest(token));
        }
        AgentState {
            inner: Arc::new(Inner {
                settings,
                worker,
                proxy,
                started: Instant::now(),
                agent_key,
                accepted_digests,
                heartbeat: Mutex::new(HeartbeatState::default()),
                report_now: Notify::new(),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_default(),
            }),
        }
    }

    /// The worker role, if the agent runs it.
    pub fn worker(&self) -> Option<&Arc<Worker>> {
        self.inner.worker.as_ref()
    }

    /// The key the server must present on the session API; goes only into the worker report.
    pub fn agent_key(&self) -> &str {
        &self.inner.agent_key
    }

    /// Updates what the heartbeat loop saw.
    pub fn update_heartbeat(&self, change: impl FnOnce(&mut HeartbeatState)) {
        change(
            &mut self
                .inner
                .heartbeat
                .lock()
                .expect("heartbeat state poisoned"),
        );
    }

    /// What the heartbeat loop saw last.
    pub fn heartbeat(&self) -> HeartbeatState {
        self.inner
            .heartbeat
            .lock()
            .expect("heartbeat state poisoned")
            .clone()
    }

    /// Woken when the set of sessions changed, so the worker report goes out at once.
    pub fn report_now(&self) -> &Notify {
        &self.inner.report_now
    }

    /// `ok`, or `degraded` when no WireGuard interface is up (unless WireGuard is optional).
    pub fn health_word(&self) -> &'static str {
        if self.inner.settings.wireguard_optional || wireguard_up() {
            "ok"
        } else {
            "degraded"
        }
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(Refusal(
                ErrorCode::Unauthorized,
                "missing Authorization: Bearer <token> header",
            ))?;
        let given = digest(token);
        let mut accepted = subtle::Choice::from(0);
        for candidate in &self.inner.accepted_digests {
            accepted |= candidate.ct_eq(&given);
        }
        if bool::from(accepted) {
            Ok(())
        } else {
            Err(Refusal(ErrorCode::Unauthorized, "unknown token"))
        }
    }

    fn worker_or_404(&self) -> Result<&Arc<Worker>, Refusal> {
        self.worker().ok_or(Refusal(
            ErrorCode::NotFound,
            "this agent has no worker role",
        ))
    }

    fn sessions_health(&self) -> (u32, u32, Vec<SessionHealth>) {
        match self.worker() {
            Some(worker) => {
                let sessions = worker.snapshot();
                (
                    worker.active_sessions(),
                    worker.settings().max_sessions,
                    sessions.iter().map(SessionHealth::from).collect(),
                )
            }
            None => (0, 0, Vec::new()),
        }
    }
}

/// A request refused before any work, with a fixed message.
#[derive(Debug, Clone, Copy)]
struct Refusal(ErrorCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        api_error(self.0, self.1)
    }
}

/// `{"error": code, "message": message}` with the code's status.
pub fn api_error(code: ErrorCode, message: &str) -> Response {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_answer(status, code.as_str(), message)
}

/// Parses a JSON request body, or answers 400 with serde's message (which names the field); a
/// string with a control character is refused naming its field (`hydra_api::text`, the server's
/// rule).
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    let parsed = serde_json::from_slice(body).map_err(|error| {
        Box::new(api_error(
            ErrorCode::InvalidRequest,
            &format!("invalid request body: {error}"),
        ))
    })?;
    hydra_api::text::check_json_text(body).map_err(|error| {
        Box::new(api_error(
            ErrorCode::InvalidRequest,
            &format!("invalid request body: {error}"),
        ))
    })?;
    Ok(parsed)
}

/// The agent's router.
pub fn router(state: AgentState) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/status", get(status))
        .route("/api/v1/sessions", post(start_session).get(list_sessions))
        .route("/api/v1/sessions/{id}", axum::routing::delete(stop_session))
        .route("/session/{id}/quit", post(quit))
        .route("/session/{id}/rating", post(rate))
        .route("/session/{id}", any(add_slash))
        .route("/session/{id}/", any(proxy_root))
        .route("/session/{id}/{*rest}", any(proxy_path))
        .fallback(|| async { api_error(ErrorCode::NotFound, "no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn health(State(state): State<AgentState>) -> Response {
    let (active_sessions, max_sessions, sessions) = state.sessions_health();
    axum::Json(AgentHealth {
        status: state.health_word().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        extra: HealthExtra {
            process_id: std::process::id(),
            uptime: state.inner.started.elapsed().as_secs(),
            wireguard: wireguard_up(),
            active_sessions,
            max_sessions,
            sessions,
        },
    })
    .into_response()
}

async fn status(State(state): State<AgentState>) -> Response {
    let (_, max_sessions, sessions) = state.sessions_health();
    let heartbeat = state.heartbeat();
    axum::Json(AgentStatus {
        node_id: heartbeat.node_id,
        roles: state.inner.settings.roles.clone(),
        servers: state.inner.settings.servers.clone(),
        master: heartbeat.master,
        last_heartbeat: heartbeat.last_success.map(hydra_api::rfc3339),
        last_heartbeat_error: heartbeat.last_error,
        uptime: state.inner.started.elapsed().as_secs(),
        health: state.health_word().to_owned(),
        max_sessions,
        sessions,
    })
    .into_response()
}

fn wire(session: &crate::worker::SessionSnapshot) -> WorkerSession {
    session.to_wire()
}

async fn start_session(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = state.check_token(&headers) {
        return refusal.into_response();
    }
    let worker = match state.worker_or_404() {
        Ok(worker) => worker.clone(),
        Err(refusal) => return refusal.into_response(),
    };
    let request: StartSessionRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let spec = SessionSpec {
        id: request.session_id,
        body_ip: request.body_ip,
        sunshine_user: request.sunshine_user,
        sunshine_pass: request.sunshine_pass,
        experience: request.experience,
        exe_path: request.exe_path,
    };
    let outcome = worker.start_session(spec).await;
    state.report_now().notify_one();
    match outcome {
        Ok(session) => (StatusCode::CREATED, axum::Json(wire(&session))).into_response(),
        Err(error) => api_error(error.code(), &error.to_string()),
    }
}

async fn list_sessions(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    if let Err(refusal) = state.check_token(&headers) {
        return refusal.into_response();
    }
    let worker = match state.worker_or_404() {
        Ok(worker) => worker,
        Err(refusal) => return refusal.into_response(),
    };
    let sessions = worker.snapshot().iter().map(wire).collect();
    axum::Json(WorkerSessionList { sessions }).into_response()
}

async fn stop_session(
    State(state): State<AgentState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refusal) = state.check_token(&headers) {
        return refusal.into_response();
    }
    let worker = match state.worker_or_404() {
        Ok(worker) => worker.clone(),
        Err(refusal) => return refusal.into_response(),
    };
    match worker.stop_session(&id, "ended by the control plane").await {
        Some(session) => {
            state.report_now().notify_one();
            axum::Json(wire(&session)).into_response()
        }
        None => api_error(
            ErrorCode::NotFound,
            &format!("session {id} is not known here"),
        ),
    }
}

async fn quit(State(state): State<AgentState>, Path(id): Path<String>) -> Response {
    let worker = match state.worker_or_404() {
        Ok(worker) => worker.clone(),
        Err(refusal) => return refusal.into_response(),
    };
    match worker.stop_session(&id, "quit from the page").await {
        Some(session) => {
            state.report_now().notify_one();
            axum::Json(serde_json::json!({
                "session_id": session.id,
                "status": session.status.as_str(),
            }))
            .into_response()
        }
        None => api_error(
            ErrorCode::NotFound,
            &format!("session {id} is not known here"),
        ),
    }
}

async fn rate(State(state): State<AgentState>, Path(id): Path<String>, body: Bytes) -> Response {
    let worker = match state.worker_or_404() {
        Ok(worker) => worker.clone(),
        Err(refusal) => return refusal.into_response(),
    };
    let rating: RatingRequest = match parse_body(&body) {
        Ok(rating) => rating,
        Err(refusal) => return *refusal,
    };
    if !(1..=5).contains(&rating.stars) {
        return api_error(ErrorCode::InvalidRequest, "stars must be 1 to 5");
    }
    if rating
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT)
    {
        return api_error(
            ErrorCode::InvalidRequest,
            "comment is longer than 2000 characters",
        );
    }
    let Some(session) = worker.session(&id) else {
        return api_error(
            ErrorCode::NotFound,
            &format!("session {id} is not known here"),
        );
    };
    worker.rate_session(&id, rating.stars);
    tracing::info!(session_id = %id, stars = rating.stars, "[rating] session {id} rated {} stars", rating.stars);
    if let Some(url) = state.inner.settings.rating_url.clone() {
        let record = serde_json::json!({
            "session_id": id,
            "worker_id": state.heartbeat().node_id,
            "body_ip": session.body_ip,
            "experience": session.experience,
            "stars": rating.stars,
            "comment": rating.comment,
        });
        let http = state.inner.http.clone();
        // Bounded by the client's 5 s timeout; the browser does not wait for it.
        tokio::spawn(async move {
            match http.post(&url).json(&record).send().await {
                Ok(answer) if answer.status().is_success() => {}
                Ok(answer) => {
                    tracing::warn!(
                        status = answer.status().as_u16(),
                        "[rating] rating endpoint refused the rating"
                    )
                }
                Err(error) => tracing::warn!(%error, "[rating] cannot forward the rating"),
            }
        });
    }
    axum::Json(serde_json::json!({ "session_id": id, "stars": rating.stars })).into_response()
}

async fn add_slash(Path(id): Path<String>) -> Response {
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, format!("/session/{id}/"))
        .body(Body::empty())
        .unwrap_or_default()
}

async fn proxy_root(
    State(state): State<AgentState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    proxy(state, id, String::new(), request).await
}

async fn proxy_path(
    State(state): State<AgentState>,
    Path((id, rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    proxy(state, id, rest, request).await
}

async fn proxy(state: AgentState, id: String, rest: String, request: Request) -> Response {
    let worker = match state.worker_or_404() {
        Ok(worker) => worker,
        Err(refusal) => return refusal.into_response(),
    };
    let (Some(target), Some(session)) = (worker.proxy_target(&id), worker.session(&id)) else {
        return api_error(
            ErrorCode::NotFound,
            &format!("session {id} is not running here"),
        );
    };
    let query = request
        .uri()
        .query()
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    let context = PageContext {
        session_id: id.clone(),
        worker_id: state.heartbeat().node_id.unwrap_or_default(),
        body_ip: session.body_ip.clone(),
        experience: session.experience.clone(),
        return_url: state.inner.settings.return_url.clone(),
        report_url: state.inner.settings.report_url.clone(),
    };
    let forward = Forward {
        target: target.address,
        path_and_query: format!("/{rest}{query}"),
        prefix: format!("/session/{id}"),
        inject: Some(context),
        connections: Some(target.connections),
        session_id: id,
    };
    state.inner.proxy.forward(request, forward).await
}
