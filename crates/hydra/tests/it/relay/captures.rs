//! Fan-out captures against a real server (SQLite) and real agents in this process, over
//! loopback: the field's four (writers per node and chunks attributed; a stream error fails only
//! its segment; a monitor that cannot be opened fails only its segment; fan-out on a one-node
//! fleet is a plain capture) and bad input refused with nothing changed.

use std::time::Duration;

use hydra_api::captures::{
    CaptureStatusWire, CaptureView, CapturedLine, CreateCaptureRequest, TerminationReasonWire,
};
use hydra_client::ClientError;

use super::fleet::{Agent, Server, healthy_workers, state_dir};
use super::support::Body;

/// Copies this process's log events into the agents' monitor feeds, as the binary does.
fn install_monitor_layer() {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry().with(hydra_agent::monitor::MonitorLayer);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

struct Fleet {
    server: Server,
    agents: Vec<Agent>,
    _body: Body,
    _root: tempfile::TempDir,
}

async fn fleet(count: usize) -> Fleet {
    install_monitor_layer();
    let server = Server::start(Duration::from_secs(30)).await;
    let body = Body::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for index in 0..count {
        let id = format!("cap-w{index}");
        agents.push(Agent::start(&server, &id, &state_dir(root.path(), &id), &body, 2).await);
    }
    healthy_workers(&server, count).await;
    Fleet {
        server,
        agents,
        _body: body,
        _root: root,
    }
}

fn fan_out() -> CreateCaptureRequest {
    CreateCaptureRequest {
        fan_out: true,
        duration: Some(120),
        ..CreateCaptureRequest::default()
    }
}

/// Polls the capture until `done` holds (at most 30 s); emits a log line each round so every
/// running writer has lines to store.
async fn wait_capture(
    server: &Server,
    id: &str,
    what: &str,
    mut done: impl FnMut(&CaptureView) -> bool,
) -> CaptureView {
    let admin = server.admin();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tracing::info!("[worker] capture probe line");
        let capture = admin.capture(id).await.unwrap();
        if done(&capture) {
            return capture;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 30 s: {capture:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn segment<'a>(capture: &'a CaptureView, node: &str) -> &'a hydra_api::captures::SegmentView {
    capture
        .node_segments
        .iter()
        .find(|segment| segment.node_id == node)
        .unwrap_or_else(|| panic!("no segment of {node}: {capture:?}"))
}

async fn download(server: &Server, id: &str, node: Option<&str>) -> Vec<CapturedLine> {
    let mut stream = server.admin().capture_lines(id, node, None).await.unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = stream.next_chunk().await.unwrap() {
        text.extend_from_slice(&chunk);
    }
    text.split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).expect("a captured line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_open_per_node_and_every_chunk_is_attributed_to_its_node() {
    let fleet = fleet(2).await;
    let admin = fleet.server.admin();
    let started = admin.create_capture(&fan_out()).await.unwrap();
    assert!(started.fan_out);
    assert_eq!(started.status, CaptureStatusWire::Running);
    let nodes: Vec<&str> = started
        .node_segments
        .iter()
        .map(|s| s.node_id.as_str())
        .collect();
    assert_eq!(nodes, ["cap-w0", "cap-w1"]);
    wait_capture(
        &fleet.server,
        &started.capture_id,
        "lines from both nodes",
        |capture| {
            capture
                .node_segments
                .iter()
                .all(|segment| segment.line_count >= 5)
        },
    )
    .await;
    let stopped = admin.stop_capture(&started.capture_id).await.unwrap();
    assert_eq!(stopped.status, CaptureStatusWire::Completed, "{stopped:?}");
    assert_eq!(
        stopped.termination_reason,
        Some(TerminationReasonWire::Stopped)
    );
    for node in ["cap-w0", "cap-w1"] {
        let segment = segment(&stopped, node);
        assert_eq!(segment.status, CaptureStatusWire::Completed);
        let lines = download(&fleet.server, &started.capture_id, Some(node)).await;
        assert_eq!(lines.len() as u64, segment.line_count, "{node}");
        assert!(lines.iter().all(|line| line.node == node));
        // The node's own sequence, in order, no line twice.
        assert!(
            lines
                .windows(2)
                .all(|pair| pair[1].line.seq > pair[0].line.seq)
        );
    }
    let all = download(&fleet.server, &started.capture_id, None).await;
    assert_eq!(all.len() as u64, stopped.line_count);
    let store = fleet.server.state.store();
    for node in ["cap-w0", "cap-w1"] {
        let chunks = store
            .capture_chunks(&started.capture_id, Some(node), None, 1000)
            .await
            .unwrap();
        assert_eq!(chunks.first().map(|chunk| chunk.sequence), Some(0));
        assert!(chunks.iter().all(|chunk| {
            chunk.node_id == node
                && chunk
                    .data
                    .lines()
                    .all(|line| line.contains(&format!("\"node\":\"{node}\"")))
        }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_error_fails_only_its_own_segment() {
    let mut fleet = fleet(2).await;
    let admin = fleet.server.admin();
    let started = admin.create_capture(&fan_out()).await.unwrap();
    wait_capture(
        &fleet.server,
        &started.capture_id,
        "lines from both nodes",
        |capture| {
            capture
                .node_segments
                .iter()
                .all(|segment| segment.line_count >= 1)
        },
    )
    .await;
    // The second agent stops: its feed ends under the writer.
    fleet.agents.pop().unwrap().stop().await;
    let capture = wait_capture(
        &fleet.server,
        &started.capture_id,
        "the segment fails",
        |capture| segment(capture, "cap-w1").status == CaptureStatusWire::Failed,
    )
    .await;
    assert_eq!(
        segment(&capture, "cap-w1").termination_reason,
        Some(TerminationReasonWire::SourceError)
    );
    assert_eq!(
        segment(&capture, "cap-w0").status,
        CaptureStatusWire::Running
    );
    assert_eq!(capture.status, CaptureStatusWire::Running);
    let before = segment(&capture, "cap-w0").line_count;
    wait_capture(
        &fleet.server,
        &started.capture_id,
        "the other node goes on",
        |capture| segment(capture, "cap-w0").line_count > before,
    )
    .await;
    let stopped = admin.stop_capture(&started.capture_id).await.unwrap();
    assert_eq!(
        segment(&stopped, "cap-w0").status,
        CaptureStatusWire::Completed
    );
    assert_eq!(stopped.status, CaptureStatusWire::Failed);
    assert_eq!(
        stopped.termination_reason,
        Some(TerminationReasonWire::SourceError)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_that_cannot_be_opened_fails_only_its_own_segment() {
    let mut fleet = fleet(2).await;
    // Gone, but still online for the server (its heartbeat timeout is 30 s): the writer cannot
    // open its feed.
    fleet.agents.pop().unwrap().stop().await;
    let admin = fleet.server.admin();
    let started = admin.create_capture(&fan_out()).await.unwrap();
    assert_eq!(started.node_segments.len(), 2);
    let capture = wait_capture(
        &fleet.server,
        &started.capture_id,
        "open failure recorded",
        |capture| {
            segment(capture, "cap-w1").status == CaptureStatusWire::Failed
                && segment(capture, "cap-w0").line_count >= 1
        },
    )
    .await;
    assert_eq!(
        segment(&capture, "cap-w1").termination_reason,
        Some(TerminationReasonWire::MonitorOpenFailed)
    );
    let stopped = admin.stop_capture(&started.capture_id).await.unwrap();
    assert_eq!(
        segment(&stopped, "cap-w0").status,
        CaptureStatusWire::Completed
    );
    assert_eq!(stopped.status, CaptureStatusWire::Failed);
    assert_eq!(
        stopped.termination_reason,
        Some(TerminationReasonWire::MonitorOpenFailed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_on_a_one_node_fleet_is_a_plain_capture_and_bad_input_changes_nothing() {
    let fleet = fleet(1).await;
    let admin = fleet.server.admin();
    let started = admin.create_capture(&fan_out()).await.unwrap();
    assert!(!started.fan_out, "one node: a plain single-node capture");
    assert_eq!(started.node_segments.len(), 1);
    assert_eq!(started.node_segments[0].node_id, "cap-w0");

    let refusals = [
        (
            CreateCaptureRequest {
                node_id: Some("cap-w0".into()),
                ..fan_out()
            },
            400,
            "node_id",
        ),
        (
            CreateCaptureRequest {
                duration: Some(60),
                ..CreateCaptureRequest::default()
            },
            400,
            "node_id",
        ),
        (
            CreateCaptureRequest {
                node_id: Some("nope".into()),
                fan_out: false,
                ..fan_out()
            },
            404,
            "node_id",
        ),
        (
            CreateCaptureRequest {
                duration: Some(0),
                ..fan_out()
            },
            400,
            "duration",
        ),
        (
            CreateCaptureRequest {
                duration: Some(86_401),
                ..fan_out()
            },
            400,
            "duration",
        ),
        (
            CreateCaptureRequest {
                max_lines: Some(0),
                ..fan_out()
            },
            400,
            "max_lines",
        ),
        (
            CreateCaptureRequest {
                max_bytes: Some(0),
                ..fan_out()
            },
            400,
            "max_bytes",
        ),
    ];
    for (request, status, field) in refusals {
        match admin.create_capture(&request).await {
            Err(error) => {
                let (code, message) = error_of(&error);
                assert_eq!(code, status, "{request:?}: {error}");
                assert!(message.contains(field), "{request:?}: {message}");
            }
            Ok(capture) => panic!("{request:?} was accepted: {capture:?}"),
        }
    }
    assert_eq!(
        admin.list_captures().await.unwrap().captures.len(),
        1,
        "nothing was stored"
    );
    let stopped = admin.stop_capture(&started.capture_id).await.unwrap();
    assert_eq!(stopped.status, CaptureStatusWire::Completed);
    let again = admin.stop_capture(&started.capture_id).await.unwrap_err();
    assert_eq!(error_of(&again).0, 409, "{again}");
    let unchanged = admin.capture(&started.capture_id).await.unwrap();
    assert_eq!(unchanged, stopped);
}

fn error_of(error: &ClientError) -> (u16, String) {
    let status = error.status().unwrap_or(0);
    let message = error
        .error_body()
        .map(|body| body.message)
        .unwrap_or_else(|| error.to_string());
    (status, message)
}
