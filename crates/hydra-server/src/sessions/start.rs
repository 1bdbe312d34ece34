//! `POST /api/v1/sessions`: choose the body, place the session on a worker with a slot
//! reservation, record it, ask the worker, record the answer; the next-best worker once.

use std::net::IpAddr;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hydra_api::system::now_ms;
use hydra_api::{
    CreateSessionRequest, ErrorBody, ErrorCode, SessionView, StartSessionRequest, WorkerSession,
};
use hydra_client::ClientError;
use hydra_core::Role;
use hydra_core::selection::{Head, Observations, select_bodies};
use hydra_core::session::{StartFailure, retry_on_next_worker, start_wait_ms};
use hydra_proxy::capability::without_capability;
use hydra_proxy::extract::Json;
use hydra_proxy::extract::check_word;
use hydra_store::{SessionRecord, SessionStatus};
use rand::RngCore;

use super::{Relay, STOP_TIMEOUT, view};
use crate::error::{ApiError, store_error};
use crate::state::AppState;
use crate::workers::{SlotReservation, WorkerInfo};

/// The body a session pairs with: `(body_ip, body_id, the head's district)`.
fn resolve_body(
    state: &AppState,
    request: &CreateSessionRequest,
) -> Result<(String, Option<String>, Option<String>), ApiError> {
    match (&request.body_ip, &request.head_id) {
        (Some(_), Some(_)) => Err(ApiError::invalid("give body_ip or head_id, not both")),
        (None, None) => Err(ApiError::invalid("body_ip or head_id is required")),
        (Some(body_ip), None) => {
            let ip: IpAddr = body_ip.trim().parse().map_err(|_| {
                ApiError::invalid(format!("body_ip {body_ip:?} is not an IP address"))
            })?;
            Ok((ip.to_string(), None, None))
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
                    node.wg_ip.or(node.lan_ip).map(|ip| {
                        (
                            ip.to_string(),
                            Some(node.id.clone()),
                            Some(head.district.clone()),
                        )
                    })
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

/// Asks the worker to start the session, waiting as long as its start may take.
async fn start_on(
    info: &WorkerInfo,
    request: &StartSessionRequest,
) -> Result<WorkerSession, WorkerFailure> {
    let wait = Duration::from_millis(
        u64::try_from(start_wait_ms(info.start_timeout_ms)).unwrap_or(u64::MAX),
    );
    info.agent()
        .with_timeout(wait)
        .start_session(request)
        .await
        .map_err(WorkerFailure::from)
}

impl From<ClientError> for WorkerFailure {
    /// A worker that answered refused (its own code and message, relayed); one that did not,
    /// or whose start may or may not have happened, is unreachable.
    fn from(error: ClientError) -> WorkerFailure {
        match error {
            ClientError::Unreachable { last_error, .. } => WorkerFailure::Unreachable(last_error),
            ClientError::Indeterminate { detail, .. } => WorkerFailure::Unreachable(detail),
            ClientError::Decode { detail, .. } => WorkerFailure::Refused(ApiError::new(
                ErrorCode::BadGateway,
                format!("the worker's answer is unreadable: {detail}"),
            )),
            other => WorkerFailure::Refused(match other.error_body() {
                Some(body) => ApiError::new(body.error, body.message),
                None => ApiError::new(
                    ErrorCode::BadGateway,
                    match other
                        .status()
                        .and_then(|status| StatusCode::from_u16(status).ok())
                    {
                        Some(status) => format!("the worker answered {status}"),
                        None => format!("the worker could not be asked: {other}"),
                    },
                ),
            }),
        }
    }
}

/// Places a relay session on the least-loaded healthy worker and starts it there.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions", request_body = CreateSessionRequest,
    security(("bearer" = [])),
    responses((status = 201, body = SessionView),
        (status = 400, description = "Bad field", body = ErrorBody),
        (status = 502, description = "The worker could not start it (the reason, e.g. `body <ip> unreachable on port 47990`)", body = ErrorBody),
        (status = 503, description = "`no healthy workers available` (none healthy, or all full), or a worker's refusal", body = ErrorBody)))]
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
    let (body_ip, body_id, head_district) = resolve_body(&state, &request)?;
    // Every selection stays inside one district (DESIGN.md): a head's session is placed on a
    // worker of the head's district, and a `district` naming another one is refused.
    let district = match (&request.district, head_district) {
        (Some(given), Some(head)) if *given != head => {
            return Err(ApiError::invalid(format!(
                "district {given:?} is not the district of head_id {:?} ({head:?})",
                request.head_id.as_deref().unwrap_or_default()
            )));
        }
        (Some(given), _) => Some(given.clone()),
        (None, head) => head,
    };
    let plan = StartPlan {
        start: StartSessionRequest {
            session_id: None,
            body_ip: body_ip.clone(),
            sunshine_user: request.sunshine_user.clone(),
            sunshine_pass: request.sunshine_pass.clone(),
            experience: request.experience.clone(),
            exe_path: request.exe_path.clone(),
            district: district.clone(),
            head_id: request.head_id.clone(),
            body_id: body_id.clone(),
        },
        body_ip,
        body_id,
        head_id: request.head_id.clone(),
        experience: request.experience.clone(),
        district,
    };
    // The start runs in a task of its own: a client that hangs up drops this handler, not the
    // start, so the slot, the record and the worker's process always reach an outcome.
    let answer =
        crate::error::run_to_completion("the session start", start_session(state, relay, plan))
            .await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// What a session start needs, owned by its task.
struct StartPlan {
    body_ip: String,
    body_id: Option<String>,
    head_id: Option<String>,
    experience: Option<String>,
    district: Option<String>,
    start: StartSessionRequest,
}

/// Places the session, records it `starting`, asks the worker to start it and records the
/// answer; a worker that fails is replaced by the next-best one once
/// (`hydra_core::session::retry_on_next_worker`). Each attempt's id names its worker
/// (`<worker_id>:<uuid>`, so any worker can forward a request about it to its owner): a retry
/// is a new session, and the refused attempt stays recorded `error` with its reason. The slot
/// is a [`SlotReservation`]: committed only when the worker started the session, given back on
/// every other way out.
async fn start_session(
    state: AppState,
    relay: Relay,
    plan: StartPlan,
) -> Result<SessionView, ApiError> {
    let mut excluded: Vec<String> = Vec::new();
    let mut first_failure: Option<(String, WorkerFailure)> = None;
    for attempt in 1..=2 {
        let reservation = match place(&state, &relay, &plan, &excluded) {
            Ok(reservation) => reservation,
            Err(placement) => {
                if let Some((worker_id, failure)) = first_failure {
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
        let stored = record_starting(&state, &plan, &reservation).await?;
        let start = StartSessionRequest {
            session_id: Some(stored.id.clone()),
            ..plan.start.clone()
        };
        let failure = match start_on(&info, &start).await {
            Ok(started) => {
                // The worker runs it: the slot stays taken until the session ends.
                reservation.commit();
                return record_started(&state, stored, started).await;
            }
            Err(failure) => failure,
        };
        drop(reservation);
        let refused = Refused {
            info: &info,
            stored,
            failure,
            attempt,
        };
        let failure = record_refusal(&state, refused, first_failure.as_ref()).await?;
        excluded.push(chosen.clone());
        first_failure = Some((chosen, failure));
    }
    Err(first_failure
        .map(|(worker_id, failure)| failure.into_api_error(&worker_id))
        .unwrap_or_else(|| ApiError::new(ErrorCode::Unavailable, "no healthy workers available")))
}

/// One placement decision (timed for `hydra_placement_seconds`), passing over `excluded`.
fn place(
    state: &AppState,
    relay: &Relay,
    plan: &StartPlan,
    excluded: &[String],
) -> Result<SlotReservation, hydra_core::placement::PlacementError> {
    let mut random = [0u8; 16];
    rand::rng().fill_bytes(&mut random);
    let deciding = std::time::Instant::now();
    let placed = relay.place_new(state, plan.district.as_deref(), excluded, random);
    metrics::histogram!("hydra_placement_seconds").record(deciding.elapsed().as_secs_f64());
    placed
}

/// Records the placed session `starting` on its worker, before the worker is asked.
async fn record_starting(
    state: &AppState,
    plan: &StartPlan,
    reservation: &SlotReservation,
) -> Result<SessionRecord, ApiError> {
    let chosen = reservation.worker_id();
    let session_id = reservation.session_id();
    let now = now_ms();
    let stored = SessionRecord {
        id: session_id.to_owned(),
        worker_id: chosen.to_owned(),
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
    state.session_writes().insert(stored.clone()).await?;
    tracing::info!(%session_id, worker_id = %chosen, body_ip = %plan.body_ip, "[controller] session placed");
    Ok(stored)
}

/// Records the session `running` once its worker started it; the answer is the only place the
/// viewer capability appears. A session ended (`DELETE`) while it started stays ended.
async fn record_started(
    state: &AppState,
    stored: SessionRecord,
    started: WorkerSession,
) -> Result<SessionView, ApiError> {
    if let Some(ended) = state
        .store()
        .get_session(&stored.id)
        .await
        .map_err(store_error)?
        .filter(|record| hydra_core::session::SessionState::from(record.status).is_final())
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
    Ok(answer)
}

/// A worker's refusal of one attempt, to record.
struct Refused<'a> {
    info: &'a WorkerInfo,
    stored: SessionRecord,
    failure: WorkerFailure,
    attempt: u32,
}

/// Records a worker's refusal: the attempt stays `error` with its reason (both workers' reasons
/// after a retry). `Ok(failure)` when the session is to be tried on the next worker; `Err` is
/// the answer otherwise.
async fn record_refusal(
    state: &AppState,
    refused: Refused<'_>,
    first_failure: Option<&(String, WorkerFailure)>,
) -> Result<WorkerFailure, ApiError> {
    let Refused {
        info,
        stored,
        failure,
        attempt,
    } = refused;
    let session_id = &stored.id;
    let chosen = stored.worker_id.clone();
    tracing::warn!(%session_id, worker_id = %chosen, reason = %failure.message(), "[controller] worker could not start the session");
    if matches!(failure, WorkerFailure::Unreachable(_)) {
        // It may still start it after the wait: ask it to end it (its report would
        // otherwise lead to the same).
        end_quietly(info, session_id);
    }
    let current = state
        .store()
        .get_session(session_id)
        .await
        .map_err(store_error)?;
    if current
        .is_some_and(|record| hydra_core::session::SessionState::from(record.status).is_final())
    {
        // Ended (`DELETE`) while it started: that final state stays, and there is
        // nothing left to start elsewhere.
        return Err(failure.into_api_error(&chosen));
    }
    // When both workers refused, the last answer and record name both.
    let message = match first_failure {
        Some((first_worker, first)) => format!(
            "worker {chosen}: {}; worker {first_worker}: {}",
            failure.message(),
            first.message()
        ),
        None => failure.message(),
    };
    let mut failed = stored;
    failed.status = SessionStatus::Error;
    failed.error = Some(message.clone());
    failed.updated_at = now_ms();
    state.session_writes().update(failed).await?;
    if first_failure.is_none() && retry_on_next_worker(failure.kind(), attempt) {
        return Ok(failure);
    }
    let mut error = failure.into_api_error(&chosen);
    if first_failure.is_some() {
        error.message = message;
    }
    Err(error)
}

/// Asks the worker, in the background, to end `session_id`; failures are only logged.
fn end_quietly(info: &WorkerInfo, session_id: &str) {
    let agent = info.agent().with_timeout(STOP_TIMEOUT);
    let session_id = session_id.to_owned();
    tokio::spawn(async move {
        if let Err(error) = agent.end_session(&session_id).await {
            tracing::warn!(%session_id, %error, "[controller] cannot ask the worker to end a session it did not start in time");
        }
    });
}
