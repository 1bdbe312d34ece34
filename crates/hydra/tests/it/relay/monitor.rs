//! The agent's monitor feed (`GET /api/v1/monitor`) on a real agent in this process, read over
//! loopback: log events with their sequence and filters, and a reader that stops reading while
//! the agent logs a flood: the agent goes on, and the reader is told how many lines it lost.

use std::time::Duration;

use hydra_api::captures::{MonitorKind, MonitorLine};

use super::fleet::{Agent, Server, state_dir};
use super::support::Body;

const OPERATOR: &str = "hyo_monitor_test_operator";

/// Copies this process's log events into the agents' monitor feeds, as the binary does.
fn install_monitor_layer() {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry().with(hydra_agent::monitor::MonitorLayer);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

async fn agent(server: &Server, root: &std::path::Path, body: &Body) -> Agent {
    Agent::start_with(
        server,
        "monitor-1",
        &state_dir(root, "monitor-1"),
        body,
        2,
        |config| {
            config.api_token = Some(OPERATOR.into());
        },
    )
    .await
}

fn monitor_request(agent: &Agent, query: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .get(format!("http://{}/api/v1/monitor{query}", agent.address))
        .bearer_auth(OPERATOR)
}

/// Reads NDJSON lines from `stream` until `done` says so (bounded by `limit`).
async fn read_lines(
    stream: &mut reqwest::Response,
    buffer: &mut Vec<u8>,
    limit: Duration,
    mut done: impl FnMut(&[MonitorLine]) -> bool,
) -> Vec<MonitorLine> {
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&lines) {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("the feed sends within the limit")
            .expect("the feed reads")
            .expect("the feed is still open");
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|byte| *byte == b'\n') {
            let raw: Vec<u8> = buffer.drain(..=end).collect();
            if raw.len() > 1 {
                lines.push(serde_json::from_slice(&raw[..raw.len() - 1]).expect("a monitor line"));
            }
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_streams_log_events_in_sequence_through_the_filters() {
    install_monitor_layer();
    let server = Server::start(Duration::from_secs(30)).await;
    let body = Body::start().await;
    let root = tempfile::tempdir().unwrap();
    let agent = agent(&server, root.path(), &body).await;
    let refused = reqwest::Client::new()
        .get(format!("http://{}/api/v1/monitor", agent.address))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let bad_level = monitor_request(&agent, "?level=loud").send().await.unwrap();
    assert_eq!(bad_level.status(), 400);
    let error: serde_json::Value = bad_level.json().await.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("level"),
        "{error}"
    );

    let response = monitor_request(&agent, "?level=info&contains=probe-A")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut stream = response;
    for index in 0..100 {
        tracing::info!(index, "[worker] probe-A line");
        tracing::debug!(index, "[worker] probe-A detail");
        tracing::info!(index, "[worker] other line");
    }
    let mut buffer = Vec::new();
    let lines = read_lines(&mut stream, &mut buffer, Duration::from_secs(20), |lines| {
        lines.len() >= 100
    })
    .await;
    assert_eq!(lines.len(), 100);
    for (index, line) in lines.iter().enumerate() {
        assert_eq!(line.kind, MonitorKind::Log);
        assert_eq!(line.level.as_deref(), Some("info"));
        assert_eq!(line.message, format!("[worker] probe-A line index={index}"));
    }
    // Every line has its node sequence number; the filtered-out ones leave gaps of two.
    assert!(lines.windows(2).all(|pair| pair[1].seq > pair[0].seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_never_slows_the_agent_and_is_told_what_it_lost() {
    install_monitor_layer();
    let server = Server::start(Duration::from_secs(30)).await;
    let body = Body::start().await;
    let root = tempfile::tempdir().unwrap();
    let agent = agent(&server, root.path(), &body).await;
    let response = monitor_request(&agent, "?contains=flood")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response;
    // The reader reads nothing while the agent logs far more than the feed and the sockets hold.
    const FLOOD: u64 = 200_000;
    let flood = tokio::task::spawn_blocking(|| {
        for index in 0..FLOOD {
            tracing::info!(
                index,
                padding = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "[worker] flood line"
            );
        }
    });
    tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("logging never waits for the reader")
        .unwrap();
    // The agent answers meanwhile.
    let health = reqwest::get(format!("http://{}/api/v1/health", agent.address))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    tracing::info!("[worker] flood end");
    let mut buffer = Vec::new();
    let lines = read_lines(&mut stream, &mut buffer, Duration::from_secs(60), |lines| {
        lines
            .last()
            .is_some_and(|line| line.message == "[worker] flood end")
    })
    .await;
    let kept = lines
        .iter()
        .filter(|line| line.kind == MonitorKind::Log)
        .count() as u64
        - 1;
    let announced: u64 = lines.iter().filter_map(|line| line.dropped).sum();
    assert!(announced > 0, "a reader that fell behind is told so");
    assert!(
        lines
            .iter()
            .filter(|line| line.kind == MonitorKind::Dropped)
            .all(|line| line.message == format!("dropped: {}", line.dropped.unwrap()))
    );
    // Nothing is lost silently: what was kept and what was announced add up to the flood (the
    // agent's own lines that the filter left out can only be among the dropped).
    assert!(
        kept + announced >= FLOOD,
        "kept {kept} + dropped {announced} < {FLOOD}"
    );
    assert!(kept < FLOOD);
}

/// The messages' `index=` of the probe lines among `lines`.
fn probe_indexes(lines: &[MonitorLine]) -> Vec<u64> {
    lines
        .iter()
        .filter(|line| line.kind == MonitorKind::Log)
        .filter_map(|line| line.message.rsplit_once("index=")?.1.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_reader_gets_the_kept_lines_after_its_last_one_and_is_told_what_is_gone() {
    install_monitor_layer();
    let server = Server::start(Duration::from_secs(30)).await;
    let body = Body::start().await;
    let root = tempfile::tempdir().unwrap();
    let agent = agent(&server, root.path(), &body).await;
    let mut buffer = Vec::new();
    let mut first = monitor_request(&agent, "?contains=resume-probe")
        .send()
        .await
        .unwrap();
    for index in 0..50_u64 {
        tracing::info!(index, "[worker] resume-probe line");
    }
    let lines = read_lines(&mut first, &mut buffer, Duration::from_secs(20), |lines| {
        lines.len() >= 50
    })
    .await;
    let stored_through = lines[19].seq;
    // The reader goes (a server killed mid-capture); the node goes on logging meanwhile.
    drop(first);
    for index in 50..80_u64 {
        tracing::info!(index, "[worker] resume-probe line");
    }
    let mut back = monitor_request(
        &agent,
        &format!("?contains=resume-probe&after={stored_through}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(back.status(), 200);
    buffer.clear();
    let lines = read_lines(&mut back, &mut buffer, Duration::from_secs(20), |lines| {
        probe_indexes(lines).last() == Some(&79)
    })
    .await;
    assert!(
        lines.iter().all(|line| line.kind != MonitorKind::Dropped),
        "nothing lost in a short absence"
    );
    assert_eq!(probe_indexes(&lines), (20..80).collect::<Vec<u64>>());
    assert!(lines.iter().all(|line| line.seq > stored_through));
    let last_seen = lines.last().unwrap().seq;
    drop(back);

    // Away longer than the feed keeps: what is gone is announced, what is kept follows in order.
    let away = hydra_agent::monitor::CAPACITY as u64 + 100;
    for index in 80..80 + away {
        tracing::info!(index, "[worker] resume-probe line");
    }
    let mut late = monitor_request(&agent, &format!("?contains=resume-probe&after={last_seen}"))
        .send()
        .await
        .unwrap();
    buffer.clear();
    let lines = read_lines(&mut late, &mut buffer, Duration::from_secs(30), |lines| {
        probe_indexes(lines).last() == Some(&(79 + away))
    })
    .await;
    assert_eq!(lines[0].kind, MonitorKind::Dropped, "{:?}", lines[0]);
    let dropped = lines[0].dropped.unwrap();
    assert!(
        dropped >= 100,
        "at least the lines past the feed's capacity: {dropped}"
    );
    let indexes = probe_indexes(&lines);
    assert!(indexes.windows(2).all(|pair| pair[1] == pair[0] + 1));
    // Every probe line not received was announced.
    assert!(
        indexes[0] - 80 <= dropped,
        "{} not received, {dropped} announced",
        indexes[0] - 80
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_s_output_and_its_start_and_end_reach_the_feed_tagged_with_the_session() {
    install_monitor_layer();
    let server = Server::start(Duration::from_secs(30)).await;
    let body = Body::start().await;
    let root = tempfile::tempdir().unwrap();
    // The session process prints two lines to its output (its `web-server.log`), then runs.
    let mut command: Vec<String> = [
        "sh",
        "-c",
        "echo 'output-probe one'; echo 'output-probe two'; exec \"$0\" \"$@\"",
    ]
    .map(String::from)
    .to_vec();
    command.extend(super::support::standin_command());
    let agent = Agent::start_with(
        &server,
        "monitor-1",
        &state_dir(root.path(), "monitor-1"),
        &body,
        2,
        |config| {
            config.api_token = Some(OPERATOR.into());
            config.sessions.command = command;
        },
    )
    .await;
    super::fleet::healthy_workers(&server, 1).await;
    let mut feed = monitor_request(&agent, "").send().await.unwrap();
    assert_eq!(feed.status(), 200);
    let admin = server.admin();
    let session = admin
        .create_session(&super::fleet::for_body())
        .await
        .unwrap();
    let id = session.session_id.clone();
    let about = |lines: &[MonitorLine]| -> Vec<(MonitorKind, String)> {
        lines
            .iter()
            .filter(|line| line.session.as_deref() == Some(id.as_str()))
            .filter(|line| line.kind != MonitorKind::Log)
            .map(|line| (line.kind, line.message.clone()))
            .collect()
    };
    let mut buffer = Vec::new();
    let mut lines = read_lines(&mut feed, &mut buffer, Duration::from_secs(30), |lines| {
        about(lines)
            .iter()
            .any(|(_, message)| message == "output-probe two")
    })
    .await;
    admin.end_session(&id).await.unwrap();
    lines.extend(
        read_lines(&mut feed, &mut buffer, Duration::from_secs(30), |more| {
            about(more)
                .iter()
                .any(|(_, message)| message.starts_with("session ended"))
        })
        .await,
    );
    let seen = about(&lines);
    let position = |wanted: &dyn Fn(&(MonitorKind, String)) -> bool| {
        seen.iter()
            .position(wanted)
            .unwrap_or_else(|| panic!("missing from {seen:?}"))
    };
    let started = position(&|(kind, message)| {
        *kind == MonitorKind::Event && message.starts_with("session started")
    });
    let first =
        position(&|(kind, message)| *kind == MonitorKind::Output && message == "output-probe one");
    let second =
        position(&|(kind, message)| *kind == MonitorKind::Output && message == "output-probe two");
    let ended = position(&|(kind, message)| {
        *kind == MonitorKind::Event && message.starts_with("session ended")
    });
    assert!(
        started < ended && first < second && second < ended,
        "{seen:?}"
    );
    // Each line carries its node sequence number, in order.
    assert!(lines.windows(2).all(|pair| pair[1].seq > pair[0].seq));
}
