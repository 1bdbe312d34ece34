//! `hydra status` as a real process against an agent's local API on loopback: without a token
//! it prints counts and says how to see more; with `HYDRA_TOKEN` (or `--token`) it gets the
//! session details; a wrong token is an error naming the answer.

use std::process::{Command, Output};
use std::time::Duration;

use hydra_agent::http::{AgentState, HttpSettings, router};
use hydra_proxy::proxy::Proxy;
use tokio_util::sync::CancellationToken;

const API_TOKEN: &str = "status-test-api-token";

/// An agent's HTTP surface (no worker role) on a loopback port; stops when dropped.
struct LocalApi {
    url: String,
    shutdown: CancellationToken,
}

impl LocalApi {
    async fn start() -> LocalApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let state = AgentState::new(
            HttpSettings {
                roles: vec!["head".into()],
                servers: Vec::new(),
                return_url: "/".into(),
                report_url: "mailto:".into(),
                rating_url: None,
                api_token: Some(API_TOKEN.into()),
                wireguard_optional: true,
                viewer_ttl: Duration::from_secs(60),
                ice: Default::default(),
            },
            None,
            Proxy::new(shutdown.clone()),
        );
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
        });
        LocalApi { url, shutdown }
    }
}

impl Drop for LocalApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Runs `hydra status --agent URL` with `args` and `HYDRA_TOKEN` set to `token` (or unset).
async fn status(api: &LocalApi, args: &[&str], token: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hydra"));
    command.args(["status", "--agent", &api.url]).args(args);
    command.env_remove("HYDRA_TOKEN");
    if let Some(token) = token {
        command.env("HYDRA_TOKEN", token);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydra_status_shows_sessions_only_with_the_agents_token() {
    let api = LocalApi::start().await;

    let anonymous = status(&api, &["--json"], None).await;
    assert!(anonymous.status.success(), "{anonymous:?}");
    let json: serde_json::Value = serde_json::from_slice(&anonymous.stdout).unwrap();
    assert!(json.get("sessions").is_none(), "{json}");
    let text = status(&api, &[], None).await;
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("--token or HYDRA_TOKEN"),
        "{text:?}"
    );

    for (args, token) in [
        (vec!["--json"], Some(API_TOKEN)),
        (vec!["--json", "--token", API_TOKEN], None),
    ] {
        let detailed = status(&api, &args, token).await;
        assert!(detailed.status.success(), "{detailed:?}");
        let json: serde_json::Value = serde_json::from_slice(&detailed.stdout).unwrap();
        assert_eq!(json["sessions"], serde_json::json!([]), "{json}");
    }

    let wrong = status(&api, &[], Some("not-the-token")).await;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401"),
        "{wrong:?}"
    );
}
