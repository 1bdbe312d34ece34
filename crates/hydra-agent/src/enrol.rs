//! The node's identity: enrol once with a one-time enrolment token (or the admin token), keep
//! the node token in the state dir (mode 0600), and use it from then on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hydra_api::{EnrolRequest, RoleWire};
use hydra_client::{Client, ClientError};
use hydra_core::backoff::full_jitter_delay_ms;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;

/// The file in the state dir that holds the node id and token.
pub const IDENTITY_FILE: &str = "node-token.json";

/// The node id and its bearer token; `Debug` hides the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Node id.
    pub node_id: String,
    /// The node's own bearer token.
    pub token: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why the agent has no identity.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// Nothing stored and no token to enrol with.
    #[error(
        "no node token stored in {0} and nothing to enrol with: set controller.enrolment_token (HYDRA_CONTROLLER__ENROLMENT_TOKEN, from `hydra nodes token create`) for the first start"
    )]
    NoToken(PathBuf),
    /// The server refused the enrolment (bad field, id taken, wrong admin token).
    #[error("enrolment refused: {0}")]
    Refused(ClientError),
    /// The state dir cannot be read or written.
    #[error("state dir {path}: {error}")]
    StateDir {
        /// The file at fault.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// Stopped before it could enrol.
    #[error("stopped before enrolment")]
    Stopped,
}

/// The identity stored in `state_dir`, if any.
pub fn load_identity(state_dir: &Path) -> Result<Option<Identity>, EnrolError> {
    let path = state_dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| EnrolError::StateDir {
                    path,
                    error: std::io::Error::other(error),
                })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(EnrolError::StateDir { path, error }),
    }
}

/// Writes the identity durably, readable only by its owner.
pub fn store_identity(state_dir: &Path, identity: &Identity) -> Result<(), EnrolError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join(IDENTITY_FILE);
    let failed = |error: std::io::Error| EnrolError::StateDir {
        path: path.clone(),
        error,
    };
    std::fs::create_dir_all(state_dir).map_err(failed)?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(failed)?;
    let text =
        serde_json::to_vec(identity).map_err(|error| failed(std::io::Error::other(error)))?;
    file.write_all(&text).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, &path).map_err(failed)?;
    std::fs::File::open(state_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed)
}

/// Whether an enrolment that failed with `error` is tried again: whenever a later try may
/// succeed (`ClientError::is_transient`, the SDK's one rule: no answer, no master, a 5xx or 429),
/// and when it may have landed unseen (`Indeterminate`): the retry then lands, or answers 409,
/// which is final, so the retry is the check the SDK asks for.
fn retry_enrolment(error: &ClientError) -> bool {
    error.is_transient() || matches!(error, ClientError::Indeterminate { .. })
}

/// The stored identity, else a new enrolment with `controller.enrolment_token` (or, failing
/// that, the admin token in `controller.token`). While no replica answers
/// it retries with full-jitter backoff (1 s doubling to 60 s) until `shutdown`; a refusal is final.
pub async fn enrol_or_load(
    config: &AgentConfig,
    client: &Client,
    shutdown: &CancellationToken,
) -> Result<Identity, EnrolError> {
    if let Some(identity) = load_identity(&config.state_dir)? {
        tracing::info!(node_id = %identity.node_id, "[heartbeat] using the stored node token");
        return Ok(identity);
    }
    let usable = |token: &Option<String>| token.clone().filter(|token| !token.is_empty());
    let Some(credential) =
        usable(&config.controller.enrolment_token).or_else(|| usable(&config.controller.token))
    else {
        return Err(EnrolError::NoToken(config.state_dir.join(IDENTITY_FILE)));
    };
    let admin = client.with_token(credential);
    let request = EnrolRequest {
        id: config.node.id.clone(),
        name: config.node.name.clone(),
        roles: config
            .node
            .roles
            .iter()
            .filter_map(|role| role.parse::<hydra_core::Role>().ok())
            .map(RoleWire::from)
            .collect(),
        district: config.node.district.clone(),
        venue: config.node.venue.clone(),
        owner: config.node.owner.clone(),
        allowed_orgs: Vec::new(),
        lan_ip: config.node.lan_ip,
        wg_ip: config.node.wg_ip,
        vram_mb: None,
        cost_tier: Default::default(),
    };
    let mut failures: u32 = 0;
    loop {
        match admin.enrol(&request).await {
            Ok(answer) => {
                let identity = Identity {
                    node_id: answer.node.id,
                    token: answer.token,
                };
                store_identity(&config.state_dir, &identity)?;
                // A new identity may come from another control plane: its cluster is learned
                // again from the first master found, not kept from the old one.
                let _ = std::fs::remove_file(config.state_dir.join(crate::health::CLUSTER_FILE));
                tracing::info!(node_id = %identity.node_id, "[heartbeat] enrolled; node token stored in the state dir");
                return Ok(identity);
            }
            Err(error) if retry_enrolment(&error) => {
                let wait = Duration::from_millis(full_jitter_delay_ms(
                    failures,
                    1_000,
                    60_000,
                    rand::random::<f64>(),
                ));
                failures = failures.saturating_add(1);
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "[heartbeat] cannot enrol yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(EnrolError::Stopped),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(error) => return Err(EnrolError::Refused(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The enrolment retries what the SDK calls transient, plus a write that may have landed;
    /// every refusal is final.
    #[test]
    fn enrolment_retries_what_the_sdk_calls_transient_and_an_unseen_write() {
        let rejected = |status: u16| ClientError::Rejected {
            status,
            code: "x".into(),
            message: String::new(),
        };
        let cases = [
            (
                "unreachable",
                ClientError::Unreachable {
                    replicas: vec![],
                    last_error: String::new(),
                },
            ),
            ("no master", ClientError::NoMaster { replicas: vec![] }),
            (
                "indeterminate",
                ClientError::Indeterminate {
                    url: String::new(),
                    detail: String::new(),
                },
            ),
            (
                "server 503",
                ClientError::Server {
                    url: String::new(),
                    status: 503,
                    code: "unavailable".into(),
                    message: String::new(),
                },
            ),
            ("rejected 429", rejected(429)),
            ("rejected 400", rejected(400)),
            ("rejected 409", rejected(409)),
            ("unauthorized", ClientError::Unauthorized(String::new())),
            ("forbidden", ClientError::Forbidden(String::new())),
            ("config", ClientError::Config(String::new())),
        ];
        let table: String = cases
            .iter()
            .map(|(name, error)| format!("{name}: {}\n", retry_enrolment(error)))
            .collect();
        expect_test::expect![[r#"
            unreachable: true
            no master: true
            indeterminate: true
            server 503: true
            rejected 429: true
            rejected 400: false
            rejected 409: false
            unauthorized: false
            forbidden: false
            config: false
        "#]]
        .assert_eq(&table);
    }
}
