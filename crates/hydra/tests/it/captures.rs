//! The live capture the operators could not run (issue 12): a real `hydra server` and three real
//! `hydra agent` processes; one agent is killed with SIGKILL mid-capture. Its segment fails with
//! `source_error`, the two others finish with every line of their node's sequence (no gap, no
//! drop), and the capture is `failed` with the rolled-up reason; `hydra captures show` prints
//! the segments panel. On SQLite and on PostgreSQL.
//!
//! With the peer mesh (`cluster:` on the server and the agents): an agent the mesh declares
//! down mid-capture (SIGSTOP: its feed stays open and silent) ends its segment `failed` with
//! `node_left` at once, and a fan-out started then leaves it out.
//!
//! And a capture outliving its server: a SQLite server killed with SIGKILL mid-capture and
//! started again resumes it, as does the new master when two PostgreSQL replicas lose theirs;
//! each node's lines are stored once, in sequence, any gap counted in `lines_missing`.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually, free_loopback_port, spawn_agent,
    standin_web_stream,
};

/// A `hydra agent` process; SIGKILLed on drop.
struct AgentProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl AgentProcess {
    fn start(server: &ServerProcess, dir: &std::path::Path, id: &str) -> AgentProcess {
        AgentProcess::start_with(&[server.url.as_str()], dir, id)
    }

    /// An agent reporting to every replica of `controllers`.
    fn start_with(controllers: &[&str], dir: &std::path::Path, id: &str) -> AgentProcess {
        AgentProcess::start_configured(controllers, dir, id, "")
    }

    /// An agent reporting to every replica of `controllers`, with `extra` YAML (sections of its
    /// own, e.g. `cluster:`) appended to its config.
    fn start_configured(
        controllers: &[&str],
        dir: &std::path::Path,
        id: &str,
        extra: &str,
    ) -> AgentProcess {
        let port = free_loopback_port();
        let session_port = free_loopback_port();
        let yaml = format!(
            r#"node: {{id: {id}, roles: [worker], district: bxl1, venue: cloud-seven, owner: acme, lan_ip: 127.0.0.1}}
server: {{listen: "127.0.0.1:{port}"}}
controller: {{url: [{servers}], token: "{ADMIN_TOKEN}"}}
state_dir: "{state}"
wireguard_optional: true
heartbeat: {{interval: 0.5}}
sessions:
  max: 1
  port_range_start: {session_port}
  root: "{root}"
  command: ["{standin}", --bind, "{{bind}}", --port, "{{port}}", --data-dir, "{{data_dir}}"]
"#,
            servers = controllers
                .iter()
                .map(|url| format!("\"{url}\""))
                .collect::<Vec<_>>()
                .join(", "),
            state = dir.join(format!("{id}-state")).display(),
            root = dir.join(format!("{id}-sessions")).display(),
            standin = standin_web_stream().display(),
        );
        let config = dir.join(format!("{id}.yaml"));
        std::fs::write(&config, yaml + extra).expect("write the agent config");
        let log = dir.join(format!("{id}.log"));
        // The proxy's refusals are debug lines: the test's steady source of feed lines.
        let child = spawn_agent(&config, &log, "info,hydra_agent=debug");
        AgentProcess { child, port, log }
    }

    /// SIGSTOP: the agent (its feed, its mesh member, its API) stays silent; its sockets stay
    /// open, so no feed breaks. SIGKILL on drop ends it.
    fn pause(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP the agent");
    }

    fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL the agent");
        self.child.wait().expect("reap the agent");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn segment<'a>(capture: &'a Value, node: &str) -> &'a Value {
    capture["node_segments"]
        .as_array()
        .and_then(|segments| segments.iter().find(|segment| segment["node_id"] == node))
        .unwrap_or_else(|| panic!("no segment of {node}: {capture}"))
}

async fn capture(server: &ServerProcess, id: &str) -> Value {
    capture_at(&server.url, id).await
}

async fn capture_at(url: &str, id: &str) -> Value {
    let (status, capture) = call(Method::GET, &format!("{url}/api/v1/captures/{id}"), None).await;
    assert_eq!(status, 200, "{capture}");
    capture
}

/// Sends requests the agents log (a refused viewer) until `stop`, at most 60 s.
fn drive_lines(
    ports: Vec<u16>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut round: u64 = 0;
        while !stop.is_cancelled() && tokio::time::Instant::now() < deadline {
            for port in &ports {
                let _ = http
                    .get(format!("http://127.0.0.1:{port}/session/s-{round}/"))
                    .send()
                    .await;
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

async fn one_agent_killed_mid_capture(database_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = ServerSetup::sqlite(&dir.path().join("server"));
    setup.database_url = database_url;
    let server = ServerProcess::start(&setup);
    let ids = ["live-a", "live-b", "live-c"];
    let mut agents: Vec<AgentProcess> = ids
        .iter()
        .map(|id| AgentProcess::start(&server, dir.path(), id))
        .collect();
    assert!(
        workers_healthy(&server.url, 3).await,
        "three healthy workers; agent log: {}",
        std::fs::read_to_string(&agents[1].log).unwrap_or_default()
    );

    let started = start_fan_out(&server).await;
    let id = started["capture_id"].as_str().unwrap().to_owned();
    assert_eq!(started["node_segments"].as_array().unwrap().len(), 3);
    let stop_lines = tokio_util::sync::CancellationToken::new();
    let driver = drive_lines(
        agents.iter().map(|agent| agent.port).collect(),
        stop_lines.clone(),
    );

    let flowing = eventually(Duration::from_secs(30), async || {
        let capture = capture(&server, &id).await;
        ids.iter()
            .all(|node| segment(&capture, node)["line_count"].as_u64().unwrap_or(0) >= 20)
    })
    .await;
    assert!(
        flowing,
        "lines from all three nodes: {}",
        capture(&server, &id).await
    );

    agents[1].kill_9();
    let failed = eventually(Duration::from_secs(30), async || {
        segment(&capture(&server, &id).await, "live-b")["status"] == "failed"
    })
    .await;
    let after_kill = capture(&server, &id).await;
    assert!(failed, "the killed node's segment fails: {after_kill}");
    assert_eq!(
        segment(&after_kill, "live-b")["termination_reason"],
        "source_error"
    );
    assert_eq!(after_kill["status"], "running", "the others go on");
    let counts: Vec<u64> = ["live-a", "live-c"]
        .iter()
        .map(|node| segment(&after_kill, node)["line_count"].as_u64().unwrap())
        .collect();
    let grew = eventually(Duration::from_secs(30), async || {
        let capture = capture(&server, &id).await;
        ["live-a", "live-c"]
            .iter()
            .zip(&counts)
            .all(|(node, before)| {
                segment(&capture, node)["line_count"].as_u64().unwrap() > before + 20
            })
    })
    .await;
    assert!(grew, "the surviving nodes keep recording");
    stop_lines.cancel();
    driver.await.unwrap();

    let (status, stopped) = call(
        Method::POST,
        &server.api(&format!("/captures/{id}/stop")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "failed", "{stopped}");
    assert_eq!(stopped["termination_reason"], "source_error");
    for node in ["live-a", "live-c"] {
        let segment = segment(&stopped, node);
        assert_eq!(segment["status"], "completed", "{stopped}");
        assert_eq!(segment["termination_reason"], "stopped");
        assert_eq!(segment["lines_missing"], 0);
        // Every line of the node's sequence from the first captured to the last: no gap.
        let response = crate::support::http()
            .get(server.api(&format!("/captures/{id}/lines?node={node}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len() as u64, segment["line_count"].as_u64().unwrap());
        assert!(
            lines
                .iter()
                .all(|line| line["node"] == node && line["kind"] != "dropped")
        );
        let sequence: Vec<u64> = lines
            .iter()
            .map(|line| line["seq"].as_u64().unwrap())
            .collect();
        assert!(
            sequence.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "{node}: a gap in {sequence:?}"
        );
    }

    // The CLI's segments panel.
    let output = Command::new(env!("CARGO_BIN_EXE_hydra"))
        .args(["captures", "show", &id, "--server", &server.url])
        .env("HYDRA_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run hydra captures show");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(shown.contains("Fan-out segments (3 nodes)"), "{shown}");
    assert!(
        shown.lines().any(|line| line.contains("live-b")
            && line.contains("failed")
            && line.contains("source_error")),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_killed_mid_capture_fails_only_its_segment_on_sqlite() {
    one_agent_killed_mid_capture(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_killed_mid_capture_fails_only_its_segment_on_postgres() {
    let url = hydra_store::testing::fresh_postgres_database("capture_kill").await;
    one_agent_killed_mid_capture(Some(url)).await;
}

/// The stored lines of `node` in capture `id`, downloaded from `url`.
async fn stored_lines(url: &str, id: &str, node: &str) -> Vec<Value> {
    let response = crate::support::http()
        .get(format!("{url}/api/v1/captures/{id}/lines?node={node}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Checks a resumed node's stored lines against its segment: every line of the node at most
/// once, in sequence, and every gap in the sequence counted in `lines_missing` (a gap leaves the
/// segment truncated). Answers the number of lines missing.
fn check_each_line_once(node: &str, lines: &[Value], segment: &Value) -> u64 {
    let sequence: Vec<u64> = lines
        .iter()
        .filter(|line| line["kind"] != "dropped")
        .map(|line| line["seq"].as_u64().unwrap())
        .collect();
    assert!(!sequence.is_empty(), "{node}: no lines stored");
    assert!(
        sequence.windows(2).all(|pair| pair[1] > pair[0]),
        "{node}: a line stored twice or out of order in {sequence:?}"
    );
    let gaps: u64 = sequence.windows(2).map(|pair| pair[1] - pair[0] - 1).sum();
    assert_eq!(
        segment["lines_missing"].as_u64().unwrap(),
        gaps,
        "{node}: every gap is counted: {segment}"
    );
    assert_eq!(
        segment["status"],
        if gaps == 0 { "completed" } else { "truncated" },
        "{node}: {segment}"
    );
    assert_eq!(lines.len() as u64, segment["line_count"].as_u64().unwrap());
    gaps
}

/// Waits (at most 60 s) until each of `nodes` has more than `at_least` lines in capture `id`.
async fn lines_grow(url: &str, id: &str, nodes: &[&str], at_least: &[u64]) -> bool {
    eventually(Duration::from_secs(60), async || {
        let capture = capture_at(url, id).await;
        nodes.iter().zip(at_least).all(|(node, before)| {
            segment(&capture, node)["line_count"].as_u64().unwrap_or(0) > before + 20
        })
    })
    .await
}

/// Starts a fan-out capture of every worker for 120 s; its answer (asserted `201`).
async fn start_fan_out(server: &ServerProcess) -> Value {
    let (status, started) = call(
        Method::POST,
        &server.api("/captures"),
        Some(json!({"fan_out": true, "duration": 120})),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    started
}

/// Waits (at most 60 s) until `nodes` report as healthy workers to `url`.
async fn workers_healthy(url: &str, count: usize) -> bool {
    eventually(Duration::from_secs(60), async || {
        let (_, list) = call(Method::GET, &format!("{url}/api/v1/workers"), None).await;
        list["workers"].as_array().is_some_and(|workers| {
            workers
                .iter()
                .filter(|worker| worker["healthy"] == true)
                .count()
                == count
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_capture_resumes_it_when_started_again_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let setup = ServerSetup::sqlite(&dir.path().join("server"));
    let listen = format!("127.0.0.1:{}", free_loopback_port());
    let mut server = ServerProcess::start_listening(&setup, &listen);
    let ids = ["resume-a", "resume-b"];
    let agents: Vec<AgentProcess> = ids
        .iter()
        .map(|id| AgentProcess::start(&server, dir.path(), id))
        .collect();
    assert!(workers_healthy(&server.url, 2).await, "two healthy workers");
    let (status, started) = call(
        Method::POST,
        &server.api("/captures"),
        Some(json!({"fan_out": true, "duration": 300})),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let id = started["capture_id"].as_str().unwrap().to_owned();
    let stop_lines = tokio_util::sync::CancellationToken::new();
    let driver = drive_lines(
        agents.iter().map(|agent| agent.port).collect(),
        stop_lines.clone(),
    );
    assert!(
        lines_grow(&server.url, &id, &ids, &[0, 0]).await,
        "lines from both nodes"
    );

    server.restart_after_kill_9(&setup);
    let at_restart = capture(&server, &id).await;
    assert_eq!(at_restart["status"], "running", "{at_restart}");
    let counts: Vec<u64> = ids
        .iter()
        .map(|node| segment(&at_restart, node)["line_count"].as_u64().unwrap())
        .collect();
    assert!(
        lines_grow(&server.url, &id, &ids, &counts).await,
        "the restarted server records again: {}",
        server.log.lock().unwrap()
    );
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains("[capture] capture resumed by this master"),
        "the resume is logged"
    );
    stop_lines.cancel();
    driver.await.unwrap();
    let (status, stopped) = call(
        Method::POST,
        &server.api(&format!("/captures/{id}/stop")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    for node in ids {
        let lines = stored_lines(&server.url, &id, node).await;
        let missing = check_each_line_once(node, &lines, segment(&stopped, node));
        eprintln!(
            "[captures] {node}: {} lines kept across the restart, {missing} missing",
            lines.len()
        );
    }
}

/// Two replicas on `database_url` at fixed addresses (a restarted one comes back at its URL),
/// with a short lease so a takeover fits in a test.
fn replica_setups(database_url: &str, dir: &std::path::Path) -> Vec<(ServerSetup, String)> {
    (1..=2)
        .map(|index| {
            let setup = ServerSetup::replica(&dir.join(format!("r{index}")), database_url, index);
            (setup, format!("127.0.0.1:{}", free_loopback_port()))
        })
        .collect()
}

/// The index of the one replica of `urls` that says it is master (polled at most 30 s).
async fn current_master(urls: &[String]) -> Option<usize> {
    let mut found = None;
    eventually(Duration::from_secs(30), async || {
        let mut masters = Vec::new();
        for (index, url) in urls.iter().enumerate() {
            if is_master(url).await {
                masters.push(index);
            }
        }
        found = (masters.len() == 1).then(|| masters[0]);
        found.is_some()
    })
    .await;
    found
}

async fn is_master(url: &str) -> bool {
    let answer = crate::support::http()
        .get(format!("{url}/api/v1/check-master"))
        .send()
        .await;
    match answer {
        Ok(answer) => answer
            .json::<Value>()
            .await
            .is_ok_and(|body| body["is_master"] == true),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_capture_hands_it_to_the_new_master_on_postgres() {
    let url = hydra_store::testing::fresh_postgres_database("capture_failover").await;
    let dir = tempfile::tempdir().unwrap();
    let setups = replica_setups(&url, dir.path());
    let mut servers: Vec<ServerProcess> = setups
        .iter()
        .map(|(setup, listen)| ServerProcess::start_listening(setup, listen))
        .collect();
    let urls: Vec<String> = servers.iter().map(|server| server.url.clone()).collect();
    assert!(
        current_master(&urls).await.is_some(),
        "one replica is master"
    );
    let controllers: Vec<&str> = urls.iter().map(String::as_str).collect();
    let ids = ["failover-a", "failover-b"];
    let agents: Vec<AgentProcess> = ids
        .iter()
        .map(|id| AgentProcess::start_with(&controllers, dir.path(), id))
        .collect();
    assert!(workers_healthy(&urls[0], 2).await, "two healthy workers");
    // Through either replica (a follower forwards it); a 503 (no master known for a moment on a
    // loaded machine) started nothing and is retried, as a client does.
    let mut answer = (0, Value::Null);
    eventually(Duration::from_secs(30), async || {
        answer = call(
            Method::POST,
            &format!("{}/api/v1/captures", urls[0]),
            Some(json!({"fan_out": true, "duration": 300})),
        )
        .await;
        answer.0 != 503
    })
    .await;
    let (status, started) = answer;
    assert_eq!(status, 201, "{started}");
    let id = started["capture_id"].as_str().unwrap().to_owned();
    let stop_lines = tokio_util::sync::CancellationToken::new();
    let driver = drive_lines(
        agents.iter().map(|agent| agent.port).collect(),
        stop_lines.clone(),
    );
    assert!(
        lines_grow(&urls[0], &id, &ids, &[0, 0]).await,
        "lines from both nodes"
    );
    let master = current_master(&urls)
        .await
        .expect("a master runs the capture");
    let other = 1 - master;

    servers[master].kill_9_in_place();
    assert!(
        eventually(Duration::from_secs(30), async || is_master(&urls[other])
            .await)
        .await,
        "the other replica takes over"
    );
    let at_takeover = capture_at(&urls[other], &id).await;
    assert_eq!(at_takeover["status"], "running", "{at_takeover}");
    let counts: Vec<u64> = ids
        .iter()
        .map(|node| segment(&at_takeover, node)["line_count"].as_u64().unwrap())
        .collect();
    assert!(
        lines_grow(&urls[other], &id, &ids, &counts).await,
        "the new master records the capture: {}",
        servers[other].log.lock().unwrap()
    );
    // The old master comes back as a follower; a stop sent to it is forwarded to the master.
    servers[master].restart_after_kill_9(&setups[master].0);
    stop_lines.cancel();
    driver.await.unwrap();
    // A follower just started may not know the master for a moment: it answers 503, retry.
    let mut answer = (0, Value::Null);
    eventually(Duration::from_secs(30), async || {
        answer = call(
            Method::POST,
            &format!("{}/api/v1/captures/{id}/stop", urls[master]),
            None,
        )
        .await;
        answer.0 != 503
    })
    .await;
    let (status, stopped) = answer;
    assert_eq!(status, 200, "{stopped}");
    assert!(
        !is_master(&urls[master]).await,
        "the stop went through a follower"
    );
    for node in ids {
        let lines = stored_lines(&urls[other], &id, node).await;
        let missing = check_each_line_once(node, &lines, segment(&stopped, node));
        eprintln!(
            "[captures] {node}: {} lines kept across the takeover, {missing} missing",
            lines.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_capture_is_pruned_by_the_master_not_by_a_follower_on_postgres() {
    use hydra_core::capture::CaptureStatus;
    use hydra_store::{CaptureRecord, Store};

    let url = hydra_store::testing::fresh_postgres_database("capture_retention").await;
    let store = Store::open_postgres(&url).await.unwrap();
    let now = hydra_api::now_ms();
    let day_ms = 24 * 3600 * 1000;
    // Two ended captures: one past the default retention (7 d), one recent.
    for (id, ended_at) in [("cap-old", now - 8 * day_ms), ("cap-recent", now - 1000)] {
        let record = CaptureRecord {
            id: id.to_owned(),
            status: CaptureStatus::Running,
            termination_reason: None,
            fan_out: false,
            filters: "{}".to_owned(),
            duration_ms: Some(60_000),
            max_lines: None,
            max_bytes: None,
            created_at: ended_at - 60_000,
            ended_at: None,
        };
        store.insert_capture(&record, &[]).await.unwrap();
        assert!(
            store
                .finalise_capture(id, CaptureStatus::Completed, None, ended_at)
                .await
                .unwrap()
        );
    }
    // The test holds the lease and the beacon: the replica it starts is a follower.
    let term = store
        .acquire_lease("test-holder", 120_000, false)
        .await
        .unwrap()
        .expect("the lease is free on a fresh database");
    let mut beacon = store.beacon().expect("a beacon on PostgreSQL");
    assert!(beacon.lock(Duration::from_secs(5)).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let setups = replica_setups(&url, dir.path());
    let follower = ServerProcess::start_listening(&setups[0].0, &setups[0].1);
    assert!(!is_master(&follower.url).await, "the replica follows");
    // Its duties look at mastership every second: over three seconds it never prunes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let (status, _) = call(Method::GET, &follower.api("/captures/cap-old"), None).await;
        assert_eq!(status, 200, "a follower prunes nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The lease is given up: the replica becomes master and prunes at once.
    assert!(store.release_lease("test-holder", term).await.unwrap());
    beacon.unlock().await;
    let pruned = eventually(Duration::from_secs(30), async || {
        call(Method::GET, &follower.api("/captures/cap-old"), None)
            .await
            .0
            == 404
    })
    .await;
    assert!(
        pruned,
        "the new master prunes the old capture: {}",
        follower.log.lock().unwrap()
    );
    assert!(is_master(&follower.url).await);
    let (status, recent) = call(Method::GET, &follower.api("/captures/cap-recent"), None).await;
    assert_eq!(status, 200, "a recent capture stays: {recent}");
    assert!(
        follower
            .log
            .lock()
            .unwrap()
            .contains("ended captures past their retention pruned")
    );
}

const MESH_KEY_HEX: &str = "0909090909090909090909090909090909090909090909090909090909090909";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_mesh_declares_down_ends_its_segment_node_left_and_is_not_picked_again() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.key");
    crate::support::write_key_file(&key_file, MESH_KEY_HEX);
    let server = ServerProcess::start(&ServerSetup::with_mesh(dir.path(), &key_file));
    let server_mesh = async || -> Option<String> {
        let (_, cluster) = call(Method::GET, &server.api("/cluster"), None).await;
        cluster["addr"].as_str().map(str::to_owned)
    };
    assert!(
        eventually(Duration::from_secs(10), async || server_mesh()
            .await
            .is_some())
        .await,
        "the server runs the mesh"
    );
    let server_mesh = server_mesh().await.unwrap();
    let cluster = format!(
        "cluster: {{enabled: true, bind_port: 0, advertise_addr: 127.0.0.1, key_file: \"{}\", \
         join_peers: [\"{server_mesh}\"]}}\n",
        key_file.display()
    );
    let ids = ["mesh-a", "mesh-b", "mesh-c"];
    let agents: Vec<AgentProcess> = ids
        .iter()
        .map(|id| AgentProcess::start_configured(&[server.url.as_str()], dir.path(), id, &cluster))
        .collect();
    assert!(
        workers_healthy(&server.url, 3).await,
        "three healthy workers; agent log: {}",
        std::fs::read_to_string(&agents[1].log).unwrap_or_default()
    );
    let members = eventually(Duration::from_secs(30), async || {
        let (_, cluster) = call(Method::GET, &server.api("/cluster"), None).await;
        cluster["members_by_state"]["alive"] == 3
    })
    .await;
    assert!(
        members,
        "the three agents joined the server's mesh; agent log: {}",
        std::fs::read_to_string(&agents[1].log).unwrap_or_default()
    );

    let started = start_fan_out(&server).await;
    let id = started["capture_id"].as_str().unwrap().to_owned();
    let stop_lines = tokio_util::sync::CancellationToken::new();
    let driver = drive_lines(
        agents.iter().map(|agent| agent.port).collect(),
        stop_lines.clone(),
    );
    assert!(
        lines_grow(&server.url, &id, &ids, &[0, 0, 0]).await,
        "lines from all three nodes: {}",
        capture(&server, &id).await
    );

    // The feed of a stopped agent stays open and silent: only the mesh can tell.
    agents[1].pause();
    let ended = eventually(Duration::from_secs(30), async || {
        segment(&capture(&server, &id).await, "mesh-b")["status"] == "failed"
    })
    .await;
    let after = capture(&server, &id).await;
    assert!(ended, "the stopped node's segment ends: {after}");
    assert_eq!(
        segment(&after, "mesh-b")["termination_reason"],
        "node_left",
        "ended by the mesh, not by the feed's silence: {after}"
    );
    assert_eq!(after["status"], "running", "the others go on: {after}");
    let (_, node) = call(Method::GET, &server.api("/nodes/mesh-b"), None).await;
    assert_eq!(node["status"], "unreachable", "{node}");
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains("[capture] node declared down by the mesh: its segment ends"),
        "the end is logged"
    );

    // A fan-out started now leaves the node the mesh declared down out.
    let (status, second) = call(
        Method::POST,
        &server.api("/captures"),
        Some(json!({"fan_out": true, "duration": 60})),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let mut picked: Vec<&str> = second["node_segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|segment| segment["node_id"].as_str().unwrap())
        .collect();
    picked.sort_unstable();
    assert_eq!(picked, ["mesh-a", "mesh-c"], "{second}");
    let second_id = second["capture_id"].as_str().unwrap();
    let (status, _) = call(
        Method::POST,
        &server.api(&format!("/captures/{second_id}/stop")),
        None,
    )
    .await;
    assert_eq!(status, 200);

    let counts: Vec<u64> = ["mesh-a", "mesh-c"]
        .iter()
        .map(|node| segment(&after, node)["line_count"].as_u64().unwrap())
        .collect();
    assert!(
        lines_grow(&server.url, &id, &["mesh-a", "mesh-c"], &counts).await,
        "the nodes still in the mesh keep recording"
    );
    stop_lines.cancel();
    driver.await.unwrap();
    let (status, stopped) = call(
        Method::POST,
        &server.api(&format!("/captures/{id}/stop")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(
        (&stopped["status"], &stopped["termination_reason"]),
        (&json!("failed"), &json!("node_left")),
        "{stopped}"
    );
    for node in ["mesh-a", "mesh-c"] {
        assert_eq!(segment(&stopped, node)["status"], "completed", "{stopped}");
    }
}
