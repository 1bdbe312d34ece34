//! The relay end to end: a real server (in this process, SQLite) and real agents with real
//! session processes over loopback. `fleet` is the harness; the agent crate's test helpers are
//! shared rather than copied (`support`).

mod body;
mod captures;
mod colocated;
mod fleet;
mod forward_trust;
mod monitor;
mod peers;
mod rating_forward;
mod reports;
mod session_start;
// The agent's test helpers; this crate uses only some of them.
#[allow(dead_code)]
#[path = "../../../../hydra-agent/tests/it/support.rs"]
mod support;
mod turn;
mod wireguard_health;

/// The stand-in session process (`support::standin`): cargo builds only a package's own binaries
/// for its tests, so the hydra crate's support builds hydra-agent's.
fn standin_binary() -> String {
    crate::support::standin_web_stream().display().to_string()
}

/// The stand-in session command with `--record-env`: each session writes its environment to
/// `<dir>/env/<session id>.env` (read it back with [`support::recorded_env`]); answers the command and
/// that folder.
fn recording_standin_command(dir: &std::path::Path) -> (Vec<String>, std::path::PathBuf) {
    let records = dir.join("env");
    std::fs::create_dir_all(&records).unwrap();
    let mut command = support::standin_command();
    command.extend([
        "--record-env".to_owned(),
        format!("{}/{{session_id}}.env", records.display()),
    ]);
    (command, records)
}
