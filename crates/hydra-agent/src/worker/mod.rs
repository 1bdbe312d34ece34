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

use std::collections::{BTreeMap, HashMap, HashSet};
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
use process::{Marker, SessionProcess, Substitutions};

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

/// Attempts at a port when the session process exits early with "address in use".
const PORT_ATTEMPTS: usize = 3;

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

    async fn run_start(&self, spec: SessionSpec) -> Result<SessionSnapshot, StartError> {
        let id = match &spec.id {
            Some(id) => {
                check_session_id(id)?;
                id.clone()
            }
            None => new_session_id(),
        };
        let body_ip: IpAddr = spec.body_ip.trim().parse().map_err(|_| {
            StartError::Invalid(format!("body_ip {:?} is not an IP address", spec.body_ip))
        })?;
        let program = self.settings.command.first().cloned().unwrap_or_default();
        if !process::program_installed(&program) {
            tracing::warn!(session_id = %id, %program, "[worker] moonlight-web-stream not installed");
            return Err(StartError::NotInstalled);
        }
        self.check_body(&id, body_ip).await?;
        // One deadline for every port attempt: the start as a whole is bounded.
        let deadline = Instant::now() + self.settings.ready_timeout;
        let mut tried_ports = HashSet::new();
        let mut last_failure = StartError::NoPorts;
        for _ in 0..PORT_ATTEMPTS {
            let (port, data_dir) = self.reserve(&id, &spec, &tried_ports)?;
            tried_ports.insert(port);
            match self.launch(&id, &spec, port, &data_dir, deadline).await {
                Ok(snapshot) => return Ok(snapshot),
                Err(Launch::PortTaken(failure)) if Instant::now() < deadline => {
                    tracing::warn!(session_id = %id, port, "[worker] session process found its port taken; trying another");
                    self.release(&id).await;
                    last_failure = failure;
                }
                Err(Launch::PortTaken(failure) | Launch::Failed(failure)) => {
                    tracing::warn!(session_id = %id, error = %failure, "[worker] session failed to start");
                    self.release(&id).await;
                    return Err(failure);
                }
            }
        }
        Err(last_failure)
    }

    async fn check_body(&self, id: &str, body_ip: IpAddr) -> Result<(), StartError> {
        let address = SocketAddr::new(body_ip, self.settings.body_port);
        let reachable = tokio::time::timeout(
            self.settings.body_check_timeout,
            tokio::net::TcpStream::connect(address),
        )
        .await
        .is_ok_and(|outcome| outcome.is_ok());
        if reachable {
            return Ok(());
        }
        tracing::warn!(session_id = %id, %body_ip, port = self.settings.body_port, "[pairing] body unreachable");
        Err(StartError::BodyUnreachable {
            ip: body_ip.to_string(),
            port: self.settings.body_port,
        })
    }

    /// Takes a slot, a port and a data dir name for `id`, in one step under the table lock.
    fn reserve(
        &self,
        id: &str,
        spec: &SessionSpec,
        tried_ports: &HashSet<u16>,
    ) -> Result<(u16, PathBuf), StartError> {
        let mut table = self.table();
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(StartError::ShuttingDown);
        }
        if table.contains_key(id) {
            return Err(StartError::Duplicate(id.to_owned()));
        }
        let active = table
            .values()
            .filter(|entry| entry.status.is_active())
            .count();
        if active >= self.max_sessions() as usize {
            return Err(StartError::MaxSessions);
        }
        let taken: HashSet<u16> = table
            .values()
            .filter(|entry| entry.status.is_active())
            .map(|entry| entry.port)
            .collect();
        let port = self
            .port_range()
            .find(|port| {
                !taken.contains(port)
                    && !tried_ports.contains(port)
                    && std::net::TcpListener::bind((self.settings.session_bind, *port)).is_ok()
            })
            .ok_or(StartError::NoPorts)?;
        let data_dir = self.settings.sessions_root.join(id);
        let now = Instant::now();
        table.insert(
            id.to_owned(),
            Entry {
                id: id.to_owned(),
                body_ip: spec.body_ip.trim().to_owned(),
                experience: spec.experience.clone(),
                port,
                data_dir: data_dir.clone(),
                status: SessionState::Starting,
                error: None,
                process: None,
                created: now,
                changed: now,
                connections: Arc::new(AtomicU32::new(0)),
                rating: None,
            },
        );
        Ok((port, data_dir))
    }

    /// The ports of the range: `port_range_start` up to `port_range_start + max_sessions`.
    fn port_range(&self) -> impl Iterator<Item = u16> {
        let start = self.settings.port_range_start;
        let count = u16::try_from(self.max_sessions()).unwrap_or(u16::MAX);
        (0..count).filter_map(move |offset| start.checked_add(offset))
    }

    /// Ends `id`'s process, then removes it from the table with its data dir: the entry (and
    /// its port) stays until the process group is ended.
    async fn release(&self, id: &str) {
        let process = self
            .table()
            .get_mut(id)
            .and_then(|entry| entry.process.take());
        if let Some(process) = process {
            process.end(self.settings.stop_grace).await;
        }
        let entry = self.table().remove(id);
        if let Some(entry) = entry {
            remove_dir(&entry.data_dir);
        }
    }

    async fn launch(
        &self,
        id: &str,
        spec: &SessionSpec,
        port: u16,
        data_dir: &std::path::Path,
        deadline: Instant,
    ) -> Result<SessionSnapshot, Launch> {
        let spawn_failed = |error: std::io::Error| {
            Launch::Failed(StartError::Spawn(format!(
                "{}: {error}",
                data_dir.display()
            )))
        };
        if data_dir.exists() {
            std::fs::remove_dir_all(data_dir).map_err(spawn_failed)?;
        }
        std::fs::create_dir_all(data_dir).map_err(spawn_failed)?;
        let bind = self.settings.session_bind.to_string();
        let argv = process::expand(
            &self.settings.command,
            &Substitutions {
                port,
                data_dir,
                session_id: id,
                body_ip: spec.body_ip.trim(),
                bind: &bind,
            },
        );
        let mut env = HashMap::new();
        env.insert("HYDRA_SESSION_ID", id.to_owned());
        env.insert("HYDRA_SESSION_PORT", port.to_string());
        env.insert("HYDRA_SESSION_BIND", bind.clone());
        env.insert("HYDRA_BODY_IP", spec.body_ip.trim().to_owned());
        env.insert(
            "SUNSHINE_USERNAME",
            spec.sunshine_user
                .clone()
                .unwrap_or_else(|| self.settings.sunshine_username.clone()),
        );
        env.insert(
            "SUNSHINE_PASSWORD",
            spec.sunshine_pass
                .clone()
                .unwrap_or_else(|| self.settings.sunshine_password.clone()),
        );
        let ice_servers = self
            .settings
            .ice
            .for_session(id, hydra_api::now_ms().max(0) as u64 / 1_000);
        env.insert(
            "HYDRA_ICE_SERVERS",
            serde_json::to_string(&ice_servers).unwrap_or_else(|_| "[]".into()),
        );
        if let Some(experience) = &spec.experience {
            env.insert("HYDRA_EXPERIENCE", experience.clone());
        }
        if let Some(exe_path) = &spec.exe_path {
            env.insert("HYDRA_EXE_PATH", exe_path.clone());
        }
        let process = SessionProcess::spawn(&argv, data_dir, &env).map_err(spawn_failed)?;
        let pid = process.pid();
        Marker {
            session_id: id.to_owned(),
            pgid: pid,
            port,
        }
        .write(data_dir)
        .map_err(spawn_failed)?;
        {
            let mut table = self.table();
            match table.get_mut(id) {
                Some(entry) => entry.process = Some(process),
                None => {
                    // Stopped while starting: the process goes with the dropped handle.
                    drop(process);
                    return Err(Launch::Failed(StartError::ShuttingDown));
                }
            }
        }
        tracing::info!(session_id = %id, port, pid, body_ip = %spec.body_ip, "[session {id}] process started; waiting for it to answer");
        self.wait_ready(id, spec, port, data_dir, deadline).await
    }

    /// Polls the session's port until it accepts, the process exits, the session is ended, or
    /// `deadline` passes.
    async fn wait_ready(
        &self,
        id: &str,
        spec: &SessionSpec,
        port: u16,
        data_dir: &std::path::Path,
        deadline: Instant,
    ) -> Result<SessionSnapshot, Launch> {
        let address = SocketAddr::new(self.settings.session_bind, port);
        // Short pauses first: a session process usually answers within milliseconds.
        let mut pause = Duration::from_millis(5);
        loop {
            let exited = {
                let mut table = self.table();
                let Some(entry) = table.get_mut(id) else {
                    return Err(Launch::Failed(StartError::ShuttingDown));
                };
                // Ended meanwhile (`DELETE`, quit, shutdown): its process was taken and ended.
                let Some(process) = entry.process.as_mut() else {
                    return Err(Launch::Failed(
                        if self.shutting_down.load(Ordering::Relaxed) {
                            StartError::ShuttingDown
                        } else {
                            StartError::EndedWhileStarting
                        },
                    ));
                };
                process.exited()
            };
            if let Some(status) = exited {
                let log_tail = process::log_tail(data_dir, 2_000);
                let failure = StartError::ExitedEarly {
                    status,
                    log_tail: log_tail.clone(),
                };
                let lowered = log_tail.to_ascii_lowercase();
                if lowered.contains("address already in use") || lowered.contains("addrinuse") {
                    return Err(Launch::PortTaken(failure));
                }
                return Err(Launch::Failed(failure));
            }
            let step = Duration::from_millis(200);
            if let Ok(Ok(_)) =
                tokio::time::timeout(step, tokio::net::TcpStream::connect(address)).await
            {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(session_id = %id, body_ip = %spec.body_ip, "[pairing] session process did not answer in time");
                return Err(Launch::Failed(StartError::PairingTimeout {
                    ip: spec.body_ip.trim().to_owned(),
                    seconds: self.settings.ready_timeout.as_secs(),
                }));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        let mut table = self.table();
        let Some(entry) = table.get_mut(id) else {
            return Err(Launch::Failed(StartError::ShuttingDown));
        };
        if entry.status != SessionState::Starting || entry.process.is_none() {
            return Err(Launch::Failed(StartError::EndedWhileStarting));
        }
        entry.status = SessionState::Running;
        entry.changed = Instant::now();
        tracing::info!(session_id = %id, port, "[session {id}] running");
        Ok(self.snapshot_of(entry))
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

/// How one launch attempt failed.
enum Launch {
    /// The process found its port taken (the port check before spawning is racy): try another.
    PortTaken(StartError),
    /// Any other failure: give up.
    Failed(StartError),
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
