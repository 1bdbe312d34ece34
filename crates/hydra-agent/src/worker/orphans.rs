//! Start-up of the worker role: the port guard first (a second agent must not touch the first
//! one's sessions), then the removal of session dirs (and processes) an earlier agent left.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use nix::sys::signal::Signal;

use super::process::{Marker, signal_group};

/// The start-up guard's message (the field's `cannot bind — is another hydraneckwebrtc already
/// running?`, naming Hydra).
pub const ALREADY_RUNNING: &str = "cannot bind — is another hydra agent already running?";

/// The agent's port is taken: another agent (or something else) listens there.
#[derive(Debug, thiserror::Error)]
#[error("{ALREADY_RUNNING} (listen {address}: {reason})")]
pub struct PortTaken {
    /// The address asked for.
    pub address: SocketAddr,
    /// The bind error (part of the message, not a separate cause, so it is said once).
    pub reason: io::Error,
}

/// Binds the agent's HTTP listener; this is the check that the port is free, and it keeps the
/// port so nothing can take it between the check and the use.
pub async fn bind_agent_port(address: SocketAddr) -> Result<tokio::net::TcpListener, PortTaken> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|reason| PortTaken { address, reason })
}

/// Removes every session dir under `root` (creating `root` when missing). A dir whose marker
/// names a process group still running there (its working directory is that dir) has the group
/// ended first. Returns the names of the dirs removed. Call only after the port guard passed.
pub fn clean_orphans(root: &Path) -> io::Result<Vec<String>> {
    std::fs::create_dir_all(root)?;
    let mut removed = Vec::new();
    for item in std::fs::read_dir(root)? {
        let item = item?;
        if !item.file_type()?.is_dir() {
            continue;
        }
        let dir = item.path();
        let name = item.file_name().to_string_lossy().into_owned();
        if let Some(marker) = Marker::read(&dir)
            && runs_in(marker.pgid, &dir)
        {
            signal_group(marker.pgid, Signal::SIGKILL);
            tracing::warn!(session_id = %marker.session_id, pgid = marker.pgid, "[cleanup] ended an orphaned session process group");
        }
        std::fs::remove_dir_all(&dir)?;
        tracing::info!(dir = %dir.display(), "[cleanup] removed orphaned session dir");
        removed.push(name);
    }
    Ok(removed)
}

/// Whether process `pid` exists and works in `dir` (so a reused pid is never signalled).
fn runs_in(pid: i32, dir: &Path) -> bool {
    if pid <= 1 {
        return false;
    }
    let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
        return false;
    };
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    cwd == dir
}
