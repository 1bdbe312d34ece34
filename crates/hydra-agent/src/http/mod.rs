//! The agent's HTTP surface: local API (`/api/v1/health`, `/api/v1/status`: counts without a
//! token, session details with one), the session API the server calls (bearer: the agent key
//! sent in the worker report, or the configured API token), and the browser's routes: the
//! `/session/{id}/...` proxy, `POST /session/{id}/quit`, `POST /session/{id}/rating` and
//! `POST /session/{id}/mic/offer` (the browser microphone, `crate::mic`), each
//! opened only by the session's viewer capability (`hydra_proxy::capability`), which is minted
//! into the `stream_url` of the start answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hydra_api::ErrorCode;
use hydra_api::system::now_ms;
use hydra_core::rate_limit::TokenBucket;
use hydra_proxy::api_error::ApiError;
use hydra_proxy::capability::{self, Access};
use hydra_proxy::proxy::Proxy;
use hydra_proxy::session_path::check_session_id;
use hydra_proxy::token;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::local_api::{SessionHealth, wireguard_up};
use crate::worker::Worker;

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
    notices: notice::Notices,
    mic: Arc<crate::mic::MicRelay>,
    /// The body role, when the node has it (`set_body`).
    body: std::sync::OnceLock<Arc<crate::body::BodyRole>>,
    /// The worker's calls to its sessions' bodies (`set_body_link`).
    body_link: std::sync::OnceLock<Arc<crate::sunshine::BodyLink>>,
    /// Session records (`set_records`).
    records: std::sync::OnceLock<Arc<crate::reports::Records>>,
    peers: crate::forward::Peers,
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
                notices: notice::Notices::default(),
                mic: Arc::default(),
                body: std::sync::OnceLock::new(),
                body_link: std::sync::OnceLock::new(),
                records: std::sync::OnceLock::new(),
                peers: crate::forward::Peers::default(),
            }),
        }
    }

    /// The mesh's snapshot, which the mesh driver fills (disabled until it runs).
    pub fn cluster(&self) -> &crate::cluster::driver::ClusterHandle {
        &self.inner.cluster
    }

    /// The pooled connections to peers that requests are forwarded to (`crate::forward`).
    pub fn peers(&self) -> &crate::forward::Peers {
        &self.inner.peers
    }

    /// Whether `headers` carry a bearer token the session API accepts.
    pub fn token_accepted(&self, headers: &HeaderMap) -> bool {
        self.check_token(headers).is_ok()
    }

    /// What the agent knows while it rides out the loss of the control plane.
    pub fn ride_out(&self) -> &crate::ride_out::RideOut {
        &self.inner.ride_out
    }

    /// The browser microphone peers (`POST /session/{id}/mic/offer`).
    pub fn mic(&self) -> &Arc<crate::mic::MicRelay> {
        &self.inner.mic
    }

    /// Gives the agent its body role (once; later calls change nothing).
    pub fn set_body(&self, body: Arc<crate::body::BodyRole>) {
        let _ = self.inner.body.set(body);
    }

    /// The body role, if the agent runs it.
    pub fn body(&self) -> Option<&Arc<crate::body::BodyRole>> {
        self.inner.body.get()
    }

    /// Gives the worker its link to bodies (once).
    pub fn set_body_link(&self, link: Arc<crate::sunshine::BodyLink>) {
        let _ = self.inner.body_link.set(link);
    }

    /// The worker's link to bodies, if set.
    pub fn body_link(&self) -> Option<&Arc<crate::sunshine::BodyLink>> {
        self.inner.body_link.get()
    }

    /// Gives the worker its session records (once).
    pub fn set_records(&self, records: Arc<crate::reports::Records>) {
        let _ = self.inner.records.set(records);
    }

    /// The session records, if set.
    pub fn records(&self) -> Option<&Arc<crate::reports::Records>> {
        self.inner.records.get()
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
            return Err(Box::new(
                ApiError::new(ErrorCode::InvalidRequest, bad.message()).into_response(),
            ));
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

    /// The worker role for a browser's request about session `id`: the viewer capability first
    /// (without it, the same 404 as for an unknown session), then the role.
    fn viewer_worker(
        &self,
        id: &str,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Arc<Worker>, Box<Response>> {
        self.viewer_access(id, uri, headers)?;
        self.worker_or_404()
            .cloned()
            .map_err(|refusal| Box::new(refusal.into_response()))
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

    /// A new session id naming this node (`<node_id>:<uuid>`); `None` before enrolment (the
    /// worker then makes an `s-` id).
    fn new_session_id(&self) -> Option<String> {
        use rand::RngCore;
        let node_id = self.heartbeat().node_id?;
        let mut random = [0u8; 16];
        rand::rng().fill_bytes(&mut random);
        hydra_core::session_id::owned_session_id(&node_id, random)
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

    fn check_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::new(
                ErrorCode::Unauthorized,
                "missing Authorization: Bearer <token> header",
            ))?;
        if token::matches_any(token, &self.inner.accepted_digests) {
            Ok(())
        } else {
            Err(ApiError::new(ErrorCode::Unauthorized, "unknown token"))
        }
    }

    fn worker_or_404(&self) -> Result<&Arc<Worker>, ApiError> {
        self.worker().ok_or(ApiError::new(
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

/// The one answer a browser gets for a session it may not see, known or not.
fn not_known(id: &str) -> Response {
    ApiError::new(
        ErrorCode::NotFound,
        format!("session {id} is not known here"),
    )
    .into_response()
}

mod local;
mod metrics;
mod notice;
mod sessions;
mod viewer;

/// The agent's router.
pub fn router(state: AgentState) -> Router {
    Router::new()
        .route("/api/v1/health", get(local::health))
        .route("/metrics", metrics::route())
        .route("/api/v1/status", get(local::status))
        .route("/api/v1/cluster", get(local::cluster))
        .route("/api/v1/monitor", get(local::monitor))
        .route(
            "/api/v1/sessions",
            post(sessions::start_session).get(sessions::list_sessions),
        )
        .route(
            "/api/v1/sessions/{id}",
            axum::routing::delete(sessions::stop_session).get(sessions::show_session),
        )
        .route("/api/v1/sessions/{id}/notice", post(notice::give))
        .route("/session/{id}/notice", get(notice::read))
        .route("/session/{id}/quit", post(sessions::quit))
        .route("/session/{id}/rating", post(sessions::rate))
        .route("/session/{id}/mic/offer", post(sessions::mic_offer))
        .route("/session/{id}/stats", post(sessions::page_stats))
        .route("/api/v1/launch", post(crate::body::launch_route))
        .route("/api/v1/stop", post(crate::body::stop_route))
        .route("/session/{id}", any(viewer::add_slash))
        .route("/session/{id}/", any(viewer::proxy_root))
        .route("/session/{id}/{*rest}", any(viewer::proxy_path))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route").into_response() })
        // A request about another node's session goes one hop to it (issue 11).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::forward::one_hop,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Whether a local-API request may see session details: no token gives counts only, a wrong
/// token is refused (so `hydra status --token` says so rather than printing less).
fn details_allowed(state: &AgentState, headers: &HeaderMap) -> Result<bool, ApiError> {
    if !headers.contains_key(header::AUTHORIZATION) {
        return Ok(false);
    }
    state.check_token(headers).map(|()| true)
}
