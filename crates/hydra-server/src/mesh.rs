//! The control plane as a member of the peer mesh (issue 11): each replica runs the mesh (a
//! member that runs no work, role `server`) and, when the mesh declares a member down, asks
//! `hydra_core::liveness` what to do and applies it through `Fleet` (the node is `unreachable`,
//! out of selection and placement, until its next heartbeat). Every replica marks its own view:
//! the mark is never stored, and each replica hears the mesh itself.
//! This module holds what is handed to the duty (`crate::duties::mesh`, which runs the member
//! and applies its verdicts); `GET /api/v1/cluster` (`crate::routes::system::cluster`) shows the
//! mesh as this replica sees it.

use std::time::Duration;

use hydra_mesh::start::Prepared;

/// How long the agent of a member the mesh declared down gets to answer its health check: a
/// killed agent refuses at once; a dead host costs this much more before it is marked.
pub const AGENT_CHECK_TIMEOUT: Duration = Duration::from_millis(700);

/// The mesh's socket and keys and its section, handed to `serve_with`.
#[derive(Debug)]
pub struct MeshStart {
    pub(crate) prepared: Prepared,
    pub(crate) section: hydra_mesh::ClusterSection,
}
