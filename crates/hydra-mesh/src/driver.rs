//! The mesh on a real UDP socket: opens each datagram under the cluster keyring (dropping and
//! counting what fails), feeds the sans-IO [`Mesh`], seals what it sends, fires its timers,
//! publishes this node's load, and leaves gracefully (bounded) on shutdown. The HTTP route reads
//! a snapshot through [`ClusterHandle`], never the mesh itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hydra_api::cluster::{ClusterMember, ClusterStatus, DetectorCounts};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::member::{MemberId, MemberState};
use super::mesh::{Mesh, MeshEvent, MeshSettings};
use super::seal::{Keyring, Sealer};

/// How long a graceful leave may take at shutdown.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a node alone in its mesh asks its peers again (start order does not matter).
const REJOIN_EVERY: Duration = Duration::from_secs(5);
/// A DNS or host lookup of a peer gives up after this.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How peers are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// `cluster.join_peers`: `host:port` or a bare host (the mesh's port).
    List(Vec<String>),
    /// `cluster.dns_service_name`: every A/AAAA record is a peer.
    Dns(String),
    /// `server`: the members the control plane named in this node's config bundle
    /// ([`ClusterHandle::set_bundle_peers`]).
    Server,
}

/// What the driver runs with.
#[derive(Debug)]
pub struct ClusterSettings {
    /// This member's identity (its address is the advertised one).
    pub id: MemberId,
    /// The state it publishes (load is refreshed from the worker).
    pub state: MemberState,
    /// Where peers come from.
    pub discovery: Discovery,
    /// The mesh's port, for peers named without one.
    pub port: u16,
    /// The cluster keys.
    pub keyring: Keyring,
    /// Failure detector timing.
    pub mesh: MeshSettings,
}

/// What the HTTP route shows: a snapshot the driver refreshes, behind the narrowest lock; and
/// the membership changes as they happen, for whoever acts on them (the seam the server's
/// "dead nodes out of selection" and the captures' live members will use).
#[derive(Debug, Clone)]
pub struct ClusterHandle(
    Arc<Mutex<ClusterSnapshot>>,
    tokio::sync::broadcast::Sender<MeshEvent>,
    Arc<Control>,
);

/// What the rest of the node hands the running mesh: a new keyring (rotation, or the keys of a
/// config bundle) and the peers a bundle names.
#[derive(Debug)]
struct Control {
    keyring: tokio::sync::watch::Sender<Option<Keyring>>,
    bundle_peers: Mutex<Vec<SocketAddr>>,
}

/// What the server hands a node about the mesh in its config bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleOffer {
    /// The keys, 64 hex digits each, the sealing key first (a secret: never log it).
    pub keys: Vec<String>,
    /// The key ids, the sealing key first (public: what `GET /api/v1/cluster` shows).
    pub key_ids: Vec<String>,
    /// This member's address first, then a few live members'.
    pub peers: Vec<String>,
}

/// A plain snapshot of the mesh's counters (what `/metrics` renders; issue 13 owns that route).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshMetrics {
    /// Whether this node runs the mesh.
    pub enabled: bool,
    /// Other members alive, as seen here.
    pub members_alive: u64,
    /// Other members suspected.
    pub members_suspect: u64,
    /// Other members down (remembered a while).
    pub members_down: u64,
    /// Probe rounds run.
    pub probes: u64,
    /// Direct probes handed to others to probe indirectly.
    pub indirect_probes: u64,
    /// Suspicions started or learnt of.
    pub suspicions: u64,
    /// Members declared down.
    pub downs: u64,
    /// Datagrams dropped because their seal did not open (wrong or unknown key).
    pub dropped_bad_seal: u64,
    /// Datagrams dropped for any reason before parsing.
    pub dropped_total: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
}

impl MeshMetrics {
    /// Sets the `hydra_mesh_*` series of the process's recorder (rendered at `/metrics` by
    /// `hydra_proxy::metrics_text`, the same names on agents and servers). The driver calls it
    /// with each snapshot (every second), so a scrape is at most a second behind.
    pub fn record(&self) {
        if !self.enabled {
            return;
        }
        for (state, count) in [
            ("alive", self.members_alive),
            ("suspect", self.members_suspect),
            ("down", self.members_down),
        ] {
            metrics::gauge!("hydra_mesh_members", "state" => state).set(count as f64);
        }
        metrics::counter!("hydra_mesh_probes_total").absolute(self.probes);
        metrics::counter!("hydra_mesh_indirect_probes_total").absolute(self.indirect_probes);
        metrics::counter!("hydra_mesh_suspicions_total").absolute(self.suspicions);
        metrics::counter!("hydra_mesh_downs_total").absolute(self.downs);
        metrics::counter!("hydra_mesh_datagrams_dropped_bad_seal_total")
            .absolute(self.dropped_bad_seal);
        // Every reason (bad seal, too old, replayed, ...): what the agent's older
        // `hydra_agent_mesh_datagrams_dropped_total` counted, now on both daemons.
        metrics::counter!("hydra_mesh_datagrams_dropped_total").absolute(self.dropped_total);
        metrics::counter!("hydra_mesh_datagrams_sent_total").absolute(self.datagrams_sent);
        metrics::counter!("hydra_mesh_datagrams_received_total").absolute(self.datagrams_received);
    }
}

/// Membership changes kept for a slow subscriber before it starts missing some (it then sees
/// `Lagged` and should re-read [`ClusterHandle::status`]).
const EVENTS_KEPT: usize = 1_024;

#[derive(Debug, Clone)]
struct ClusterSnapshot {
    status: ClusterStatus,
    members: Vec<ClusterMember>,
    live: Vec<MemberState>,
}

impl Default for ClusterHandle {
    fn default() -> Self {
        ClusterHandle(
            Arc::new(Mutex::new(ClusterSnapshot {
                status: ClusterStatus {
                    enabled: false,
                    node_id: None,
                    addr: None,
                    generation: None,
                    key_ids: Vec::new(),
                    members_by_state: BTreeMap::new(),
                    dropped: BTreeMap::new(),
                    datagrams_sent: 0,
                    datagrams_received: 0,
                    detector: DetectorCounts::default(),
                    members: None,
                },
                members: Vec::new(),
                live: Vec::new(),
            })),
            tokio::sync::broadcast::channel(EVENTS_KEPT).0,
            Arc::new(Control {
                keyring: tokio::sync::watch::channel(None).0,
                bundle_peers: Mutex::new(Vec::new()),
            }),
        )
    }
}

impl ClusterHandle {
    /// The mesh as this node sees it; `detailed` adds each member.
    pub fn status(&self, detailed: bool) -> ClusterStatus {
        let snapshot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut status = snapshot.status.clone();
        status.members = detailed.then(|| snapshot.members.clone());
        status
    }

    /// The published state of every live member (for the best-peer rule).
    pub fn live_members(&self) -> Vec<MemberState> {
        let snapshot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        snapshot.live.clone()
    }

    /// The mesh's counters as plain numbers, for a metrics exporter (`/metrics`) to render.
    pub fn metrics(&self) -> MeshMetrics {
        let status = self.status(false);
        let by_state = |state: &str| status.members_by_state.get(state).copied().unwrap_or(0);
        MeshMetrics {
            enabled: status.enabled,
            members_alive: by_state("alive"),
            members_suspect: by_state("suspect"),
            members_down: by_state("down"),
            probes: status.detector.probes,
            indirect_probes: status.detector.indirect_probes,
            suspicions: status.detector.suspicions,
            downs: status.detector.downs,
            dropped_bad_seal: status.dropped.get("bad_seal").copied().unwrap_or(0)
                + status.dropped.get("unknown_key").copied().unwrap_or(0),
            dropped_total: status.dropped.values().sum(),
            datagrams_sent: status.datagrams_sent,
            datagrams_received: status.datagrams_received,
        }
    }

    /// Hands the mesh a new keyring (the first key seals, all open); a running mesh uses it
    /// from its next datagram, one still waiting for keys starts with it. The same keys again
    /// change nothing.
    pub fn set_keyring(&self, keyring: Keyring) {
        self.2.keyring.send_if_modified(|current| {
            if current
                .as_ref()
                .is_some_and(|known| known.key_ids() == keyring.key_ids())
            {
                return false;
            }
            *current = Some(keyring);
            true
        });
    }

    /// The keyring in use (or handed over), if any.
    pub fn keyring(&self) -> Option<Keyring> {
        self.2.keyring.borrow().clone()
    }

    /// Waits until a keyring was handed over; `None` when `stop` comes first.
    pub async fn wait_keyring(&self, stop: &CancellationToken) -> Option<Keyring> {
        let mut keys = self.2.keyring.subscribe();
        tokio::select! {
            () = stop.cancelled() => None,
            found = keys.wait_for(Option::is_some) => found.ok().and_then(|keyring| keyring.clone()),
        }
    }

    /// The peers a config bundle named (`discovery_mode: server`); the mesh joins them when it
    /// starts or finds itself alone.
    pub fn set_bundle_peers(&self, peers: Vec<SocketAddr>) {
        *self
            .2
            .bundle_peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = peers;
    }

    fn bundle_peers(&self) -> Vec<SocketAddr> {
        self.2
            .bundle_peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What the server hands `node_id` in its bundle: the keys in use, this member's address
    /// and up to `few` other live members' (not `node_id` itself); `None` while the mesh does
    /// not run here.
    pub fn bundle_offer(&self, node_id: &str, few: usize) -> Option<BundleOffer> {
        let keyring = self.keyring()?;
        let snapshot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let own = snapshot.status.addr.clone()?;
        let mut peers = vec![own];
        peers.extend(
            snapshot
                .members
                .iter()
                .filter(|member| member.state == "alive" && member.node_id != node_id)
                .take(few)
                .map(|member| member.addr.clone()),
        );
        Some(BundleOffer {
            keys: keyring.to_hex(),
            key_ids: keyring.key_ids().iter().map(ToString::to_string).collect(),
            peers,
        })
    }

    /// Membership changes from now on (up, down, this node declared down or rejoined).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MeshEvent> {
        self.1.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut ClusterSnapshot)) {
        let mut snapshot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut snapshot);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// The peers' addresses now (a lookup that fails or times out gives none, logged).
pub async fn discover(discovery: &Discovery, port: u16) -> Vec<SocketAddr> {
    let names: Vec<String> = match discovery {
        Discovery::List(peers) => peers
            .iter()
            .map(|peer| {
                if peer.parse::<SocketAddr>().is_ok()
                    || peer.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.contains(':') && port.parse::<u16>().is_ok()
                    })
                {
                    peer.clone()
                } else {
                    format!(
                        "{}:{port}",
                        peer.trim_start_matches('[').trim_end_matches(']')
                    )
                }
            })
            .collect(),
        Discovery::Dns(name) => vec![format!("{name}:{port}")],
        // Named by the bundle as addresses: nothing to look up.
        Discovery::Server => Vec::new(),
    };
    let mut found = Vec::new();
    for name in names {
        match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name.as_str())).await {
            Ok(Ok(addrs)) => found.extend(addrs),
            Ok(Err(error)) => tracing::warn!(peer = %name, %error, "[mesh] peer lookup failed"),
            Err(_) => tracing::warn!(peer = %name, "[mesh] peer lookup timed out"),
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Counters the driver keeps beside the mesh's.
#[derive(Debug, Default)]
struct Traffic {
    dropped: BTreeMap<String, u64>,
    sent: u64,
    received: u64,
}

/// Runs the mesh on `socket` until `shutdown`, then leaves (bounded by [`LEAVE_TIMEOUT`]).
/// `load` gives this node's pending sessions and capacity.
pub async fn run(
    socket: UdpSocket,
    settings: ClusterSettings,
    handle: ClusterHandle,
    load: impl Fn() -> (u32, u32) + Send,
    shutdown: CancellationToken,
) {
    let ClusterSettings {
        id,
        mut state,
        discovery,
        port,
        keyring,
        mesh: mesh_settings,
    } = settings;
    (state.pending, state.capacity) = load();
    let rng: rand_foca::rngs::StdRng = rand_foca::make_rng();
    let mut mesh = Mesh::new(id.clone(), state, mesh_settings, rng, now_ms());
    handle.set_keyring(keyring.clone());
    let mut keyrings = handle.2.keyring.subscribe();
    keyrings.mark_unchanged();
    let mut sealer = Sealer::new(keyring);
    let mut traffic = Traffic::default();
    tracing::info!(node_id = %id.node_id, addr = %id.addr, generation = id.generation, key_ids = %key_ids(sealer.keyring()), "[mesh] joining the mesh");
    for peer in peers(&discovery, port, &handle).await {
        mesh.join(peer, now_ms());
    }
    let mut buffer = vec![0u8; 65_536];
    let mut rejoin = tokio::time::interval(REJOIN_EVERY);
    rejoin.tick().await;
    let mut last_snapshot = i64::MIN;
    loop {
        flush(&mut mesh, &mut sealer, &socket, &mut traffic).await;
        let changed = log_events(&mut mesh, &handle);
        let now = now_ms();
        if changed || now.saturating_sub(last_snapshot) >= 1_000 {
            publish_snapshot(&handle, &mesh, &sealer, &traffic);
            last_snapshot = now;
        }
        let wait = Duration::from_millis(
            u64::try_from(mesh.poll_timeout().saturating_sub(now).clamp(0, 1_000)).unwrap_or(0),
        );
        tokio::select! {
            () = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buffer) => {
                let Ok((length, _from)) = received else { continue };
                traffic.received += 1;
                match sealer.open(&buffer[..length], now_ms()) {
                    Ok(payload) => mesh.handle_datagram(&payload, now_ms()),
                    Err(error) => *traffic.dropped.entry(error.reason().to_owned()).or_default() += 1,
                }
            }
            () = tokio::time::sleep(wait) => {
                let (pending, capacity) = load();
                mesh.set_load(pending, capacity, now_ms());
                mesh.handle_timeout(now_ms());
            }
            _ = rejoin.tick() => {
                if mesh.num_members() == 0 {
                    for peer in peers(&discovery, port, &handle).await {
                        mesh.join(peer, now_ms());
                    }
                }
            }
            Ok(()) = keyrings.changed() => {
                let replaced = keyrings.borrow_and_update().clone();
                if let Some(keyring) = replaced {
                    tracing::info!(key_ids = %key_ids(&keyring), "[mesh] cluster keys replaced");
                    sealer.set_keyring(keyring);
                    publish_snapshot(&handle, &mesh, &sealer, &traffic);
                }
            }
        }
    }
    mesh.leave(now_ms());
    let left = tokio::time::timeout(
        LEAVE_TIMEOUT,
        flush(&mut mesh, &mut sealer, &socket, &mut traffic),
    )
    .await;
    tracing::info!(
        members = mesh.num_members(),
        bounded_out = left.is_err(),
        "[mesh] left the mesh"
    );
    handle.update(|snapshot| snapshot.live.clear());
}

/// The peers to join: discovered, or those the bundle named.
async fn peers(discovery: &Discovery, port: u16, handle: &ClusterHandle) -> Vec<SocketAddr> {
    match discovery {
        Discovery::Server => handle.bundle_peers(),
        other => discover(other, port).await,
    }
}

/// The key ids, the sealing key first, comma-separated (public; the keys never are).
fn key_ids(keyring: &Keyring) -> String {
    keyring
        .key_ids()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

async fn flush(mesh: &mut Mesh, sealer: &mut Sealer, socket: &UdpSocket, traffic: &mut Traffic) {
    while let Some((to, payload)) = mesh.poll_transmit() {
        let datagram = sealer.seal(&payload, now_ms());
        // A send that fails is a lost datagram: SWIM is built for those.
        if socket.send_to(&datagram, to).await.is_ok() {
            traffic.sent += 1;
        }
    }
}

/// Logs membership changes and hands them to subscribers; answers whether there was any.
fn log_events(mesh: &mut Mesh, handle: &ClusterHandle) -> bool {
    let mut any = false;
    while let Some(event) = mesh.poll_event() {
        any = true;
        // No subscriber is not an error: nobody acts on membership on this node.
        let _no_subscriber = handle.1.send(event.clone());
        match event {
            MeshEvent::Up(id) => {
                tracing::info!(node_id = %id.node_id, addr = %id.addr, generation = id.generation, "[mesh] member up")
            }
            MeshEvent::Down(id) => {
                tracing::warn!(node_id = %id.node_id, addr = %id.addr, generation = id.generation, "[mesh] member down")
            }
            MeshEvent::DeclaredDown => {
                tracing::warn!("[mesh] the mesh declared this node down; rejoining")
            }
            MeshEvent::Rejoined(id) => tracing::info!(
                generation = id.generation,
                "[mesh] rejoined under a renewed identity"
            ),
        }
    }
    any
}

fn publish_snapshot(handle: &ClusterHandle, mesh: &Mesh, sealer: &Sealer, traffic: &Traffic) {
    let views = mesh.members();
    let mut by_state: BTreeMap<String, u64> = ["alive", "suspect", "down"]
        .into_iter()
        .map(|state| (state.to_owned(), 0))
        .collect();
    let mut live = Vec::new();
    let members = views
        .into_iter()
        .map(|view| {
            *by_state.entry(view.state.to_owned()).or_default() += 1;
            let published = view.published;
            if view.state == "alive" {
                live.extend(published.clone());
            }
            ClusterMember {
                node_id: view.id.node_id,
                addr: view.id.addr.to_string(),
                generation: view.id.generation,
                state: view.state.to_owned(),
                incarnation: view.incarnation,
                last_change: view.last_change_ms.map(hydra_api::rfc3339),
                roles: published
                    .as_ref()
                    .map(|state| state.roles.clone())
                    .unwrap_or_default(),
                api_url: published.as_ref().map(|state| state.api_url.clone()),
                pending: published.as_ref().map(|state| state.pending),
                capacity: published.as_ref().map(|state| state.capacity),
                district: published.as_ref().map(|state| state.district.clone()),
                venue: published.as_ref().map(|state| state.venue.clone()),
                tag: published.and_then(|state| state.tag),
            }
        })
        .collect();
    let identity = mesh.identity();
    let status = ClusterStatus {
        enabled: true,
        node_id: Some(identity.node_id.clone()),
        addr: Some(identity.addr.to_string()),
        generation: Some(identity.generation),
        key_ids: sealer
            .keyring()
            .key_ids()
            .iter()
            .map(ToString::to_string)
            .collect(),
        members_by_state: by_state,
        dropped: traffic.dropped.clone(),
        datagrams_sent: traffic.sent,
        datagrams_received: traffic.received,
        detector: {
            let counters = mesh.counters();
            DetectorCounts {
                probes: counters.probes,
                indirect_probes: counters.indirect_probes,
                suspicions: counters.suspicions,
                downs: counters.downs,
            }
        },
        members: None,
    };
    handle.update(|snapshot| {
        snapshot.status = status;
        snapshot.members = members;
        snapshot.live = live;
    });
    handle.metrics().record();
}
