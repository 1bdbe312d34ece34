//! The field's words with real processes (a `hydra server` and a `hydra agent`): a full fleet
//! is `no healthy workers available` from the server, while the full worker asked directly
//! says `max sessions reached`; an agent without WireGuard and without `wireguard_optional`
//! logs `WARNING: no WireGuard interface detected` once at start, and not at all with it.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::agent::{Agent, Fleet};
use crate::support::{call, eventually};

/// The field's line, word for word (relay.md, the worker's start-up).
const NO_WIREGUARD: &str = "WARNING: no WireGuard interface detected";

#[tokio::test]
async fn a_full_fleet_is_no_healthy_workers_and_a_full_worker_max_sessions_reached() {
    let fleet = Fleet::start_with_room(None, 1);
    let mut agent = Agent::start(&fleet, "agent");
    fleet.wait_worker(&mut agent).await;
    let (status, first) = call(
        Method::POST,
        &fleet.server.api("/sessions"),
        Some(json!({"body_ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let (status, refused) = call(
        Method::POST,
        &fleet.server.api("/sessions"),
        Some(json!({"body_ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(
        (status, refused["message"].as_str()),
        (503, Some("no healthy workers available")),
        "{refused}"
    );
    // The worker itself, asked directly (its api_token is the test's admin token).
    let (status, direct) = call(
        Method::POST,
        &fleet.agent_api("/sessions"),
        Some(json!({"body_ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(
        (status, direct["message"].as_str()),
        (503, Some("max sessions reached")),
        "{direct}"
    );
    // wireguard_optional: true (the fleet's config): no warning.
    let log = agent.log();
    assert!(log.contains("hydra agent listening"), "{log}");
    assert!(!log.contains(NO_WIREGUARD), "{log}");
}

#[tokio::test]
async fn without_wireguard_the_agent_warns_once_at_start() {
    assert!(
        !hydra_agent::local_api::wireguard_up(),
        "a WireGuard interface is up here: this test needs a host without one"
    );
    let fleet = Fleet::start_with_room(None, 1);
    let yaml = std::fs::read_to_string(&fleet.config).unwrap();
    std::fs::write(
        &fleet.config,
        yaml.replace("wireguard_optional: true", "wireguard_optional: false"),
    )
    .unwrap();
    let mut agent = Agent::start(&fleet, "strict");
    fleet.wait_worker(&mut agent).await;
    // Heartbeats and reports went by since the start: still one line.
    let warned = eventually(Duration::from_secs(10), async || {
        agent.log().contains(NO_WIREGUARD)
    })
    .await;
    let log = agent.log();
    assert!(warned, "{log}");
    assert_eq!(log.matches(NO_WIREGUARD).count(), 1, "{log}");
}
