//! Measures what `GET /bodies/eligible?measured=...` costs the store: 256 samples written one
//! durable write each (before issue 7 item 7) against one `record_latencies` transaction.
//!
//! `cargo run -p hydra-store --example latency_batch` (SQLite in a temp dir); with
//! `HYDRA_TEST_DATABASE_URL` set (e.g. under `scripts/test`'s PostgreSQL) it measures PostgreSQL
//! too. Prints the median of 9 rounds of each.

use std::time::{Duration, Instant};

use hydra_core::Transport;
use hydra_store::{LatencyRecord, Store};

const SAMPLES: u32 = 256;
const ROUNDS: usize = 9;

fn samples(round: usize) -> Vec<LatencyRecord> {
    (0..SAMPLES)
        .map(|index| LatencyRecord {
            head_id: "h1".into(),
            body_id: format!("b{index}"),
            transport: Transport::Lan,
            rtt_ms: index,
            measured_at: round as i64,
        })
        .collect()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn measure(engine: &str, store: &Store) {
    let (mut one_by_one, mut batched) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let batch = samples(round);
        let started = Instant::now();
        for sample in &batch {
            store.record_latency(sample).await.expect("record_latency");
        }
        one_by_one.push(started.elapsed());
        let started = Instant::now();
        store
            .record_latencies(&batch)
            .await
            .expect("record_latencies");
        batched.push(started.elapsed());
    }
    let (before, after) = (median(one_by_one), median(batched));
    println!(
        "{engine}: {SAMPLES} samples one write each {before:?}, one batch {after:?}, ratio {:.1}x",
        before.as_secs_f64() / after.as_secs_f64()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_sqlite(&dir.path().join("hydra.db"))
        .await
        .expect("open sqlite");
    measure("sqlite", &store).await;
    if std::env::var(hydra_store::testing::DATABASE_URL_VAR).is_ok() {
        let url = hydra_store::testing::fresh_postgres_database("latency_batch").await;
        let store = Store::open_postgres(&url).await.expect("open postgres");
        measure("postgres", &store).await;
    }
}
