//! `hydra demo`: a control plane on SQLite in a temp dir and a simulated fleet in this process
//! (two districts, several venues, stand-in bodies listening on loopback addresses, heads that
//! run the real discovery every few seconds) plus two real `hydra agent` workers whose sessions
//! are the stand-in session process, with chaos every cycle: a body in use dies and its head
//! fails over, a venue is parked in a spare district and comes back, a session is placed and
//! ended. Once both workers' agents are known it starts a fan-out capture of their monitor
//! feeds, so the dashboard's captures panel has real data. Ctrl-C stops everything it started
//! and removes the temp dir.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hydra_api::captures::{CreateCaptureRequest, MonitorFilters, capture_limits};
use hydra_api::{CreateSessionRequest, EnrolRequest, HeartbeatRequest, MoveRequest, RoleWire};
use hydra_client::discovery::{Discoverer, DiscoveryOptions};
use hydra_client::{Client, ClientConfig};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::output::print;

mod workers;
use workers::{session_command, start_workers, stop_workers};

/// Options of `hydra demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo's control plane (API and dashboard) listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Seed of the chaos: the same seed makes the same things happen in the same order.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the fleet still: no body dies, no venue is parked.
    #[arg(long)]
    no_chaos: bool,
    /// Seconds between two chaos events (heads rediscover at twice this rate).
    #[arg(long, value_name = "SECONDS", default_value_t = 6)]
    cycle: u64,
}

/// Seconds without a heartbeat before a node is offline, short so the page moves.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(6);
/// How often every live node heartbeats.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// The loopback block the stand-in bodies listen in (one address per body).
const BODY_NET: [u8; 2] = [127, 77];

/// The simulated fleet: (district, venue, bodies, heads).
const LAYOUT: [(&str, &str, usize, usize); 5] = [
    ("bxl1", "rupelmonde", 2, 1),
    ("bxl1", "cloud-seven", 1, 0),
    ("bxl1", "ghent", 1, 1),
    ("ams1", "zuid", 2, 1),
    ("ams1", "noord", 1, 0),
];

struct Body {
    id: String,
    district: String,
    venue: String,
    address: SocketAddr,
    /// The stand-in streaming listener, while the body is alive.
    listener: Option<JoinHandle<()>>,
}

/// Runs the demo until Ctrl-C (or SIGTERM).
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("hydra-demo.{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the demo dir {}", dir.display()))?;
    let outcome = run_in(&args, &dir).await;
    let removed = std::fs::remove_dir_all(&dir);
    match removed {
        Ok(()) => print(&format!("[demo] stopped; removed {}\n", dir.display())),
        Err(error) => print(&format!(
            "[demo] stopped; cannot remove {}: {error}\n",
            dir.display()
        )),
    }
    outcome
}

async fn run_in(args: &DemoArgs, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| rand::rng().next_u64());
    let store = hydra_store::Store::open_sqlite(&dir.join("hydra.db"))
        .await
        .context("cannot open the demo's SQLite store")?;
    let admin_token = hydra_server::auth::generate_token("hya_");
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let bound = listener.local_addr().context("listening address")?;
    let url = format!("http://{bound}");
    let settings = hydra_server::Settings {
        heartbeat_timeout: HEARTBEAT_TIMEOUT,
        public_url: url.clone(),
        // The demo's workers are agents on this machine's loopback.
        agent_url_hosts: vec!["127.0.0.1".to_owned()],
        ..hydra_server::Settings::default()
    };
    let state = hydra_server::AppState::new(store.clone(), settings, &admin_token)
        .await
        .context("cannot start the demo's control plane")?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(hydra_server::serve(listener, state, shutdown.clone()));
    let client = Client::new(ClientConfig::new([url.clone()]).with_token(admin_token.clone()))
        .context("demo client")?;

    let outcome = simulate(args, seed, &client, &url, &admin_token, dir, &shutdown).await;
    shutdown.cancel();
    let _ = server.await;
    store.close().await;
    outcome.map(|()| ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
async fn simulate(
    args: &DemoArgs,
    seed: u64,
    client: &Client,
    url: &str,
    admin_token: &str,
    dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Every body listens on the same port of its own loopback address, as real bodies do on
    // 47990 of their own LAN address; the port is whatever the first one got.
    let mut bodies: Vec<Body> = Vec::new();
    let mut heads: Vec<String> = Vec::new();
    let mut port = 0u16;
    let mut host = 0u8;
    for (district, venue, body_count, head_count) in LAYOUT {
        for index in 1..=body_count {
            host += 1;
            let ip = IpAddr::V4(Ipv4Addr::new(BODY_NET[0], BODY_NET[1], 0, host));
            let id = format!("b-{venue}-{index}");
            let (listener, address) = listen_as_body(ip, port).await?;
            port = address.port();
            enrol(client, &id, RoleWire::Body, district, venue, Some(ip)).await?;
            bodies.push(Body {
                id,
                district: district.to_owned(),
                venue: venue.to_owned(),
                address,
                listener: Some(listener),
            });
        }
        for index in 1..=head_count {
            let id = format!("h-{venue}-{index}");
            enrol(client, &id, RoleWire::Head, district, venue, None).await?;
            heads.push(id);
        }
    }
    print(&format!(
        "[demo] dashboard: {url}/\n[demo] admin token: {admin_token}\n[demo] data dir: {}\n\
         [demo] seed {seed}{}; {} bodies and {} heads in 2 districts; Ctrl-C stops it\n",
        dir.display(),
        if args.no_chaos { ", no chaos" } else { "" },
        bodies.len(),
        heads.len()
    ));

    let mut workers = start_workers(url, admin_token, dir, port, &session_command()?).await?;
    let outcome = run_fleet(
        args,
        seed,
        client,
        shutdown,
        &mut bodies,
        &heads,
        port,
        !workers.is_empty(),
    )
    .await;
    stop_workers(&mut workers).await;
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn run_fleet(
    args: &DemoArgs,
    seed: u64,
    client: &Client,
    shutdown: &CancellationToken,
    bodies: &mut [Body],
    heads: &[String],
    port: u16,
    with_workers: bool,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let discoverer = Discoverer::new(
        client.clone(),
        DiscoveryOptions {
            port,
            ..DiscoveryOptions::default()
        },
    );
    let mut routes: HashMap<String, String> = HashMap::new();
    let mut heartbeat_tick = tokio::time::interval(HEARTBEAT_EVERY);
    let mut discovery_tick = tokio::time::interval(Duration::from_secs(args.cycle.max(2) / 2));
    let mut chaos_tick = tokio::time::interval(Duration::from_secs(args.cycle.max(2)));
    chaos_tick.tick().await;
    let mut parked: Option<(String, String)> = None;
    let mut session: Option<String> = None;
    // The demo's capture, once started (it runs as long as the demo); not before the first
    // chaos cycles have played out, so their failover is not slowed by the capture's writes.
    let mut capture: Option<String> = None;
    let capture_after = tokio::time::Instant::now() + Duration::from_secs(args.cycle.max(2) * 2);
    let mut cycle = 0u64;
    // A signal stops the fleet first, the control plane after it (the caller cancels
    // `shutdown` once this returns): the capture is stopped and the agents' last reports land
    // while the server still answers.
    let stop = CancellationToken::new();
    tokio::spawn(hydra_proxy::signals::stop_on_signal(
        stop.clone(),
        "[demo] stopping: ending the fleet, the control plane and removing the data dir",
    ));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = shutdown.cancelled() => break,
            _ = heartbeat_tick.tick() => {
                heartbeat_all(client, bodies, heads).await;
                if with_workers && capture.is_none() && tokio::time::Instant::now() >= capture_after {
                    capture = start_capture(client).await;
                }
            }
            _ = discovery_tick.tick() => discover_all(&discoverer, heads, &mut routes).await,
            _ = chaos_tick.tick(), if !args.no_chaos => {
                cycle += 1;
                if cycle.is_multiple_of(3) {
                    if with_workers {
                        session_chaos(client, heads, &mut session).await;
                    }
                } else {
                    chaos(client, cycle, &mut rng, bodies, &routes, &mut parked).await;
                }
            }
        }
    }
    // The capture's writers hold a monitor stream open on each agent: stopped first, so an agent
    // does not wait on it while shutting down.
    if let Some(id) = capture
        && let Err(error) = client.stop_capture(&id).await
    {
        tracing::warn!(%error, capture_id = %id, "[demo] cannot stop the capture");
    }
    for body in bodies.iter_mut() {
        if let Some(listener) = body.listener.take() {
            listener.abort();
        }
    }
    Ok(())
}

/// A stand-in streaming listener on `ip:port` (port 0: any): accepts and closes connections,
/// which is all a head's probe needs.
async fn listen_as_body(ip: IpAddr, port: u16) -> anyhow::Result<(JoinHandle<()>, SocketAddr)> {
    let listener = TcpListener::bind((ip, port))
        .await
        .with_context(|| format!("cannot listen as a body on {ip}:{port}"))?;
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    Ok((task, address))
}

async fn enrol(
    client: &Client,
    id: &str,
    role: RoleWire,
    district: &str,
    venue: &str,
    lan_ip: Option<IpAddr>,
) -> anyhow::Result<()> {
    client
        .enrol(&EnrolRequest {
            id: Some(id.to_owned()),
            roles: vec![role],
            district: district.to_owned(),
            venue: venue.to_owned(),
            owner: "acme".to_owned(),
            lan_ip,
            vram_mb: lan_ip.map(|_| 16_384),
            ..EnrolRequest::default()
        })
        .await
        .with_context(|| format!("cannot enrol {id}"))?;
    Ok(())
}

/// Every live body and every head heartbeats; a dead body stays silent and turns offline.
async fn heartbeat_all(client: &Client, bodies: &[Body], heads: &[String]) {
    let alive = bodies
        .iter()
        .filter(|body| body.listener.is_some())
        .map(|body| body.id.as_str());
    for id in alive.chain(heads.iter().map(String::as_str)) {
        let request = HeartbeatRequest {
            idle: true,
            ..HeartbeatRequest::default()
        };
        if let Err(error) = client.heartbeat(id, &request).await {
            tracing::warn!(node = id, %error, "[demo] heartbeat failed");
        }
    }
}

/// Each head runs the real discovery (eligible list, probes, `unreachable=` second ask) and
/// says when its body changed.
async fn discover_all(
    discoverer: &Discoverer,
    heads: &[String],
    routes: &mut HashMap<String, String>,
) {
    for head in heads {
        match discoverer.discover(head).await {
            Ok(found) => {
                let body = found.route.body_id.clone();
                match routes.insert(head.clone(), body.clone()) {
                    None => print(&format!(
                        "[demo] head {head} streams from {body} ({}, {})\n",
                        found.policy, found.route.ip
                    )),
                    Some(before) if before != body => print(&format!(
                        "[demo] failover: head {head} from {before} to {body} ({}, {})\n",
                        found.policy, found.route.ip
                    )),
                    Some(_) => {}
                }
            }
            Err(error) => {
                if routes.remove(head).is_some() {
                    print(&format!("[demo] head {head} has no body: {error}\n"));
                }
            }
        }
    }
}

/// One chaos event: cycles 1, 4, 7, ... kill a body some head streams from (and revive the
/// dead); cycles 2, 5, 8, ... park a venue in its district's spare `-test` district (or bring
/// back the parked one).
async fn chaos(
    client: &Client,
    cycle: u64,
    rng: &mut StdRng,
    bodies: &mut [Body],
    routes: &HashMap<String, String>,
    parked: &mut Option<(String, String)>,
) {
    if cycle % 3 == 1 {
        for body in bodies.iter_mut().filter(|body| body.listener.is_none()) {
            match listen_as_body(body.address.ip(), body.address.port()).await {
                Ok((listener, _)) => {
                    body.listener = Some(listener);
                    print(&format!("[demo] chaos: body {} is back\n", body.id));
                }
                Err(error) => tracing::warn!(body = %body.id, %error, "[demo] cannot revive"),
            }
        }
        let mut in_use: Vec<&String> = routes.values().collect();
        in_use.sort();
        in_use.dedup();
        if in_use.is_empty() {
            return;
        }
        let victim = in_use[(rng.next_u32() as usize) % in_use.len()].clone();
        if let Some(body) = bodies.iter_mut().find(|body| body.id == victim)
            && let Some(listener) = body.listener.take()
        {
            listener.abort();
            print(&format!(
                "[demo] chaos: body {} dies (its listener closes, its heartbeats stop)\n",
                body.id
            ));
        }
        return;
    }
    if let Some((district, venue)) = parked.take() {
        move_venue(client, bodies, &district, &venue, &district).await;
        print(&format!(
            "[demo] chaos: venue {venue} is back in {district}\n"
        ));
        return;
    }
    let mut venues: Vec<(String, String)> = bodies
        .iter()
        .map(|body| (body.district.clone(), body.venue.clone()))
        .collect();
    venues.sort();
    venues.dedup();
    let (district, venue) = venues[(rng.next_u32() as usize) % venues.len()].clone();
    move_venue(
        client,
        bodies,
        &district,
        &venue,
        &format!("{district}-test"),
    )
    .await;
    print(&format!(
        "[demo] chaos: venue {venue} parked in {district}-test; its heads fall back across venues\n"
    ));
    *parked = Some((district, venue));
}

/// Moves every body of `venue` (of `home` district) to district `to`, keeping its venue.
async fn move_venue(client: &Client, bodies: &[Body], home: &str, venue: &str, to: &str) {
    for body in bodies
        .iter()
        .filter(|body| body.venue == venue && body.district == home)
    {
        let request = MoveRequest {
            district: to.to_owned(),
            venue: venue.to_owned(),
        };
        if let Err(error) = client.move_node(&body.id, &request).await {
            tracing::warn!(body = %body.id, %error, "[demo] move failed");
        }
    }
}

/// Starts a fan-out capture of every worker's monitor feed once both demo workers' agents are
/// known (each has reported); `None` until then.
async fn start_capture(client: &Client) -> Option<String> {
    let workers = client.list_workers().await.ok()?;
    let known = workers
        .workers
        .iter()
        .filter(|worker| {
            worker.agent_url.is_some() && worker.status == hydra_api::NodeStatusWire::Online
        })
        .count();
    if known < 2 {
        return None;
    }
    let request = CreateCaptureRequest {
        fan_out: true,
        // Info and above: enough to watch, light enough not to slow the demo's own loop.
        filters: MonitorFilters {
            level: Some("info".to_owned()),
            ..MonitorFilters::default()
        },
        duration: Some(capture_limits::MAX_DURATION_SECS),
        max_lines: Some(100_000),
        ..CreateCaptureRequest::default()
    };
    match client.create_capture(&request).await {
        Ok(view) => {
            print(&format!(
                "[demo] capture {} started: fan-out across {} workers' monitor feeds\n",
                view.capture_id,
                view.node_segments.len()
            ));
            Some(view.capture_id)
        }
        Err(error) => {
            tracing::warn!(%error, "[demo] cannot start the capture");
            None
        }
    }
}

/// Places a session for the first head that gets one, or ends the one placed before.
async fn session_chaos(client: &Client, heads: &[String], session: &mut Option<String>) {
    if let Some(id) = session.take() {
        match client.end_session(&id).await {
            Ok(_) => print(&format!("[demo] chaos: session {id} ended\n")),
            Err(error) => print(&format!("[demo] chaos: cannot end session {id}: {error}\n")),
        }
        return;
    }
    for head in heads {
        let request = CreateSessionRequest {
            head_id: Some(head.clone()),
            ..CreateSessionRequest::default()
        };
        match client.create_session(&request).await {
            Ok(view) => {
                print(&format!(
                    "[demo] chaos: session {} placed on worker {} for head {head} (body {})\n",
                    view.session_id,
                    view.worker_id,
                    view.body_id.as_deref().unwrap_or(&view.body_ip)
                ));
                *session = Some(view.session_id);
                return;
            }
            Err(error) => tracing::warn!(%head, %error, "[demo] no session for this head"),
        }
    }
}
