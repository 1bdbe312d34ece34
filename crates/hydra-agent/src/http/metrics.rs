//! `GET /metrics` on every agent: its sessions by state, degraded state, heartbeat lag and write
//! journal in the Prometheus text format, rendered by the same code as the server's
//! (`hydra_proxy::metrics_text`). Unauthenticated, like the server's: counts only, no ids.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};

use super::AgentState;

/// Every state a session can be in: each is exported, 0 included, so a dashboard's series exist
/// before the first session.
const SESSION_STATES: [hydra_api::SessionState; 4] = [
    hydra_api::SessionState::Starting,
    hydra_api::SessionState::Running,
    hydra_api::SessionState::Stopped,
    hydra_api::SessionState::Error,
];

/// The `/metrics` route. Installs the process's recorder now, when the router is built: what is
/// recorded before a recorder exists (the proxy's counters, these gauges) goes nowhere.
pub(super) fn route() -> MethodRouter<AgentState> {
    let _ = hydra_proxy::metrics_text::handle();
    get(metrics)
}

/// Sets the agent's gauges from its state at the time of the scrape, then renders every metric
/// of the process.
async fn metrics(State(state): State<AgentState>) -> impl IntoResponse {
    record(&state, hydra_api::now_ms());
    hydra_proxy::metrics_text::render()
}

fn record(state: &AgentState, now_ms: i64) {
    let (_active, max_sessions, sessions) = state.sessions_health();
    for wanted in SESSION_STATES {
        let count = sessions
            .iter()
            .filter(|session| session.status == wanted)
            .count();
        metrics::gauge!("hydra_agent_sessions", "state" => wanted.as_str()).set(count as f64);
    }
    metrics::gauge!("hydra_agent_sessions_max").set(f64::from(max_sessions));
    let alive = sessions
        .iter()
        .filter(|session| session.process_alive)
        .count();
    metrics::gauge!("hydra_agent_session_processes").set(alive as f64);
    let ride_out = state.ride_out();
    metrics::gauge!("hydra_agent_degraded").set(if ride_out.degraded() { 1.0 } else { 0.0 });
    if let Some(last) = state.heartbeat().last_success {
        let lag_ms = now_ms.saturating_sub(last).max(0);
        metrics::gauge!("hydra_agent_heartbeat_lag_seconds").set(lag_ms as f64 / 1_000.0);
    }
    if let Some(journal) = ride_out.journal() {
        metrics::gauge!("hydra_agent_journal_entries").set(journal.len() as f64);
        metrics::counter!("hydra_agent_journal_dropped_total").absolute(journal.dropped());
    }
    metrics::gauge!("hydra_agent_uptime_seconds").set(state.inner.started.elapsed().as_secs_f64());
    // The mesh's series are `hydra_mesh_*`, the same on agents and servers, set by its driver
    // every second (`MeshMetrics::record`).
}
