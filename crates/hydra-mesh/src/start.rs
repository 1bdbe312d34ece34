//! Starting the mesh from a `cluster:` section: the keyring and the UDP socket first (a bad key
//! file or a taken port stops the daemon at once, naming the key), then the driver once the node
//! knows its id. The agent and the server both start it this way.

use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterSection;
use crate::driver::{self, ClusterHandle, ClusterSettings};
use crate::member::{MemberId, MemberState};
use crate::mesh::MeshSettings;
use crate::seal::Keyring;

/// Why the mesh cannot start; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// The mesh's socket and keys, ready before the node knows its id.
#[derive(Debug)]
pub struct Prepared {
    socket: UdpSocket,
    keyring: Keyring,
}

impl Prepared {
    /// The address the socket is bound to (the advertised one).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }
}

/// Loads `cluster.key_file` and binds `cluster.advertise_addr:cluster.bind_port` (detected when
/// empty: the address the route to the first peer leaves from, else `fallback_ip`, else
/// 127.0.0.1); `None` when the mesh is off.
pub async fn prepare(
    section: &ClusterSection,
    fallback_ip: Option<IpAddr>,
) -> Result<Option<Prepared>, StartError> {
    if !section.enabled {
        return Ok(None);
    }
    let key_file = section
        .key_file
        .as_deref()
        .ok_or_else(|| StartError("cluster.key_file is required".into()))?;
    let keyring = Keyring::load(key_file).map_err(|error| StartError(error.to_string()))?;
    let advertise = match section.advertise_addr {
        Some(addr) => addr,
        None => detect_advertise_addr(section, fallback_ip).await,
    };
    let bind = SocketAddr::new(advertise, section.bind_port);
    let socket = UdpSocket::bind(bind).await.map_err(|error| {
        StartError(format!(
            "cannot bind cluster.advertise_addr:cluster.bind_port {bind}: {error}"
        ))
    })?;
    Ok(Some(Prepared { socket, keyring }))
}

/// The address the route to the first peer leaves from (no datagram is sent), else
/// `fallback_ip`, else 127.0.0.1.
async fn detect_advertise_addr(section: &ClusterSection, fallback_ip: Option<IpAddr>) -> IpAddr {
    let peers = driver::discover(&section.discovery(), section.bind_port).await;
    if let Some(peer) = peers.first() {
        let unspecified: SocketAddr = if peer.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        if let Ok(probe) = UdpSocket::bind(unspecified).await
            && probe.connect(peer).await.is_ok()
            && let Ok(local) = probe.local_addr()
        {
            return local.ip();
        }
    }
    fallback_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// What a node publishes about itself besides its load.
#[derive(Debug, Clone, Default)]
pub struct Publication {
    /// Roles: body, worker, head, server.
    pub roles: Vec<String>,
    /// Where its HTTP API answers.
    pub api_url: String,
    /// District.
    pub district: String,
    /// Venue.
    pub venue: String,
}

/// Runs the mesh until `stop` (nothing when it is off), as `cluster.node_id` or else
/// `node_id`, publishing `publication` and the load `load` gives (pending, capacity).
pub async fn run(
    prepared: Option<Prepared>,
    section: &ClusterSection,
    node_id: String,
    publication: Publication,
    handle: ClusterHandle,
    load: impl Fn() -> (u32, u32) + Send,
    stop: CancellationToken,
) {
    let Some(Prepared { socket, keyring }) = prepared else {
        return;
    };
    let Ok(addr) = socket.local_addr() else {
        return;
    };
    let node_id = section
        .node_id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or(node_id);
    let generation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| u64::try_from(since.as_millis()).unwrap_or(1));
    let id = MemberId {
        addr,
        node_id: node_id.clone(),
        generation,
    };
    let published = MemberState {
        node_id,
        generation,
        version: 0,
        roles: publication.roles,
        api_url: publication.api_url,
        pending: 0,
        capacity: 0,
        district: publication.district,
        venue: publication.venue,
        tag: section.tag.clone(),
    };
    let settings = ClusterSettings {
        id,
        state: published,
        discovery: section.discovery(),
        port: section.bind_port,
        keyring,
        mesh: MeshSettings::default(),
    };
    driver::run(socket, settings, handle, load, stop).await;
}
