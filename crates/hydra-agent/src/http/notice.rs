//! The end-of-stream notice of a drain's deadline: the control plane (or an operator with
//! `api_token`) says a session's stream ends in N seconds (`POST /api/v1/sessions/{id}/notice`);
//! the session page's script asks `GET /session/{id}/notice` (viewer capability) and shows
//! "This stream ends in N s" before the session is ended.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use hydra_api::system::now_ms;
use hydra_api::{ErrorCode, PageNotice, SessionNotice};
use hydra_proxy::api_error::ApiError;
use hydra_proxy::extract::parse_json;

use super::{AgentState, not_known};

/// Longest notice accepted (a day).
const MAX_NOTICE_S: u32 = 86_400;

/// When each noticed session's stream ends (unix ms); only sessions the worker runs are kept,
/// so it holds at most `sessions.max` entries.
#[derive(Debug, Default)]
pub(super) struct Notices {
    ends_at: Mutex<HashMap<String, i64>>,
}

impl Notices {
    /// Records that `session_id` ends at `ends_at`, dropping notices of sessions `known` no
    /// longer accepts (ended ones).
    fn set(&self, session_id: &str, ends_at: i64, known: impl Fn(&str) -> bool) {
        let mut ends = self.ends_at.lock().expect("notices poisoned");
        ends.retain(|id, _| known(id));
        ends.insert(session_id.to_owned(), ends_at);
    }

    /// Seconds left of `session_id`'s notice (0 once due), if it has one.
    fn left_s(&self, session_id: &str, now: i64) -> Option<u32> {
        let ends = self.ends_at.lock().expect("notices poisoned");
        ends.get(session_id).map(|&at| {
            let left_ms = at.saturating_sub(now).max(0);
            u32::try_from((left_ms + 999) / 1_000).unwrap_or(u32::MAX)
        })
    }
}

/// `POST /api/v1/sessions/{id}/notice`: the agent key or `api_token`; `ends_in_s` 1 to 86400.
pub(super) async fn give(
    State(state): State<AgentState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(refusal) = state.check_token(&headers) {
        return refusal.into_response();
    }
    let notice: SessionNotice = match parse_json(&body) {
        Ok(notice) => notice,
        Err(refused) => return refused.into_response(),
    };
    if !(1..=MAX_NOTICE_S).contains(&notice.ends_in_s) {
        return ApiError::new(
            ErrorCode::InvalidRequest,
            "ends_in_s must be between 1 and 86400",
        )
        .into_response();
    }
    let worker = match state.worker_or_404() {
        Ok(worker) => worker.clone(),
        Err(refusal) => return refusal.into_response(),
    };
    if worker.session(&id).is_none() {
        return not_known(&id);
    }
    let ends_at = now_ms().saturating_add(i64::from(notice.ends_in_s) * 1_000);
    state
        .inner
        .notices
        .set(&id, ends_at, |known| worker.session(known).is_some());
    tracing::info!(session_id = %id, ends_in_s = notice.ends_in_s, "[worker] the session's page is told its stream ends soon");
    axum::Json(notice).into_response()
}

/// `GET /session/{id}/notice`: for the page (viewer capability), `{"ends_in_s": N}` or null.
pub(super) async fn read(
    State(state): State<AgentState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = state.viewer_access(&id, &uri, &headers) {
        return *refused;
    }
    let ends_in_s = state.inner.notices.left_s(&id, now_ms());
    axum::Json(PageNotice { ends_in_s }).into_response()
}
