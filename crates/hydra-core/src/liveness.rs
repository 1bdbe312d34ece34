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
use std::net::IpAddr;

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
    /// The member gossips from an address the node did not enrol with (LAN or WireGuard): a
    /// member may not speak for a node by naming its id.
    AddressNotEnrolled,
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
            KeepReason::AddressNotEnrolled => "address_not_enrolled",
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

/// Whether the member gossiping from `member_ip` may speak for `node`: its mesh address must
/// be one the node enrolled with (`lan_ip` or `wg_ip`). A node that enrolled neither cannot be
/// matched, so the mesh's word about it is not taken (heartbeats still are).
pub fn member_matches_node(member_ip: IpAddr, node: &Node) -> bool {
    [node.lan_ip, node.wg_ip].contains(&Some(member_ip))
}

/// Whether an agent may forward to the `api_url` a member gossips, the agent-side twin of
/// [`member_matches_node`]: the agent knows no enrolled addresses, so the URL's host must be the
/// address the mesh exchanges datagrams with (`member_ip`, the member's identity). A state
/// relayed or forged by another member then cannot point one worker's forwards (and the
/// bearer tokens they carry) at a third host. A hostname is refused: checking it would need a
/// lookup, and the mesh only ever vouches for an address.
pub fn api_url_heard_from(api_url: &str, member_ip: IpAddr) -> bool {
    url_host(api_url)
        .and_then(|host| host.parse::<IpAddr>().ok())
        .is_some_and(|host| host.to_canonical() == member_ip.to_canonical())
}

/// The agent URL the control plane may ask about `node`: the one its worker report gave (the
/// node's own authenticated word), else the one the mesh published only when its host is an
/// address the node enrolled with; `None` when neither is usable (the agent is not asked).
pub fn agent_check_url(
    reported: Option<&str>,
    published: Option<&str>,
    node: &Node,
) -> Option<String> {
    if let Some(reported) = reported {
        return Some(reported.to_owned());
    }
    let published = published?;
    let host = url_host(published)?;
    let ip: IpAddr = host.parse().ok()?;
    member_matches_node(ip, node).then(|| published.to_owned())
}

/// The host of an `http(s)://host[:port][/...]` URL, brackets of an IPv6 address removed.
fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') {
        return None;
    }
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split_once(']').map(|(host, _)| host);
    }
    Some(
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    )
}

#[cfg(test)]
mod tests;
