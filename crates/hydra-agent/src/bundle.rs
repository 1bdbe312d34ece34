//! The config bundle on the agent: the last applied bundle kept on disk (temp file, fsync,
//! rename) and started from when the agent starts, so a restart while the control plane is
//! away runs on it; the poller (`bundle.poll_interval`, jittered) that fetches a newer one with
//! `If-None-Match` and applies it without dropping running sessions.
//!
//! A bundle overrides only the keys it names, always over the local YAML (so a key the bundle
//! stops naming goes back to its local value). `sessions.max` applies at once (new starts only);
//! the other keys (`ice_servers`, the return/report/rating URLs) apply from the next start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydra_api::{ConfigBundle, NodeConfig};
use hydra_client::{Client, ClientError};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ConfigError};
use crate::http::AgentState;
use crate::ride_out::ConfigSource;
use crate::worker::Worker;

/// The kept bundle's file in the state dir.
pub const KEPT_FILE: &str = "bundle.json";

/// What the agent started from: its local YAML and the kept bundle laid over it, if any.
#[derive(Debug, Clone)]
pub struct Start {
    /// The local configuration, without the bundle: what every bundle is laid over.
    pub local: AgentConfig,
    /// The kept bundle the agent started on.
    pub kept: Option<NodeConfig>,
}

/// The local YAML with `bundle`'s keys laid over it, validated (the message names the key).
pub fn overlay(local: &AgentConfig, bundle: &ConfigBundle) -> Result<AgentConfig, ConfigError> {
    let mut config = local.clone();
    let sessions = &bundle.sessions;
    if let Some(max) = sessions.max {
        config.sessions.max = max;
    }
    if let Some(url) = &sessions.return_url {
        config.sessions.return_url = url.clone();
    }
    if let Some(url) = &sessions.report_url {
        config.sessions.report_url = url.clone();
    }
    if let Some(url) = &sessions.rating_url {
        config.sessions.rating_url = Some(url.clone());
    }
    if let Some(servers) = &bundle.ice_servers {
        config.ice_servers = servers
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()
            .map_err(|error| ConfigError(format!("ice_servers: {error}")))?;
    }
    config
        .validate()
        .map_err(|error| ConfigError(format!("the config bundle does not fit: {error}")))?;
    Ok(config)
}

/// Why the kept bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeptError {
    /// The file exists but cannot be read.
    #[error("cannot read the kept config bundle {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a bundle; it was renamed to `set_aside` (or could not be, see `rename`).
    #[error("the kept config bundle {path} is corrupt ({detail}); set aside as {set_aside}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
        /// Where it is now.
        set_aside: PathBuf,
    },
}

/// Reads the kept bundle of `state_dir`: `Ok(None)` when there is none. A file that does not
/// decode is renamed to `bundle.json.corrupt-<unix ms>` (never used, never deleted) and
/// reported as [`KeptError::Corrupt`].
pub fn load_kept(state_dir: &Path, now_ms: i64) -> Result<Option<NodeConfig>, KeptError> {
    let path = state_dir.join(KEPT_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(KeptError::Read { path, error }),
    };
    match serde_json::from_slice::<NodeConfig>(&text) {
        Ok(config) => Ok(Some(config)),
        Err(error) => {
            let set_aside = state_dir.join(format!("{KEPT_FILE}.corrupt-{now_ms}"));
            if let Err(rename) = std::fs::rename(&path, &set_aside) {
                return Err(KeptError::Read {
                    path,
                    error: std::io::Error::other(format!(
                        "corrupt ({error}) and cannot be set aside: {rename}"
                    )),
                });
            }
            Err(KeptError::Corrupt {
                path,
                detail: error.to_string(),
                set_aside,
            })
        }
    }
}

/// Keeps `config` as the state dir's bundle atomically: a temp file beside it, fsync, rename,
/// fsync of the dir, so a crash leaves the old bundle or the new one, never a torn file. Mode
/// 0600, like the node token: a bundle may hold TURN credentials.
pub fn keep(state_dir: &Path, config: &NodeConfig) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(config).map_err(std::io::Error::other)?;
    write_atomically(state_dir, KEPT_FILE, &text)
}

/// Writes `bytes` as `state_dir/name` atomically (temp file, fsync, rename, fsync of the dir),
/// mode 0600: the bundle and the cluster id the agent keeps across restarts.
pub fn write_atomically(state_dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join(name);
    let temp = state_dir.join(format!("{name}.tmp"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A temp file left by a crash may have other permissions: start from a new one.
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, &path)?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// The configuration to start with: the kept bundle over the local YAML when there is a usable
/// one (logged), else the local YAML. A corrupt kept file is set aside and named in an ERROR.
pub fn with_kept_bundle(local: AgentConfig) -> (AgentConfig, Start) {
    let kept = match load_kept(&local.state_dir, hydra_api::now_ms()) {
        Ok(kept) => kept,
        Err(error) => {
            tracing::error!(%error, "[bundle] starting from the local config");
            None
        }
    };
    let Some(kept) = kept else {
        return (local.clone(), Start { local, kept: None });
    };
    match overlay(&local, &kept.bundle) {
        Ok(config) => {
            tracing::info!(
                version = kept.version,
                sessions_max = config.sessions.max,
                "[bundle] starting from the kept config bundle"
            );
            (
                config,
                Start {
                    local,
                    kept: Some(kept),
                },
            )
        }
        Err(error) => {
            tracing::error!(version = kept.version, %error, "[bundle] the kept config bundle is not used; starting from the local config");
            (local.clone(), Start { local, kept: None })
        }
    }
}

/// The bundle in use, shared by the poller and the health checker.
#[derive(Debug)]
pub struct Bundles {
    local: AgentConfig,
    node_id: String,
    worker: Option<Arc<Worker>>,
    current: Mutex<Option<NodeConfig>>,
    state: AgentState,
}

impl Bundles {
    /// Bundles of `node_id`, starting from what the agent started on.
    pub fn new(
        start: Start,
        node_id: String,
        worker: Option<Arc<Worker>>,
        state: AgentState,
    ) -> Arc<Bundles> {
        state.ride_out().update(|view| {
            view.config_version = start.kept.as_ref().map_or(0, |kept| kept.version);
            view.config_source = if start.kept.is_some() {
                ConfigSource::KeptCopy
            } else {
                ConfigSource::LocalYaml
            };
        });
        if let Some(mesh) = start.kept.as_ref().and_then(|kept| kept.mesh.as_ref()) {
            apply_mesh(&state, mesh);
        }
        Arc::new(Bundles {
            state,
            local: start.local,
            node_id,
            worker,
            current: Mutex::new(start.kept),
        })
    }

    /// The state dir the bundle (and the cluster id) is kept in.
    pub fn state_dir(&self) -> &Path {
        &self.local.state_dir
    }

    /// The version in use (0: the local YAML alone).
    pub fn version(&self) -> u64 {
        self.current
            .lock()
            .expect("bundle lock poisoned")
            .as_ref()
            .map_or(0, |config| config.version)
    }

    fn etag(&self) -> Option<String> {
        self.current
            .lock()
            .expect("bundle lock poisoned")
            .as_ref()
            .map(|config| config.etag.clone())
    }

    /// Asks the control plane once for a newer bundle and applies it; `Ok(false)` when nothing
    /// changed.
    pub async fn poll_once(&self, client: &Client) -> Result<bool, ClientError> {
        let etag = self.etag();
        let answer = client.node_config(&self.node_id, etag.as_deref()).await?;
        let now = hydra_api::now_ms();
        self.state
            .ride_out()
            .update(|view| view.last_poll_ms = Some(now));
        let Some(config) = answer else {
            return Ok(false);
        };
        if etag.as_deref() == Some(config.etag.as_str()) {
            return Ok(false);
        }
        self.apply(config);
        Ok(true)
    }

    fn apply(&self, config: NodeConfig) {
        let effective = match overlay(&self.local, &config.bundle) {
            Ok(effective) => effective,
            Err(error) => {
                // Not applied, not kept: the agent stays on what it runs, and says why.
                tracing::error!(version = config.version, %error, "[bundle] config bundle refused");
                return;
            }
        };
        if let Some(worker) = &self.worker {
            worker.set_max_sessions(effective.sessions.max);
        }
        if let Some(mesh) = &config.mesh {
            apply_mesh(&self.state, mesh);
        }
        if let Err(error) = keep(&self.local.state_dir, &config) {
            tracing::error!(path = %self.local.state_dir.join(KEPT_FILE).display(), %error, "[bundle] cannot keep the config bundle on disk");
        }
        tracing::info!(
            version = config.version,
            sessions_max = effective.sessions.max,
            "[bundle] applied config version {}; sessions.max applies to new starts now, other keys from the next start",
            config.version
        );
        let version = config.version;
        *self.current.lock().expect("bundle lock poisoned") = Some(config);
        self.state.ride_out().update(|view| {
            view.config_version = version;
            // Version 0: the server holds no bundle for this node, so the local YAML rules.
            view.config_source = if version == 0 {
                ConfigSource::LocalYaml
            } else {
                ConfigSource::Server
            };
        });
    }
}

/// Hands the mesh the keys and peers a bundle carries (applied at once, no restart). Keys that
/// do not parse are refused by position, never shown; the keys in use stay.
fn apply_mesh(state: &AgentState, mesh: &hydra_api::MeshBundle) {
    let cluster = state.cluster();
    match hydra_mesh::seal::Keyring::from_hex(&mesh.keys) {
        Ok(keyring) => cluster.set_keyring(keyring),
        Err(error) => {
            tracing::error!(%error, "[bundle] the bundle's mesh keys are refused; keeping the keys in use");
        }
    }
    let peers: Vec<std::net::SocketAddr> = mesh
        .peers
        .iter()
        .filter_map(|peer| peer.parse().ok())
        .collect();
    cluster.set_bundle_peers(peers);
}

/// Polls every `interval` (each wait drawn from `interval * (1 ± 0.1)`) until `shutdown`.
pub async fn poll(
    bundles: Arc<Bundles>,
    client: Client,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        if let Err(error) = bundles.poll_once(&client).await {
            tracing::debug!(%error, "[bundle] poll failed; keeping the config in use");
        }
        let wait = interval.mul_f64(1.0 + (rand::random::<f64>() - 0.5) * 0.2);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs the bundle poller and the health checker for `node_id` until `shutdown`.
pub async fn ride_out(
    start: Start,
    node_id: String,
    worker: Option<Arc<Worker>>,
    client: Client,
    state: AgentState,
    shutdown: CancellationToken,
) {
    let poll_interval = Duration::from_secs_f64(start.local.bundle.poll_interval);
    let health_interval = Duration::from_secs_f64(start.local.health.interval);
    let bundles = Bundles::new(start, node_id, worker, state.clone());
    tokio::join!(
        poll(
            Arc::clone(&bundles),
            client.clone(),
            poll_interval,
            shutdown.clone()
        ),
        crate::health::run(client, bundles, state, health_interval, shutdown),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(version: u64, max: u32) -> NodeConfig {
        let mut bundle = ConfigBundle::default();
        bundle.sessions.max = Some(max);
        NodeConfig::new("w-1".into(), version, Some(1_000), bundle)
    }

    #[test]
    fn a_kept_bundle_survives_and_a_corrupt_one_is_set_aside_not_used() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_kept(dir.path(), 1).unwrap().is_none());
        keep(dir.path(), &config(3, 4)).unwrap();
        keep(dir.path(), &config(4, 2)).unwrap();
        assert_eq!(load_kept(dir.path(), 1).unwrap(), Some(config(4, 2)));
        assert!(!dir.path().join(format!("{KEPT_FILE}.tmp")).exists());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEPT_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "a bundle may hold credentials");

        std::fs::write(dir.path().join(KEPT_FILE), b"{\"node_id\": \"w-1\", \"vers").unwrap();
        let error = load_kept(dir.path(), 77).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&dir.path().join(KEPT_FILE).display().to_string())
                && message.contains("corrupt")
                && message.contains("bundle.json.corrupt-77"),
            "{message}"
        );
        assert!(!dir.path().join(KEPT_FILE).exists());
        let aside = std::fs::read(dir.path().join("bundle.json.corrupt-77")).unwrap();
        assert_eq!(
            aside, b"{\"node_id\": \"w-1\", \"vers",
            "set aside as it was"
        );
        assert!(load_kept(dir.path(), 78).unwrap().is_none());
    }

    #[test]
    fn a_bundle_overrides_what_it_names_over_the_local_yaml() {
        let mut local = AgentConfig::default();
        local.sessions.max = 6;
        local.sessions.return_url = "/local".into();
        let mut bundle = ConfigBundle::default();
        bundle.sessions.max = Some(2);
        let effective = overlay(&local, &bundle).unwrap();
        assert_eq!(
            (
                effective.sessions.max,
                effective.sessions.return_url.as_str()
            ),
            (2, "/local")
        );
        // A bundle that no longer names a key: the local value again.
        let effective = overlay(&local, &ConfigBundle::default()).unwrap();
        assert_eq!(effective.sessions.max, 6);
        // A bundle that does not fit this node's YAML is refused by key.
        local.sessions.port_range_start = 65_000;
        bundle.sessions.max = Some(900);
        let error = overlay(&local, &bundle).unwrap_err();
        assert!(
            error.0.contains("sessions.port_range_start + sessions.max"),
            "{error}"
        );
    }
}
