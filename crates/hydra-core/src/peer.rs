//! The mesh's best-peer rule: where a worker sends a new session when it places it itself
//! (the control plane away), from the coarse load each member gossips.
//!
//! The field's words (`gossip-mesh.md`): for each peer, load ratio = pending / capacity; pick the
//! lowest ratio below 1; keep the work local when no peer is less loaded; when all are full, keep
//! it local (back-pressure), which Hydra answers with `no healthy workers available`.

use std::cmp::Ordering;

use crate::placement::{PlacementError, compare_ratio};

/// What the rule needs to know of one member of the mesh (the local worker included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLoad<'a> {
    /// The member's node id.
    pub id: &'a str,
    /// Whether the mesh holds it alive now; a suspect or down member takes no new work.
    pub alive: bool,
    /// Sessions running plus starting.
    pub pending: u32,
    /// Sessions it may run at most; 0 means it takes none.
    pub capacity: u32,
}

impl PeerLoad<'_> {
    /// Below 1: it has room for one more session.
    pub fn has_room(&self) -> bool {
        self.pending < self.capacity
    }

    fn ratio(&self) -> (u32, u32) {
        (self.pending, self.capacity)
    }
}

/// Where a session goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChoice<'a> {
    /// Start it here: no peer is less loaded than the local worker.
    Local,
    /// Start it on this peer (its node id, borrowed from the input).
    Peer(&'a str),
}

/// The best place for a new session: the live peer with the lowest load ratio below 1 when it is
/// strictly less loaded than `local` (or `local` is full), else the local worker. Ties between
/// peers go to more free slots, then the smallest id, so the answer does not depend on the order
/// of `peers`. A peer carrying the local id is ignored.
///
/// Errors: [`PlacementError::NoHealthyWorkers`] when the local worker and every live peer are
/// full (the field's back-pressure).
pub fn best_peer<'a>(
    local: &PeerLoad<'_>,
    peers: &[PeerLoad<'a>],
) -> Result<PeerChoice<'a>, PlacementError> {
    let best = peers
        .iter()
        .filter(|peer| peer.alive && peer.has_room() && peer.id != local.id)
        .min_by(|left, right| peer_order(left, right));
    match best {
        Some(peer) if !local.has_room() || compare_ratio(peer.ratio(), local.ratio()).is_lt() => {
            Ok(PeerChoice::Peer(peer.id))
        }
        _ if local.has_room() => Ok(PeerChoice::Local),
        _ => Err(PlacementError::NoHealthyWorkers),
    }
}

/// Load ratio, then free slots descending, then id.
fn peer_order(left: &PeerLoad<'_>, right: &PeerLoad<'_>) -> Ordering {
    compare_ratio(left.ratio(), right.ratio())
        .then_with(|| {
            let free = |peer: &PeerLoad<'_>| peer.capacity.saturating_sub(peer.pending);
            free(right).cmp(&free(left))
        })
        .then_with(|| left.id.cmp(right.id))
}

#[cfg(test)]
mod tests;
