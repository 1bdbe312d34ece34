//! The capture routes (`/api/v1/captures...`): start, list, show, stop, the stored lines and the
//! live tail; the orchestration lives in `crate::captures`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hydra_api::captures::{CaptureList, CaptureStatusWire, CaptureView, CreateCaptureRequest};
use hydra_api::system::now_ms;
use hydra_api::{ErrorBody, ErrorCode};
use hydra_core::NodeStatus;
use hydra_core::capture::CaptureStatus;
use hydra_proxy::extract::{Json, Path, Query};
use hydra_store::{CaptureRecord, SegmentRecord};
use tokio::sync::broadcast;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::captures::{
    CHUNKS_PER_PAGE, TAIL_KEEP_ALIVE, TAIL_LINES_PER_CHUNK, checked_limits, driver, view,
};
use crate::error::{ApiError, store_error};
use crate::state::AppState;

/// The capture routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(stop))
        .routes(routes!(lines))
        .routes(routes!(tail))
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
    let (record, segments) = new_records(&request, &targets, limits.duration_ms);
    let capture_id = record.id.clone();
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
            return Err(store_error(error));
        }
        let store = state.store().clone();
        let capture_id = record.id.clone();
        state
            .captures()
            .spawn_driver(claim, |tail, stop, abandon| driver::Driver {
                store,
                chunks: state.chunk_writes().clone(),
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

/// The new capture's record and one `running` segment per target node, under a fresh id.
fn new_records(
    request: &CreateCaptureRequest,
    targets: &[(String, Option<hydra_client::AgentClient>)],
    duration_ms: Option<i64>,
) -> (CaptureRecord, Vec<SegmentRecord>) {
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
        duration_ms,
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
    (record, segments)
}

async fn load(state: &AppState, id: &str) -> Result<CaptureView, ApiError> {
    let record = state
        .store()
        .get_capture(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("capture {id} not found")))?;
    let segments = state
        .store()
        .capture_segments(id)
        .await
        .map_err(store_error)?;
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
    let records = state
        .store()
        .list_captures(100)
        .await
        .map_err(store_error)?;
    let mut captures = Vec::with_capacity(records.len());
    for record in &records {
        let segments = state
            .store()
            .capture_segments(&record.id)
            .await
            .map_err(store_error)?;
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
    running.request_stop();
    // Writers flush and end within moments; the answer waits for the finalised capture.
    let _ = tokio::time::timeout(Duration::from_secs(20), running.ended().cancelled()).await;
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
    let receiver = running.subscribe_tail();
    let ended = running.ended();
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
