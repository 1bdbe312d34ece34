//! The browser's `/session/{id}/...` routes, forwarded to the session process.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hydra_api::ErrorCode;
use hydra_proxy::api_error::ApiError;
use hydra_proxy::capability;
use hydra_proxy::inject::PageContext;
use hydra_proxy::proxy::Forward;
use hydra_proxy::session_path::{check_session_id, raw_rest};

use super::{AgentState, not_known};

/// `/session/{id}` to `/session/{id}/`, keeping the query (which may carry the capability).
pub(super) async fn add_slash(Path(id): Path<String>, uri: Uri) -> Response {
    if let Err(bad) = check_session_id(&id) {
        return ApiError::new(ErrorCode::InvalidRequest, bad.message()).into_response();
    }
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(
            header::LOCATION,
            hydra_proxy::session_path::slash_location(&id, &uri),
        )
        .body(Body::empty())
        .unwrap_or_else(|_| {
            ApiError::new(ErrorCode::InvalidRequest, "invalid query").into_response()
        })
}

pub(super) async fn proxy_root(
    State(state): State<AgentState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    proxy(state, id, request).await
}

pub(super) async fn proxy_path(
    State(state): State<AgentState>,
    Path((id, _rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    proxy(state, id, request).await
}

/// Forwards a viewer's request to the session process: the path after `/session/{id}` and the
/// query exactly as they came (the capability taken out of the query and the cookies).
pub(super) async fn proxy(state: AgentState, id: String, mut request: Request) -> Response {
    let access = match state.viewer_access(&id, request.uri(), request.headers()) {
        Ok(access) => access,
        Err(refused) => return *refused,
    };
    let worker = match state.worker_or_404() {
        Ok(worker) => worker,
        Err(refusal) => return refusal.into_response(),
    };
    let (Some(target), Some(session)) = (worker.proxy_target(&id), worker.session(&id)) else {
        return not_known(&id);
    };
    let query = request
        .uri()
        .query()
        .and_then(capability::strip_query)
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    let path_and_query = format!("{}{query}", raw_rest(request.uri()));
    capability::strip_cookie(request.headers_mut());
    let known = state
        .records()
        .map(|records| records.context(&id))
        .unwrap_or_default();
    let (project, category) = state.records().map_or_else(
        || ("hydra".to_owned(), "stream".to_owned()),
        |records| {
            (
                records.settings().project.clone(),
                records.settings().category.clone(),
            )
        },
    );
    let age_ms = i64::try_from(session.age.as_millis()).unwrap_or(0);
    let context = PageContext {
        project,
        category,
        district: known.district,
        body: known.body,
        head: known.head,
        started_ms: hydra_api::now_ms().saturating_sub(age_ms),
        session_id: id.clone(),
        worker_id: state.heartbeat().node_id.unwrap_or_default(),
        body_ip: session.body_ip.clone(),
        experience: session.experience.clone(),
        return_url: state.inner.settings.return_url.clone(),
        report_url: state.inner.settings.report_url.clone(),
        ice_servers: state
            .inner
            .settings
            .ice
            .for_page(&id, hydra_api::now_ms().max(0) as u64 / 1_000),
        force_relay: state.inner.settings.ice.force_relay,
    };
    let forward = Forward {
        target: target.address,
        path_and_query,
        prefix: format!("/session/{id}"),
        inject: Some(context),
        connections: Some(target.connections),
        session_id: id,
    };
    let mut response = state.inner.proxy.forward(request, forward).await;
    if let Some(cookie) = access.set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
        // The page's URL carries the capability: links from it must not hand it on in Referer.
        response.headers_mut().insert(
            header::REFERRER_POLICY,
            header::HeaderValue::from_static("same-origin"),
        );
    }
    response
}
