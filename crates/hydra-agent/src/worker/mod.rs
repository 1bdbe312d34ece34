//! The worker role: one session process per relay session, on a port of its range, with its own
//! data dir under the sessions root, watched by a periodic check (liveness, data dir, idle
//! cleanup).
//!
//! Invariants: the session table is the only record of what runs; a session leaves the table
//! only with its process group ended and its data dir removed; a port or a slot is held by
//! `starting` and `running` sessions only. The table's lock is never held across an await. A
//! start runs in a task of its own and has one deadline (`ready_timeout`), so a caller that
//! gives up never leaves a `starting` entry that nobody finishes.

mod checks;
mod error;
pub mod orphans;
pub mod process;
mod start;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hydra_api::{SessionState, WorkerSession};
use rand::RngCore;
use tokio::time::Instant;

pub use checks::CheckReport;
pub use error::StartError;
use process::SessionProcess;

/// How the worker role runs sessions; every duration is configurable so tests can shorten it.
/// `Debug` leaves the Sunshine password out.
#[derive(Clone)]
pub struct WorkerSettings {
    /// Sessions at most (`sessions.max`, 15).
    pub max_sessions: u32,
    /// First port of the range (`sessions.port_range_start`, 8080); the range holds
    /// `max_sessions` ports.
    pub port_range_start: u16,
    /// Directory holding one data dir per session.
    pub sessions_root: PathBuf,
    /// The command template (see [`process::PLACEHOLDERS`]).
    pub command: Vec<String>,
    /// Address the session processes listen on and the proxy connects to.
    pub session_bind: IpAddr,
    /// The body's streaming port checked before a start (47990).
    pub body_port: u16,
    /// Timeout of that check.
    pub body_check_timeout: Duration,
    /// Longest wait for a new session process to answer on its port (30 s).
    pub ready_timeout: Duration,
    /// Period of the liveness, data-dir and cleanup check (30 s).
    pub check_interval: Duration,
    /// `error` and `stopped` sessions are removed after this (5 min).
    pub idle_timeout: Duration,
    /// Between SIGTERM and SIGKILL when a session ends.
    pub stop_grace: Duration,
    /// Base of the stream URLs handed out (`<base>/session/<id>/`).
    pub stream_base_url: String,
    /// Sunshine user when a request names none.
    pub sunshine_username: String,
    /// Sunshine password when a request names none.
    pub sunshine_password: String,
    /// The ICE servers (TURN credentials minted per session), handed to each process as
    /// `HYDRA_ICE_SERVERS` (JSON).
    pub ice: crate::turn::IceConfig,
    /// First port of the sessions' WebRTC UDP ranges (`sessions.webrtc_port_start`, 40000).
    pub webrtc_port_start: u16,
    /// Ports per session (`sessions.webrtc_ports_per_session`, 20): the session in slot `n`
    /// (port `port_range_start + n`) gets `start + width * n` to `start + width * (n + 1) - 1`.
    pub webrtc_ports_per_session: u16,
    /// The browser microphone relay (`mic:`).
    pub mic: crate::mic::MicSettings,
}

impl std::fmt::Debug for WorkerSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WorkerSettings")
            .field("max_sessions", &self.max_sessions)
            .field("port_range_start", &self.port_range_start)
            .field("sessions_root", &self.sessions_root)
            .field("command", &self.command)
            .field("stream_base_url", &self.stream_base_url)
            .finish_non_exhaustive()
    }
}

impl WorkerSettings {
    /// The field's defaults, with sessions under `sessions_root`.
    pub fn new(sessions_root: PathBuf) -> WorkerSettings {
        WorkerSettings {
            max_sessions: 15,
            port_range_start: 8080,
            sessions_root,
            command: default_command(),
            session_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            body_port: 47990,
            body_check_timeout: Duration::from_secs(2),
            ready_timeout: Duration::from_secs(30),
            check_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            stop_grace: Duration::from_secs(5),
            stream_base_url: "http://127.0.0.1:7071".into(),
            sunshine_username: String::new(),
            sunshine_password: String::new(),
            ice: crate::turn::IceConfig::default(),
            webrtc_port_start: hydra_core::webrtc_ports::DEFAULT_START,
            webrtc_ports_per_session: hydra_core::webrtc_ports::DEFAULT_WIDTH,
            mic: crate::mic::MicSettings::default(),
        }
    }
}

/// `/opt/moonlight-web-stream/web-server --bind {bind} --port {port} --data-dir {data_dir}`.
pub fn default_command() -> Vec<String> {
    [
        "/opt/moonlight-web-stream/web-server",
        "--bind",
        "{bind}",
        "--port",
        "{port}",
        "--data-dir",
        "{data_dir}",
    ]
    .map(String::from)
    .to_vec()
}

/// What a caller asks to start.
#[derive(Debug, Clone, Default)]
pub struct SessionSpec {
    /// Id chosen by the server; made here when absent.
    pub id: Option<String>,
    /// The body's address.
    pub body_ip: String,
    /// Sunshine user, else the configured one.
    pub sunshine_user: Option<String>,
    /// Sunshine password, else the configured one.
    pub sunshine_pass: Option<String>,
    /// Experience to launch.
    pub experience: Option<String>,
    /// Executable of the experience.
    pub exe_path: Option<String>,
}

/// A session as the worker sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// Session id.
    pub id: String,
    /// The body's address.
    pub body_ip: String,
    /// Experience launched, if any.
    pub experience: Option<String>,
    /// Port of the session process.
    pub port: u16,
    /// State.
    pub status: SessionState,
    /// Why it failed.
    pub error: Option<String>,
    /// Process id (and group id) of the session process while it runs.
    pub process_id: Option<i32>,
    /// Whether the session process runs.
    pub process_alive: bool,
    /// Whether its data dir exists.
    pub data_directory_ok: bool,
    /// Connections through the proxy now.
    pub active_connections: u32,
    /// Time since it was created.
    pub age: Duration,
    /// URL the browser opens.
    pub stream_url: String,
    /// Stars given by the viewer, if any.
    pub rating: Option<u8>,
}

impl SessionSnapshot {
    /// The report form sent to the server.
    pub fn to_wire(&self) -> WorkerSession {
        WorkerSession {
            session_id: self.id.clone(),
            body_ip: self.body_ip.clone(),
            port: self.port,
            stream_url: self.stream_url.clone(),
            status: self.status,
            error: self.error.clone(),
        }
    }
}

/// What became of a viewer's rating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rated {
    /// Recorded.
    Recorded,
    /// The session was already rated; nothing changed.
    Already,
    /// No such session.
    UnknownSession,
}

/// Where the proxy sends a session's traffic.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    /// The session process's address.
    pub address: SocketAddr,
    /// Its connection counter, raised while a proxied exchange is open.
    pub connections: Arc<AtomicU32>,
}

struct Entry {
    id: String,
    body_ip: String,
    experience: Option<String>,
    port: u16,
    data_dir: PathBuf,
    status: SessionState,
    error: Option<String>,
    process: Option<SessionProcess>,
    created: Instant,
    changed: Instant,
    connections: Arc<AtomicU32>,
    rating: Option<u8>,
}

/// The worker role of one agent; share it in an `Arc`.
pub struct Worker {
    settings: WorkerSettings,
    table: Mutex<BTreeMap<String, Entry>>,
    shutting_down: AtomicBool,
    /// The last worker report's number in this run (see [`Worker::next_report_sequence`]).
    report_sequence: AtomicU64,
    /// `settings.max_sessions` until a config bundle changes it (`crate::bundle`): a lower value
    /// stops new starts only.
    max_sessions: AtomicU32,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Worker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker with no session.
    pub fn new(settings: WorkerSettings) -> Arc<Worker> {
        Arc::new(Worker {
            max_sessions: AtomicU32::new(settings.max_sessions),
            settings,
            table: Mutex::new(BTreeMap::new()),
            shutting_down: AtomicBool::new(false),
            report_sequence: AtomicU64::new(0),
        })
    }

    /// The number of the next worker report of this run: 1, 2, ... (the server ignores a report
    /// older than one it applied). Take it before the snapshot the report carries.
    pub fn next_report_sequence(&self) -> u64 {
        self.report_sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The longest a start takes before it is answered, failure included: the body check, the
    /// readiness wait, and ending a process that did not get ready (SIGTERM, then SIGKILL).
    pub fn start_bound(&self) -> Duration {
        self.settings.body_check_timeout
            + self.settings.ready_timeout
            + self.settings.stop_grace * 2
    }

    /// Sessions it may run at most now (the config bundle's `sessions.max`, else the YAML's).
    pub fn max_sessions(&self) -> u32 {
        self.max_sessions.load(Ordering::Relaxed)
    }

    /// Applies a new `sessions.max`: running sessions keep running, only new starts see it.
    pub fn set_max_sessions(&self, max: u32) {
        self.max_sessions.store(max, Ordering::Relaxed);
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.table.lock().expect("session table poisoned")
    }

    /// Sessions holding a slot (starting or running).
    pub fn active_sessions(&self) -> u32 {
        let count = self
            .table()
            .values()
            .filter(|entry| entry.status.is_active())
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Starts a session: checks the request, the capacity, the program and the body's streaming
    /// port, takes a port and a data dir, spawns the process and waits until it answers, for at
    /// most `ready_timeout` after the body check.
    ///
    /// The start runs in a task of its own: dropping this future (the server hung up) does not
    /// stop it, so it ends `running` or leaves nothing. On failure nothing is left: no process,
    /// no port held, no data dir, no table entry.
    pub async fn start_session(
        self: &Arc<Self>,
        spec: SessionSpec,
    ) -> Result<SessionSnapshot, StartError> {
        let worker = Arc::clone(self);
        tokio::spawn(async move { worker.run_start(spec).await })
            .await
            .unwrap_or_else(|error| {
                Err(StartError::Spawn(format!(
                    "the start task ended abnormally: {error}"
                )))
            })
    }

    /// The WebRTC UDP range (first, last) of the session on `port`: its slot is its place in
    /// the port range. `None` for a port outside the range or a range past 65535.
    pub fn webrtc_ports(&self, port: u16) -> Option<(u16, u16)> {
        let slot = port.checked_sub(self.settings.port_range_start)?;
        hydra_core::webrtc_ports::session_range(
            self.settings.webrtc_port_start,
            self.settings.webrtc_ports_per_session,
            slot,
        )
    }

    /// What the microphone relay needs of a running session: its body's address and its WebRTC
    /// range. `None` unless it runs.
    pub fn mic_target(&self, id: &str) -> Option<(IpAddr, (u16, u16))> {
        let table = self.table();
        let entry = table.get(id)?;
        if entry.status != SessionState::Running {
            return None;
        }
        let body_ip = entry.body_ip.parse().ok()?;
        Some((body_ip, self.webrtc_ports(entry.port)?))
    }

    /// Ends a session on request (`DELETE`, quit): status `stopped`, process group ended.
    /// An already ended session is returned as it is. `None` for an unknown id.
    pub async fn stop_session(&self, id: &str, reason: &str) -> Option<SessionSnapshot> {
        let process = {
            let mut table = self.table();
            let entry = table.get_mut(id)?;
            if entry.status.is_active() {
                entry.status = SessionState::Stopped;
                entry.changed = Instant::now();
                tracing::info!(session_id = %id, reason, "[session {id}] stopped");
            }
            entry.process.take()
        };
        if let Some(process) = process {
            process.end(self.settings.stop_grace).await;
        }
        let table = self.table();
        table.get(id).map(|entry| self.snapshot_of(entry))
    }

    /// Records a viewer's rating, once per session: a second one changes nothing (ratings need
    /// no token, so each must be bounded).
    pub fn rate_session(&self, id: &str, stars: u8) -> Rated {
        let mut table = self.table();
        match table.get_mut(id) {
            Some(entry) if entry.rating.is_some() => Rated::Already,
            Some(entry) => {
                entry.rating = Some(stars);
                Rated::Recorded
            }
            None => Rated::UnknownSession,
        }
    }

    /// Every session, oldest first.
    pub fn snapshot(&self) -> Vec<SessionSnapshot> {
        let table = self.table();
        let mut sessions: Vec<(Instant, SessionSnapshot)> = table
            .values()
            .map(|entry| (entry.created, self.snapshot_of(entry)))
            .collect();
        sessions.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        sessions.into_iter().map(|(_, session)| session).collect()
    }

    /// One session.
    pub fn session(&self, id: &str) -> Option<SessionSnapshot> {
        self.table().get(id).map(|entry| self.snapshot_of(entry))
    }

    /// Where to proxy a running session's traffic; `None` unless it runs.
    pub fn proxy_target(&self, id: &str) -> Option<ProxyTarget> {
        let table = self.table();
        let entry = table.get(id)?;
        (entry.status == SessionState::Running).then(|| ProxyTarget {
            address: SocketAddr::new(self.settings.session_bind, entry.port),
            connections: entry.connections.clone(),
        })
    }

    fn snapshot_of(&self, entry: &Entry) -> SessionSnapshot {
        SessionSnapshot {
            id: entry.id.clone(),
            body_ip: entry.body_ip.clone(),
            experience: entry.experience.clone(),
            port: entry.port,
            status: entry.status,
            error: entry.error.clone(),
            process_id: entry.process.as_ref().map(SessionProcess::pid),
            process_alive: entry.process.is_some(),
            data_directory_ok: entry.data_dir.is_dir(),
            active_connections: entry.connections.load(Ordering::Relaxed),
            age: entry.created.elapsed(),
            stream_url: format!(
                "{}/session/{}/",
                self.settings.stream_base_url.trim_end_matches('/'),
                entry.id
            ),
            rating: entry.rating,
        }
    }

    /// Ends every session process (agent shutdown); no session starts afterwards.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let processes: Vec<(String, SessionProcess)> = {
            let mut table = self.table();
            table
                .values_mut()
                .filter_map(|entry| {
                    let process = entry.process.take()?;
                    if entry.status.is_active() {
                        entry.status = SessionState::Stopped;
                    }
                    Some((entry.id.clone(), process))
                })
                .collect()
        };
        for (id, process) in processes {
            process.end(self.settings.stop_grace).await;
            tracing::info!(session_id = %id, "[session {id}] ended at agent shutdown");
        }
    }
}

/// Session ids (they become a directory name and a URL segment): `<node_id>:<uuid>`, or from
/// before the mesh 1 to 64 of `[A-Za-z0-9_-]`; the proxy's check, so both accept the same ids.
pub fn check_session_id(id: &str) -> Result<(), StartError> {
    hydra_proxy::session_path::check_session_id(id).map_err(|_| {
        StartError::Invalid(format!(
            "session_id {id:?} must be <node_id>:<uuid> or 1 to 64 of letters, digits, '-' and '_'"
        ))
    })
}

/// A new random session id (`s-` and 16 hex digits).
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    format!("s-{}", hex::encode(bytes))
}

/// Removes a session's data dir; a missing one is fine.
fn remove_dir(path: &std::path::Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "[cleanup] cannot remove a session data dir")
        }
    }
}
