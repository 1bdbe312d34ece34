//! Stand-in streaming server for the lab: accepts on 47990 and holds connections.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = hydra_lab::standin::ServerArgs::parse();
    match hydra_lab::standin::serve(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hydra-lab-stream-server: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
