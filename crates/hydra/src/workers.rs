//! `hydra workers list`: the relay workers as the server sees them (`GET /api/v1/workers`).

use std::process::ExitCode;

use hydra_api::WorkerView;

use crate::client_args::ClientArgs;
use crate::output::{Table, or_dash, yes_no};

/// Subcommands of `hydra workers`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List every worker: status, health, drained or draining, sessions and load.
    List(ListArgs),
}

/// Options of `hydra workers list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List(args) => {
            let client = args.client.client()?;
            let list = client
                .list_workers()
                .await
                .map_err(|error| args.client.explain(error, "cannot list workers"))?;
            crate::output::listing(args.client.json, &list, |list| workers_table(&list.workers))
        }
    }
}

/// The drain column: `draining` while drained sessions run, else `yes`/`no`.
fn drain_word(worker: &WorkerView) -> String {
    if worker.draining {
        "draining".to_owned()
    } else {
        yes_no(worker.drained)
    }
}

fn workers_table(workers: &[WorkerView]) -> String {
    let mut table = Table::new(&[
        "ID", "DISTRICT", "VENUE", "STATUS", "HEALTHY", "DRAINED", "SESSIONS", "LOAD", "AGENT",
    ]);
    for worker in workers {
        table.row(vec![
            worker.id.clone(),
            worker.district.clone(),
            worker.venue.clone(),
            worker.status.as_str().to_owned(),
            yes_no(worker.healthy),
            drain_word(worker),
            format!("{}/{}", worker.active_sessions, worker.max_sessions),
            format!("{:.2}", worker.load),
            or_dash(worker.agent_url.as_ref()),
        ]);
    }
    let draining = workers.iter().filter(|worker| worker.draining).count();
    format!(
        "{}{} workers, {draining} draining\n",
        table.render(),
        workers.len()
    )
}

#[cfg(test)]
mod tests {
    use hydra_api::NodeStatusWire;

    use super::*;

    fn worker(id: &str, drained: bool, active: u32) -> WorkerView {
        WorkerView {
            id: id.into(),
            name: id.into(),
            district: "bxl1".into(),
            venue: "cloud-seven".into(),
            status: NodeStatusWire::Online,
            healthy: !drained,
            drained,
            active_sessions: active,
            max_sessions: 15,
            load: f64::from(active) / 15.0,
            agent_url: Some(format!("http://10.0.0.1:7071/{id}")),
            last_heartbeat: None,
            draining: drained && active > 0,
            sessions_left: if drained { active } else { 0 },
        }
    }

    #[test]
    fn the_table_marks_draining_workers() {
        let workers = [
            worker("w-1", false, 3),
            worker("w-2", true, 2),
            worker("w-3", true, 0),
        ];
        expect_test::expect![[r#"
            ID   DISTRICT  VENUE        STATUS  HEALTHY  DRAINED   SESSIONS  LOAD  AGENT
            w-1  bxl1      cloud-seven  online  yes      no        3/15      0.20  http://10.0.0.1:7071/w-1
            w-2  bxl1      cloud-seven  online  no       draining  2/15      0.13  http://10.0.0.1:7071/w-2
            w-3  bxl1      cloud-seven  online  no       yes       0/15      0.00  http://10.0.0.1:7071/w-3
            3 workers, 1 draining
        "#]]
        .assert_eq(&workers_table(&workers));
    }
}
