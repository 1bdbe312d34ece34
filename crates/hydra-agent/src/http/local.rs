//! The local API: health, status, the mesh view and the monitor feed.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use hydra_api::ErrorCode;
use hydra_proxy::api_error::ApiError;

use super::{AgentState, details_allowed};
use crate::local_api::{AgentHealth, AgentStatus, HealthExtra, wireguard_up};

pub(super) async fn health(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    let detailed = match details_allowed(&state, &headers) {
        Ok(detailed) => detailed,
        Err(refusal) => return refusal.into_response(),
    };
    let (active_sessions, max_sessions, sessions) = state.sessions_health();
    axum::Json(AgentHealth {
        status: state.health_word().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        extra: HealthExtra {
            process_id: std::process::id(),
            uptime: state.inner.started.elapsed().as_secs(),
            wireguard: wireguard_up(),
            active_sessions,
            max_sessions,
            sessions: detailed.then_some(sessions),
        },
    })
    .into_response()
}

pub(super) async fn status(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    let detailed = match details_allowed(&state, &headers) {
        Ok(detailed) => detailed,
        Err(refusal) => return refusal.into_response(),
    };
    let (active_sessions, max_sessions, sessions) = state.sessions_health();
    let heartbeat = state.heartbeat();
    axum::Json(AgentStatus {
        node_id: heartbeat.node_id,
        roles: state.inner.settings.roles.clone(),
        servers: state.inner.settings.servers.clone(),
        master: heartbeat.master,
        last_heartbeat: heartbeat.last_success.map(hydra_api::rfc3339),
        last_heartbeat_error: heartbeat.last_error,
        uptime: state.inner.started.elapsed().as_secs(),
        health: state.health_word().to_owned(),
        active_sessions,
        max_sessions,
        sessions: detailed.then_some(sessions),
        control_plane: Some(state.control_plane_status()),
    })
    .into_response()
}

/// `GET /api/v1/cluster`: the mesh as this node sees it; each member with a token only.
pub(super) async fn cluster(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    match details_allowed(&state, &headers) {
        Ok(detailed) => axum::Json(state.cluster().status(detailed)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `GET /api/v1/monitor?level=&session=&contains=&after=` (agent key or API token): the node's monitor
/// feed as NDJSON (`crate::monitor`).
pub(super) async fn monitor(
    State(state): State<AgentState>,
    headers: HeaderMap,
    query: Result<
        axum::extract::Query<hydra_api::captures::MonitorQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    if let Err(refusal) = state.check_token(&headers) {
        return refusal.into_response();
    }
    let filters = match query {
        Ok(axum::extract::Query(filters)) => filters,
        Err(rejection) => {
            return ApiError::new(
                ErrorCode::InvalidRequest,
                format!("invalid query: {}", rejection.body_text()),
            )
            .into_response();
        }
    };
    for (name, value) in [
        ("level", &filters.level),
        ("session", &filters.session),
        ("contains", &filters.contains),
    ] {
        if let Some(Err(error)) = value
            .as_deref()
            .map(|value| hydra_api::text::check_parameter(name, value))
        {
            return ApiError::new(ErrorCode::InvalidRequest, format!("invalid query: {error}"))
                .into_response();
        }
    }
    match crate::monitor::feed_filter(&filters.filters()) {
        Ok(filter) => crate::monitor::stream_response(
            &state.inner.monitor,
            filter,
            filters.after,
            state.inner.monitor_closed.clone(),
        ),
        Err(message) => ApiError::new(ErrorCode::InvalidRequest, &message).into_response(),
    }
}

impl AgentState {
    /// What `hydra status` shows of the control plane (no secret in it, so counts-only callers
    /// see it too).
    pub fn control_plane_status(&self) -> hydra_api::agent::ControlPlaneStatus {
        use hydra_core::health::HealthState;
        let view = self.ride_out().view();
        let (word, since) = match view.health {
            HealthState::Healthy => ("healthy", None),
            HealthState::Degraded { since_ms } => ("degraded", Some(since_ms)),
            HealthState::Recovering { since_ms } => ("recovering", Some(since_ms)),
        };
        let journal = self.ride_out().journal();
        hydra_api::agent::ControlPlaneStatus {
            state: word.to_owned(),
            degraded_since: since.map(hydra_api::rfc3339),
            replicas: view
                .replicas
                .iter()
                .map(|replica| hydra_api::agent::ReplicaHealth {
                    url: replica.url.clone(),
                    healthy: replica.healthy,
                    is_master: replica.is_master,
                    term: replica.term,
                })
                .collect(),
            last_poll: view.last_poll_ms.map(hydra_api::rfc3339),
            config_version: view.config_version,
            config_source: view.config_source.as_str().to_owned(),
            journal_length: journal.map_or(0, |journal| journal.len() as u64),
            journal_dropped: journal.map_or(0, |journal| journal.dropped()),
        }
    }
}
