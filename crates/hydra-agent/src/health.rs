//! The health checker task: every `health.interval` it asks every replica's `check-master`,
//! hands the answers to `hydra_core::health` and carries out what it says (point the SDK's
//! cached master at a new master, log the field's WARN on entering degraded mode and the INFO on
//! recovery, resync the config bundle when a master is back, read `GET /api/v1/replicas` into
//! the SDK's replica set on a failure and every few rounds). Nothing it does stops a session or
//! the proxy: degraded mode only means the agent runs on the config it has.
//!
//! The cluster id it learns from the first master it finds is kept in the state dir beside the
//! kept bundle (`cluster-id`) and given to the SDK, so a foreign `hydra server` that takes a
//! replica's address is never followed or written to, also after a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hydra_client::{Client, RetryPolicy};
use hydra_core::health::{
    HealthChecker, HealthState, Output, REFRESH_EVERY_ROUNDS, ReplicaAnswer, ReplicaCheck,
};
use tokio_util::sync::CancellationToken;

use crate::bundle::Bundles;
use crate::http::AgentState;
use crate::ride_out::ReplicaSeen;

/// One round of `check-master` over every replica, at once: each answer for the checker, and
/// the lease term each replica named (for `hydra status`; the checker does not need it).
async fn ask_replicas(client: &Client) -> (Vec<ReplicaCheck>, Vec<Option<u64>>) {
    let urls = client.replica_urls();
    let answers = futures::future::join_all(urls.iter().map(|url| client.check_master(url))).await;
    urls.into_iter()
        .zip(answers)
        .map(|(base_url, answer)| match answer {
            Ok(check) => (
                ReplicaCheck {
                    base_url,
                    answer: ReplicaAnswer::Answered {
                        is_master: check.is_master,
                        master_url: check
                            .master_url
                            .map(|url| url.trim_end_matches('/').to_owned()),
                        cluster_id: check.cluster_id,
                    },
                },
                check.term.and_then(|term| u64::try_from(term).ok()),
            ),
            Err(_) => (
                ReplicaCheck {
                    base_url,
                    answer: ReplicaAnswer::Silent,
                },
                None,
            ),
        })
        .unzip()
}

/// The file in the state dir that keeps the cluster id, beside the kept bundle.
pub const CLUSTER_FILE: &str = "cluster-id";

/// Reads the kept cluster id of `state_dir` (`None` when there is none). A file that is not an
/// id is renamed to `cluster-id.corrupt-<unix ms>` (never used, never deleted), named in an
/// ERROR, and the id is learned again.
pub fn load_cluster(state_dir: &Path, now_ms: i64) -> Option<String> {
    let path = state_dir.join(CLUSTER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "[health] cannot read the kept cluster id; learning it again");
            return None;
        }
    };
    let id = text.trim();
    if is_cluster_id(id) {
        return Some(id.to_owned());
    }
    let set_aside = state_dir.join(format!("{CLUSTER_FILE}.corrupt-{now_ms}"));
    match std::fs::rename(&path, &set_aside) {
        Ok(()) => {
            tracing::error!(path = %path.display(), set_aside = %set_aside.display(), "[health] the kept cluster id is corrupt; set aside, learning it again")
        }
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "[health] the kept cluster id is corrupt and cannot be set aside; learning it again")
        }
    }
    None
}

/// What a cluster id looks like: the store's feed id, 32 lowercase hex digits on both engines.
fn is_cluster_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// Keeps `cluster_id` in `state_dir` (atomically, as the bundle).
fn keep_cluster(state_dir: &Path, cluster_id: &str) {
    let path: PathBuf = state_dir.join(CLUSTER_FILE);
    if let Err(error) = crate::bundle::write_atomically(
        state_dir,
        CLUSTER_FILE,
        format!("{cluster_id}\n").as_bytes(),
    ) {
        tracing::error!(path = %path.display(), %error, "[health] cannot keep the cluster id on disk; it is learned again at the next start");
    }
}

/// Logs one output at the level it deserves and carries out its action.
fn carry_out(output: &Output, client: &Client, state_dir: &Path) {
    match output {
        Output::LearnedCluster { cluster_id } => {
            if is_cluster_id(cluster_id) {
                keep_cluster(state_dir, cluster_id);
            }
            client.set_cluster_id(Some(cluster_id.clone()));
            tracing::info!(%cluster_id, "{output}");
        }
        Output::ForeignReplica { url, cluster_id } => {
            tracing::warn!(replica = %url, %cluster_id, "{output}");
        }
        Output::FollowMaster { to, .. } => {
            if let Err(error) = client.set_master_url(to) {
                tracing::warn!(master = %to, %error, "[health] cannot follow the master");
            } else {
                tracing::info!(master = %to, "{output}");
            }
        }
        Output::EnteredDegraded { config_version } => {
            tracing::warn!(config_version, "{output}");
        }
        Output::Recovered { degraded_for_ms } => {
            tracing::info!(degraded_for_ms, "{output}");
        }
        // The refresh is carried out by the round (it awaits an answer).
        Output::RefreshReplicas { .. } | Output::Resync => tracing::debug!("{output}"),
    }
}

/// Reads the replica list (one try, no retries: the next round tries again) and applies it to
/// the SDK's replica set, logging each replica learned or forgotten once.
async fn refresh_replica_list(client: &Client) {
    match client.with_retry(RetryPolicy::once()).list_replicas().await {
        Ok(listed) => {
            let change = client.apply_replica_list(&listed);
            for url in &change.added {
                tracing::info!(replica = %url, "[health] learned replica {url} from the replica list");
            }
            for url in &change.removed {
                tracing::info!(replica = %url, "[health] forgot replica {url}: the replica list no longer names it healthy");
            }
        }
        Err(error) => tracing::debug!(%error, "[health] cannot read the replica list"),
    }
}

/// Runs rounds every `interval` until `shutdown`.
pub async fn run(
    client: Client,
    bundles: Arc<Bundles>,
    state: AgentState,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let state_dir = bundles.state_dir().to_owned();
    // The daemon gave the SDK the kept cluster id before its first call.
    let kept_cluster = client.cluster_id();
    let mut checker = HealthChecker::new(client.master_url())
        .with_refresh_every(interval_ms.saturating_mul(REFRESH_EVERY_ROUNDS))
        .with_cluster(kept_cluster);
    loop {
        let (checks, terms) = ask_replicas(&client).await;
        let outputs = checker.round(&checks, hydra_api::now_ms(), bundles.version());
        for output in &outputs {
            carry_out(output, &client, &state_dir);
        }
        if outputs
            .iter()
            .any(|output| matches!(output, Output::RefreshReplicas { .. }))
        {
            refresh_replica_list(&client).await;
        }
        let health = checker.state();
        state.ride_out().update(|view| {
            view.health = health;
            view.replicas = checks
                .iter()
                .zip(&terms)
                .map(|(check, term)| ReplicaSeen {
                    url: check.base_url.clone(),
                    healthy: checker.answered_as_member(check),
                    is_master: checker.answered_as_member(check)
                        && matches!(
                            check.answer,
                            ReplicaAnswer::Answered {
                                is_master: true,
                                ..
                            }
                        ),
                    term: *term,
                })
                .collect();
        });
        // Recovering until the journal was replayed to the master that is back, in order, and
        // the bundle polled once from it; a failed resync is tried again next round.
        if matches!(checker.state(), HealthState::Recovering { .. }) {
            let replayed = match state.ride_out().journal() {
                Some(journal) => journal.replay(&client).await.map(drop),
                None => Ok(()),
            };
            let resynced = match replayed {
                Ok(()) => bundles.poll_once(&client).await.map(drop),
                Err(error) => Err(error),
            };
            match resynced {
                Ok(()) => {
                    for output in checker.caught_up(hydra_api::now_ms()) {
                        carry_out(&output, &client, &state_dir);
                    }
                    let health = checker.state();
                    state.ride_out().update(|view| view.health = health);
                }
                Err(error) => {
                    tracing::debug!(%error, "[health] resync failed; trying again next round")
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
