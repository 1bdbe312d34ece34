//! Body discovery for a head: ask for the eligible list, probe the bodies (LAN, then WireGuard,
//! TCP connect to the streaming port with a 1 s timeout), and settle on the first body in list
//! order that answers, exactly as the field's sequential loop would, but concurrently (the
//! [`ProbeRace`] of `hydra-core` decides; this module only opens sockets and keeps time).
//!
//! When every body of an answer fails, it asks once more naming them (`unreachable=id1,id2`):
//! the server leaves them out of that answer, so an emptied quickroute opens the cross-venue
//! fallback. Connect times it measured go to the server with the next request (`measured=`),
//! and so do the bodies a success was found past (each failed on both paths, or was silent past
//! the preference delay): named `unreachable=`, the server leaves them out of this head's
//! answers for its `--unreachable-for`, so the next discovery probes only what can work.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hydra_api::{EligibleBody, EligibleResponse, PolicyWire};
use hydra_core::Transport;
use hydra_core::probe::{
    ProbeAction, ProbeBody, ProbeError, ProbeKey, ProbeRace, ProbeSettings, RaceOutcome,
};
use tokio::task::{AbortHandle, JoinSet};

pub use hydra_core::probe::ProbeMode;

use crate::{Client, ClientError, EligibleQuery, Measurement};

mod round;
use round::{connect, log_round, measurements_of, sleep_until};

/// The streaming port (Sunshine) a head probes and streams from.
pub const STREAM_PORT: u16 = 47990;

/// How discovery probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// The streaming port probed on each address.
    pub port: u16,
    /// Timeout, stagger and mode of the probe race (1 s, 10 ms, concurrent by default).
    pub probe: ProbeSettings,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            port: STREAM_PORT,
            probe: ProbeSettings::default(),
        }
    }
}

impl DiscoveryOptions {
    /// The same options with another probe mode.
    pub fn with_mode(self, mode: ProbeMode) -> DiscoveryOptions {
        DiscoveryOptions {
            probe: ProbeSettings { mode, ..self.probe },
            ..self
        }
    }
}

/// The route a head streams over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The chosen body.
    pub body_id: String,
    /// The address that answered.
    pub ip: IpAddr,
    /// The streaming port.
    pub port: u16,
    /// LAN or WireGuard.
    pub transport: Transport,
    /// The measured connect time.
    pub rtt_ms: u32,
}

/// What one probe of one body gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The address answered after this many ms.
    Reached {
        /// Connect time.
        rtt_ms: u32,
    },
    /// The address did not answer.
    Failed(ProbeError),
    /// Not probed: the race settled before this address mattered.
    NotProbed,
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeOutcome::Reached { rtt_ms } => write!(f, "reached in {rtt_ms} ms"),
            ProbeOutcome::Failed(error) => error.fmt(f),
            ProbeOutcome::NotProbed => f.write_str("not probed"),
        }
    }
}

/// The probes of one body that discovery tried.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyProbes {
    /// The body as the server listed it.
    pub body: EligibleBody,
    /// Which request listed it (1, or 2 for the second request naming unreachable bodies).
    pub round: u32,
    /// Its LAN probe.
    pub lan: ProbeOutcome,
    /// Its WireGuard probe.
    pub wireguard: ProbeOutcome,
}

impl fmt::Display for BodyProbes {
    /// `b1 (LAN 198.18.1.10: timed out after 1000 ms; WireGuard 198.19.0.10: connection refused)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = |ip: Option<IpAddr>| ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        write!(
            f,
            "{} (LAN {}: {}; WireGuard {}: {})",
            self.body.id,
            address(self.body.lan_ip),
            self.lan,
            address(self.body.wg_ip),
            self.wireguard
        )
    }
}

/// A successful discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// The route to stream over.
    pub route: Route,
    /// The chosen body as the server listed it.
    pub body: EligibleBody,
    /// The policy of the answer it came from (`quickroute`, `cross_venue`, ...).
    pub policy: PolicyWire,
    /// Every body that had at least one probe, in the order tried.
    pub tried: Vec<BodyProbes>,
    /// Time from the first request to the decision.
    pub elapsed: Duration,
    /// The eligible answer the route came from (a head keeps it for when no replica answers).
    pub answer: EligibleResponse,
}

/// Why discovery found no route.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The control plane could not be asked.
    #[error("cannot get the eligible bodies: {0}")]
    Server(#[from] ClientError),
    /// The server listed no body at all.
    #[error("no body is eligible for head {head_id} (policy {policy})")]
    NoEligibleBody {
        /// The head.
        head_id: String,
        /// The policy of the (empty) answer.
        policy: PolicyWire,
    },
    /// Bodies were listed but none answered on either address.
    #[error("no body is reachable for head {head_id}: tried {}", list(tried))]
    NoBodyReachable {
        /// The head.
        head_id: String,
        /// Every body tried, with both probe errors.
        tried: Vec<BodyProbes>,
    },
}

fn list(tried: &[BodyProbes]) -> String {
    tried
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A report of a body passed over older than this is not sent: the server's memory of an
/// unreachable body lasts `--unreachable-for` (60 s by default), and an old failure must not
/// keep a body that came back out of an answer.
pub const PASSED_OVER_MAX_AGE_MS: i64 = 60_000;

/// A body a discovery found a route past: it failed on both paths (or stayed silent past the
/// preference delay) while a later body answered. Written `body_id@unix_ms` in a head's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedOver {
    /// The body.
    pub body_id: String,
    /// When the discovery passed it over (unix ms).
    pub at_ms: i64,
}

impl fmt::Display for PassedOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.body_id, self.at_ms)
    }
}

impl std::str::FromStr for PassedOver {
    type Err = String;

    fn from_str(text: &str) -> Result<PassedOver, String> {
        let (body_id, at_ms) = text
            .rsplit_once('@')
            .ok_or_else(|| format!("{text:?} is not body_id@unix_ms"))?;
        if body_id.is_empty() {
            return Err(format!("{text:?} has no body id"));
        }
        let at_ms = at_ms
            .parse()
            .map_err(|_| format!("{text:?}: {at_ms:?} is not unix milliseconds"))?;
        Ok(PassedOver {
            body_id: body_id.to_owned(),
            at_ms,
        })
    }
}

/// Discovers bodies for heads through a [`Client`], carrying measured connect times and the
/// bodies passed over from one discovery to the next request.
#[derive(Debug)]
pub struct Discoverer {
    client: Client,
    options: DiscoveryOptions,
    pending: Mutex<Vec<Measurement>>,
    /// Per head: a discoverer may serve several heads, and a body one head passed over says
    /// nothing about another head's paths to it.
    passed_over: Mutex<Vec<(String, PassedOver)>>,
}

impl Discoverer {
    /// A discoverer asking through `client`.
    pub fn new(client: Client, options: DiscoveryOptions) -> Discoverer {
        Discoverer {
            client,
            options,
            pending: Mutex::new(Vec::new()),
            passed_over: Mutex::new(Vec::new()),
        }
    }

    /// Adds bodies `head_id` passed over, to report with its next request (e.g. kept by an
    /// earlier process); those older than [`PASSED_OVER_MAX_AGE_MS`] when it is sent are dropped.
    pub fn report_passed_over_later(
        &self,
        head_id: &str,
        passed_over: impl IntoIterator<Item = PassedOver>,
    ) {
        self.passed_over_lock().extend(
            passed_over
                .into_iter()
                .map(|report| (head_id.to_owned(), report)),
        );
    }

    /// Bodies `head_id` passed over and has not reported yet.
    pub fn pending_passed_over(&self, head_id: &str) -> Vec<PassedOver> {
        self.passed_over_lock()
            .iter()
            .filter(|(head, _)| head == head_id)
            .map(|(_, report)| report.clone())
            .collect()
    }

    fn passed_over_lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, PassedOver)>> {
        self.passed_over
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `head_id`'s pending reports of bodies passed over that are still fresh at `now_ms`,
    /// each body once.
    fn take_passed_over(&self, head_id: &str, now_ms: i64) -> Vec<PassedOver> {
        let mine: Vec<PassedOver> = {
            let mut pending = self.passed_over_lock();
            let (mine, others) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|(head, _)| head == head_id);
            *pending = others;
            mine.into_iter().map(|(_, report)| report).collect()
        };
        let mut taken: Vec<PassedOver> = Vec::new();
        for report in mine {
            if now_ms.saturating_sub(report.at_ms) > PASSED_OVER_MAX_AGE_MS {
                continue;
            }
            match taken.iter_mut().find(|kept| kept.body_id == report.body_id) {
                Some(kept) => kept.at_ms = kept.at_ms.max(report.at_ms),
                None => taken.push(report),
            }
        }
        taken
    }

    /// The options in force.
    pub fn options(&self) -> DiscoveryOptions {
        self.options
    }

    /// Adds connect times to report with the next request (e.g. saved by an earlier process).
    pub fn report_later(&self, measurements: impl IntoIterator<Item = Measurement>) {
        self.pending_lock().extend(measurements);
    }

    /// Connect times measured but not reported yet.
    pub fn pending_measurements(&self) -> Vec<Measurement> {
        self.pending_lock().clone()
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, Vec<Measurement>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Finds the route for `head_id`: the earliest body of the eligible list that answers (LAN
    /// before WireGuard), asking once more without the unreachable ones when none answers.
    /// Logs the field's lines: `LAN host <ip> not reachable, falling back to WireGuard`,
    /// `routing via WireGuard: <ip>`, and one line per skipped body with both errors.
    pub async fn discover(&self, head_id: &str) -> Result<Discovery, DiscoveryError> {
        let started = Instant::now();
        let mut tried: Vec<BodyProbes> = Vec::new();
        // The first request reports the bodies an earlier discovery passed over.
        let passed_over = self.take_passed_over(head_id, hydra_api::now_ms());
        let mut unreachable: Vec<String> = passed_over
            .iter()
            .map(|report| report.body_id.clone())
            .collect();
        if !unreachable.is_empty() {
            tracing::debug!(%head_id, unreachable = %unreachable.join(","), "[discovery] reporting the bodies the last discovery passed over");
        }
        for round in 1..=2u32 {
            let measured = std::mem::take(&mut *self.pending_lock());
            let ask = |unreachable: Vec<String>, measured: Vec<Measurement>| {
                let query = EligibleQuery::Head {
                    head_id: head_id.to_owned(),
                    unreachable,
                    measured,
                };
                async move { self.client.eligible(&query).await }
            };
            let mut answer = match ask(unreachable.clone(), measured.clone()).await {
                Ok(answer) => answer,
                Err(error) => {
                    self.report_later(measured);
                    if round == 1 {
                        self.report_passed_over_later(head_id, passed_over);
                    }
                    return Err(error.into());
                }
            };
            // The bodies passed over last time may be all this head has now: they are asked
            // for once more rather than reported as no body at all (the server remembers them).
            if round == 1 && answer.bodies.is_empty() && !passed_over.is_empty() {
                answer = ask(Vec::new(), Vec::new()).await?;
            }
            if answer.bodies.is_empty() {
                if round == 1 {
                    return Err(DiscoveryError::NoEligibleBody {
                        head_id: head_id.to_owned(),
                        policy: answer.policy,
                    });
                }
                tracing::warn!(%head_id, "[discovery] the second answer lists no other body");
                break;
            }
            match self
                .probe_answer(head_id, &answer, round, &mut tried, started)
                .await
            {
                Some(found) => return Ok(found),
                None => {
                    unreachable = answer.bodies.iter().map(|body| body.id.clone()).collect();
                    if round == 1 {
                        tracing::warn!(
                            %head_id,
                            unreachable = %unreachable.join(","),
                            "[discovery] no listed body is reachable; asking again without them"
                        );
                    }
                }
            }
        }
        Err(DiscoveryError::NoBodyReachable {
            head_id: head_id.to_owned(),
            tried,
        })
    }

    /// Walks `kept` (an eligible answer kept from the control plane) with the same probes as
    /// [`Discoverer::discover`], without asking any replica: what a head does while no replica
    /// answers. Connect times are kept for the next request.
    pub async fn discover_kept(
        &self,
        head_id: &str,
        kept: &EligibleResponse,
    ) -> Result<Discovery, DiscoveryError> {
        let started = Instant::now();
        let mut tried = Vec::new();
        if kept.bodies.is_empty() {
            return Err(DiscoveryError::NoEligibleBody {
                head_id: head_id.to_owned(),
                policy: kept.policy,
            });
        }
        match self
            .probe_answer(head_id, kept, 1, &mut tried, started)
            .await
        {
            Some(found) => Ok(found),
            None => Err(DiscoveryError::NoBodyReachable {
                head_id: head_id.to_owned(),
                tried,
            }),
        }
    }

    /// Probes one answer's bodies, logs the round, keeps the connect times; the route to the
    /// earliest body that answered, if any.
    async fn probe_answer(
        &self,
        head_id: &str,
        answer: &EligibleResponse,
        round: u32,
        tried: &mut Vec<BodyProbes>,
        started: Instant,
    ) -> Option<Discovery> {
        let race = self.race(answer).await;
        self.report_later(measurements_of(answer, &race));
        let now_ms = hydra_api::now_ms();
        self.report_passed_over_later(
            head_id,
            race.passed_over().into_iter().map(|body| PassedOver {
                body_id: answer.bodies[body].id.clone(),
                at_ms: now_ms,
            }),
        );
        tried.extend(log_round(answer, &race, round));
        let Some(RaceOutcome::Reached { probe, rtt_ms }) = race.outcome() else {
            return None;
        };
        let body = answer.bodies[probe.body].clone();
        let (ip, _) = race.probe(probe);
        let ip = ip.expect("a reached probe has an address");
        Some(Discovery {
            route: Route {
                body_id: body.id.clone(),
                ip,
                port: self.options.port,
                transport: probe.transport,
                rtt_ms,
            },
            body,
            policy: answer.policy,
            tried: tried.clone(),
            elapsed: started.elapsed(),
            answer: answer.clone(),
        })
    }

    /// Runs the probe race over one answer, opening one TCP connection per started probe.
    async fn race(&self, answer: &EligibleResponse) -> ProbeRace {
        let bodies: Vec<ProbeBody> = answer
            .bodies
            .iter()
            .map(|body| ProbeBody {
                lan: body.lan_ip,
                wireguard: body.wg_ip,
            })
            .collect();
        let settings = self.options.probe;
        let mut race = ProbeRace::new(&bodies, settings);
        let clock = Instant::now();
        let now = || clock.elapsed().as_millis() as i64;
        let port = self.options.port;
        let timeout = Duration::from_millis(u64::from(settings.timeout_ms));
        let mut tasks: JoinSet<(ProbeKey, Result<u32, ProbeError>)> = JoinSet::new();
        let mut running: HashMap<ProbeKey, AbortHandle> = HashMap::new();
        // Every probe ends within its timeout, so the race ends within this bound.
        let hard_limit = timeout * (2 * bodies.len() as u32 + 2);
        loop {
            while let Some(action) = race.poll_action(now()) {
                match action {
                    ProbeAction::Start { probe, ip } => {
                        let handle =
                            tasks.spawn(async move { (probe, connect(ip, port, timeout).await) });
                        running.insert(probe, handle);
                    }
                    ProbeAction::Cancel { probe } => {
                        if let Some(handle) = running.remove(&probe) {
                            handle.abort();
                        }
                    }
                }
            }
            if race.outcome().is_some() || clock.elapsed() > hard_limit {
                break;
            }
            let wake = race
                .poll_timeout()
                .map(|at| clock + Duration::from_millis(at.max(0) as u64));
            if tasks.is_empty() && wake.is_none() {
                debug_assert!(false, "probe race stuck: nothing in flight and no timer");
                break;
            }
            tokio::select! {
                joined = tasks.join_next(), if !tasks.is_empty() => {
                    if let Some(Ok((probe, result))) = joined {
                        running.remove(&probe);
                        race.handle_result(probe, result, now());
                    }
                }
                () = sleep_until(wake) => race.handle_timeout(now()),
            }
        }
        tasks.abort_all();
        race
    }
}

#[cfg(test)]
mod tests;
