//! The live capture the operators could not run (issue 12): a real `hydra server` and three real
//! `hydra agent` processes; one agent is killed with SIGKILL mid-capture. Its segment fails with
//! `source_error`, the two others finish with every line of their node's sequence (no gap, no
//! drop), and the capture is `failed` with the rolled-up reason; `hydra captures show` prints
//! the segments panel. On SQLite and on PostgreSQL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually, free_loopback_port,
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
        let port = free_loopback_port();
        let session_port = free_loopback_port();
        let yaml = format!(
            r#"node: {{id: {id}, roles: [worker], district: bxl1, venue: cloud-seven, owner: acme, lan_ip: 127.0.0.1}}
server: {{listen: "127.0.0.1:{port}"}}
controller: {{url: ["{server}"], token: "{ADMIN_TOKEN}"}}
state_dir: "{state}"
wireguard_optional: true
heartbeat: {{interval: 0.5}}
sessions:
  max: 1
  port_range_start: {session_port}
  root: "{root}"
  command: ["{standin}", --bind, "{{bind}}", --port, "{{port}}", --data-dir, "{{data_dir}}"]
"#,
            server = server.url,
            state = dir.join(format!("{id}-state")).display(),
            root = dir.join(format!("{id}-sessions")).display(),
            standin = standin_web_stream().display(),
        );
        let config = dir.join(format!("{id}.yaml"));
        std::fs::write(&config, yaml).expect("write the agent config");
        let log = dir.join(format!("{id}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_hydra"));
        command
            .args(["agent", "--config"])
            .arg(&config)
            // The proxy's refusals are debug lines: the test's steady source of feed lines.
            .env("RUST_LOG", "info,hydra_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HYDRA_") {
                command.env_remove(key);
            }
        }
        AgentProcess {
            child: command.spawn().expect("spawn hydra agent"),
            port,
            log,
        }
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
    let (status, capture) = call(Method::GET, &server.api(&format!("/captures/{id}")), None).await;
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
    let healthy = eventually(Duration::from_secs(60), async || {
        let (_, list) = call(Method::GET, &server.api("/workers"), None).await;
        list["workers"].as_array().is_some_and(|workers| {
            workers
                .iter()
                .filter(|worker| worker["healthy"] == true)
                .count()
                == 3
        })
    })
    .await;
    assert!(
        healthy,
        "three healthy workers; agent log: {}",
        std::fs::read_to_string(&agents[1].log).unwrap_or_default()
    );

    let (status, started) = call(
        Method::POST,
        &server.api("/captures"),
        Some(json!({"fan_out": true, "duration": 120})),
    )
    .await;
    assert_eq!(status, 201, "{started}");
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
