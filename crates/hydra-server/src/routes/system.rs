//! Health, master discovery and the OpenAPI document.

use axum::extract::State;
use hydra_api::{CheckMaster, Health};

use crate::extract::Json;
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
        revision: crate::feed::view_revision(&state),
        lag_ms: state.feed().lag_ms(crate::state::now_ms()),
    })
}

/// Whether this replica is the master, and where the master is. A single replica is its own
/// master. No token needed.
#[utoipa::path(get, path = "/api/v1/check-master", tag = "system",
    responses((status = 200, description = "Master status", body = CheckMaster)))]
pub async fn check_master(State(state): State<AppState>) -> Json<CheckMaster> {
    Json(CheckMaster {
        is_master: true,
        master_url: Some(state.settings().public_url.clone()),
    })
}
