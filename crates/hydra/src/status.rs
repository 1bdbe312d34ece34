//! `hydra status`: asks the local agent what it knows (node, roles, servers, last heartbeat,
//! sessions) and prints it. Session details need a token (`--token` or `HYDRA_TOKEN`: the
//! agent's `api_token`); without one the agent answers counts only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hydra_agent::config::AgentConfig;
use hydra_api::agent::AgentStatus;
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
            return Err(anyhow::Error::new(error).context(format!(
                "no agent answers at {base} (--agent): is hydra agent running?"
            )));
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
        return Ok(ExitCode::SUCCESS);
    }
    print(&render(&status));
    Ok(ExitCode::SUCCESS)
}

/// The status as people read it.
fn render(status: &AgentStatus) -> String {
    let active = status.active_sessions;
    let mut text = key_values(&[
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
    ]);
    let Some(sessions) = &status.sessions else {
        text.push_str("(session details need the agent's token: --token or HYDRA_TOKEN)\n");
        return text;
    };
    if !sessions.is_empty() {
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
        text.push('\n');
        text.push_str(&table.render());
    }
    text
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
