//! The agent's HTTP surface: local API (`/api/v1/health`, `/api/v1/status`: counts without a
//! token, session details with one), the session API the server calls (bearer: the agent key
//! sent in the worker report, or the configured API token), and the browser's routes: the
//! `/session/{id}/...` proxy, `POST /session/{id}/quit` and `POST /session/{id}/rating`, each
//! opened only by the session's viewer capability (`hydra_proxy::capability`), which is minted
//! into the `stream_url` of the start answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hydra_api::{ErrorCode, RatingRequest, StartSessionRequest, WorkerSessionList};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::local_api::{AgentHealth, AgentStatus, HealthExtra, SessionHealth, wireguard_up};
use crate::worker::{Rated, SessionSpec, Worker};
use hydra_core::rate_limit::TokenBucket;
use hydra_proxy::capability::{self, Access};
use hydra_proxy::inject::PageContext;
use hydra_proxy::proxy::{Forward, Proxy, error_answer};
use hydra_proxy::session_path::{check_session_id, raw_rest};
use hydra_proxy::token;

/// Largest request body the agent reads.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest rating comment.
const MAX_COMMENT: usize = 2_000;
/// Ratings being forwarded to `sessions.rating_url` at once, at most (each is an outbound POST
/// that a viewer without a token starts).
const MAX_RATING_FORWARDS: usize = 4;
/// Ratings forwarded in a burst, then one per [`RATING_INTERVAL_MS`].
const RATING_BURST: u32 = 8;
/// Sustained rate of forwarded ratings: one every 2 s.
const RATING_INTERVAL_MS: i64 = 2_000;

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
    /// How long a viewer capability minted with a stream URL stays valid
    /// (`sessions.viewer_ttl`).
    pub viewer_ttl: Duration,
    /// ICE servers and TURN credentials for the session pages' script.
    pub ice: crate::turn::IceConfig,
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
    accepted_digests: Vec<String>,
    heartbeat: Mutex<HeartbeatState>,
    report_now: Notify,
    http: reqwest::Client,
    rating_forwards: Arc<Semaphore>,
    rating_bucket: Mutex<TokenBucket>,
    cluster: crate::cluster::driver::ClusterHandle,
    monitor: Arc<crate::monitor::MonitorFeed>,
    monitor_closed: tokio_util::sync::CancellationToken,
    ride_out: crate::ride_out::RideOut,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AgentState")
            .field("settings", &self.inner.settings.roles)
            .finish_non_exhaustive()
    }
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
        let mut accepted_digests = vec![token::digest_hex(&agent_key)];
        if let Some(api_token) = settings.api_token.as_deref().filter(|t| !t.is_empty()) {
            accepted_digests.push(token::digest_hex(api_token));
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
                rating_forwards: Arc::new(Semaphore::new(MAX_RATING_FORWARDS)),
                rating_bucket: Mutex::new(TokenBucket::new(
                    RATING_BURST,
                    RATING_INTERVAL_MS,
                    now_ms(),
                )),
                cluster: crate::cluster::driver::ClusterHandle::default(),
                monitor: crate::monitor::MonitorFeed::new(),
                monitor_closed: tokio_util::sync::CancellationToken::new(),
                ride_out: crate::ride_out::RideOut::default(),
            }),
        }
    }

    /// The mesh's snapshot, which the mesh driver fills (disabled until it runs).
    pub fn cluster(&self) -> &crate::cluster::driver::ClusterHandle {
        &self.inner.cluster
    }

    /// What the agent knows while it rides out the loss of the control plane.
    pub fn ride_out(&self) -> &crate::ride_out::RideOut {
        &self.inner.ride_out
    }

    /// The worker role, if the agent runs it.
    pub fn worker(&self) -> Option<&Arc<Worker>> {
        self.inner.worker.as_ref()
    }

    /// The key the server must present on the session API; goes only into the worker report.
    pub fn agent_key(&self) -> &str {
        &self.inner.agent_key
    }

    /// The node's monitor feed (`GET /api/v1/monitor`).
    pub fn monitor(&self) -> &Arc<crate::monitor::MonitorFeed> {
        &self.inner.monitor
    }

    /// Cancelled when the agent stops: ends every monitor stream, so shutdown does not wait on
    /// readers.
    pub fn monitor_closed(&self) -> &tokio_util::sync::CancellationToken {
        &self.inner.monitor_closed
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

    /// Checks a browser's request to `/session/{id}/...`: the id's form (400 naming it), then
    /// the session's viewer capability; without a valid one the answer is the same 404 as for a
    /// session that does not exist, so it reveals nothing.
    fn viewer_access(
        &self,
        id: &str,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Access, Box<Response>> {
        if let Err(bad) = check_session_id(id) {
            return Err(Box::new(api_error(
                ErrorCode::InvalidRequest,
                bad.message(),
            )));
        }
        capability::check(
            self.inner.agent_key.as_bytes(),
            id,
            uri.query(),
            headers,
            now_ms(),
        )
        .map_err(|refusal| {
            tracing::debug!(session_id = %id, ?refusal, "[proxy] viewer capability refused");
            Box::new(not_known(id))
        })
    }

    /// A place among the rating forwards in flight and a token of their rate, or why not.
    fn rating_forward_slot(&self) -> Result<OwnedSemaphorePermit, &'static str> {
        let permit = self
            .inner
            .rating_forwards
            .clone()
            .try_acquire_owned()
            .map_err(|_| "too many ratings are being forwarded; try again later")?;
        let allowed = self
            .inner
            .rating_bucket
            .lock()
            .expect("rating bucket poisoned")
            .try_take(now_ms());
        if allowed {
            Ok(permit)
        } else {
            Err("too many ratings; try again later")
        }
    }

    /// `stream_url` with a fresh viewer capability for `session_id`.
    fn viewer_url(&self, session_id: &str, stream_url: &str) -> String {
        let token = capability::mint_for(
            self.inner.agent_key.as_bytes(),
            session_id,
            now_ms(),
            self.inner.settings.viewer_ttl.as_secs().max(1),
        );
        capability::viewer_url(stream_url, &token)
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
        if token::matches_any(token, &self.inner.accepted_digests) {
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
                    worker.max_sessions(),
                    sessions.iter().map(SessionHealth::from).collect(),
                )
            }
            None => (0, 0, Vec::new()),
        }
    }
}

/// Unix milliseconds now (capabilities expire on the wall clock, which the server shares).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// The one answer a browser gets for a session it may not see, known or not.
fn not_known(id: &str) -> Response {
    api_error(
        ErrorCode::NotFound,
        &format!("session {id} is not known here"),
    )
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
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/monitor", get(monitor))
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

/// Whether a local-API request may see session details: no token gives counts only, a wrong
/// token is refused (so `hydra status --token` says so rather than printing less).
fn details_allowed(state: &AgentState, headers: &HeaderMap) -> Result<bool, Refusal> {
    if !headers.contains_key(header::AUTHORIZATION) {
        return Ok(false);
    }
    state.check_token(headers).map(|()| true)
}

async fn health(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    let detailed = match details_allowed(&state, &headers) {
        Ok(detailed) => detailed,
        Err(refusal) => return refusal.into_response(),
    };
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
            sessions: detailed.then_some(sessions),
        },
    })
    .into_response()
}

async fn status(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    let detailed = match details_allowed(&state, &headers) {
        Ok(detailed) => detailed,
        Err(refusal) => return refusal.into_response(),
    };
    let (active_sessions, max_sessions, sessions) = state.sessions_health();
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
        active_sessions,
        max_sessions,
        sessions: detailed.then_some(sessions),
        control_plane: Some(state.control_plane_status()),
    })
    .into_response()
}

/// `GET /api/v1/cluster`: the mesh as this node sees it; each member with a token only.
async fn cluster(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    match details_allowed(&state, &headers) {
        Ok(detailed) => axum::Json(state.cluster().status(detailed)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `GET /api/v1/monitor?level=&session=&contains=` (agent key or API token): the node's monitor
/// feed as NDJSON (`crate::monitor`).
async fn monitor(
    State(state): State<AgentState>,
    headers: HeaderMap,
    query: Result<
        axum::extract::Query<hydra_api::captures::MonitorFilters>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    if let Err(refusal) = state.check_token(&headers) {
        return refusal.into_response();
    }
    let filters = match query {
        Ok(axum::extract::Query(filters)) => filters,
        Err(rejection) => {
            return api_error(
                ErrorCode::InvalidRequest,
                &format!("invalid query: {}", rejection.body_text()),
            );
        }
    };
    for (name, value) in [
        ("level", &filters.level),
        ("session", &filters.session),
        ("contains", &filters.contains),
    ] {
        if let Some(Err(error)) = value
            .as_deref()
            .map(|value| hydra_api::text::check_parameter(name, value))
        {
            return api_error(
                ErrorCode::InvalidRequest,
                &format!("invalid query: {error}"),
            );
        }
    }
    match crate::monitor::feed_filter(&filters) {
        Ok(filter) => crate::monitor::stream_response(
            &state.inner.monitor,
            filter,
            state.inner.monitor_closed.clone(),
        ),
        Err(message) => api_error(ErrorCode::InvalidRequest, &message),
    }
}

impl AgentState {
    /// What `hydra status` shows of the control plane (no secret in it, so counts-only callers
    /// see it too).
    pub fn control_plane_status(&self) -> hydra_api::agent::ControlPlaneStatus {
        use hydra_core::health::HealthState;
        let view = self.ride_out().view();
        let (word, since) = match view.health {
            HealthState::Healthy => ("healthy", None),
            HealthState::Degraded { since_ms } => ("degraded", Some(since_ms)),
            HealthState::Recovering { since_ms } => ("recovering", Some(since_ms)),
        };
        let journal = self.ride_out().journal();
        hydra_api::agent::ControlPlaneStatus {
            state: word.to_owned(),
            degraded_since: since.map(hydra_api::rfc3339),
            replicas: view
                .replicas
                .iter()
                .map(|replica| hydra_api::agent::ReplicaHealth {
                    url: replica.url.clone(),
                    healthy: replica.healthy,
                    is_master: replica.is_master,
                    term: replica.term,
                })
                .collect(),
            last_poll: view.last_poll_ms.map(hydra_api::rfc3339),
            config_version: view.config_version,
            config_source: view.config_source.as_str().to_owned(),
            journal_length: journal.map_or(0, |journal| journal.len() as u64),
            journal_dropped: journal.map_or(0, |journal| journal.dropped()),
        }
    }
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
        Ok(session) => {
            let mut answer = session.to_wire();
            answer.stream_url = state.viewer_url(&session.id, &answer.stream_url);
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
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
    let sessions = worker
        .snapshot()
        .iter()
        .map(|session| session.to_wire())
        .collect();
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
            axum::Json(session.to_wire()).into_response()
        }
        None => api_error(
            ErrorCode::NotFound,
            &format!("session {id} is not known here"),
        ),
    }
}

async fn quit(
    State(state): State<AgentState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = state.viewer_access(&id, &uri, &headers) {
        return *refused;
    }
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

async fn rate(
    State(state): State<AgentState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = state.viewer_access(&id, &uri, &headers) {
        return *refused;
    }
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
        return not_known(&id);
    };
    let already_rated = || {
        api_error(
            ErrorCode::Conflict,
            &format!("session {id} is already rated"),
        )
    };
    if session.rating.is_some() {
        return already_rated();
    }
    // Bounded before anything is recorded, so a refused rating changes nothing.
    let forward_slot = match state.inner.settings.rating_url.clone() {
        Some(url) => match state.rating_forward_slot() {
            Ok(permit) => Some((url, permit)),
            Err(message) => {
                tracing::warn!(session_id = %id, "[rating] {message}");
                return api_error(ErrorCode::Unavailable, message);
            }
        },
        None => None,
    };
    match worker.rate_session(&id, rating.stars) {
        Rated::Recorded => {}
        Rated::Already => return already_rated(),
        Rated::UnknownSession => return not_known(&id),
    }
    tracing::info!(session_id = %id, stars = rating.stars, "[rating] session {id} rated {} stars", rating.stars);
    if let Some((url, permit)) = forward_slot {
        let record = serde_json::json!({
            "session_id": id,
            "worker_id": state.heartbeat().node_id,
            "body_ip": session.body_ip,
            "experience": session.experience,
            "stars": rating.stars,
            "comment": rating.comment,
        });
        let http = state.inner.http.clone();
        // Bounded by the client's 5 s timeout and the permit it holds; the browser does not
        // wait for it.
        tokio::spawn(async move {
            let _permit = permit;
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

/// `/session/{id}` to `/session/{id}/`, keeping the query (which may carry the capability).
async fn add_slash(Path(id): Path<String>, uri: Uri) -> Response {
    if let Err(bad) = check_session_id(&id) {
        return api_error(ErrorCode::InvalidRequest, bad.message());
    }
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(
            header::LOCATION,
            hydra_proxy::session_path::slash_location(&id, &uri),
        )
        .body(Body::empty())
        .unwrap_or_else(|_| api_error(ErrorCode::InvalidRequest, "invalid query"))
}

async fn proxy_root(
    State(state): State<AgentState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    proxy(state, id, request).await
}

async fn proxy_path(
    State(state): State<AgentState>,
    Path((id, _rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    proxy(state, id, request).await
}

/// Forwards a viewer's request to the session process: the path after `/session/{id}` and the
/// query exactly as they came (the capability taken out of the query and the cookies).
async fn proxy(state: AgentState, id: String, mut request: Request) -> Response {
    let access = match state.viewer_access(&id, request.uri(), request.headers()) {
        Ok(access) => access,
        Err(refused) => return *refused,
    };
    let worker = match state.worker_or_404() {
        Ok(worker) => worker,
        Err(refusal) => return refusal.into_response(),
    };
    let (Some(target), Some(session)) = (worker.proxy_target(&id), worker.session(&id)) else {
        return not_known(&id);
    };
    let query = request
        .uri()
        .query()
        .and_then(capability::strip_query)
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    let path_and_query = format!("{}{query}", raw_rest(request.uri()));
    capability::strip_cookie(request.headers_mut());
    let context = PageContext {
        session_id: id.clone(),
        worker_id: state.heartbeat().node_id.unwrap_or_default(),
        body_ip: session.body_ip.clone(),
        experience: session.experience.clone(),
        return_url: state.inner.settings.return_url.clone(),
        report_url: state.inner.settings.report_url.clone(),
        ice_servers: state
            .inner
            .settings
            .ice
            .for_page(&id, hydra_api::now_ms().max(0) as u64 / 1_000),
        force_relay: state.inner.settings.ice.force_relay,
    };
    let forward = Forward {
        target: target.address,
        path_and_query,
        prefix: format!("/session/{id}"),
        inject: Some(context),
        connections: Some(target.connections),
        session_id: id,
    };
    let mut response = state.inner.proxy.forward(request, forward).await;
    if let Some(cookie) = access.set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
        // The page's URL carries the capability: links from it must not hand it on in Referer.
        response.headers_mut().insert(
            header::REFERRER_POLICY,
            header::HeaderValue::from_static("same-origin"),
        );
    }
    response
}
