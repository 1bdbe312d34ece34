//! The periodic check of every session: process liveness from its handle, data-dir integrity
//! (`ALERT` when it vanished under a live process), and removal of `error`/`stopped` sessions
//! after the idle timeout.

use std::path::PathBuf;
use std::time::Duration;

use hydra_api::SessionState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::process::SessionProcess;
use super::{Worker, remove_dir};

/// What one round of checks changed, by session id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Sessions whose process was found dead.
    pub died: Vec<String>,
    /// Sessions whose data dir vanished under a live process.
    pub lost_data_dir: Vec<String>,
    /// Sessions removed after the idle timeout.
    pub removed: Vec<String>,
}

impl Worker {
    /// One round of checks at `now`: a dead process or a vanished data dir turns the session
    /// `error` (ending its process group); an `error` or `stopped` session unchanged for the idle
    /// timeout is removed with its data dir.
    pub async fn check_sessions(&self, now: Instant) -> CheckReport {
        let mut report = CheckReport::default();
        let mut to_end: Vec<SessionProcess> = Vec::new();
        // File-system calls run outside the table's lock: the lock only marks and collects.
        let mut live_dirs: Vec<(String, PathBuf)> = Vec::new();
        let mut idle: Vec<(String, PathBuf)> = Vec::new();
        {
            let mut table = self.table();
            for entry in table.values_mut() {
                if let Some(process) = entry.process.as_mut() {
                    if let Some(status) = process.exited() {
                        let id = &entry.id;
                        tracing::warn!(session_id = %id, %status, "[session {id}] process exited; session marked error");
                        entry.error = Some(format!("session process exited ({status})"));
                        entry.status = SessionState::Error;
                        entry.changed = now;
                        to_end.extend(entry.process.take());
                        report.died.push(entry.id.clone());
                    } else if entry.status == SessionState::Running {
                        live_dirs.push((entry.id.clone(), entry.data_dir.clone()));
                    }
                } else if entry.status == SessionState::Running {
                    // Running without a handle cannot happen; treat it as a dead process.
                    entry.status = SessionState::Error;
                    entry.error = Some("session process lost".into());
                    entry.changed = now;
                    report.died.push(entry.id.clone());
                }
                let ended = matches!(entry.status, SessionState::Error | SessionState::Stopped);
                if ended
                    && now.saturating_duration_since(entry.changed) >= self.settings.idle_timeout
                {
                    idle.push((entry.id.clone(), entry.data_dir.clone()));
                }
            }
        }
        live_dirs.retain(|(_, data_dir)| !data_dir.is_dir());
        // The ids stay in the table until their dirs are gone, so no start can reuse one
        // meanwhile (a duplicate id is refused).
        for (_, data_dir) in &idle {
            remove_dir(data_dir);
        }
        {
            let mut table = self.table();
            for (id, data_dir) in live_dirs {
                let Some(entry) = table.get_mut(&id) else {
                    continue;
                };
                if entry.status != SessionState::Running || entry.process.is_none() {
                    continue;
                }
                tracing::error!(session_id = %id, data_dir = %data_dir.display(), "[worker] ALERT: data directory of session {id} vanished under a live process; session marked error");
                entry.error = Some("data directory vanished".into());
                entry.status = SessionState::Error;
                entry.changed = now;
                to_end.extend(entry.process.take());
                report.lost_data_dir.push(id);
            }
            for (id, _) in &idle {
                if let Some(entry) = table.remove(id) {
                    to_end.extend(entry.process);
                    tracing::info!(session_id = %id, status = entry.status.as_str(), "[cleanup] removed idle session and its data dir");
                    report.removed.push(id.clone());
                }
            }
        }
        for process in to_end {
            process.end(self.settings.stop_grace).await;
        }
        report
    }

    /// Runs [`Worker::check_sessions`] every `check_interval` until `shutdown`.
    pub async fn run_checks(&self, shutdown: CancellationToken) {
        let period = self.settings.check_interval.max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    self.check_sessions(Instant::now()).await;
                }
            }
        }
    }
}
