//! The colocated `/session/{id}/...` proxy: when the server and a worker share an address, the
//! server forwards a session's browser traffic to the agent of the worker that runs it (which
//! adds the page script), so stream URLs can use the server's address.

use std::net::{IpAddr, SocketAddr};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hydra_api::ErrorCode;
use hydra_proxy::proxy::{Forward, Proxy};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

/// What the colocated routes share besides `AppState`: the forwarding client.
#[derive(Clone)]
struct Colocated {
    proxy: Proxy,
}

/// The colocated `/session/` routes; merged into the relay routes (`crate::sessions::router`).
pub fn router() -> OpenApiRouter<AppState> {
    let colocated = Colocated {
        proxy: Proxy::new(CancellationToken::new()),
    };
    OpenApiRouter::new()
        .route("/session/{id}", any(colocated_bare))
        .route("/session/{id}/", any(colocated_root))
        .route("/session/{id}/{*rest}", any(colocated_path))
        .layer(Extension(colocated))
}

fn unknown_session(id: &str) -> ApiError {
    ApiError::not_found(format!("session {id:?} does not exist"))
}

async fn colocated_bare(axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(axum::http::header::LOCATION, format!("/session/{id}/"))
        .body(Body::empty())
        .unwrap_or_default()
}

async fn colocated_root(
    State(state): State<AppState>,
    Extension(shared): Extension<Colocated>,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Response {
    colocated(state, shared, id, String::new(), request).await
}

async fn colocated_path(
    State(state): State<AppState>,
    Extension(shared): Extension<Colocated>,
    axum::extract::Path((id, rest)): axum::extract::Path<(String, String)>,
    request: Request,
) -> Response {
    colocated(state, shared, id, rest, request).await
}

/// Forwards `/session/{id}/...` to the agent of the worker that runs the session (which adds
/// the page script), so stream URLs can use the server's address.
async fn colocated(
    state: AppState,
    shared: Colocated,
    id: String,
    rest: String,
    request: Request,
) -> Response {
    let record = match state.store().get_session(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => return unknown_session(&id).into_response(),
        Err(error) => return ApiError::from(error).into_response(),
    };
    let Some(info) = state.workers().get(&record.worker_id) else {
        return ApiError::new(
            ErrorCode::BadGateway,
            format!(
                "worker {} has not reported where it listens",
                record.worker_id
            ),
        )
        .into_response();
    };
    let Some(target) = agent_address(&info.agent_url).await else {
        return ApiError::new(
            ErrorCode::BadGateway,
            format!("cannot resolve worker address {}", info.agent_url),
        )
        .into_response();
    };
    let query = request
        .uri()
        .query()
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    let forward = Forward {
        target,
        path_and_query: format!("/session/{id}/{rest}{query}"),
        prefix: String::new(),
        inject: None,
        connections: None,
        session_id: id,
    };
    shared.proxy.forward(request, forward).await
}

/// The socket address of an `http://host:port` agent URL.
async fn agent_address(url: &str) -> Option<SocketAddr> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = parsed.port_or_known_default()?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}
