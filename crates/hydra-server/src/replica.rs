//! Replicas on one PostgreSQL: this replica's mastership (the task that holds or watches the
//! master lease and applies what `hydra_core::mastership` decides), what `check-master` and
//! `replicas` answer, and the layer that forwards writes reaching a non-master to the master.
//!
//! Architecture invariant: the lease row is the only authority. Stepping down first clears the
//! store's fence term, so no write of the old term commits after the replica stopped believing
//! it is master; a write that slips past a stale belief is refused by the fence in its own
//! transaction.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hydra_api::ErrorCode;
use hydra_core::mastership::{
    Decision, LeaseCall, LeaseTiming, LeaseView, Mastership, Observation, Role,
};
use hydra_store::MasterBeacon;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::registry::Registry;
use crate::state::AppState;

/// Marks a request forwarded by a replica, so it is forwarded at most one hop.
pub const FORWARDED_BY: &str = "x-hydra-forwarded-by";

/// Who is master, as this replica knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterView {
    /// Whether this replica acts as master (takes writes, runs the singleton duties).
    pub is_master: bool,
    /// Whether mastership goes through the lease (PostgreSQL); `false`: a single replica.
    pub replicated: bool,
    /// The lease term this replica holds, or the master's as last read.
    pub term: Option<i64>,
    /// The master's replica id, when known.
    pub master_id: Option<String>,
    /// The master's base URL, when known.
    pub master_url: Option<String>,
}

impl MasterView {
    /// A follower of a lease that knows no live master (at start, or right after stepping
    /// down): writes get 503 until the next read of the lease names one.
    fn follower_without_master() -> MasterView {
        MasterView {
            is_master: false,
            replicated: true,
            term: None,
            master_id: None,
            master_url: None,
        }
    }
}

/// This replica's identity and its view of the master; shared through [`AppState`].
#[derive(Debug)]
pub struct ReplicaState {
    id: String,
    advertise_url: String,
    timing: LeaseTiming,
    view: RwLock<MasterView>,
}

impl ReplicaState {
    /// A single replica, its own master, until [`start_mastership`] makes it follow the lease.
    pub fn new(id: String, advertise_url: String, timing: LeaseTiming) -> ReplicaState {
        let view = MasterView {
            is_master: true,
            replicated: false,
            term: None,
            master_id: Some(id.clone()),
            master_url: Some(advertise_url.clone()),
        };
        ReplicaState {
            id,
            advertise_url,
            timing,
            view: RwLock::new(view),
        }
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The URL other replicas and clients reach this one at.
    pub fn advertise_url(&self) -> &str {
        &self.advertise_url
    }

    /// The lease timing.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// Who is master, as of now.
    pub fn view(&self) -> MasterView {
        self.view
            .read()
            .expect("replica view lock poisoned")
            .clone()
    }

    /// Whether this replica acts as master.
    pub fn is_master(&self) -> bool {
        self.view
            .read()
            .expect("replica view lock poisoned")
            .is_master
    }

    fn set(&self, view: MasterView) {
        metrics::gauge!("hydra_replica_is_master").set(if view.is_master { 1.0 } else { 0.0 });
        if let (true, Some(term)) = (view.is_master, view.term) {
            metrics::gauge!("hydra_replica_term").set(term as f64);
        }
        *self.view.write().expect("replica view lock poisoned") = view;
    }
}

/// The mastership task of a replica on PostgreSQL: its beacon, its state machine and a
/// monotonic clock base.
pub struct MastershipTask {
    state: AppState,
    beacon: MasterBeacon,
    machine: Mastership,
    started: Instant,
    /// Whether the last try for the lease was forced (the beacon came free under its term).
    forced: bool,
}

/// Makes the replica follow the lease when its store is PostgreSQL: arms the write fence
/// (every write needs the lease's term from now on) and turns the replica into a follower
/// until its first round takes the lease. `None` on SQLite (a single replica, always master).
pub fn start_mastership(state: &AppState) -> Option<MastershipTask> {
    let beacon = state.store().beacon()?;
    let replica = state.replica();
    state.store().arm_fence(replica.id());
    state.store().set_fence_term(None);
    replica.set(MasterView::follower_without_master());
    Some(MastershipTask {
        machine: Mastership::new(replica.timing()),
        state: state.clone(),
        beacon,
        started: Instant::now(),
        forced: false,
    })
}

/// Bound of one lease or replica-row call that has no earlier deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

impl MastershipTask {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn observe(&mut self, observation: Observation) {
        let decision = self.machine.observe(self.now(), observation);
        self.apply(decision).await;
    }

    /// One round: as master, renew the lease and check the beacon; as follower, read the
    /// lease, wait (bounded) for the beacon and take the lease when the machine says so.
    /// Answers how long to pause before the next round.
    pub async fn round(&mut self) -> Duration {
        self.observe(Observation::Tick).await;
        let store = self.state.store().clone();
        let replica_id = self.state.replica().id().to_owned();
        let timing = self.state.replica().timing();
        let ttl_ms = i64::try_from(timing.ttl_ms).unwrap_or(i64::MAX);
        let renew = Duration::from_millis(timing.renew_ms);
        let advertise_url = self.state.replica().advertise_url().to_owned();
        if let Ok(Err(error)) = tokio::time::timeout(
            CALL_TIMEOUT,
            store.heartbeat_replica(&replica_id, &advertise_url),
        )
        .await
        {
            tracing::debug!(%error, "[controller] replica heartbeat failed");
        }
        if let LeaseCall::Renew { term, deadline } = self.machine.next_call() {
            let sent_at = self.now();
            let budget = Duration::from_millis(deadline.saturating_sub(sent_at).max(1));
            let observation =
                match tokio::time::timeout(budget, store.renew_lease(&replica_id, term, ttl_ms))
                    .await
                {
                    Ok(Ok(renewed)) => Observation::Renewed { sent_at, renewed },
                    Ok(Err(error)) => {
                        tracing::warn!(%error, term, "[controller] lease renewal failed");
                        Observation::LeaseFailed
                    }
                    Err(_) => Observation::LeaseFailed,
                };
            self.observe(observation).await;
            if matches!(self.machine.role(), Role::Master { .. }) {
                let held = self.beacon.lock(Duration::ZERO).await.unwrap_or(false);
                self.observe(Observation::Beacon { held }).await;
            }
            let until_deadline = match self.machine.next_call() {
                LeaseCall::Renew { deadline, .. } => {
                    Duration::from_millis(deadline.saturating_sub(self.now()))
                }
                _ => Duration::ZERO,
            };
            return renew.min(until_deadline.max(Duration::from_millis(50)));
        }
        self.read_lease(&replica_id).await;
        let held = match self.beacon.lock(renew).await {
            Ok(held) => held,
            Err(error) => {
                tracing::debug!(%error, "[controller] beacon connection failed");
                false
            }
        };
        if self.beacon.found_busy() {
            // The lock was busy right after the lease was read: its holder was that term's
            // master. Said before the wait's outcome, so a lock got in the same wait (that
            // session ended) forces a takeover now; without it, a standby whose last timed-out
            // wait fell under the previous term waited for the lease's expiry instead (the
            // second takeover in a row took 4-6 s, issue 10).
            self.observe(Observation::Beacon { held: false }).await;
        }
        self.observe(Observation::Beacon { held }).await;
        if held {
            // Time passed while waiting for the lock: read the lease again before deciding.
            self.read_lease(&replica_id).await;
        }
        match self.machine.next_call() {
            LeaseCall::Acquire { force } => {
                self.forced = force;
                let sent_at = self.now();
                let term = tokio::time::timeout(
                    CALL_TIMEOUT,
                    store.acquire_lease(&replica_id, ttl_ms, force),
                )
                .await;
                match term {
                    Ok(Ok(term)) => self.observe(Observation::Acquired { sent_at, term }).await,
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "[controller] taking the lease failed");
                        self.observe(Observation::LeaseFailed).await;
                    }
                    Err(_) => self.observe(Observation::LeaseFailed).await,
                }
                if matches!(self.machine.role(), Role::Master { .. }) {
                    return renew;
                }
            }
            LeaseCall::Wait if self.beacon.is_held() => {
                self.beacon.unlock().await;
                self.observe(Observation::BeaconGivenBack).await;
            }
            LeaseCall::Wait | LeaseCall::Renew { .. } => {}
        }
        // The beacon wait paced the round when it could run; after a failure, pause.
        if held || self.beacon.is_held() {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(200)
        }
    }

    /// Reads the lease row into the machine and into what `check-master` answers.
    async fn read_lease(&mut self, replica_id: &str) {
        let lease = match tokio::time::timeout(CALL_TIMEOUT, self.state.store().lease()).await {
            Ok(Ok(lease)) => lease,
            _ => return,
        };
        let view = lease.as_ref().map(|lease| LeaseView {
            term: lease.term,
            held_by_me: lease.holder == replica_id,
            expired: lease.remaining_ms <= 0,
        });
        self.observe(Observation::LeaseSeen(view)).await;
        if matches!(self.machine.role(), Role::Follower) {
            let live = lease.filter(|lease| lease.remaining_ms > 0 && lease.holder != replica_id);
            self.state.replica().set(MasterView {
                is_master: false,
                replicated: true,
                term: live.as_ref().map(|lease| lease.term),
                master_id: live.as_ref().map(|lease| lease.holder.clone()),
                master_url: live.and_then(|lease| lease.holder_url),
            });
        }
    }

    async fn apply(&mut self, decision: Decision) {
        let state = self.state.clone();
        let replica = state.replica();
        match decision {
            Decision::Stay => {}
            Decision::BecomeMaster { term } => {
                // The view may be stale (another master wrote since it was loaded): reload it
                // before taking writes, so checks and duties see what the store has.
                match Registry::load(self.state.store()).await {
                    Ok(loaded) => {
                        *self
                            .state
                            .registry()
                            .write()
                            .expect("registry lock poisoned") = loaded
                    }
                    Err(error) => {
                        tracing::warn!(%error, "[controller] reloading the registry view on takeover failed; serving the view as it was")
                    }
                }
                self.state.store().set_fence_term(Some(term));
                replica.set(MasterView {
                    is_master: true,
                    replicated: true,
                    term: Some(term),
                    master_id: Some(replica.id().to_owned()),
                    master_url: Some(replica.advertise_url().to_owned()),
                });
                metrics::counter!("hydra_replica_takeovers_total").increment(1);
                // `takeover`: `beacon` when the previous holder's session ended (at once),
                // `lease` when the lease had expired or was never taken.
                let takeover = if self.forced { "beacon" } else { "lease" };
                tracing::info!(replica_id = %replica.id(), term, beacon = self.beacon.is_held(), takeover = %takeover, "[controller] this replica is now the master");
            }
            Decision::StepDown { term, reason } => {
                // First: no write of this term may commit any more.
                self.state.store().set_fence_term(None);
                replica.set(MasterView::follower_without_master());
                metrics::counter!("hydra_replica_step_downs_total", "reason" => reason.as_str())
                    .increment(1);
                tracing::warn!(replica_id = %replica.id(), term, reason = reason.as_str(), "[controller] this replica stepped down: no longer the master");
                self.beacon.unlock().await;
                self.observe_given_back();
                if reason != hydra_core::mastership::StepDownReason::Deposed {
                    let _ = tokio::time::timeout(
                        CALL_TIMEOUT,
                        state.store().release_lease(replica.id(), term),
                    )
                    .await;
                }
            }
        }
    }

    /// Records that the beacon was given back (no decision can follow from it).
    fn observe_given_back(&mut self) {
        let now = self.now();
        let _ = self.machine.observe(now, Observation::BeaconGivenBack);
    }

    /// Gives mastership up at shutdown: writes stop, the lease expires now so another replica
    /// takes it at once instead of waiting for the TTL.
    async fn resign(mut self) {
        if let Role::Master { term } = self.machine.role() {
            self.state.store().set_fence_term(None);
            let replica = self.state.replica();
            let _ = tokio::time::timeout(
                CALL_TIMEOUT,
                self.state.store().release_lease(replica.id(), term),
            )
            .await;
            tracing::info!(replica_id = %replica.id(), term, "[controller] released the master lease at shutdown");
        }
        self.beacon.unlock().await;
    }
}

/// Runs `task` until `shutdown`, then resigns.
pub async fn run_mastership(mut task: MastershipTask, shutdown: CancellationToken) {
    loop {
        let pause = tokio::select! {
            _ = shutdown.cancelled() => break,
            pause = task.round() => pause,
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    task.resign().await;
}

/// Whether `request` changes state: any method but GET/HEAD/OPTIONS under `/api/v1/`, and an
/// eligible-bodies query that carries latency samples (they are recorded).
fn is_write(request: &Request) -> bool {
    let path = request.uri().path();
    if !path.starts_with("/api/v1/") {
        return false;
    }
    match *request.method() {
        Method::GET | Method::HEAD | Method::OPTIONS => {
            path == "/api/v1/bodies/eligible"
                && request
                    .uri()
                    .query()
                    .is_some_and(|query| query.split('&').any(|pair| pair.starts_with("measured=")))
        }
        _ => true,
    }
}

/// The HTTP client forwarding writes: bounded, no redirects followed.
fn forwarding_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the forwarding HTTP client builds")
    })
}

/// 503 with `Retry-After`, naming the replicas tried.
fn unavailable(message: String) -> Response {
    let mut response = ApiError::new(ErrorCode::Unavailable, message).into_response();
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    response
}

/// The layer in front of every route: a write reaching a replica that is not the master is
/// forwarded one hop to the master with the caller's headers (its token included), or
/// answered 503 with `Retry-After` when no master is known. A 503 of this replica (a write
/// fenced because it just lost the lease) gets `Retry-After` too.
pub async fn forward_writes(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !is_write(&request) {
        return next.run(request).await;
    }
    let replica = state.replica();
    let view = replica.view();
    if view.is_master {
        let mut response = next.run(request).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .entry("retry-after")
                .or_insert(HeaderValue::from_static("1"));
        }
        return response;
    }
    if let Some(from) = request.headers().get(FORWARDED_BY) {
        let from = from.to_str().unwrap_or("another replica").to_owned();
        return unavailable(format!(
            "replica {} is not the master and does not forward a write forwarded by {from} (one hop); tried: {from}, {}",
            replica.id(),
            replica.advertise_url()
        ));
    }
    let master_url = view
        .master_url
        .filter(|url| url.as_str() != replica.advertise_url());
    let Some(master_url) = master_url else {
        return unavailable(format!(
            "no master is known right now (the lease is being taken over); tried: {}; retry",
            replica.advertise_url()
        ));
    };
    match forward(&state, request, &master_url).await {
        Ok(response) => {
            metrics::counter!("hydra_replica_forwarded_writes_total").increment(1);
            response
        }
        Err(error) => {
            tracing::warn!(%error, master_url, "[controller] forwarding a write to the master failed");
            unavailable(format!(
                "the master did not answer a forwarded write ({error}); tried: {}, {master_url}; retry",
                replica.advertise_url()
            ))
        }
    }
}

/// Sends `request` to `master_url` as it came (method, path, query, headers, body) and answers
/// the master's response.
async fn forward(state: &AppState, request: Request, master_url: &str) -> Result<Response, String> {
    let (parts, body) = request.into_parts();
    let limit = state.settings().body_limit_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|error| format!("reading the request body: {error}"))?;
    let path = parts
        .uri
        .path_and_query()
        .map(|path| path.as_str())
        .unwrap_or("/");
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|error| error.to_string())?;
    let mut outgoing = forwarding_client().request(method, format!("{master_url}{path}"));
    for (name, value) in &parts.headers {
        if is_hop_header(name) {
            continue;
        }
        outgoing = outgoing.header(name.as_str(), value.as_bytes());
    }
    let answer = outgoing
        .header(FORWARDED_BY, state.replica().id())
        .body(body)
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let status =
        StatusCode::from_u16(answer.status().as_u16()).map_err(|error| error.to_string())?;
    let mut response = Response::builder().status(status);
    for (name, value) in answer.headers() {
        let Ok(name) = HeaderName::from_bytes(name.as_str().as_bytes()) else {
            continue;
        };
        if is_hop_header(&name) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.map_err(|error| error.to_string())?;
    response
        .body(Body::from(bytes))
        .map_err(|error| error.to_string())
}

/// Headers that belong to one connection, not to the request.
fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade"
    )
}
