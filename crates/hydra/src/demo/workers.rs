//! The demo's two real workers: `hydra agent` processes, each in its own process group with a
//! private config, started and stopped (SIGTERM, then SIGKILL to the group) by the demo.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Child;

use crate::output::print;

/// The stand-in session process: this binary's hidden `demo-session` (the same code as the
/// tests' `standin-web-stream`), so the demo needs nothing built beside `hydra`.
pub(super) fn session_command() -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("cannot find this hydra binary")?;
    Ok(vec![exe.display().to_string(), "demo-session".to_owned()])
}

/// A free port on loopback, as the system hands it out now.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Two `hydra agent` workers, one per district, each in its own process group with its config,
/// state and log under `dir`; their sessions run `session_command` against bodies on `body_port`.
pub(super) async fn start_workers(
    url: &str,
    admin_token: &str,
    dir: &Path,
    body_port: u16,
    session_command: &[String],
) -> anyhow::Result<Vec<Child>> {
    // YAML flow-list items, each quoted (JSON strings are valid YAML).
    let program: String = session_command
        .iter()
        .map(|part| format!("{}, ", serde_json::Value::from(part.as_str())))
        .collect();
    let mut children = Vec::new();
    for (id, district, venue) in [("w-bxl1", "bxl1", "rupelmonde"), ("w-ams1", "ams1", "zuid")] {
        let home = dir.join(id);
        std::fs::create_dir_all(&home)?;
        let api_token = hydra_server::auth::generate_token("hyk_");
        let yaml = format!(
            r#"node: {{id: {id}, roles: [worker], district: {district}, venue: {venue}, owner: acme, lan_ip: 127.0.0.1}}
server: {{listen: "127.0.0.1:{agent_port}"}}
controller: {{url: ["{url}"], token: "{admin_token}"}}
state_dir: "{state}"
wireguard_optional: true
api_token: "{api_token}"
heartbeat: {{interval: 1}}
sessions:
  max: 2
  port_range_start: {session_port}
  root: "{root}"
  body_port: {body_port}
  ready_timeout: 20
  check_interval: 1
  command: [{program}--bind, "{{bind}}", --port, "{{port}}", --data-dir, "{{data_dir}}"]
"#,
            agent_port = free_port()?,
            session_port = free_port()?,
            state = home.join("state").display(),
            root = home.join("sessions").display(),
        );
        // The config holds the admin token: readable by this user only, and never in argv.
        let config = home.join("agent.yaml");
        write_private(&config, &yaml)?;
        let log = std::fs::File::create(home.join("agent.log"))?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env_remove("HYDRA_TOKEN")
            .env_remove("HYDRA_SERVER")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a demo worker (hydra agent)")?;
        print(&format!(
            "[demo] worker {id} ({district}/{venue}) started, pid {}\n",
            child.id().unwrap_or_default()
        ));
        children.push(child);
    }
    Ok(children)
}

/// Writes a new file readable by this user only (it holds a token).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// SIGTERM to each worker (it ends its sessions), then SIGKILL to the group of any still there
/// after 10 s; reaps them all.
pub(super) async fn stop_workers(workers: &mut [Child]) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    for child in workers.iter() {
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for child in workers.iter_mut() {
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            if let Some(pid) = pid {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait().await;
        }
    }
}
