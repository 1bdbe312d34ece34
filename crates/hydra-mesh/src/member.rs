//! Who a member of the mesh is (its foca identity, with a generation so a restarted node
//! rejoins cleanly) and what it gossips about itself (its coarse state, a custom broadcast).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A member's identity in foca. Two identities with the same address are the same member in
/// different lives: the higher generation wins, so a node restarted on the same address
/// replaces its old self at once instead of waiting for it to be declared down.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    /// The address its datagrams come from and go to (`cluster.advertise_addr`:`bind_port`).
    pub addr: SocketAddr,
    /// The node id (`cluster.node_id`); empty in the placeholder a join is sent to.
    pub node_id: String,
    /// Unix milliseconds at start, bumped when foca renews the identity after a false down.
    pub generation: u64,
}

impl MemberId {
    /// The identity a join is announced to: only the address is known (foca accepts an
    /// announce addressed to any identity with its address).
    pub fn placeholder(addr: SocketAddr) -> MemberId {
        MemberId {
            addr,
            node_id: String::new(),
            generation: 0,
        }
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.node_id, self.addr, self.generation)
    }
}

impl foca::Identity for MemberId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(MemberId {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// What each member publishes about itself, re-broadcast when it changes and every few
/// seconds. Coarse on purpose: the control plane still gets exact load from heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// The node id.
    pub node_id: String,
    /// The publisher's identity generation; a newer life's state replaces an older one's.
    pub generation: u64,
    /// Grows with every publication of this life.
    pub version: u64,
    /// Roles: body, worker, head, server.
    pub roles: Vec<String>,
    /// Where its HTTP API answers.
    pub api_url: String,
    /// Sessions running plus starting.
    pub pending: u32,
    /// Sessions it may run at most.
    pub capacity: u32,
    /// District.
    pub district: String,
    /// Venue.
    pub venue: String,
    /// An optional operator tag.
    pub tag: Option<String>,
}

/// The broadcast's key: which publication of whose state it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKey {
    node_id: String,
    generation: u64,
    version: u64,
}

impl foca::Invalidates for StateKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node_id == other.node_id
            && (self.generation, self.version) > (other.generation, other.version)
    }
}

/// Why a broadcast was refused.
#[derive(Debug, thiserror::Error)]
#[error("member state broadcast does not decode: {0}")]
pub struct BadBroadcast(String);

/// Keeps the newest state each member published; foca hands it every custom broadcast.
#[derive(Debug, Default)]
pub struct StateBook {
    states: HashMap<String, MemberState>,
    /// Broadcasts that did not decode (a member of another version, or a bug).
    pub undecodable: u64,
}

impl StateBook {
    /// The newest state `node_id` published, if any.
    pub fn get(&self, node_id: &str) -> Option<&MemberState> {
        self.states.get(node_id)
    }

    /// Forgets the states of nodes `keep` says are gone (bounds memory to the membership).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.states.retain(|node_id, _| keep(node_id));
    }
}

/// The book as foca's broadcast handler; the mesh keeps another handle to read it (foca does
/// not lend its handler back).
#[derive(Debug, Clone, Default)]
pub struct SharedBook(pub std::sync::Arc<std::sync::Mutex<StateBook>>);

impl SharedBook {
    /// Locks the book (never held across an await; a poisoned lock is still a valid book).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, StateBook> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl foca::BroadcastHandler<MemberId> for SharedBook {
    type Key = StateKey;
    type Error = BadBroadcast;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&MemberId>,
    ) -> Result<Option<StateKey>, BadBroadcast> {
        self.lock().receive(data, sender)
    }
}

impl StateBook {
    /// Takes a state sent straight to this node (not re-disseminated).
    pub fn receive_direct(&mut self, data: &[u8]) -> Result<(), BadBroadcast> {
        self.receive(data, None).map(|_| ())
    }

    /// Takes a state sent straight to this node, already decoded (not re-disseminated).
    pub fn receive_state(&mut self, state: MemberState) {
        let _newer = self.keep_if_newer(state);
    }

    fn receive(
        &mut self,
        data: &[u8],
        _sender: Option<&MemberId>,
    ) -> Result<Option<StateKey>, BadBroadcast> {
        let state: MemberState = postcard::from_bytes(data).map_err(|error| {
            self.undecodable += 1;
            BadBroadcast(error.to_string())
        })?;
        Ok(self.keep_if_newer(state))
    }

    /// Keeps `state` when it is newer than the one known; answers its broadcast key then.
    fn keep_if_newer(&mut self, state: MemberState) -> Option<StateKey> {
        let newer = self.states.get(&state.node_id).is_none_or(|known| {
            (state.generation, state.version) > (known.generation, known.version)
        });
        if !newer {
            return None;
        }
        let key = StateKey {
            node_id: state.node_id.clone(),
            generation: state.generation,
            version: state.version,
        };
        self.states.insert(state.node_id.clone(), state);
        Some(key)
    }
}
