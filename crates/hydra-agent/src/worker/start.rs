//! A session's start: the request checked, the body's streaming port checked, a slot, port and
//! data dir reserved, the process spawned and waited for until it answers, all under one
//! deadline; on failure nothing is left (no process, port, data dir or table entry).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hydra_api::SessionState;
use tokio::time::Instant;

use super::process::{self, Marker, SessionProcess, Substitutions};
use super::{
    Entry, SessionSnapshot, SessionSpec, StartError, Worker, check_session_id, new_session_id,
    remove_dir,
};

/// Attempts at a port when the session process exits early with "address in use".
const PORT_ATTEMPTS: usize = 3;

impl Worker {
    pub(super) async fn run_start(&self, spec: SessionSpec) -> Result<SessionSnapshot, StartError> {
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

    /// Takes a slot, a port and a data dir name for `id`. The port's bind probe is a syscall,
    /// so it runs outside the table's lock; the slot and port are then taken under the lock
    /// only if the checks still pass and no other start took that port meanwhile.
    fn reserve(
        &self,
        id: &str,
        spec: &SessionSpec,
        tried_ports: &HashSet<u16>,
    ) -> Result<(u16, PathBuf), StartError> {
        // Each retry means another start took the probed port; bounded by the range's size.
        for _ in 0..=self.port_range().count() {
            let taken = self.room_for(&self.table(), id)?;
            let port = self
                .port_range()
                .find(|port| {
                    !taken.contains(port)
                        && !tried_ports.contains(port)
                        && std::net::TcpListener::bind((self.settings.session_bind, *port)).is_ok()
                })
                .ok_or(StartError::NoPorts)?;
            let mut table = self.table();
            if self.room_for(&table, id)?.contains(&port) {
                continue;
            }
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
            return Ok((port, data_dir));
        }
        Err(StartError::NoPorts)
    }

    /// Whether `id` may take a slot now (not shutting down, not a duplicate, below
    /// `max_sessions`), and the ports the active sessions hold.
    fn room_for(
        &self,
        table: &BTreeMap<String, Entry>,
        id: &str,
    ) -> Result<HashSet<u16>, StartError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(StartError::ShuttingDown);
        }
        if table.contains_key(id) {
            return Err(StartError::Duplicate(id.to_owned()));
        }
        let taken: HashSet<u16> = table
            .values()
            .filter(|entry| entry.status.is_active())
            .map(|entry| entry.port)
            .collect();
        if taken.len() >= self.max_sessions() as usize {
            return Err(StartError::MaxSessions);
        }
        Ok(taken)
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
        let webrtc_ports = self.webrtc_ports(port).ok_or_else(|| {
            Launch::Failed(StartError::Spawn(format!(
                "port {port} has no WebRTC range (sessions.webrtc_port_start)"
            )))
        })?;
        let argv = process::expand(
            &self.settings.command,
            &Substitutions {
                port,
                data_dir,
                session_id: id,
                body_ip: spec.body_ip.trim(),
                bind: &bind,
                webrtc_ports,
            },
        );
        let env = self.session_env(id, spec, port, &bind, webrtc_ports);
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

    /// The session process's environment: its id, ports and body, the Sunshine credentials
    /// (the request's, else the worker's), its ICE servers, experience and executable.
    fn session_env(
        &self,
        id: &str,
        spec: &SessionSpec,
        port: u16,
        bind: &str,
        webrtc_ports: (u16, u16),
    ) -> HashMap<&'static str, String> {
        let mut env = HashMap::new();
        env.insert("HYDRA_SESSION_ID", id.to_owned());
        env.insert("HYDRA_SESSION_PORT", port.to_string());
        env.insert("HYDRA_SESSION_BIND", bind.to_owned());
        env.insert("HYDRA_BODY_IP", spec.body_ip.trim().to_owned());
        env.insert("HYDRA_WEBRTC_PORT_START", webrtc_ports.0.to_string());
        env.insert("HYDRA_WEBRTC_PORT_END", webrtc_ports.1.to_string());
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
        env
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
}

/// How one launch attempt failed.
enum Launch {
    /// The process found its port taken (the port check before spawning is racy): try another.
    PortTaken(StartError),
    /// Any other failure: give up.
    Failed(StartError),
}
