//! `hydra-agent`: the node agent alone, the same flags and config as `hydra agent`
//! ([`hydra_agent::cli`]). For nodes that run nothing else: the binary leaves out the server, the
//! store and the operators' commands, so the agent maps fewer pages of code (its resident memory
//! is measured beside Serf's by `crates/hydra-agent/benches/ride-out.sh`).

use std::process::ExitCode;

use clap::Parser;

/// The Hydra node agent: enrolment, heartbeats, local API, worker sessions and proxy, the health
/// checker and the peer mesh. The same agent as `hydra agent`, in a smaller binary.
#[derive(Debug, Parser)]
#[command(name = "hydra-agent", version)]
struct Cli {
    #[command(flatten)]
    args: hydra_agent::cli::Args,
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
    match runtime.block_on(hydra_agent::cli::run(cli.args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
