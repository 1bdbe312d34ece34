//! The control plane as a member of the peer mesh (issue 11): each replica runs the mesh (a
//! member that runs no work, role `server`) and, when the mesh declares a member down, asks
//! `hydra_core::liveness` what to do and applies it through `Fleet` (the node is `unreachable`,
//! out of selection and placement, until its next heartbeat). Every replica marks its own view:
//! the mark is never stored, and each replica hears the mesh itself.
//! `GET /api/v1/cluster` shows the mesh as this replica sees it.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use hydra_api::cluster::ClusterStatus;
use hydra_core::liveness::{MeshSignal, MeshVerdict};
use hydra_mesh::mesh::MeshEvent;
use hydra_mesh::start::{Prepared, Publication};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::state::AppState;

/// How long the agent of a member the mesh declared down gets to answer its health check: a
/// killed agent refuses at once; a dead host costs this much more before it is marked.
pub const AGENT_CHECK_TIMEOUT: Duration = Duration::from_millis(700);

/// The mesh's socket and keys and its section, handed to `serve_with`.
#[derive(Debug)]
pub struct MeshStart {
    pub(crate) prepared: Prepared,
    pub(crate) section: hydra_mesh::ClusterSection,
}

/// Runs the mesh as this replica (`cluster.node_id`, else the replica id) and the watcher
/// that acts on its down events, until `shutdown` (then leaves, bounded).
pub(crate) async fn run(state: AppState, start: MeshStart, shutdown: CancellationToken) {
    let handle = state.cluster().clone();
    // Subscribed before the driver runs, so no event is missed.
    let events = handle.subscribe();
    let publication = Publication {
        roles: vec!["server".to_owned()],
        api_url: state.settings().public_url.clone(),
        district: String::new(),
        venue: String::new(),
    };
    let driver = hydra_mesh::start::run(
        Some(start.prepared),
        &start.section,
        state.settings().replica_id.clone(),
        publication,
        handle,
        || (0, 0),
        shutdown.clone(),
    );
    tokio::join!(driver, watch(state, events, shutdown));
}

/// Acts on each member the mesh declares down, each in a task of its own (a slow agent check
/// delays no other).
async fn watch(
    state: AppState,
    mut events: tokio::sync::broadcast::Receiver<MeshEvent>,
    shutdown: CancellationToken,
) {
    let mut checks = tokio::task::JoinSet::new();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = checks.join_next(), if !checks.is_empty() => continue,
            event = events.recv() => event,
        };
        match event {
            Ok(MeshEvent::Down(id)) => {
                checks.spawn(on_down(state.clone(), id.node_id));
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "[mesh] membership events missed; heartbeats still apply"
                );
            }
            Err(RecvError::Closed) => break,
        }
    }
    checks.abort_all();
}

/// A member went down: asks its agent (the URL its worker report gave, else the one it
/// published in the mesh) whether it still answers, then lets the fleet apply the verdict.
async fn on_down(state: AppState, node_id: String) {
    let agent_url = state
        .workers()
        .all()
        .get(&node_id)
        .map(|info| info.agent_url.clone())
        .or_else(|| {
            state
                .cluster()
                .status(true)
                .members
                .unwrap_or_default()
                .into_iter()
                .find(|member| member.node_id == node_id)
                .and_then(|member| member.api_url)
        });
    let known = state
        .registry()
        .read()
        .expect("registry lock poisoned")
        .get(&node_id)
        .is_some();
    let agent_answered = match agent_url {
        Some(url) if known => Some(
            hydra_client::AgentClient::new(&url, None)
                .with_timeout(AGENT_CHECK_TIMEOUT)
                .health()
                .await
                .is_ok(),
        ),
        _ => None,
    };
    let timeout_ms =
        i64::try_from(state.settings().heartbeat_timeout.as_millis()).unwrap_or(i64::MAX);
    let verdict = state
        .fleet()
        .apply_mesh_signal(
            &node_id,
            MeshSignal::Down,
            agent_answered,
            crate::state::now_ms(),
            timeout_ms,
        )
        .await;
    match verdict {
        MeshVerdict::MarkUnreachable { .. } => {
            metrics::counter!("hydra_mesh_nodes_marked_unreachable_total").increment(1);
            state.captures().node_left(&node_id);
            tracing::warn!(%node_id, ?agent_answered, "[mesh] member down: node marked unreachable, out of selection until its next heartbeat");
        }
        MeshVerdict::Keep(reason) => {
            tracing::info!(%node_id, reason = reason.as_str(), "[mesh] member down: node kept as it is");
        }
    }
}

/// `GET /api/v1/cluster`: the mesh as this replica sees it. Counts without a token; each
/// member with the admin token (who is where is a map of the fleet).
#[utoipa::path(get, path = "/api/v1/cluster", tag = "system",
    responses((status = 200, description = "The peer mesh as this replica sees it", body = ClusterStatus),
        (status = 401, description = "A token that is not valid", body = hydra_api::ErrorBody),
        (status = 403, description = "A node's token: members need the admin token", body = hydra_api::ErrorBody)))]
pub async fn cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ClusterStatus>, ApiError> {
    let detailed = headers.contains_key(axum::http::header::AUTHORIZATION);
    if detailed {
        state.require_admin(&headers)?;
    }
    Ok(Json(state.cluster().status(detailed)))
}
