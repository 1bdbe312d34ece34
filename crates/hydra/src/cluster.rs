//! `hydra cluster members`: asks the local agent how it sees the peer mesh (members, state,
//! incarnation, load, last change, key ids) and prints it. Members need the agent's token
//! (`--token` or `HYDRA_TOKEN`); without one the agent answers counts only.

use std::process::ExitCode;
use std::time::Duration;

use hydra_api::cluster::ClusterStatus;
use hydra_client::AgentClient;

use crate::output::{Table, key_values, or_dash, print, print_json};

/// `hydra cluster ...`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the mesh's members as the local agent sees them.
    Members(crate::status::Args),
}

/// Runs a `hydra cluster` command.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Members(args) = command;
    let base = crate::status::agent_base(&args)?;
    let agent = AgentClient::new(&base, args.token.as_deref()).with_timeout(Duration::from_secs(5));
    let status = agent
        .cluster()
        .await
        .map_err(|error| anyhow::anyhow!("cannot ask the agent at {base} (--agent): {error}"))?;
    if args.json {
        print_json(&status)?;
    } else {
        print(&render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// The mesh as people read it.
fn render(status: &ClusterStatus) -> String {
    if !status.enabled {
        return "the mesh is off on this agent (cluster.enabled: false)\n".to_owned();
    }
    let counts: Vec<String> = status
        .members_by_state
        .iter()
        .map(|(state, count)| format!("{count} {state}"))
        .collect();
    let dropped: Vec<String> = status
        .dropped
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    let mut text = key_values(&[
        ("node", or_dash(status.node_id.as_ref())),
        ("address", or_dash(status.addr.as_ref())),
        ("generation", or_dash(status.generation)),
        ("keys", status.key_ids.join(", ")),
        ("members", counts.join(", ")),
        (
            "dropped",
            if dropped.is_empty() {
                "0".to_owned()
            } else {
                dropped.join(", ")
            },
        ),
    ]);
    let Some(members) = &status.members else {
        text.push_str("(the member list needs the agent's token: --token or HYDRA_TOKEN)\n");
        return text;
    };
    let mut table = Table::new(&[
        "NODE",
        "ADDRESS",
        "STATE",
        "INCARNATION",
        "LOAD",
        "DISTRICT/VENUE",
        "ROLES",
        "LAST CHANGE",
    ]);
    for member in members {
        let load = match (member.pending, member.capacity) {
            (Some(pending), Some(capacity)) => format!("{pending}/{capacity}"),
            _ => "-".to_owned(),
        };
        let place = match (&member.district, &member.venue) {
            (Some(district), Some(venue)) => format!("{district}/{venue}"),
            _ => "-".to_owned(),
        };
        table.row(vec![
            member.node_id.clone(),
            member.addr.clone(),
            member.state.clone(),
            member.incarnation.to_string(),
            load,
            place,
            member.roles.join(","),
            or_dash(member.last_change.as_ref()),
        ]);
    }
    text.push('\n');
    text.push_str(&table.render());
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use expect_test::expect;
    use hydra_api::cluster::ClusterMember;

    use super::*;

    #[test]
    fn renders_counts_keys_and_members() {
        let mut status = ClusterStatus {
            enabled: true,
            node_id: Some("w1".into()),
            addr: Some("10.0.0.1:7946".into()),
            generation: Some(7),
            key_ids: vec!["a1b2c3d4".into()],
            members_by_state: BTreeMap::from([("alive".into(), 1), ("down".into(), 0)]),
            dropped: BTreeMap::from([("unknown_key".into(), 3)]),
            datagrams_sent: 10,
            datagrams_received: 12,
            detector: hydra_api::cluster::DetectorCounts::default(),
            members: None,
        };
        let counts_only = render(&status);
        assert!(
            counts_only.contains("needs the agent's token"),
            "{counts_only}"
        );
        status.members = Some(vec![ClusterMember {
            node_id: "w2".into(),
            addr: "10.0.0.2:7946".into(),
            generation: 9,
            state: "alive".into(),
            incarnation: 2,
            last_change: Some("2026-01-02T03:04:05.000Z".into()),
            roles: vec!["worker".into()],
            api_url: Some("http://10.0.0.2:7071".into()),
            pending: Some(3),
            capacity: Some(15),
            district: Some("d1".into()),
            venue: Some("v1".into()),
            tag: None,
        }]);
        expect![[r#"
            node:        w1
            address:     10.0.0.1:7946
            generation:  7
            keys:        a1b2c3d4
            members:     1 alive, 0 down
            dropped:     3 unknown_key

            NODE  ADDRESS        STATE  INCARNATION  LOAD  DISTRICT/VENUE  ROLES   LAST CHANGE
            w2    10.0.0.2:7946  alive  2            3/15  d1/v1           worker  2026-01-02T03:04:05.000Z
        "#]].assert_eq(&render(&status));
    }
}
