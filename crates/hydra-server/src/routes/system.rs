//! Health, master discovery and the OpenAPI document.

use axum::extract::State;
use axum::http::HeaderMap;
use hydra_api::cluster::ClusterStatus;
use hydra_api::{CheckMaster, Health, ReplicaInfo};
use hydra_proxy::extract::Json;

use crate::error::{ApiError, store_error};
use crate::state::AppState;

/// Liveness and storage status of this replica; no token needed. Never touches the database,
/// so it is the server's own throughput ceiling in benchmarks.
#[utoipa::path(get, path = "/api/v1/health", tag = "system",
    responses((status = 200, description = "Replica health", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: if state.store_healthy() {
            "ok"
        } else {
            "degraded"
        }
        .to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        storage: state.store().engine().as_str().to_owned(),
        revision: crate::feed::view_revision(state.feed(), state.store()),
        lag_ms: state.feed().lag_ms(hydra_api::system::now_ms()),
    })
}

/// Whether this replica is the master, and where the master is (from the lease row as this
/// replica last read it). A single replica on SQLite is its own master. No token needed.
#[utoipa::path(get, path = "/api/v1/check-master", tag = "system",
    responses((status = 200, description = "Master status", body = CheckMaster)))]
pub async fn check_master(State(state): State<AppState>) -> Json<CheckMaster> {
    let view = state.replica().view();
    Json(CheckMaster {
        is_master: view.is_master,
        master_url: view.master_url,
        master_id: view.master_id,
        term: view.term,
        cluster_id: Some(state.feed().cluster_id().to_owned()),
        replica_id: Some(state.replica().id().to_owned()),
    })
}

/// The replicas of this control plane: id, advertised URL, whether it is master, whether its
/// heartbeat is younger than twice its interval. Any valid token (a node's or the admin's): the
/// answer names every replica's address, which a caller without a token must not learn
/// (`check-master` names the master alone, for discovery). `revision` and `lag_ms` are given for the replica that answers (its
/// own view); each other replica's are on its own `/api/v1/health`.
#[utoipa::path(get, path = "/api/v1/replicas", tag = "system",
    security(("bearer" = [])),
    responses((status = 200, description = "Replicas, by id", body = [ReplicaInfo]),
        (status = 401, description = "No valid token", body = hydra_api::ErrorBody)))]
pub async fn replicas(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Vec<ReplicaInfo>>, ApiError> {
    state.caller(&headers)?;
    let replica = state.replica();
    let own_revision = u64::try_from(crate::feed::view_revision(state.feed(), state.store())).ok();
    let own_lag_ms = Some(state.feed().lag_ms(hydra_api::system::now_ms()));
    if !replica.view().replicated {
        return Ok(Json(vec![ReplicaInfo {
            id: replica.id().to_owned(),
            base_url: replica.advertise_url().to_owned(),
            is_master: true,
            is_healthy: state.store_healthy(),
            revision: own_revision,
            lag_ms: own_lag_ms,
        }]));
    }
    let lease = state.store().lease().await.map_err(store_error)?;
    let master = lease
        .filter(|lease| lease.remaining_ms > 0)
        .map(|lease| lease.holder);
    let healthy_below_ms =
        i64::try_from(replica.timing().renew_ms.saturating_mul(2)).unwrap_or(i64::MAX);
    let rows = state.store().list_replicas().await.map_err(store_error)?;
    Ok(Json(
        rows.into_iter()
            .map(|row| {
                let own = row.id == replica.id();
                ReplicaInfo {
                    is_master: master.as_deref() == Some(row.id.as_str()),
                    is_healthy: row.heartbeat_age_ms < healthy_below_ms,
                    id: row.id,
                    base_url: row.base_url,
                    revision: own.then_some(own_revision).flatten(),
                    lag_ms: own.then_some(own_lag_ms).flatten(),
                }
            })
            .collect(),
    ))
}

/// `GET /api/v1/cluster`: the mesh as this replica sees it. Counts without a token; each
/// member with the admin token (who is where is a map of the fleet).
#[utoipa::path(get, path = "/api/v1/cluster", tag = "system",
    responses((status = 200, description = "The peer mesh as this replica sees it", body = ClusterStatus),
        (status = 401, description = "A token that is not valid", body = hydra_api::ErrorBody),
        (status = 403, description = "A node's token: members need the admin token", body = hydra_api::ErrorBody)))]
pub async fn cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ClusterStatus>, ApiError> {
    let detailed = headers.contains_key(axum::http::header::AUTHORIZATION);
    if detailed {
        state.require_admin(&headers)?;
    }
    Ok(Json(state.cluster().status(detailed)))
}
