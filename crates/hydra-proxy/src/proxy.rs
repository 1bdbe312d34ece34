//! The reverse proxy in front of session processes: `/session/{id}/...` to the session's port,
//! byte for byte, WebSocket upgrades included (hyper-util client, `hyper::upgrade` on both sides
//! and `copy_bidirectional`, so subprotocols and frames pass untouched). HTML answers go through
//! [`crate::inject`]. Every exchange counts as one active connection of its session while it is
//! open.
//!
//! Also used by the server's colocated mode, which forwards `/session/` to the local worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri};
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::inject::{PageContext, inject};

/// Longest wait for the session process to answer a request's head.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that belong to one hop and are not forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// One proxied exchange.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The session process (or colocated worker) to send it to.
    pub target: SocketAddr,
    /// Path and query to ask the target for.
    pub path_and_query: String,
    /// The path prefix the browser sees (`/session/{id}`), sent as `X-Forwarded-Prefix`.
    pub prefix: String,
    /// Inject the session script into HTML answers.
    pub inject: Option<PageContext>,
    /// The session's connection counter.
    pub connections: Option<Arc<AtomicU32>>,
    /// What the log calls the session.
    pub session_id: String,
}

/// The proxy: a pooled HTTP/1 client and the tasks that carry upgraded connections.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Proxy")
            .field("upgraded_connections", &self.tasks.len())
            .finish()
    }
}

impl Proxy {
    /// A proxy whose upgraded connections end when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Proxy {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            tasks: TaskTracker::new(),
            shutdown,
        }
    }

    /// Waits until every upgraded connection has ended (after `shutdown`).
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Sends `request` to `forward.target` and answers with what it answers.
    pub async fn forward(&self, mut request: Request<Body>, forward: Forward) -> Response<Body> {
        let guard = ConnectionGuard::new(forward.connections.clone());
        let upgrade = wants_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let upstream = match self.upstream_request(request, &forward, upgrade) {
            Ok(upstream) => upstream,
            Err(message) => {
                return error_answer(StatusCode::BAD_REQUEST, "invalid_request", &message);
            }
        };
        let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, self.client.request(upstream)).await;
        let mut response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                let session_id = &forward.session_id;
                tracing::warn!(%session_id, target = %forward.target, error = %error_chain(&error), "[proxy] session process does not answer");
                return error_answer(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    &format!("session {session_id} does not answer"),
                );
            }
            Err(_) => {
                let session_id = &forward.session_id;
                tracing::warn!(%session_id, "[proxy] session process did not answer in time");
                return error_answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    "bad_gateway",
                    &format!("session {session_id} did not answer within 30 s"),
                );
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return error_answer(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the session switched protocols without being asked",
                );
            };
            self.splice_upgrade(client_upgrade, &mut response, guard, &forward.session_id);
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, Body::empty());
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let html = is_html(&parts.headers);
        let upstream_body = Box::pin(body.into_data_stream());
        let body = match forward.inject.as_ref().filter(|_| html) {
            Some(context) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                let rewritten = inject(upstream_body, context);
                Body::from_stream(rewritten.map(move |chunk| {
                    let _keep = &guard;
                    chunk
                }))
            }
            None => Body::from_stream(upstream_body.map(move |chunk| {
                let _keep = &guard;
                chunk
            })),
        };
        Response::from_parts(parts, body)
    }

    /// Joins the client's and the session's upgraded connections (a WebSocket) in a task of
    /// its own until either side closes or the proxy shuts down; `guard` counts it meanwhile.
    fn splice_upgrade(
        &self,
        client_upgrade: hyper::upgrade::OnUpgrade,
        response: &mut Response<hyper::body::Incoming>,
        guard: ConnectionGuard,
        session_id: &str,
    ) {
        let upstream_upgrade = hyper::upgrade::on(response);
        let shutdown = self.shutdown.clone();
        let session_id = session_id.to_owned();
        self.tasks.spawn(async move {
            let _guard = guard;
            let (client_side, upstream_side) =
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%session_id, %error, "[proxy] websocket upgrade failed");
                        return;
                    }
                };
            let mut client_io = TokioIo::new(client_side);
            let mut upstream_io = TokioIo::new(upstream_side);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                outcome = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io) => {
                    if let Err(error) = outcome {
                        tracing::debug!(%session_id, %error, "[proxy] websocket ended with an error");
                    }
                }
            }
        });
    }

    fn upstream_request(
        &self,
        request: Request<Body>,
        forward: &Forward,
        upgrade: bool,
    ) -> Result<Request<Body>, String> {
        let (mut parts, body) = request.into_parts();
        let uri: Uri = format!("http://{}{}", forward.target, forward.path_and_query)
            .parse()
            .map_err(|error| format!("invalid path: {error}"))?;
        let original_host = parts.headers.get(header::HOST).cloned();
        if !upgrade {
            strip_hop_by_hop(&mut parts.headers);
        }
        if forward.inject.is_some() {
            // Only identity bodies can be rewritten on the fly.
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if let Ok(prefix) = HeaderValue::from_str(&forward.prefix) {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-prefix"), prefix);
        }
        if let Some(host) = original_host {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        parts.uri = uri;
        parts.version = axum::http::Version::HTTP_11;
        Ok(Request::from_parts(parts, body))
    }
}

/// Whether an answer is an HTML page (the one kind the proxy rewrites).
fn is_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("text/html")
        })
}

/// Raises a session's connection count for as long as it lives.
struct ConnectionGuard(Option<Arc<AtomicU32>>);

impl ConnectionGuard {
    fn new(counter: Option<Arc<AtomicU32>>) -> ConnectionGuard {
        if let Some(counter) = &counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        ConnectionGuard(counter)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(counter) = &self.0 {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether the request asks for a protocol switch (`Connection: upgrade` and `Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// `{"error": code, "message": message}` with `status`.
pub fn error_answer(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

/// `error` and its sources, joined with `: ` (as anyhow's `{:#}` prints them): one line for a
/// log field or a command's last words.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
