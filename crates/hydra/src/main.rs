//! `hydra`: one binary for the control plane, the node agent, heads and operators.
//!
//! Thin: parse the command line, set up logging, call into the library crates.

mod bench;
mod bodies;
mod captures;
mod client_args;
mod cluster;
mod config;
mod demo;
mod drain;
mod head;
mod node_config;
mod nodes;
mod output;
mod replicas;
mod server;
mod sessions;
mod status;
mod workers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Hydra: a control plane for a fleet of streaming hosts.
///
/// A head (kiosk screen) gets the best body (GPU host) it can reach; browsers stream through
/// relay workers; the fleet keeps working when hosts, links or the control plane fail.
#[derive(Debug, Parser)]
#[command(name = "hydra", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane server (registry, body selection, API).
    Server(server::Args),
    /// Enrol, inspect, move, drain and remove nodes.
    #[command(subcommand)]
    Nodes(nodes::Command),
    /// Ask which bodies a head may use.
    #[command(subcommand)]
    Bodies(bodies::Command),
    /// List the control plane's replicas: id, URL, which one is master, which are healthy.
    Replicas(replicas::Args),
    /// List (filtered, paged), show, create and end relay sessions.
    #[command(subcommand)]
    Sessions(sessions::Command),
    /// List the relay workers: health, load, drained or draining with the sessions left.
    #[command(subcommand)]
    Workers(workers::Command),
    /// Capture nodes' monitor feeds: start (one node or fan-out), list, show, tail, download,
    /// stop.
    #[command(subcommand)]
    Captures(captures::Command),
    /// Run a head: discover a reachable body and stream from it.
    #[command(subcommand)]
    Head(head::Command),
    /// Run the node agent (enrolment, heartbeats, local API, worker sessions and proxy).
    Agent(hydra_agent::cli::Args),
    /// Show what the local agent knows: node, roles, server, last heartbeat, sessions.
    Status(status::Args),
    /// The peer mesh as the local agent sees it.
    #[command(subcommand)]
    Cluster(cluster::Command),
    /// Measure the server (load generators; never part of the tests).
    #[command(subcommand)]
    Bench(bench::Command),
    /// Try Hydra: a server on SQLite in a temp dir, a simulated fleet and chaos; prints the
    /// dashboard URL and the admin token; Ctrl-C stops it all and removes the temp dir.
    Demo(demo::DemoArgs),
    /// The demo's stand-in session process (what `hydra demo`'s workers run per session).
    #[command(hide = true)]
    DemoSession {
        /// `--bind IP --port N --data-dir DIR [--record-env FILE]`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hydra_agent::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Nodes(command) => nodes::run(command).await,
            Command::Bodies(command) => bodies::run(command).await,
            Command::Replicas(args) => replicas::run(args).await,
            Command::Sessions(command) => sessions::run(command).await,
            Command::Workers(command) => workers::run(command).await,
            Command::Captures(command) => captures::run(command).await,
            Command::Head(command) => head::run(command).await,
            Command::Agent(args) => hydra_agent::cli::run(args)
                .await
                .map_err(anyhow::Error::msg),
            Command::Status(args) => status::run(args).await,
            Command::Cluster(command) => cluster::run(command).await,
            Command::Bench(command) => bench::run(command).await,
            Command::Demo(args) => demo::run(args).await,
            Command::DemoSession { args } => Ok(hydra_agent::standin::run(args.into_iter()).await),
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every option says what it does in `--help`.
    #[test]
    fn every_command_and_option_has_help() {
        let root = super::Cli::command();
        root.clone().debug_assert();
        let mut missing = Vec::new();
        let mut stack = vec![(String::from("hydra"), root)];
        while let Some((path, command)) = stack.pop() {
            if command.get_about().is_none()
                && path != "hydra help"
                && !path.starts_with("hydra help ")
            {
                missing.push(format!("{path}: no about"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !matches!(id, "help" | "version") {
                    missing.push(format!("{path} --{id}: no help"));
                }
            }
            for sub in command.get_subcommands() {
                stack.push((format!("{path} {}", sub.get_name()), sub.clone()));
            }
        }
        assert!(
            missing.is_empty(),
            "commands or options without help:\n{}",
            missing.join("\n")
        );
    }
}
