//! `hydra bench captures` (issue 12): N stand-in monitor feeds (NDJSON over chunked HTTP, the
//! agent's `MonitorLine`, numbered from 1) each emit R lines/s for D seconds into one fan-out
//! capture of the server: lines stored per second, lines lost (checked by sequence in the
//! stored lines), and tail latency (emission to a tail client). The baseline, in the same run:
//! the same feeds read over the same loopback HTTP and appended to a plain file with one
//! `write` per received chunk (the disk's ceiling for the same lines).
//!
//! The capture fans out to every online node the server knows the agent of: run it against a
//! fresh server of your own, on loopback.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hydra_api::captures::{CreateCaptureRequest, MonitorFilters, MonitorKind, MonitorLine};
use hydra_api::sessions::WorkerReport;
use hydra_api::{CostTierWire, EnrolRequest, RoleWire};
use hydra_client::Client;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::check_loopback;
use super::fleet::load_report;
use crate::client_args::{ClientArgs, parse_duration};
use crate::output::{Table, print, print_json};

/// How often a stand-in feed writes a chunk of the lines due.
const TICK: Duration = Duration::from_millis(10);
/// Longest wait for the stored lines to catch up once the feeds are done.
const CATCH_UP: Duration = Duration::from_secs(60);
/// The message of every line, padded to a typical agent log line's length.
const MESSAGE: &str = "[proxy] viewer request refused session_id=s-bench reason=unknown_session \
                       path=/session/s-bench/ws peer=127.0.0.1";

/// Options of `hydra bench captures`.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// Stand-in feeds (nodes) captured at once.
    #[arg(long, value_name = "N", default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..=64))]
    feeds: u32,
    /// Lines each feed emits per second.
    #[arg(long, value_name = "LINES", default_value_t = 20_000,
        value_parser = clap::value_parser!(u32).range(1..=200_000))]
    rate: u32,
    /// How long the feeds emit, e.g. `10s`; at most 2 minutes.
    #[arg(long, value_name = "S", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Directory of the baseline's file (deleted afterwards); the system's temp dir by default.
    /// Put it on the disk the server's storage is on.
    #[arg(long, value_name = "DIR")]
    baseline_dir: Option<PathBuf>,
    /// Accept a server that is not on loopback.
    #[arg(long)]
    allow_non_loopback: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// The figures of one way of storing the lines.
#[derive(Debug, Clone, Serialize)]
struct StoredFigures {
    what: String,
    lines_offered: u64,
    lines_stored: u64,
    lines_lost: u64,
    lines_per_second: f64,
    seconds: f64,
}

/// The result of `hydra bench captures`.
#[derive(Debug, Serialize)]
struct CaptureReport {
    storage: String,
    feeds: u32,
    rate_per_feed: u32,
    baseline: StoredFigures,
    capture: StoredFigures,
    ratio_to_baseline: f64,
    lines_twice: u64,
    tail_lines: u64,
    tail_dropped: u64,
    tail_p50_ms: f64,
    tail_p99_ms: f64,
    tail_max_ms: f64,
}

/// Runs the benchmark.
pub(super) async fn bench_captures(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    check_loopback(&args.client.servers, args.allow_non_loopback)?;
    if args.duration > Duration::from_secs(120) || args.duration.is_zero() {
        anyhow::bail!("--duration is between 1 s and 2 minutes");
    }
    let client = args.client.client()?;
    let storage = client
        .health()
        .await
        .map_err(|error| args.client.explain(error, "cannot reach the server"))?
        .storage;
    let per_feed = u64::from(args.rate) * args.duration.as_millis() as u64 / 1_000;
    let offered = per_feed * u64::from(args.feeds);
    let stop = CancellationToken::new();
    let _stop_feeds = stop.clone().drop_guard();

    let baseline = baseline(&args, per_feed, &stop).await?;
    tracing::info!(
        lines_per_second = baseline.lines_per_second,
        "[bench] baseline done"
    );

    let tag = format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff);
    let mut feed_urls = Vec::new();
    for _ in 0..args.feeds {
        feed_urls.push(start_feed(args.rate, per_feed, &stop).await?);
    }
    let node_ids = enrol_feeds(&client, &tag, &feed_urls).await?;
    let outcome = capture_run(&client, &node_ids, per_feed, &args).await;
    for id in &node_ids {
        if let Err(error) = client.remove_node(id).await {
            tracing::warn!(node_id = %id, %error, "[bench] a bench node could not be removed");
        }
    }
    let (capture, lines_twice, tail) = outcome?;
    let report = CaptureReport {
        storage,
        feeds: args.feeds,
        rate_per_feed: args.rate,
        ratio_to_baseline: if baseline.lines_per_second > 0.0 {
            capture.lines_per_second / baseline.lines_per_second
        } else {
            0.0
        },
        baseline,
        capture,
        lines_twice,
        tail_lines: tail.histogram.len(),
        tail_dropped: tail.dropped,
        tail_p50_ms: tail.histogram.value_at_quantile(0.50) as f64,
        tail_p99_ms: tail.histogram.value_at_quantile(0.99) as f64,
        tail_max_ms: tail.histogram.max() as f64,
    };
    debug_assert_eq!(report.capture.lines_offered, offered);
    print_report(&report, args.client.json, args.duration, offered)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the report: JSON, or the table and the tail line.
fn print_report(
    report: &CaptureReport,
    json: bool,
    duration: Duration,
    offered: u64,
) -> anyhow::Result<()> {
    if json {
        print_json(report)?;
    } else {
        let mut table = Table::new(&["stored in", "lines/s", "lost", "seconds", "vs baseline"]);
        for figures in [&report.baseline, &report.capture] {
            table.row(vec![
                figures.what.clone(),
                format!("{:.0}", figures.lines_per_second),
                figures.lines_lost.to_string(),
                format!("{:.1}", figures.seconds),
                format!(
                    "{:.2}",
                    figures.lines_per_second / report.baseline.lines_per_second.max(1e-9)
                ),
            ]);
        }
        print(&format!(
            "bench captures: {} feeds x {} lines/s for {:.0} s ({} lines); storage {}\n{}\
             stored twice: {}; tail: {} lines, {} dropped for the tail, latency p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms\n",
            report.feeds,
            report.rate_per_feed,
            duration.as_secs_f64(),
            offered,
            report.storage,
            table.render(),
            report.lines_twice,
            report.tail_lines,
            report.tail_dropped,
            report.tail_p50_ms,
            report.tail_p99_ms,
            report.tail_max_ms,
        ));
    }
    Ok(())
}

/// The baseline: the same feeds, read over loopback HTTP, appended to one plain file with one
/// `write` per received chunk, then synced once.
async fn baseline(
    args: &CaptureArgs,
    per_feed: u64,
    stop: &CancellationToken,
) -> anyhow::Result<StoredFigures> {
    let dir = args.baseline_dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "hydra-bench-captures-{}.ndjson",
        std::process::id()
    ));
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .await
        .with_context(|| format!("baseline file {}", path.display()))?;
    let file = Arc::new(tokio::sync::Mutex::new(file));
    let lines = Arc::new(AtomicU64::new(0));
    let mut readers = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..args.feeds {
        let url = start_feed(args.rate, per_feed, stop).await?;
        let (file, lines) = (Arc::clone(&file), Arc::clone(&lines));
        readers.spawn(async move {
            let agent = hydra_client::AgentClient::new(&url, None);
            let mut feed = agent.monitor(&MonitorFilters::default()).await?;
            let mut seen = 0;
            while seen < per_feed {
                let Some(chunk) = feed.next_chunk().await? else {
                    break;
                };
                let count = chunk.iter().filter(|byte| **byte == b'\n').count() as u64;
                if chunk.len() as u64 == count {
                    continue; // keep-alive
                }
                file.lock().await.write_all(&chunk).await?;
                seen += count;
                lines.fetch_add(count, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let deadline = args.duration + CATCH_UP;
    let joined = tokio::time::timeout(deadline, async {
        while let Some(outcome) = readers.join_next().await {
            outcome??;
        }
        anyhow::Ok(())
    })
    .await;
    file.lock().await.sync_data().await?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = tokio::fs::remove_file(&path).await;
    joined.context("the baseline did not finish in time")??;
    let stored = lines.load(Ordering::Relaxed);
    let offered = per_feed * u64::from(args.feeds);
    Ok(StoredFigures {
        what: "plain file (baseline)".to_owned(),
        lines_offered: offered,
        lines_stored: stored,
        lines_lost: offered.saturating_sub(stored),
        lines_per_second: stored as f64 / seconds,
        seconds,
    })
}

/// Enrols one worker node per feed, online, reporting the feed as its agent; answers their ids.
async fn enrol_feeds(client: &Client, tag: &str, feeds: &[String]) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for (index, url) in feeds.iter().enumerate() {
        let enrolled = client
            .enrol(&EnrolRequest {
                id: Some(format!("bench-cap-{tag}-{index:02}")),
                name: None,
                roles: vec![RoleWire::Worker],
                district: "bench".to_owned(),
                venue: "bench".to_owned(),
                owner: "bench".to_owned(),
                allowed_orgs: Vec::new(),
                lan_ip: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
                wg_ip: None,
                vram_mb: None,
                cost_tier: CostTierWire::default(),
            })
            .await
            .context("enrolling a bench node")?;
        let node = client.with_token(enrolled.token.clone());
        let id = enrolled.node.id;
        ids.push(id.clone());
        node.heartbeat(&id, &load_report(true))
            .await
            .context("heartbeat of a bench node")?;
        node.report_worker(
            &id,
            &WorkerReport {
                agent_url: url.clone(),
                agent_key: format!("bench-key-{tag}-{index}"),
                max_sessions: 1,
                sessions: Vec::new(),
                sequence: Some(1),
                start_timeout_ms: None,
            },
        )
        .await
        .context("worker report of a bench node")?;
    }
    Ok(ids)
}

/// What the tail client saw.
struct Tail {
    histogram: hdrhistogram::Histogram<u64>,
    dropped: u64,
}

/// Runs the capture: start, tail, wait for every line (bounded), stop, check by sequence.
async fn capture_run(
    client: &Client,
    node_ids: &[String],
    per_feed: u64,
    args: &CaptureArgs,
) -> anyhow::Result<(StoredFigures, u64, Tail)> {
    let offered = per_feed * node_ids.len() as u64;
    let started = Instant::now();
    let capture = client
        .create_capture(&CreateCaptureRequest {
            node_id: None,
            fan_out: true,
            filters: MonitorFilters::default(),
            duration: Some(args.duration.as_secs() + CATCH_UP.as_secs() + 60),
            max_lines: None,
            max_bytes: None,
        })
        .await
        .context("starting the capture")?;
    let id = capture.capture_id.clone();
    if capture.node_segments.len() != node_ids.len() {
        tracing::warn!(
            segments = capture.node_segments.len(),
            feeds = node_ids.len(),
            "[bench] the capture has other nodes than the bench's feeds: use a fresh server"
        );
    }
    let tail_client = client.clone();
    let tail_id = id.clone();
    let tail = tokio::spawn(async move { read_tail(&tail_client, &tail_id).await });
    // Bounded: the feeds' duration plus the catch-up; stored lines are polled every 100 ms.
    let deadline = started + args.duration + CATCH_UP;
    let mut stored = 0;
    let mut last_growth = Instant::now();
    let mut caught_up = started.elapsed();
    while Instant::now() < deadline {
        let view = client.capture(&id).await?;
        if view.line_count > stored {
            stored = view.line_count;
            last_growth = Instant::now();
            caught_up = started.elapsed();
        }
        if stored >= offered || last_growth.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = client.stop_capture(&id).await?;
    let tail = tokio::time::timeout(Duration::from_secs(30), tail)
        .await
        .context("the tail did not end with the capture")???;
    let mut present = 0;
    let mut twice = 0;
    for segment in &stopped.node_segments {
        let (node_present, node_twice) = check_sequence(client, &id, &segment.node_id, per_feed)
            .await
            .with_context(|| format!("reading back the lines of {}", segment.node_id))?;
        present += node_present;
        twice += node_twice;
    }
    let seconds = caught_up.as_secs_f64();
    Ok((
        StoredFigures {
            what: format!("capture ({})", stopped.status.as_str()),
            lines_offered: offered,
            lines_stored: stored,
            lines_lost: offered.saturating_sub(present),
            lines_per_second: stored as f64 / seconds.max(1e-9),
            seconds,
        },
        twice,
        tail,
    ))
}

/// Reads a node's stored lines back: how many of its sequence 1..=`expected` are there, and how
/// many lines were stored more than once.
async fn check_sequence(
    client: &Client,
    capture_id: &str,
    node_id: &str,
    expected: u64,
) -> anyhow::Result<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
        kind: MonitorKind,
    }
    let mut seen = vec![false; usize::try_from(expected)? + 1];
    let mut twice = 0;
    let mut stream = client
        .capture_lines(capture_id, Some(node_id), None)
        .await?;
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next_chunk().await? {
        buffer.extend_from_slice(&chunk);
        let mut consumed = 0;
        while let Some(end) = buffer[consumed..].iter().position(|byte| *byte == b'\n') {
            let raw = &buffer[consumed..consumed + end];
            consumed += end + 1;
            let Ok(line) = serde_json::from_slice::<Seq>(raw) else {
                continue;
            };
            if line.kind == MonitorKind::Dropped {
                continue;
            }
            match seen.get_mut(usize::try_from(line.seq)?) {
                Some(slot) if *slot => twice += 1,
                Some(slot) => *slot = true,
                None => {}
            }
        }
        buffer.drain(..consumed);
    }
    let present = seen.iter().skip(1).filter(|present| **present).count() as u64;
    Ok((present, twice))
}

/// Tails the capture until it ends: each line's latency from its emission (`ms`) to now.
async fn read_tail(client: &Client, capture_id: &str) -> anyhow::Result<Tail> {
    #[derive(serde::Deserialize)]
    struct Emitted {
        #[serde(default)]
        ms: i64,
        kind: MonitorKind,
        #[serde(default)]
        dropped: Option<u64>,
    }
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut dropped = 0;
    let mut stream = client.tail_capture(capture_id, None).await?;
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next_chunk().await? {
        let now = hydra_api::now_ms();
        buffer.extend_from_slice(&chunk);
        let mut consumed = 0;
        while let Some(end) = buffer[consumed..].iter().position(|byte| *byte == b'\n') {
            let raw = &buffer[consumed..consumed + end];
            consumed += end + 1;
            let Ok(line) = serde_json::from_slice::<Emitted>(raw) else {
                continue;
            };
            if line.kind == MonitorKind::Dropped {
                dropped += line.dropped.unwrap_or(0);
                continue;
            }
            histogram.record(u64::try_from(now.saturating_sub(line.ms)).unwrap_or(0))?;
        }
        buffer.drain(..consumed);
    }
    Ok(Tail { histogram, dropped })
}

/// Starts a stand-in monitor feed on loopback; answers its base URL. Each connection gets
/// `total` lines numbered from 1 at `rate` lines/s, then keep-alives until it closes or `stop`.
async fn start_feed(rate: u32, total: u64, stop: &CancellationToken) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((socket, _)) = accepted else { return };
            tokio::spawn(serve_feed(socket, rate, total, stop.clone()));
        }
    });
    Ok(url)
}

/// One reader of a stand-in feed: the request head is read and ignored (bounded), the answer
/// is chunked NDJSON.
async fn serve_feed(mut socket: TcpStream, rate: u32, total: u64, stop: CancellationToken) {
    let mut head = Vec::new();
    let mut buffer = [0_u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                   transfer-encoding: chunked\r\n\r\n";
    if socket.write_all(answer).await.is_err() {
        return;
    }
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    let mut emitted: u64 = 0;
    let mut idle_since = Instant::now();
    // Bounded: the lines, then at most two minutes of keep-alives.
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let due = (u128::from(rate) * started.elapsed().as_millis() / 1_000).min(u128::from(total))
            as u64;
        let mut data = Vec::new();
        if due > emitted {
            let ms = hydra_api::now_ms();
            let time = hydra_api::rfc3339(ms);
            for seq in emitted + 1..=due {
                let line = MonitorLine {
                    seq,
                    time: time.clone(),
                    ms,
                    kind: MonitorKind::Log,
                    level: Some("info".to_owned()),
                    session: None,
                    message: MESSAGE.to_owned(),
                    dropped: None,
                };
                if serde_json::to_writer(&mut data, &line).is_err() {
                    return;
                }
                data.push(b'\n');
            }
            emitted = due;
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= Duration::from_secs(2) {
            data.push(b'\n');
            idle_since = Instant::now();
        }
        if emitted >= total && started.elapsed() > Duration::from_secs(300) {
            return;
        }
        if data.is_empty() {
            continue;
        }
        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
        chunk.extend_from_slice(&data);
        chunk.extend_from_slice(b"\r\n");
        if socket.write_all(&chunk).await.is_err() {
            return;
        }
    }
}
