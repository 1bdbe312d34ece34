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
    /// `None` without `cluster.key_file`: the keys come from the config bundle.
    keyring: Option<Keyring>,
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
    let keyring = match section.key_file.as_deref() {
        Some(key_file) => {
            Some(Keyring::load(key_file).map_err(|error| StartError(error.to_string()))?)
        }
        // `ClusterSection::validate` allows it only where a bundle brings the keys.
        None => None,
    };
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
    // Keys a bundle already handed over win over the key file, as a bundle wins over the YAML.
    let keyring = match handle.keyring().or(keyring) {
        Some(keyring) => keyring,
        None => {
            tracing::info!("[mesh] waiting for the cluster keys from the config bundle");
            match handle.wait_keyring(&stop).await {
                Some(keyring) => keyring,
                None => return,
            }
        }
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
    let reload = watch_key_file(section.key_file.clone(), handle.clone(), stop.clone());
    tokio::join!(driver::run(socket, settings, handle, load, stop), reload);
}

/// How often `cluster.key_file` is checked for a change.
pub const KEY_FILE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Re-reads `cluster.key_file` when its modification time or size changes and hands the new
/// keyring to the mesh (rotation without a restart: add the new key, then put it first, then
/// remove the old one). A file that does not load is logged (without its content) and the keys
/// in use stay.
async fn watch_key_file(
    key_file: Option<std::path::PathBuf>,
    handle: ClusterHandle,
    stop: CancellationToken,
) {
    let Some(key_file) = key_file else {
        return;
    };
    let stamp = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .map(|metadata| (metadata.modified().ok(), metadata.len()))
    };
    let mut seen = stamp(&key_file);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(KEY_FILE_CHECK) => {}
        }
        let now = stamp(&key_file);
        if now == seen {
            continue;
        }
        seen = now;
        match Keyring::load(&key_file) {
            Ok(keyring) => handle.set_keyring(keyring),
            Err(error) => {
                tracing::error!(%error, "[mesh] cluster.key_file changed but does not load; keeping the keys in use");
            }
        }
    }
}
