//! The agent's command line, one home for `hydra agent --config FILE` and the lean `hydra-agent`
//! binary: flags and `HYDRA_<SECTION>__<KEY>` variables win over the file; the first thing it
//! does is bind its port, and it exits with "cannot bind — is another hydra agent already
//! running?" when that port is taken.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;

/// Options of `hydra agent` (and `hydra-agent`); each overrides the same key of the YAML file.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// YAML config file (sections: node, server, controller, heartbeat, bundle, health,
    /// sessions, sunshine, ice_servers, turn, state_dir).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The agent's HTTP address (server.listen) [default: 127.0.0.1:7071].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The URL the control plane and browsers reach the agent at (server.public_url).
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// A control-plane replica (controller.url); repeat for several.
    #[arg(long = "server", value_name = "URL")]
    servers: Vec<String>,
    /// Node id to enrol with (node.id).
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// Where the node token and the session dirs live (state_dir) [default: ./hydra-agent].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Sessions at most (sessions.max) [default: 15].
    #[arg(long, value_name = "N")]
    max_sessions: Option<u32>,
    /// First port of the session range (sessions.port_range_start) [default: 8080].
    #[arg(long, value_name = "PORT")]
    port_range_start: Option<u16>,
    /// Seconds between heartbeats (heartbeat.interval) [default: 30].
    #[arg(long, value_name = "SECONDS")]
    heartbeat_interval: Option<f64>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `hydra agent` does besides running.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print a coturn turnserver.conf matching this agent's `turn:` settings (realm, shared
    /// secret, listening and relay ports, denied peer ranges with the node's own addresses
    /// allowed); install it for the coturn beside the worker.
    TurnConfig,
}

impl Args {
    /// The flags that were given, nested like the config file.
    fn overrides(&self) -> serde_json::Value {
        let mut root = serde_json::Map::new();
        let mut set = |section: &str, key: Option<&str>, value: serde_json::Value| match key {
            None => {
                root.insert(section.to_owned(), value);
            }
            Some(key) => {
                let entry = root
                    .entry(section.to_owned())
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(object) = entry.as_object_mut() {
                    object.insert(key.to_owned(), value);
                }
            }
        };
        if let Some(listen) = self.listen {
            set("server", Some("listen"), listen.to_string().into());
        }
        if let Some(url) = &self.public_url {
            set("server", Some("public_url"), url.clone().into());
        }
        if !self.servers.is_empty() {
            set("controller", Some("url"), self.servers.clone().into());
        }
        if let Some(id) = &self.node_id {
            set("node", Some("id"), id.clone().into());
        }
        if let Some(dir) = &self.state_dir {
            set("state_dir", None, dir.display().to_string().into());
        }
        if let Some(max) = self.max_sessions {
            set("sessions", Some("max"), max.into());
        }
        if let Some(port) = self.port_range_start {
            set("sessions", Some("port_range_start"), port.into());
        }
        if let Some(interval) = self.heartbeat_interval {
            set("heartbeat", Some("interval"), interval.into());
        }
        serde_json::Value::Object(root)
    }
}

/// Runs the agent until SIGINT or SIGTERM (or runs its subcommand). The error is the line to
/// print after `error: `.
pub async fn run(args: Args) -> Result<ExitCode, String> {
    let config = AgentConfig::load(args.config.as_deref(), args.overrides())
        .map_err(|error| error.to_string())?;
    if let Some(Command::TurnConfig) = args.command {
        let text = crate::turn::coturn_config(&config)?;
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(hydra_proxy::signals::stop_on_signal(
        shutdown.clone(),
        "[worker] shutting down: ending session processes (a second signal exits at once)",
    ));
    crate::daemon::run(config, shutdown)
        .await
        .map_err(|error| format!("hydra agent: {}", hydra_proxy::proxy::error_chain(&error)))?;
    Ok(ExitCode::SUCCESS)
}
