//! `hydra server`: resolve the configuration, open the store, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hydra_server::{AdminTokenSource, AppState, Settings};
use hydra_store::Store;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Options of `hydra server`. Every option can also come from the YAML file given with
/// `--config` or from a `HYDRA_*` environment variable (e.g. `HYDRA_LISTEN`); flags win.
#[derive(Debug, Default, clap::Args, Serialize)]
pub struct Args {
    /// YAML config file with any of: listen, data_dir, admin_token, database_url,
    /// heartbeat_timeout, public_url, body_limit_bytes, max_sessions_per_worker,
    /// agent_url_hosts, session_retention, capture_retention, header_read_timeout, idle_timeout,
    /// max_connections, shutdown_timeout, replica_id, lease_ttl, lease_renew, unreachable_for.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Directory for the SQLite database and the generated admin token [default: ./hydra-data].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Admin bearer token. Prefer HYDRA_ADMIN_TOKEN or the generated file: argv is readable by
    /// every local user (ps). Without one the server makes one, stores it in
    /// <data-dir>/admin-token (mode 0600) and says where.
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token: Option<String>,
    /// Use PostgreSQL (postgres://...) instead of the embedded SQLite file.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    /// Seconds without a heartbeat after which a node is offline [default: 60].
    #[arg(long, value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_timeout: Option<u64>,
    /// URL clients and replicas reach this server at; other replicas forward writes to it when
    /// it is master [default: http://<listen>].
    #[arg(long, value_name = "URL", alias = "advertise-url")]
    #[serde(skip_serializing_if = "Option::is_none")]
    public_url: Option<String>,
    /// Most sessions placed on one worker; a worker reporting more is capped [default: 64].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_sessions_per_worker: Option<u32>,
    /// Comma-separated hosts (IPs or names) a worker's agent_url may name besides the node's
    /// enrolled lan_ip and wg_ip, e.g. 127.0.0.1 for a worker on this machine [default: none].
    #[arg(long, value_name = "HOSTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_url_hosts: Option<String>,
    /// How long ended (stopped, error) sessions are kept before they are pruned, e.g. 7d, 12h
    /// [default: 7d].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    session_retention: Option<String>,
    /// This replica's id among the replicas of one PostgreSQL database [default: generated
    /// once and kept in <data-dir>/replica-id].
    #[arg(long, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    replica_id: Option<String>,
    /// Length of the master lease on PostgreSQL, by the database clock, e.g. 6s [default: 6s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ttl: Option<String>,
    /// How often the master renews its lease, e.g. 2s; under two thirds of --lease-ttl
    /// [default: 2s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_renew: Option<String>,
    /// How long ended captures are kept before they are pruned, e.g. 7d, 12h [default: 7d].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    capture_retention: Option<String>,
    /// How long a body a head reported unreachable on both paths is left out of that head's
    /// answers (unless nothing else is left), e.g. 60s, 5m [default: 60s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    unreachable_for: Option<String>,
}

/// The resolved server configuration. Durations are seconds, written with units (`60s`, `7d`)
/// or as plain numbers; the field's controller files load as they are (`crate::config_words`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerConfig {
    #[serde(deserialize_with = "hydra_agent::config_values::listen_addr")]
    listen: SocketAddr,
    data_dir: PathBuf,
    admin_token: Option<String>,
    database_url: Option<String>,
    #[serde(deserialize_with = "hydra_agent::config_values::seconds")]
    heartbeat_timeout: f64,
    #[serde(alias = "advertise_url")]
    public_url: Option<String>,
    /// The name clients reach this server at (the field's `server.domain`): the default
    /// `public_url` is `https://<domain>` with TLS, `http://<domain>:<port>` without.
    domain: Option<String>,
    /// PEM certificate chain (the field's `server.tls_cert`): with `tls_key`, HTTPS only.
    tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (the field's `server.tls_key`).
    tls_key: Option<PathBuf>,
    body_limit_bytes: usize,
    max_sessions_per_worker: u32,
    agent_url_hosts: String,
    #[serde(deserialize_with = "hydra_agent::config_values::seconds")]
    session_retention: f64,
    #[serde(deserialize_with = "hydra_agent::config_values::seconds")]
    capture_retention: f64,
    /// Seconds a request head may take to arrive.
    #[serde(deserialize_with = "hydra_agent::config_values::seconds")]
    header_read_timeout: f64,
    /// Seconds a keep-alive connection may wait between requests.
    #[serde(deserialize_with = "hydra_agent::config_values::seconds")]
    idle_timeout: f64,
    /// Connections open at once; past it, new ones wait.
    max_connections: usize,
    /// Seconds open connections get to finish after SIGTERM/SIGINT before they are dropped.
    #[serde(deserialize_with = "hydra_agent::config_values::seconds")]
    shutdown_timeout: f64,
    replica_id: Option<String>,
    #[serde(deserialize_with = "hydra_agent::config_values::seconds")]
    lease_ttl: f64,
    #[serde(deserialize_with = "hydra_agent::config_values::seconds")]
    lease_renew: f64,
    /// The peer mesh (issue 11): the agent's `cluster:` keys; from the YAML file only.
    #[serde(default)]
    cluster: hydra_mesh::ClusterSection,
    #[serde(deserialize_with = "hydra_agent::config_values::seconds")]
    unreachable_for: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("./hydra-data"),
            admin_token: None,
            database_url: None,
            heartbeat_timeout: 60.0,
            public_url: None,
            domain: None,
            tls_cert: None,
            tls_key: None,
            body_limit_bytes: 64 * 1024,
            max_sessions_per_worker: Settings::DEFAULT_MAX_SESSIONS_PER_WORKER,
            agent_url_hosts: String::new(),
            session_retention: 7.0 * 86_400.0,
            capture_retention: 7.0 * 86_400.0,
            header_read_timeout: 10.0,
            idle_timeout: 60.0,
            max_connections: 1024,
            shutdown_timeout: 10.0,
            replica_id: None,
            lease_ttl: 6.0,
            lease_renew: 2.0,
            cluster: hydra_mesh::ClusterSection::default(),
            unreachable_for: 60.0,
        }
    }
}

const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "admin_token",
    "database_url",
    "heartbeat_timeout",
    "public_url",
    "domain",
    "tls_cert",
    "tls_key",
    "body_limit_bytes",
    "max_sessions_per_worker",
    "agent_url_hosts",
    "session_retention",
    "capture_retention",
    "header_read_timeout",
    "idle_timeout",
    "max_connections",
    "shutdown_timeout",
    "replica_id",
    "lease_ttl",
    "lease_renew",
    "unreachable_for",
];

/// The configuration `args` resolve to: defaults, the file, `HYDRA_*`, flags.
fn resolve(args: &Args) -> anyhow::Result<ServerConfig> {
    crate::config::layered(
        &ServerConfig::default(),
        args.config.as_deref(),
        ENV_KEYS,
        args,
    )
}

/// What `run` checked of the resolved config before opening anything: each bad value is refused
/// naming its flag, and nothing was created yet.
struct Checked {
    session_retention: Duration,
    capture_retention: Duration,
    lease: hydra_core::mastership::LeaseTiming,
    limits: hydra_server::ServeSettings,
}

/// Checks the resolved config's numbers and the mesh section.
fn check(config: &ServerConfig) -> anyhow::Result<Checked> {
    anyhow::ensure!(
        config.heartbeat_timeout >= 1.0,
        "--heartbeat-timeout must be at least 1 second"
    );
    let session_retention = Duration::from_secs_f64(config.session_retention);
    anyhow::ensure!(
        session_retention >= Duration::from_secs(60),
        "--session-retention must be at least 1m"
    );
    let capture_retention = Duration::from_secs_f64(config.capture_retention);
    anyhow::ensure!(
        capture_retention >= Duration::from_secs(60),
        "--capture-retention must be at least 1m"
    );
    anyhow::ensure!(
        config.header_read_timeout > 0.0 && config.idle_timeout > 0.0,
        "header_read_timeout and idle_timeout must be more than 0 seconds"
    );
    anyhow::ensure!(
        config.max_connections > 0,
        "max_connections must be at least 1"
    );
    let lease_ttl = Duration::from_secs_f64(config.lease_ttl);
    let lease_renew = Duration::from_secs_f64(config.lease_renew);
    let lease = hydra_core::mastership::LeaseTiming::new(
        u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX),
        u64::try_from(lease_renew.as_millis()).unwrap_or(u64::MAX),
    )
    .map_err(|error| anyhow::anyhow!("--lease-ttl/--lease-renew: {error}"))?;
    config
        .cluster
        .validate_for_server()
        .map_err(anyhow::Error::msg)?;
    let limits = hydra_server::ServeSettings {
        header_read_timeout: Duration::from_secs_f64(config.header_read_timeout),
        idle_timeout: Duration::from_secs_f64(config.idle_timeout),
        max_connections: config.max_connections,
        shutdown_timeout: Duration::from_secs_f64(config.shutdown_timeout),
    };
    Ok(Checked {
        session_retention,
        capture_retention,
        lease,
        limits,
    })
}

/// The data dir, the admin token (given, stored there, or generated and stored; the log says
/// which, never the token) and the replica id.
fn prepare_data_dir(config: &ServerConfig) -> anyhow::Result<(String, String)> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create data dir {} (--data-dir)",
            config.data_dir.display()
        )
    })?;
    let (admin_token, source) =
        hydra_server::resolve_admin_token(&config.data_dir, config.admin_token.clone())
            .with_context(|| {
                format!(
                    "cannot set up the admin token in {}",
                    config.data_dir.display()
                )
            })?;
    match &source {
        AdminTokenSource::Generated(path) => {
            tracing::info!(path = %path.display(), "[controller] no admin token given: generated one and stored it (mode 0600); read it from this file")
        }
        AdminTokenSource::File(path) => {
            tracing::info!(path = %path.display(), "[controller] using the admin token stored in the data dir")
        }
        AdminTokenSource::Given => {}
    }
    let replica_id = hydra_server::resolve_replica_id(&config.data_dir, config.replica_id.clone())
        .with_context(|| {
            format!(
                "cannot set up the replica id in {}",
                config.data_dir.display()
            )
        })?;
    Ok((admin_token, replica_id))
}

/// Opens PostgreSQL (`--database-url`) or the data dir's SQLite file, with the lock that keeps a
/// second server off that file (held as long as the returned guard lives).
async fn open_store(config: &ServerConfig) -> anyhow::Result<(Store, Option<std::fs::File>)> {
    match &config.database_url {
        Some(url) => Ok((
            Store::open_postgres(url)
                .await
                .context("cannot open PostgreSQL (--database-url)")?,
            None,
        )),
        None => {
            let path = config.data_dir.join("hydra.db");
            let lock = lock_sqlite(&path)?;
            let store = Store::open_sqlite(&path)
                .await
                .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
            Ok((store, Some(lock)))
        }
    }
}

/// The running server's settings from the config, the checked values and the bound address
/// (which makes the public URL when none is configured).
fn settings(
    config: &ServerConfig,
    checked: &Checked,
    bound: SocketAddr,
    replica_id: String,
) -> Settings {
    Settings {
        heartbeat_timeout: Duration::from_secs_f64(config.heartbeat_timeout),
        public_url: config
            .public_url
            .clone()
            .unwrap_or_else(|| match &config.domain {
                Some(domain) => hydra_agent::config_values::domain_url(
                    domain,
                    config.tls_cert.is_some(),
                    bound.port(),
                ),
                None => format!("http://{bound}"),
            }),
        body_limit_bytes: config.body_limit_bytes,
        max_sessions_per_worker: config.max_sessions_per_worker,
        agent_url_hosts: config
            .agent_url_hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(str::to_owned)
            .collect(),
        session_retention: checked.session_retention,
        replica_id,
        lease: checked.lease,
        capture_retention: checked.capture_retention,
        unreachable_for: Duration::from_secs_f64(config.unreachable_for),
    }
}

/// Runs the server until interrupted.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = resolve(&args)?;
    let checked = check(&config)?;
    // HTTPS when configured (the field's server.tls_cert/tls_key): a bad PEM names the file.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            hydra_proxy::tls::acceptor(cert, key).map_err(|error| anyhow::anyhow!("{error}"))?,
        ),
        (None, None) => None,
        _ => anyhow::bail!("tls_cert and tls_key go together: set both or neither"),
    };
    let (admin_token, replica_id) = prepare_data_dir(&config)?;
    // Held for the whole run: the kernel releases it when the process ends, however it ends.
    let (store, _sqlite_lock) = open_store(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen): is another hydra server running?",
                config.listen
            )
        })?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let settings = settings(&config, &checked, bound, replica_id.clone());
    let state = AppState::new(store.clone(), settings, &admin_token)
        .await
        .context("cannot load the registry from the store")?;
    // The listen address, when it names one, is where the mesh binds unless told otherwise.
    let listen_ip = Some(config.listen.ip()).filter(|ip| !ip.is_unspecified());
    if let Some(prepared) = hydra_mesh::start::prepare(&config.cluster, listen_ip)
        .await
        .map_err(anyhow::Error::msg)?
    {
        state.join_mesh(prepared, config.cluster.clone());
    }
    let node_count = state
        .registry()
        .read()
        .map(|registry| registry.len())
        .unwrap_or_default();
    tracing::info!(listen = %bound, storage = store.engine().as_str(), nodes = node_count, %replica_id, "[controller] hydra server listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(hydra_proxy::signals::stop_on_signal(
        shutdown.clone(),
        "[controller] shutting down: finishing in-flight requests (a second signal exits at once)",
    ));
    hydra_server::serve_with_tls(listener, state, shutdown, checked.limits, tls)
        .await
        .context("server failed")?;
    store.close().await;
    tracing::info!("[controller] hydra server stopped");
    Ok(ExitCode::SUCCESS)
}

/// Refuses a second `hydra server` on the same SQLite file: SQLite serves one replica (several
/// replicas need PostgreSQL). An exclusive lock on `<file>.lock`, released by the kernel when
/// the process ends (even by SIGKILL), so a restart after a crash is never refused.
fn lock_sqlite(database: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = database.with_extension("db.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another hydra server already uses the SQLite database {} (locked through {}): SQLite \
             serves a single replica; to run several replicas, give each the same PostgreSQL \
             database with --database-url postgres://...",
            database.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

#[cfg(test)]
#[path = "server_field_tests.rs"]
mod field_tests;
