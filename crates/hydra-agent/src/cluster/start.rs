//! Starting the mesh from the agent's configuration (`hydra_mesh::start` with the agent's
//! `node.lan_ip`, roles, public URL and the worker's load).

use tokio_util::sync::CancellationToken;

pub use hydra_mesh::start::Prepared;
use hydra_mesh::start::Publication;

use crate::config::AgentConfig;
use crate::daemon::DaemonError;
use crate::http::AgentState;

/// Loads `cluster.key_file` and binds the mesh's socket; `None` when the mesh is off.
pub async fn prepare(config: &AgentConfig) -> Result<Option<Prepared>, DaemonError> {
    hydra_mesh::start::prepare(&config.cluster, config.node.lan_ip)
        .await
        .map_err(|error| DaemonError::Cluster(error.0))
}

/// Runs the mesh until `stop` (nothing when it is off), as `cluster.node_id` or else the
/// enrolled node id, publishing the worker's load.
pub async fn run(
    prepared: Option<Prepared>,
    config: &AgentConfig,
    node_id: String,
    state: AgentState,
    stop: CancellationToken,
) {
    let publication = Publication {
        roles: config.node.roles.clone(),
        api_url: config.public_url(),
        district: config.node.district.clone(),
        venue: config.node.venue.clone(),
    };
    let worker = state.worker().cloned();
    let load = move || match &worker {
        Some(worker) => (worker.active_sessions(), worker.max_sessions()),
        None => (0, 0),
    };
    let handle = state.cluster().clone();
    hydra_mesh::start::run(
        prepared,
        &config.cluster,
        node_id,
        publication,
        handle,
        load,
        stop,
    )
    .await;
}
