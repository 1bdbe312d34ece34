//! Applying a worker's report: the sequence check, reconciliation of the stored live sessions
//! through `hydra_core::session::reconcile`, the durable record, then the directory.

use std::collections::HashSet;
use std::time::Duration;

use hydra_api::WorkerReport;
use hydra_api::system::now_ms;
use hydra_core::Role;
use hydra_core::session::{
    Change, DEFAULT_AGENT_START_MS, ReportContext, ReportedSession, StoredSession, adopt_unplaced,
    reconcile, start_deadline_ms,
};
use hydra_store::{SessionRecord, SessionStatus, WorkerReportRecord};

use crate::error::{ApiError, store_error};
use crate::state::AppState;
use crate::workers::{MAX_AGENT_START_MS, RETIRED_KEYS, WorkerInfo};

/// Applies a valid report of worker `id`: ignored when older than the last one applied for the
/// same agent run; otherwise the stored sessions are reconciled with it, it is stored, and the
/// directory takes its address, capacity and live sessions (keeping the server's placements).
/// `write_id` is claimed with the stored report (a repeated report is not stored again; the
/// reconciliation it repeats is idempotent).
pub async fn apply_report(
    state: &AppState,
    id: &str,
    report: WorkerReport,
    clamped_from: Option<u32>,
    write_id: Option<hydra_store::WriteId>,
) -> Result<(), ApiError> {
    let directory = state.workers();
    // One report of a worker at a time, so the sequence check and what follows are one step.
    let _serial = directory.serialise_report(id).await;
    let now = now_ms();
    let known = directory.get(id);
    let same_run = known
        .as_ref()
        .is_some_and(|known| known.agent_key == report.agent_key);
    if superseded(known.as_ref(), same_run, id, &report) {
        return Ok(());
    }
    let run_seen_at = match &known {
        Some(known) if same_run => known.run_seen_at,
        _ => now,
    };
    let start_timeout_ms = agent_start_timeout_ms(&report);
    let context = ReportContext {
        run_seen_at,
        start_deadline_ms: start_deadline_ms(start_timeout_ms),
    };
    reconcile_worker(state, id, &report, now, &context).await?;
    let reported_live: HashSet<String> = report
        .sessions
        .iter()
        .filter(|session| session.status.is_active())
        .map(|session| session.session_id.clone())
        .collect();
    let agent_url = report.agent_url.trim_end_matches('/').to_owned();
    // The store first, then memory: the directory never holds a report a restart would lose.
    let stored = WorkerReportRecord {
        worker_id: id.to_owned(),
        agent_url: agent_url.clone(),
        agent_key_sealed: state.sealer().seal(id, &report.agent_key),
        max_sessions: report.max_sessions,
        reported_at: now,
        write_id,
    };
    state.report_writes().submit(stored).await?;
    if !same_run {
        log_new_run(id, &agent_url, &report, clamped_from);
    }
    let still_worker = || {
        state
            .registry()
            .read()
            .expect("registry lock poisoned")
            .get(id)
            .is_some_and(|node| node.roles.contains(Role::Worker))
    };
    directory.record_report(id, now, still_worker, |info| {
        if info.agent_key != report.agent_key && !info.agent_key.is_empty() {
            let retired = std::mem::take(&mut info.agent_key);
            info.retired_keys.push(retired);
            let excess = info.retired_keys.len().saturating_sub(RETIRED_KEYS);
            info.retired_keys.drain(..excess);
        }
        info.agent_url = agent_url;
        info.agent_key = report.agent_key;
        info.max_sessions = report.max_sessions;
        info.reported_at = now;
        info.start_timeout_ms = start_timeout_ms;
        info.sequence = report.sequence;
        info.run_seen_at = run_seen_at;
        let listed: HashSet<&str> = report
            .sessions
            .iter()
            .map(|session| session.session_id.as_str())
            .collect();
        info.ended.retain(|id| listed.contains(id.as_str()));
        info.reported_live = reported_live
            .into_iter()
            .filter(|id| !info.ended.contains(id))
            .collect();
    });
    Ok(())
}

/// Whether the report is one to ignore: older than the last one applied for the same agent run,
/// or from an earlier agent run (a retired key).
fn superseded(known: Option<&WorkerInfo>, same_run: bool, id: &str, report: &WorkerReport) -> bool {
    if same_run
        && let (Some(last), Some(sequence)) = (known.and_then(|k| k.sequence), report.sequence)
        && sequence <= last
    {
        tracing::debug!(worker_id = %id, sequence, last, "[controller] stale worker report ignored");
        return true;
    }
    if known.is_some_and(|known| known.retired_keys.contains(&report.agent_key)) {
        tracing::debug!(worker_id = %id, "[controller] report of an earlier agent run ignored");
        return true;
    }
    false
}

/// The agent's start timeout: bounded, so a report cannot make the server wait on a start (or
/// keep it `starting`) for ever.
fn agent_start_timeout_ms(report: &WorkerReport) -> i64 {
    report
        .start_timeout_ms
        .and_then(|ms| i64::try_from(ms).ok())
        .unwrap_or(DEFAULT_AGENT_START_MS)
        .clamp(1_000, MAX_AGENT_START_MS)
}

/// The first report of an agent run (a new key): registered, and capped once per run, not on
/// every report.
fn log_new_run(id: &str, agent_url: &str, report: &WorkerReport, clamped_from: Option<u32>) {
    tracing::info!(worker_id = %id, %agent_url, max_sessions = report.max_sessions, "[controller] worker registered");
    if let Some(reported) = clamped_from {
        tracing::warn!(worker_id = %id, reported_max_sessions = reported, max_sessions = report.max_sessions, "[controller] worker reports more sessions than max_sessions_per_worker; capped");
    }
}

/// Brings the live stored sessions of `worker_id` in line with its report
/// (`hydra_core::session::reconcile`): the changes are written together (one transaction), their
/// slots given back, and sessions the worker should not run are ended there.
async fn reconcile_worker(
    state: &AppState,
    worker_id: &str,
    report: &WorkerReport,
    now: i64,
    context: &ReportContext,
) -> Result<(), ApiError> {
    let records = state
        .store()
        .list_live_sessions_of_worker(worker_id)
        .await
        .map_err(store_error)?;
    let stored: Vec<StoredSession<'_>> = records
        .iter()
        .map(|record| StoredSession {
            id: &record.id,
            state: record.status.into(),
            since: record.updated_at,
        })
        .collect();
    let reported: Vec<ReportedSession<'_>> = report
        .sessions
        .iter()
        .map(|session| ReportedSession {
            id: &session.session_id,
            state: session.status.into(),
            error: session.error.as_deref(),
        })
        .collect();
    let changes = reconcile(&stored, &reported, now, context);
    let mut updates = Vec::new();
    let mut adopted = Vec::new();
    let mut released = Vec::new();
    for change in changes {
        match change {
            Change::Mark {
                id,
                state: next,
                error,
            } => {
                let Some(record) = records.iter().find(|record| record.id == id) else {
                    continue;
                };
                tracing::warn!(session_id = %id, %worker_id, status = next.as_str(), reason = error.as_deref().unwrap_or(""), "[controller] session state taken from the worker's report");
                let mut record = record.clone();
                record.status = next.into();
                record.error = error;
                record.updated_at = now;
                released.push(record.id.clone());
                updates.push(state.session_writes().update(record));
            }
            Change::EndOnWorker { id } => {
                let taken = adoptable(state, worker_id, report, &id, now).await?;
                if let Some(Adoption::WhenRunning) = taken {
                    // Reported still starting: taken on once a report shows it running (a
                    // starting record would wait for a start answer that never comes).
                } else if let Some(Adoption::Take(record)) = taken {
                    // Started by the worker itself while no control plane answered: it is
                    // this worker's (the id says so) and is now recorded like a placed one.
                    tracing::info!(session_id = %id, %worker_id, "[controller] took on a session the worker started while the control plane was away");
                    adopted.push(state.session_writes().insert(*record));
                } else if let Some(info) = state.workers().get(worker_id) {
                    end_on_worker(info, worker_id.to_owned(), id);
                }
            }
        }
    }
    // Submitted together, so they share one transaction.
    futures::future::try_join(
        futures::future::try_join_all(updates),
        futures::future::try_join_all(adopted),
    )
    .await?;
    for session_id in released {
        state.workers().release(worker_id, &session_id);
    }
    Ok(())
}

/// What becomes of a reported session the worker started itself.
enum Adoption {
    /// Recorded as the worker's, running.
    Take(Box<SessionRecord>),
    /// Neither recorded nor ended yet: it is still starting.
    WhenRunning,
}

/// The record of reported session `id` when the control plane takes it on
/// (`hydra_core::session::adopt_unplaced`): its id names `worker_id` and nothing was ever
/// recorded under it.
async fn adoptable(
    state: &AppState,
    worker_id: &str,
    report: &WorkerReport,
    id: &str,
    now: i64,
) -> Result<Option<Adoption>, ApiError> {
    let Some(reported) = report
        .sessions
        .iter()
        .find(|session| session.session_id == id)
    else {
        return Ok(None);
    };
    if !adopt_unplaced(worker_id, id, false) {
        return Ok(None);
    }
    let recorded = state
        .store()
        .get_session(id)
        .await
        .map_err(store_error)?
        .is_some();
    if !adopt_unplaced(worker_id, id, recorded) {
        return Ok(None);
    }
    if reported.status != hydra_api::SessionState::Running {
        return Ok(
            (reported.status == hydra_api::SessionState::Starting).then_some(Adoption::WhenRunning)
        );
    }
    Ok(Some(Adoption::Take(Box::new(SessionRecord {
        id: id.to_owned(),
        worker_id: worker_id.to_owned(),
        body_ip: reported.body_ip.clone(),
        body_id: None,
        head_id: None,
        experience: None,
        port: Some(reported.port),
        stream_url: Some(reported.stream_url.clone()),
        status: SessionStatus::Running,
        error: None,
        created_at: now,
        updated_at: now,
    }))))
}

/// Asks a worker's agent, in the background, to end a session the control plane does not hold
/// live; a failure is logged and the next report asks again.
fn end_on_worker(info: WorkerInfo, worker_id: String, session_id: String) {
    tokio::spawn(async move {
        let answer = info
            .agent()
            .with_timeout(Duration::from_secs(10))
            .end_session(&session_id)
            .await;
        match answer {
            Ok(_) | Err(hydra_client::ClientError::NotFound(_)) => {
                tracing::info!(%session_id, %worker_id, "[controller] ended a session the worker ran but the control plane does not hold");
            }
            Err(error) if error.status().is_some() => {
                tracing::warn!(%session_id, %worker_id, status = error.status(), %error, "[controller] worker refused to end a session it should not run");
            }
            Err(error) => {
                tracing::warn!(%session_id, %worker_id, %error, "[controller] worker does not answer; cannot end a session it should not run");
            }
        }
    });
}
