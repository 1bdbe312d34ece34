//! Relay sessions: `POST/GET /api/v1/sessions`, `GET/DELETE /api/v1/sessions/{id}`; the
//! colocated `/session/{id}/...` proxy is merged from `crate::colocated`.
//!
//! A new session goes to the least-loaded healthy worker (`hydra_core::placement`); its record
//! is written to the store before the worker is asked, and updated with the worker's answer.
//! Every session write goes through the group-commit writer (`AppState::session_writes`), so
//! concurrent placements share one transaction and one fsync, each answered after its commit. A
//! worker that cannot start it answers with the reason; the next-best worker is tried once.

use std::net::IpAddr;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hydra_api::{
    CreateSessionRequest, ErrorBody, ErrorCode, SessionCursor, SessionList, SessionQuery,
    SessionState, SessionView, StartSessionRequest, WorkerSession,
};
use hydra_core::Role;
use hydra_core::placement::PlacementSettings;
use hydra_core::selection::{Head, Observations, select_bodies};
use hydra_core::session::{StartFailure, retry_on_next_worker, start_wait_ms};
use hydra_proxy::capability::without_capability;
use hydra_store::{SessionFilter, SessionRecord, SessionStatus};
use rand::RngCore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::routes::nodes::check_word;
use crate::state::{AppState, now_ms};
use crate::workers::{self, SlotReservation, WorkerInfo};

/// Longest wait for a worker to end one.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the relay routes share besides `AppState`.
#[derive(Clone)]
pub struct Relay {
    http: reqwest::Client,
}

/// The HTTP client the server talks to agents with (no redirects, short connect timeout; each
/// call sets its own overall timeout).
pub fn agent_http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        })
        .clone()
}

impl Relay {
    /// Chooses the worker for `session_id` (in `district`, not in `excluded`) and takes one of
    /// its slots; the slot is given back when the reservation drops uncommitted.
    pub fn place(
        &self,
        state: &AppState,
        district: Option<&str>,
        excluded: &[String],
        session_id: &str,
    ) -> Result<SlotReservation, hydra_core::placement::PlacementError> {
        let settings = PlacementSettings {
            heartbeat_timeout_ms: state.heartbeat_timeout_ms(),
        };
        state.workers().reserve(
            state.registry(),
            district,
            excluded,
            session_id,
            now_ms(),
            &settings,
        )
    }
}

impl Default for Relay {
    /// The relay the routes share; benchmarks and tests of placement make their own, which
    /// places on the workers of the `AppState` it is given.
    fn default() -> Relay {
        Relay { http: agent_http() }
    }
}

/// The relay routes: sessions, workers, worker reports and the colocated `/session/` proxy
/// (`crate::colocated`).
/// Merge into the API router: `.merge(crate::sessions::router())`.
pub fn router() -> OpenApiRouter<AppState> {
    let relay = Relay::default();
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, end))
        .routes(routes!(workers::list))
        .routes(routes!(workers::report))
        .merge(crate::colocated::router())
        .layer(Extension(relay))
}

/// The view of a stored session.
pub fn view(record: &SessionRecord) -> SessionView {
    SessionView {
        session_id: record.id.clone(),
        worker_id: record.worker_id.clone(),
        body_ip: record.body_ip.clone(),
        body_id: record.body_id.clone(),
        head_id: record.head_id.clone(),
        experience: record.experience.clone(),
        port: record.port,
        stream_url: record.stream_url.clone(),
        status: match record.status {
            SessionStatus::Starting => SessionState::Starting,
            SessionStatus::Running => SessionState::Running,
            SessionStatus::Stopped => SessionState::Stopped,
            SessionStatus::Error => SessionState::Error,
        },
        error: record.error.clone(),
        created_at: hydra_api::rfc3339(record.created_at),
        updated_at: hydra_api::rfc3339(record.updated_at),
    }
}

fn unknown_session(id: &str) -> ApiError {
    ApiError::not_found(format!("session {id:?} does not exist"))
}

/// The body a session pairs with: `(body_ip, body_id)`.
fn resolve_body(
    state: &AppState,
    request: &CreateSessionRequest,
) -> Result<(String, Option<String>), ApiError> {
    match (&request.body_ip, &request.head_id) {
        (Some(_), Some(_)) => Err(ApiError::invalid("give body_ip or head_id, not both")),
        (None, None) => Err(ApiError::invalid("body_ip or head_id is required")),
        (Some(body_ip), None) => {
            let ip: IpAddr = body_ip.trim().parse().map_err(|_| {
                ApiError::invalid(format!("body_ip {body_ip:?} is not an IP address"))
            })?;
            Ok((ip.to_string(), None))
        }
        (None, Some(head_id)) => {
            check_word("head_id", head_id)?;
            let registry = state.registry().read().expect("registry lock poisoned");
            let head = registry
                .get(head_id)
                .ok_or_else(|| ApiError::not_found(format!("node {head_id:?} is not enrolled")))?;
            if !head.roles.contains(Role::Head) {
                return Err(ApiError::invalid(format!(
                    "head_id {head_id:?} names a node without the head role"
                )));
            }
            let asking = Head {
                district: &head.district,
                venue: &head.venue,
                owner: &head.owner,
            };
            let selection = select_bodies(
                &asking,
                registry.in_district(&head.district),
                now_ms(),
                &state.selection_settings(),
                &Observations::default(),
            );
            // A worker pairs over WireGuard; the LAN address is the fallback.
            selection
                .bodies
                .iter()
                .find_map(|candidate| {
                    let node = candidate.node;
                    node.wg_ip
                        .or(node.lan_ip)
                        .map(|ip| (ip.to_string(), Some(node.id.clone())))
                })
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::Unavailable,
                        format!("no body available for head {head_id}"),
                    )
                })
        }
    }
}

/// How asking a worker failed.
enum WorkerFailure {
    /// It answered with a refusal (its code and message).
    Refused(ApiError),
    /// It did not answer.
    Unreachable(String),
}

impl WorkerFailure {
    fn into_api_error(self, worker_id: &str) -> ApiError {
        match self {
            WorkerFailure::Refused(error) => error,
            WorkerFailure::Unreachable(detail) => ApiError::new(
                ErrorCode::BadGateway,
                format!("worker {worker_id} does not answer: {detail}"),
            ),
        }
    }

    /// The core's word for this failure (whether it is worth another worker).
    fn kind(&self) -> StartFailure {
        match self {
            WorkerFailure::Refused(error) if error.code == ErrorCode::InvalidRequest => {
                StartFailure::Invalid
            }
            WorkerFailure::Refused(_) => StartFailure::Refused,
            WorkerFailure::Unreachable(_) => StartFailure::Unreachable,
        }
    }

    fn message(&self) -> String {
        match self {
            WorkerFailure::Refused(error) => error.message.clone(),
            WorkerFailure::Unreachable(detail) => format!("worker does not answer: {detail}"),
        }
    }
}

async fn start_on(
    relay: &Relay,
    info: &WorkerInfo,
    request: &StartSessionRequest,
) -> Result<WorkerSession, WorkerFailure> {
    let answer = relay
        .http
        .post(format!("{}/api/v1/sessions", info.agent_url))
        .bearer_auth(&info.agent_key)
        .timeout(Duration::from_millis(
            u64::try_from(start_wait_ms(info.start_timeout_ms)).unwrap_or(u64::MAX),
        ))
        .json(request)
        .send()
        .await
        .map_err(|error| WorkerFailure::Unreachable(error.to_string()))?;
    let status = answer.status();
    let bytes = answer
        .bytes()
        .await
        .map_err(|error| WorkerFailure::Unreachable(error.to_string()))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|error| {
            WorkerFailure::Refused(ApiError::new(
                ErrorCode::BadGateway,
                format!("the worker's answer is unreadable: {error}"),
            ))
        });
    }
    let refusal = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|body| ApiError::new(body.error, body.message))
        .unwrap_or_else(|_| {
            ApiError::new(
                ErrorCode::BadGateway,
                format!("the worker answered {status}"),
            )
        });
    Err(WorkerFailure::Refused(refusal))
}

/// Places a relay session on the least-loaded healthy worker and starts it there.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions", request_body = CreateSessionRequest,
    security(("bearer" = [])),
    responses((status = 201, body = SessionView),
        (status = 400, description = "Bad field", body = ErrorBody),
        (status = 502, description = "The worker could not start it (the reason, e.g. `body <ip> unreachable on port 47990`)", body = ErrorBody),
        (status = 503, description = "`no healthy workers available` or `max sessions reached`", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(relay): Extension<Relay>,
    headers: HeaderMap,
    Json(request): Json<CreateSessionRequest>,
) -> Result<(StatusCode, Json<SessionView>), ApiError> {
    state.require_admin(&headers)?;
    if let Some(district) = &request.district {
        check_word("district", district)?;
    }
    for (field, value) in [
        ("experience", &request.experience),
        ("exe_path", &request.exe_path),
        ("sunshine_user", &request.sunshine_user),
        ("sunshine_pass", &request.sunshine_pass),
    ] {
        if value.as_ref().is_some_and(|text| text.len() > 1_024) {
            return Err(ApiError::invalid(format!(
                "{field} is longer than 1024 characters"
            )));
        }
    }
    let (body_ip, body_id) = resolve_body(&state, &request)?;
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let session_id = format!("s-{}", hex::encode(bytes));
    let plan = StartPlan {
        start: StartSessionRequest {
            session_id: Some(session_id.clone()),
            body_ip: body_ip.clone(),
            sunshine_user: request.sunshine_user.clone(),
            sunshine_pass: request.sunshine_pass.clone(),
            experience: request.experience.clone(),
            exe_path: request.exe_path.clone(),
        },
        session_id,
        body_ip,
        body_id,
        head_id: request.head_id.clone(),
        experience: request.experience.clone(),
        district: request.district.clone(),
    };
    // The start runs in a task of its own: a client that hangs up drops this handler, not the
    // start, so the slot, the record and the worker's process always reach an outcome.
    let started = tokio::spawn(start_session(state, relay, plan));
    let answer = started.await.map_err(|error| {
        ApiError::new(
            ErrorCode::Internal,
            format!("the session start ended abnormally: {error}"),
        )
    })??;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// What a session start needs, owned by its task.
struct StartPlan {
    session_id: String,
    body_ip: String,
    body_id: Option<String>,
    head_id: Option<String>,
    experience: Option<String>,
    district: Option<String>,
    start: StartSessionRequest,
}

/// Places the session, records it `starting`, asks the worker to start it and records the
/// answer; a worker that fails is replaced by the next-best one once
/// (`hydra_core::session::retry_on_next_worker`). The slot is a [`SlotReservation`]: committed
/// only when the worker started the session, given back on every other way out.
async fn start_session(
    state: AppState,
    relay: Relay,
    plan: StartPlan,
) -> Result<SessionView, ApiError> {
    let session_id = &plan.session_id;
    let mut excluded: Vec<String> = Vec::new();
    let mut record: Option<SessionRecord> = None;
    let mut first_failure: Option<(String, WorkerFailure)> = None;
    for attempt in 1..=2 {
        let reservation = match relay.place(&state, plan.district.as_deref(), &excluded, session_id)
        {
            Ok(reservation) => reservation,
            Err(placement) => {
                if let Some((worker_id, failure)) = first_failure {
                    if let Some(mut failed) = record.take() {
                        failed.status = SessionStatus::Error;
                        failed.error = Some(failure.message());
                        failed.updated_at = now_ms();
                        state.session_writes().update(failed).await?;
                    }
                    return Err(failure.into_api_error(&worker_id));
                }
                tracing::warn!(error = %placement, "[controller] session not placed");
                return Err(ApiError::new(ErrorCode::Unavailable, placement.to_string()));
            }
        };
        let chosen = reservation.worker_id().to_owned();
        let Some(info) = state.workers().get(&chosen) else {
            excluded.push(chosen);
            continue;
        };
        let now = now_ms();
        let stored = match record.take() {
            None => {
                let fresh = SessionRecord {
                    id: session_id.clone(),
                    worker_id: chosen.clone(),
                    body_ip: plan.body_ip.clone(),
                    body_id: plan.body_id.clone(),
                    head_id: plan.head_id.clone(),
                    experience: plan.experience.clone(),
                    port: None,
                    stream_url: None,
                    status: SessionStatus::Starting,
                    error: None,
                    created_at: now,
                    updated_at: now,
                };
                state.session_writes().insert(fresh.clone()).await?;
                fresh
            }
            Some(mut moved) => {
                moved.worker_id = chosen.clone();
                moved.updated_at = now;
                state.session_writes().update(moved.clone()).await?;
                moved
            }
        };
        tracing::info!(%session_id, worker_id = %chosen, body_ip = %plan.body_ip, "[controller] session placed");
        match start_on(&relay, &info, &plan.start).await {
            Ok(started) => {
                // The worker runs it: the slot stays taken until the session ends.
                reservation.commit();
                if let Some(ended) = state
                    .store()
                    .get_session(session_id)
                    .await?
                    .filter(|record| {
                        hydra_core::session::SessionState::from(record.status).is_final()
                    })
                {
                    // Ended (`DELETE`) while it started: `end` stopped it on the worker too.
                    return Ok(view(&ended));
                }
                let mut running = stored;
                running.status = SessionStatus::Running;
                running.port = Some(started.port);
                // The store keeps the link without the viewer capability; only this answer
                // carries it.
                running.stream_url = Some(without_capability(&started.stream_url));
                running.updated_at = now_ms();
                state.session_writes().update(running.clone()).await?;
                // Only this answer carries the viewer capability.
                let mut answer = view(&running);
                answer.stream_url = Some(started.stream_url);
                return Ok(answer);
            }
            Err(failure) => {
                drop(reservation);
                tracing::warn!(%session_id, worker_id = %chosen, reason = %failure.message(), "[controller] worker could not start the session");
                if matches!(failure, WorkerFailure::Unreachable(_)) {
                    // It may still start it after the wait: ask it to end it (its report would
                    // otherwise lead to the same).
                    end_quietly(&relay, &info, session_id);
                }
                let current = state.store().get_session(session_id).await?;
                if current.is_some_and(|record| {
                    hydra_core::session::SessionState::from(record.status).is_final()
                }) {
                    // Ended (`DELETE`) while it started: that final state stays, and there is
                    // nothing left to start elsewhere.
                    return Err(failure.into_api_error(&chosen));
                }
                if first_failure.is_none() && retry_on_next_worker(failure.kind(), attempt) {
                    // Still `starting`: it moves to the next worker, which restarts its clock.
                    record = Some(stored);
                    excluded.push(chosen.clone());
                } else {
                    let mut failed = stored;
                    failed.status = SessionStatus::Error;
                    failed.error = Some(failure.message());
                    failed.updated_at = now_ms();
                    state.session_writes().update(failed).await?;
                    return Err(failure.into_api_error(&chosen));
                }
                first_failure = Some((chosen, failure));
            }
        }
    }
    let error = first_failure
        .map(|(worker_id, failure)| failure.into_api_error(&worker_id))
        .unwrap_or_else(|| ApiError::new(ErrorCode::Unavailable, "no healthy workers available"));
    if let Some(mut failed) = record {
        failed.status = SessionStatus::Error;
        failed.error = Some(error.message.clone());
        failed.updated_at = now_ms();
        state.session_writes().update(failed).await?;
    }
    Err(error)
}

/// Asks the worker, in the background, to end `session_id`; failures are only logged.
fn end_quietly(relay: &Relay, info: &WorkerInfo, session_id: &str) {
    let request = relay
        .http
        .delete(format!("{}/api/v1/sessions/{session_id}", info.agent_url))
        .bearer_auth(&info.agent_key)
        .timeout(STOP_TIMEOUT);
    let session_id = session_id.to_owned();
    tokio::spawn(async move {
        if let Err(error) = request.send().await {
            tracing::warn!(%session_id, %error, "[controller] cannot ask the worker to end a session it did not start in time");
        }
    });
}

/// One page of sessions, newest first, filtered by `status`, `worker_id` and `head_id`; give the
/// answer's `next_cursor` as `cursor` for the next page.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", security(("bearer" = [])),
    params(SessionQuery),
    responses((status = 200, body = SessionList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<SessionList>, ApiError> {
    state.require_admin(&headers)?;
    let query = SessionQuery::from_query(&pairs).map_err(ApiError::invalid)?;
    let after = query
        .cursor
        .as_deref()
        .map(SessionCursor::decode)
        .transpose()
        .map_err(ApiError::invalid)?;
    let filter = SessionFilter {
        status: query.status.map(|status| match status {
            SessionState::Starting => SessionStatus::Starting,
            SessionState::Running => SessionStatus::Running,
            SessionState::Stopped => SessionStatus::Stopped,
            SessionState::Error => SessionStatus::Error,
        }),
        worker_id: query.worker_id.clone(),
        head_id: query.head_id.clone(),
    };
    let page = query.page_size();
    // One more than the page: whether there is a next page, without a count.
    let mut rows = state
        .store()
        .list_sessions_page(
            &filter,
            page + 1,
            after
                .as_ref()
                .map(|cursor| (cursor.created_at, cursor.id.as_str())),
        )
        .await?;
    let more = rows.len() > page as usize;
    rows.truncate(page as usize);
    let next_cursor = more.then(|| rows.last()).flatten().map(|last| {
        SessionCursor {
            created_at: last.created_at,
            id: last.id.clone(),
        }
        .encode()
    });
    Ok(Json(SessionList {
        sessions: rows.iter().map(view).collect(),
        next_cursor,
    }))
}

/// One session; a live one's `stream_url` carries a fresh viewer capability (admin only).
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    state.require_admin(&headers)?;
    let record = state
        .store()
        .get_session(&id)
        .await?
        .ok_or_else(|| unknown_session(&id))?;
    let mut answer = view(&record);
    answer.stream_url = viewer_stream_url(&state, &record);
    Ok(Json(answer))
}

/// The stream URL of a live session with a fresh viewer capability, minted with the key of the
/// worker that runs it (the store keeps the URL without one); the bare URL when the session has
/// ended or its worker is not in the directory (no capability would open it then).
fn viewer_stream_url(state: &AppState, record: &SessionRecord) -> Option<String> {
    let stored = record.stream_url.as_deref()?;
    let live = matches!(
        record.status,
        SessionStatus::Starting | SessionStatus::Running
    );
    match state.workers().get(&record.worker_id) {
        Some(info) if live => {
            let token = hydra_proxy::capability::mint_for(
                info.agent_key.as_bytes(),
                &record.id,
                now_ms(),
                hydra_proxy::capability::DEFAULT_TTL_SECS,
            );
            Some(hydra_proxy::capability::viewer_url(stored, &token))
        }
        _ => Some(stored.to_owned()),
    }
}

/// Ends a session: the record turns `stopped`, then the worker ends its process group.
#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionView), (status = 404, body = ErrorBody)))]
pub async fn end(
    State(state): State<AppState>,
    Extension(relay): Extension<Relay>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    state.require_admin(&headers)?;
    let mut record = state
        .store()
        .get_session(&id)
        .await?
        .ok_or_else(|| unknown_session(&id))?;
    let was_active = matches!(
        record.status,
        SessionStatus::Starting | SessionStatus::Running
    );
    // The store first: a start this end races with reads `stopped` before its worker can
    // refuse it (or answer it), so it neither records nor retries it; and a worker that is not
    // told (this request cancelled) ends it after its next report.
    if was_active {
        record.status = SessionStatus::Stopped;
        record.updated_at = now_ms();
        state.session_writes().update(record.clone()).await?;
        // Under the directory's lock, the one placement takes slots under.
        state.workers().release(&record.worker_id, &record.id);
        tracing::info!(session_id = %id, worker_id = %record.worker_id, "[controller] session ended");
    }
    if let Some(info) = state.workers().get(&record.worker_id) {
        let answer = relay
            .http
            .delete(format!("{}/api/v1/sessions/{id}", info.agent_url))
            .bearer_auth(&info.agent_key)
            .timeout(STOP_TIMEOUT)
            .send()
            .await;
        match answer {
            Ok(answer)
                if answer.status().is_success() || answer.status() == StatusCode::NOT_FOUND => {}
            Ok(answer) => {
                tracing::warn!(session_id = %id, status = answer.status().as_u16(), "[controller] worker refused to end the session")
            }
            Err(error) => {
                tracing::warn!(session_id = %id, %error, "[controller] worker does not answer; session recorded stopped anyway")
            }
        }
    }
    Ok(Json(view(&record)))
}
