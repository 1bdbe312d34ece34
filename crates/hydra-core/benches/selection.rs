//! Criterion benchmark of body selection over 1,000, 10,000 and 100,000 bodies, beside the naive
//! baseline (clone the whole list, filter, sort) measured in the same run.
//!
//! Run: `cargo bench -p hydra-core --bench selection`; the README reports the ratio.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hydra_core::selection::{Head, Observations, SelectionSettings, select_bodies};
use hydra_core::{CostTier, Node, Role, Roles};

const NOW: i64 = 10_000_000;

/// `count` bodies in one district, 20 per venue, three owners, a tenth drained or offline.
fn fleet(count: usize) -> Vec<Node> {
    (0..count)
        .map(|i| {
            let mut node = Node::new(format!("body-{i:06}"), Roles::NONE.with(Role::Body));
            node.district = "bxl1".into();
            node.venue = format!("venue-{}", i / 20);
            node.owner = ["acme", "globex", "initech"][i % 3].into();
            node.allowed_orgs = if i % 7 == 0 {
                vec!["acme".into()]
            } else {
                Vec::new()
            };
            node.vram_mb = Some(8_192 * (1 + (i % 4) as u64));
            node.idle = i % 2 == 0;
            node.drained = i % 10 == 3;
            node.last_heartbeat = if i % 10 == 5 {
                Some(NOW - 120_000)
            } else {
                Some(NOW - 1_000)
            };
            node.cost_tier = CostTier::ALL[i % 4];
            node
        })
        .collect()
}

/// The naive baseline, the same code the selection property test judges `select_bodies` with.
#[path = "../src/selection/naive.rs"]
mod naive;
// `naive.rs` names `crate::node` and `crate::selection`, which here are hydra-core's.
use hydra_core::{node, selection};

/// The naive answer's body ids, with no latency and nothing unreachable.
fn naive_ids(head: &Head<'_>, bodies: &[Node], settings: &SelectionSettings) -> Vec<String> {
    naive::naive_select(
        head,
        bodies,
        NOW,
        settings,
        &HashMap::new(),
        &HashSet::new(),
    )
    .bodies
    .into_iter()
    .map(|(id, _)| id)
    .collect()
}

fn bench(c: &mut Criterion) {
    let settings = SelectionSettings::default();
    let quickroute_head = Head {
        district: "bxl1",
        venue: "venue-0",
        owner: "acme",
    };
    let fallback_head = Head {
        district: "bxl1",
        venue: "no-bodies-here",
        owner: "acme",
    };
    for (case, head) in [
        ("quickroute", quickroute_head),
        ("cross_venue", fallback_head),
    ] {
        let mut group = c.benchmark_group(format!("select_{case}"));
        for count in [1_000usize, 10_000, 100_000] {
            let bodies = fleet(count);
            // Same answer from both, or the comparison means nothing.
            let ours: Vec<String> =
                select_bodies(&head, &bodies, NOW, &settings, &Observations::default())
                    .bodies
                    .iter()
                    .map(|c| c.node.id.clone())
                    .collect();
            let theirs = naive_ids(&head, &bodies, &settings);
            assert_eq!(
                ours, theirs,
                "{case} {count}: hydra and the naive baseline disagree"
            );
            group.bench_with_input(BenchmarkId::new("hydra", count), &bodies, |b, bodies| {
                b.iter(|| {
                    select_bodies(
                        black_box(&head),
                        black_box(bodies),
                        NOW,
                        &settings,
                        &Observations::default(),
                    )
                    .bodies
                    .len()
                })
            });
            group.bench_with_input(
                BenchmarkId::new("naive_clone_filter_sort", count),
                &bodies,
                |b, bodies| {
                    b.iter(|| naive_ids(black_box(&head), black_box(bodies), &settings).len())
                },
            );
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
