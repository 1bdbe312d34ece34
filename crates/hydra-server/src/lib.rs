//! `hydra server`: the control plane's HTTP API, background duties and composition root.
//!
//! Architecture invariant: the only crate that maps errors to HTTP statuses (`error.rs`). Reads
//! are served from the in-memory registry view (`registry.rs`); every write goes to the store
//! first and reaches the view only once the store acknowledged it.

pub mod auth;
pub mod captures;
pub mod dashboard;
pub mod duties;
pub mod error;
pub mod events;
pub mod feed;
pub mod fleet;
pub mod group_commit;
pub mod mesh;
pub mod registry;
pub mod replica;
pub mod report_checks;
pub mod routes;
pub mod sealing;
pub mod sessions;
pub mod state;
pub mod workers;
pub mod write_ids;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;

pub use hydra_proxy::serve::ServeSettings;
pub use state::{AppState, Settings};

/// The OpenAPI document's fixed parts; paths are collected from the routers.
#[derive(OpenApi)]
#[openapi(
    info(title = "Hydra control plane", description = "Registry, body selection and relay placement for a fleet of streaming hosts."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API routes with their OpenAPI description.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::system::health))
        .routes(routes!(routes::system::check_master))
        .routes(routes!(routes::system::replicas))
        .routes(routes!(routes::system::cluster))
        .routes(routes!(routes::nodes::enrol, routes::nodes::list))
        .routes(routes!(routes::nodes::show, routes::nodes::remove))
        .routes(routes!(routes::nodes::heartbeat))
        .routes(routes!(routes::nodes::move_node))
        .routes(routes!(routes::nodes::drain))
        .routes(routes!(routes::nodes::create_enrolment_token))
        .routes(routes!(
            routes::node_config::show,
            routes::node_config::replace
        ))
        .routes(routes!(routes::bodies::eligible))
        .routes(routes!(routes::bodies::what_if))
        .routes(routes!(routes::events::events))
        .merge(routes::sessions::router())
        .merge(routes::captures::router())
}

/// The whole application: API, OpenAPI document, metrics, JSON 404s, body limit.
pub fn app(state: AppState) -> Router {
    let (router, mut openapi) = api_router().split_for_parts();
    document_common_errors(&mut openapi);
    let openapi_json = serde_json::to_value(&openapi).unwrap_or_default();
    let body_limit = state.settings().body_limit_bytes;
    router
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || async move { axum::Json(openapi_json.clone()) }),
        )
        .route("/metrics", axum::routing::get(metrics_text))
        .merge(dashboard::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            write_ids::dedup,
        ))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            note_storage_failure,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::layers::read_your_writes,
        ))
        // Outside the read-your-writes layer: a write a follower forwards is answered, with its
        // revision, by the master's own layers.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::layers::forward_writes,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// A request that failed on the storage engine degrades health at once (the store probe only
/// reads, and a full disk still answers reads); the probe's next clean round restores it.
async fn note_storage_failure(
    axum::extract::State(state): axum::extract::State<AppState>,
    response: axum::response::Response,
) -> axum::response::Response {
    if response
        .extensions()
        .get::<error::StorageFailed>()
        .is_some()
    {
        state.note_storage_failure();
    }
    response
}

/// Adds the error answers every route can give to each operation that does not list them
/// already, so the document matches what the server does: 401/403 where a token is needed,
/// 400 where there is input, 413 where there is a body, 503 when storage fails.
fn document_common_errors(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let secured = operation
                .security
                .as_ref()
                .is_some_and(|security| !security.is_empty());
            let has_input = operation.request_body.is_some()
                || operation
                    .parameters
                    .as_ref()
                    .is_some_and(|parameters| !parameters.is_empty());
            let mut wanted: Vec<(&str, &str)> = Vec::new();
            if secured {
                wanted.push(("401", "Missing or unknown bearer token"));
                wanted.push(("403", "The token may not make this call"));
                wanted.push(("503", "Storage or the needed workers are unavailable"));
            }
            if has_input {
                wanted.push(("400", "Invalid input; the message names the field"));
            }
            if operation.request_body.is_some() {
                wanted.push(("413", "Request body larger than the limit"));
            }
            for (status, description) in wanted {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description).into());
            }
        }
    }
}

/// `/metrics`: the process's counters and histograms, and the fleet's gauges read from this
/// replica's view when scraped (so they are never stale): nodes by status, drained nodes.
async fn metrics_text(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl IntoResponse {
    record_fleet_gauges(&state, hydra_api::system::now_ms());
    hydra_proxy::metrics_text::render()
}

/// Sets `hydra_nodes{status}` (every status, 0 included, so a series never vanishes) and
/// `hydra_nodes_drained` from the registry view.
fn record_fleet_gauges(state: &AppState, now: i64) {
    let timeout = state.heartbeat_timeout_ms();
    let (mut online, mut offline, mut unreachable, mut drained) = (0_u32, 0_u32, 0_u32, 0_u32);
    for node in state.fleet().view().all() {
        match node.status(now, timeout) {
            hydra_core::NodeStatus::Online => online += 1,
            hydra_core::NodeStatus::Offline => offline += 1,
            hydra_core::NodeStatus::Unreachable => unreachable += 1,
        }
        if node.drained {
            drained += 1;
        }
    }
    for (status, count) in [
        ("online", online),
        ("offline", offline),
        ("unreachable", unreachable),
    ] {
        metrics::gauge!("hydra_nodes", "status" => status).set(f64::from(count));
    }
    metrics::gauge!("hydra_nodes_drained").set(f64::from(drained));
}

/// The process-wide Prometheus recorder (one home for both daemons: `hydra_proxy::metrics_text`).
fn metrics_handle() -> Option<&'static PrometheusHandle> {
    hydra_proxy::metrics_text::handle()
}

/// Serves `state` on `listener` until `shutdown` is cancelled, with the default connection
/// limits (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, state, shutdown, ServeSettings::default()).await
}

/// Serves `state` on `listener` until `shutdown` is cancelled, with the background duties
/// (store probe, metrics upkeep, session retention, the sweep of gone workers' sessions, the
/// change-feed follower and its pruning) and
/// `limits` (header and idle timeouts, connection cap,
/// shutdown deadline). Returns once in-flight requests have finished or the deadline passed.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    limits: ServeSettings,
) -> std::io::Result<()> {
    serve_with_tls(listener, state, shutdown, limits, None).await
}

/// [`serve_with`] over TLS when `tls` is given (`hydra_proxy::tls::acceptor`, the field's
/// `server.tls_cert`/`server.tls_key`).
pub async fn serve_with_tls(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    limits: ServeSettings,
    tls: Option<hydra_proxy::tls::TlsAcceptor>,
) -> std::io::Result<()> {
    let _ = metrics_handle();
    let mut duties = tokio::task::JoinSet::new();
    // On PostgreSQL: follow the lease. The first round runs before serving, so a replica that
    // can take the lease (the first one, or one whose previous run was killed) answers its
    // first request as master.
    if let Some(mut mastership) = duties::mastership::start_mastership(&state) {
        let _ = tokio::time::timeout(Duration::from_secs(5), mastership.round()).await;
        duties.spawn(duties::mastership::run_mastership(
            mastership,
            shutdown.clone(),
        ));
    } else {
        metrics::gauge!("hydra_replica_is_master").set(1.0);
    }
    duties.spawn(probe_store(state.clone(), shutdown.clone()));
    duties.spawn(metrics_upkeep(shutdown.clone()));
    duties.spawn(duties::retention::prune_ended_sessions(
        state.clone(),
        shutdown.clone(),
    ));
    duties.spawn(sessions::sweep(state.clone(), shutdown.clone()));
    duties.spawn(duties::feed::follow(state.clone(), shutdown.clone()));
    duties.spawn(duties::feed::prune_changes(state.clone(), shutdown.clone()));
    if let Some(start) = state.take_mesh_start() {
        duties.spawn(duties::mesh::run(state.clone(), start, shutdown.clone()));
    }
    duties.spawn(duties::capture_retention::prune_ended_captures(
        state.clone(),
        shutdown.clone(),
    ));
    duties.spawn(duties::capture_resume::follow_mastership(
        state.clone(),
        shutdown.clone(),
    ));
    let outcome = hydra_proxy::serve::serve_tls(
        listener,
        app(state),
        limits,
        shutdown.clone(),
        "controller",
        tls,
    )
    .await;
    shutdown.cancel();
    while duties.join_next().await.is_some() {}
    outcome
}

/// Every 5 s: does the store answer? Health reports `degraded` while it does not.
async fn probe_store(state: AppState, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let answers = tokio::time::timeout(Duration::from_secs(5), state.store().ping())
            .await
            .is_ok_and(|outcome| outcome.is_ok());
        // Healthy only when the store answers and no request failed on it since the last round.
        let failed_since = state.take_storage_failure();
        state.set_store_healthy(answers && !failed_since);
    }
}

/// `metrics-exporter-prometheus` needs `run_upkeep` on a timer to drain its histograms.
async fn metrics_upkeep(shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Some(handle) = metrics_handle() {
            handle.run_upkeep();
        }
    }
}

/// Where the admin token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenSource {
    /// Flag, environment or config file.
    Given,
    /// Read back from the token file in the data dir.
    File(PathBuf),
    /// Made now and written to the token file in the data dir.
    Generated(PathBuf),
}

/// The admin token: the given one, else the one in `<data_dir>/admin-token`, else a new one
/// written there with mode 0600.
pub fn resolve_admin_token(
    data_dir: &Path,
    given: Option<String>,
) -> std::io::Result<(String, AdminTokenSource)> {
    if let Some(token) = given.filter(|token| !token.trim().is_empty()) {
        return Ok((token.trim().to_owned(), AdminTokenSource::Given));
    }
    let path = data_dir.join("admin-token");
    match read_or_create_private(&path, || auth::generate_token("hya_"))? {
        (token, false) => Ok((token, AdminTokenSource::File(path))),
        (token, true) => Ok((token, AdminTokenSource::Generated(path))),
    }
}

/// This replica's id: the given one, else the one in `<data_dir>/replica-id`, else a new one
/// (`r-` and 8 hex digits) written there, so a restarted replica keeps its id.
pub fn resolve_replica_id(data_dir: &Path, given: Option<String>) -> std::io::Result<String> {
    if let Some(id) = given.filter(|id| !id.trim().is_empty()) {
        return Ok(id.trim().to_owned());
    }
    let path = data_dir.join("replica-id");
    let (id, _created) =
        read_or_create_private(&path, || format!("r-{:08x}", rand::random::<u32>()))?;
    Ok(id)
}

/// The trimmed contents of `path`, or, when it is missing or blank, `make()` written there
/// (mode 0600, durably); the flag says whether it was made now.
fn read_or_create_private(
    path: &Path,
    make: impl FnOnce() -> String,
) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok((text.trim().to_owned(), false)),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(std::io::Error::new(
                error.kind(),
                format!("cannot read {}: {error}", path.display()),
            ));
        }
    }
    let value = make();
    write_private_file(path, &format!("{value}\n"))?;
    Ok((value, true))
}

/// Writes `contents` to a new file readable only by its owner, durably.
fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}
