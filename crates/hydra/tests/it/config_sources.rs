//! Where settings come from, through the real binaries: the YAML file, `HYDRA_*` variables and
//! flags, each winning over the one before it, for `hydra server` (`HYDRA_<KEY>`) and
//! `hydra agent` (`HYDRA_<SECTION>__<KEY>`); a bad value stops the process with a message that
//! names the key and where it came from.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{
    ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually, free_loopback_port, http,
    hydra_command,
};

/// A `hydra` process whose stderr goes to a file; killed on drop.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    /// Starts `hydra args...` with only the `HYDRA_*` variables in `env` (none inherited).
    fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        let log = dir.join(format!("{name}.log"));
        let mut command = hydra_command(args);
        command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        command.envs(env.iter().copied());
        Running {
            child: command.spawn().expect("spawn hydra"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 30 s) for the process to exit; its exit code.
    async fn exit_code(&mut self) -> Option<i32> {
        let mut code = None;
        let exited = eventually(Duration::from_secs(30), async || {
            match self.child.try_wait().expect("poll the process") {
                Some(status) => {
                    code = status.code();
                    true
                }
                None => false,
            }
        })
        .await;
        assert!(exited, "still running after 30 s:\n{}", self.log());
        code
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something answers `GET /api/v1/health` on `port` within 30 s.
async fn answers_on(port: u16) -> bool {
    eventually(Duration::from_secs(30), async || {
        http()
            .get(format!("http://127.0.0.1:{port}/api/v1/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    })
    .await
}

async fn refused_on(port: u16) -> bool {
    http()
        .get(format!("http://127.0.0.1:{port}/api/v1/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_err()
}

#[tokio::test]
async fn server_settings_come_from_flags_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port) = (
        free_loopback_port(),
        free_loopback_port(),
        free_loopback_port(),
    );
    let config = dir.path().join("hydra.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{file_port}\nheartbeat_timeout: 1\nadmin_token: {ADMIN_TOKEN}\n"
        ),
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    let config_path = config.to_str().unwrap();

    // The file alone: its listen address, its admin token, its heartbeat timeout (1 s).
    {
        let _server = Running::start(
            dir.path(),
            "file",
            &["server", "--config", config_path, "--data-dir", data],
            &[],
        );
        assert!(answers_on(file_port).await, "the file's listen address");
        let base = format!("http://127.0.0.1:{file_port}/api/v1");
        let (status, answer) = call(
            Method::POST,
            &format!("{base}/nodes"),
            Some(json!({"id": "b-1", "roles": ["body"], "district": "d", "venue": "v", "owner": "o"})),
        )
        .await;
        assert_eq!(status, 201, "the file's admin token: {answer}");
        call(
            Method::POST,
            &format!("{base}/nodes/b-1/heartbeat"),
            Some(json!({"idle": true})),
        )
        .await;
        let offline = eventually(Duration::from_secs(20), async || {
            let (_, node) = call(Method::GET, &format!("{base}/nodes/b-1"), None).await;
            node["status"] == "offline"
        })
        .await;
        assert!(
            offline,
            "the file's 1 s heartbeat timeout never took the node offline"
        );
    }

    // The environment beats the file.
    let env_listen = format!("127.0.0.1:{env_port}");
    {
        let _server = Running::start(
            dir.path(),
            "env",
            &["server", "--config", config_path, "--data-dir", data],
            &[("HYDRA_LISTEN", &env_listen)],
        );
        assert!(answers_on(env_port).await, "HYDRA_LISTEN beats the file");
        assert!(refused_on(file_port).await);
    }

    // A flag beats both.
    {
        let flag_listen = format!("127.0.0.1:{flag_port}");
        let _server = Running::start(
            dir.path(),
            "flag",
            &[
                "server",
                "--config",
                config_path,
                "--data-dir",
                data,
                "--listen",
                &flag_listen,
            ],
            &[("HYDRA_LISTEN", &env_listen)],
        );
        assert!(answers_on(flag_port).await, "--listen beats HYDRA_LISTEN");
        assert!(refused_on(env_port).await);
    }

    // Bad values name the key and where they came from; the server does not start.
    let mut bad_env = Running::start(
        dir.path(),
        "bad-env",
        &["server", "--config", config_path, "--data-dir", data],
        &[("HYDRA_HEARTBEAT_TIMEOUT", "soon")],
    );
    assert_ne!(bad_env.exit_code().await, Some(0));
    let log = bad_env.log();
    assert!(
        log.contains("heartbeat_timeout") && log.contains("HYDRA_HEARTBEAT_TIMEOUT"),
        "{log}"
    );
    let bad_file = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_file,
        "listen: 127.0.0.1:1\nheartbeat_timeout: [1, 2]\n",
    )
    .unwrap();
    let mut bad = Running::start(
        dir.path(),
        "bad-file",
        &[
            "server",
            "--config",
            bad_file.to_str().unwrap(),
            "--data-dir",
            data,
        ],
        &[],
    );
    assert_ne!(bad.exit_code().await, Some(0));
    let log = bad.log();
    assert!(
        log.contains("heartbeat_timeout") && log.contains(bad_file.to_str().unwrap()),
        "{log}"
    );
}

#[tokio::test]
async fn agent_settings_come_from_flags_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&ServerSetup::sqlite(&dir.path().join("server")));
    let (file_port, flag_port) = (free_loopback_port(), free_loopback_port());
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            r#"node: {{id: a-file, roles: [body], district: d-file, venue: v-file, owner: acme}}
server: {{listen: "127.0.0.1:{file_port}"}}
controller: {{url: ["{server}"], token: "{ADMIN_TOKEN}"}}
state_dir: "{state}"
wireguard_optional: true
"#,
            server = server.url,
            state = dir.path().join("state").display(),
        ),
    )
    .unwrap();
    let flag_listen = format!("127.0.0.1:{flag_port}");
    let _agent = Running::start(
        dir.path(),
        "agent",
        &[
            "agent",
            "--config",
            config.to_str().unwrap(),
            "--node-id",
            "a-flag",
            "--listen",
            &flag_listen,
        ],
        &[("HYDRA_NODE__ID", "a-env"), ("HYDRA_NODE__VENUE", "v-env")],
    );
    assert!(answers_on(flag_port).await, "--listen beats the file");
    assert!(refused_on(file_port).await);
    // The node enrolled as the flag names it, in the venue the environment names, in the
    // district only the file names.
    let enrolled = eventually(Duration::from_secs(30), async || {
        let (status, _) = call(Method::GET, &server.api("/nodes/a-flag"), None).await;
        status == 200
    })
    .await;
    assert!(enrolled, "the agent never enrolled as a-flag");
    let (_, node) = call(Method::GET, &server.api("/nodes/a-flag"), None).await;
    assert_eq!(
        (&node["venue"], &node["district"]),
        (&json!("v-env"), &json!("d-file")),
        "{node}"
    );
    let (_, nodes) = call(Method::GET, &server.api("/nodes"), None).await;
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(1), "{nodes}");

    // A bad variable names its key and stops the agent before it binds.
    let mut bad = Running::start(
        dir.path(),
        "bad",
        &["agent", "--config", config.to_str().unwrap()],
        &[("HYDRA_SESSIONS__MAX", "lots")],
    );
    assert_ne!(bad.exit_code().await, Some(0));
    let log = bad.log();
    assert!(
        log.contains("HYDRA_SESSIONS__MAX") || log.contains("sessions.max"),
        "{log}"
    );
}
