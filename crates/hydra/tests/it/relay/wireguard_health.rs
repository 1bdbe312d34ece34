//! The agent's health word (issue 15): with `wireguard_optional: false` (the default) an agent
//! without a WireGuard interface up says `degraded` on `/api/v1/health`; with `wireguard_optional:
//! true` it says `ok`. A real agent (the daemon, from its config) enrolled with a real server.

use std::time::Duration;

use hydra_agent::local_api::wireguard_up;

use super::fleet::{Agent, Server, healthy_workers, state_dir};
use super::support::Body;

/// The `status` of the agent's `/api/v1/health` answer (no token: the short answer).
async fn health_status(agent: &Agent) -> String {
    let answer: serde_json::Value = reqwest::get(format!("http://{}/api/v1/health", agent.address))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["status"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wireguard_the_health_is_degraded_unless_wireguard_is_optional() {
    // The test needs a host without WireGuard; on one with an interface up it cannot tell.
    assert!(
        !wireguard_up(),
        "a WireGuard interface is up here: this test needs a host without one"
    );
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let strict = Agent::start_with(
        &server,
        "w-strict",
        &state_dir(temp.path(), "w-strict"),
        &body,
        1,
        |config| config.wireguard_optional = false,
    )
    .await;
    let optional = Agent::start(
        &server,
        "w-optional",
        &state_dir(temp.path(), "w-optional"),
        &body,
        1,
    )
    .await;
    healthy_workers(&server, 2).await;

    assert_eq!(health_status(&strict).await, "degraded");
    assert_eq!(health_status(&optional).await, "ok");
}
