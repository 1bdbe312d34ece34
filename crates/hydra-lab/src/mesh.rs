//! A peer-mesh fleet in the lab (issue 11): the real `hydra server` (a mesh member holding the
//! only cluster key) and real `hydra agent` processes, each in a namespace of its own on one
//! venue LAN, with `cluster.enabled` and `discovery_mode: server`, so their keys and first peers
//! come in the config bundle as in the field. Scenarios kill an agent (SIGKILL), or drop its UDP
//! with nftables while its HTTP still flows, and watch the server and the survivors.
//!
//! Addresses (inside the lab's own namespace only): the LAN `198.18.1.0/24`, the lab itself on
//! `.1`, the server on `.2` (API `:8080`, mesh `:7946`), agent `k` (from 0) on `.(10+k)` (API
//! `:7070`, mesh `:7946`).

use std::fmt::Write as _;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hydra_api::{EnrolRequest, RoleWire};
use serde_json::Value;

use crate::control::ControlPlane;
use crate::poll::wait_until;
use crate::process::LabProcess;
use crate::topology::{Host, Lab, Network};

/// The mesh's UDP port on every member.
pub const MESH_PORT: u16 = 7946;
/// Every agent's API port.
pub const AGENT_PORT: u16 = 7070;
/// The admin token of the lab's server (also the agents' API token).
pub const ADMIN_TOKEN: &str = "lab-mesh-admin-token-0123456789";
/// The head the eligible list is asked for.
pub const HEAD: &str = "h-mesh";
const SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const SERVER_PORT: u16 = 8080;

/// The fleet to build.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    /// How many agents (ids `b0`, `b1`, ...).
    pub agents: usize,
    /// Their roles (`body`, `worker`).
    pub roles: Vec<String>,
    /// More YAML for every agent's config (e.g. a `sessions:` section), appended as is.
    pub extra_yaml: String,
    /// More YAML for agent `k` alone (its `sessions.max`, say), appended after `extra_yaml`.
    pub per_agent_yaml: Vec<String>,
}

/// An agent as built.
#[derive(Debug)]
pub struct MeshAgent {
    /// Node id.
    pub id: String,
    /// Its namespace.
    pub host: Host,
    /// Its LAN address (API, mesh and enrolled `lan_ip`).
    pub address: Ipv4Addr,
    config: PathBuf,
    process: Option<LabProcess>,
}

impl MeshAgent {
    /// Its API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}:{AGENT_PORT}", self.address)
    }

    /// What it logged so far (empty when not running).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(LabProcess::stderr_text)
            .unwrap_or_default()
    }
}

/// The running mesh fleet. Dropping it stops every process, then removes the lab.
#[derive(Debug)]
pub struct MeshFleet {
    /// The control plane as the lab reaches it.
    pub control: ControlPlane,
    server: Option<LabProcess>,
    server_host: Host,
    server_args: Vec<String>,
    agents: Vec<MeshAgent>,
    hydra: PathBuf,
    http: reqwest::Client,
    // Last: namespaces go only after every process above was stopped.
    lab: Lab,
}

/// A fresh cluster key (32 random bytes, hex), written 0600; never logged.
fn write_key(path: &Path) -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let mut hex = String::with_capacity(65);
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    hex.push('\n');
    std::fs::write(path, hex).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// The server's arguments: SQLite in the lab's dir, the mesh on with a fresh key (mode 0600).
fn server_args(lab: &Lab) -> anyhow::Result<Vec<String>> {
    let key = lab.dir().join("cluster.key");
    write_key(&key)?;
    let server_yaml = lab.dir().join("server.yaml");
    std::fs::write(
        &server_yaml,
        format!(
            "cluster: {{enabled: true, bind_port: {MESH_PORT}, advertise_addr: {SERVER_ADDRESS}, key_file: \"{}\"}}\n",
            key.display()
        ),
    )?;
    let data_dir = lab.dir().join("server-data");
    std::fs::create_dir_all(&data_dir)?;
    Ok(vec![
        "server".into(),
        "--listen".into(),
        format!("{SERVER_ADDRESS}:{SERVER_PORT}"),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--admin-token".into(),
        ADMIN_TOKEN.into(),
        "--config".into(),
        server_yaml.display().to_string(),
    ])
}

impl MeshFleet {
    /// Builds the LAN, starts the server (`hydra` at `hydra_bin`) with the mesh on, enrols the
    /// head [`HEAD`] and starts `spec.agents` agents. Does not wait for them to join: see
    /// [`MeshFleet::wait_joined`].
    pub async fn start(
        mut lab: Lab,
        hydra_bin: &Path,
        spec: &MeshSpec,
    ) -> anyhow::Result<MeshFleet> {
        let lan = lab.network("meshlan", 24)?;
        lab.attach_self(&lan, Ipv4Addr::new(198, 18, 1, 1))?;
        let server_host = lab.host("control")?;
        lab.attach(&server_host, &lan, "lan", SERVER_ADDRESS)?;
        let server_args = server_args(&lab)?;
        let control = ControlPlane::new(
            &format!("http://{SERVER_ADDRESS}:{SERVER_PORT}"),
            ADMIN_TOKEN,
        )?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .no_proxy()
            .build()?;
        let mut fleet = MeshFleet {
            control,
            server: None,
            server_host,
            server_args,
            agents: Vec::new(),
            hydra: hydra_bin.to_owned(),
            http,
            lab,
        };
        fleet.start_server().await?;
        fleet
            .control
            .enrol(&EnrolRequest {
                id: Some(HEAD.into()),
                roles: vec![RoleWire::Head],
                district: "bxl1".into(),
                venue: "rupelmonde".into(),
                owner: "acme".into(),
                ..EnrolRequest::default()
            })
            .await?;
        for k in 0..spec.agents {
            fleet.add_agent(spec, &lan, k)?;
        }
        Ok(fleet)
    }

    /// Puts agent number `k` (`b<k>`) on the LAN, writes its config and starts it.
    fn add_agent(&mut self, spec: &MeshSpec, lan: &Network, k: usize) -> anyhow::Result<()> {
        let id = format!("b{k}");
        let host = self.lab.host(&format!("agent-{id}"))?;
        let address = Ipv4Addr::new(198, 18, 1, 10 + u8::try_from(k)?);
        self.lab.attach(&host, lan, "lan", address)?;
        let state_dir = self.lab.dir().join(format!("state-{id}"));
        let roles = spec.roles.join(", ");
        let yaml = format!(
            "node: {{id: {id}, roles: [{roles}], district: bxl1, venue: rupelmonde, owner: acme, lan_ip: {address}}}\n\
             server: {{listen: \"{address}:{AGENT_PORT}\"}}\n\
             controller: {{url: [\"{url}\"], token: \"{ADMIN_TOKEN}\"}}\n\
             api_token: \"{ADMIN_TOKEN}\"\n\
             state_dir: \"{state}\"\n\
             wireguard_optional: true\n\
             heartbeat: {{interval: 1}}\n\
             bundle: {{poll_interval: 2}}\n\
             cluster: {{enabled: true, bind_port: {MESH_PORT}, advertise_addr: {address}, discovery_mode: server}}\n\
             {extra}{own}",
            url = self.control.base_url(),
            state = state_dir.display(),
            extra = spec.extra_yaml,
            own = spec.per_agent_yaml.get(k).map_or("", String::as_str),
        );
        let config = self.lab.dir().join(format!("{id}.yaml"));
        std::fs::write(&config, yaml)?;
        self.agents.push(MeshAgent {
            id,
            host,
            address,
            config,
            process: None,
        });
        self.start_agent(k)
    }

    /// Starts the server (again, on the same data directory) and waits (at most 30 s) until
    /// it answers `/api/v1/health`.
    pub async fn start_server(&mut self) -> anyhow::Result<()> {
        let mut server = LabProcess::spawn(
            self.lab.dir(),
            self.server_host.name(),
            "server",
            &self.hydra,
            &self.server_args,
            &[("RUST_LOG", "info")],
        )?;
        let control = self.control.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !control.healthy().await {
            if let Some(status) = server.try_status()? {
                anyhow::bail!("hydra server exited ({status}): {}", server.stderr_text());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "hydra server did not answer within 30 s: {}",
                    server.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.server = Some(server);
        Ok(())
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s): the control plane is away.
    pub fn stop_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.kill(Duration::from_secs(5));
        }
    }

    /// What the server logged so far (empty while it is stopped).
    pub fn server_log(&self) -> String {
        self.server
            .as_ref()
            .map(LabProcess::stderr_text)
            .unwrap_or_default()
    }

    /// The lab underneath.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// Agent `k`.
    pub fn agent(&self, k: usize) -> &MeshAgent {
        &self.agents[k]
    }

    /// How many agents the fleet has.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Starts (again) `hydra agent` on agent `k`'s host with its config.
    pub fn start_agent(&mut self, k: usize) -> anyhow::Result<()> {
        let agent = &self.agents[k];
        let process = LabProcess::spawn(
            self.lab.dir(),
            agent.host.name(),
            &agent.id,
            &self.hydra,
            &[
                "agent".into(),
                "--config".into(),
                agent.config.display().to_string(),
            ],
            &[("RUST_LOG", "info")],
        )?;
        self.agents[k].process = Some(process);
        Ok(())
    }

    /// Kills agent `k` at once (SIGKILL to its process group), as a crash: no leave is sent.
    pub fn kill_agent(&mut self, k: usize) {
        if let Some(mut process) = self.agents[k].process.take() {
            process.kill_hard();
        }
    }

    /// Drops every UDP datagram to and from agent `k` (its gossip), with a real nftables rule.
    pub fn drop_udp(&self, k: usize) -> anyhow::Result<()> {
        self.lab.drop_udp(&self.agents[k].host)
    }

    /// Removes agent `k`'s UDP drop.
    pub fn clear_udp_drop(&self, k: usize) -> anyhow::Result<()> {
        self.lab.clear_udp_drop(&self.agents[k].host)
    }

    /// `GET {agent k}{path}` with the API token, as JSON.
    pub async fn agent_get(&self, k: usize, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.agents[k].url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .with_context(|| format!("GET {path} on {}", self.agents[k].id))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "GET {path}: HTTP {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("GET {path}: {body}"))
    }

    /// The state (`alive`, `suspect`, `down`) of member `node_id` as agent `k` sees it; `None`
    /// when it does not know it.
    pub async fn member_state(&self, k: usize, node_id: &str) -> anyhow::Result<Option<String>> {
        let cluster = self.agent_get(k, "/api/v1/cluster").await?;
        Ok(cluster["members"].as_array().and_then(|members| {
            members
                .iter()
                .find(|member| member["node_id"] == node_id)
                .and_then(|member| member["state"].as_str().map(str::to_owned))
        }))
    }

    /// The ids the server's eligible list offers [`HEAD`], sorted.
    pub async fn eligible(&self) -> anyhow::Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .control
            .eligible(HEAD)
            .await?
            .bodies
            .into_iter()
            .map(|body| body.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Waits (at most `limit`) until every running agent sees every other one and the server
    /// alive, and (for bodies) the server offers every running agent.
    pub async fn wait_joined(&self, limit: Duration, bodies: bool) -> anyhow::Result<()> {
        let running: Vec<usize> = (0..self.agents.len())
            .filter(|k| self.agents[*k].process.is_some())
            .collect();
        let deadline = std::time::Instant::now() + limit;
        loop {
            let last = match self.joined(&running, bodies).await {
                Ok(None) => return Ok(()),
                Ok(Some(reason)) => reason,
                Err(error) => format!("{error:#}"),
            };
            if std::time::Instant::now() > deadline {
                anyhow::bail!("the agents did not all join within {limit:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `None` when joined, else what is missing.
    async fn joined(&self, running: &[usize], bodies: bool) -> anyhow::Result<Option<String>> {
        for &k in running {
            let cluster = self.agent_get(k, "/api/v1/cluster").await?;
            let alive = cluster["members_by_state"]["alive"].as_u64().unwrap_or(0);
            // The others, and the server.
            if alive < running.len() as u64 {
                return Ok(Some(format!(
                    "{} sees {alive} members alive: {cluster}",
                    self.agents[k].id
                )));
            }
        }
        if bodies {
            let eligible = self.eligible().await?;
            for &k in running {
                if !eligible.contains(&self.agents[k].id) {
                    return Ok(Some(format!(
                        "{} is not eligible yet: {eligible:?}",
                        self.agents[k].id
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Waits until agent `k` logged `needle` (at most `limit`).
    pub async fn wait_for_agent_log(
        &self,
        k: usize,
        needle: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        wait_until(
            &format!("{} logs {needle:?}", self.agents[k].id),
            limit,
            || Ok(self.agents[k].log().contains(needle).then_some(())),
        )
        .await
    }
}
