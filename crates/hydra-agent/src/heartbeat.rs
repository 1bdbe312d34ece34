//! The heartbeat loop: every `heartbeat.interval` (with jitter) the node's load goes to the
//! control plane through the client SDK (which follows the master), and a worker sends its report
//! (agent URL and key, max sessions, the sessions it actually runs). After a failure the next try
//! comes sooner, on a full-jitter backoff from 1 s up to the interval; a change of state is logged
//! once (WARN when the server goes away, INFO when it answers again).

use std::time::Duration;

use hydra_api::{HeartbeatRequest, WorkerReport};
use hydra_client::{Client, ClientError};
use hydra_core::backoff::full_jitter_delay_ms;
use tokio_util::sync::CancellationToken;

use crate::http::AgentState;
use crate::journal::Write;

/// What one beat needs to know.
#[derive(Debug, Clone)]
pub struct HeartbeatSettings {
    /// Node id.
    pub node_id: String,
    /// Mean time between beats.
    pub interval: Duration,
    /// Each wait is drawn from `interval * (1 ± jitter)`.
    pub jitter: f64,
    /// The agent's URL as the control plane reaches it.
    pub agent_url: String,
}

/// What became of one beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The control plane took it.
    Sent,
    /// No master could take it: the heartbeat (and report) went to the write journal, to be
    /// replayed when a master is back.
    Journaled,
}

/// Sends one heartbeat, and the worker report when the agent runs the worker role. With a write
/// journal (the daemon opens one), they go to the journal instead while the agent is degraded,
/// while older writes still wait there (so the server sees them in order), or when sending fails
/// because no master answers.
pub async fn beat(
    state: &AgentState,
    client: &Client,
    settings: &HeartbeatSettings,
) -> Result<Beat, ClientError> {
    let (active, report) = match state.worker() {
        Some(worker) => {
            // Numbered before the snapshot: a report with a higher number never shows less.
            let sequence = worker.next_report_sequence();
            let sessions = worker.snapshot();
            let report = WorkerReport {
                agent_url: settings.agent_url.clone(),
                agent_key: state.agent_key().to_owned(),
                max_sessions: worker.max_sessions(),
                sessions: sessions.iter().map(|session| session.to_wire()).collect(),
                sequence: Some(sequence),
                start_timeout_ms: Some(
                    u64::try_from(worker.start_bound().as_millis()).unwrap_or(u64::MAX),
                ),
            };
            (worker.active_sessions(), Some(report))
        }
        None => (0, None),
    };
    let request = HeartbeatRequest {
        idle: active == 0,
        active_sessions: active,
        vram_mb: None,
    };
    let Some(journal) = state.ride_out().journal().cloned() else {
        client.heartbeat(&settings.node_id, &request).await?;
        if let Some(report) = report {
            client.report_worker(&settings.node_id, &report).await?;
        }
        return Ok(Beat::Sent);
    };
    let defer = |error: Option<ClientError>| -> Result<Beat, ClientError> {
        let now = hydra_now_ms();
        let mut writes = vec![Write::Heartbeat(request.clone())];
        writes.extend(report.clone().map(Write::WorkerReport));
        for write in writes {
            if let Err(journal_error) =
                journal.append(&settings.node_id, write, now, rand::random::<u128>())
            {
                tracing::error!(error = %journal_error, "[journal] cannot journal a write; it is lost");
                return Err(error.unwrap_or(ClientError::NoMaster {
                    replicas: client.replica_urls(),
                }));
            }
        }
        Ok(Beat::Journaled)
    };
    if state.ride_out().degraded() {
        return defer(None);
    }
    if !journal.is_empty()
        && let Err(error) = journal.replay(client).await
    {
        return if is_unreachable(&error) {
            defer(Some(error))
        } else {
            Err(error)
        };
    }
    let sent = async {
        client.heartbeat(&settings.node_id, &request).await?;
        if let Some(report) = &report {
            client.report_worker(&settings.node_id, report).await?;
        }
        Ok::<(), ClientError>(())
    };
    match sent.await {
        Ok(()) => Ok(Beat::Sent),
        // The heartbeat may have landed before the report failed: journaling both is harmless
        // (a heartbeat says nothing new; the report's sequence keeps order on the server).
        Err(error) if is_unreachable(&error) => defer(Some(error)),
        Err(error) => Err(error),
    }
}

/// Whether a failed write failed because no master could take it (so it is worth journaling),
/// rather than being refused.
fn is_unreachable(error: &ClientError) -> bool {
    error.is_transient() || matches!(error, ClientError::Indeterminate { .. })
}

/// Beats until `shutdown`; a change to the session set (`report_now`) triggers a beat at once.
pub async fn run(
    state: AgentState,
    client: Client,
    settings: HeartbeatSettings,
    shutdown: CancellationToken,
) {
    run_with_units(state, client, settings, shutdown, rand::random::<f64>).await;
}

/// [`run`] with its randomness passed in: `unit` gives each wait's draw in `[0, 1]` (the jitter
/// after a success, the full-jitter backoff after a failure), so a test on a paused clock can
/// check the schedule exactly.
pub async fn run_with_units(
    state: AgentState,
    client: Client,
    settings: HeartbeatSettings,
    shutdown: CancellationToken,
    mut unit: impl FnMut() -> f64,
) {
    let mut failures: u32 = 0;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = beat(&state, &client, &settings) => outcome,
        };
        let wait = match outcome {
            Ok(Beat::Journaled) => {
                if failures == 0 {
                    tracing::warn!(node_id = %settings.node_id, "[heartbeat] no master takes writes; heartbeats and reports go to the write journal until one does");
                }
                failures = failures.saturating_add(1);
                state.update_heartbeat(|seen| {
                    seen.last_error = Some("no master; written to the journal".to_owned());
                });
                // The write is kept: no need to come back sooner than the interval.
                jittered(settings.interval, settings.jitter, unit())
            }
            Ok(Beat::Sent) => {
                if failures > 0 {
                    tracing::info!(node_id = %settings.node_id, "[heartbeat] the control plane answers again");
                }
                failures = 0;
                let now = hydra_now_ms();
                state.update_heartbeat(|seen| {
                    seen.last_success = Some(now);
                    seen.last_error = None;
                    seen.master = client.master_url();
                });
                jittered(settings.interval, settings.jitter, unit())
            }
            Err(error) => {
                if failures == 0 {
                    tracing::warn!(node_id = %settings.node_id, %error, "[heartbeat] heartbeat failed; retrying with backoff");
                } else {
                    tracing::debug!(node_id = %settings.node_id, %error, failures, "[heartbeat] heartbeat failed again");
                }
                let interval_ms = u64::try_from(settings.interval.as_millis()).unwrap_or(u64::MAX);
                let wait =
                    full_jitter_delay_ms(failures, 1_000.min(interval_ms), interval_ms, unit());
                failures = failures.saturating_add(1);
                state.update_heartbeat(|seen| seen.last_error = Some(error.to_string()));
                Duration::from_millis(wait.max(50))
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = state.report_now().notified() => {}
        }
    }
}

/// `interval * (1 + jitter * (2 * unit - 1))`: uniform in `interval * [1 - jitter, 1 + jitter]`.
pub fn jittered(interval: Duration, jitter: f64, unit: f64) -> Duration {
    let factor = 1.0 + jitter.clamp(0.0, 1.0) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    interval.mul_f64(factor.max(0.0))
}

fn hydra_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_band() {
        let interval = Duration::from_secs(30);
        assert_eq!(jittered(interval, 0.1, 0.0), Duration::from_secs(27));
        assert_eq!(jittered(interval, 0.1, 0.5), Duration::from_secs(30));
        assert_eq!(jittered(interval, 0.1, 1.0), Duration::from_secs(33));
        assert_eq!(jittered(interval, 0.0, 0.9), interval);
    }
}
