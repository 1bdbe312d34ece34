//! `hydra bench` (being built).

use std::process::ExitCode;

/// Subcommands of `hydra bench`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {}
}
