//! `hydra head`: a head finds the best body it can reach (`discover`) and streams from it
//! (`run`), following the field's failover loop: a route is cached while its stream runs, and
//! dropped when the stream fails to launch, so a failed body does not stick.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use hydra_client::Measurement;
use hydra_client::discovery::{
    BodyProbes, Discoverer, Discovery, DiscoveryError, DiscoveryOptions, ProbeMode, ProbeOutcome,
    Route, STREAM_PORT,
};
use hydra_core::Transport;
use hydra_core::probe::ProbeSettings;
use serde::Serialize;

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
    /// Staggered probes in list order, several in flight: about one timeout whatever fails.
    Concurrent,
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

    fn discoverer(&self) -> anyhow::Result<Discoverer> {
        if self.head_id.trim().is_empty() {
            anyhow::bail!("--head-id must not be empty");
        }
        let mode = match self.probe {
            ProbeChoice::Concurrent => ProbeMode::Concurrent,
            ProbeChoice::Sequential => ProbeMode::Sequential,
        };
        let timeout_ms =
            u32::try_from(self.probe_timeout.as_millis()).context("--probe-timeout is too long")?;
        let options = DiscoveryOptions {
            port: self.port,
            probe: ProbeSettings {
                timeout_ms,
                mode,
                ..ProbeSettings::default()
            },
        };
        let discoverer = Discoverer::new(self.client.client()?, options);
        discoverer.report_later(load_measurements(&self.state_dir()));
        Ok(discoverer)
    }

    async fn discover_once(&self, discoverer: &Discoverer) -> anyhow::Result<Discovery> {
        let found = discoverer.discover(&self.head_id).await;
        save_measurements(&self.state_dir(), &discoverer.pending_measurements());
        found.map_err(|error| match error {
            DiscoveryError::Server(error) => self.client.explain(
                error,
                format!("asking for the eligible bodies of head {}", self.head_id),
            ),
            other => anyhow::Error::new(other),
        })
    }
}

async fn discover(args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    let discoverer = args.head.discoverer()?;
    let found = args.head.discover_once(&discoverer).await?;
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
            ("policy", found.policy.clone()),
            ("elapsed_ms", found.elapsed.as_millis().to_string()),
            ("tried", tried.join(", ")),
        ]));
    }
    Ok(ExitCode::SUCCESS)
}

/// The pairing record: which address the head handed to its streaming client, and how that
/// stream is doing. Written atomically to `<state dir>/pairing.json`.
#[derive(Debug, Clone, Serialize)]
struct PairingRecord<'a> {
    head_id: &'a str,
    body_id: &'a str,
    ip: String,
    port: u16,
    transport: &'static str,
    /// `launching`, `streaming`, `launch_failed` or `ended`.
    state: &'static str,
    /// Why it failed or how it ended, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    updated_at: String,
}

fn write_pairing(
    state_dir: &Path,
    head_id: &str,
    route: &Route,
    state: &'static str,
    detail: Option<String>,
) -> anyhow::Result<()> {
    let record = PairingRecord {
        head_id,
        body_id: &route.body_id,
        ip: route.ip.to_string(),
        port: route.port,
        transport: route.transport.as_str(),
        state,
        detail,
        updated_at: hydra_api::rfc3339(unix_ms()),
    };
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state dir {}", state_dir.display()))?;
    let path = state_dir.join("pairing.json");
    let temporary = state_dir.join("pairing.json.tmp");
    std::fs::write(&temporary, serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// How one launched stream ended.
enum StreamEnd {
    /// It exited within the launch window or with a pairing failure: the route is dropped.
    LaunchFailed(String),
    /// It ran past the launch window, then exited.
    Ended(String),
    /// This process was asked to stop.
    Interrupted,
}

async fn run_streams(args: RunArgs) -> anyhow::Result<ExitCode> {
    let head_id = args.head.head_id.clone();
    let state_dir = args.head.state_dir();
    let discoverer = args.head.discoverer()?;
    let mut failures: u32 = 0;
    let mut streams_run: u32 = 0;
    let mut cached: Option<Route> = None;
    let mut last_failure = String::new();
    loop {
        if args.streams.is_some_and(|limit| streams_run >= limit) {
            return Ok(ExitCode::SUCCESS);
        }
        if failures >= args.max_attempts {
            anyhow::bail!(
                "giving up after {failures} failed attempts in a row for head {head_id}: {last_failure}"
            );
        }
        if failures > 0 {
            let delay = backoff(failures - 1, args.backoff_max);
            tracing::info!(%head_id, attempt = failures + 1, delay_ms = delay.as_millis() as u64, "[head] retrying after backoff");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = interrupted() => return Ok(ExitCode::SUCCESS),
            }
        }
        let route = match cached.take() {
            Some(route) => route,
            None => match args.head.discover_once(&discoverer).await {
                Ok(found) => found.route,
                Err(error) => {
                    tracing::warn!(%head_id, "[head] discovery failed: {error:#}");
                    last_failure = format!("{error:#}");
                    failures += 1;
                    continue;
                }
            },
        };
        match run_one_stream(&args, &state_dir, &route).await? {
            StreamEnd::LaunchFailed(reason) => {
                tracing::warn!(
                    %head_id, body_id = %route.body_id, ip = %route.ip,
                    "[head] stream on {} failed to launch ({reason}); dropping the cached route to {}",
                    route.ip, route.body_id
                );
                last_failure = format!(
                    "stream on {} ({}) failed to launch: {reason}",
                    route.ip, route.body_id
                );
                failures += 1;
            }
            StreamEnd::Ended(how) => {
                tracing::info!(%head_id, body_id = %route.body_id, ip = %route.ip, "[head] stream on {} ended: {how}", route.ip);
                failures = 0;
                streams_run += 1;
                // The next stream discovers again, so the head returns to the best body once
                // it is back; a running stream never changes target.
            }
            StreamEnd::Interrupted => {
                tracing::info!(%head_id, "[head] stopped");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Launches the streaming client on `route` and follows it to its end.
async fn run_one_stream(
    args: &RunArgs,
    state_dir: &Path,
    route: &Route,
) -> anyhow::Result<StreamEnd> {
    let head_id = &args.head.head_id;
    let argv: Vec<String> = args
        .command
        .iter()
        .map(|arg| substitute(arg, route))
        .collect();
    let (program, rest) = argv
        .split_first()
        .context("the streaming command is empty")?;
    write_pairing(state_dir, head_id, route, "launching", None)?;
    tracing::info!(
        %head_id, body_id = %route.body_id, ip = %route.ip, transport = %route.transport,
        "[head] launching the streaming client on {}:{} ({})", route.ip, route.port, route.transport
    );
    let launched_at = Instant::now();
    let spawned = tokio::process::Command::new(program)
        .args(rest)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let reason = format!("cannot start {program}: {error}");
            return launch_failed(state_dir, head_id, route, reason);
        }
    };
    let window_end = tokio::time::Instant::from_std(launched_at + args.launch_window);
    let mut streaming = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the streaming client")?,
            () = tokio::time::sleep_until(window_end), if !streaming => {
                streaming = true;
                write_pairing(state_dir, head_id, route, "streaming", None)?;
                tracing::info!(%head_id, body_id = %route.body_id, ip = %route.ip, "[pairing] streaming from {} on {}", route.body_id, route.ip);
            }
            () = interrupted() => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                write_pairing(state_dir, head_id, route, "ended", Some("head stopped".into()))?;
                return Ok(StreamEnd::Interrupted);
            }
        }
    };
    let ran_for = launched_at.elapsed();
    let how = format!("{status} after {} ms", ran_for.as_millis());
    let pairing_failure = status
        .code()
        .is_some_and(|code| args.pairing_exit_code.contains(&code));
    if ran_for < args.launch_window || pairing_failure {
        let reason = if pairing_failure {
            format!("pairing failed: {how}")
        } else {
            format!(
                "exited within the {} ms launch window: {how}",
                args.launch_window.as_millis()
            )
        };
        return launch_failed(state_dir, head_id, route, reason);
    }
    write_pairing(state_dir, head_id, route, "ended", Some(how.clone()))?;
    Ok(StreamEnd::Ended(how))
}

/// Records a failed launch in the pairing file and says so.
fn launch_failed(
    state_dir: &Path,
    head_id: &str,
    route: &Route,
    reason: String,
) -> anyhow::Result<StreamEnd> {
    write_pairing(
        state_dir,
        head_id,
        route,
        "launch_failed",
        Some(reason.clone()),
    )?;
    Ok(StreamEnd::LaunchFailed(reason))
}

/// Replaces `{ip}`, `{port}`, `{body_id}` and `{transport}` in one argument.
fn substitute(arg: &str, route: &Route) -> String {
    arg.replace("{ip}", &route.ip.to_string())
        .replace("{port}", &route.port.to_string())
        .replace("{body_id}", &route.body_id)
        .replace("{transport}", route.transport.as_str())
}

/// Full-jitter backoff from 1 s doubling to `max`, for retry number `retry` (from 0).
fn backoff(retry: u32, max: Duration) -> Duration {
    let unit = random_unit();
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(hydra_core::backoff::full_jitter_delay_ms(
        retry, 1_000, max_ms, unit,
    ))
}

/// A random number in `[0, 1)` from the standard library's per-process random hash keys.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(unix_ms() as u128);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Resolves when this process gets SIGINT or SIGTERM.
async fn interrupted() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

const MEASUREMENTS_FILE: &str = "measured";

/// Connect times an earlier process measured but could not report yet (`body:transport:rtt`
/// per line); unreadable lines are ignored.
fn load_measurements(state_dir: &Path) -> Vec<Measurement> {
    let Ok(text) = std::fs::read_to_string(state_dir.join(MEASUREMENTS_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(':');
            let (Some(body_id), Some(transport), Some(rtt), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            Some(Measurement {
                body_id: body_id.to_owned(),
                transport: transport.parse::<Transport>().ok()?,
                rtt_ms: rtt.parse().ok()?,
            })
        })
        .collect()
}

/// Keeps the connect times to report with the next request, for the next process.
fn save_measurements(state_dir: &Path, measurements: &[Measurement]) {
    let text: String = measurements
        .iter()
        .map(|m| format!("{}:{}:{}\n", m.body_id, m.transport, m.rtt_ms))
        .collect();
    let written = std::fs::create_dir_all(state_dir)
        .and_then(|()| std::fs::write(state_dir.join(MEASUREMENTS_FILE), text));
    if let Err(error) = written {
        tracing::warn!(dir = %state_dir.display(), "[head] cannot keep measured connect times: {error}");
    }
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
            policy: &found.policy,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        Route {
            body_id: "b-2".into(),
            ip: "198.19.0.11".parse().unwrap(),
            port: 47990,
            transport: Transport::Wireguard,
            rtt_ms: 3,
        }
    }

    #[test]
    fn substitutes_the_route_into_the_command() {
        let args = [
            "--connect",
            "{ip}:{port}",
            "--name={body_id}/{transport}",
            "plain",
        ];
        let substituted: Vec<String> = args.iter().map(|arg| substitute(arg, &route())).collect();
        assert_eq!(
            substituted,
            [
                "--connect",
                "198.19.0.11:47990",
                "--name=b-2/wireguard",
                "plain"
            ]
        );
    }

    #[test]
    fn measurements_survive_a_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let measured = vec![
            Measurement {
                body_id: "b-1".into(),
                transport: Transport::Lan,
                rtt_ms: 1,
            },
            Measurement {
                body_id: "b-2".into(),
                transport: Transport::Wireguard,
                rtt_ms: 40,
            },
        ];
        save_measurements(dir.path(), &measured);
        assert_eq!(load_measurements(dir.path()), measured);
        std::fs::write(
            dir.path().join(MEASUREMENTS_FILE),
            "junk\nb-3:lan:7\nb-4:udp:1\n",
        )
        .unwrap();
        assert_eq!(load_measurements(dir.path()).len(), 1);
    }

    #[test]
    fn backoff_stays_within_its_ceiling() {
        for retry in 0..8 {
            let ceiling = Duration::from_millis((1_000u64 << retry).min(5_000));
            assert!(backoff(retry, Duration::from_secs(5)) <= ceiling);
        }
    }

    #[test]
    fn the_pairing_record_names_the_route() {
        let dir = tempfile::tempdir().unwrap();
        write_pairing(dir.path(), "head-1", &route(), "streaming", None).unwrap();
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("pairing.json")).unwrap())
                .unwrap();
        assert_eq!(record["body_id"], "b-2");
        assert_eq!(record["ip"], "198.19.0.11");
        assert_eq!(record["transport"], "wireguard");
        assert_eq!(record["state"], "streaming");
    }
}
