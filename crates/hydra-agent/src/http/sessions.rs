//! The session API the server calls (start, list, stop) and the page's quit, rating and
//! microphone offer.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hydra_api::{
    ErrorCode, MicAnswer, MicOffer, RatingRequest, StartSessionRequest, WorkerSessionList,
};
use hydra_proxy::api_error::ApiError;
use hydra_proxy::extract::parse_json;

use super::{AgentState, MAX_COMMENT, not_known};
use crate::worker::{Rated, SessionSpec};

pub(super) async fn start_session(
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
    let request: StartSessionRequest = match parse_json(&body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    if request.session_id.is_none()
        && let Some(answer) = crate::forward::place_while_degraded(&state, &headers, &body).await
    {
        return answer;
    }
    let records_context = crate::reports::SessionContext {
        district: request.district.clone(),
        head: request.head_id.clone(),
        body: request.body_id.clone(),
    };
    let body_call = request
        .exe_path
        .clone()
        .map(|exe_path| crate::sunshine::BodyStart {
            session_id: String::new(),
            body_ip: request.body_ip.trim().to_owned(),
            exe_path,
            experience: request.experience.clone(),
            sunshine_user: request
                .sunshine_user
                .clone()
                .unwrap_or_else(|| worker.settings().sunshine_username.clone()),
            sunshine_pass: request
                .sunshine_pass
                .clone()
                .unwrap_or_else(|| worker.settings().sunshine_password.clone()),
        });
    let spec = SessionSpec {
        id: request.session_id.or_else(|| state.new_session_id()),
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
            if let Some(records) = state.records() {
                records.session_started(&session.id, records_context);
            }
            if let (Some(link), Some(call)) = (state.body_link(), body_call) {
                link.session_started(crate::sunshine::BodyStart {
                    session_id: session.id.clone(),
                    ..call
                });
            }
            let mut answer = session.to_wire();
            answer.stream_url = state.viewer_url(&session.id, &answer.stream_url);
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
        Err(error) => ApiError::new(error.code(), error.to_string()).into_response(),
    }
}

pub(super) async fn list_sessions(State(state): State<AgentState>, headers: HeaderMap) -> Response {
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

/// `GET /api/v1/sessions/{id}`: one session as the agent reports it.
pub(super) async fn show_session(
    State(state): State<AgentState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refusal) = state.check_token(&headers) {
        return refusal.into_response();
    }
    let worker = match state.worker_or_404() {
        Ok(worker) => worker,
        Err(refusal) => return refusal.into_response(),
    };
    match worker.session(&id) {
        Some(session) => axum::Json(session.to_wire()).into_response(),
        None => not_known(&id),
    }
}

pub(super) async fn stop_session(
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
    match end_session(&state, worker, &id, "deleted", "ended by the control plane").await {
        Some(session) => axum::Json(session.to_wire()).into_response(),
        None => ApiError::new(
            ErrorCode::NotFound,
            format!("session {id} is not known here"),
        )
        .into_response(),
    }
}

/// Ends session `id` on request (`DELETE`, quit) in a task of its own: the record's end, the
/// process, the report and the body's stop all happen even when the client hangs up mid-way, so
/// no session is left stopped here and still running on its body. `None` for an unknown id.
async fn end_session(
    state: &AgentState,
    worker: std::sync::Arc<crate::worker::Worker>,
    id: &str,
    end_reason: &'static str,
    why: &'static str,
) -> Option<crate::worker::SessionSnapshot> {
    let (state, id) = (state.clone(), id.to_owned());
    tokio::spawn(async move {
        if let Some(records) = state.records() {
            records.session_ending(&id, end_reason, hydra_api::now_ms());
        }
        let session = worker.stop_session(&id, why).await?;
        state.report_now().notify_one();
        stop_on_body(&state, &id);
        Some(session)
    })
    .await
    .ok()
    .flatten()
}

pub(super) async fn quit(
    State(state): State<AgentState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let worker = match state.viewer_worker(&id, &uri, &headers) {
        Ok(worker) => worker,
        Err(refused) => return *refused,
    };
    match end_session(&state, worker, &id, "quit", "quit from the page").await {
        Some(session) => axum::Json(serde_json::json!({
            "session_id": session.id,
            "status": session.status.as_str(),
        }))
        .into_response(),
        None => ApiError::new(
            ErrorCode::NotFound,
            format!("session {id} is not known here"),
        )
        .into_response(),
    }
}

pub(super) async fn rate(
    State(state): State<AgentState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let worker = match state.viewer_worker(&id, &uri, &headers) {
        Ok(worker) => worker,
        Err(refused) => return *refused,
    };
    let rating: RatingRequest = match parse_json(&body) {
        Ok(rating) => rating,
        Err(refused) => return refused.into_response(),
    };
    if let Err(refused) = check_rating(&rating) {
        return refused.into_response();
    }
    let Some(session) = worker.session(&id) else {
        return not_known(&id);
    };
    let already_rated = || {
        ApiError::new(
            ErrorCode::Conflict,
            format!("session {id} is already rated"),
        )
        .into_response()
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
                return ApiError::new(ErrorCode::Unavailable, message).into_response();
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
        forward_rating(state.inner.http.clone(), url, permit, record);
    }
    axum::Json(serde_json::json!({ "session_id": id, "stars": rating.stars })).into_response()
}

/// A rating's stars (1 to 5) and comment (at most 2,000 characters); the message names the field.
fn check_rating(rating: &RatingRequest) -> Result<(), ApiError> {
    if !(1..=5).contains(&rating.stars) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "stars must be 1 to 5",
        ));
    }
    if rating
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "comment is longer than 2000 characters",
        ));
    }
    Ok(())
}

/// Sends a recorded rating to the rating endpoint in the background. Bounded by the client's
/// 5 s timeout and the permit it holds; the browser does not wait for it.
fn forward_rating(
    http: reqwest::Client,
    url: String,
    permit: impl Send + 'static,
    record: serde_json::Value,
) {
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

/// `POST /session/{id}/mic/offer`: the page's SDP offer in, the worker's receive-only peer's
/// answer out (`crate::mic`); opened by the viewer capability like quit.
pub(super) async fn mic_offer(
    State(state): State<AgentState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let worker = match state.viewer_worker(&id, &uri, &headers) {
        Ok(worker) => worker,
        Err(refused) => return *refused,
    };
    // SDP lines end in CRLF, which the text rule (`parse_json`) refuses everywhere but free
    // text: `sdp` may hold CR and LF, and no other control character.
    let offer: MicOffer = match serde_json::from_slice(&body) {
        Ok(offer) => offer,
        Err(error) => {
            return ApiError::new(
                ErrorCode::InvalidRequest,
                format!("invalid request body: {error}"),
            )
            .into_response();
        }
    };
    if let Some(bad) = offer
        .sdp
        .chars()
        .find(|c| c.is_control() && *c != '\r' && *c != '\n')
    {
        return ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "invalid request body: sdp contains a control character (U+{:04X})",
                u32::from(bad)
            ),
        )
        .into_response();
    }
    match state.mic().offer(&worker, &id, &offer.sdp).await {
        Ok(sdp) => axum::Json(MicAnswer {
            kind: "answer".into(),
            sdp,
        })
        .into_response(),
        Err(error) => {
            tracing::warn!(session_id = %id, %error, "[mic] session {id}: offer refused");
            ApiError::new(error.code(), error.to_string()).into_response()
        }
    }
}

/// Asks the session's body to stop its experience, in a task of its own (bounded by the link's
/// call timeouts), so neither `DELETE` nor quit waits for the body.
fn stop_on_body(state: &AgentState, id: &str) {
    if let Some(link) = state.body_link() {
        let link = link.clone();
        let id = id.to_owned();
        tokio::spawn(async move { link.session_stopped(&id).await });
    }
}

/// `POST /session/{id}/stats`: the page's beacon (disconnects, ICE candidate type) for the
/// session record; the viewer capability opens it.
pub(super) async fn page_stats(
    State(state): State<AgentState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let worker = match state.viewer_worker(&id, &uri, &headers) {
        Ok(worker) => worker,
        Err(refused) => return *refused,
    };
    let stats: crate::reports::PageStats = match parse_json(&body) {
        Ok(stats) => stats,
        Err(refused) => return refused.into_response(),
    };
    if let Err(message) = stats.check() {
        return ApiError::new(ErrorCode::InvalidRequest, &message).into_response();
    }
    if worker.session(&id).is_none() {
        return not_known(&id);
    }
    if let Some(records) = state.records() {
        records.page_stats(&id, &stats);
    }
    StatusCode::NO_CONTENT.into_response()
}
