//! The node registry: enrol, read, move, drain, heartbeat, remove.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hydra_api::system::now_ms;
use hydra_api::{
    DrainRequest, EnrolRequest, EnrolResponse, EnrolmentTokenRequest, EnrolmentTokenResponse,
    ErrorBody, HeartbeatRequest, MoveRequest, NodeList, NodeView,
};
use hydra_core::{Node, Role, Roles};
use hydra_proxy::extract::check_word;
use hydra_proxy::extract::{Json, Path};
use hydra_store::Heartbeat;
use rand::RngCore;

use crate::auth::{Caller, bearer, generate_token, hash_token};
use crate::error::{ApiError, store_error};
use crate::state::AppState;

/// Longest id, name, district, venue, owner or org accepted.
/// Most organisations in `allowed_orgs`.
const MAX_ALLOWED_ORGS: usize = 64;
/// Prefix of one-time enrolment tokens; any other token must be the admin token to enrol.
const ENROLMENT_TOKEN_PREFIX: &str = "hye_";

fn view(state: &AppState, node: &Node) -> NodeView {
    NodeView::from_node(node, now_ms(), state.heartbeat_timeout_ms())
}

fn unknown_node(id: &str) -> ApiError {
    ApiError::not_found(format!("node {id:?} is not enrolled"))
}

/// Checks a reported GPU memory size against [`hydra_api::MAX_VRAM_MB`].
fn check_vram(vram_mb: Option<u64>) -> Result<Option<u64>, ApiError> {
    match vram_mb {
        Some(mb) if mb > hydra_api::MAX_VRAM_MB => Err(ApiError::invalid(format!(
            "vram_mb must be at most {} (MB)",
            hydra_api::MAX_VRAM_MB
        ))),
        other => Ok(other),
    }
}

/// Builds the node an enrolment asks for, or says which field is wrong.
fn node_from_request(request: EnrolRequest, now: i64) -> Result<Node, ApiError> {
    let id = match request.id {
        Some(id) => {
            check_word("id", &id)?;
            id
        }
        None => {
            let mut bytes = [0u8; 4];
            rand::rng().fill_bytes(&mut bytes);
            format!("node-{}", hex::encode(bytes))
        }
    };
    let roles: Roles = request.roles.iter().copied().map(Role::from).collect();
    if roles.is_empty() {
        return Err(ApiError::invalid(
            "roles must name at least one of body, worker, head",
        ));
    }
    let name = request.name.unwrap_or_else(|| id.clone());
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::invalid("name must be 1 to 128 characters"));
    }
    check_word("district", &request.district)?;
    check_word("venue", &request.venue)?;
    check_word("owner", &request.owner)?;
    if request.allowed_orgs.len() > MAX_ALLOWED_ORGS {
        return Err(ApiError::invalid(format!(
            "allowed_orgs holds more than {MAX_ALLOWED_ORGS} organisations"
        )));
    }
    for org in &request.allowed_orgs {
        check_word("allowed_orgs", org)?;
    }
    let mut node = Node::new(id, roles);
    node.name = name;
    node.district = request.district;
    node.venue = request.venue;
    node.owner = request.owner;
    node.allowed_orgs = request.allowed_orgs;
    node.lan_ip = request.lan_ip;
    node.wg_ip = request.wg_ip;
    node.vram_mb = check_vram(request.vram_mb)?;
    node.cost_tier = request.cost_tier.into();
    node.enrolled_at = now;
    Ok(node)
}

/// Enrols a node, with the admin token or a one-time enrolment token (consumed by it). The
/// answer carries the node's token once; only its digest is stored.
#[utoipa::path(post, path = "/api/v1/nodes", tag = "nodes", request_body = EnrolRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Enrolled", body = EnrolResponse),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Unknown token, or an enrolment token used or expired", body = ErrorBody),
        (status = 409, description = "Id taken", body = ErrorBody)))]
pub async fn enrol(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<EnrolRequest>,
) -> Result<(StatusCode, Json<EnrolResponse>), ApiError> {
    // An enrolment token may enrol and do nothing else: no other route accepts it.
    let enrolment_digest = match bearer(&headers)? {
        token if token.starts_with(ENROLMENT_TOKEN_PREFIX) => Some(hash_token(token)),
        _ => {
            state.require_admin(&headers)?;
            None
        }
    };
    let now = now_ms();
    let node = node_from_request(request, now)?;
    let token = generate_token("hyn_");
    let digest = hash_token(&token);
    let node = match enrolment_digest {
        None => state.fleet().enrol(node, digest).await?,
        Some(enrolment_digest) => {
            state
                .fleet()
                .enrol_with_token(node, digest, enrolment_digest, now)
                .await?
        }
    };
    tracing::info!(node_id = %node.id, roles = %node.roles, district = %node.district, venue = %node.venue, "[controller] node enrolled");
    metrics::counter!("hydra_enrolments_total").increment(1);
    Ok((
        StatusCode::CREATED,
        Json(EnrolResponse {
            node: view(&state, &node),
            token,
        }),
    ))
}

/// Makes a one-time enrolment token (admin): it enrols one node, once, before it expires, so
/// the admin token never has to sit on a node. Shown once; only its digest is stored.
#[utoipa::path(post, path = "/api/v1/enrolment-tokens", tag = "nodes", request_body = EnrolmentTokenRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = EnrolmentTokenResponse),
        (status = 400, description = "Invalid field", body = ErrorBody)))]
pub async fn create_enrolment_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<EnrolmentTokenRequest>,
) -> Result<(StatusCode, Json<EnrolmentTokenResponse>), ApiError> {
    state.require_admin(&headers)?;
    let seconds = request.expires_in_s;
    if !(1..=hydra_api::MAX_ENROLMENT_TOKEN_SECONDS).contains(&seconds) {
        return Err(ApiError::invalid(format!(
            "expires_in_s must be 1 to {} seconds",
            hydra_api::MAX_ENROLMENT_TOKEN_SECONDS
        )));
    }
    let token = generate_token(ENROLMENT_TOKEN_PREFIX);
    let now = now_ms();
    // At most 30 days of milliseconds: no overflow.
    let expires_at = now + i64::try_from(seconds * 1_000).unwrap_or(i64::MAX - now);
    state
        .store()
        .create_enrolment_token(&hash_token(&token), now, expires_at)
        .await
        .map_err(store_error)?;
    let expires_at = hydra_api::rfc3339(expires_at);
    tracing::info!(%expires_at, "[controller] one-time enrolment token created");
    Ok((
        StatusCode::CREATED,
        Json(EnrolmentTokenResponse { token, expires_at }),
    ))
}

/// Every enrolled node, by id, with its derived status.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, description = "All nodes", body = NodeList)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<NodeList>, ApiError> {
    state.require_admin(&headers)?;
    let now = now_ms();
    let timeout = state.heartbeat_timeout_ms();
    let registry = state.fleet().view();
    let nodes = registry
        .all()
        .into_iter()
        .map(|node| NodeView::from_node(node, now, timeout))
        .collect();
    Ok(Json(NodeList { nodes }))
}

/// One node.
#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes", security(("bearer" = [])),
    params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    state.require_admin(&headers)?;
    let registry = state.fleet().view();
    let node = registry.get(&id).ok_or_else(|| unknown_node(&id))?;
    Ok(Json(view(&state, node)))
}

/// Removes a node, its token and its latency samples.
#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes", security(("bearer" = [])),
    params(("id" = String, Path, description = "Node id")),
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.require_admin(&headers)?;
    // What other services forget about a removed node goes in this hook (it runs in the
    // fleet's owned task, so a client that hangs up cannot skip it): the relay's worker
    // directory, so the worker is neither placed on nor proxied to again.
    let workers = state.workers().clone();
    state
        .fleet()
        .remove(&id, move |id| {
            workers.remove(id);
        })
        .await?;
    tracing::info!(node_id = %id, "[controller] node removed");
    Ok(StatusCode::NO_CONTENT)
}

/// Records a heartbeat: the node's own token or the admin token.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/heartbeat", tag = "nodes", request_body = HeartbeatRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Node id"),
        ("Idempotency-Key" = Option<String>, Header, description = "A write id (UUID): a repeat of an applied write is answered with its first status and Idempotency-Replayed: true, and not applied again")),
    responses((status = 200, body = NodeView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    write_key: Option<axum::Extension<crate::write_ids::WriteKey>>,
    Json(request): Json<HeartbeatRequest>,
) -> Result<Json<NodeView>, ApiError> {
    match state.caller(&headers)? {
        Caller::Admin => {}
        Caller::Node(caller) if caller == id => {}
        Caller::Node(_) => {
            return Err(ApiError::forbidden(format!(
                "a node token may only heartbeat its own node, not {id:?}"
            )));
        }
    }
    let heartbeat = Heartbeat {
        at: now_ms(),
        idle: request.idle,
        active_sessions: request.active_sessions,
        vram_mb: check_vram(request.vram_mb)?,
        write_id: crate::write_ids::WriteKey::answered(write_key, StatusCode::OK),
    };
    let node = state.fleet().heartbeat(&id, heartbeat).await?;
    metrics::counter!("hydra_heartbeats_total").increment(1);
    Ok(Json(view(&state, &node)))
}

/// Moves a node to another district and venue (parking it in a spare district takes it out of
/// selection). Nothing on the node is re-provisioned.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/district", tag = "nodes", request_body = MoveRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = NodeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn move_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(request): Json<MoveRequest>,
) -> Result<Json<NodeView>, ApiError> {
    state.require_admin(&headers)?;
    check_word("district", &request.district)?;
    check_word("venue", &request.venue)?;
    let node = state
        .fleet()
        .move_node(&id, &request.district, &request.venue)
        .await?;
    tracing::info!(node_id = %id, district = %node.district, venue = %node.venue, "[controller] node moved");
    Ok(Json(view(&state, &node)))
}

/// Drains (`true`) or undrains (`false`) a node.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/drain", tag = "nodes", request_body = DrainRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
pub async fn drain(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(request): Json<DrainRequest>,
) -> Result<Json<NodeView>, ApiError> {
    state.require_admin(&headers)?;
    let node = state.fleet().set_drained(&id, request.drained).await?;
    tracing::info!(node_id = %id, drained = request.drained, "[controller] node drain changed");
    Ok(Json(view(&state, &node)))
}
