//! `hydra agent turn-config` through the real binary: it prints coturn settings matching the
//! agent's `turn:` section (the secret from `HYDRA_TURN__SECRET` like any other key), and without
//! a secret it fails with a message naming the key.

use crate::support::hydra_command;

/// Runs `hydra agent --config FILE turn-config` with `secret` in the environment, if any.
fn turn_config(config: &std::path::Path, secret: Option<&str>) -> std::process::Output {
    let mut command = hydra_command(&["agent", "--config"]);
    command.arg(config).arg("turn-config");
    if let Some(secret) = secret {
        command.env("HYDRA_TURN__SECRET", secret);
    }
    command.output().expect("run hydra agent turn-config")
}

#[test]
fn turn_config_prints_coturn_settings_from_the_agent_config_and_names_a_missing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "node: {id: w-9, lan_ip: 10.1.2.3, wg_ip: 10.99.0.9}\n\
         controller: {url: [\"http://127.0.0.1:1\"]}\n\
         ice_servers: [{urls: [\"turn:turn.example:3478\"]}]\n\
         turn: {realm: venue-north, listening_port: 3479, relay_port_min: 50000, relay_port_max: 50999}\n",
    )
    .unwrap();

    let printed = turn_config(&config, Some("from-the-environment-0123"));
    assert!(printed.status.success(), "{printed:?}");
    let text = String::from_utf8(printed.stdout).unwrap();
    for line in [
        "listening-port=3479",
        "min-port=50000",
        "max-port=50999",
        "realm=venue-north",
        "use-auth-secret",
        "static-auth-secret=from-the-environment-0123",
        "denied-peer-ip=192.168.0.0-192.168.255.255",
        "allowed-peer-ip=10.1.2.3",
        "allowed-peer-ip=10.99.0.9",
    ] {
        assert!(
            text.lines().any(|given| given == line),
            "no {line:?} in:\n{text}"
        );
    }

    let refused = turn_config(&config, None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("turn.secret is not set") && stderr.contains("HYDRA_TURN__SECRET"),
        "{stderr}"
    );
}
