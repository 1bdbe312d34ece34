//! A stand-in replica: a real axum server on 127.0.0.1:0 that answers the API routes with canned
//! bodies naming itself, records every request, and can be stopped (its listener dropped and its
//! connections closed) and started again on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hydra_api::{
    CheckMaster, CostTierWire, EligibleResponse, EnrolRequest, EnrolResponse, ErrorBody, ErrorCode,
    Health, NodeList, NodeView, RoleWire,
};
use hydra_client::{Client, ClientConfig, RetryPolicy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How a stand-in replica answers; changed while it runs.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// What `check-master` says about this replica.
    pub is_master: bool,
    /// What `check-master` says about where the master is.
    pub master_url: Option<String>,
    /// Answer every other route with this status and body.
    pub fail_with: Option<(u16, String)>,
    /// Answer writes with `307` to this base URL.
    pub redirect_writes_to: Option<String>,
    /// The cluster `check-master` names (`None`: none, as older servers).
    pub cluster_id: Option<String>,
    /// The replica id `check-master` names as its own (`None`: none, as older servers).
    pub replica_id: Option<String>,
}

/// One request the replica saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
}

pub struct Shared {
    name: String,
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Vec<Seen>>,
}

/// A running (or stopped) stand-in replica.
pub struct FakeReplica {
    pub base_url: String,
    address: SocketAddr,
    shared: Arc<Shared>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl FakeReplica {
    /// Starts a replica on a fresh loopback port.
    pub async fn start(name: &str, behaviour: Behaviour) -> FakeReplica {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            behaviour: Mutex::new(behaviour),
            seen: Mutex::new(Vec::new()),
        });
        let mut replica = FakeReplica {
            base_url: format!("http://{address}"),
            address,
            shared,
            running: None,
        };
        replica.serve(listener);
        replica
    }

    fn serve(&mut self, listener: TcpListener) {
        let app = Router::new()
            .fallback(answer)
            .with_state(self.shared.clone());
        let (stop_sender, stop_receiver) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_receiver.await;
                })
                .await
                .expect("serve");
        });
        self.running = Some((stop_sender, task));
    }

    /// Drops the listener and closes every connection; later connects are refused.
    pub async fn stop(&mut self) {
        let (stop_sender, task) = self.running.take().expect("replica is running");
        let _ = stop_sender.send(());
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("replica stops within 5 s")
            .expect("replica task");
    }

    /// Starts again on the same port.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "replica already running");
        let listener = TcpListener::bind(self.address).await.expect("rebind port");
        self.serve(listener);
    }

    /// Changes how it answers from now on.
    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many `method path` requests it saw.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|seen| seen.method == method && seen.path == path)
            .count()
    }

    /// Requests other than `check-master`, as `METHOD path` lines.
    pub fn api_calls(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter(|seen| seen.path != "/api/v1/check-master")
            .map(|seen| format!("{} {}", seen.method, seen.path))
            .collect()
    }
}

/// A client over `urls` with a fast retry schedule (milliseconds, not seconds).
pub fn client(urls: &[&str], retry: RetryPolicy) -> Client {
    let mut config = ClientConfig::new(urls.iter().copied())
        .with_token("admin-token")
        .with_retry(retry.with_delays(Duration::from_millis(5), Duration::from_millis(50)));
    config.request_timeout = Duration::from_secs(5);
    Client::new(config).expect("client")
}

/// A loopback address where nothing listens (bound, then released).
pub async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{address}")
}

pub fn node_view(id: &str, name: &str) -> NodeView {
    NodeView {
        id: id.to_owned(),
        name: name.to_owned(),
        roles: vec![RoleWire::Body],
        district: "bxl1".to_owned(),
        venue: "rupelmonde".to_owned(),
        owner: "acme".to_owned(),
        allowed_orgs: Vec::new(),
        lan_ip: None,
        wg_ip: None,
        vram_mb: Some(24_576),
        cost_tier: CostTierWire::Owned,
        drained: false,
        idle: true,
        active_sessions: 0,
        status: hydra_api::NodeStatusWire::Online,
        last_heartbeat: None,
        enrolled_at: "2026-01-01T00:00:00.000Z".to_owned(),
    }
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    (status, axum::Json(serde_json::to_value(body).unwrap())).into_response()
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    json(
        status,
        &ErrorBody {
            error: code,
            message: message.to_owned(),
        },
    )
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    shared.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    });
    let behaviour = shared.behaviour.lock().unwrap().clone();
    if path == "/api/v1/check-master" {
        return json(
            StatusCode::OK,
            &CheckMaster {
                is_master: behaviour.is_master,
                master_url: behaviour.master_url,
                master_id: None,
                term: None,
                cluster_id: behaviour.cluster_id,
                replica_id: behaviour.replica_id,
            },
        );
    }
    if let Some((status, body)) = behaviour.fail_with {
        return (
            StatusCode::from_u16(status).unwrap(),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    if let Some(master) = behaviour.redirect_writes_to
        && method != Method::GET
    {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("{master}{path}"))],
        )
            .into_response();
    }
    let segments: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    let name = shared.name.as_str();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["nodes"]) => {
            let request: EnrolRequest = match serde_json::from_slice(&body) {
                Ok(request) => request,
                Err(problem) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::InvalidRequest,
                        &problem.to_string(),
                    );
                }
            };
            let id = request.id.unwrap_or_else(|| "node-0000beef".to_owned());
            json(
                StatusCode::CREATED,
                &EnrolResponse {
                    node: node_view(&id, name),
                    token: format!("token-from-{name}"),
                },
            )
        }
        ("GET", ["nodes"]) => json(
            StatusCode::OK,
            &NodeList {
                nodes: vec![node_view("body-1", name)],
            },
        ),
        ("GET", ["nodes", "missing"]) => error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no node `missing`",
        ),
        ("GET", ["nodes", id]) => json(StatusCode::OK, &node_view(id, name)),
        ("DELETE", ["nodes", _]) => StatusCode::NO_CONTENT.into_response(),
        ("POST", ["nodes", id, "heartbeat" | "district" | "drain"]) => {
            json(StatusCode::OK, &node_view(id, name))
        }
        ("GET", ["bodies", "eligible"]) => json(
            StatusCode::OK,
            &EligibleResponse {
                policy: hydra_api::PolicyWire::None,
                bodies: Vec::new(),
            },
        ),
        ("GET", ["health"]) => json(
            StatusCode::OK,
            &Health {
                status: "ok".to_owned(),
                version: "test".to_owned(),
                storage: name.to_owned(),
                revision: 0,
                lag_ms: 0,
            },
        ),
        _ => error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route"),
    }
}
