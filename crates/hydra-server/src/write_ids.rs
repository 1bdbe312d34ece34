//! Writes a sender may repeat: the one middleware for the `Idempotency-Key` header (a write id,
//! a UUID). On a replayable route a write whose id was already applied is answered with the
//! status its first application answered, and not applied again; a new id travels to the handler
//! ([`WriteKey`]), which hands it to the store with the write, so the id is claimed in the write's
//! own transaction (`hydra_store::WriteId`) and two repeats racing past this check still apply
//! once. The agent's journal replays heartbeats and worker reports this way.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hydra_api::write_id::{IDEMPOTENCY_KEY, IDEMPOTENCY_REPLAYED, parse_write_id};

use crate::error::ApiError;
use crate::state::AppState;

/// The routes whose writes honour a write id (every write the agent's journal replays).
pub const REPLAYABLE_ROUTES: [&str; 2] = [
    "/api/v1/nodes/{id}/heartbeat",
    "/api/v1/workers/{id}/report",
];

/// The write id of the request being handled (put there by [`dedup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteKey(pub u128);

impl WriteKey {
    /// The id for the store, with the status the handler answers when the write applies.
    pub fn answered(
        key: Option<axum::Extension<WriteKey>>,
        status: StatusCode,
    ) -> Option<hydra_store::WriteId> {
        key.map(|axum::Extension(WriteKey(id))| hydra_store::WriteId {
            id,
            status: status.as_u16(),
        })
    }
}

/// The middleware: no header, the request goes on untouched; a bad header or one on a route
/// that cannot honour it is a 400 naming `Idempotency-Key`; an id already applied is answered
/// with its first status (and `Idempotency-Replayed: true`) without reaching the handler.
pub async fn dedup(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(value) = request.headers().get(IDEMPOTENCY_KEY) else {
        return next.run(request).await;
    };
    let id = match value
        .to_str()
        .map_err(|_| "must be a UUID (ASCII)".to_owned())
        .and_then(parse_write_id)
    {
        Ok(id) => id,
        Err(detail) => {
            return ApiError::invalid(format!("header Idempotency-Key {detail}")).into_response();
        }
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    if !route
        .as_deref()
        .is_some_and(|route| REPLAYABLE_ROUTES.contains(&route))
    {
        return ApiError::invalid(format!(
            "header Idempotency-Key is honoured only on POST {}",
            REPLAYABLE_ROUTES.join(" and POST ")
        ))
        .into_response();
    }
    // A repeat is answered only to a caller the handler would have heard.
    if let Err(error) = state.caller(request.headers()) {
        return error.into_response();
    }
    match state.store().applied_write(id).await {
        Ok(Some(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            tracing::debug!(write_id = %hydra_api::write_id::format_write_id(id), %status, "[controller] repeated write not applied again");
            metrics::counter!("hydra_repeated_writes_total").increment(1);
            let mut response = if status == StatusCode::NO_CONTENT {
                status.into_response()
            } else {
                (status, axum::Json(serde_json::json!({ "replayed": true }))).into_response()
            };
            response
                .headers_mut()
                .insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
            response
        }
        Ok(None) => {
            request.extensions_mut().insert(WriteKey(id));
            next.run(request).await
        }
        Err(error) => crate::error::store_error(error).into_response(),
    }
}
