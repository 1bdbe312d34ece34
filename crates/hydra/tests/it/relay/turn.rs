//! TURN with Debian's real coturn on loopback: the credentials a worker hands a session process
//! (`HYDRA_ICE_SERVERS`, minted from `turn.secret`) allocate a relay on a coturn configured by
//! the agent's own `turn-config` output; forged and expired ones are refused.

use std::process::Command;
use std::time::Duration;

use hydra_api::SessionState;

use super::fleet::{Agent, Server, for_body, healthy_workers, state_dir};
use super::recording_standin_command;
use super::support::{Body, Coturn, free_port, recorded_env, value_of, wait_for};

const SECRET: &str = "turn-test-secret-0123456789";

/// One allocation with `turnutils_uclient` (coturn's own test client): whether it succeeded, and
/// its output.
fn allocate(port: u16, username: &str, credential: &str) -> (bool, String) {
    let output = Command::new("timeout")
        .args([
            "20",
            "turnutils_uclient",
            "-y",
            "-n",
            "1",
            "-m",
            "1",
            "-l",
            "100",
            "-u",
        ])
        .arg(username)
        .arg("-w")
        .arg(credential)
        .arg("-p")
        .arg(port.to_string())
        .arg("127.0.0.1")
        .output()
        .expect("run turnutils_uclient (coturn's client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.success() && !text.contains("Cannot complete Allocation"),
        text,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_minted_for_a_session_allocate_on_coturn_and_forged_or_expired_ones_do_not() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let (command, records) = recording_standin_command(temp.path());
    let turn_port = free_port();
    // Relay ports above the kernel's ephemeral range (32768-60999), so no other socket of the
    // test run holds one, and never the listening port itself.
    let relay_min = 61_000 + (turn_port % 4_000);
    let mut coturn_config = String::new();
    let agent = Agent::start_with(
        &server,
        "w-turn",
        &state_dir(temp.path(), "w-turn"),
        &body,
        2,
        |config| {
            config.sessions.command = command;
            config.ice_servers =
                vec![serde_json::json!({"urls": [format!("turn:127.0.0.1:{turn_port}")]})];
            config.turn.secret = Some(SECRET.into());
            config.turn.listening_port = turn_port;
            config.turn.relay_port_min = relay_min;
            config.turn.relay_port_max = relay_min + 40;
            config.validate().expect("a valid turn section");
            coturn_config = hydra_agent::turn::coturn_config(config).expect("coturn settings");
        },
    )
    .await;
    // The agent's coturn settings say what the field's coturn needs.
    for line in [
        "use-auth-secret".to_owned(),
        format!("static-auth-secret={SECRET}"),
        "realm=hydra".to_owned(),
        format!("listening-port={turn_port}"),
        format!("min-port={relay_min}"),
        "denied-peer-ip=10.0.0.0-10.255.255.255".to_owned(),
        "allowed-peer-ip=127.0.0.1".to_owned(),
    ] {
        assert!(
            coturn_config.lines().any(|given| given == line),
            "turn-config lacks {line:?}:\n{coturn_config}"
        );
    }
    let _coturn = Coturn::start(temp.path(), &coturn_config, turn_port);

    healthy_workers(&server, 1).await;
    let session = server.admin().create_session(&for_body()).await.unwrap();
    assert_eq!(session.status, SessionState::Running);
    let env_file = records.join(format!("{}.env", session.session_id));
    wait_for("the recorded environment", Duration::from_secs(10), || {
        env_file.exists()
    })
    .await;
    let env = recorded_env(&env_file);
    let handed: serde_json::Value =
        serde_json::from_str(value_of(&env, "HYDRA_ICE_SERVERS").unwrap()).unwrap();
    let username = handed[0]["username"]
        .as_str()
        .expect("a minted username")
        .to_owned();
    let credential = handed[0]["credential"]
        .as_str()
        .expect("a minted credential")
        .to_owned();
    assert!(
        username.ends_with(&format!(":{}", session.session_id)),
        "the username names the session: {username}"
    );

    let (allocated, output) = allocate(turn_port, &username, &credential);
    assert!(
        allocated,
        "coturn refused the worker's credentials:\n{output}"
    );

    let forged = format!("A{}", &credential[1..]);
    let (allocated, output) = allocate(turn_port, &username, &forged);
    assert!(!allocated, "coturn accepted a forged credential:\n{output}");

    let now = hydra_api::now_ms() as u64 / 1_000;
    let expired = hydra_proxy::turn::credentials(SECRET, &session.session_id, now - 7_200, 600);
    let (allocated, output) = allocate(turn_port, &expired.username, &expired.credential);
    assert!(!allocated, "coturn accepted expired credentials:\n{output}");
    drop(agent);
}
