//! The server's placement benchmark (a measurement, never a test): the placement path over
//! 1,000 registered workers, decision plus its durable session record in SQLite (WAL,
//! synchronous=FULL) through the server's group-commit session writer, sequential and with 32
//! concurrent requests; the agent's process start is excluded (the goal: 2,000/s,
//! p99 < 50 ms). Sequential requests cannot share a commit, so they measure one fsync per
//! record; concurrent ones share them.
//!
//! Run: `cargo bench -p hydra-server --bench placement`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hydra_core::{Node, Role, Roles};
use hydra_server::sessions::Relay;
use hydra_server::workers::WorkerInfo;
use hydra_server::{AppState, Settings};
use hydra_store::{SessionRecord, SessionStatus, Store};

const WORKERS: usize = 1_000;
const REQUESTS: usize = 5_000;

use hydra_api::system::now_ms;

fn report(name: &str, histogram: &Histogram<u64>, count: usize, elapsed: Duration) {
    println!(
        "{name}: {count} in {:.2} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        histogram.value_at_quantile(0.50) as f64 / 1_000.0,
        histogram.value_at_quantile(0.99) as f64 / 1_000.0,
        histogram.max() as f64 / 1_000.0,
    );
}

async fn fleet() -> (AppState, Relay, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("hydra.db"))
        .await
        .unwrap();
    let now = now_ms();
    for index in 0..WORKERS {
        let mut node = Node::new(format!("w-{index:04}"), Roles::NONE.with(Role::Worker));
        node.district = "bxl1".into();
        node.venue = format!("venue-{}", index / 50);
        node.owner = "acme".into();
        node.last_heartbeat = Some(now);
        store
            .insert_node(&node, &format!("{index:064}"))
            .await
            .unwrap();
    }
    let settings = Settings {
        heartbeat_timeout: Duration::from_secs(3_600),
        public_url: "http://127.0.0.1:7070".into(),
        body_limit_bytes: 64 * 1024,
        ..Settings::default()
    };
    let state = AppState::new(store, settings, "bench-admin").await.unwrap();
    let relay = Relay;
    for index in 0..WORKERS {
        state.workers().put(&format!("w-{index:04}"), {
            let mut info = WorkerInfo::new(
                "http://127.0.0.1:1".into(),
                "bench-key-0123456789".into(),
                15,
                now,
            );
            info.placed = (0..index % 7)
                .map(|slot| format!("s-held-{slot}"))
                .collect();
            info
        });
    }
    (state, relay, dir)
}

/// One placement as the server makes it (`Relay::place`: under the directory's lock, read the
/// loads, decide, take the slot), then its durable record through the server's group-commit
/// session writer (answered only after the transaction holding it committed).
async fn place_one(state: &AppState, relay: &Relay, serial: usize) -> Duration {
    let started = Instant::now();
    let session_id = format!("s-bench-{serial:08}");
    let reservation = relay
        .place(state, None, &[], &session_id)
        .expect("a worker has room");
    let chosen = reservation.worker_id().to_owned();
    let now = now_ms();
    let record = SessionRecord {
        id: session_id,
        worker_id: chosen,
        body_ip: "10.0.0.2".into(),
        body_id: None,
        head_id: None,
        experience: None,
        port: None,
        stream_url: None,
        status: SessionStatus::Starting,
        error: None,
        created_at: now,
        updated_at: now,
    };
    state.session_writes().insert(record).await.unwrap();
    // Keep the fleet from filling up over thousands of placements: the reservation drops
    // uncommitted and gives its slot back.
    drop(reservation);
    started.elapsed()
}

async fn placement() {
    let (state, relay, _dir) = fleet().await;
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for serial in 0..REQUESTS {
        let took = place_one(&state, &relay, serial).await;
        histogram.record(took.as_micros() as u64).unwrap();
    }
    report(
        "placement+record, sequential, 1000 workers",
        &histogram,
        REQUESTS,
        started.elapsed(),
    );

    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..32 {
        let state = state.clone();
        let relay = relay.clone();
        let histogram = histogram.clone();
        tasks.spawn(async move {
            for index in 0..REQUESTS / 32 {
                let serial = REQUESTS + client * REQUESTS + index;
                let took = place_one(&state, &relay, serial).await;
                histogram
                    .lock()
                    .unwrap()
                    .record(took.as_micros() as u64)
                    .unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let count = (REQUESTS / 32) * 32;
    report(
        "placement+record, 32 concurrent, 1000 workers",
        &histogram.lock().unwrap(),
        count,
        started.elapsed(),
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(placement());
}
