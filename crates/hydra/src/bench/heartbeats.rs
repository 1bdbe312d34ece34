//! `hydra bench heartbeats`: every body heartbeats with its own token as fast as the
//! concurrency allows.

use std::process::ExitCode;
use std::sync::Arc;

use hydra_client::{Client, RetryPolicy};
use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;

use super::figures::{RouteFigures, figures_table, warn_errors};
use super::fleet::{enrol_fleet, load_report, remove_fleet};
use super::harness::measure;
use super::{LoadArgs, prepare};
use crate::output::{print, print_json};

/// The result of `hydra bench heartbeats`.
#[derive(Debug, Serialize)]
struct HeartbeatReport {
    storage: String,
    nodes: usize,
    concurrency: u32,
    heartbeats: RouteFigures,
}

pub(super) async fn bench_heartbeats(args: LoadArgs) -> anyhow::Result<ExitCode> {
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
