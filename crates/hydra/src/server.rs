//! `hydra server` (being built).

use std::process::ExitCode;

/// Options of `hydra server`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the server until interrupted.
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the server is being built")
}
