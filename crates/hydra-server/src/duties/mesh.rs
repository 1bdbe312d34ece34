//! The mesh duty: runs this replica's member of the peer mesh and, on the master, turns a member
//! declared down into an `unreachable` node (after asking its agent).

use hydra_core::liveness::{KeepReason, MeshSignal, MeshVerdict};
use hydra_mesh::mesh::MeshEvent;
use hydra_mesh::start::Publication;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::mesh::{AGENT_CHECK_TIMEOUT, MeshStart};
use crate::state::AppState;

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
                checks.spawn(on_down(state.clone(), id));
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

/// A member went down: when the member's mesh address is one the node enrolled with, asks
/// its agent (the URL its worker report gave, else the one it published in the mesh when that
/// is an enrolled address too) whether it still answers, then lets the fleet apply the
/// verdict. A member gossiping from another address cannot get the node marked.
async fn on_down(state: AppState, member: hydra_mesh::member::MemberId) {
    let node_id = member.node_id;
    let node = state
        .registry()
        .read()
        .expect("registry lock poisoned")
        .get(&node_id)
        .cloned();
    if let Some(node) = &node
        && !hydra_core::liveness::member_matches_node(member.addr.ip(), node)
    {
        tracing::warn!(%node_id, member_addr = %member.addr, reason = KeepReason::AddressNotEnrolled.as_str(), "[mesh] member down: node kept as it is");
        return;
    }
    let reported = state
        .workers()
        .all()
        .get(&node_id)
        .map(|info| info.agent_url.clone());
    let published = state
        .cluster()
        .status(true)
        .members
        .unwrap_or_default()
        .into_iter()
        .find(|known| known.node_id == node_id && known.addr == member.addr.to_string())
        .and_then(|known| known.api_url);
    let agent_url = node.as_ref().and_then(|node| {
        hydra_core::liveness::agent_check_url(reported.as_deref(), published.as_deref(), node)
    });
    let agent_answered = match agent_url {
        Some(url) => Some(
            hydra_client::AgentClient::new(&url, None)
                .with_timeout(AGENT_CHECK_TIMEOUT)
                .health()
                .await
                .is_ok(),
        ),
        None => None,
    };
    let timeout_ms =
        i64::try_from(state.settings().heartbeat_timeout.as_millis()).unwrap_or(i64::MAX);
    let verdict = state
        .fleet()
        .apply_mesh_signal(
            &node_id,
            MeshSignal::Down,
            agent_answered,
            hydra_api::system::now_ms(),
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
