//! The head role: find the best body this head can reach and stream from it, following the
//! field's failover loop (`hydra_core::failover` decides; this module asks the server, probes,
//! sleeps and runs the streaming client). A route is used for one stream and forgotten when the
//! client fails to launch on it, so a failed body does not stick; each new stream discovers
//! again, which is how a head returns to the best body once it is back. A running stream never
//! changes target. The eligible list of the control plane's last answer is kept in the state
//! dir; when no replica answers, the head walks that list with the same probes instead of
//! giving up, and asks the control plane first again for the next stream.

pub mod state;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hydra_client::discovery::{Discoverer, Discovery, DiscoveryError, Route};
use hydra_core::failover::{FailoverLoop, FailoverSettings, Step, StreamExit, classify_exit};
use tokio_util::sync::CancellationToken;

use hydra_api::EligibleResponse;
use state::{
    PairingState, keep_eligible, load_kept_eligible, load_measurements, load_passed_over,
    save_measurements, save_passed_over, write_pairing,
};

/// How a head runs its streams.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The streaming client and its arguments; `{ip}`, `{port}`, `{body_id}` and
    /// `{transport}` are replaced by the route.
    pub command: Vec<String>,
    /// A client that exits within this long after its launch failed to launch.
    pub launch_window: Duration,
    /// Exit codes that mean the pairing failed, whenever they come.
    pub pairing_exit_codes: Vec<i32>,
    /// Attempts, backoff and stream bounds.
    pub failover: FailoverSettings,
}

/// Why a head stopped streaming.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Too many failed discoveries or launches in a row.
    #[error(
        "giving up after {failures} failed attempts in a row for head {head_id}: {last_failure}"
    )]
    GaveUp {
        /// The head.
        head_id: String,
        /// Failures in a row.
        failures: u32,
        /// Why the last one failed.
        last_failure: String,
    },
    /// No command to run.
    #[error("the streaming command is empty")]
    EmptyCommand,
    /// The pairing record could not be written.
    #[error("writing the pairing record in {dir}: {source}")]
    State {
        /// The state dir.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The client could not be waited for.
    #[error("waiting for the streaming client: {0}")]
    Wait(std::io::Error),
}

/// How one launched stream ended.
enum StreamEnd {
    LaunchFailed(String),
    Ended(String),
    Interrupted,
}

/// What one discovery step gave.
enum Found {
    /// The route to stream on.
    Route(Route),
    /// Nothing; the failover loop was told why.
    Failed,
    /// The head is stopping.
    Stopped,
}

/// The list kept from the control plane's last answer, read when no replica answers.
#[derive(Default)]
struct KeptList {
    kept: Option<EligibleResponse>,
    /// Whether the head walked it since the control plane last answered.
    walked: bool,
}

/// A head: its id, its state dir, and the discoverer that asks the server and probes the
/// bodies.
pub struct Head {
    head_id: String,
    state_dir: PathBuf,
    discoverer: Discoverer,
}

impl Head {
    /// Head `head_id` keeping its pairing record, unreported connect times and bodies passed over
    /// in `state_dir`; it first reports what an earlier process kept there.
    pub fn new(head_id: String, state_dir: PathBuf, discoverer: Discoverer) -> Head {
        discoverer.report_later(load_measurements(&state_dir));
        discoverer.report_passed_over_later(&head_id, load_passed_over(&state_dir));
        Head {
            head_id,
            state_dir,
            discoverer,
        }
    }

    /// Finds the body to stream from; keeps the connect times not yet reported for the next
    /// request (or the next process).
    pub async fn discover(&self) -> Result<Discovery, DiscoveryError> {
        let found = self.discoverer.discover(&self.head_id).await;
        self.save_pending();
        found
    }

    /// Walks the eligible list kept from the control plane's last answer (no replica answers).
    async fn discover_kept(&self, kept: &EligibleResponse) -> Result<Discovery, DiscoveryError> {
        let found = self.discoverer.discover_kept(&self.head_id, kept).await;
        self.save_pending();
        found
    }

    /// Keeps what is still to report (connect times, bodies passed over) for the next process.
    fn save_pending(&self) {
        save_measurements(&self.state_dir, &self.discoverer.pending_measurements());
        save_passed_over(
            &self.state_dir,
            &self.discoverer.pending_passed_over(&self.head_id),
        );
    }

    /// Keeps the answer a route came from; a failure is logged, never fatal.
    fn keep(&self, found: &Discovery) {
        if let Err(error) = keep_eligible(
            &self.state_dir,
            &self.head_id,
            &found.answer,
            &found.route,
            hydra_api::now_ms(),
        ) {
            tracing::warn!(dir = %self.state_dir.display(), "[head] cannot keep the eligible list: {error}");
        }
    }

    /// Runs streams until the wanted number ran (`Ok` with the count), `shutdown` is cancelled
    /// (`Ok`; a running client is stopped) or the loop gives up.
    pub async fn run(
        &self,
        settings: &StreamSettings,
        shutdown: &CancellationToken,
    ) -> Result<u32, HeadError> {
        if settings.command.is_empty() {
            return Err(HeadError::EmptyCommand);
        }
        let head_id = &self.head_id;
        let mut failover = FailoverLoop::new(settings.failover.clone());
        let mut fallback = KeptList::default();
        loop {
            match failover.next_step(rand::random::<f64>()) {
                Step::Done => return Ok(failover.streams_run()),
                Step::GiveUp {
                    failures,
                    last_failure,
                } => {
                    return Err(HeadError::GaveUp {
                        head_id: head_id.clone(),
                        failures,
                        last_failure,
                    });
                }
                Step::Backoff { delay_ms, attempt } => {
                    tracing::info!(%head_id, attempt, delay_ms, "[head] retrying after backoff");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                        () = shutdown.cancelled() => return Ok(stopped(head_id, &failover)),
                    }
                }
                step @ (Step::Discover | Step::WalkKept) => {
                    let from_control_plane = step == Step::Discover;
                    let found = self
                        .find_route(from_control_plane, &mut fallback, &mut failover, shutdown)
                        .await;
                    let route = match found {
                        Found::Route(route) => route,
                        Found::Failed => continue,
                        Found::Stopped => return Ok(stopped(head_id, &failover)),
                    };
                    let end = self.run_one_stream(settings, &route, shutdown).await?;
                    if !self.record_stream_end(&mut failover, &route, end) {
                        return Ok(stopped(head_id, &failover));
                    }
                }
            }
        }
    }

    /// One discovery step: from the control plane, or (when no replica answers) from the kept
    /// eligible list. A failure is told to the failover loop; a list the control plane answered
    /// with is kept for the next outage.
    async fn find_route(
        &self,
        from_control_plane: bool,
        fallback: &mut KeptList,
        failover: &mut FailoverLoop,
        shutdown: &CancellationToken,
    ) -> Found {
        let head_id = &self.head_id;
        let found = match (from_control_plane, &fallback.kept) {
            (false, Some(list)) => {
                tracing::warn!(%head_id, bodies = list.bodies.len(), "[head] no replica answers; walking the kept eligible list (LAN, then WireGuard)");
                fallback.walked = true;
                tokio::select! {
                    found = self.discover_kept(list) => found,
                    () = shutdown.cancelled() => return Found::Stopped,
                }
            }
            _ => tokio::select! {
                found = self.discover() => found,
                () = shutdown.cancelled() => return Found::Stopped,
            },
        };
        match found {
            Ok(found) => {
                if from_control_plane {
                    if std::mem::take(&mut fallback.walked) {
                        tracing::info!(%head_id, "[head] a replica answers again; back to the control plane's eligible list");
                    }
                    self.keep(&found);
                }
                Found::Route(found.route)
            }
            Err(DiscoveryError::Server(error))
                if from_control_plane
                    && (error.is_transient()
                        || matches!(error, hydra_client::ClientError::Indeterminate { .. })) =>
            {
                fallback.kept = load_kept_eligible(&self.state_dir, hydra_api::now_ms());
                let reason = format!("asking for the eligible bodies of head {head_id}: {error}");
                tracing::warn!(%head_id, "[head] discovery failed: {reason}");
                failover.control_plane_unreachable(reason, fallback.kept.is_some());
                Found::Failed
            }
            Err(error) => {
                let reason = describe(head_id, &error);
                tracing::warn!(%head_id, "[head] discovery failed: {reason}");
                failover.discovery_failed(reason);
                Found::Failed
            }
        }
    }

    /// Tells the failover loop how a stream on `route` ended; `false` when it was interrupted
    /// (the head is stopping).
    fn record_stream_end(
        &self,
        failover: &mut FailoverLoop,
        route: &Route,
        end: StreamEnd,
    ) -> bool {
        let head_id = &self.head_id;
        match end {
            StreamEnd::LaunchFailed(reason) => {
                tracing::warn!(
                    %head_id, body_id = %route.body_id, ip = %route.ip,
                    "[head] stream on {} failed to launch ({reason}); dropping the route to {}",
                    route.ip, route.body_id
                );
                failover.launch_failed(format!(
                    "stream on {} ({}) failed to launch: {reason}",
                    route.ip, route.body_id
                ));
            }
            StreamEnd::Ended(how) => {
                tracing::info!(%head_id, body_id = %route.body_id, ip = %route.ip, "[head] stream on {} ended: {how}", route.ip);
                failover.stream_ended();
            }
            StreamEnd::Interrupted => return false,
        }
        true
    }

    /// Launches the streaming client on `route` and follows it to its end.
    async fn run_one_stream(
        &self,
        settings: &StreamSettings,
        route: &Route,
        shutdown: &CancellationToken,
    ) -> Result<StreamEnd, HeadError> {
        let head_id = &self.head_id;
        let argv: Vec<String> = settings
            .command
            .iter()
            .map(|arg| substitute(arg, route))
            .collect();
        let (program, rest) = argv.split_first().ok_or(HeadError::EmptyCommand)?;
        self.record(route, PairingState::Launching, None)?;
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
                self.record(route, PairingState::LaunchFailed, Some(&reason))?;
                return Ok(StreamEnd::LaunchFailed(reason));
            }
        };
        let window_end = tokio::time::Instant::from_std(launched_at + settings.launch_window);
        let mut streaming = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(HeadError::Wait)?,
                () = tokio::time::sleep_until(window_end), if !streaming => {
                    streaming = true;
                    self.record(route, PairingState::Streaming, None)?;
                    tracing::info!(%head_id, body_id = %route.body_id, ip = %route.ip, "[pairing] streaming from {} on {}", route.body_id, route.ip);
                }
                () = shutdown.cancelled() => {
                    let _ = child.start_kill();
                    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                    self.record(route, PairingState::Ended, Some("head stopped"))?;
                    return Ok(StreamEnd::Interrupted);
                }
            }
        };
        let ran_for = launched_at.elapsed();
        let how = format!("{status} after {} ms", ran_for.as_millis());
        let window_ms = u64::try_from(settings.launch_window.as_millis()).unwrap_or(u64::MAX);
        let ran_for_ms = u64::try_from(ran_for.as_millis()).unwrap_or(u64::MAX);
        let reason = match classify_exit(
            ran_for_ms,
            status.code(),
            window_ms,
            &settings.pairing_exit_codes,
        ) {
            StreamExit::Ended => {
                self.record(route, PairingState::Ended, Some(&how))?;
                return Ok(StreamEnd::Ended(how));
            }
            StreamExit::PairingFailed => format!("pairing failed: {how}"),
            StreamExit::ExitedInLaunchWindow => {
                format!("exited within the {window_ms} ms launch window: {how}")
            }
        };
        self.record(route, PairingState::LaunchFailed, Some(&reason))?;
        Ok(StreamEnd::LaunchFailed(reason))
    }

    fn record(
        &self,
        route: &Route,
        state: PairingState,
        detail: Option<&str>,
    ) -> Result<(), HeadError> {
        let dir = &self.state_dir;
        write_pairing(
            dir,
            &self.head_id,
            route,
            state,
            detail,
            hydra_api::now_ms(),
        )
        .map_err(|source| HeadError::State {
            dir: dir.clone(),
            source,
        })
    }
}

fn stopped(head_id: &str, failover: &FailoverLoop) -> u32 {
    tracing::info!(%head_id, "[head] stopped");
    failover.streams_run()
}

/// A discovery failure in words, with what was being asked.
fn describe(head_id: &str, error: &DiscoveryError) -> String {
    match error {
        DiscoveryError::Server(error) => {
            format!("asking for the eligible bodies of head {head_id}: {error}")
        }
        other => other.to_string(),
    }
}

/// Replaces `{ip}`, `{port}`, `{body_id}` and `{transport}` in one argument.
pub fn substitute(arg: &str, route: &Route) -> String {
    arg.replace("{ip}", &route.ip.to_string())
        .replace("{port}", &route.port.to_string())
        .replace("{body_id}", &route.body_id)
        .replace("{transport}", route.transport.as_str())
}

#[cfg(test)]
mod tests {
    use hydra_core::Transport;

    use super::*;

    #[test]
    fn substitutes_the_route_into_the_command() {
        let route = Route {
            body_id: "b-2".into(),
            ip: "198.19.0.11".parse().unwrap(),
            port: 47990,
            transport: Transport::Wireguard,
            rtt_ms: 3,
        };
        let args = [
            "--connect",
            "{ip}:{port}",
            "--name={body_id}/{transport}",
            "plain",
        ];
        let substituted: Vec<String> = args.iter().map(|arg| substitute(arg, &route)).collect();
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
}
