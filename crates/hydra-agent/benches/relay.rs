//! The relay's first-byte benchmark (a measurement, never a test): a session start with the
//! stand-in process until the first byte of its page arrives through the agent's proxy. The
//! server's placement benchmark is `cargo bench -p hydra-server --bench placement`.
//!
//! Run: `cargo bench -p hydra-agent --bench relay`.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

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

async fn first_byte() {
    use hydra_agent::http::{AgentState, HttpSettings, router};
    use hydra_agent::worker::{SessionSpec, Worker, WorkerSettings};
    use hydra_proxy::proxy::Proxy;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let body = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let body_port = body.local_addr().unwrap().port();
    tokio::spawn(async move { while body.accept().await.is_ok() {} });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut settings = WorkerSettings::new(dir.path().join("sessions"));
    settings.command = [
        env!("CARGO_BIN_EXE_standin-web-stream"),
        "--bind",
        "{bind}",
        "--port",
        "{port}",
        "--data-dir",
        "{data_dir}",
    ]
    .map(String::from)
    .to_vec();
    settings.port_range_start = 23_000;
    settings.body_port = body_port;
    let worker = Worker::new(settings);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let state = AgentState::new(
        HttpSettings {
            roles: vec!["worker".into()],
            servers: Vec::new(),
            return_url: "/".into(),
            report_url: "mailto:".into(),
            rating_url: None,
            api_token: None,
            wireguard_optional: true,
            viewer_ttl: Duration::from_secs(60),
            ice: Default::default(),
        },
        Some(worker.clone()),
        Proxy::new(shutdown.clone()),
    );
    tokio::spawn(axum::serve(listener, router(state)).into_future());
    let rounds = 30;
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for round in 0..rounds {
        let t0 = Instant::now();
        let id = format!("b{round}");
        worker
            .start_session(SessionSpec {
                id: Some(id.clone()),
                body_ip: "127.0.0.1".into(),
                ..SessionSpec::default()
            })
            .await
            .unwrap();
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(format!("GET /session/{id}/ HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.unwrap();
        histogram.record(t0.elapsed().as_micros() as u64).unwrap();
        worker.stop_session(&id, "bench").await;
    }
    report(
        "session start to first proxied byte (stand-in)",
        &histogram,
        rounds,
        started.elapsed(),
    );
    worker.shutdown().await;
    shutdown.cancel();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(first_byte());
}
