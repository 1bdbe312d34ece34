//! `hydra bench`: load generators that measure a running server (numbers for the README, never
//! part of the tests).
//!
//! They enrol a synthetic fleet under a fresh `bench-<tag>-` prefix, drive it for a bounded time
//! with a bounded number of requests in flight, report throughput and latency percentiles
//! (hdrhistogram), and remove what they enrolled. They talk only to the `--server` given, which
//! must be on loopback unless `--allow-non-loopback` says otherwise: point them at a server of
//! your own, never at a fleet's control plane.
//!
//! Modules: `fleet` lays out, enrols, heartbeats and removes the synthetic fleet; `harness`
//! drives a route under bounded load and keeps its latencies; `figures` turns a phase into the
//! printed figures; `eligible` and `heartbeats` are the two benchmarks. `captures` (issue 12)
//! feeds stand-in monitor feeds into one fan-out capture beside a plain-file baseline.

mod captures;
mod eligible;
mod figures;
mod fleet;
mod harness;
mod heartbeats;

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hydra_client::Client;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::client_args::{ClientArgs, parse_duration};
use fleet::{FleetPlan, plan_fleet};

/// Longest measured phase.
const MAX_DURATION: Duration = Duration::from_secs(600);

/// Subcommands of `hydra bench`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Enrol N bodies (about 10 per venue, 8 venues per district) and one head per venue,
    /// heartbeat the bodies, then measure `GET /api/v1/bodies/eligible?head_id=` for random
    /// heads and, in the same run, `GET /api/v1/health` as the server's own ceiling: requests
    /// per second, p50/p99 latency and the ratio of the two throughputs.
    Eligible(LoadArgs),
    /// Enrol N bodies, then have them heartbeat (each with its own token) as fast as the
    /// concurrency allows: heartbeats per second and p50/p99 latency.
    Heartbeats(LoadArgs),
    /// Start N stand-in monitor feeds each emitting R lines/s for D seconds, capture them into
    /// one fan-out capture (run it against a fresh server), and measure lines stored per
    /// second, lines lost (by sequence), tail latency, and a plain-file baseline of the same
    /// lines.
    Captures(captures::CaptureArgs),
}

/// Options of every load generator.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Bodies to enrol.
    #[arg(long, value_name = "N", default_value_t = 1_000,
        value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub(super) nodes: u32,
    /// Requests in flight at once (also used to enrol and clean up).
    #[arg(long, value_name = "C", default_value_t = 32,
        value_parser = clap::value_parser!(u32).range(1..=1_024))]
    pub(super) concurrency: u32,
    /// How long each measured phase runs, e.g. `10` (seconds) or `30s`; at most 10 minutes.
    #[arg(long, value_name = "S", default_value = "10s", value_parser = parse_duration)]
    pub(super) duration: Duration,
    /// Leave the enrolled nodes in the registry instead of removing them at the end.
    #[arg(long)]
    pub(super) keep: bool,
    /// Seed of the random heads and of the fleet's idle flags and VRAM.
    #[arg(long, value_name = "SEED", default_value_t = 7)]
    pub(super) seed: u64,
    /// Accept a server that is not on loopback (the bench generates heavy load: use a server
    /// of your own).
    #[arg(long)]
    pub(super) allow_non_loopback: bool,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Eligible(args) => eligible::bench_eligible(args).await,
        Command::Heartbeats(args) => heartbeats::bench_heartbeats(args).await,
        Command::Captures(args) => captures::bench_captures(args).await,
    }
}

/// Refuses a server that is not on loopback unless allowed.
fn check_loopback(servers: &[String], allow_non_loopback: bool) -> anyhow::Result<()> {
    if allow_non_loopback {
        return Ok(());
    }
    for server in servers {
        let url = reqwest::Url::parse(server).with_context(|| format!("--server {server}"))?;
        let host = url.host_str().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare == "localhost"
            || bare
                .parse::<IpAddr>()
                .is_ok_and(|address| address.is_loopback());
        if !loopback {
            anyhow::bail!(
                "--server {server} is not on loopback; the bench generates heavy load, so run it \
                 against a server of your own on 127.0.0.1 (or pass --allow-non-loopback)"
            );
        }
    }
    Ok(())
}

/// Checks the arguments and connects: the client (no retries: failures are counted) and the
/// server's storage engine.
async fn prepare(args: &LoadArgs) -> anyhow::Result<(Client, String, FleetPlan, String)> {
    check_loopback(&args.client.servers, args.allow_non_loopback)?;
    if args.duration > MAX_DURATION {
        anyhow::bail!("--duration is at most {} s", MAX_DURATION.as_secs());
    }
    let client = args.client.client()?;
    let storage = client
        .health()
        .await
        .map_err(|error| args.client.explain(error, "cannot reach the server"))?
        .storage;
    let tag = format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let plan = plan_fleet(usize::try_from(args.nodes)?, &tag, &mut rng);
    Ok((client, storage, plan, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_servers_unless_allowed() {
        let servers = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(
            check_loopback(
                &servers(&["http://127.0.0.1:7070", "http://[::1]:7070"]),
                false
            )
            .is_ok()
        );
        assert!(check_loopback(&servers(&["http://localhost:7070"]), false).is_ok());
        let refused = check_loopback(&servers(&["http://10.0.0.5:7070"]), false).unwrap_err();
        assert!(
            refused.to_string().contains("--allow-non-loopback"),
            "{refused}"
        );
        assert!(check_loopback(&servers(&["http://10.0.0.5:7070"]), true).is_ok());
    }
}
