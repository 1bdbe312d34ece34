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

/// Sends one heartbeat, and the worker report when the agent runs the worker role.
pub async fn beat(
    state: &AgentState,
    client: &Client,
    settings: &HeartbeatSettings,
) -> Result<(), ClientError> {
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
    client
        .heartbeat(
            &settings.node_id,
            &HeartbeatRequest {
                idle: active == 0,
                active_sessions: active,
                vram_mb: None,
            },
        )
        .await?;
    if let Some(report) = report {
        client.report_worker(&settings.node_id, &report).await?;
    }
    Ok(())
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
            Ok(()) => {
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
