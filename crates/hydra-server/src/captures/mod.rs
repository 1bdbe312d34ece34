//! Fan-out captures (issue 12, `fan-out-capture.md`): `POST /api/v1/captures` records the
//! monitor feed of one node or of every online node into one capture with a segment per node;
//! `stop`, list, show (with `node_segments`), `lines` (stored lines, streamed) and `tail` (live,
//! all nodes interleaved, filtered by node). Admin token.
//!
//! The decisions are `hydra_core::capture`'s; `driver.rs` runs its orchestrator, `writer.rs` one
//! writer per node; `retention.rs` prunes ended captures by age; `resume.rs` makes a new master
//! (or a restarted server) go on with the captures still running, and a deposed one leave them.

pub mod driver;
pub mod resume;
pub mod retention;
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hydra_api::captures::{
    CaptureList, CaptureStatusWire, CaptureView, CreateCaptureRequest, SegmentView, capture_limits,
};
use hydra_api::{ErrorBody, ErrorCode};
use hydra_core::NodeStatus;
use hydra_core::capture::{CaptureLimits, CaptureStatus, level_rank};
use hydra_store::{CaptureRecord, SegmentRecord};
use tokio::sync::{broadcast, mpsc};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::{AppState, now_ms};

/// Live lines kept for tails that fall behind.
const TAIL_CAPACITY: usize = 16 * 1024;
/// Most lines sent in one chunk of a tail.
const TAIL_LINES_PER_CHUNK: usize = 512;
/// A tail quiet this long sends a keep-alive (an empty line), so a client's idle timeout tells
/// a quiet capture from a stalled stream.
const TAIL_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Nodes-left notices queued for one capture's driver (more than its nodes would be odd).
const NODES_LEFT_QUEUED: usize = 64;
/// Chunks read from the store per page of a download.
const CHUNKS_PER_PAGE: u32 = 16;

/// A live line: (node, emission ms, NDJSON text).
type TailLine = Arc<(String, i64, String)>;

/// The captures this server runs now: how to stop each and where its live lines go.
#[derive(Debug, Clone, Default)]
pub struct Captures {
    running: Arc<Mutex<HashMap<String, Running>>>,
}

#[derive(Debug, Clone)]
struct Running {
    stop: mpsc::Sender<()>,
    /// Nodes the peer mesh declared down, for the driver (see [`Captures::node_left`]).
    left: mpsc::Sender<String>,
    tail: broadcast::Sender<TailLine>,
    ended: tokio_util::sync::CancellationToken,
    abandon: tokio_util::sync::CancellationToken,
}

/// A capture this server has claimed to run: what its driver gets.
struct Claim {
    stop: mpsc::Receiver<()>,
    left: mpsc::Receiver<String>,
    tail: broadcast::Sender<TailLine>,
    ended: tokio_util::sync::CancellationToken,
    abandon: tokio_util::sync::CancellationToken,
}

impl Captures {
    fn get(&self, id: &str) -> Option<Running> {
        self.running
            .lock()
            .expect("captures poisoned")
            .get(id)
            .cloned()
    }

    /// Claims `capture_id` for a driver of this server; `None` when one runs it already (a
    /// capture is started and resumed under the same lock, so it never gets two drivers).
    fn claim(&self, capture_id: &str) -> Option<Claim> {
        let mut running = self.running.lock().expect("captures poisoned");
        if running.contains_key(capture_id) {
            return None;
        }
        let (stop_sender, stop) = mpsc::channel(1);
        let (left_sender, left) = mpsc::channel(NODES_LEFT_QUEUED);
        let (tail, _) = broadcast::channel(TAIL_CAPACITY);
        let ended = tokio_util::sync::CancellationToken::new();
        let abandon = tokio_util::sync::CancellationToken::new();
        running.insert(
            capture_id.to_owned(),
            Running {
                stop: stop_sender,
                left: left_sender,
                tail: tail.clone(),
                ended: ended.clone(),
                abandon: abandon.clone(),
            },
        );
        Some(Claim {
            stop,
            left,
            tail,
            ended,
            abandon,
        })
    }

    fn release(&self, capture_id: &str) {
        self.running
            .lock()
            .expect("captures poisoned")
            .remove(capture_id);
    }

    /// Whether this server runs `capture_id` now.
    pub fn runs(&self, capture_id: &str) -> bool {
        self.get(capture_id).is_some()
    }

    /// The peer mesh declared `node_id` down and the control plane marked it unreachable: in
    /// every capture this server runs, its writer ends its segment `failed` with `node_left` at
    /// once, instead of waiting for its feed to break or fall silent.
    pub fn node_left(&self, node_id: &str) {
        let running = self.running.lock().expect("captures poisoned");
        for (capture_id, capture) in running.iter() {
            if capture.left.try_send(node_id.to_owned()).is_err() {
                tracing::warn!(%capture_id, %node_id, "[capture] a node that left could not be told to its capture; its feed's end still ends its segment");
            }
        }
    }

    /// Leaves every capture this server runs to the next master: their drivers end their
    /// writers and return without writing anything more.
    pub fn abandon_all(&self) {
        let running = self.running.lock().expect("captures poisoned");
        for capture in running.values() {
            capture.abandon.cancel();
        }
    }

    /// Runs the driver `build` makes from `claim`'s tail, stop requests and abandon token until
    /// its capture is finalised or abandoned; then this server no longer runs it.
    fn spawn_driver(
        &self,
        claim: Claim,
        build: impl FnOnce(
            broadcast::Sender<TailLine>,
            mpsc::Receiver<()>,
            tokio_util::sync::CancellationToken,
        ) -> driver::Driver,
    ) {
        let driver = build(claim.tail, claim.stop, claim.abandon);
        let captures = self.clone();
        let ended = claim.ended;
        let finished_id = driver.capture_id.clone();
        let left = claim.left;
        tokio::spawn(async move {
            driver.run(left).await;
            captures.release(&finished_id);
            ended.cancel();
        });
    }
}

/// The capture routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(stop))
        .routes(routes!(lines))
        .routes(routes!(tail))
}

/// The view of a stored capture and its segments.
pub fn view(record: &CaptureRecord, segments: &[SegmentRecord]) -> CaptureView {
    let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
    CaptureView {
        capture_id: record.id.clone(),
        status: record.status.into(),
        termination_reason: record.termination_reason.map(Into::into),
        fan_out: record.fan_out,
        filters: serde_json::from_str(&record.filters).unwrap_or_default(),
        duration: record.duration_ms.map(|ms| unsigned(ms) / 1000),
        max_lines: record.max_lines.map(unsigned),
        max_bytes: record.max_bytes.map(unsigned),
        created_at: hydra_api::rfc3339(record.created_at),
        ended_at: record.ended_at.map(hydra_api::rfc3339),
        line_count: segments
            .iter()
            .map(|segment| unsigned(segment.line_count))
            .sum(),
        byte_count: segments
            .iter()
            .map(|segment| unsigned(segment.byte_count))
            .sum(),
        node_segments: segments
            .iter()
            .map(|segment| SegmentView {
                node_id: segment.node_id.clone(),
                address: segment.address.clone(),
                status: segment.status.into(),
                byte_count: unsigned(segment.byte_count),
                line_count: unsigned(segment.line_count),
                lines_missing: unsigned(segment.lines_missing),
                ended_at: segment.ended_at.map(hydra_api::rfc3339),
                termination_reason: segment.termination_reason.map(Into::into),
            })
            .collect(),
    }
}

/// Checks a request's limits and filters; the error names the field.
fn checked_limits(request: &CreateCaptureRequest) -> Result<CaptureLimits, ApiError> {
    let duration = request
        .duration
        .unwrap_or(capture_limits::DEFAULT_DURATION_SECS);
    if !(1..=capture_limits::MAX_DURATION_SECS).contains(&duration) {
        return Err(ApiError::invalid(format!(
            "duration: {duration} s is out of range (1 to {})",
            capture_limits::MAX_DURATION_SECS
        )));
    }
    if let Some(max_lines) = request.max_lines
        && !(1..=capture_limits::MAX_LINES).contains(&max_lines)
    {
        return Err(ApiError::invalid(format!(
            "max_lines: {max_lines} is out of range (1 to {})",
            capture_limits::MAX_LINES
        )));
    }
    if let Some(max_bytes) = request.max_bytes
        && !(1..=capture_limits::MAX_BYTES).contains(&max_bytes)
    {
        return Err(ApiError::invalid(format!(
            "max_bytes: {max_bytes} is out of range (1 to {})",
            capture_limits::MAX_BYTES
        )));
    }
    if let Some(level) = &request.filters.level
        && level_rank(level).is_none()
    {
        return Err(ApiError::invalid(format!(
            "filters.level: unknown level {level:?} (error, warn, info, debug or trace)"
        )));
    }
    Ok(CaptureLimits {
        duration_ms: Some(i64::try_from(duration * 1000).unwrap_or(i64::MAX)),
        max_lines: request.max_lines,
        max_bytes: request.max_bytes,
    })
}

/// The nodes a request captures, with their agents: the named node, or every online node whose
/// agent the control plane knows (from its worker report). The error names the field.
fn targets(
    state: &AppState,
    request: &CreateCaptureRequest,
) -> Result<Vec<(String, Option<hydra_client::AgentClient>)>, ApiError> {
    let agent_of = |node_id: &str| state.workers().get(node_id).map(|worker| worker.agent());
    match (&request.node_id, request.fan_out) {
        (Some(_), true) => Err(ApiError::invalid(
            "node_id: give node_id or fan_out, not both",
        )),
        (None, false) => Err(ApiError::invalid(
            "node_id: give node_id, or fan_out: true for every online node",
        )),
        (Some(node_id), false) => {
            let known = state
                .registry()
                .read()
                .expect("registry lock poisoned")
                .get(node_id)
                .is_some();
            if !known {
                return Err(ApiError::not_found(format!(
                    "node_id: unknown node {node_id:?}"
                )));
            }
            Ok(vec![(node_id.clone(), agent_of(node_id))])
        }
        (None, true) => {
            let now = now_ms();
            let timeout = state.heartbeat_timeout_ms();
            let online: Vec<String> = state
                .registry()
                .read()
                .expect("registry lock poisoned")
                .all()
                .into_iter()
                .filter(|node| node.status(now, timeout) == NodeStatus::Online)
                .map(|node| node.id.clone())
                .collect();
            let targets: Vec<_> = online
                .into_iter()
                .filter_map(|node_id| agent_of(&node_id).map(|agent| (node_id, Some(agent))))
                .collect();
            if targets.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "fan_out: no online node with a known agent to capture",
                ));
            }
            Ok(targets)
        }
    }
}

#[utoipa::path(post, path = "/api/v1/captures", tag = "captures", request_body = CreateCaptureRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Capture started", body = CaptureView),
        (status = 400, description = "Invalid field (both node_id and fan_out, a limit out of range)", body = ErrorBody),
        (status = 404, description = "Unknown node", body = ErrorBody),
        (status = 503, description = "No node to capture", body = ErrorBody)))]
/// Starts a capture: one writer per node, finalised by the orchestrator.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<CreateCaptureRequest>,
) -> Result<(StatusCode, Json<CaptureView>), ApiError> {
    state.require_admin(&headers)?;
    let limits = checked_limits(&request)?;
    let targets = targets(&state, &request)?;
    let now = now_ms();
    let capture_id = crate::auth::generate_token("cap_")[..20].to_owned();
    let filters = serde_json::to_string(&request.filters).unwrap_or_else(|_| "{}".to_owned());
    let record = CaptureRecord {
        id: capture_id.clone(),
        status: CaptureStatus::Running,
        termination_reason: None,
        // A fan-out that found one node is a plain single-node capture.
        fan_out: request.fan_out && targets.len() > 1,
        filters,
        duration_ms: limits.duration_ms,
        max_lines: request
            .max_lines
            .map(|value| i64::try_from(value).unwrap_or(i64::MAX)),
        max_bytes: request
            .max_bytes
            .map(|value| i64::try_from(value).unwrap_or(i64::MAX)),
        created_at: now,
        ended_at: None,
    };
    let segments: Vec<SegmentRecord> = targets
        .iter()
        .map(|(node_id, agent)| SegmentRecord {
            capture_id: capture_id.clone(),
            node_id: node_id.clone(),
            address: agent
                .as_ref()
                .map(|agent| agent.base_url().to_owned())
                .unwrap_or_default(),
            status: CaptureStatus::Running,
            termination_reason: None,
            byte_count: 0,
            line_count: 0,
            last_sequence: None,
            lines_missing: 0,
            ended_at: None,
        })
        .collect();
    // Stored first, then run, in a task of its own: a client that hangs up cannot leave a
    // stored capture without its driver.
    let running_state = state.clone();
    let stored = (record.clone(), segments.clone());
    let request_filters = request.filters.clone();
    crate::error::run_to_completion("capture start", async move {
        let state = running_state;
        let (record, segments) = stored;
        // Claimed before it is stored, so the resume duty never takes it for an orphan.
        let claim = state.captures().claim(&record.id).ok_or_else(|| {
            ApiError::new(ErrorCode::Conflict, format!("capture {} exists", record.id))
        })?;
        if let Err(error) = state.store().insert_capture(&record, &segments).await {
            state.captures().release(&record.id);
            return Err(error.into());
        }
        let store = state.store().clone();
        let capture_id = record.id.clone();
        state
            .captures()
            .spawn_driver(claim, |tail, stop, abandon| driver::Driver {
                store,
                capture_id,
                targets: targets
                    .into_iter()
                    .map(|(node_id, agent)| driver::Target {
                        node_id,
                        agent,
                        resume: None,
                    })
                    .collect(),
                filters: request_filters,
                limits,
                tail,
                stop,
                abandon,
                resumed: None,
            });
        Ok(())
    })
    .await?;
    tracing::info!(%capture_id, nodes = segments.len(), fan_out = record.fan_out, "[capture] capture started");
    Ok((StatusCode::CREATED, Json(view(&record, &segments))))
}

async fn load(state: &AppState, id: &str) -> Result<CaptureView, ApiError> {
    let record = state
        .store()
        .get_capture(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("capture {id} not found")))?;
    let segments = state.store().capture_segments(id).await?;
    Ok(view(&record, &segments))
}

#[utoipa::path(get, path = "/api/v1/captures", tag = "captures",
    security(("bearer" = [])),
    responses((status = 200, description = "Newest first", body = CaptureList)))]
/// The newest 100 captures.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<CaptureList>, ApiError> {
    state.require_admin(&headers)?;
    let records = state.store().list_captures(100).await?;
    let mut captures = Vec::with_capacity(records.len());
    for record in &records {
        let segments = state.store().capture_segments(&record.id).await?;
        captures.push(view(record, &segments));
    }
    Ok(Json(CaptureList { captures }))
}

#[utoipa::path(get, path = "/api/v1/captures/{id}", tag = "captures",
    params(("id" = String, Path, description = "Capture id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The capture with its node_segments", body = CaptureView),
        (status = 404, description = "Unknown capture", body = ErrorBody)))]
/// One capture with its segments.
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<CaptureView>, ApiError> {
    state.require_admin(&headers)?;
    Ok(Json(load(&state, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/captures/{id}/stop", tag = "captures",
    params(("id" = String, Path, description = "Capture id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stopped and finalised", body = CaptureView),
        (status = 404, description = "Unknown capture", body = ErrorBody),
        (status = 409, description = "The capture has ended already", body = ErrorBody)))]
/// Stops every writer of a running capture and answers it once finalised.
pub async fn stop(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<CaptureView>, ApiError> {
    state.require_admin(&headers)?;
    let current = load(&state, &id).await?;
    if current.status != CaptureStatusWire::Running {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "capture {id} has ended already ({})",
                current.status.as_str()
            ),
        ));
    }
    let Some(running) = state.captures().get(&id) else {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("capture {id} is not run by this server"),
        ));
    };
    let _ = running.stop.try_send(());
    // Writers flush and end within moments; the answer waits for the finalised capture.
    let _ = tokio::time::timeout(Duration::from_secs(20), running.ended.cancelled()).await;
    Ok(Json(load(&state, &id).await?))
}

/// `?node=&after=` of a download.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LinesQuery {
    /// Only this node's lines.
    pub node: Option<String>,
    /// Only lines after this node sequence number (with `node`).
    pub after: Option<u64>,
}

fn ndjson(body: Body) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

#[utoipa::path(get, path = "/api/v1/captures/{id}/lines", tag = "captures",
    params(("id" = String, Path, description = "Capture id"), LinesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "NDJSON: the stored lines, each marked with its node, node by node in sequence", content_type = "application/x-ndjson"),
        (status = 404, description = "Unknown capture", body = ErrorBody)))]
/// The stored lines of a capture, streamed from the store page by page.
pub async fn lines(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LinesQuery>,
) -> Result<Response, ApiError> {
    state.require_admin(&headers)?;
    if query.after.is_some() && query.node.is_none() {
        return Err(ApiError::invalid("after: give node with after"));
    }
    load(&state, &id).await?;
    let store = state.store().clone();
    let after_sequence = query
        .after
        .map(|after| i64::try_from(after).unwrap_or(i64::MAX));
    let node = query.node;
    let pages = futures::stream::unfold(
        (Some((String::new(), -1_i64)), false),
        move |(cursor, first_done)| {
            let store = store.clone();
            let id = id.clone();
            let node = node.clone();
            async move {
                let cursor = cursor?;
                let after = first_done.then_some((cursor.0.as_str(), cursor.1));
                let chunks = match store
                    .capture_chunks(&id, node.as_deref(), after, CHUNKS_PER_PAGE)
                    .await
                {
                    Ok(chunks) => chunks,
                    Err(error) => {
                        tracing::warn!(capture_id = %id, %error, "[capture] download stopped by a store failure");
                        return Some((Err(std::io::Error::other(error.to_string())), (None, true)));
                    }
                };
                let next = chunks
                    .last()
                    .filter(|_| chunks.len() == CHUNKS_PER_PAGE as usize)
                    .map(|last| (last.node_id.clone(), last.sequence));
                let mut out = String::new();
                for chunk in &chunks {
                    match after_sequence {
                        Some(after) if chunk.last_sequence <= after => {}
                        Some(after) if chunk.first_sequence <= after => {
                            for line in chunk.data.lines() {
                                let sequence = serde_json::from_str::<SeqOnly>(line)
                                    .map_or(i64::MAX, |seq| seq.seq);
                                if sequence > after {
                                    out.push_str(line);
                                    out.push('\n');
                                }
                            }
                        }
                        _ => out.push_str(&chunk.data),
                    }
                }
                if chunks.is_empty() {
                    return None;
                }
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(out)), (next, true)))
            }
        },
    );
    Ok(ndjson(Body::from_stream(pages)))
}

#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: i64,
}

/// `?node=` of a tail.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TailQuery {
    /// Only this node's lines.
    pub node: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/captures/{id}/tail", tag = "captures",
    params(("id" = String, Path, description = "Capture id"), TailQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "NDJSON: live lines of every node interleaved as they arrive, each marked with its node, until the capture ends", content_type = "application/x-ndjson"),
        (status = 404, description = "Unknown capture", body = ErrorBody),
        (status = 409, description = "The capture has ended (download its lines)", body = ErrorBody)))]
/// The live lines of a running capture.
pub async fn tail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<TailQuery>,
) -> Result<Response, ApiError> {
    state.require_admin(&headers)?;
    let current = load(&state, &id).await?;
    let running = state
        .captures()
        .get(&id)
        .filter(|_| current.status == CaptureStatusWire::Running);
    let Some(running) = running else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("capture {id} is not running here; download its lines instead"),
        ));
    };
    let receiver = running.tail.subscribe();
    let ended = running.ended.clone();
    let node = query.node;
    let stream = futures::stream::unfold(
        (receiver, ended, node, 0_u64),
        |(mut receiver, ended, node, mut dropped)| async move {
            // Counted from the last chunk sent, so lines of other nodes do not hold it off.
            let keep_alive = tokio::time::sleep(TAIL_KEEP_ALIVE);
            tokio::pin!(keep_alive);
            loop {
                let received = tokio::select! {
                    () = ended.cancelled() => return None,
                    received = receiver.recv() => received,
                    () = &mut keep_alive => {
                        let alive = Ok::<Bytes, std::io::Error>(Bytes::from_static(b"\n"));
                        return Some((alive, (receiver, ended, node, dropped)));
                    }
                };
                match received {
                    Ok(line) => {
                        if node.as_deref().is_some_and(|wanted| wanted != line.0) {
                            continue;
                        }
                        let mut out = String::new();
                        if dropped > 0 {
                            out.push_str(&format!(
                                "{{\"node\":\"*\",\"kind\":\"dropped\",\"dropped\":{dropped},\"message\":\"dropped: {dropped}\"}}\n"
                            ));
                            dropped = 0;
                        }
                        out.push_str(&line.2);
                        // What else is there already goes in the same chunk: one HTTP chunk per
                        // line cannot keep up with busy nodes (the tail would lag and drop).
                        for _ in 1..TAIL_LINES_PER_CHUNK {
                            match receiver.try_recv() {
                                Ok(more) => {
                                    if node.as_deref().is_none_or(|wanted| wanted == more.0) {
                                        out.push_str(&more.2);
                                    }
                                }
                                Err(broadcast::error::TryRecvError::Lagged(count)) => {
                                    dropped += count;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        return Some((
                            Ok::<Bytes, std::io::Error>(Bytes::from(out)),
                            (receiver, ended, node, dropped),
                        ));
                    }
                    Err(broadcast::error::RecvError::Lagged(count)) => dropped += count,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(ndjson(Body::from_stream(stream)))
}
