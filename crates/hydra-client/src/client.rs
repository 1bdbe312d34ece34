//! The client: one HTTP connection pool over every replica, master discovery, routing of reads
//! and writes, and the retry loop around each call.
//!
//! Routing: writes go to the cached master (found through `GET /api/v1/check-master` on every
//! replica at once); reads go to the replica that answered last, then the others in turn. A
//! transport failure of the cached master clears it. A write that may have reached the server is
//! retried only when it is idempotent.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hydra_api::CheckMaster;
use reqwest::Method;

pub(crate) use crate::call::{Answer, Call, Kind, TransportError};
use crate::error::describe_transport;
use crate::replicas::{Replicas, normalise_base_url};
use crate::retry::{Failure, RetryPolicy, with_retries};
use crate::{ClientError, ReplicaStatus};

mod exchange;

/// Redirects to a master followed within one attempt before giving up on it.
const MAX_MASTER_HOPS: usize = 3;

/// How to build a [`Client`].
#[derive(Clone)]
pub struct ClientConfig {
    /// Base URL of every replica, e.g. `http://127.0.0.1:7070`.
    pub replicas: Vec<String>,
    /// Bearer token sent with every request (the admin token, or a node's own token).
    pub token: Option<String>,
    /// Timeout of one request, connection included; for a streamed answer (a capture's tail
    /// or lines), of its head only.
    pub request_timeout: Duration,
    /// The longest wait for the next chunk of a streamed answer (the server's streams send a
    /// keep-alive every few seconds); a stream has no overall timeout.
    pub stream_idle_timeout: Duration,
    /// Timeout of establishing a TCP connection.
    pub connect_timeout: Duration,
    /// How each call is retried.
    pub retry: RetryPolicy,
    /// A replica counts as healthy while its last answer is younger than this (twice the
    /// agent's health-check interval).
    pub healthy_window: Duration,
}

impl ClientConfig {
    /// Defaults for `replicas`: no token, 10 s per request, 30 s of silence in a stream, 2 s to
    /// connect, the default retry policy, a 120 s healthy window.
    pub fn new<Url: Into<String>>(replicas: impl IntoIterator<Item = Url>) -> ClientConfig {
        ClientConfig {
            replicas: replicas.into_iter().map(Into::into).collect(),
            token: None,
            request_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            healthy_window: Duration::from_secs(120),
        }
    }

    /// The same configuration with a bearer token.
    pub fn with_token(self, token: impl Into<String>) -> ClientConfig {
        ClientConfig {
            token: Some(token.into()),
            ..self
        }
    }

    /// The same configuration with another retry policy.
    pub fn with_retry(self, retry: RetryPolicy) -> ClientConfig {
        ClientConfig { retry, ..self }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ClientConfig")
            .field("replicas", &self.replicas)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("healthy_window", &self.healthy_window)
            .finish()
    }
}

/// A handle on the control plane; cheap to clone, clones share the connection pool and what
/// is known about the replicas (the cached master among it).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub(crate) replicas: Arc<Replicas>,
    token: Option<Arc<str>>,
    request_timeout: Duration,
    stream_idle_timeout: Duration,
    retry: RetryPolicy,
    /// The highest change-feed revision a write through this client (or a clone) was answered
    /// with; reads pass it as `min_revision`, so they see the client's own writes on any
    /// replica (0: nothing written yet).
    written_revision: Arc<std::sync::atomic::AtomicI64>,
    /// The feed (database) `written_revision` counts in, from the answer that raised it.
    written_feed: Arc<std::sync::Mutex<Option<String>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Client")
            .field("replicas", &self.replicas.urls())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("retry", &self.retry)
            .finish()
    }
}

impl Client {
    /// A client over `config.replicas`; fails on an empty list or a URL that is not http(s).
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let replicas = Replicas::new(&config.replicas, config.healthy_window)?;
        // No overall timeout here: it would cut every streamed body (a capture's tail) at
        // `request_timeout`; each plain call sets its own (`send_once`), a stream its idle one.
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hydra-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ClientError::Config(describe_transport(&error)))?;
        Ok(Client {
            http,
            replicas: Arc::new(replicas),
            token: config.token.map(Arc::from),
            request_timeout: config.request_timeout,
            stream_idle_timeout: config.stream_idle_timeout,
            retry: config.retry,
            written_revision: Arc::default(),
            written_feed: Arc::default(),
        })
    }

    /// A handle sharing this one's pool and replica knowledge, with another bearer token (a
    /// node heartbeating with its own token).
    pub fn with_token(&self, token: impl Into<String>) -> Client {
        Client {
            token: Some(Arc::from(token.into())),
            ..self.clone()
        }
    }

    /// A handle sharing this one's pool and replica knowledge, with another retry policy (a
    /// caller's own attempt bound or deadline for some calls).
    pub fn with_retry(&self, retry: RetryPolicy) -> Client {
        Client {
            retry,
            ..self.clone()
        }
    }

    /// The retry policy calls through this handle use.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The highest revision this client's writes were answered with (0: none yet): its reads
    /// ask replicas to have reached it (`min_revision`).
    pub fn written_revision(&self) -> i64 {
        self.written_revision
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every replica base URL: the configured ones, then the learned ones (see `replicas.rs`).
    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas.urls()
    }

    /// The cached master, if one is known.
    pub fn master_url(&self) -> Option<String> {
        self.replicas.master()
    }

    /// Replaces the cached master (the agent's health checker noticed a change); the URL is
    /// normalised like a configured one.
    pub fn set_master_url(&self, url: &str) -> Result<(), ClientError> {
        self.replicas.set_master(normalise_base_url(url)?);
        Ok(())
    }

    /// Makes the client follow only replicas of `cluster` (the agent learned it at its first
    /// contact): master discovery skips a replica whose `check-master` names another cluster,
    /// and counts it failed. `None` takes any replica again. Clones share it.
    pub fn set_cluster_id(&self, cluster: Option<String>) {
        self.replicas.set_cluster(cluster);
    }

    /// The cluster set by [`Client::set_cluster_id`], if any.
    pub fn cluster_id(&self) -> Option<String> {
        self.replicas.cluster()
    }

    /// Whether `check` comes from a replica of another cluster than the one set.
    fn is_foreign(&self, check: &CheckMaster) -> bool {
        hydra_core::health::membership(
            self.replicas.cluster().as_deref(),
            check.cluster_id.as_deref(),
        ) == hydra_core::health::Membership::Foreign
    }

    /// Clears the cached master; the next write discovers it again.
    pub fn forget_master(&self) {
        self.replicas.forget_master();
    }

    /// What the client knows of every replica now, without asking them.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        self.replicas.statuses()
    }

    /// Asks every replica for `check-master` (at once), updates the cached master (cleared when
    /// none is found) and the replicas' health, and returns the new view.
    pub async fn refresh_replicas(&self) -> Vec<ReplicaStatus> {
        if let Err(error) = self.discover_master_within(self.request_timeout).await {
            tracing::debug!(%error, "[client] no master found while refreshing replicas");
            self.replicas.forget_master();
        }
        self.replicas.statuses()
    }

    /// The HTTP client, for streamed answers (which set no overall timeout).
    pub(crate) fn stream_http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// The bearer token calls carry, if any.
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The timeout of one request.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The longest wait for the next chunk of a streamed answer.
    pub(crate) fn stream_idle_timeout(&self) -> Duration {
        self.stream_idle_timeout
    }

    /// Finds the master now, ignoring the cache: a replica that says `is_master` wins; else the
    /// `master_url` a non-master gives (unless that replica just failed to answer).
    pub async fn discover_master(&self) -> Result<String, ClientError> {
        self.discover_master_within(self.request_timeout).await
    }

    /// `GET /api/v1/replicas`: every replica of the control plane as the server sees it (id,
    /// advertised URL, master, healthy), from whichever replica answers.
    pub async fn list_replicas(&self) -> Result<Vec<hydra_api::ReplicaInfo>, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["replicas"]);
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/check-master` on one replica (no retry, no failover). The answer is given
    /// as it came; one naming another cluster than the one set counts the replica failed.
    pub async fn check_master(&self, base_url: &str) -> Result<CheckMaster, ClientError> {
        let base = normalise_base_url(base_url)?;
        self.check_master_at(&base, self.request_timeout).await
    }

    async fn check_master_at(
        &self,
        base: &str,
        timeout: Duration,
    ) -> Result<CheckMaster, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["check-master"]);
        match self.send_once(base, &call, timeout).await {
            Err(error) => {
                self.replicas.mark_failed(base);
                Err(ClientError::Unreachable {
                    replicas: vec![base.to_owned()],
                    last_error: error.detail,
                })
            }
            Ok(answer) => {
                let transient = answer.is_transient();
                let check = answer
                    .into_success()
                    .and_then(|answer| answer.json::<CheckMaster>());
                if transient || check.as_ref().is_ok_and(|check| self.is_foreign(check)) {
                    self.replicas.mark_failed(base);
                } else {
                    self.replicas.mark_ok(base, false);
                    if let Ok(CheckMaster {
                        replica_id: Some(id),
                        ..
                    }) = &check
                    {
                        self.replicas.note_id(base, id);
                    }
                }
                check
            }
        }
    }

    async fn discover_master_within(&self, timeout: Duration) -> Result<String, ClientError> {
        let urls = self.replicas.urls();
        let answers =
            futures::future::join_all(urls.iter().map(|base| self.check_master_at(base, timeout)))
                .await;
        let mut pointers: Vec<String> = Vec::new();
        let mut answered: Vec<String> = Vec::new();
        let mut silent: Vec<String> = Vec::new();
        let mut refusal: Option<ClientError> = None;
        let mut last_error: Option<String> = None;
        for (base, answer) in urls.iter().zip(answers) {
            match answer {
                // Another control plane at a known address (it took a dead replica's port):
                // neither it nor the master it names is ours.
                Ok(check) if self.is_foreign(&check) => {
                    silent.push(base.clone());
                    last_error = Some(format!(
                        "{base} belongs to another cluster ({})",
                        check.cluster_id.as_deref().unwrap_or_default()
                    ));
                }
                Ok(check) if check.is_master => {
                    self.replicas.set_master(base.clone());
                    return Ok(base.clone());
                }
                Ok(check) => {
                    answered.push(base.clone());
                    match check.master_url.as_deref().map(normalise_base_url) {
                        Some(Ok(pointer)) => pointers.push(pointer),
                        Some(Err(error)) => {
                            tracing::warn!(replica = %base, %error, "[client] replica names an unusable master_url");
                        }
                        None => {}
                    }
                }
                Err(error @ (ClientError::Unauthorized(_) | ClientError::Forbidden(_))) => {
                    refusal.get_or_insert(error);
                }
                Err(error) => {
                    silent.push(base.clone());
                    last_error = Some(error.to_string());
                }
            }
        }
        // A pointer to a replica that did not answer this round is stale: the writes would
        // fail there too.
        if let Some(pointer) = pointers
            .into_iter()
            .find(|pointer| !silent.contains(pointer))
        {
            self.replicas.set_master(pointer.clone());
            return Ok(pointer);
        }
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        if !answered.is_empty() {
            return Err(ClientError::NoMaster { replicas: answered });
        }
        Err(ClientError::Unreachable {
            replicas: urls,
            last_error: last_error.unwrap_or_else(|| "no answer".to_owned()),
        })
    }

    /// Sends `call` under the retry policy; a 2xx answer or the error that ended the tries.
    pub(crate) async fn execute(&self, call: &Call) -> Result<Answer, ClientError> {
        let request_timeout = self.request_timeout;
        with_retries(&self.retry, rand::random::<f64>, |remaining| {
            let timeout = remaining
                .map_or(request_timeout, |remaining| remaining.min(request_timeout))
                .max(Duration::from_millis(1));
            async move {
                match call.kind {
                    Kind::Read => self.attempt_read(call, timeout).await,
                    Kind::IdempotentWrite | Kind::Write => self.attempt_write(call, timeout).await,
                }
            }
        })
        .await
    }

    /// One pass over the replicas, starting with the one that answered last.
    async fn attempt_read(&self, call: &Call, timeout: Duration) -> Result<Answer, Failure> {
        let mut tried: Vec<String> = Vec::new();
        let mut last_transport_error: Option<String> = None;
        let mut last_server_error: Option<ClientError> = None;
        for base in self.replicas.read_order() {
            match self.send_once(&base, call, timeout).await {
                Ok(answer) if answer.is_transient() => {
                    self.replicas.mark_failed(&base);
                    tracing::debug!(replica = %base, status = answer.status, "[client] read failed on a replica, trying the next");
                    last_server_error = answer.into_success().err();
                    tried.push(base);
                }
                Ok(answer) => {
                    self.replicas.mark_ok(&base, true);
                    return answer.into_success().map_err(Failure::fatal);
                }
                Err(error) => {
                    self.replicas.mark_failed(&base);
                    self.replicas.forget_master_if(&base);
                    tracing::debug!(replica = %base, error = %error.detail, "[client] replica unreachable, trying the next");
                    last_transport_error = Some(error.detail);
                    tried.push(base);
                }
            }
        }
        let error = match (last_server_error, last_transport_error) {
            (Some(server_error), _) => server_error,
            (None, last_error) => ClientError::Unreachable {
                replicas: tried,
                last_error: last_error.unwrap_or_else(|| "no answer".to_owned()),
            },
        };
        Err(Failure::retryable(error))
    }

    /// One try on the master (discovered first when none is cached), following a redirect to
    /// the master if the replica answers with one.
    async fn attempt_write(&self, call: &Call, timeout: Duration) -> Result<Answer, Failure> {
        let mut master = match self.replicas.master() {
            Some(master) => master,
            // Nothing was sent yet, so any transient discovery failure may be retried.
            None => self
                .discover_master_within(timeout)
                .await
                .map_err(|error| Failure {
                    retryable: error.is_transient(),
                    error,
                })?,
        };
        for _hop in 0..MAX_MASTER_HOPS {
            let answer = match self.send_once(&master, call, timeout).await {
                Ok(answer) => answer,
                Err(error) => {
                    self.replicas.mark_failed(&master);
                    self.replicas.forget_master_if(&master);
                    if error.maybe_sent && call.kind == Kind::Write {
                        let url = call
                            .url(&master)
                            .map_or_else(|_| master.clone(), |url| url.to_string());
                        return Err(Failure::fatal(ClientError::Indeterminate {
                            url,
                            detail: error.detail,
                        }));
                    }
                    return Err(Failure::retryable(ClientError::Unreachable {
                        replicas: vec![master],
                        last_error: error.detail,
                    }));
                }
            };
            if let Some(next_master) = answer.redirected_master() {
                tracing::info!(from = %master, to = %next_master, "[client] write redirected to the master");
                self.replicas.set_master(next_master.clone());
                master = next_master;
                continue;
            }
            if answer.is_transient() {
                self.replicas.mark_failed(&master);
                if answer.status == 503 {
                    // A master whose store or lease is gone answers 503: look again next time.
                    self.replicas.forget_master_if(&master);
                }
                let error = answer
                    .into_success()
                    .err()
                    .unwrap_or_else(|| ClientError::NoMaster { replicas: vec![] });
                return Err(Failure {
                    error,
                    retryable: call.kind == Kind::IdempotentWrite,
                });
            }
            self.replicas.mark_ok(&master, false);
            return answer.into_success().map_err(Failure::fatal);
        }
        self.replicas.forget_master();
        Err(Failure::retryable(ClientError::NoMaster {
            replicas: self.replicas.urls(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_segments_and_query() {
        let call = Call::new(Method::GET, Kind::Read, &["nodes", "odd id/../x"]).with_query(vec![
            ("head_id", "head 1".to_owned()),
            ("unreachable", "b1,b2".to_owned()),
        ]);
        expect_test::expect!["http://127.0.0.1:7070/prefix/api/v1/nodes/odd%20id%2F..%2Fx?head_id=head+1&unreachable=b1%2Cb2"]
            .assert_eq(call.url("http://127.0.0.1:7070/prefix").unwrap().as_str());
        let call = Call::new(Method::GET, Kind::Read, &["health"]);
        assert_eq!(
            call.url("http://127.0.0.1:7070").unwrap().as_str(),
            "http://127.0.0.1:7070/api/v1/health"
        );
    }

    #[test]
    fn a_redirect_names_the_master_by_its_origin() {
        let answer = |status, location: Option<&str>| Answer {
            url: "http://a:1/api/v1/nodes".into(),
            status,
            location: location.map(str::to_owned),
            body: Vec::new(),
        };
        assert_eq!(
            answer(307, Some("http://b:2/api/v1/nodes")).redirected_master(),
            Some("http://b:2".to_owned())
        );
        assert_eq!(answer(308, Some("/api/v1/nodes")).redirected_master(), None);
        assert_eq!(
            answer(302, Some("http://b:2/api/v1/nodes")).redirected_master(),
            None
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let config = ClientConfig::new(["http://127.0.0.1:7070"]).with_token("s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));
        let client = Client::new(config).unwrap();
        assert!(!format!("{client:?}").contains("s3cret"));
    }
}
