//! `hydra agent` as real processes with real signals, against a real `hydra server`: a second
//! agent on a taken port exits with the start-up guard's message and touches nothing; an agent
//! killed with SIGKILL takes its session processes with it, and started again leaves no session
//! the server believes in but nobody runs; a session group whose leader is gone is found by
//! process group and ended; a session acknowledged by a server that is then
//! killed with SIGKILL is back, and can be ended, through the server started again (both
//! engines).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually, free_loopback_port, spawn_agent,
    standin_web_stream,
};

/// The worker's node id.
pub(crate) const WORKER_ID: &str = "w-proc";
/// The start-up guard's words (crates/hydra-agent/src/worker/orphans.rs), written out here so
/// that a changed message fails this test.
const ALREADY_RUNNING: &str = "cannot bind — is another hydra agent already running?";
/// The marker the agent writes into each session's data dir (it records the process group).
const MARKER_FILE: &str = "hydra-session.json";

/// A temp dir, a server, a stand-in body and one agent config file shared by every agent started.
pub(crate) struct Fleet {
    pub(crate) server: ServerProcess,
    /// The server's storage, to start it again on.
    setup: ServerSetup,
    /// The stand-in Sunshine port: the kernel completes connections on its backlog.
    _body: TcpListener,
    pub(crate) config: PathBuf,
    pub(crate) agent_port: u16,
    sessions_root: PathBuf,
    /// Declared last, so it is removed after the server stopped.
    pub(crate) dir: tempfile::TempDir,
}

impl Fleet {
    fn start() -> Fleet {
        Fleet::start_with(None)
    }

    /// A fleet whose session command forks a child that stays in the session's process group
    /// (as moonlight-web-stream's streamer processes do) before it becomes the stand-in.
    fn start_forking() -> Fleet {
        Fleet::start_configured(None, r#"sh, -c, 'sleep 600 & exec "$0" "$@"', "#)
    }

    /// A fleet whose session processes answer only 2 s after they start (a slow pairing).
    fn start_slow() -> Fleet {
        Fleet::start_configured(None, r#"sh, -c, 'sleep 2; exec "$0" "$@"', "#)
    }

    /// A fleet whose server keeps its state in PostgreSQL at `database_url`, or in SQLite in the
    /// temp dir. The server listens on a fixed port below the ephemeral range, so a server
    /// started again after a SIGKILL is where the agent sends its heartbeats.
    fn start_with(database_url: Option<String>) -> Fleet {
        Fleet::start_configured(database_url, "")
    }

    /// As [`Fleet::start_with`], with room for `max_sessions` sessions on the worker.
    pub(crate) fn start_with_room(database_url: Option<String>, max_sessions: u32) -> Fleet {
        Fleet::start_sized(database_url, "", max_sessions)
    }

    /// `prefix` goes before the stand-in in the session command template (YAML list items).
    fn start_configured(database_url: Option<String>, prefix: &str) -> Fleet {
        Fleet::start_sized(database_url, prefix, 2)
    }

    fn start_sized(database_url: Option<String>, prefix: &str, max_sessions: u32) -> Fleet {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut setup = ServerSetup::sqlite(&dir.path().join("server"));
        setup.database_url = database_url;
        let listen = format!("127.0.0.1:{}", free_loopback_port());
        let server = ServerProcess::start_listening(&setup, &listen);
        let body = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in body");
        let body_port = body.local_addr().expect("body address").port();
        let agent_port = free_loopback_port();
        let session_port = free_loopback_port();
        let state_dir = dir.path().join("agent-state");
        let sessions_root = dir.path().join("sessions");
        let standin = standin_web_stream();
        let yaml = format!(
            r#"node: {{id: {WORKER_ID}, roles: [worker], district: bxl1, venue: cloud-seven, owner: acme, lan_ip: 127.0.0.1}}
server: {{listen: "127.0.0.1:{agent_port}"}}
controller: {{url: ["{server}"], token: "{ADMIN_TOKEN}"}}
state_dir: "{state}"
wireguard_optional: true
api_token: "{ADMIN_TOKEN}"
heartbeat: {{interval: 0.5}}
sessions:
  max: {max_sessions}
  port_range_start: {session_port}
  root: "{root}"
  body_port: {body_port}
  ready_timeout: 20
  check_interval: 0.5
  command: [{prefix}"{standin}", --bind, "{{bind}}", --port, "{{port}}", --data-dir, "{{data_dir}}"]
"#,
            server = server.url,
            state = state_dir.display(),
            root = sessions_root.display(),
            standin = standin.display(),
        );
        let config = dir.path().join("agent.yaml");
        std::fs::write(&config, yaml).expect("write the agent config");
        Fleet {
            server,
            setup,
            _body: body,
            config,
            agent_port,
            sessions_root,
            dir,
        }
    }

    /// The agent's own base URL plus `path` (e.g. `/metrics`).
    pub(crate) fn agent_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.agent_port)
    }

    pub(crate) fn agent_api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/api/v1{path}", self.agent_port)
    }

    /// Waits (at most 30 s) until the server lists the worker as healthy (enrolled, heartbeating,
    /// reported), so a session can be placed on it; fails at once if the agent exits.
    pub(crate) async fn wait_worker(&self, agent: &mut Agent) {
        let healthy = eventually(Duration::from_secs(30), async || {
            agent.assert_running();
            let (_, list) = call(Method::GET, &self.server.api("/workers"), None).await;
            list["workers"].as_array().is_some_and(|workers| {
                workers
                    .iter()
                    .any(|worker| worker["id"] == WORKER_ID && worker["healthy"] == true)
            })
        })
        .await;
        assert!(
            healthy,
            "the worker never became healthy; agent log:\n{}\nserver log:\n{}",
            agent.log(),
            self.server.log.lock().unwrap()
        );
    }

    /// Creates a session through the server on the stand-in body; returns its id.
    pub(crate) async fn create_session(&self) -> String {
        let (status, session) = call(
            Method::POST,
            &self.server.api("/sessions"),
            Some(json!({"body_ip": "127.0.0.1"})),
        )
        .await;
        assert_eq!(status, 201, "session not created: {session}");
        assert_eq!(session["worker_id"], WORKER_ID);
        assert_eq!(session["status"], "running");
        session["session_id"]
            .as_str()
            .expect("session_id")
            .to_owned()
    }

    pub(crate) async fn server_session(&self, id: &str) -> Value {
        let (status, session) = call(
            Method::GET,
            &self.server.api(&format!("/sessions/{id}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{session}");
        session
    }

    /// SIGKILLs the server and starts a new one on the same storage and address.
    pub(crate) fn restart_server_after_sigkill(&mut self) {
        self.server.restart_after_kill_9(&self.setup);
    }

    /// The server's view of the worker.
    pub(crate) async fn server_worker(&self) -> Value {
        let (status, list) = call(Method::GET, &self.server.api("/workers"), None).await;
        assert_eq!(status, 200, "{list}");
        list["workers"]
            .as_array()
            .and_then(|workers| workers.iter().find(|worker| worker["id"] == WORKER_ID))
            .unwrap_or_else(|| panic!("the server lists no worker {WORKER_ID}: {list}"))
            .clone()
    }

    /// The agent's health answer (the agent must be up).
    /// The agent's health with session details (`call` sends the token the config names as
    /// `api_token`).
    async fn agent_health(&self) -> Value {
        let (status, health) = call(Method::GET, &self.agent_api("/health"), None).await;
        assert_eq!(status, 200, "{health}");
        health
    }
}

/// A `hydra agent --config FILE` process, its stderr in a file; stopped on drop (SIGTERM so it
/// ends its sessions, SIGKILL after 15 s).
pub(crate) struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    pub(crate) fn start(fleet: &Fleet, name: &str) -> Agent {
        let log = fleet.dir.path().join(format!("{name}.log"));
        let child = spawn_agent(&fleet.config, &log, "info");
        Agent { child, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"))
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("poll the agent").is_none()
    }

    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll the agent") {
            panic!("the agent exited ({status}); its log:\n{}", self.log());
        }
    }

    /// Waits at most `limit` for the agent to exit.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the agent") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {limit:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP: the agent sends nothing (no heartbeat, no report) until [`Agent::resume`].
    fn pause(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP the agent");
    }

    /// SIGCONT after [`Agent::pause`].
    fn resume(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT the agent");
    }

    /// SIGKILL (no shutdown code runs), then reap it.
    pub(crate) fn sigkill(&mut self) {
        kill(self.pid(), Signal::SIGKILL).expect("SIGKILL the agent");
        self.child.wait().expect("reap the agent");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.running() {
            return;
        }
        // A paused agent handles SIGTERM only once it runs again.
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process group of one session's stand-in process, read from its data dir's marker. On drop
/// the group is ended if its leader is still the same process (same start time, so a reused pid
/// is never signalled) and alive.
pub(crate) struct SessionGroup {
    pgid: i32,
    /// The leader's start time (field 22 of `/proc/<pid>/stat`).
    started: String,
    dir: PathBuf,
}

impl SessionGroup {
    pub(crate) fn of(fleet: &Fleet, id: &str) -> SessionGroup {
        let dir = fleet.sessions_root.join(id);
        let text = std::fs::read_to_string(dir.join(MARKER_FILE)).expect("the session's marker");
        let marker: Value = serde_json::from_str(&text).expect("marker JSON");
        assert_eq!(marker["session_id"], id, "{text}");
        let pgid = marker["pgid"]
            .as_i64()
            .and_then(|pgid| i32::try_from(pgid).ok())
            .expect("marker pgid");
        let dir = dir.canonicalize().expect("session dir");
        let cwd = std::fs::read_link(format!("/proc/{pgid}/cwd"));
        assert!(
            cwd.as_ref().is_ok_and(|cwd| *cwd == dir),
            "session process {pgid} does not run in its data dir: {cwd:?}"
        );
        let started = stat(pgid).expect("the session process's stat")[19].clone();
        let group = SessionGroup { pgid, started, dir };
        assert!(group.leader_alive(), "session process {pgid} is not alive");
        group
    }

    /// Whether the leader the marker named still runs (not a zombie, not a reused pid).
    pub(crate) fn leader_alive(&self) -> bool {
        stat(self.pgid).is_some_and(|fields| fields[0] != "Z" && fields[19] == self.started)
    }
}

impl Drop for SessionGroup {
    fn drop(&mut self) {
        if self.leader_alive() {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        }
        // Members left without their leader, still working in the session's dir (or in what
        // is left of it: the kernel marks a removed cwd " (deleted)").
        for pid in live_members(self.pgid) {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
            let in_dir = cwd.is_ok_and(|cwd| {
                let cwd = cwd.to_string_lossy();
                Path::new(cwd.trim_end_matches(" (deleted)")).starts_with(&self.dir)
            });
            if in_dir {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The fields of `/proc/<pid>/stat` after the command name: `[0]` state, `[2]` process group,
/// `[19]` start time.
fn stat(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
    (fields.len() > 19).then_some(fields)
}

/// The processes of group `pgid` that are alive: zombies (dead, waiting for whoever inherited
/// them to reap them) do not count.
fn live_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let group = pgid.to_string();
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|fields| fields[0] != "Z" && fields[2] == group))
        .collect()
}

/// Issue 4: "Two agents on one port: the second exits with the message and deletes nothing."
#[tokio::test]
async fn a_second_agent_on_the_same_port_exits_and_touches_nothing() {
    let fleet = Fleet::start();
    let mut first = Agent::start(&fleet, "first");
    fleet.wait_worker(&mut first).await;
    let id = fleet.create_session().await;
    let group = SessionGroup::of(&fleet, &id);

    let mut second = Agent::start(&fleet, "second");
    let status = second.wait_exit(Duration::from_secs(30)).await;
    let log = second.log();
    assert!(
        !status.success() && status.code().is_some(),
        "the second agent must exit with a failure code, not {status}; its log:\n{log}"
    );
    let expected = format!("{ALREADY_RUNNING} (listen 127.0.0.1:{}:", fleet.agent_port);
    assert!(
        log.contains(&expected),
        "no {expected:?} in its log:\n{log}"
    );
    assert!(
        !log.contains("[cleanup]"),
        "the second agent cleaned something up:\n{log}"
    );

    assert!(
        group.dir.join(MARKER_FILE).is_file() && group.dir.join("web-server.log").is_file(),
        "the session's data dir lost files"
    );
    assert!(
        group.leader_alive() && live_members(group.pgid).contains(&group.pgid),
        "the session process {} is gone",
        group.pgid
    );
    first.assert_running();
    let health = fleet.agent_health().await;
    let sessions = health["extra"]["sessions"].as_array().expect("sessions");
    assert!(
        sessions.iter().any(|session| session["id"] == id.as_str()
            && session["status"] == "running"
            && session["process_alive"] == true
            && session["data_directory_ok"] == true),
        "the first agent no longer runs {id}: {health}"
    );
    assert_eq!(fleet.server_session(&id).await["status"], "running");
}

/// Issue 4: "Killing the agent with SIGKILL and starting it again must not leave a session the
/// server believes in but nobody runs" — and the orphaned session process group is ended.
#[tokio::test]
async fn an_agent_killed_with_sigkill_and_restarted_leaves_no_phantom_session() {
    let fleet = Fleet::start_forking();
    let mut before = Agent::start(&fleet, "before");
    fleet.wait_worker(&mut before).await;
    let id = fleet.create_session().await;
    let group = SessionGroup::of(&fleet, &id);
    assert!(
        live_members(group.pgid).len() >= 3,
        "guard, stand-in and its forked child: {:?}",
        live_members(group.pgid)
    );

    before.sigkill();
    // Issue 7 item 10: the session's processes die with the agent, the forked child included,
    // without waiting for an agent to start again.
    let died = eventually(Duration::from_secs(10), async || {
        live_members(group.pgid).is_empty()
    })
    .await;
    assert!(
        died,
        "the SIGKILLed agent's session group {} still runs: {:?}",
        group.pgid,
        live_members(group.pgid)
    );
    // Nobody told the server: it still believes in the session.
    assert_eq!(fleet.server_session(&id).await["status"], "running");

    let mut after = Agent::start(&fleet, "after");
    let marked = eventually(Duration::from_secs(30), async || {
        after.assert_running();
        fleet.server_session(&id).await["status"] == "error"
    })
    .await;
    assert!(
        marked,
        "the server still believes in {id}: {}; restarted agent's log:\n{}",
        fleet.server_session(&id).await,
        after.log()
    );
    let session = fleet.server_session(&id).await;
    assert!(
        session["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()),
        "no reason given: {session}"
    );

    let ended = eventually(Duration::from_secs(10), async || {
        live_members(group.pgid).is_empty()
    })
    .await;
    assert!(
        ended,
        "the orphaned session process group {} still runs: {:?}; restarted agent's log:\n{}",
        group.pgid,
        live_members(group.pgid),
        after.log()
    );
    assert!(
        !group.dir.exists(),
        "the orphaned session dir is still there"
    );
    let log = after.log();
    assert!(
        log.contains("[cleanup] removed orphaned session dir") && log.contains(&id),
        "the restarted agent did not say it removed {id}'s dir:\n{log}"
    );

    after.assert_running();
    let health = fleet.agent_health().await;
    assert_eq!(health["extra"]["sessions"], json!([]), "{health}");
    // The worker takes sessions again (the orphan's port and slot are free).
    let fresh = fleet.create_session().await;
    assert_ne!(fresh, id);
}

/// Issue 7 item 2, the review's reproduction with real processes: three clients give up after
/// 1 s (`curl -m 1`) on sessions whose start takes 2 s. Each start still reaches an outcome:
/// nothing stays `starting`, the worker's slots count exactly its running sessions, and once
/// those are ended the worker takes new sessions (before: `starting` forever, then
/// `503 max sessions reached`).
#[tokio::test]
async fn clients_that_give_up_on_slow_starts_leave_no_slot_taken() {
    let fleet = Fleet::start_slow();
    let mut agent = Agent::start(&fleet, "agent");
    fleet.wait_worker(&mut agent).await;
    let url = fleet.server.api("/sessions");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .timeout(Duration::from_secs(1))
                .json(&json!({"body_ip": "127.0.0.1"}))
                .send()
                .await
                .map(|answer| answer.status().as_u16())
        }));
    }
    for client in clients {
        let answer = client.await.expect("client task");
        // Two give up; the third may be refused at once (both slots are being started).
        assert!(
            answer.as_ref().is_err() || answer.as_ref().is_ok_and(|status| *status == 503),
            "{answer:?}"
        );
    }
    let sessions = async || {
        let (status, list) = call(Method::GET, &fleet.server.api("/sessions"), None).await;
        assert_eq!(status, 200, "{list}");
        list["sessions"].as_array().cloned().unwrap_or_default()
    };
    let settled = eventually(Duration::from_secs(30), async || {
        sessions()
            .await
            .iter()
            .all(|session| session["status"] != "starting")
    })
    .await;
    assert!(
        settled,
        "sessions still starting: {:?}; server log:\n{}",
        sessions().await,
        fleet.server.log.lock().unwrap()
    );
    let running: Vec<String> = sessions()
        .await
        .iter()
        .filter(|session| session["status"] == "running")
        .filter_map(|session| session["session_id"].as_str().map(str::to_owned))
        .collect();
    // Both slots' starts ran to the end (unless a client hung up before the server read it).
    assert!(running.len() <= 2, "{:?}", sessions().await);
    let counted = eventually(Duration::from_secs(10), async || {
        fleet.server_worker().await["active_sessions"] == running.len()
    })
    .await;
    assert!(counted, "{}", fleet.server_worker().await);
    for id in &running {
        let (status, ended) = call(
            Method::DELETE,
            &fleet.server.api(&format!("/sessions/{id}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{ended}");
    }
    assert_eq!(fleet.server_worker().await["active_sessions"], 0);
    let id = fleet.create_session().await;
    assert!(!running.contains(&id));
    agent.assert_running();
}

/// Issue 7 item 10: a session group whose leader is gone (here the guard, SIGKILLed while the
/// agent was stopped, then the agent SIGKILLed too) still has members running in the session's
/// dir. The next agent finds them by process group, not only through the leader's
/// `/proc/{pgid}/cwd`, and ends them before it removes the dir.
#[tokio::test]
async fn orphans_whose_group_leader_is_gone_are_found_by_process_group() {
    let fleet = Fleet::start_forking();
    let mut before = Agent::start(&fleet, "before");
    fleet.wait_worker(&mut before).await;
    let id = fleet.create_session().await;
    let group = SessionGroup::of(&fleet, &id);

    before.pause();
    kill(Pid::from_raw(group.pgid), Signal::SIGKILL).expect("SIGKILL the group leader");
    let leader_gone = eventually(Duration::from_secs(10), async || !group.leader_alive()).await;
    assert!(leader_gone, "the leader {} still runs", group.pgid);
    before.sigkill();
    let members = live_members(group.pgid);
    assert!(
        !members.is_empty(),
        "the leader's children should outlive it for this test"
    );

    let mut after = Agent::start(&fleet, "after");
    let ended = eventually(Duration::from_secs(30), async || {
        after.assert_running();
        live_members(group.pgid).is_empty()
    })
    .await;
    assert!(
        ended,
        "the leaderless group {} still runs: {:?}; restarted agent's log:\n{}",
        group.pgid,
        live_members(group.pgid),
        after.log()
    );
    let log = after.log();
    assert!(
        log.contains("[cleanup] ended an orphaned session process group") && log.contains(&id),
        "the restarted agent did not say it ended {id}'s group:\n{log}"
    );
    assert!(
        !group.dir.exists(),
        "the orphaned session dir is still there"
    );
}

/// Issue 4: "Session state lives in the store (both engines); a server restart loses no session
/// record", and "a crash or a kill at any point loses no acknowledged write": a session the
/// server acknowledged is back after the server's SIGKILL, its worker is placeable from the
/// stored report before the agent reports again (the agent is paused meanwhile), and the
/// session is ended on the agent through the server started again.
async fn an_acknowledged_session_survives_a_server_sigkill(database_url: Option<String>) {
    let mut fleet = Fleet::start_with(database_url);
    let mut agent = Agent::start(&fleet, "agent");
    fleet.wait_worker(&mut agent).await;
    let id = fleet.create_session().await;
    let group = SessionGroup::of(&fleet, &id);
    let before = fleet.server_session(&id).await;
    assert!(
        before["port"].is_u64()
            && before["stream_url"]
                .as_str()
                .is_some_and(|url| !url.is_empty()),
        "the acknowledged session lacks its port or stream URL: {before}"
    );

    // Nothing reaches the restarted server from the agent until it answered from its store.
    agent.pause();
    let restarted_at = std::time::SystemTime::now();
    fleet.restart_server_after_sigkill();
    let after = fleet.server_session(&id).await;
    for field in [
        "session_id",
        "worker_id",
        "body_ip",
        "port",
        "stream_url",
        "status",
        "created_at",
    ] {
        // The viewer capability on a live session's stream URL is minted at each read with an
        // expiry in whole seconds: only the stored URL before it must survive.
        let stored = |answer: &serde_json::Value| match answer[field].as_str() {
            Some(text) => serde_json::Value::from(text.split("?hydra_viewer=").next()),
            None => answer[field].clone(),
        };
        assert_eq!(
            stored(&after),
            stored(&before),
            "{field} changed across the restart: {before} then {after}"
        );
    }
    assert_eq!(after["status"], "running");
    let worker = fleet.server_worker().await;
    let agent_url = format!("http://127.0.0.1:{}", fleet.agent_port);
    assert!(
        worker["healthy"] == true
            && worker["agent_url"] == agent_url.as_str()
            && worker["active_sessions"] == 1
            && worker["max_sessions"] == 2,
        "the restarted server lost the worker's report: {worker}; its log:\n{}",
        fleet.server.log.lock().unwrap()
    );

    // The agent reports to the restarted server (same address): the session stays running.
    agent.resume();
    let reported = eventually(Duration::from_secs(20), async || {
        agent.assert_running();
        let (status, answer) = call(Method::GET, &fleet.agent_api("/status"), None).await;
        status == 200
            && answer["last_heartbeat_error"].is_null()
            && answer["last_heartbeat"]
                .as_str()
                .and_then(|at| humantime::parse_rfc3339(at).ok())
                .is_some_and(|at| at > restarted_at)
    })
    .await;
    assert!(
        reported,
        "the agent never reported to the restarted server; agent log:\n{}\nserver log:\n{}",
        agent.log(),
        fleet.server.log.lock().unwrap()
    );
    assert_eq!(fleet.server_session(&id).await["status"], "running");

    let (status, ended) = call(
        Method::DELETE,
        &fleet.server.api(&format!("/sessions/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["status"], "stopped", "{ended}");
    let gone = eventually(Duration::from_secs(10), async || {
        live_members(group.pgid).is_empty()
    })
    .await;
    assert!(
        gone,
        "the session process group {} still runs: {:?}; agent log:\n{}\nserver log:\n{}",
        group.pgid,
        live_members(group.pgid),
        agent.log(),
        fleet.server.log.lock().unwrap()
    );
    let health = fleet.agent_health().await;
    let sessions = health["extra"]["sessions"].as_array().expect("sessions");
    assert!(
        sessions.iter().all(|session| session["id"] != id.as_str()
            || (session["status"] != "running" && session["process_alive"] != true)),
        "the agent still runs {id}: {health}"
    );
    assert_eq!(fleet.server_session(&id).await["status"], "stopped");
    assert_eq!(fleet.server_worker().await["active_sessions"], 0);
}

#[tokio::test]
async fn an_acknowledged_session_survives_a_sqlite_server_sigkill() {
    an_acknowledged_session_survives_a_server_sigkill(None).await;
}

#[tokio::test]
async fn an_acknowledged_session_survives_a_postgres_server_sigkill() {
    let url = hydra_store::testing::fresh_postgres_database("agent_sigkill").await;
    an_acknowledged_session_survives_a_server_sigkill(Some(url)).await;
}

/// The field's WARN and INFO lines (hydra-core/src/health.rs), written out so a changed word fails.
pub(crate) const DEGRADED_WARN: &str =
    "[health] no master reachable; degraded mode, running on config version";
pub(crate) const RECOVERED_INFO: &str = "[health] master reachable again; recovered after";

impl Fleet {
    /// Polls the bundle and checks health every second (the defaults are 30 s and 60 s).
    pub(crate) fn fast_ride_out(&self) {
        let mut yaml = std::fs::read_to_string(&self.config).expect("agent config");
        yaml.push_str("bundle: {poll_interval: 1}\nhealth: {interval: 1}\n");
        std::fs::write(&self.config, yaml).expect("write the agent config");
    }

    /// The agent's `max_sessions` now, if it answers (a restarted agent may not listen yet: no
    /// answer is `None`, not a failure).
    async fn agent_max_sessions(&self) -> Option<u64> {
        let answer = crate::support::http()
            .get(self.agent_api("/health"))
            .send()
            .await
            .ok()?;
        if answer.status() != 200 {
            return None;
        }
        let health: serde_json::Value = answer.json().await.ok()?;
        health["extra"]["max_sessions"].as_u64()
    }
}

/// Issue 10: "A bundle change (lower `sessions.max`) reaches the agent within one poll and is
/// kept across a restart", the restart while the control plane is away.
#[tokio::test]
async fn a_lower_sessions_max_reaches_a_running_agent_and_is_kept_across_a_restart_while_the_server_is_down()
 {
    let mut fleet = Fleet::start();
    fleet.fast_ride_out();
    let mut agent = Agent::start(&fleet, "agent");
    fleet.wait_worker(&mut agent).await;
    let id = fleet.create_session().await;
    let group = SessionGroup::of(&fleet, &id);
    assert_eq!(fleet.agent_max_sessions().await, Some(2));

    let (status, answer) = call(
        Method::PUT,
        &fleet.server.api(&format!("/nodes/{WORKER_ID}/config")),
        Some(json!({"sessions": {"max": 1}})),
    )
    .await;
    assert_eq!(
        (status, answer["version"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    // One poll is at most 1.1 s (1 s, 10 % jitter); the deadline is a hang guard with room for
    // a loaded host (the full suite on 2 cores missed 5 s once), not a measurement.
    let applied = eventually(Duration::from_secs(30), async || {
        fleet.agent_max_sessions().await == Some(1)
    })
    .await;
    assert!(
        applied,
        "the agent never applied sessions.max 1; its log:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("[bundle] applied config version 1"),
        "{}",
        agent.log()
    );
    // Lower means no new starts; the running session is untouched.
    assert!(group.leader_alive(), "the running session was stopped");
    assert_eq!(fleet.server_session(&id).await["status"], "running");
    let (status, refused) = call(
        Method::POST,
        &fleet.server.api("/sessions"),
        Some(json!({"body_ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(
        status, 503,
        "a second session started past sessions.max 1: {refused}"
    );
    let kept = fleet.dir.path().join("agent-state").join("bundle.json");
    let kept_text = std::fs::read_to_string(&kept).expect("the kept bundle");
    assert!(kept_text.contains("\"max\": 1"), "{kept_text}");

    // The control plane goes away; the agent is stopped and started again meanwhile.
    fleet.server.kill_9_in_place();
    drop(agent);
    drop(group);
    let mut agent = Agent::start(&fleet, "agent-restarted");
    let restarted = eventually(Duration::from_secs(20), async || {
        agent.assert_running();
        fleet.agent_max_sessions().await == Some(1)
    })
    .await;
    assert!(
        restarted,
        "the restarted agent does not run on the kept bundle; its log:\n{}",
        agent.log()
    );
    assert!(
        agent
            .log()
            .contains("[bundle] starting from the kept config bundle"),
        "{}",
        agent.log()
    );
    let degraded = eventually(Duration::from_secs(10), async || {
        agent.log().contains(&format!("{DEGRADED_WARN} 1"))
    })
    .await;
    assert!(
        degraded,
        "no degraded WARN naming config version 1; log:\n{}",
        agent.log()
    );
}

/// Issue 10: "killing the server puts the agent in degraded mode with the WARN line once while
/// its sessions keep running; the server back: INFO once."
#[tokio::test]
async fn a_server_killed_degrades_the_agent_once_its_session_keeps_running_and_it_recovers_once() {
    let mut fleet = Fleet::start();
    fleet.fast_ride_out();
    let mut agent = Agent::start(&fleet, "agent");
    fleet.wait_worker(&mut agent).await;
    // The create answer's stream URL carries the viewer capability (stored views do not).
    let (status, created) = call(
        Method::POST,
        &fleet.server.api("/sessions"),
        Some(json!({"body_ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(
        (status, created["status"].as_str()),
        (201, Some("running")),
        "{created}"
    );
    let id = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let stream_url = created["stream_url"]
        .as_str()
        .expect("stream_url")
        .to_owned();
    let group = SessionGroup::of(&fleet, &id);

    fleet.server.kill_9_in_place();
    let degraded = eventually(Duration::from_secs(10), async || {
        agent.log().contains(DEGRADED_WARN)
    })
    .await;
    assert!(degraded, "no degraded WARN; agent log:\n{}", agent.log());
    // Four more rounds (1 s each) with the server still away: no second WARN.
    let warned_again = eventually(Duration::from_secs(4), async || {
        agent.log().matches(DEGRADED_WARN).count() > 1
    })
    .await;
    assert!(
        !warned_again,
        "the WARN came more than once:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains(&format!("{DEGRADED_WARN} 0")),
        "{}",
        agent.log()
    );
    // Everything it supervises keeps running: the process, and the proxy in front of it.
    assert!(
        group.leader_alive(),
        "the session process stopped in degraded mode"
    );
    let health = fleet.agent_health().await;
    let session = health["extra"]["sessions"]
        .as_array()
        .and_then(|sessions| {
            sessions
                .iter()
                .find(|session| session["id"] == id.as_str())
                .cloned()
        })
        .unwrap_or_else(|| panic!("the agent lost session {id}: {health}"));
    assert_eq!(session["status"], "running", "{health}");
    assert_eq!(session["process_alive"], true, "{health}");
    let page = crate::support::http()
        .get(&stream_url)
        .send()
        .await
        .expect("the stream URL");
    assert!(
        page.status().is_success(),
        "the proxy stopped serving: {}",
        page.status()
    );

    fleet.restart_server_after_sigkill();
    let recovered = eventually(Duration::from_secs(15), async || {
        agent.log().contains(RECOVERED_INFO)
    })
    .await;
    assert!(recovered, "no recovery INFO; agent log:\n{}", agent.log());
    let logged_again = eventually(Duration::from_secs(4), async || {
        let log = agent.log();
        log.matches(RECOVERED_INFO).count() > 1 || log.matches(DEGRADED_WARN).count() > 1
    })
    .await;
    assert!(
        !logged_again,
        "the INFO or the WARN came twice:\n{}",
        agent.log()
    );
    assert!(
        group.leader_alive(),
        "the session process stopped on recovery"
    );
}

/// `hydra status --json` against the fleet's agent: the exit code and the JSON (Null when the
/// agent does not answer).
pub(crate) fn hydra_status(fleet: &Fleet) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_hydra"))
        .args(["status", "--json", "--agent"])
        .arg(format!("http://127.0.0.1:{}", fleet.agent_port))
        .env("HYDRA_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("run hydra status");
    let json = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code().expect("an exit code"), json)
}

/// The write ids in the agent's journal file (none when there is no file).
pub(crate) fn journaled_ids(fleet: &Fleet) -> Vec<String> {
    let path = fleet.dir.path().join("agent-state").join("journal.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).expect("a journal line");
            entry["write_id"].as_str().expect("write_id").to_owned()
        })
        .collect()
}

/// Issue 10: `hydra status` from the running agent, exit code 0 healthy, 1 degraded, 2 when the
/// agent does not answer; the replicas, the state, the config's source and the journal in JSON.
#[tokio::test]
async fn hydra_status_exits_0_healthy_1_degraded_and_2_without_an_agent() {
    let mut fleet = Fleet::start();
    fleet.fast_ride_out();
    let mut agent = Agent::start(&fleet, "agent");
    fleet.wait_worker(&mut agent).await;
    let healthy = eventually(Duration::from_secs(10), async || {
        let (code, status) = hydra_status(&fleet);
        code == 0 && status["control_plane"]["replicas"][0]["is_master"] == true
    })
    .await;
    let (code, status) = hydra_status(&fleet);
    assert!(healthy, "exit {code}: {status}; log:\n{}", agent.log());
    assert_eq!(status["control_plane"]["state"], "healthy", "{status}");
    assert_eq!(
        status["control_plane"]["replicas"][0]["url"],
        fleet.server.url.as_str()
    );

    fleet.server.kill_9_in_place();
    let degraded = eventually(Duration::from_secs(10), async || {
        hydra_status(&fleet).0 == 1
    })
    .await;
    let (code, status) = hydra_status(&fleet);
    assert!(degraded, "exit {code}: {status}");
    let control_plane = &status["control_plane"];
    assert_eq!(control_plane["state"], "degraded", "{status}");
    assert!(control_plane["degraded_since"].is_string(), "{status}");
    assert_eq!(control_plane["replicas"][0]["healthy"], false, "{status}");
    assert_eq!(control_plane["config_source"], "local_yaml", "{status}");
    assert!(agent.log().contains(DEGRADED_WARN), "{}", agent.log());

    agent.sigkill();
    let (code, status) = hydra_status(&fleet);
    assert_eq!((code, status), (2, Value::Null), "no agent answers");
}

/// Issue 10, "all replicas down" with real processes: the server killed, the agent degraded
/// (WARN once) journals its heartbeats and reports while its session keeps running; killed with
/// SIGKILL mid-journal and started again while the server is still away, it starts from the kept
/// bundle and keeps its journal; the server back: INFO once, the journal replays, and every
/// journaled write is on the server (its write id applied, once).
#[tokio::test]
async fn all_replicas_down_the_agent_journals_survives_a_kill_9_and_every_write_lands_once() {
    let mut fleet = Fleet::start();
    fleet.fast_ride_out();
    let mut agent = Agent::start(&fleet, "agent");
    fleet.wait_worker(&mut agent).await;
    let (status, answer) = call(
        Method::PUT,
        &fleet.server.api(&format!("/nodes/{WORKER_ID}/config")),
        Some(json!({"sessions": {"max": 2}})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let kept = fleet.dir.path().join("agent-state").join("bundle.json");
    assert!(
        eventually(Duration::from_secs(10), async || kept.exists()).await,
        "no kept bundle; log:\n{}",
        agent.log()
    );
    let id = fleet.create_session().await;
    let group = SessionGroup::of(&fleet, &id);

    fleet.server.kill_9_in_place();
    let journaled = eventually(Duration::from_secs(15), async || {
        agent.log().contains(DEGRADED_WARN) && journaled_ids(&fleet).len() >= 6
    })
    .await;
    assert!(journaled, "nothing journaled; log:\n{}", agent.log());
    assert!(group.leader_alive(), "the session stopped in degraded mode");
    let health = fleet.agent_health().await;
    assert_eq!(
        health["extra"]["sessions"][0]["process_alive"], true,
        "{health}"
    );

    // SIGKILL mid-journal: what was fsynced is there for the next start.
    agent.sigkill();
    let before_restart = journaled_ids(&fleet);
    assert!(before_restart.len() >= 6, "{before_restart:?}");
    let mut agent = Agent::start(&fleet, "agent-restarted");
    let restarted = eventually(Duration::from_secs(20), async || {
        agent.assert_running();
        let log = agent.log();
        log.contains("[bundle] starting from the kept config bundle")
            && log.contains("[journal] writes from before this start wait for a master")
            && log.contains(DEGRADED_WARN)
            && journaled_ids(&fleet).len() > before_restart.len()
    })
    .await;
    assert!(restarted, "log:\n{}", agent.log());
    let (code, status) = hydra_status(&fleet);
    assert_eq!(code, 1, "{status}");
    assert_eq!(
        status["control_plane"]["config_source"], "kept_copy",
        "{status}"
    );
    let journal = journaled_ids(&fleet);
    assert!(
        journal.starts_with(&before_restart),
        "the restarted agent keeps the journal in order"
    );

    fleet.restart_server_after_sigkill();
    let replayed = eventually(Duration::from_secs(20), async || {
        agent.log().contains(RECOVERED_INFO) && journaled_ids(&fleet).is_empty()
    })
    .await;
    assert!(replayed, "log:\n{}", agent.log());
    let log = agent.log();
    assert_eq!(log.matches(DEGRADED_WARN).count(), 1, "{log}");
    assert_eq!(log.matches(RECOVERED_INFO).count(), 1, "{log}");
    assert!(
        log.contains("[journal] replayed journaled writes to the master"),
        "{log}"
    );
    let (code, status) = hydra_status(&fleet);
    assert_eq!(
        (code, &status["control_plane"]["journal_length"]),
        (0, &json!(0)),
        "{status}"
    );

    // Every write journaled (before the kill, after the restart) was applied by the server.
    let store = hydra_store::Store::open_sqlite(&fleet.dir.path().join("server").join("hydra.db"))
        .await
        .expect("the server's database");
    for write_id in &journal {
        let id = hydra_api::write_id::parse_write_id(write_id).expect("a UUID");
        let applied = store.applied_write(id).await.expect("read write_ids");
        assert!(
            matches!(applied, Some(200 | 204)),
            "journaled write {write_id} is not on the server ({applied:?}); log:\n{log}"
        );
    }
}
