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
    tracing::info!(listen = %bound, roles = %config.node.roles.join(","), servers = %config.controller.url.join(","), "[worker] hydra agent listening");
    let mut tasks = tokio::task::JoinSet::new();
    {
        let app = router(state.clone());
        let stop = shutdown.clone();
        let limits = config.serve_settings();
        tasks.spawn(async move {
            hydra_proxy::serve::serve(listener, app, limits, stop, "worker")
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
    }
    proxy.closed().await;
    while tasks.join_next().await.is_some() {}
    tracing::info!("[worker] hydra agent stopped");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
