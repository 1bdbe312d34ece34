//! Fan-out captures (issue 12): the server's capture API and the streams it answers with (lines
//! of a stored capture, a live tail), and an agent's monitor feed for the server's writers.

use std::time::Duration;

use hydra_api::captures::{CaptureList, CaptureView, CreateCaptureRequest, MonitorFilters};
use reqwest::Method;

use crate::client::{Call, Kind};
use crate::error::describe_transport;
use crate::{AgentClient, Client, ClientError};

/// A streamed NDJSON answer, read chunk by chunk: no size cap and no overall timeout (a tail
/// lasts as long as its capture), but each chunk must come within the idle timeout, so a
/// stalled stream ends with an error instead of hanging.
#[derive(Debug)]
pub struct LineStream {
    response: reqwest::Response,
    url: String,
    idle_timeout: Duration,
}

impl LineStream {
    /// The next bytes of the stream; `None` at its end. A broken stream, or one that sent
    /// nothing (not even a keep-alive) for the idle timeout, is [`ClientError::Unreachable`].
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        let idle_timeout = self.idle_timeout;
        match tokio::time::timeout(idle_timeout, self.response.chunk()).await {
            Ok(chunk) => chunk.map_err(|error| ClientError::Unreachable {
                replicas: vec![self.url.clone()],
                last_error: describe_transport(&error),
            }),
            Err(_) => Err(ClientError::Unreachable {
                replicas: vec![self.url.clone()],
                last_error: format!(
                    "the stream stalled: nothing received for {idle_timeout:?} (its idle timeout)"
                ),
            }),
        }
    }

    /// The same stream with another idle timeout (the longest wait for its next chunk).
    pub fn with_idle_timeout(self, idle_timeout: Duration) -> LineStream {
        LineStream {
            idle_timeout,
            ..self
        }
    }
}

/// Opens a streamed GET on `url` with `token`: the answer's head within `open_timeout` (connect
/// and first byte), then the body read as it comes, each chunk within `idle_timeout`; a refusal
/// is decoded as the SDK's other errors. The request has no overall timeout: the shared HTTP
/// clients set none, each plain call sets its own.
async fn open_stream(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    open_timeout: Duration,
    idle_timeout: Duration,
) -> Result<LineStream, ClientError> {
    let mut request = http.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(open_timeout, request.send())
        .await
        .map_err(|_| ClientError::Unreachable {
            replicas: vec![url.clone()],
            last_error: format!("no answer within {open_timeout:?}"),
        })?
        .map_err(|error| ClientError::Unreachable {
            replicas: vec![url.clone()],
            last_error: describe_transport(&error),
        })?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let body = response.bytes().await.unwrap_or_default();
        return Err(ClientError::from_answer(&url, status, &body));
    }
    Ok(LineStream {
        response,
        url,
        idle_timeout,
    })
}

impl AgentClient {
    /// `GET /api/v1/monitor` on the agent: its monitor feed, filtered, as NDJSON lines
    /// (`hydra_api::captures::MonitorLine`; an empty line is a keep-alive).
    pub async fn monitor(&self, filters: &MonitorFilters) -> Result<LineStream, ClientError> {
        self.monitor_after(filters, None).await
    }

    /// As [`AgentClient::monitor`], but a returning reader's: with `after`, the feed starts with
    /// the lines past that sequence number that the agent still keeps (a `dropped: N` line first
    /// for those it no longer has).
    pub async fn monitor_after(
        &self,
        filters: &MonitorFilters,
        after: Option<u64>,
    ) -> Result<LineStream, ClientError> {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/monitor", self.base_url()))
            .map_err(|error| ClientError::Config(format!("bad agent URL: {error}")))?;
        {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in [
                ("level", &filters.level),
                ("session", &filters.session),
                ("contains", &filters.contains),
            ] {
                if let Some(value) = value {
                    pairs.append_pair(name, value);
                }
            }
            if let Some(after) = after {
                pairs.append_pair("after", &after.to_string());
            }
        }
        let url = url.to_string();
        let url = url.trim_end_matches('?').to_owned();
        open_stream(
            &self.stream_http(),
            url,
            self.token(),
            self.timeout(),
            crate::agent::STREAM_IDLE_TIMEOUT,
        )
        .await
    }
}

impl Client {
    /// `POST /api/v1/captures` (admin): starts a capture of one node or, with `fan_out`, of every
    /// online node. Not retried once it may have reached the server (a second capture would
    /// start).
    pub async fn create_capture(
        &self,
        request: &CreateCaptureRequest,
    ) -> Result<CaptureView, ClientError> {
        let call = Call::new(Method::POST, Kind::Write, &["captures"]).with_json(request)?;
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/captures` (admin): the newest captures first.
    pub async fn list_captures(&self) -> Result<CaptureList, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["captures"]);
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/captures/{id}` (admin): one capture with its `node_segments`.
    pub async fn capture(&self, id: &str) -> Result<CaptureView, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["captures", id]);
        self.execute(&call).await?.json()
    }

    /// `POST /api/v1/captures/{id}/stop` (admin): stops every writer and answers the finalised
    /// capture; [`ClientError::Conflict`] when it had ended already.
    pub async fn stop_capture(&self, id: &str) -> Result<CaptureView, ClientError> {
        let call = Call::new(
            Method::POST,
            Kind::IdempotentWrite,
            &["captures", id, "stop"],
        );
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/captures/{id}/lines?node=&after=` (admin, from the master): the stored lines,
    /// streamed as NDJSON (`hydra_api::captures::CapturedLine`).
    pub async fn capture_lines(
        &self,
        id: &str,
        node: Option<&str>,
        after: Option<u64>,
    ) -> Result<LineStream, ClientError> {
        let mut query = Vec::new();
        if let Some(node) = node {
            query.push(("node", node.to_owned()));
        }
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        self.stream_from_master(&["captures", id, "lines"], query)
            .await
    }

    /// `GET /api/v1/captures/{id}/tail?node=` (admin, from the master): the live lines of every
    /// node (or one), interleaved as they arrive, until the capture ends.
    pub async fn tail_capture(
        &self,
        id: &str,
        node: Option<&str>,
    ) -> Result<LineStream, ClientError> {
        let query = node
            .map(|node| vec![("node", node.to_owned())])
            .unwrap_or_default();
        self.stream_from_master(&["captures", id, "tail"], query)
            .await
    }

    async fn stream_from_master(
        &self,
        segments: &[&str],
        query: Vec<(&'static str, String)>,
    ) -> Result<LineStream, ClientError> {
        let master = self.discover_master().await?;
        let call = Call::new(Method::GET, Kind::Read, segments).with_query(query);
        let url = call.stream_url(&master)?;
        open_stream(
            &self.stream_http(),
            url,
            self.token(),
            self.request_timeout(),
            self.stream_idle_timeout(),
        )
        .await
    }
}
