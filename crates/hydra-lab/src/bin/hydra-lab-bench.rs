//! Discovery benchmark in the lab: how long `hydra head discover` takes to settle on the live
//! body when K dead bodies (nftables drops: every probe times out) rank ahead of it, K = 0, 1,
//! 4, 16, with `--probe sequential` (the field's loop), `--probe exact` (the race, waiting for
//! every earlier probe) and `--probe concurrent` (the race with the 250 ms preference delay).
//! Each first discovery starts with a fresh state dir once the server has forgotten what the head
//! reported (the lab's `--unreachable-for 2s`); a second discovery with the concurrent race
//! follows it at once, from the same state dir, so it reports the dead bodies the first one
//! passed over and probes only the live one. Prints a Markdown table of medians and the ratio.
//! Needs root, iproute2 and nftables; builds its lab inside namespaces of its own, like the lab
//! tests.
//!
//! `cargo build -p hydra -p hydra-lab --bins && target/debug/hydra-lab-bench [--reps N]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hydra_lab::{BodySpec, Fleet, FleetSpec, HeadSpec, Lab};

const DEAD_COUNTS: [usize; 4] = [0, 1, 4, 16];
const HEAD: &str = "head";
const SPARE_DISTRICT: &str = "bxl1-test";

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "hydra-lab-bench")]
struct Args {
    /// Runs per (dead bodies, mode) cell; the table shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    reps: u32,
    /// The `hydra` binary [default: next to this one].
    #[arg(long)]
    hydra: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Sequential with 16 dead bodies is ~32 s a run; bound the whole lab generously.
    let limit = Duration::from_secs(120 + 60 * u64::from(args.reps) * 2);
    hydra_lab::isolate::run_isolated_main(limit, move |lab| bench(lab, args))
}

fn fleet_spec() -> FleetSpec {
    let max_dead = DEAD_COUNTS.iter().copied().max().unwrap_or(0);
    let mut bodies: Vec<BodySpec> = (0..max_dead)
        .map(|index| {
            // Idle and bigger: ranked ahead of the live body by quickroute.
            let mut dead = BodySpec::new(&format!("dead-{index:02}"), "rupelmonde");
            dead.vram_mb = 16_384;
            dead
        })
        .collect();
    let mut live = BodySpec::new("live", "rupelmonde");
    live.idle = false;
    bodies.push(live);
    FleetSpec {
        district: "bxl1".into(),
        owner: "acme".into(),
        venues: vec!["rupelmonde".into()],
        bodies,
        heads: vec![HeadSpec {
            id: HEAD.into(),
            venue: "rupelmonde".into(),
        }],
    }
}

async fn bench(lab: Lab, args: Args) -> anyhow::Result<()> {
    let hydra = match args.hydra.clone() {
        Some(path) => path,
        None => hydra_lab::isolate::bin_dir()?.join("hydra"),
    };
    if !hydra.is_file() {
        anyhow::bail!(
            "{} is missing: build it with `cargo build -p hydra`",
            hydra.display()
        );
    }
    let spec = fleet_spec();
    let fleet = Fleet::start(lab, &hydra, &spec).await?;
    let dead: Vec<String> = spec
        .bodies
        .iter()
        .map(|body| body.id.clone())
        .filter(|id| id != "live")
        .collect();
    for id in &dead {
        fleet.block(id, HEAD)?;
    }
    let mut rows = Vec::new();
    for &count in &DEAD_COUNTS {
        // Exactly `count` dead bodies eligible, ahead of the live one; the rest parked.
        for (index, id) in dead.iter().enumerate() {
            if index < count {
                fleet.unpark(id).await?;
            } else {
                fleet.park(id, SPARE_DISTRICT).await?;
            }
        }
        let mut medians = Vec::new();
        let mut seconds = Vec::new();
        for mode in ["sequential", "exact", "concurrent"] {
            let mut samples = Vec::new();
            for rep in 0..args.reps {
                forgotten(&fleet, count).await?;
                let state_dir = fleet
                    .lab()
                    .dir()
                    .join(format!("state-{mode}-{count}-{rep}"));
                samples.push(discover_once(&fleet, mode, count, rep, &state_dir, "first").await?);
                if mode == "concurrent" {
                    seconds
                        .push(discover_once(&fleet, mode, count, rep, &state_dir, "second").await?);
                }
            }
            medians.push(median(&mut samples));
        }
        let second = median(&mut seconds);
        eprintln!(
            "[bench] {count} dead: sequential {} ms, exact {} ms, concurrent {} ms, second {second} ms",
            medians[0], medians[1], medians[2]
        );
        rows.push((count, medians[0], medians[1], medians[2], second));
    }
    println!(
        "| dead bodies ahead | sequential (ms) | exact (ms) | concurrent, prefer 250 ms (ms) | \
         second discovery, concurrent (ms) | sequential / concurrent |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for (count, sequential, exact, concurrent, second) in rows {
        let ratio = sequential as f64 / concurrent.max(1) as f64;
        println!("| {count} | {sequential} | {exact} | {concurrent} | {second} | {ratio:.1}x |");
    }
    println!(
        "\nmedian of {} runs of `hydra head discover` per cell (discovery time reported by the \
         head: request, probes, decision); probe timeout 1 s, stagger 10 ms (exact) and 2 ms \
         (concurrent); the second discovery runs right after a concurrent first one, from its \
         state dir",
        args.reps
    );
    Ok(())
}

fn median(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Waits (bounded) until the server lists the `count` dead bodies ahead of the live one again:
/// what an earlier run reported is forgotten after the lab's 2 s `--unreachable-for`.
async fn forgotten(fleet: &Fleet, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let eligible = fleet.control.eligible(HEAD).await?;
        let order: Vec<&str> = eligible
            .bodies
            .iter()
            .map(|body| body.id.as_str())
            .collect();
        if order.len() == count + 1 && order.last() == Some(&"live") {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("unexpected eligible list for {count} dead bodies: {order:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One `hydra head discover --json` with `state_dir`; answers its `elapsed_ms` after checking it
/// chose `live`.
async fn discover_once(
    fleet: &Fleet,
    mode: &str,
    count: usize,
    rep: u32,
    state_dir: &std::path::Path,
    which: &str,
) -> anyhow::Result<u64> {
    let mut args = vec!["head".to_owned(), "discover".to_owned()];
    args.extend(fleet.head_options(HEAD));
    args.extend([
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--json".into(),
        "--probe".into(),
        mode.into(),
    ]);
    let name = format!("discover-{mode}-{count}-{rep}-{which}");
    let started = Instant::now();
    let mut process = fleet.hydra_on_head(HEAD, &name, &args)?;
    let limit = Duration::from_secs(10 + 3 * count as u64);
    let status = process
        .wait_for_exit(limit)
        .await?
        .with_context(|| format!("{name} still running after {limit:?}"))?;
    if !status.success() {
        anyhow::bail!("{name} failed ({status}): {}", process.stderr_text());
    }
    let found: serde_json::Value = serde_json::from_str(&process.stdout_text())
        .with_context(|| format!("{name} printed no JSON: {}", process.stdout_text()))?;
    if found["body_id"] != "live" {
        anyhow::bail!("{name} chose {} instead of live", found["body_id"]);
    }
    let elapsed = found["elapsed_ms"].as_u64().context("no elapsed_ms")?;
    if which == "second" && found["tried"].as_array().map_or(0, Vec::len) != 1 {
        anyhow::bail!("{name} probed more than the live body: {}", found["tried"]);
    }
    eprintln!(
        "[bench] {name}: {elapsed} ms (process {} ms)",
        started.elapsed().as_millis()
    );
    Ok(elapsed)
}
