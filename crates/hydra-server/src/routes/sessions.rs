//! The relay routes: sessions (create, list, show, end, notice), workers and their reports, and the
//! colocated `/session/` proxy (`routes::colocated`); placement and the session lifecycle live in
//! `crate::sessions`.

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use hydra_api::system::now_ms;
use hydra_api::{ErrorBody, SessionCursor, SessionList, SessionQuery, SessionState, SessionView};
use hydra_client::ClientError;
use hydra_proxy::extract::{Json, Path, Query};
use hydra_store::{SessionFilter, SessionRecord, SessionStatus};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, store_error};
use crate::sessions::{Relay, STOP_TIMEOUT, view};
use crate::state::AppState;

/// The relay routes: sessions, workers, worker reports and the colocated `/session/` proxy.
pub fn router() -> OpenApiRouter<AppState> {
    let relay = Relay;
    OpenApiRouter::new()
        .routes(routes!(crate::sessions::create, list))
        .routes(routes!(show, end))
        .routes(routes!(crate::sessions::notice::notice))
        .routes(routes!(crate::routes::workers::list))
        .routes(routes!(crate::routes::workers::report))
        .merge(crate::routes::colocated::router())
        .layer(Extension(relay))
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
        .await
        .map_err(store_error)?;
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
    let record = crate::sessions::stored(&state, &id).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    state.require_admin(&headers)?;
    let mut record = crate::sessions::stored(&state, &id).await?;
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
        let answer = info
            .agent()
            .with_timeout(STOP_TIMEOUT)
            .end_session(&id)
            .await;
        match answer {
            Ok(_) | Err(ClientError::NotFound(_)) => {}
            Err(error) if error.status().is_some() => {
                tracing::warn!(session_id = %id, status = error.status(), %error, "[controller] worker refused to end the session")
            }
            Err(error) => {
                tracing::warn!(session_id = %id, %error, "[controller] worker does not answer; session recorded stopped anyway")
            }
        }
    }
    Ok(Json(view(&record)))
}
