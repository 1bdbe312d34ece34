//! The lean `hydra-agent` binary is the agent of `hydra agent`: the same flags, the same config
//! and subcommand, the same daemon (it binds its port first and stops on SIGTERM).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `hydra-agent` with no `HYDRA_*` variable of the test's environment.
fn hydra_agent() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hydra-agent"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HYDRA_") {
            command.env_remove(key);
        }
    }
    command.stdin(Stdio::null());
    command
}

#[test]
fn the_lean_binary_has_the_agents_flags_and_config_and_names_a_bad_flag() {
    let help = hydra_agent().arg("--help").output().unwrap();
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--config",
        "--listen",
        "--public-url",
        "--server",
        "--node-id",
        "--state-dir",
        "--max-sessions",
        "--port-range-start",
        "--heartbeat-interval",
        "turn-config",
    ] {
        assert!(text.contains(flag), "no {flag} in --help:\n{text}");
    }

    let refused = hydra_agent()
        .args(["--listen", "no-address"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--listen"), "{stderr}");

    // The config file and the subcommand, as `hydra agent --config FILE turn-config` reads them.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "node: {id: w-9, lan_ip: 10.1.2.3}\n\
         controller: {url: [\"http://127.0.0.1:1\"]}\n\
         ice_servers: [{urls: [\"turn:turn.example:3478\"]}]\n\
         turn: {realm: venue-north, listening_port: 3479, secret: a-secret-of-the-test-0123}\n",
    )
    .unwrap();
    let printed = hydra_agent()
        .arg("--config")
        .arg(&config)
        .arg("turn-config")
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let text = String::from_utf8(printed.stdout).unwrap();
    for line in [
        "listening-port=3479",
        "realm=venue-north",
        "allowed-peer-ip=10.1.2.3",
    ] {
        assert!(
            text.lines().any(|given| given == line),
            "no {line:?} in:\n{text}"
        );
    }
}

#[test]
fn the_lean_binary_runs_the_daemon_which_binds_first_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let agent = |listen: &str, state: &str| {
        let mut command = hydra_agent();
        command
            .args(["--listen", listen, "--server", "http://127.0.0.1:1"])
            .args(["--node-id", "lean-binary", "--state-dir"])
            .arg(dir.path().join(state))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    // A port someone holds: the agent touches nothing and says another agent may run.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let refused = agent(&address, "refused").output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(hydra_agent::worker::orphans::ALREADY_RUNNING),
        "{stderr}"
    );
    drop(taken);

    // A free port: it binds it at once (before the unreachable control plane answers) and stops
    // cleanly on SIGTERM.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = free.local_addr().unwrap();
    drop(free);
    let mut running = agent(&address.to_string(), "running").spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(
            running.try_wait().unwrap().is_none(),
            "hydra-agent exited before binding {address}"
        );
        assert!(
            Instant::now() < deadline,
            "hydra-agent never bound {address}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = running.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = running.kill();
            panic!("hydra-agent did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
}
