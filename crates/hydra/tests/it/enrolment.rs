//! One-time enrolment tokens through the real binaries: made with `hydra nodes token create`,
//! they enrol one node once, expire, can do nothing else, and an agent enrols with one so the
//! admin token never sits on the node.

use std::process::{Child, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, ServerProcess, ServerSetup, call, call_as, eventually, free_loopback_port,
    spawn_agent,
};

/// `hydra nodes token create --expires EXPIRES --json` against `server`; the JSON answer.
async fn create_token(server: &ServerProcess, expires: &str) -> Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hydra"))
        .args(["nodes", "token", "create", "--expires", expires, "--json"])
        .args(["--server", &server.url])
        .env("HYDRA_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run hydra nodes token create");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON answer")
}

fn body(id: &str) -> Value {
    json!({"id": id, "roles": ["body"], "district": "bxl1", "venue": "rupelmonde", "owner": "acme"})
}

#[tokio::test]
async fn an_enrolment_token_enrols_once_expires_and_does_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    let created = create_token(&server, "1h").await;
    let token = created["token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("hye_"), "{created}");
    assert!(created["expires_at"].as_str().is_some(), "{created}");

    // Nothing but enrolment: every other route refuses it, and nothing changes.
    call(Method::POST, &server.api("/nodes"), Some(body("b-there"))).await;
    for (method, path, payload) in [
        (Method::GET, "/nodes", None),
        (Method::GET, "/nodes/b-there", None),
        (Method::DELETE, "/nodes/b-there", None),
        (
            Method::POST,
            "/nodes/b-there/drain",
            Some(json!({"drained": true})),
        ),
        (
            Method::POST,
            "/nodes/b-there/heartbeat",
            Some(json!({"idle": true})),
        ),
        (
            Method::GET,
            "/bodies/eligible?district=bxl1&venue=rupelmonde",
            None,
        ),
        (
            Method::POST,
            "/enrolment-tokens",
            Some(json!({"expires_in_s": 60})),
        ),
    ] {
        let (status, answer) = call_as(&token, method.clone(), &server.api(path), payload).await;
        assert_eq!(status, 401, "{method} {path}: {answer}");
    }
    let (_, node) = call(Method::GET, &server.api("/nodes/b-there"), None).await;
    assert_eq!(node["drained"], false);

    // Once.
    let (status, enrolled) = call_as(
        &token,
        Method::POST,
        &server.api("/nodes"),
        Some(body("b-1")),
    )
    .await;
    assert_eq!(status, 201, "{enrolled}");
    let node_token = enrolled["token"].as_str().unwrap();
    let (status, _) = call_as(
        node_token,
        Method::POST,
        &server.api("/nodes/b-1/heartbeat"),
        Some(json!({"idle": true})),
    )
    .await;
    assert_eq!(
        status, 200,
        "the node enrolled with a one-time token has its own token"
    );
    let (status, answer) = call_as(
        &token,
        Method::POST,
        &server.api("/nodes"),
        Some(body("b-2")),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("used or expired"),
        "{answer}"
    );
    let (status, _) = call(Method::GET, &server.api("/nodes/b-2"), None).await;
    assert_eq!(status, 404);

    // Expiry: an enrolment for a taken id is refused (409) without spending the token, until
    // the token has expired (401); then it enrols nothing.
    let short = create_token(&server, "1s").await;
    let short = short["token"].as_str().unwrap().to_owned();
    let mut last = 0;
    let expired = eventually(Duration::from_secs(15), async || {
        let (status, _) = call_as(
            &short,
            Method::POST,
            &server.api("/nodes"),
            Some(body("b-there")),
        )
        .await;
        last = status;
        status == 401
    })
    .await;
    assert!(
        expired,
        "the short token never expired (last answer {last})"
    );
    let (status, _) = call_as(
        &short,
        Method::POST,
        &server.api("/nodes"),
        Some(body("b-3")),
    )
    .await;
    assert_eq!(status, 401);

    // Bad input names the field; a node token may not make enrolment tokens.
    let (status, answer) = call(
        Method::POST,
        &server.api("/enrolment-tokens"),
        Some(json!({"expires_in_s": 0})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("expires_in_s"),
        "{answer}"
    );
    let (status, _) = call_as(
        node_token,
        Method::POST,
        &server.api("/enrolment-tokens"),
        Some(json!({"expires_in_s": 60})),
    )
    .await;
    assert_eq!(status, 403);
}

/// A `hydra agent` child; SIGKILLed on drop.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn an_agent_enrols_with_a_one_time_token_and_heartbeats_with_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&ServerSetup::sqlite(&dir.path().join("server")));
    let token = create_token(&server, "10m").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let state_dir = dir.path().join("agent-state");
    let yaml = format!(
        "node: {{id: h-agent, roles: [head], district: bxl1, venue: v, owner: acme}}\n\
         server: {{listen: \"127.0.0.1:{port}\"}}\n\
         controller: {{url: [\"{url}\"], enrolment_token: \"{token}\"}}\n\
         heartbeat: {{interval: 0.5}}\n\
         state_dir: \"{state}\"\nwireguard_optional: true\n",
        port = free_loopback_port(),
        url = server.url,
        state = state_dir.display(),
    );
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, yaml).unwrap();
    let log = dir.path().join("agent.log");
    let _agent = AgentProcess(spawn_agent(&config, &log, "info"));
    let heartbeating = eventually(Duration::from_secs(30), async || {
        let (status, node) = call(Method::GET, &server.api("/nodes/h-agent"), None).await;
        status == 200 && node["last_heartbeat"].is_string()
    })
    .await;
    assert!(
        heartbeating,
        "the agent did not enrol and heartbeat; its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let identity = std::fs::read_to_string(state_dir.join("node-token.json")).unwrap();
    assert!(identity.contains("hyn_"), "the node keeps its own token");
    assert!(!identity.contains(&token));
    // README: the node token file is readable by its owner only.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state_dir.join("node-token.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "node-token.json mode {mode:o}");
    // Spent by the agent's enrolment.
    let (status, _) = call_as(
        &token,
        Method::POST,
        &server.api("/nodes"),
        Some(body("b-x")),
    )
    .await;
    assert_eq!(status, 401);
}
