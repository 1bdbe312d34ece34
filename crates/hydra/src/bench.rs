//! `hydra bench`: load generators that measure a running server (numbers for the README, never
//! part of the tests).
//!
//! They enrol a synthetic fleet under a fresh `bench-<tag>-` prefix, drive it for a bounded time
//! with a bounded number of requests in flight, report throughput and latency percentiles
//! (hdrhistogram), and remove what they enrolled. They talk only to the `--server` given, which
//! must be on loopback unless `--allow-non-loopback` says otherwise: point them at a server of
//! your own, never at a fleet's control plane.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use hydra_api::{CostTierWire, EnrolRequest, HeartbeatRequest, RoleWire};
use hydra_client::{Client, ClientError, EligibleQuery, RetryPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use crate::client_args::{ClientArgs, parse_duration};
use crate::output::{Table, print, print_json};

/// Bodies per venue in the synthetic fleet: eligible answers stay small, as in the field.
const BODIES_PER_VENUE: usize = 10;
/// Venues per district.
const VENUES_PER_DISTRICT: usize = 8;
/// Organisations per district.
const OWNERS_PER_DISTRICT: usize = 4;
/// Longest measured phase.
const MAX_DURATION: Duration = Duration::from_secs(600);
/// Requests one worker sends in a phase at most, whatever the duration.
const MAX_REQUESTS_PER_WORKER: u64 = 5_000_000;
/// Latencies above this (in µs) are recorded as this.
const HISTOGRAM_MAX_MICROS: u64 = 120_000_000;

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
}

/// Options of every load generator.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Bodies to enrol.
    #[arg(long, value_name = "N", default_value_t = 1_000,
        value_parser = clap::value_parser!(u32).range(1..=200_000))]
    nodes: u32,
    /// Requests in flight at once (also used to enrol and clean up).
    #[arg(long, value_name = "C", default_value_t = 32,
        value_parser = clap::value_parser!(u32).range(1..=1_024))]
    concurrency: u32,
    /// How long each measured phase runs, e.g. `10` (seconds) or `30s`; at most 10 minutes.
    #[arg(long, value_name = "S", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Leave the enrolled nodes in the registry instead of removing them at the end.
    #[arg(long)]
    keep: bool,
    /// Seed of the random heads and of the fleet's idle flags and VRAM.
    #[arg(long, value_name = "SEED", default_value_t = 7)]
    seed: u64,
    /// Accept a server that is not on loopback (the bench generates heavy load: use a server
    /// of your own).
    #[arg(long)]
    allow_non_loopback: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Eligible(args) => bench_eligible(args).await,
        Command::Heartbeats(args) => bench_heartbeats(args).await,
    }
}

/// The synthetic fleet: enrolment requests, in order.
#[derive(Debug)]
struct FleetPlan {
    bodies: Vec<EnrolRequest>,
    heads: Vec<EnrolRequest>,
    /// Indexes of bodies that never heartbeat (they stay offline).
    silent_bodies: usize,
    venues: usize,
    districts: usize,
}

/// Lays out `body_count` bodies: 10 per venue, 8 venues per district, 4 organisations per
/// district. In a venue 8 bodies belong to the venue's organisation, 2 to a neighbour (one of
/// them shared with a third via `allowed_orgs`); one body in 10 stays offline. One head per
/// venue: three in four belong to the venue's organisation (quickroute), the fourth to an
/// organisation without a body there (cross-venue).
fn plan_fleet(body_count: usize, tag: &str, rng: &mut StdRng) -> FleetPlan {
    let venues = body_count.div_ceil(BODIES_PER_VENUE);
    let districts = venues.div_ceil(VENUES_PER_DISTRICT);
    let org =
        |district: usize, slot: usize| format!("org{district}-{}", slot % OWNERS_PER_DISTRICT);
    let district_name = |district: usize| format!("bench-{tag}-d{district:03}");
    let venue_name = |venue: usize| format!("v{}", venue % VENUES_PER_DISTRICT);
    let mut bodies = Vec::with_capacity(body_count);
    for index in 0..body_count {
        let venue = index / BODIES_PER_VENUE;
        let district = venue / VENUES_PER_DISTRICT;
        let slot = venue % VENUES_PER_DISTRICT;
        let position = index % BODIES_PER_VENUE;
        let (owner, allowed_orgs, cost_tier) = match position {
            0..=7 => (org(district, slot), vec![], CostTierWire::Owned),
            8 => (org(district, slot + 1), vec![], CostTierWire::Shared),
            _ => (
                org(district, slot + 1),
                vec![org(district, slot + 2)],
                CostTierWire::Leased,
            ),
        };
        let number = u32::try_from(index).unwrap_or(u32::MAX);
        let [_, high, middle, low] = number.to_be_bytes();
        bodies.push(EnrolRequest {
            id: Some(format!("bench-{tag}-b{index:06}")),
            name: None,
            roles: vec![RoleWire::Body],
            district: district_name(district),
            venue: venue_name(venue),
            owner,
            allowed_orgs,
            lan_ip: Some(IpAddr::V4(Ipv4Addr::new(10, high, middle, low))),
            wg_ip: Some(IpAddr::V4(Ipv4Addr::new(100, 64 + high, middle, low))),
            vram_mb: Some([8_192, 12_288, 16_384, 24_576, 49_152][rng.random_range(0..5)]),
            cost_tier,
        });
    }
    let heads = (0..venues)
        .map(|venue| {
            let district = venue / VENUES_PER_DISTRICT;
            let slot = venue % VENUES_PER_DISTRICT;
            let owner = if venue % 4 == 3 {
                org(district, slot + 3)
            } else {
                org(district, slot)
            };
            EnrolRequest {
                id: Some(format!("bench-{tag}-h{venue:05}")),
                roles: vec![RoleWire::Head],
                district: district_name(district),
                venue: venue_name(venue),
                owner,
                ..EnrolRequest::default()
            }
        })
        .collect();
    FleetPlan {
        silent_bodies: body_count / BODIES_PER_VENUE,
        bodies,
        heads,
        venues,
        districts,
    }
}

/// Whether body `index` of the plan heartbeats (position 7 of each venue stays offline).
fn heartbeats(index: usize) -> bool {
    index % BODIES_PER_VENUE != 7
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

/// Runs `task` over `items` with at most `concurrency` in flight; results in completion order.
async fn bounded<Item, Output, Task, Fut>(
    items: Vec<Item>,
    concurrency: u32,
    task: Task,
) -> Vec<Output>
where
    Task: Fn(Item) -> Fut,
    Fut: Future<Output = Output>,
{
    let limit = usize::try_from(concurrency).unwrap_or(1).max(1);
    futures::stream::iter(items.into_iter().map(task))
        .buffer_unordered(limit)
        .collect()
        .await
}

/// A fleet enrolled on the server, with every node's token.
struct EnrolledFleet {
    bodies: Vec<(String, String)>,
    heads: Vec<String>,
}

impl EnrolledFleet {
    fn all_ids(&self) -> Vec<String> {
        self.bodies
            .iter()
            .map(|(id, _)| id.clone())
            .chain(self.heads.iter().cloned())
            .collect()
    }
}

/// Enrols every body and head of the plan; on failure, removes what it enrolled.
async fn enrol_fleet(
    client: &Client,
    plan: &FleetPlan,
    concurrency: u32,
) -> anyhow::Result<EnrolledFleet> {
    let requests: Vec<EnrolRequest> = plan.bodies.iter().chain(&plan.heads).cloned().collect();
    let total = requests.len();
    let started = Instant::now();
    let outcomes = bounded(requests, concurrency, |request| {
        let client = client.clone();
        async move { client.enrol(&request).await }
    })
    .await;
    let mut fleet = EnrolledFleet {
        bodies: Vec::new(),
        heads: Vec::new(),
    };
    let mut first_error: Option<ClientError> = None;
    for outcome in outcomes {
        match outcome {
            Ok(enrolled) if enrolled.node.roles.contains(&RoleWire::Head) => {
                fleet.heads.push(enrolled.node.id)
            }
            Ok(enrolled) => fleet.bodies.push((enrolled.node.id, enrolled.token)),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        remove_fleet(client, fleet.all_ids(), concurrency).await;
        return Err(anyhow::anyhow!("cannot enrol the bench fleet: {error}"));
    }
    fleet.bodies.sort();
    fleet.heads.sort();
    tracing::info!(
        nodes = total,
        seconds = started.elapsed().as_secs_f64(),
        "[bench] fleet enrolled"
    );
    Ok(fleet)
}

/// What a simulated body reports: idle, or streaming one session.
fn load_report(idle: bool) -> HeartbeatRequest {
    HeartbeatRequest {
        idle,
        active_sessions: u32::from(!idle),
        vram_mb: None,
    }
}

/// Heartbeats every body that should be online, each with its own token.
async fn heartbeat_fleet(
    client: &Client,
    fleet: &EnrolledFleet,
    concurrency: u32,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let beats: Vec<(String, String, bool)> = fleet
        .bodies
        .iter()
        .enumerate()
        .filter(|(index, _)| heartbeats(*index))
        .map(|(_, (id, token))| (id.clone(), token.clone(), rng.random_bool(0.7)))
        .collect();
    let outcomes = bounded(beats, concurrency, |(id, token, idle)| {
        let node = client.with_token(token);
        async move { node.heartbeat(&id, &load_report(idle)).await }
    })
    .await;
    if let Some(Err(error)) = outcomes.into_iter().find(Result::is_err) {
        anyhow::bail!("cannot heartbeat the bench fleet: {error}");
    }
    Ok(())
}

/// Removes the bench's nodes (best effort, logged).
async fn remove_fleet(client: &Client, ids: Vec<String>, concurrency: u32) {
    let total = ids.len();
    let outcomes = bounded(ids, concurrency, |id| {
        let client = client.clone();
        async move { client.remove_node(&id).await }
    })
    .await;
    let failed = outcomes.iter().filter(|outcome| outcome.is_err()).count();
    if failed > 0 {
        tracing::warn!(
            failed,
            total,
            "[bench] some bench nodes could not be removed"
        );
    } else {
        tracing::info!(total, "[bench] bench nodes removed");
    }
}

/// One measured phase: latencies of successful requests, errors, and a tally of answer tags.
struct Phase {
    histogram: Histogram<u64>,
    errors: u64,
    seconds: f64,
    /// CPU seconds the bench process itself used during the phase (it shares the machine with
    /// the server on loopback), when `/proc/self/stat` says.
    client_cpu_seconds: Option<f64>,
    tags: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Phase {
    fn empty() -> Phase {
        Phase {
            histogram: Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 3)
                .expect("static histogram bounds"),
            errors: 0,
            seconds: 0.0,
            client_cpu_seconds: Some(0.0),
            tags: BTreeMap::new(),
            first_error: None,
        }
    }

    /// Adds another phase's (or slice's) figures to this one.
    fn absorb(&mut self, other: Phase) -> anyhow::Result<()> {
        self.histogram.add(&other.histogram)?;
        self.errors += other.errors;
        self.seconds += other.seconds;
        self.client_cpu_seconds = self
            .client_cpu_seconds
            .zip(other.client_cpu_seconds)
            .map(|(mine, theirs)| mine + theirs);
        for (tag, count) in other.tags {
            *self.tags.entry(tag).or_default() += count;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// Slices per route in an interleaved measurement.
const SLICES: u32 = 10;

/// Measures two routes for `duration` each, in alternating slices (10 of each), so that both
/// see the same background load on a shared machine.
async fn measure_interleaved<First, FirstFut, Second, SecondFut>(
    concurrency: u32,
    duration: Duration,
    seed: u64,
    first: First,
    second: Second,
) -> anyhow::Result<(Phase, Phase)>
where
    First: Fn(&mut StdRng) -> FirstFut + Send + Sync + 'static,
    FirstFut: Future<Output = Result<Option<String>, ClientError>> + Send,
    Second: Fn(&mut StdRng) -> SecondFut + Send + Sync + 'static,
    SecondFut: Future<Output = Result<Option<String>, ClientError>> + Send,
{
    let first = Arc::new(first);
    let second = Arc::new(second);
    let slice = duration / SLICES;
    let mut first_total = Phase::empty();
    let mut second_total = Phase::empty();
    for round in 0..SLICES {
        let round_seed = seed.wrapping_add(u64::from(round));
        first_total.absorb(measure(concurrency, slice, round_seed, first.clone()).await?)?;
        second_total.absorb(measure(concurrency, slice, round_seed, second.clone()).await?)?;
    }
    Ok((first_total, second_total))
}

/// Runs `request` from `concurrency` workers until `duration` has passed.
async fn measure<Request, Fut>(
    concurrency: u32,
    duration: Duration,
    seed: u64,
    request: Arc<Request>,
) -> anyhow::Result<Phase>
where
    Request: Fn(&mut StdRng) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<String>, ClientError>> + Send,
{
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let request = request.clone();
        workers.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ u64::from(worker).wrapping_mul(0x9e37_79b9));
            let mut phase = Phase {
                histogram: Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 3)
                    .expect("static histogram bounds"),
                errors: 0,
                seconds: 0.0,
                client_cpu_seconds: None,
                tags: BTreeMap::new(),
                first_error: None,
            };
            for _ in 0..MAX_REQUESTS_PER_WORKER {
                if Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                let outcome = request(&mut rng).await;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                match outcome {
                    Ok(tag) => {
                        phase
                            .histogram
                            .saturating_record(micros.clamp(1, HISTOGRAM_MAX_MICROS));
                        if let Some(tag) = tag {
                            *phase.tags.entry(tag).or_default() += 1;
                        }
                    }
                    Err(error) => {
                        phase.errors += 1;
                        phase.first_error.get_or_insert_with(|| error.to_string());
                    }
                }
            }
            phase
        });
    }
    let mut total = Phase {
        histogram: Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 3)?,
        errors: 0,
        seconds: 0.0,
        client_cpu_seconds: None,
        tags: BTreeMap::new(),
        first_error: None,
    };
    while let Some(joined) = workers.join_next().await {
        let phase = joined.context("a bench worker panicked")?;
        total.histogram.add(&phase.histogram)?;
        total.errors += phase.errors;
        for (tag, count) in phase.tags {
            *total.tags.entry(tag).or_default() += count;
        }
        if total.first_error.is_none() {
            total.first_error = phase.first_error;
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.client_cpu_seconds = cpu_before
        .zip(own_cpu_seconds())
        .map(|(before, after)| after - before);
    Ok(total)
}

/// User + system CPU seconds of this process so far, from `/proc/self/stat` (Linux; its clock
/// ticks are `USER_HZ`, 100 per second).
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

/// The figures of one route, as printed and as JSON.
#[derive(Debug, Clone, Serialize)]
struct RouteFigures {
    route: String,
    requests: u64,
    errors: u64,
    seconds: f64,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// CPU µs the bench itself spent per successful request (load generator overhead).
    client_cpu_us_per_request: Option<f64>,
}

impl RouteFigures {
    fn from_phase(route: &str, phase: &Phase) -> RouteFigures {
        let millis = |micros: u64| micros as f64 / 1_000.0;
        let requests = phase.histogram.len();
        RouteFigures {
            route: route.to_owned(),
            requests,
            errors: phase.errors,
            seconds: phase.seconds,
            requests_per_second: if phase.seconds > 0.0 {
                requests as f64 / phase.seconds
            } else {
                0.0
            },
            p50_ms: millis(phase.histogram.value_at_quantile(0.50)),
            p99_ms: millis(phase.histogram.value_at_quantile(0.99)),
            max_ms: millis(phase.histogram.max()),
            client_cpu_us_per_request: phase
                .client_cpu_seconds
                .filter(|_| requests > 0)
                .map(|seconds| seconds * 1e6 / requests as f64),
        }
    }
}

fn figures_table(rows: &[&RouteFigures]) -> String {
    let mut table = Table::new(&[
        "ROUTE",
        "REQUESTS",
        "ERRORS",
        "REQ/S",
        "P50_MS",
        "P99_MS",
        "MAX_MS",
        "BENCH_CPU_US/REQ",
    ]);
    for figures in rows {
        table.row(vec![
            figures.route.clone(),
            figures.requests.to_string(),
            figures.errors.to_string(),
            format!("{:.0}", figures.requests_per_second),
            format!("{:.2}", figures.p50_ms),
            format!("{:.2}", figures.p99_ms),
            format!("{:.2}", figures.max_ms),
            figures
                .client_cpu_us_per_request
                .map_or_else(|| "-".to_owned(), |micros| format!("{micros:.0}")),
        ]);
    }
    table.render()
}

fn warn_errors(route: &str, phase: &Phase) {
    if let Some(first_error) = &phase.first_error {
        tracing::warn!(route, errors = phase.errors, %first_error, "[bench] requests failed");
    }
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

/// The result of `hydra bench eligible`.
#[derive(Debug, Serialize)]
struct EligibleReport {
    storage: String,
    bodies: usize,
    offline_bodies: usize,
    heads: usize,
    venues: usize,
    districts: usize,
    concurrency: u32,
    enrol_seconds: f64,
    eligible: RouteFigures,
    health: RouteFigures,
    /// Eligible requests per second over health requests per second.
    throughput_ratio: f64,
    /// Answers by policy (`quickroute`, `cross_venue`, `none`).
    policies: BTreeMap<String, u64>,
}

async fn bench_eligible(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let (client, storage, plan, tag) = prepare(&args).await?;
    tracing::info!(%tag, bodies = plan.bodies.len(), heads = plan.heads.len(), "[bench] enrolling the fleet");
    let enrol_started = Instant::now();
    let fleet = enrol_fleet(&client, &plan, args.concurrency).await?;
    let enrol_seconds = enrol_started.elapsed().as_secs_f64();
    let outcome = measure_eligible(&client, &fleet, &args).await;
    if !args.keep {
        remove_fleet(&client, fleet.all_ids(), args.concurrency).await;
    }
    let (eligible, health, policies) = outcome?;
    let report = EligibleReport {
        storage,
        bodies: plan.bodies.len(),
        offline_bodies: plan.silent_bodies,
        heads: plan.heads.len(),
        venues: plan.venues,
        districts: plan.districts,
        concurrency: args.concurrency,
        enrol_seconds,
        throughput_ratio: if health.requests_per_second > 0.0 {
            eligible.requests_per_second / health.requests_per_second
        } else {
            0.0
        },
        eligible,
        health,
        policies,
    };
    if args.client.json {
        print_json(&report)?;
    } else {
        print(&eligible_report_text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

type EligibleFigures = (RouteFigures, RouteFigures, BTreeMap<String, u64>);

async fn measure_eligible(
    client: &Client,
    fleet: &EnrolledFleet,
    args: &LoadArgs,
) -> anyhow::Result<EligibleFigures> {
    heartbeat_fleet(client, fleet, args.concurrency, args.seed).await?;
    let measuring = client.with_retry(RetryPolicy::once());
    let heads = Arc::new(fleet.heads.clone());
    let eligible_client = measuring.clone();
    let health_client = measuring.clone();
    tracing::info!(
        seconds = args.duration.as_secs_f64(),
        "[bench] measuring eligible and health in alternating slices"
    );
    let (eligible_phase, health_phase) = measure_interleaved(
        args.concurrency,
        args.duration,
        args.seed,
        move |rng| {
            let head_id = heads[rng.random_range(0..heads.len())].clone();
            let client = eligible_client.clone();
            async move {
                let answer = client.eligible(&EligibleQuery::for_head(head_id)).await?;
                Ok(Some(answer.policy))
            }
        },
        move |_| {
            let client = health_client.clone();
            async move { client.health().await.map(|_| None) }
        },
    )
    .await?;
    warn_errors("eligible", &eligible_phase);
    warn_errors("health", &health_phase);
    Ok((
        RouteFigures::from_phase("GET /api/v1/bodies/eligible?head_id=", &eligible_phase),
        RouteFigures::from_phase("GET /api/v1/health", &health_phase),
        eligible_phase.tags,
    ))
}

fn eligible_report_text(report: &EligibleReport) -> String {
    let answers: u64 = report.policies.values().sum();
    let policies: Vec<String> = report
        .policies
        .iter()
        .map(|(policy, count)| {
            format!(
                "{policy} {:.1}%",
                100.0 * *count as f64 / answers.max(1) as f64
            )
        })
        .collect();
    format!(
        "bench eligible: {} bodies ({} offline), {} heads, {} venues in {} districts, enrolled in \
         {:.1} s; storage {}; concurrency {}; {:.1} s per route\n{}eligible/health throughput \
         ratio: {:.2}\nanswers by policy: {}\n",
        report.bodies,
        report.offline_bodies,
        report.heads,
        report.venues,
        report.districts,
        report.enrol_seconds,
        report.storage,
        report.concurrency,
        report.eligible.seconds,
        figures_table(&[&report.eligible, &report.health]),
        report.throughput_ratio,
        if policies.is_empty() {
            "-".to_owned()
        } else {
            policies.join(", ")
        },
    )
}

/// The result of `hydra bench heartbeats`.
#[derive(Debug, Serialize)]
struct HeartbeatReport {
    storage: String,
    nodes: usize,
    concurrency: u32,
    heartbeats: RouteFigures,
}

async fn bench_heartbeats(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let (client, storage, mut plan, tag) = prepare(&args).await?;
    plan.heads.clear();
    tracing::info!(%tag, bodies = plan.bodies.len(), "[bench] enrolling the nodes");
    let fleet = enrol_fleet(&client, &plan, args.concurrency).await?;
    let nodes: Arc<Vec<Client>> = Arc::new(
        fleet
            .bodies
            .iter()
            .map(|(_, token)| {
                client
                    .with_token(token.clone())
                    .with_retry(RetryPolicy::once())
            })
            .collect(),
    );
    let ids: Arc<Vec<String>> = Arc::new(fleet.bodies.iter().map(|(id, _)| id.clone()).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tracing::info!(
        seconds = args.duration.as_secs_f64(),
        "[bench] measuring heartbeats"
    );
    let phase = measure(
        args.concurrency,
        args.duration,
        args.seed,
        Arc::new(move |rng: &mut StdRng| {
            let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % ids.len();
            let node = nodes[index].clone();
            let id = ids[index].clone();
            let idle = rng.random_bool(0.7);
            async move { node.heartbeat(&id, &load_report(idle)).await.map(|_| None) }
        }),
    )
    .await;
    if !args.keep {
        remove_fleet(&client, fleet.all_ids(), args.concurrency).await;
    }
    let phase = phase?;
    warn_errors("heartbeat", &phase);
    let report = HeartbeatReport {
        storage,
        nodes: plan.bodies.len(),
        concurrency: args.concurrency,
        heartbeats: RouteFigures::from_phase("POST /api/v1/nodes/{id}/heartbeat", &phase),
    };
    if args.client.json {
        print_json(&report)?;
    } else {
        print(&format!(
            "bench heartbeats: {} nodes heartbeating with their own tokens; storage {}; \
             concurrency {}; {:.1} s\n{}",
            report.nodes,
            report.storage,
            report.concurrency,
            report.heartbeats.seconds,
            figures_table(&[&report.heartbeats]),
        ));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn the_fleet_has_about_ten_bodies_per_venue_and_a_head_in_each() {
        let plan = plan_fleet(1_005, "t", &mut StdRng::seed_from_u64(1));
        assert_eq!(plan.bodies.len(), 1_005);
        assert_eq!(plan.venues, 101);
        assert_eq!(plan.heads.len(), 101);
        assert_eq!(plan.districts, 13);
        let mut per_venue: HashMap<(String, String), usize> = HashMap::new();
        for body in &plan.bodies {
            *per_venue
                .entry((body.district.clone(), body.venue.clone()))
                .or_default() += 1;
        }
        assert_eq!(per_venue.len(), 101);
        assert!(per_venue.values().all(|count| *count <= BODIES_PER_VENUE));
        let ids: HashSet<&Option<String>> = plan
            .bodies
            .iter()
            .chain(&plan.heads)
            .map(|node| &node.id)
            .collect();
        assert_eq!(ids.len(), 1_005 + 101, "ids are unique");
        let lan: HashSet<_> = plan.bodies.iter().map(|body| body.lan_ip).collect();
        assert_eq!(lan.len(), 1_005, "LAN addresses are unique");
    }

    #[test]
    fn one_head_in_four_has_no_body_of_its_owner_in_its_venue() {
        let plan = plan_fleet(400, "t", &mut StdRng::seed_from_u64(1));
        let mut quickroute = 0;
        for head in &plan.heads {
            let own_body_here = plan.bodies.iter().any(|body| {
                body.district == head.district
                    && body.venue == head.venue
                    && body.owner == head.owner
            });
            let own_body_in_district = plan
                .bodies
                .iter()
                .any(|body| body.district == head.district && body.owner == head.owner);
            assert!(own_body_in_district, "{:?} has a fallback", head.id);
            quickroute += usize::from(own_body_here);
        }
        assert_eq!(quickroute, 30, "40 venues, 3 in 4 heads hit quickroute");
    }

    #[test]
    fn reads_its_own_cpu_time() {
        let before = own_cpu_seconds().expect("/proc/self/stat on Linux");
        let mut spin: u64 = 0;
        for number in 0..2_000_000u64 {
            spin = spin.wrapping_add(number * number);
        }
        assert!(spin > 0);
        let after = own_cpu_seconds().expect("/proc/self/stat on Linux");
        assert!(after >= before, "{before} -> {after}");
    }

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
