//! The colocated `/session/{id}/...` proxy: when the server and a worker share an address, the
//! server forwards a session's browser traffic to the agent of the worker that runs it (which
//! adds the page script), so stream URLs can use the server's address. Only a request with the
//! session's viewer capability (`hydra_proxy::capability`) is forwarded.

use std::net::{IpAddr, SocketAddr};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hydra_api::ErrorCode;
use hydra_api::system::now_ms;
use hydra_proxy::capability;
use hydra_proxy::proxy::{Forward, Proxy};
use hydra_proxy::session_path::{check_session_id, is_server_session_id};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

/// What the colocated routes share besides `AppState`: the forwarding client.
#[derive(Clone)]
struct Colocated {
    proxy: Proxy,
}

/// The colocated `/session/` routes; merged into the relay routes (`crate::routes::sessions::router`).
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

/// The one answer a browser gets for a session it may not see, known or not, so the answer
/// reveals nothing (no store lookup either without a capability).
fn no_access(id: &str) -> ApiError {
    ApiError::not_found(format!("session {id:?} does not exist"))
}

/// Refuses, before any lookup, a session id the server cannot have made (400 naming it).
fn check_server_session_id(id: &str) -> Result<(), ApiError> {
    check_session_id(id).map_err(|bad| ApiError::invalid(bad.message()))?;
    if is_server_session_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "session id in the path must be <node_id>:<uuid> or s- and 16 lowercase hex digits",
        ))
    }
}

async fn colocated_bare(
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: Uri,
) -> Response {
    if let Err(bad) = check_server_session_id(&id) {
        return bad.into_response();
    }
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(
            axum::http::header::LOCATION,
            hydra_proxy::session_path::slash_location(&id, &uri),
        )
        .body(Body::empty())
        .unwrap_or_else(|_| ApiError::invalid("invalid query").into_response())
}

async fn colocated_root(
    State(state): State<AppState>,
    Extension(shared): Extension<Colocated>,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Response {
    colocated(state, shared, id, request).await
}

async fn colocated_path(
    State(state): State<AppState>,
    Extension(shared): Extension<Colocated>,
    axum::extract::Path((id, _rest)): axum::extract::Path<(String, String)>,
    request: Request,
) -> Response {
    colocated(state, shared, id, request).await
}

/// Forwards `/session/{id}/...` to the agent of the worker that runs the session (which adds
/// the page script), so stream URLs can use the server's address. The viewer capability is
/// checked here with the worker's agent key (the server is no open door to the agent), and
/// again by the agent, which takes it out before the session process; the path and query go
/// on exactly as they came.
async fn colocated(state: AppState, shared: Colocated, id: String, request: Request) -> Response {
    if let Err(bad) = check_server_session_id(&id) {
        return bad.into_response();
    }
    if !capability::presented(request.uri().query(), request.headers()) {
        return no_access(&id).into_response();
    }
    let record = match state.store().get_session(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => return no_access(&id).into_response(),
        Err(error) => return crate::error::store_error(error).into_response(),
    };
    let Some(info) = state.workers().get(&record.worker_id) else {
        return no_access(&id).into_response();
    };
    let checked = capability::check(
        info.agent_key.as_bytes(),
        &id,
        request.uri().query(),
        request.headers(),
        now_ms(),
    );
    if let Err(refusal) = checked {
        tracing::debug!(session_id = %id, ?refusal, "[proxy] viewer capability refused");
        return no_access(&id).into_response();
    }
    let Some(target) = agent_address(&info.agent_url).await else {
        return ApiError::new(
            ErrorCode::BadGateway,
            format!("cannot resolve worker address {}", info.agent_url),
        )
        .into_response();
    };
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or_else(|| format!("/session/{id}/"), |raw| raw.as_str().to_owned());
    let forward = Forward {
        target,
        path_and_query,
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
