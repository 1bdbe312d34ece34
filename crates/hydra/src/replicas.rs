//! `hydra replicas`: the control plane's replicas as the server sees them: id, advertised URL,
//! which one is master, which are healthy.

use std::process::ExitCode;

use crate::client_args::ClientArgs;
use crate::output::{Table, print, print_json, yes_no};

/// Options of `hydra replicas`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,
}

/// Prints the replicas, one row each.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let replicas = client
        .list_replicas()
        .await
        .map_err(|error| args.client.explain(error, "cannot list the replicas"))?;
    if args.client.json {
        print_json(&replicas)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["ID", "BASE_URL", "MASTER", "HEALTHY"]);
    for replica in &replicas {
        table.row(vec![
            replica.id.clone(),
            replica.base_url.clone(),
            yes_no(replica.is_master),
            yes_no(replica.is_healthy),
        ]);
    }
    print(&table.render());
    Ok(ExitCode::SUCCESS)
}
