//! The daemon: the start-up guard (bind the agent's port before anything else), orphan cleanup,
//! then the HTTP surface, the periodic session checks and the heartbeat loop as owned tasks,
//! all stopped through one cancellation token.

use std::sync::Arc;
use std::time::Duration;

use hydra_client::{Client, ClientConfig, RetryPolicy};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::enrol::{EnrolError, enrol_or_load};
use crate::heartbeat::HeartbeatSettings;
use crate::http::{AgentState, HttpSettings, router};
use crate::worker::Worker;
use crate::worker::orphans::{PortTaken, bind_agent_port, clean_orphans};
use hydra_proxy::proxy::Proxy;

/// Why the agent stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The agent's port is taken: another agent runs (nothing was touched).
    #[error(transparent)]
    PortTaken(#[from] PortTaken),
    /// The sessions root could not be cleaned.
    #[error("cannot clean the sessions root {path}: {error}")]
    SessionsRoot {
        /// The root.
        path: std::path::PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The control plane client could not be built.
    #[error("controller.url: {0}")]
    Client(hydra_client::ClientError),
    /// No identity.
    #[error(transparent)]
    Enrol(#[from] EnrolError),
    /// The HTTP server failed.
    #[error("agent HTTP server: {0}")]
    Serve(std::io::Error),
    /// The mesh cannot start (key file, UDP port); the message names the key or address.
    #[error("cluster: {0}")]
    Cluster(String),
    /// `server.tls_cert`/`server.tls_key` cannot be used; the message names the file.
    #[error("server.tls_cert/server.tls_key: {0}")]
    Tls(String),
}

/// Runs the agent until `shutdown`: binds `server.listen` first (exiting with
/// "cannot bind — is another hydra agent already running?" when taken), then [`serve`].
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let listener = bind_agent_port(config.server.listen).await?;
    serve(listener, config, shutdown).await
}

/// What the agent's owned tasks return: the first failure stops the agent.
type Tasks = tokio::task::JoinSet<Result<(), DaemonError>>;

/// Runs the agent on an already bound listener (tests bind port 0) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let bound = listener.local_addr().map_err(DaemonError::Serve)?;
    // HTTPS when configured: a bad PEM stops the start, naming the file, before anything runs.
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => {
            Some(hydra_proxy::tls::acceptor(cert, key).map_err(DaemonError::Tls)?)
        }
        _ => None,
    };
    let (config, start) = crate::bundle::with_kept_bundle(config);
    let worker = prepare_worker(&config)?;
    let client = control_client(&config)?;
    let mesh = crate::cluster::start::prepare(&config).await?;
    let proxy = Proxy::new(shutdown.clone());
    let state = agent_state(&config, &client, worker.clone(), proxy.clone());
    let records = match &worker {
        Some(_) => {
            state.set_body_link(crate::sunshine::BodyLink::new(
                crate::sunshine::BodyLinkSettings {
                    sunshine_scheme: config.sunshine.api_scheme.clone(),
                    sunshine_port: config.sessions.body_port,
                    agent_port: config.body.agent_port,
                    worker_token: config.body.worker_token.clone(),
                },
            ));
            open_records(&config, &state)
        }
        None => None,
    };
    open_journal(&config, &state);
    // The field's start-up warning, word for word, once: the health answer says `degraded` too.
    if !config.wireguard_optional && !crate::local_api::wireguard_up() {
        tracing::warn!("[worker] WARNING: no WireGuard interface detected");
    }
    tracing::info!(listen = %bound, roles = %config.node.roles.join(","), servers = %config.controller.url.join(","), "[worker] hydra agent listening");
    let mut tasks = Tasks::new();
    {
        let app = router(state.clone());
        let stop = shutdown.clone();
        let limits = config.serve_settings();
        tasks.spawn(async move {
            hydra_proxy::serve::serve_tls(listener, app, limits, stop, "worker", tls)
                .await
                .map_err(DaemonError::Serve)
        });
    }
    spawn_monitor(&mut tasks, &config, &state, worker.clone(), &shutdown);
    spawn_session_checks(&mut tasks, worker.clone(), records.clone(), &shutdown);
    let control = ControlPlane {
        config: config.clone(),
        client,
        start,
        mesh,
        worker: worker.clone(),
        state: state.clone(),
    };
    tasks.spawn(control.run(shutdown.clone()));
    let failure = first_failure(&mut tasks, &shutdown).await;
    shutdown.cancel();
    if let Some(worker) = &worker {
        worker.shutdown().await;
        if let Some(records) = &records {
            records.after_shutdown(worker);
        }
    }
    if let Some(body) = state.body() {
        body.shutdown().await;
    }
    proxy.closed().await;
    while tasks.join_next().await.is_some() {}
    tracing::info!("[worker] hydra agent stopped");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The worker when this node runs one, after removing the session dirs an earlier agent left.
fn prepare_worker(config: &AgentConfig) -> Result<Option<Arc<Worker>>, DaemonError> {
    if !config.runs_worker() {
        return Ok(None);
    }
    let root = config.sessions_root();
    let removed = clean_orphans(&root).map_err(|error| DaemonError::SessionsRoot {
        path: root.clone(),
        error,
    })?;
    if !removed.is_empty() {
        tracing::info!(
            count = removed.len(),
            "[cleanup] removed orphaned session dirs left by an earlier agent"
        );
    }
    Ok(Some(Worker::new(config.worker_settings())))
}

/// The control plane's client, already scoped to the cluster kept from an earlier run.
fn control_client(config: &AgentConfig) -> Result<Client, DaemonError> {
    let client_config = ClientConfig {
        retry: RetryPolicy::attempts(2)
            .with_delays(Duration::from_millis(200), Duration::from_secs(2)),
        ..ClientConfig::new(config.controller.url.clone())
    };
    let client = Client::new(client_config).map_err(DaemonError::Client)?;
    // Before any call: the cluster kept from an earlier run, so neither the first heartbeat nor
    // the journal's replay can reach a foreign server that took a replica's address.
    client.set_cluster_id(crate::health::load_cluster(
        &config.state_dir,
        hydra_api::now_ms(),
    ));
    Ok(client)
}

/// The HTTP surface's shared state, with the body role when this node is a body.
fn agent_state(
    config: &AgentConfig,
    client: &Client,
    worker: Option<Arc<Worker>>,
    proxy: Proxy,
) -> AgentState {
    let state = AgentState::new(
        HttpSettings {
            roles: config.node.roles.clone(),
            servers: client.replica_urls(),
            return_url: config.sessions.return_url.clone(),
            report_url: config.sessions.report_url.clone(),
            rating_url: config.sessions.rating_url.clone(),
            api_token: config.api_token.clone(),
            wireguard_optional: config.wireguard_optional,
            viewer_ttl: Duration::from_secs_f64(config.sessions.viewer_ttl),
            ice: config.ice(),
        },
        worker,
        proxy,
    );
    if config.node.roles.iter().any(|role| role == "body") {
        state.set_body(crate::body::BodyRole::new(
            crate::body::BodySettings::from_config(config),
        ));
    }
    state
}

/// The write journal: what the agent owes the control plane from before a restart is replayed
/// once a master answers; a corrupt file is set aside and named.
fn open_journal(config: &AgentConfig, state: &AgentState) {
    match crate::journal::Journal::open(
        &config.state_dir,
        config.journal.max_entries,
        hydra_api::now_ms(),
    ) {
        Ok((journal, corrupt)) => {
            if let Some(error) = corrupt {
                tracing::error!(%error, "[journal] the write journal is not used");
            }
            if !journal.is_empty() {
                tracing::info!(writes = journal.len(), path = %journal.path().display(), "[journal] writes from before this start wait for a master");
            }
            state.ride_out().set_journal(Arc::new(journal));
        }
        Err(error) => {
            tracing::error!(%error, "[journal] no write journal: writes made while no master answers are lost");
        }
    }
}

/// The monitor feed: the agent's own log lines and what it watches (sessions, health).
fn spawn_monitor(
    tasks: &mut Tasks,
    config: &AgentConfig,
    state: &AgentState,
    worker: Option<Arc<Worker>>,
    shutdown: &CancellationToken,
) {
    let state = state.clone();
    let stop = shutdown.clone();
    crate::monitor::attach_logs(state.monitor());
    let watched = crate::monitor::Watched {
        worker,
        sessions_root: config.sessions_root(),
        health: {
            let state = state.clone();
            Box::new(move || state.health_word())
        },
    };
    tasks.spawn(async move {
        crate::monitor::watch(state.monitor().clone(), watched, stop).await;
        state.monitor_closed().cancel();
        Ok(())
    });
}

/// The worker's periodic session checks and the session records' watcher and sender.
fn spawn_session_checks(
    tasks: &mut Tasks,
    worker: Option<Arc<Worker>>,
    records: Option<Arc<crate::reports::Records>>,
    shutdown: &CancellationToken,
) {
    if let Some(worker) = worker.clone() {
        let stop = shutdown.clone();
        tasks.spawn(async move {
            worker.run_checks(stop).await;
            Ok(())
        });
    }
    if let (Some(records), Some(worker)) = (records, worker) {
        let stop = shutdown.clone();
        tasks.spawn(async move {
            tokio::join!(
                records.clone().watch(worker, stop.clone()),
                records.send(stop)
            );
            Ok(())
        });
    }
}

/// What the agent needs to join the control plane: enrolment, then the heartbeat, the bundle's
/// ride-out and the mesh.
struct ControlPlane {
    config: AgentConfig,
    client: Client,
    start: crate::bundle::Start,
    mesh: Option<crate::cluster::start::Prepared>,
    worker: Option<Arc<Worker>>,
    state: AgentState,
}

impl ControlPlane {
    /// Enrols (or loads the identity), then runs the heartbeat, the ride-out and the mesh until
    /// `stop`; a failed enrolment stops the agent.
    async fn run(self, stop: CancellationToken) -> Result<(), DaemonError> {
        let ControlPlane {
            config,
            client,
            start,
            mesh,
            worker,
            state,
        } = self;
        let identity = match enrol_or_load(&config, &client, &stop).await {
            Ok(identity) => identity,
            Err(EnrolError::Stopped) => return Ok(()),
            Err(error) => {
                stop.cancel();
                return Err(DaemonError::Enrol(error));
            }
        };
        state.update_heartbeat(|seen| seen.node_id = Some(identity.node_id.clone()));
        if let Some(records) = state.records() {
            records.set_node_id(&identity.node_id);
        }
        let settings = HeartbeatSettings {
            node_id: identity.node_id.clone(),
            interval: Duration::from_secs_f64(config.heartbeat.interval),
            jitter: config.heartbeat.jitter,
            agent_url: config.public_url(),
        };
        let ride_out = crate::bundle::ride_out(
            start,
            identity.node_id.clone(),
            worker,
            client.with_token(identity.token.clone()),
            state.clone(),
            stop.clone(),
        );
        let mesh = crate::cluster::start::run(
            mesh,
            &config,
            identity.node_id.clone(),
            state.clone(),
            stop.clone(),
        );
        tokio::join!(
            crate::heartbeat::run(state, client.with_token(identity.token), settings, stop),
            ride_out,
            mesh
        );
        Ok(())
    }
}

/// Waits for the tasks until the first failure or until `shutdown`; a failure (or a task that
/// panicked) cancels the others and is what the agent stops with.
async fn first_failure(tasks: &mut Tasks, shutdown: &CancellationToken) -> Option<DaemonError> {
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.unwrap_or_else(|error| {
            Err(DaemonError::Serve(std::io::Error::other(format!(
                "agent task failed: {error}"
            ))))
        });
        if let Err(error) = outcome {
            shutdown.cancel();
            failure.get_or_insert(error);
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    failure
}

/// The session records with their journal (records from before a restart are sent again); a
/// corrupt journal is set aside and named, an unusable one leaves records unsent.
fn open_records(config: &AgentConfig, state: &AgentState) -> Option<Arc<crate::reports::Records>> {
    let settings = crate::reports::RecordSettings::from_config(config);
    match crate::reports::Records::open(settings, hydra_api::now_ms()) {
        Ok((records, corrupt)) => {
            if let Some(error) = corrupt {
                tracing::error!(%error, "[report] the session records' journal is not used");
            }
            let waiting = records.pending().len();
            if waiting > 0 {
                tracing::info!(
                    records = waiting,
                    "[report] session records from before this start wait for the endpoint"
                );
            }
            state.set_records(records.clone());
            Some(records)
        }
        Err(error) => {
            tracing::error!(%error, "[report] no session records' journal: session records are not sent");
            None
        }
    }
}
