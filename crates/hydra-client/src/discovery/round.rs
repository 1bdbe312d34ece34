//! One probe round's I/O and its account: the TCP connect a probe is, the connect times
//! measured, and the log of the round as the field's sequential walk would have written it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hydra_api::EligibleResponse;
use hydra_core::Transport;
use hydra_core::probe::{ProbeError, ProbeKey, ProbeRace, ProbeStatus, RaceOutcome};

use super::{BodyProbes, ProbeOutcome};
use crate::Measurement;

/// Sleeps until `wake`, or for ever when there is nothing to wait for.
pub(super) async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One TCP connect, bounded by `timeout`; answers the connect time in ms (at least 1).
pub(super) async fn connect(ip: IpAddr, port: u16, timeout: Duration) -> Result<u32, ProbeError> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await {
        Ok(Ok(_stream)) => {
            let micros = started.elapsed().as_micros();
            Ok(u32::try_from(micros.div_ceil(1_000)).unwrap_or(u32::MAX))
        }
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(ProbeError::Refused)
        }
        Ok(Err(error)) => Err(ProbeError::Io(error.to_string())),
        Err(_) => Err(ProbeError::TimedOut {
            after_ms: timeout.as_millis() as u32,
        }),
    }
}

/// What a head reports of one probe.
fn outcome_of(status: &ProbeStatus) -> ProbeOutcome {
    match status {
        ProbeStatus::Reached { rtt_ms } => ProbeOutcome::Reached { rtt_ms: *rtt_ms },
        ProbeStatus::Failed(error) => ProbeOutcome::Failed(error.clone()),
        ProbeStatus::NotStarted | ProbeStatus::InFlight { .. } | ProbeStatus::Cancelled => {
            ProbeOutcome::NotProbed
        }
    }
}

/// The connect times the race measured, to send with the next request (`measured=`).
pub(super) fn measurements_of(answer: &EligibleResponse, race: &ProbeRace) -> Vec<Measurement> {
    race.measurements()
        .into_iter()
        .map(|(probe, rtt_ms)| Measurement {
            body_id: answer.bodies[probe.body].id.clone(),
            transport: probe.transport,
            rtt_ms,
        })
        .collect()
}

/// Logs one round as the sequential walk would have (in list order, up to the chosen body) and
/// answers the bodies that had a probe.
pub(super) fn log_round(
    answer: &EligibleResponse,
    race: &ProbeRace,
    round: u32,
) -> Vec<BodyProbes> {
    let winner = match race.outcome() {
        Some(RaceOutcome::Reached { probe, .. }) => Some(probe),
        _ => None,
    };
    let mut tried = Vec::new();
    for (index, body) in answer.bodies.iter().enumerate() {
        let key = |transport| ProbeKey {
            body: index,
            transport,
        };
        let lan = outcome_of(race.probe(key(Transport::Lan)).1);
        let wireguard = outcome_of(race.probe(key(Transport::Wireguard)).1);
        if lan == ProbeOutcome::NotProbed && wireguard == ProbeOutcome::NotProbed {
            continue;
        }
        let probes = BodyProbes {
            body: body.clone(),
            round,
            lan,
            wireguard,
        };
        let walked = winner.is_none_or(|winner| index <= winner.body);
        if walked {
            if let (Some(lan_ip), Some(_), ProbeOutcome::Failed(_)) =
                (body.lan_ip, body.wg_ip, &probes.lan)
            {
                tracing::info!(body_id = %body.id, "[discovery] LAN host {lan_ip} not reachable, falling back to WireGuard");
            }
            match winner {
                Some(winner) if winner.body == index => {
                    match (winner.transport, race.probe(winner).0) {
                        (Transport::Wireguard, Some(ip)) => {
                            tracing::info!(body_id = %body.id, "[discovery] routing via WireGuard: {ip}");
                        }
                        (_, Some(ip)) => {
                            tracing::info!(body_id = %body.id, "[discovery] routing via LAN: {ip}");
                        }
                        (_, None) => {}
                    }
                }
                _ => {
                    tracing::warn!(body_id = %body.id, "[discovery] skipping body {probes}");
                }
            }
        }
        tried.push(probes);
    }
    tried
}
