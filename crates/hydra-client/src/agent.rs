//! The agent client: how the control plane (start, list and end a session on a worker) and
//! `hydra status` (health, status) talk to one node's agent, with one timeout rule and the
//! SDK's one error decoding ([`ClientError`]).
//!
//! Unlike [`crate::Client`] it talks to one base URL and never retries: a worker that does not
//! answer is the caller's decision (the server tries the next worker).

use std::sync::OnceLock;
use std::time::Duration;

use hydra_api::agent::{AgentHealth, AgentStatus};
use hydra_api::{StartSessionRequest, WorkerSession, WorkerSessionList};
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::ClientError;
use crate::error::describe_transport;

/// Longest wait for an answer unless [`AgentClient::with_timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait for the next chunk of an agent's stream (its monitor feed sends a
/// keep-alive every 5 s).
pub(crate) const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One agent's local API (`/api/v1/...` on its listen address).
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    timeout: Duration,
}

/// The HTTP client every [`AgentClient`] shares: no redirects (an agent never sends one, and a
/// redirect would carry the token elsewhere), a short connect timeout; each call sets its own
/// overall timeout.
fn shared_http() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        })
        .clone()
}

impl AgentClient {
    /// The agent at `base_url` (e.g. `http://10.0.0.5:7071`), with its `api_token` or the key a
    /// worker reported, if any (an empty token counts as none).
    pub fn new(base_url: &str, token: Option<&str>) -> AgentClient {
        AgentClient {
            http: shared_http(),
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.filter(|token| !token.is_empty()).map(str::to_owned),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same agent with another overall timeout per call (a session start waits longer).
    pub fn with_timeout(mut self, timeout: Duration) -> AgentClient {
        self.timeout = timeout;
        self
    }

    /// The HTTP client, for streamed answers (which set no overall timeout).
    pub(crate) fn stream_http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// The bearer token calls carry, if any.
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The timeout of one call (a stream's answer head must come within it).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The base URL calls go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /api/v1/health`: counts without a token, every session with one.
    pub async fn health(&self) -> Result<AgentHealth, ClientError> {
        self.call(Method::GET, "health", None).await
    }

    /// `GET /api/v1/status`: what `hydra status` prints.
    pub async fn status(&self) -> Result<AgentStatus, ClientError> {
        self.call(Method::GET, "status", None).await
    }

    /// `GET /api/v1/cluster`: the peer mesh as the agent sees it (members with a token).
    pub async fn cluster(&self) -> Result<hydra_api::cluster::ClusterStatus, ClientError> {
        self.call(Method::GET, "cluster", None).await
    }

    /// `POST /api/v1/sessions`: starts a session on a worker; its refusal (body unreachable,
    /// full) comes back as the agent's error code and message.
    pub async fn start_session(
        &self,
        request: &StartSessionRequest,
    ) -> Result<WorkerSession, ClientError> {
        let body = serde_json::to_vec(request).map_err(|error| {
            ClientError::Config(format!("cannot encode the session start: {error}"))
        })?;
        self.call(Method::POST, "sessions", Some(body)).await
    }

    /// `GET /api/v1/sessions`: every session the worker knows.
    pub async fn list_sessions(&self) -> Result<WorkerSessionList, ClientError> {
        self.call(Method::GET, "sessions", None).await
    }

    /// `DELETE /api/v1/sessions/{id}`: ends a session; [`ClientError::NotFound`] when the worker
    /// does not know it (which for a caller that wants it gone is as good).
    pub async fn end_session(&self, id: &str) -> Result<WorkerSession, ClientError> {
        self.call(Method::DELETE, &format!("sessions/{id}"), None)
            .await
    }

    /// `POST /api/v1/sessions/{id}/notice`: the session's page shows that its stream ends in
    /// `ends_in_s` seconds.
    pub async fn notice_session(
        &self,
        id: &str,
        notice: &hydra_api::SessionNotice,
    ) -> Result<hydra_api::SessionNotice, ClientError> {
        let body = serde_json::to_vec(notice)
            .map_err(|error| ClientError::Config(format!("cannot encode the notice: {error}")))?;
        self.call(Method::POST, &format!("sessions/{id}/notice"), Some(body))
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let url = format!("{}/api/v1/{path}", self.base);
        let is_read = method == Method::GET;
        let mut request = self.http.request(method, &url).timeout(self.timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = json {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        // A write that may have reached the agent is indeterminate, not unreachable: the caller
        // must not assume it did nothing.
        let transport = |error: reqwest::Error| {
            if is_read || error.is_connect() {
                ClientError::Unreachable {
                    replicas: vec![self.base.clone()],
                    last_error: describe_transport(&error),
                }
            } else {
                ClientError::Indeterminate {
                    url: url.clone(),
                    detail: describe_transport(&error),
                }
            }
        };
        let answer = request.send().await.map_err(transport)?;
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(ClientError::from_answer(&url, status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Decode {
            url: url.clone(),
            detail: error.to_string(),
        })
    }
}
