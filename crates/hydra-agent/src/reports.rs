//! Session records: at the end of every session the worker sends one record (session id,
//! worker, body, head, experience, district, start, end, duration, end reason, disconnect count,
//! ICE candidate type, rating) to `report.url` with `report.token` (the field's `nps.*` read as
//! aliases).
//!
//! Each record is first appended to its own journal, `reports.jsonl` in the state dir (the write
//! journal's JSON-lines format and fsync rules, `crate::journal`), then sent with backoff until
//! the endpoint takes it. A second file rather than an entry kind of the write journal: that
//! journal is replayed only to a master and stops at the first write the control plane cannot
//! take, so a report endpoint that is down would hold back heartbeats (and the reverse); its
//! bound drops heartbeats, never records. Every record carries an `Idempotency-Key` derived from
//! the worker and the session, the same on every attempt and after a restart, so an endpoint
//! that keeps the keys it took applies a record once even when an answer was lost or the agent
//! was killed between the answer and the journal's rewrite.
//!
//! The page adds what only it knows (disconnects, the ICE candidate type) through
//! `POST /session/{id}/stats` (viewer capability); the start request adds district, head and
//! body; `DELETE` and quit add the end reason.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydra_api::SessionState;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::journal::{JournalError, append_line, open_lines, replace_lines};
use crate::worker::{SessionSnapshot, Worker};

/// The records' journal in the state dir.
pub const REPORTS_FILE: &str = "reports.jsonl";

/// How often the worker's sessions are looked at for ends.
const WATCH_PERIOD: Duration = Duration::from_millis(250);
/// The bound of one POST to the endpoint.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most disconnects one beacon may add (the page sends one per disconnect).
const MAX_DISCONNECTS_PER_BEACON: u32 = 100;
/// The ICE candidate types a page may name (RTCIceCandidateType).
pub const CANDIDATE_TYPES: &[&str] = &["host", "srflx", "prflx", "relay"];

/// One session's record, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session id.
    pub session_id: String,
    /// The worker (node id) that ran it.
    pub worker: String,
    /// The body's node id, when the control plane chose it for a head.
    pub body: Option<String>,
    /// The body's address.
    pub body_ip: String,
    /// The head it was asked for.
    pub head: Option<String>,
    /// The experience.
    pub experience: Option<String>,
    /// The district it was placed in.
    pub district: Option<String>,
    /// Start, RFC 3339 UTC.
    pub start: String,
    /// End, RFC 3339 UTC.
    pub end: String,
    /// Duration in milliseconds.
    pub duration_ms: i64,
    /// `deleted` (the control plane), `quit` (the page), `error`, `stopped` or `agent_shutdown`.
    pub end_reason: String,
    /// Why it failed, for `error`.
    pub error: Option<String>,
    /// WebRTC disconnects the page saw.
    pub disconnect_count: u32,
    /// The local ICE candidate type of the selected pair (host, srflx, prflx, relay).
    pub ice_candidate_type: Option<String>,
    /// The viewer's stars, if given by the end.
    pub rating: Option<u8>,
}

/// A journaled record waiting for the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// Sent as `Idempotency-Key` on every attempt.
    pub idempotency_key: String,
    /// When it was journaled (unix ms).
    pub at_ms: i64,
    /// The record.
    pub record: SessionRecord,
}

/// What the start request said about a session beyond the worker's own table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionContext {
    /// District.
    pub district: Option<String>,
    /// Head id.
    pub head: Option<String>,
    /// Body node id.
    pub body: Option<String>,
}

/// A page's beacon: `POST /session/{id}/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageStats {
    /// Disconnects seen since the last beacon (0 to 100).
    #[serde(default)]
    pub disconnects: u32,
    /// The selected pair's local candidate type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_candidate_type: Option<String>,
}

impl PageStats {
    /// Checks the beacon; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.disconnects > MAX_DISCONNECTS_PER_BEACON {
            return Err(format!(
                "disconnects must be at most {MAX_DISCONNECTS_PER_BEACON}"
            ));
        }
        if let Some(kind) = &self.ice_candidate_type
            && !CANDIDATE_TYPES.contains(&kind.as_str())
        {
            return Err(format!(
                "ice_candidate_type must be one of {}",
                CANDIDATE_TYPES.join(", ")
            ));
        }
        Ok(())
    }
}

/// Where and how records go.
#[derive(Clone)]
pub struct RecordSettings {
    /// `report.url`; none: nothing is journaled or sent.
    pub url: Option<String>,
    /// `report.token` (never logged).
    pub token: Option<String>,
    /// Records kept on disk at most.
    pub max_entries: usize,
    /// First backoff ceiling.
    pub retry_base: Duration,
    /// Longest backoff ceiling.
    pub retry_max: Duration,
    /// `project` of the page's report link.
    pub project: String,
    /// `category` of the page's report link.
    pub category: String,
    /// The state dir holding [`REPORTS_FILE`].
    pub state_dir: PathBuf,
    /// The node id until the agent knows the enrolled one.
    pub node_id: String,
}

impl RecordSettings {
    /// From the agent's config (`report:`, else `nps:`).
    pub fn from_config(config: &crate::config::AgentConfig) -> RecordSettings {
        let report = config.report_settings();
        RecordSettings {
            url: report.url.clone(),
            token: report.token.clone(),
            max_entries: report.max_entries,
            retry_base: Duration::from_secs_f64(report.retry_base),
            retry_max: Duration::from_secs_f64(report.retry_max),
            project: report.project.clone(),
            category: report.category.clone(),
            state_dir: config.state_dir.clone(),
            node_id: config.node.id.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Debug for RecordSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RecordSettings")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Tracked {
    context: SessionContext,
    disconnects: u32,
    ice_candidate_type: Option<String>,
    /// When and why it ended, as `DELETE` or quit said.
    ended: Option<(i64, String)>,
    recorded: bool,
}

struct Pending {
    entries: VecDeque<PendingRecord>,
    file: Option<File>,
}

/// The session records of one worker; share it in an `Arc`.
pub struct Records {
    settings: RecordSettings,
    node_id: Mutex<String>,
    sessions: Mutex<HashMap<String, Tracked>>,
    pending: Mutex<Pending>,
    wake: Notify,
    http: reqwest::Client,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Records")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Records {
    /// Opens the records' journal (when `report.url` is set): records from before a restart are
    /// sent again. A corrupt file is set aside and reported beside the records.
    pub fn open(
        settings: RecordSettings,
        now_ms: i64,
    ) -> Result<(Arc<Records>, Option<JournalError>), JournalError> {
        let (entries, file, corrupt) = if settings.url.is_some() {
            let (entries, file, corrupt) =
                open_lines::<PendingRecord>(&settings.state_dir, REPORTS_FILE, now_ms)?;
            (entries, Some(file), corrupt)
        } else {
            (Vec::new(), None, None)
        };
        let records = Records {
            node_id: Mutex::new(settings.node_id.clone()),
            settings,
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending {
                entries: entries.into(),
                file,
            }),
            wake: Notify::new(),
            http: reqwest::Client::builder()
                .timeout(SEND_TIMEOUT)
                .build()
                .unwrap_or_default(),
        };
        Ok((Arc::new(records), corrupt))
    }

    /// The settings.
    pub fn settings(&self) -> &RecordSettings {
        &self.settings
    }

    /// Records waiting for the endpoint, oldest first.
    pub fn pending(&self) -> Vec<PendingRecord> {
        self.lock_pending().entries.iter().cloned().collect()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().expect("records journal poisoned")
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.sessions.lock().expect("records sessions poisoned")
    }

    /// The enrolled node id, for the `worker` field.
    pub fn set_node_id(&self, node_id: &str) {
        *self.node_id.lock().expect("node id poisoned") = node_id.to_owned();
    }

    /// A session started: what its start request said.
    pub fn session_started(&self, session_id: &str, context: SessionContext) {
        self.lock_sessions()
            .entry(session_id.to_owned())
            .or_default()
            .context = context;
    }

    /// What the start request said about `session_id`.
    pub fn context(&self, session_id: &str) -> SessionContext {
        self.lock_sessions()
            .get(session_id)
            .map(|tracked| tracked.context.clone())
            .unwrap_or_default()
    }

    /// `DELETE` or quit ended `session_id` now for `reason`.
    pub fn session_ending(&self, session_id: &str, reason: &str, now_ms: i64) {
        let mut sessions = self.lock_sessions();
        let tracked = sessions.entry(session_id.to_owned()).or_default();
        tracked
            .ended
            .get_or_insert_with(|| (now_ms, reason.to_owned()));
    }

    /// A page's beacon about a session the worker runs (checked by the caller).
    pub fn page_stats(&self, session_id: &str, stats: &PageStats) {
        let mut sessions = self.lock_sessions();
        let tracked = sessions.entry(session_id.to_owned()).or_default();
        tracked.disconnects = tracked.disconnects.saturating_add(stats.disconnects);
        if let Some(kind) = &stats.ice_candidate_type {
            tracked.ice_candidate_type = Some(kind.clone());
        }
    }

    /// Looks at the worker's sessions every 250 ms: an ended one not yet recorded is recorded
    /// (journaled, then sent); a session gone from the worker is forgotten.
    pub async fn watch(self: Arc<Self>, worker: Arc<Worker>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(WATCH_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            self.look_at(&worker.snapshot(), None, hydra_api::now_ms());
        }
    }

    /// After the worker's shutdown: records every session it ended (reason `agent_shutdown`
    /// unless one was given), journaled before the agent exits.
    pub fn after_shutdown(&self, worker: &Worker) {
        self.look_at(
            &worker.snapshot(),
            Some("agent_shutdown"),
            hydra_api::now_ms(),
        );
    }

    fn look_at(&self, sessions: &[SessionSnapshot], reason: Option<&str>, now_ms: i64) {
        let mut ended = Vec::new();
        {
            let mut tracked = self.lock_sessions();
            tracked.retain(|id, _| sessions.iter().any(|session| session.id == *id));
            for session in sessions {
                let entry = tracked.entry(session.id.clone()).or_default();
                let over = matches!(session.status, SessionState::Stopped | SessionState::Error);
                if over && !entry.recorded {
                    entry.recorded = true;
                    let node_id = self.node_id.lock().expect("node id poisoned").clone();
                    ended.push(make_record(session, entry, &node_id, reason, now_ms));
                }
            }
        }
        for record in ended {
            self.record(record, now_ms);
        }
    }

    /// Journals `record` (fsynced) and wakes the sender; without `report.url`, only logs.
    fn record(&self, record: SessionRecord, now_ms: i64) {
        let session_id = record.session_id.clone();
        if self.settings.url.is_none() {
            tracing::debug!(%session_id, "[report] no report.url: the session record is not sent");
            return;
        }
        let pending = PendingRecord {
            idempotency_key: idempotency_key(&record.worker, &record.session_id),
            at_ms: now_ms,
            record,
        };
        let mut journal = self.lock_pending();
        let journal = &mut *journal;
        let dropped = (journal.entries.len() + 1).saturating_sub(self.settings.max_entries);
        for _ in 0..dropped {
            journal.entries.pop_front();
        }
        let outcome = if dropped > 0 {
            tracing::warn!(
                dropped,
                max_entries = self.settings.max_entries,
                "[report] the session records' journal is full; dropping the oldest"
            );
            journal.entries.push_back(pending);
            replace_lines(&self.settings.state_dir, REPORTS_FILE, &journal.entries)
                .map(|file| journal.file = Some(file))
        } else {
            let path = self.settings.state_dir.join(REPORTS_FILE);
            let appended = match journal.file.as_mut() {
                Some(file) => append_line(file, &path, &pending),
                None => Ok(()),
            };
            journal.entries.push_back(pending);
            appended
        };
        match outcome {
            Ok(()) => tracing::info!(%session_id, "[report] session record journaled"),
            Err(error) => {
                tracing::error!(%session_id, %error, "[report] cannot journal the session record; it is kept in memory only")
            }
        }
        self.wake.notify_one();
    }

    /// Sends journaled records oldest first until `stop`: each until the endpoint takes it (2xx,
    /// or 409: it has the key already), with full-jitter backoff between failed attempts; one
    /// the endpoint refuses for good (another 4xx) is logged and dropped.
    pub async fn send(self: Arc<Self>, stop: CancellationToken) {
        let Some(url) = self.settings.url.clone() else {
            return;
        };
        let mut attempt: u32 = 0;
        loop {
            let next = self.lock_pending().entries.front().cloned();
            let Some(pending) = next else {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.wake.notified() => continue,
                }
            };
            let session_id = pending.record.session_id.clone();
            let mut request = self
                .http
                .post(&url)
                .header("Idempotency-Key", &pending.idempotency_key)
                .json(&pending.record);
            if let Some(token) = &self.settings.token {
                request = request.bearer_auth(token);
            }
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = request.send() => outcome,
            };
            let status = outcome.as_ref().ok().map(reqwest::Response::status);
            let taken = status.is_some_and(|status| {
                status.is_success() || status == reqwest::StatusCode::CONFLICT
            });
            let refused = status.is_some_and(|status| {
                status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 425 | 429)
            });
            if taken || refused {
                if taken {
                    tracing::info!(%session_id, attempts = attempt + 1, "[report] session record accepted");
                } else {
                    tracing::warn!(%session_id, status = status.map_or(0, |s| s.as_u16()), "[report] the report endpoint refused the session record for good; dropped");
                }
                self.forget(&pending.idempotency_key);
                attempt = 0;
                continue;
            }
            let reason = match &outcome {
                Ok(answer) => format!("answered {}", answer.status()),
                Err(error) => crate::sunshine::without_url(error),
            };
            let delay_ms = hydra_core::backoff::full_jitter_delay_ms(
                attempt,
                self.settings.retry_base.as_millis() as u64,
                self.settings.retry_max.as_millis() as u64,
                rand::random::<f64>(),
            );
            tracing::warn!(%session_id, attempt = attempt + 1, %reason, delay_ms, "[report] the report endpoint did not take the session record; retrying");
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
            }
        }
    }

    /// Removes the record with `key` from memory and disk.
    fn forget(&self, key: &str) {
        let mut journal = self.lock_pending();
        let journal = &mut *journal;
        journal.entries.retain(|entry| entry.idempotency_key != key);
        match replace_lines(&self.settings.state_dir, REPORTS_FILE, &journal.entries) {
            Ok(file) => journal.file = Some(file),
            Err(error) => {
                tracing::error!(%error, "[report] cannot rewrite the session records' journal")
            }
        }
    }
}

/// The record of `session`, which ended.
fn make_record(
    session: &SessionSnapshot,
    tracked: &Tracked,
    node_id: &str,
    reason: Option<&str>,
    now_ms: i64,
) -> SessionRecord {
    let age_ms = i64::try_from(session.age.as_millis()).unwrap_or(i64::MAX);
    let start_ms = now_ms.saturating_sub(age_ms);
    let (end_ms, end_reason) = match (&tracked.ended, session.status) {
        (Some((at, reason)), _) => (*at, reason.clone()),
        (None, SessionState::Error) => (now_ms, "error".to_owned()),
        (None, _) => (now_ms, reason.unwrap_or("stopped").to_owned()),
    };
    let end_ms = end_ms.max(start_ms);
    SessionRecord {
        session_id: session.id.clone(),
        worker: node_id.to_owned(),
        body: tracked.context.body.clone(),
        body_ip: session.body_ip.clone(),
        head: tracked.context.head.clone(),
        experience: session.experience.clone(),
        district: tracked.context.district.clone(),
        start: hydra_api::rfc3339(start_ms),
        end: hydra_api::rfc3339(end_ms),
        duration_ms: end_ms - start_ms,
        end_reason,
        error: session.error.clone(),
        disconnect_count: tracked.disconnects,
        ice_candidate_type: tracked.ice_candidate_type.clone(),
        rating: session.rating,
    }
}

/// The record's key: a UUID drawn from the worker and the session id, so every attempt and every
/// restart sends the same one.
pub fn idempotency_key(worker: &str, session_id: &str) -> String {
    let digest =
        hydra_proxy::token::digest_hex(&format!("hydra-session-record\n{worker}\n{session_id}"));
    let bits = u128::from_str_radix(&digest[..32], 16).unwrap_or_default();
    hydra_api::write_id::format_write_id(hydra_api::write_id::random_write_id(bits))
}

/// The journal's path in `state_dir`.
pub fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join(REPORTS_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_per_session_and_distinct_between_sessions() {
        let first = idempotency_key("w-1", "s-1");
        assert_eq!(first, idempotency_key("w-1", "s-1"));
        assert_ne!(first, idempotency_key("w-1", "s-2"));
        assert_ne!(first, idempotency_key("w-2", "s-1"));
        assert!(
            hydra_api::write_id::parse_write_id(&first).is_ok(),
            "{first}"
        );
    }

    #[test]
    fn beacons_are_checked_naming_the_field() {
        let cases = [
            (
                PageStats {
                    disconnects: 1,
                    ice_candidate_type: Some("relay".into()),
                },
                None,
            ),
            (
                PageStats {
                    disconnects: 101,
                    ice_candidate_type: None,
                },
                Some("disconnects"),
            ),
            (
                PageStats {
                    disconnects: 0,
                    ice_candidate_type: Some("tcp".into()),
                },
                Some("ice_candidate_type"),
            ),
        ];
        for (stats, field) in cases {
            match (stats.check(), field) {
                (Ok(()), None) => {}
                (Err(message), Some(field)) => assert!(message.starts_with(field), "{message}"),
                (outcome, field) => panic!("{stats:?}: {outcome:?}, expected {field:?}"),
            }
        }
    }
}
