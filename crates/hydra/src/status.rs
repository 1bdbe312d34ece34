//! `hydra status`: asks the local agent what it knows (node, roles, servers, last heartbeat,
//! sessions) and prints it. Session details need a token (`--token` or `HYDRA_TOKEN`: the
//! agent's `api_token`); without one the agent answers counts only. The exit code says how the
//! agent is, for scripts: 0 healthy, 1 degraded (no master answers, or the agent's own health
//! is degraded), 2 the agent does not answer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hydra_agent::config::AgentConfig;
use hydra_api::agent::{AgentStatus, ControlPlaneStatus, ReplicaHealth, SessionHealth};
use hydra_client::{AgentClient, ClientError};

use crate::output::{Table, key_values, or_dash, print, print_json, yes_no};

/// Options of `hydra status`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Base URL of the local agent [default: from --config, else http://127.0.0.1:7071].
    #[arg(long, value_name = "URL")]
    pub(crate) agent: Option<String>,
    /// The agent's config file, to find its address.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print the agent's answer as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// The agent's `api_token`, for session details (ids, bodies); read from the environment
    /// rather than argv where others can see it.
    #[arg(
        long,
        env = "HYDRA_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
}

/// The local agent's base URL: `--agent`, else the `server.listen` of `--config`, else the
/// default; shared with `hydra cluster`.
pub(crate) fn agent_base(args: &Args) -> anyhow::Result<String> {
    Ok(match (&args.agent, &args.config) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(path)) => {
            let config = AgentConfig::load(Some(path), serde_json::json!({}))
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            format!("http://{}", config.server.listen)
        }
        (None, None) => "http://127.0.0.1:7071".to_owned(),
    })
}

/// Prints the local agent's status.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let base = agent_base(&args)?;
    let agent = AgentClient::new(&base, args.token.as_deref()).with_timeout(Duration::from_secs(5));
    let status = match agent.status().await {
        Ok(status) => status,
        Err(error @ ClientError::Unreachable { .. }) => {
            eprintln!(
                "error: no agent answers at {base} (--agent): is hydra agent running?: {error}"
            );
            return Ok(ExitCode::from(NO_AGENT));
        }
        Err(error @ ClientError::Decode { .. }) => {
            return Err(anyhow::Error::new(error)
                .context(format!("the agent at {base} sent an unreadable status")));
        }
        Err(error) => match error.status() {
            Some(code) => anyhow::bail!("the agent at {base} answered {code}: {error}"),
            None => anyhow::bail!("cannot ask the agent at {base}: {error}"),
        },
    };
    if args.json {
        print_json(&status)?;
    } else {
        print(&render(&status));
    }
    Ok(ExitCode::from(exit_code(&status)))
}

/// Exit code when the agent does not answer.
const NO_AGENT: u8 = 2;

/// 0 when the agent is healthy, 1 when it is degraded: no master answers it (or it is still
/// catching up with one), or its own health is degraded.
fn exit_code(status: &AgentStatus) -> u8 {
    let control_plane_ok = status
        .control_plane
        .as_ref()
        .is_none_or(|control_plane| control_plane.state == "healthy");
    u8::from(!(control_plane_ok && status.health == "ok"))
}

/// The status as people read it.
fn render(status: &AgentStatus) -> String {
    let active = status.active_sessions;
    let mut pairs = vec![
        ("node", or_dash(status.node_id.as_ref())),
        ("roles", status.roles.join(",")),
        ("servers", status.servers.join(", ")),
        ("master", or_dash(status.master.as_ref())),
        ("last heartbeat", or_dash(status.last_heartbeat.as_ref())),
        (
            "heartbeat error",
            or_dash(status.last_heartbeat_error.as_ref()),
        ),
        ("health", status.health.clone()),
        ("uptime", format!("{} s", status.uptime)),
        ("sessions", format!("{active} of {}", status.max_sessions)),
    ];
    if let Some(control_plane) = &status.control_plane {
        pairs.extend(control_plane_pairs(control_plane));
    }
    let mut text = key_values(&pairs);
    if let Some(control_plane) = &status.control_plane
        && !control_plane.replicas.is_empty()
    {
        text.push('\n');
        text.push_str(&replica_table(&control_plane.replicas));
    }
    let Some(sessions) = &status.sessions else {
        text.push_str("(session details need the agent's token: --token or HYDRA_TOKEN)\n");
        return text;
    };
    if !sessions.is_empty() {
        text.push('\n');
        text.push_str(&session_table(sessions));
    }
    text
}

/// The control plane as the agent sees it: its state, last poll, config and write journal.
fn control_plane_pairs(control_plane: &ControlPlaneStatus) -> [(&'static str, String); 4] {
    let state = match &control_plane.degraded_since {
        Some(since) => format!("{} since {since}", control_plane.state),
        None => control_plane.state.clone(),
    };
    [
        ("control plane", state),
        ("last poll", or_dash(control_plane.last_poll.as_ref())),
        (
            "config",
            format!(
                "version {} from {}",
                control_plane.config_version, control_plane.config_source
            ),
        ),
        (
            "journal",
            format!(
                "{} waiting, {} dropped",
                control_plane.journal_length, control_plane.journal_dropped
            ),
        ),
    ]
}

/// The replicas the agent knows, one row each.
fn replica_table(replicas: &[ReplicaHealth]) -> String {
    let mut table = Table::new(&["REPLICA", "HEALTHY", "MASTER", "TERM"]);
    for replica in replicas {
        table.row(vec![
            replica.url.clone(),
            yes_no(replica.healthy),
            yes_no(replica.is_master),
            replica
                .term
                .map_or_else(|| "-".to_owned(), |term| term.to_string()),
        ]);
    }
    table.render()
}

/// The agent's sessions, one row each.
fn session_table(sessions: &[SessionHealth]) -> String {
    let mut table = Table::new(&[
        "ID",
        "BODY",
        "STATUS",
        "PORT",
        "PROCESS",
        "DATA DIR",
        "CONNECTIONS",
        "AGE",
    ]);
    for session in sessions {
        table.row(vec![
            session.id.clone(),
            session.body_ip.clone(),
            session.status.as_str().to_owned(),
            session.port.to_string(),
            yes_no(session.process_alive),
            yes_no(session.data_directory_ok),
            session.active_connections.to_string(),
            format!("{} s", session.age),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use hydra_api::agent::SessionHealth;

    use super::*;

    #[test]
    fn renders_node_heartbeat_and_sessions() {
        let status = AgentStatus {
            node_id: Some("w1".into()),
            roles: vec!["worker".into()],
            servers: vec!["http://127.0.0.1:7070".into()],
            master: Some("http://127.0.0.1:7070".into()),
            last_heartbeat: Some("2026-01-02T03:04:05.000Z".into()),
            last_heartbeat_error: None,
            uptime: 42,
            health: "ok".into(),
            active_sessions: 1,
            max_sessions: 15,
            control_plane: None,
            sessions: Some(vec![SessionHealth {
                id: "s-1".into(),
                body_ip: "10.0.0.2".into(),
                status: hydra_api::SessionState::Running,
                process_alive: true,
                data_directory_ok: true,
                active_connections: 2,
                age: 9,
                port: 8080,
                error: None,
            }]),
        };
        expect_test::expect![[r#"
            node:             w1
            roles:            worker
            servers:          http://127.0.0.1:7070
            master:           http://127.0.0.1:7070
            last heartbeat:   2026-01-02T03:04:05.000Z
            heartbeat error:  -
            health:           ok
            uptime:           42 s
            sessions:         1 of 15

            ID   BODY      STATUS   PORT  PROCESS  DATA DIR  CONNECTIONS  AGE
            s-1  10.0.0.2  running  8080  yes      yes       2            9 s
        "#]]
        .assert_eq(&render(&status));
    }

    #[test]
    fn renders_the_control_plane_and_the_exit_code_says_degraded() {
        let mut status = AgentStatus {
            node_id: Some("w1".into()),
            roles: vec!["worker".into()],
            servers: vec!["http://127.0.0.1:7070".into()],
            master: None,
            last_heartbeat: None,
            last_heartbeat_error: None,
            uptime: 42,
            health: "ok".into(),
            active_sessions: 0,
            max_sessions: 15,
            sessions: None,
            control_plane: Some(hydra_api::agent::ControlPlaneStatus {
                state: "degraded".into(),
                degraded_since: Some("2026-01-02T03:04:05.000Z".into()),
                replicas: vec![hydra_api::agent::ReplicaHealth {
                    url: "http://127.0.0.1:7070".into(),
                    healthy: false,
                    is_master: false,
                    term: None,
                }],
                last_poll: None,
                config_version: 3,
                config_source: "kept_copy".into(),
                journal_length: 4,
                journal_dropped: 1,
            }),
        };
        expect_test::expect![[r#"
            node:             w1
            roles:            worker
            servers:          http://127.0.0.1:7070
            master:           -
            last heartbeat:   -
            heartbeat error:  -
            health:           ok
            uptime:           42 s
            sessions:         0 of 15
            control plane:    degraded since 2026-01-02T03:04:05.000Z
            last poll:        -
            config:           version 3 from kept_copy
            journal:          4 waiting, 1 dropped

            REPLICA                HEALTHY  MASTER  TERM
            http://127.0.0.1:7070  no       no      -
            (session details need the agent's token: --token or HYDRA_TOKEN)
        "#]]
        .assert_eq(&render(&status));
        // (control plane state, agent health) -> exit code
        let mut codes = Vec::new();
        for (state, health) in [
            ("healthy", "ok"),
            ("degraded", "ok"),
            ("recovering", "ok"),
            ("healthy", "degraded"),
        ] {
            status.control_plane.as_mut().unwrap().state = state.into();
            status.health = health.into();
            codes.push(format!("{state}/{health}={}", exit_code(&status)));
        }
        status.control_plane = None;
        status.health = "ok".into();
        codes.push(format!("none/ok={}", exit_code(&status)));
        expect_test::expect![
            "healthy/ok=0 degraded/ok=1 recovering/ok=1 healthy/degraded=1 none/ok=0"
        ]
        .assert_eq(&codes.join(" "));
    }

    #[test]
    fn without_a_token_renders_counts_and_says_how_to_see_more() {
        let status = AgentStatus {
            node_id: Some("w1".into()),
            roles: vec!["worker".into()],
            servers: vec!["http://127.0.0.1:7070".into()],
            master: None,
            last_heartbeat: None,
            last_heartbeat_error: None,
            uptime: 42,
            health: "ok".into(),
            active_sessions: 3,
            max_sessions: 15,
            sessions: None,
            control_plane: None,
        };
        expect_test::expect![[r#"
            node:             w1
            roles:            worker
            servers:          http://127.0.0.1:7070
            master:           -
            last heartbeat:   -
            heartbeat error:  -
            health:           ok
            uptime:           42 s
            sessions:         3 of 15
            (session details need the agent's token: --token or HYDRA_TOKEN)
        "#]]
        .assert_eq(&render(&status));
    }
}
