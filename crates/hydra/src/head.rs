//! `hydra head`: the options of a head's commands and their output. The head itself (discovery
//! with its state dir, the failover loop around the streaming client) is
//! `hydra_agent::head`; `discover` prints one route, `run` streams until stopped or given up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hydra_agent::head::{Head, StreamSettings};
use hydra_client::discovery::{
    BodyProbes, Discoverer, Discovery, DiscoveryError, DiscoveryOptions, ProbeMode, ProbeOutcome,
    STREAM_PORT,
};
use hydra_core::failover::FailoverSettings;
use hydra_core::probe::ProbeSettings;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::client_args::{ClientArgs, parse_duration};
use crate::output;

/// Subcommands of `hydra head`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Find the body this head should stream from and print the route (and the log lines of
    /// the walk); exits non-zero, naming every body tried, when none is reachable.
    Discover(DiscoverArgs),
    /// Run the streaming client on the discovered route, with `{ip}`, `{port}` and `{body_id}`
    /// replaced in CMD ARGS; rediscover (with backoff) when it fails to launch.
    Run(RunArgs),
}

/// How a head probes the bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeChoice {
    /// Probes 2 ms apart in list order, several in flight; a later body that answered wins once
    /// every earlier one has been silent for --prefer-delay.
    Concurrent,
    /// Probes 10 ms apart, several in flight, waiting for every earlier probe's answer or
    /// timeout: exactly the body the sequential walk would choose, in about one timeout.
    Exact,
    /// One probe at a time, the field's original loop (up to 2 s per dead body).
    Sequential,
}

/// Options of every `hydra head` command.
#[derive(Debug, Clone, clap::Args)]
pub struct HeadArgs {
    /// This head's node id (the server picks bodies for its district, venue and owner).
    #[arg(long, value_name = "ID", env = "HYDRA_HEAD_ID")]
    pub head_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
    /// How to probe the eligible bodies.
    #[arg(long, value_enum, default_value = "concurrent")]
    pub probe: ProbeChoice,
    /// The streaming port probed on each body.
    #[arg(long, default_value_t = STREAM_PORT)]
    pub port: u16,
    /// Timeout of one probe, e.g. `1s`, `500ms`.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub probe_timeout: Duration,
    /// With `--probe concurrent`: a later body that answered is taken once every earlier body
    /// has been silent this long, e.g. `250ms`.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration)]
    pub prefer_delay: Duration,
    /// Directory for the pairing file and the connect times still to report
    /// [default: $XDG_STATE_HOME/hydra/head, else ~/.local/state/hydra/head].
    #[arg(long, value_name = "DIR", env = "HYDRA_HEAD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Options of `hydra head discover`.
#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    #[command(flatten)]
    pub head: HeadArgs,
}

/// Options of `hydra head run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub head: HeadArgs,
    /// A stream that ends within this long after launch failed to launch: the route is
    /// dropped and discovery runs again.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub launch_window: Duration,
    /// An exit with this code counts as a pairing failure (a failed launch) whenever it
    /// happens; repeatable.
    #[arg(long, value_name = "CODE")]
    pub pairing_exit_code: Vec<i32>,
    /// Give up after this many failed launches or discoveries in a row.
    #[arg(long, value_name = "N", default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Longest wait between two attempts (full-jitter backoff from 1 s, doubling).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Stop after this many streams have run (each new stream discovers again); without it,
    /// run until interrupted.
    #[arg(long, value_name = "N")]
    pub streams: Option<u32>,
    /// The streaming client and its arguments; `{ip}`, `{port}`, `{body_id}` and
    /// `{transport}` are replaced by the route.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Discover(args) => discover(args).await,
        Command::Run(args) => run_streams(args).await,
    }
}

impl HeadArgs {
    fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("hydra").join("head")
    }

    /// The head these options describe.
    fn head(&self) -> anyhow::Result<Head> {
        if self.head_id.trim().is_empty() {
            anyhow::bail!("--head-id must not be empty");
        }
        let timeout_ms =
            u32::try_from(self.probe_timeout.as_millis()).context("--probe-timeout is too long")?;
        let prefer_delay_ms =
            u32::try_from(self.prefer_delay.as_millis()).context("--prefer-delay is too long")?;
        let probe = match self.probe {
            ProbeChoice::Concurrent => ProbeSettings {
                prefer_delay_ms: Some(prefer_delay_ms),
                ..ProbeSettings::preferring()
            },
            ProbeChoice::Exact => ProbeSettings::default(),
            ProbeChoice::Sequential => ProbeSettings {
                mode: ProbeMode::Sequential,
                ..ProbeSettings::default()
            },
        };
        let options = DiscoveryOptions {
            port: self.port,
            probe: ProbeSettings {
                timeout_ms,
                ..probe
            },
        };
        Ok(Head::new(
            self.head_id.clone(),
            self.state_dir(),
            Discoverer::new(self.client.client()?, options),
        ))
    }
}

async fn discover(args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    let head = args.head.head()?;
    let found = head.discover().await.map_err(|error| match error {
        DiscoveryError::Server(error) => args.head.client.explain(
            error,
            format!(
                "asking for the eligible bodies of head {}",
                args.head.head_id
            ),
        ),
        other => anyhow::Error::new(other),
    })?;
    if args.head.client.json {
        output::print_json(&DiscoveryJson::new(&args.head.head_id, &found))?;
    } else {
        let tried: Vec<String> = found.tried.iter().map(ToString::to_string).collect();
        output::print(&output::key_values(&[
            ("head", args.head.head_id.clone()),
            ("body", found.route.body_id.clone()),
            (
                "address",
                format!("{}:{}", found.route.ip, found.route.port),
            ),
            ("transport", found.route.transport.to_string()),
            ("rtt_ms", found.route.rtt_ms.to_string()),
            ("policy", found.policy.to_string()),
            ("elapsed_ms", found.elapsed.as_millis().to_string()),
            ("tried", tried.join(", ")),
        ]));
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_streams(args: RunArgs) -> anyhow::Result<ExitCode> {
    let head = args.head.head()?;
    let settings = StreamSettings {
        command: args.command.clone(),
        launch_window: args.launch_window,
        pairing_exit_codes: args.pairing_exit_code.clone(),
        failover: FailoverSettings {
            max_attempts: args.max_attempts,
            backoff_max_ms: u64::try_from(args.backoff_max.as_millis()).unwrap_or(u64::MAX),
            streams: args.streams,
            ..FailoverSettings::default()
        },
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(hydra_proxy::signals::stop_on_signal(
        shutdown.clone(),
        "[head] stopping",
    ));
    head.run(&settings, &shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `hydra head discover --json`.
#[derive(Debug, Serialize)]
struct DiscoveryJson<'a> {
    head_id: &'a str,
    body_id: &'a str,
    ip: String,
    port: u16,
    transport: &'static str,
    rtt_ms: u32,
    policy: &'a str,
    elapsed_ms: u64,
    tried: Vec<TriedJson<'a>>,
}

#[derive(Debug, Serialize)]
struct TriedJson<'a> {
    body_id: &'a str,
    round: u32,
    lan_ip: Option<String>,
    lan: String,
    wg_ip: Option<String>,
    wireguard: String,
}

impl<'a> DiscoveryJson<'a> {
    fn new(head_id: &'a str, found: &'a Discovery) -> DiscoveryJson<'a> {
        DiscoveryJson {
            head_id,
            body_id: &found.route.body_id,
            ip: found.route.ip.to_string(),
            port: found.route.port,
            transport: found.route.transport.as_str(),
            rtt_ms: found.route.rtt_ms,
            policy: found.policy.as_str(),
            elapsed_ms: found.elapsed.as_millis() as u64,
            tried: found.tried.iter().map(TriedJson::new).collect(),
        }
    }
}

impl<'a> TriedJson<'a> {
    fn new(probes: &'a BodyProbes) -> TriedJson<'a> {
        let word = |outcome: &ProbeOutcome| outcome.to_string();
        TriedJson {
            body_id: &probes.body.id,
            round: probes.round,
            lan_ip: probes.body.lan_ip.map(|ip| ip.to_string()),
            lan: word(&probes.lan),
            wg_ip: probes.body.wg_ip.map(|ip| ip.to_string()),
            wireguard: word(&probes.wireguard),
        }
    }
}
