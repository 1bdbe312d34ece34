//! `POST /api/v1/sessions/{id}/notice` (admin): tells a running session's page, through its
//! worker's agent, that the stream ends in N seconds; a drain's deadline (`hydra nodes drain
//! --wait --deadline`) gives it before it ends the session.

use axum::extract::State;
use axum::http::HeaderMap;
use hydra_api::{ErrorBody, ErrorCode, SessionNotice};
use hydra_proxy::extract::{Json, Path};
use hydra_store::SessionStatus;

use super::STOP_TIMEOUT;
use crate::error::ApiError;
use crate::state::AppState;

/// Tells the session's page its stream ends in `ends_in_s` (1 to 86400) seconds.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/notice", tag = "sessions", request_body = SessionNotice,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionNotice), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn notice(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(notice): Json<SessionNotice>,
) -> Result<Json<SessionNotice>, ApiError> {
    state.require_admin(&headers)?;
    if !(1..=86_400).contains(&notice.ends_in_s) {
        return Err(ApiError::invalid("ends_in_s must be between 1 and 86400"));
    }
    let record = crate::sessions::stored(&state, &id).await?;
    if record.status != SessionStatus::Running {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("session {id} is not running, so no page shows it"),
        ));
    }
    let info = state.workers().get(&record.worker_id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "worker {} has not reported how to reach it",
                record.worker_id
            ),
        )
    })?;
    info.agent()
        .with_timeout(STOP_TIMEOUT)
        .notice_session(&id, &notice)
        .await
        .map_err(|error| {
            ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "worker {} did not take the notice: {error}",
                    record.worker_id
                ),
            )
        })?;
    tracing::info!(session_id = %id, worker_id = %record.worker_id, ends_in_s = notice.ends_in_s, "[controller] session page told its stream ends soon");
    Ok(Json(notice))
}
