//! What the control plane does when the peer mesh says a member went down or came up
//! (issue 11): the mesh is the fast source (seconds), heartbeats the slower second one.
//!
//! The policy: a member the mesh declares down is marked `unreachable` at once (out of
//! selection and placement), unless its agent's API still answers the control plane: then its
//! UDP alone is lost, and heartbeats win, because they take the very path (HTTP to the control
//! plane, the control plane to the agent) that placement and sessions use. A member the mesh
//! says is up changes nothing: it becomes eligible again at its next heartbeat, so a node
//! that gossips but does not heartbeat stays offline.

use std::fmt;

use crate::node::{Node, NodeStatus, UnixMillis};

/// What the mesh said about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshSignal {
    /// Declared down (or it left).
    Down,
    /// Joined or came back.
    Up,
}

/// Why the node's state stays as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// Not an enrolled node (a server replica, or a member the registry does not know).
    NotEnrolled,
    /// Its heartbeat is already too old: it is offline, out of selection anyway.
    AlreadyOffline,
    /// Already marked unreachable and no heartbeat since.
    AlreadyMarked,
    /// Its agent's API answered the control plane: only its gossip is lost.
    AgentAnswers,
    /// Up: it becomes eligible again at its next heartbeat, not on the mesh's word.
    BackAtNextHeartbeat,
}

impl KeepReason {
    /// The reason as logs and tables spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::NotEnrolled => "not_enrolled",
            KeepReason::AlreadyOffline => "already_offline",
            KeepReason::AlreadyMarked => "already_marked",
            KeepReason::AgentAnswers => "agent_answers",
            KeepReason::BackAtNextHeartbeat => "back_at_next_heartbeat",
        }
    }
}

/// What to do with the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshVerdict {
    /// Mark it unreachable from `since` (now): out of selection and placement until a
    /// heartbeat newer than this.
    MarkUnreachable {
        /// The mark's time.
        since: UnixMillis,
    },
    /// Change nothing.
    Keep(KeepReason),
}

impl fmt::Display for MeshVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeshVerdict::MarkUnreachable { .. } => f.write_str("mark_unreachable"),
            MeshVerdict::Keep(reason) => write!(f, "keep {}", reason.as_str()),
        }
    }
}

/// Decides what the mesh's `signal` about `node` (None: not enrolled) changes at `now`.
/// `agent_answered` is whether the node's agent answered a health check just now (None: not
/// asked, e.g. no API address known).
pub fn mesh_verdict(
    signal: MeshSignal,
    node: Option<&Node>,
    agent_answered: Option<bool>,
    now: UnixMillis,
    heartbeat_timeout_ms: i64,
) -> MeshVerdict {
    let Some(node) = node else {
        return MeshVerdict::Keep(KeepReason::NotEnrolled);
    };
    if signal == MeshSignal::Up {
        return MeshVerdict::Keep(KeepReason::BackAtNextHeartbeat);
    }
    match node.status(now, heartbeat_timeout_ms) {
        NodeStatus::Offline => MeshVerdict::Keep(KeepReason::AlreadyOffline),
        NodeStatus::Unreachable => MeshVerdict::Keep(KeepReason::AlreadyMarked),
        NodeStatus::Online if agent_answered == Some(true) => {
            MeshVerdict::Keep(KeepReason::AgentAnswers)
        }
        NodeStatus::Online => MeshVerdict::MarkUnreachable { since: now },
    }
}

#[cfg(test)]
mod tests;
