//! A fleet in the lab: one district, venues with a LAN each, a WireGuard-like overlay joining
//! every node, a control network, the real `hydra server`, bodies running the stand-in
//! streaming server on 47990, and heads. Scenarios describe it with a [`FleetSpec`].
//!
//! Addresses (RFC 2544 benchmarking range, inside the lab's own namespace only):
//! venue `i` (from 1) LAN `198.18.i.0/24`; overlay `198.19.0.0/24`; control `198.19.255.0/24`
//! with the lab itself on `.1` and the server on `.2:8080`. Body `k` (from 0) has LAN
//! `198.18.i.(10+k)` and overlay `198.19.0.(10+k)`; head `h` has LAN `198.18.i.(200+h)`,
//! overlay `198.19.0.(200+h)` and control `198.19.255.(10+h)`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hydra_api::{EnrolRequest, RoleWire};

use crate::control::ControlPlane;
use crate::poll::wait_until;
use crate::process::LabProcess;
use crate::topology::{Host, Lab, Network};

/// The streaming port every body serves and every head probes.
pub const STREAM_PORT: u16 = 47990;
/// The admin token of the lab's server.
pub const ADMIN_TOKEN: &str = "lab-admin-token-0123456789";
const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 2);
const SERVER_PORT: u16 = 8080;

/// One body of the fleet.
#[derive(Debug, Clone)]
pub struct BodySpec {
    /// Node id.
    pub id: String,
    /// Venue (must be one of [`FleetSpec::venues`]).
    pub venue: String,
    /// Idle flag of its heartbeat (idle bodies rank first).
    pub idle: bool,
    /// VRAM (more ranks first).
    pub vram_mb: u64,
    /// Whether the stand-in streaming server listens on the LAN address.
    pub serve_lan: bool,
    /// Whether it listens on the overlay address.
    pub serve_wireguard: bool,
}

impl BodySpec {
    /// An idle body with 8 GB, serving on both addresses.
    pub fn new(id: &str, venue: &str) -> BodySpec {
        BodySpec {
            id: id.to_owned(),
            venue: venue.to_owned(),
            idle: true,
            vram_mb: 8_192,
            serve_lan: true,
            serve_wireguard: true,
        }
    }
}

/// One head of the fleet.
#[derive(Debug, Clone)]
pub struct HeadSpec {
    /// Node id.
    pub id: String,
    /// Venue.
    pub venue: String,
}

/// The fleet to build.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The one district (`bxl1`).
    pub district: String,
    /// The owner of every node.
    pub owner: String,
    /// Venues, in order (venue `i` gets LAN `198.18.(i+1).0/24`).
    pub venues: Vec<String>,
    /// Bodies.
    pub bodies: Vec<BodySpec>,
    /// Heads.
    pub heads: Vec<HeadSpec>,
}

/// A body as built.
#[derive(Debug)]
pub struct FleetBody {
    /// The spec it was built from.
    pub spec: BodySpec,
    /// Its namespace.
    pub host: Host,
    /// LAN address.
    pub lan_ip: Ipv4Addr,
    /// Overlay address.
    pub wg_ip: Ipv4Addr,
    /// Its node token.
    pub token: String,
    stream_server: Option<LabProcess>,
}

/// A head as built.
#[derive(Debug)]
pub struct FleetHead {
    /// The spec it was built from.
    pub spec: HeadSpec,
    /// Its namespace.
    pub host: Host,
    /// LAN address.
    pub lan_ip: Ipv4Addr,
    /// Overlay address.
    pub wg_ip: Ipv4Addr,
    /// Its node token.
    pub token: String,
    /// Its state directory (pairing file).
    pub state_dir: PathBuf,
}

/// The running fleet. Dropping it stops every process, then removes the lab.
#[derive(Debug)]
pub struct Fleet {
    /// The control plane as the lab reaches it.
    pub control: ControlPlane,
    server: LabProcess,
    bodies: Vec<FleetBody>,
    heads: Vec<FleetHead>,
    hydra: PathBuf,
    district: String,
    // Last: namespaces go only after every process above was stopped.
    lab: Lab,
}

/// The fleet's networks: the control network, the WireGuard-like overlay and one LAN per venue.
struct FleetNets {
    control: Network,
    overlay: Network,
    lans: Vec<Network>,
}

/// The position of `venue` in the spec's venues (its LAN).
fn venue_index(spec: &FleetSpec, venue: &str) -> anyhow::Result<usize> {
    spec.venues
        .iter()
        .position(|v| v == venue)
        .with_context(|| format!("venue {venue} is not in the fleet spec"))
}

/// Starts `hydra server` on its own host of the control network (SQLite in the lab's dir).
fn spawn_server(
    lab: &mut Lab,
    hydra_bin: &Path,
    control_net: &Network,
) -> anyhow::Result<LabProcess> {
    let server_host = lab.host("control")?;
    lab.attach(&server_host, control_net, "ctl", SERVER_ADDRESS)?;
    let data_dir = lab.dir().join("server-data");
    std::fs::create_dir_all(&data_dir)?;
    lab.spawn(
        &server_host,
        "server",
        hydra_bin,
        &[
            "server".into(),
            "--listen".into(),
            format!("{SERVER_ADDRESS}:{SERVER_PORT}"),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--admin-token".into(),
            ADMIN_TOKEN.into(),
            "--heartbeat-timeout".into(),
            "600".into(),
            // The scenarios unblock a body and expect the head back on it within seconds;
            // the server's memory of a body unreachable from a head (60 s by default) is
            // kept shorter than a stream of theirs.
            "--unreachable-for".into(),
            "2s".into(),
        ],
    )
}

impl Fleet {
    /// Builds the topology, starts the server (`hydra` at `hydra_bin`) and the stand-ins,
    /// enrols every node and sends one heartbeat per body. Bounded: fails after 20 s.
    pub async fn start(mut lab: Lab, hydra_bin: &Path, spec: &FleetSpec) -> anyhow::Result<Fleet> {
        let nets = FleetNets {
            control: lab.network("ctl", 24)?,
            overlay: lab.network("wg", 24)?,
            lans: (0..spec.venues.len())
                .map(|index| lab.network(&format!("lan{}", index + 1), 24))
                .collect::<anyhow::Result<_>>()?,
        };
        lab.attach_self(&nets.control, Ipv4Addr::new(198, 19, 255, 1))?;
        let server = spawn_server(&mut lab, hydra_bin, &nets.control)?;
        let control = ControlPlane::new(
            &format!("http://{SERVER_ADDRESS}:{SERVER_PORT}"),
            ADMIN_TOKEN,
        )?;
        let mut fleet = Fleet {
            control,
            server,
            bodies: Vec::new(),
            heads: Vec::new(),
            hydra: hydra_bin.to_owned(),
            district: spec.district.clone(),
            lab,
        };
        fleet.wait_for_server().await?;
        for (k, body) in spec.bodies.iter().enumerate() {
            fleet.add_body(spec, &nets, k, body).await?;
        }
        for (h, head) in spec.heads.iter().enumerate() {
            fleet.add_head(spec, &nets, h, head).await?;
        }
        Ok(fleet)
    }

    /// Puts body number `k` on its venue's LAN and the overlay, enrols it, sends its first
    /// heartbeat and starts its stream stand-in.
    async fn add_body(
        &mut self,
        spec: &FleetSpec,
        nets: &FleetNets,
        k: usize,
        body: &BodySpec,
    ) -> anyhow::Result<()> {
        let venue = venue_index(spec, &body.venue)?;
        let host = self.lab.host(&format!("body-{}", body.id))?;
        let lan_ip = Ipv4Addr::new(198, 18, venue as u8 + 1, 10 + k as u8);
        let wg_ip = Ipv4Addr::new(198, 19, 0, 10 + k as u8);
        self.lab.attach(&host, &nets.lans[venue], "lan", lan_ip)?;
        self.lab.attach(&host, &nets.overlay, "wg", wg_ip)?;
        let enrolled = self
            .control
            .enrol(&EnrolRequest {
                id: Some(body.id.clone()),
                roles: vec![RoleWire::Body],
                district: spec.district.clone(),
                venue: body.venue.clone(),
                owner: spec.owner.clone(),
                lan_ip: Some(lan_ip.into()),
                wg_ip: Some(wg_ip.into()),
                vram_mb: Some(body.vram_mb),
                ..EnrolRequest::default()
            })
            .await?;
        self.control
            .heartbeat(&body.id, &enrolled.token, body.idle)
            .await?;
        self.bodies.push(FleetBody {
            spec: body.clone(),
            host,
            lan_ip,
            wg_ip,
            token: enrolled.token,
            stream_server: None,
        });
        self.start_stream_server(&body.id).await
    }

    /// Puts head number `h` on its venue's LAN, the overlay and the control network, and enrols
    /// it (its state dir is made; it runs only when a scenario runs it).
    async fn add_head(
        &mut self,
        spec: &FleetSpec,
        nets: &FleetNets,
        h: usize,
        head: &HeadSpec,
    ) -> anyhow::Result<()> {
        let venue = venue_index(spec, &head.venue)?;
        let host = self.lab.host(&format!("head-{}", head.id))?;
        let lan_ip = Ipv4Addr::new(198, 18, venue as u8 + 1, 200 + h as u8);
        let wg_ip = Ipv4Addr::new(198, 19, 0, 200 + h as u8);
        let ctl_ip = Ipv4Addr::new(198, 19, 255, 10 + h as u8);
        self.lab.attach(&host, &nets.lans[venue], "lan", lan_ip)?;
        self.lab.attach(&host, &nets.overlay, "wg", wg_ip)?;
        self.lab.attach(&host, &nets.control, "ctl", ctl_ip)?;
        let enrolled = self
            .control
            .enrol(&EnrolRequest {
                id: Some(head.id.clone()),
                roles: vec![RoleWire::Head],
                district: spec.district.clone(),
                venue: head.venue.clone(),
                owner: spec.owner.clone(),
                lan_ip: Some(lan_ip.into()),
                wg_ip: Some(wg_ip.into()),
                ..EnrolRequest::default()
            })
            .await?;
        let state_dir = self.lab.dir().join(format!("state-{}", head.id));
        std::fs::create_dir_all(&state_dir)?;
        self.heads.push(FleetHead {
            spec: head.clone(),
            host,
            lan_ip,
            wg_ip,
            token: enrolled.token,
            state_dir,
        });
        Ok(())
    }

    async fn wait_for_server(&mut self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self.control.healthy().await {
                return Ok(());
            }
            if let Some(status) = self.server.try_status()? {
                anyhow::bail!(
                    "hydra server exited ({status}) before answering: {}",
                    self.server.stderr_text()
                );
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "hydra server did not answer /api/v1/health within 20 s: {}",
                    self.server.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The lab underneath.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The server process (for its log).
    pub fn server(&self) -> &LabProcess {
        &self.server
    }

    /// A body by id.
    pub fn body(&self, id: &str) -> &FleetBody {
        self.bodies
            .iter()
            .find(|body| body.spec.id == id)
            .unwrap_or_else(|| panic!("no body {id} in the fleet"))
    }

    fn body_mut(&mut self, id: &str) -> &mut FleetBody {
        self.bodies
            .iter_mut()
            .find(|body| body.spec.id == id)
            .unwrap_or_else(|| panic!("no body {id} in the fleet"))
    }

    /// A head by id.
    pub fn head(&self, id: &str) -> &FleetHead {
        self.heads
            .iter()
            .find(|head| head.spec.id == id)
            .unwrap_or_else(|| panic!("no head {id} in the fleet"))
    }

    /// Starts (again) the stand-in streaming server of body `id` on the addresses its spec
    /// says, and waits (at most 10 s) until it listens.
    pub async fn start_stream_server(&mut self, id: &str) -> anyhow::Result<()> {
        let server_bin = self.lab.binary("hydra-lab-stream-server");
        let body = self.body(id);
        let mut args = vec!["--body-id".to_owned(), id.to_owned()];
        if body.spec.serve_lan {
            args.extend(["--listen".into(), format!("{}:{STREAM_PORT}", body.lan_ip)]);
        }
        if body.spec.serve_wireguard {
            args.extend(["--listen".into(), format!("{}:{STREAM_PORT}", body.wg_ip)]);
        }
        let expected = usize::from(body.spec.serve_lan) + usize::from(body.spec.serve_wireguard);
        if expected == 0 {
            return Ok(());
        }
        let mut process =
            self.lab
                .spawn(&body.host, &format!("stream-{id}"), &server_bin, &args)?;
        wait_until(
            &format!("stand-in server of {id} listening"),
            Duration::from_secs(10),
            || {
                if let Some(status) = process.try_status()? {
                    anyhow::bail!("exited ({status}): {}", process.stderr_text());
                }
                Ok(
                    (process.stdout_text().matches("listening on").count() >= expected)
                        .then_some(()),
                )
            },
        )
        .await?;
        self.body_mut(id).stream_server = Some(process);
        Ok(())
    }

    /// Kills the stand-in streaming server of body `id` (SIGKILL, as a crash): its addresses
    /// then refuse connections.
    pub fn kill_stream_server(&mut self, id: &str) {
        if let Some(mut process) = self.body_mut(id).stream_server.take() {
            process.kill_hard();
        }
    }

    /// What the stand-in server of body `id` logged (accepted and closed connections).
    pub fn stream_server_log(&self, id: &str) -> String {
        self.body(id)
            .stream_server
            .as_ref()
            .map(LabProcess::stdout_text)
            .unwrap_or_default()
    }

    /// Drops TCP to 47990 on body `body_id` from both addresses of head `head_id`.
    pub fn block(&self, body_id: &str, head_id: &str) -> anyhow::Result<()> {
        let head = self.head(head_id);
        self.lab.drop_tcp_from(
            &self.body(body_id).host,
            &[head.lan_ip, head.wg_ip],
            STREAM_PORT,
        )
    }

    /// Removes the drops on body `body_id`.
    pub fn unblock(&self, body_id: &str) -> anyhow::Result<()> {
        self.lab.clear_drops(&self.body(body_id).host)
    }

    /// Moves body `id` to `district` (e.g. the spare `bxl1-test`), keeping its venue.
    pub async fn park(&self, id: &str, district: &str) -> anyhow::Result<()> {
        let venue = self.body(id).spec.venue.clone();
        self.control.move_node(id, district, &venue).await
    }

    /// Moves body `id` back to the fleet's district.
    pub async fn unpark(&self, id: &str) -> anyhow::Result<()> {
        let venue = self.body(id).spec.venue.clone();
        self.control.move_node(id, &self.district, &venue).await
    }

    /// The options every `hydra head` command of head `head_id` needs: head id, server, token.
    pub fn head_options(&self, head_id: &str) -> Vec<String> {
        let head = self.head(head_id);
        vec![
            "--head-id".into(),
            head_id.into(),
            "--server".into(),
            self.control.base_url().into(),
            "--token".into(),
            head.token.clone(),
        ]
    }

    /// Starts `hydra <args>` on head `head_id` (logs at `info`, no colour).
    pub fn hydra_on_head(
        &self,
        head_id: &str,
        name: &str,
        args: &[String],
    ) -> anyhow::Result<LabProcess> {
        self.lab
            .spawn(&self.head(head_id).host, name, &self.hydra, args)
    }

    /// The stand-in client command for `hydra head run -- ...`: connect to `{ip}:47990`, hold
    /// for `hold_ms`, record events in `record`, and (if given) wait for `gate` before
    /// connecting.
    pub fn stream_client_command(
        &self,
        record: &Path,
        hold_ms: u64,
        gate: Option<&Path>,
    ) -> Vec<String> {
        let mut command = vec![
            self.lab
                .binary("hydra-lab-stream-client")
                .display()
                .to_string(),
            "--connect".into(),
            format!("{{ip}}:{STREAM_PORT}"),
            "--hold-ms".into(),
            hold_ms.to_string(),
            "--record".into(),
            record.display().to_string(),
        ];
        if let Some(gate) = gate {
            command.extend(["--wait-for".into(), gate.display().to_string()]);
        }
        command
    }

    /// Waits until body `id`'s stand-in server logged `count` accepted connections.
    pub async fn wait_for_accepts(
        &self,
        id: &str,
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<()> {
        wait_until(
            &format!("{count} connections accepted by {id}"),
            limit,
            || {
                Ok(
                    (self.stream_server_log(id).matches(" accepted ").count() >= count)
                        .then_some(()),
                )
            },
        )
        .await
    }
}
