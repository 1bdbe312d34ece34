//! `GET /api/v1/workers` and `POST /api/v1/workers/{id}/report`: thin handlers over the worker
//! directory (`crate::workers`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hydra_api::system::now_ms;
use hydra_api::{ErrorBody, WorkerList, WorkerReport, WorkerView};
use hydra_core::Role;
use hydra_core::placement::{PlacementSettings, WorkerLoad};
use hydra_proxy::extract::{Json, Path};

use crate::auth::Caller;
use crate::error::{ApiError, store_error};
use crate::sessions::apply_report;
use crate::state::AppState;

/// Every worker with its health and load.
#[utoipa::path(get, path = "/api/v1/workers", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, body = WorkerList), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<WorkerList>, ApiError> {
    state.require_admin(&headers)?;
    let now = now_ms();
    let timeout = state.heartbeat_timeout_ms();
    let settings = PlacementSettings {
        heartbeat_timeout_ms: timeout,
    };
    let reports = state.workers().all();
    let registry = state.registry().read().expect("registry lock poisoned");
    let workers = registry
        .all()
        .into_iter()
        .filter(|node| node.roles.contains(Role::Worker))
        .map(|node| {
            let report = reports.get(&node.id);
            let (active, max) = report.map_or((node.active_sessions, 0), |info| {
                (info.active_sessions(), info.max_sessions)
            });
            // The same rules placement decides with (`hydra_core::placement`).
            let load = WorkerLoad {
                id: &node.id,
                last_heartbeat: node.counted_heartbeat(),
                drained: node.drained,
                active_sessions: active,
                max_sessions: max,
            };
            WorkerView {
                id: node.id.clone(),
                name: node.name.clone(),
                district: node.district.clone(),
                venue: node.venue.clone(),
                status: node.status(now, timeout).into(),
                healthy: report.is_some() && load.is_healthy(now, &settings),
                drained: node.drained,
                active_sessions: active,
                max_sessions: max,
                load: load.load_ratio(),
                agent_url: report.map(|info| info.agent_url.clone()),
                last_heartbeat: node.last_heartbeat.map(hydra_api::rfc3339),
                draining: node.drained && active > 0,
                sessions_left: if node.drained { active } else { 0 },
            }
        })
        .collect();
    Ok(Json(WorkerList { workers }))
}

/// A worker's agent says how to reach it and what it runs (its own node token, or the admin
/// token). Stored sessions of this worker that it does not run are marked `error`; those it
/// reports stopped or failed take that status.
#[utoipa::path(post, path = "/api/v1/workers/{id}/report", tag = "sessions", request_body = WorkerReport,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Worker node id"),
        ("Idempotency-Key" = Option<String>, Header, description = "A write id (UUID): a repeat of an applied write is answered with its first status and Idempotency-Replayed: true, and not applied again")),
    responses((status = 204, description = "Recorded"), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    write_key: Option<axum::Extension<crate::write_ids::WriteKey>>,
    Json(report): Json<WorkerReport>,
) -> Result<StatusCode, ApiError> {
    let write_id = crate::write_ids::WriteKey::answered(write_key, StatusCode::NO_CONTENT);
    match state.caller(&headers)? {
        Caller::Admin => {}
        Caller::Node(caller) if caller == id => {}
        Caller::Node(_) => {
            return Err(ApiError::forbidden(format!(
                "a node token may only report for its own node, not {id:?}"
            )));
        }
    }
    // Trust checks (issue 7 items 3 and 4): the node must be an enrolled worker, its agent URL
    // one of its enrolled addresses (or allowed), its capacity capped by the server.
    let enrolled = state
        .registry()
        .read()
        .expect("registry lock poisoned")
        .get(&id)
        .map(|node| {
            let addresses: Vec<std::net::IpAddr> =
                node.lan_ip.into_iter().chain(node.wg_ip).collect();
            (node.roles.contains(Role::Worker), addresses)
        });
    let enrolled = match enrolled {
        None => return Err(ApiError::not_found(format!("node {id:?} is not enrolled"))),
        Some((false, _)) => {
            return Err(ApiError::invalid(format!(
                "node {id:?} does not have the worker role"
            )));
        }
        Some((true, addresses)) => addresses,
    };
    let settings = state.settings();
    // The node's config bundle, when it names `sessions.max`, caps the report too.
    let bundle_max = state
        .store()
        .get_node_config(&id)
        .await
        .map_err(store_error)?
        .and_then(|record| serde_json::from_str::<hydra_api::ConfigBundle>(&record.bundle).ok())
        .and_then(|bundle| bundle.sessions.max);
    let cap = bundle_max.map_or(settings.max_sessions_per_worker, |max| {
        max.min(settings.max_sessions_per_worker)
    });
    let trusted = crate::report_checks::check_report(
        &id,
        &report,
        &enrolled,
        cap,
        &settings.agent_url_hosts,
    )?;
    let mut report = report;
    report.agent_url = trusted.agent_url;
    report.max_sessions = trusted.max_sessions;
    // Store, reconciliation and directory change together, whatever the caller does.
    let clamped_from = trusted.clamped_from;
    crate::error::run_to_completion("the worker report", async move {
        apply_report(&state, &id, report, clamped_from, write_id).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
