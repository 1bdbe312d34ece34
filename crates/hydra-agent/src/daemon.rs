//! The daemon: the start-up guard (bind the agent's port before anything else), orphan cleanup,
//! then the HTTP surface, the periodic session checks and the heartbeat loop as owned tasks,
//! all stopped through one cancellation token.

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
    let worker = if config.runs_worker() {
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
        Some(Worker::new(config.worker_settings()))
    } else {
        None
    };
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
    let mesh = crate::cluster::start::prepare(&config).await?;
    let proxy = Proxy::new(shutdown.clone());
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
        worker.clone(),
        proxy.clone(),
    );
    if config.node.roles.iter().any(|role| role == "body") {
        state.set_body(crate::body::BodyRole::new(
            crate::body::BodySettings::from_config(&config),
        ));
    }
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
    // The write journal: what the agent owes the control plane from before a restart is
    // replayed once a master answers; a corrupt file is set aside and named.
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
            state.ride_out().set_journal(std::sync::Arc::new(journal));
        }
        Err(error) => {
            tracing::error!(%error, "[journal] no write journal: writes made while no master answers are lost");
        }
    }
    // The field's start-up warning, word for word, once: the health answer says `degraded` too.
    if !config.wireguard_optional && !crate::local_api::wireguard_up() {
        tracing::warn!("[worker] WARNING: no WireGuard interface detected");
    }
    tracing::info!(listen = %bound, roles = %config.node.roles.join(","), servers = %config.controller.url.join(","), "[worker] hydra agent listening");
    let mut tasks = tokio::task::JoinSet::new();
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
    {
        let state = state.clone();
        let stop = shutdown.clone();
        crate::monitor::attach_logs(state.monitor());
        let watched = crate::monitor::Watched {
            worker: worker.clone(),
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
    if let Some(worker) = worker.clone() {
        let stop = shutdown.clone();
        tasks.spawn(async move {
            worker.run_checks(stop).await;
            Ok(())
        });
    }
    if let (Some(records), Some(worker)) = (records.clone(), worker.clone()) {
        let stop = shutdown.clone();
        tasks.spawn(async move {
            tokio::join!(
                records.clone().watch(worker, stop.clone()),
                records.send(stop)
            );
            Ok(())
        });
    }
    {
        let state = state.clone();
        let stop = shutdown.clone();
        let config = config.clone();
        let worker = worker.clone();
        tasks.spawn(async move {
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
        });
    }
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

/// The session records with their journal (records from before a restart are sent again); a
/// corrupt journal is set aside and named, an unusable one leaves records unsent.
fn open_records(
    config: &AgentConfig,
    state: &AgentState,
) -> Option<std::sync::Arc<crate::reports::Records>> {
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
