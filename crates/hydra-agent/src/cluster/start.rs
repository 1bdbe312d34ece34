//! Starting the mesh from the agent's configuration: the keyring and the UDP socket before
//! anything else (a bad key file or a taken port stops the agent at once, naming the key), then
//! the driver once the node knows its id.

use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::driver::{self, ClusterSettings, Discovery};
use super::member::{MemberId, MemberState};
use super::mesh::MeshSettings;
use super::seal::Keyring;
use crate::config::AgentConfig;
use crate::daemon::DaemonError;
use crate::http::AgentState;

/// The mesh's socket and keys, ready before enrolment.
#[derive(Debug)]
pub struct Prepared {
    socket: UdpSocket,
    keyring: Keyring,
}

/// Loads `cluster.key_file` and binds `cluster.advertise_addr:cluster.bind_port` (the address
/// detected when empty); `None` when the mesh is off.
pub async fn prepare(config: &AgentConfig) -> Result<Option<Prepared>, DaemonError> {
    let cluster = &config.cluster;
    if !cluster.enabled {
        return Ok(None);
    }
    let key_file = cluster
        .key_file
        .as_deref()
        .ok_or_else(|| DaemonError::Cluster("cluster.key_file is required".into()))?;
    let keyring =
        Keyring::load(key_file).map_err(|error| DaemonError::Cluster(error.to_string()))?;
    let advertise = match cluster.advertise_addr {
        Some(addr) => addr,
        None => detect_advertise_addr(config).await,
    };
    let bind = SocketAddr::new(advertise, cluster.bind_port);
    let socket = UdpSocket::bind(bind).await.map_err(|error| {
        DaemonError::Cluster(format!(
            "cannot bind cluster.advertise_addr:cluster.bind_port {bind}: {error}"
        ))
    })?;
    Ok(Some(Prepared { socket, keyring }))
}

/// The address the route to the first peer leaves from (no datagram is sent), else
/// `node.lan_ip`, else 127.0.0.1.
async fn detect_advertise_addr(config: &AgentConfig) -> IpAddr {
    let peers = driver::discover(&discovery(config), config.cluster.bind_port).await;
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
    config.node.lan_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn discovery(config: &AgentConfig) -> Discovery {
    match config.cluster.discovery_mode.as_str() {
        "dns" => Discovery::Dns(config.cluster.dns_service_name.clone().unwrap_or_default()),
        _ => Discovery::List(config.cluster.join_peers.clone()),
    }
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
    let Some(Prepared { socket, keyring }) = prepared else {
        return;
    };
    let Ok(addr) = socket.local_addr() else {
        return;
    };
    let node_id = config
        .cluster
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
        roles: config.node.roles.clone(),
        api_url: config.public_url(),
        pending: 0,
        capacity: 0,
        district: config.node.district.clone(),
        venue: config.node.venue.clone(),
        tag: config.cluster.tag.clone(),
    };
    let settings = ClusterSettings {
        id,
        state: published,
        discovery: discovery(config),
        port: config.cluster.bind_port,
        keyring,
        mesh: MeshSettings::default(),
    };
    let worker = state.worker().cloned();
    let load = move || match &worker {
        Some(worker) => (worker.active_sessions(), worker.max_sessions()),
        None => (0, 0),
    };
    let handle = state.cluster().clone();
    driver::run(socket, settings, handle, load, stop).await;
}
