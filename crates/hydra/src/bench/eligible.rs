//! `hydra bench eligible`: body selection for random heads against the server's own ceiling
//! (`/health`), measured in alternating slices of one run.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use hydra_client::{Client, EligibleQuery, RetryPolicy};
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use super::figures::{RouteFigures, figures_table, warn_errors};
use super::fleet::{EnrolledFleet, enrol_fleet, heartbeat_fleet, remove_fleet};
use super::harness::measure_interleaved;
use super::{LoadArgs, prepare};
use crate::output::{print, print_json};

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

pub(super) async fn bench_eligible(args: LoadArgs) -> anyhow::Result<ExitCode> {
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
                Ok(Some(answer.policy.to_string()))
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
