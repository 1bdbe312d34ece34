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
/// names a process group with a member still running there (its working directory is that dir,
/// the leader's or any other member's: the leader may be gone while its children run on) has
/// the group ended first. Returns the names of the dirs removed. Call only after the port guard
/// passed.
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
            && group_runs_in(marker.pgid, &dir)
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

/// Whether a live member of process group `pgid` works in `dir` (so a group id reused by
/// someone else is never signalled).
fn group_runs_in(pgid: i32, dir: &Path) -> bool {
    if pgid <= 1 {
        return false;
    }
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    group_members(pgid).into_iter().any(|pid| {
        std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
    })
}

/// The live (not zombie) processes whose process group is `pgid`, found by scanning `/proc`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| group_of(&stat))
                .is_some_and(|(state, group)| group == pgid && state != 'Z')
        })
        .collect()
}

/// The state and process group of a `/proc/<pid>/stat` line: the fields after the command
/// name, which is in parentheses and may itself hold spaces and parentheses.
fn group_of(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _parent = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_state_and_group_whatever_the_command_name() {
        assert_eq!(
            group_of("4242 (web-server) S 1 4240 4240 0 -1 4194560"),
            Some(('S', 4240))
        );
        assert_eq!(
            group_of("77 (a (b) c) Z 1 70 70 0"),
            Some(('Z', 70)),
            "a name with spaces and parentheses"
        );
        assert_eq!(group_of("garbage"), None);
    }

    #[test]
    fn this_process_is_found_in_its_own_group() {
        let own = std::process::id() as i32;
        let group = nix::unistd::getpgrp().as_raw();
        assert!(group_members(group).contains(&own));
    }
}
