//! Relay sessions: placement and the session lifecycle behind `POST/GET /api/v1/sessions` and
//! `GET/DELETE /api/v1/sessions/{id}` (the handlers and the router are `crate::routes::sessions`,
//! the colocated `/session/{id}/...` proxy `crate::routes::colocated`).
//!
//! A new session goes to the least-loaded healthy worker (`hydra_core::placement`); its record
//! is written to the store before the worker is asked, and updated with the worker's answer.
//! Every session write goes through the group-commit writer (`AppState::session_writes`), so
//! concurrent placements share one transaction and one fsync, each answered after its commit. A
//! worker that cannot start it answers with the reason; the next-best worker is tried once.
//!
//! Files: this one has the shared `Relay` and the session view; `start.rs`
//! places and starts a new one (in a task of its own, so a client that hangs up does not stop
//! it); `worker_report.rs` applies a worker's report (sequence, reconcile, store, directory);
//! `sweep.rs` is the duty that cleans up after workers that are gone.

pub(crate) mod notice;
mod start;
mod sweep;
mod worker_report;

pub use sweep::{sweep, sweep_once};
pub use worker_report::apply_report;

pub(crate) use start::__path_create;
pub use start::create;

use std::time::Duration;

use hydra_api::{SessionState, SessionView};
use hydra_core::placement::PlacementSettings;
use hydra_store::{SessionRecord, SessionStatus};

use crate::error::ApiError;
use hydra_api::system::now_ms;

use crate::state::AppState;
use crate::workers::SlotReservation;

/// Longest wait for a worker to end one.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the relay routes share besides `AppState`: placement. Agents are asked through
/// `hydra_client::AgentClient` (`WorkerInfo::agent`). Benchmarks and tests of placement make
/// their own (a `Relay`), which places on the workers of the `AppState` it is given.
#[derive(Clone, Default)]
pub struct Relay;

impl Relay {
    /// Chooses the worker for `session_id` (in `district`, not in `excluded`) and takes one of
    /// its slots; the slot is given back when the reservation drops uncommitted.
    pub fn place(
        &self,
        state: &AppState,
        district: Option<&str>,
        excluded: &[String],
        session_id: &str,
    ) -> Result<SlotReservation, hydra_core::placement::PlacementError> {
        let settings = PlacementSettings {
            heartbeat_timeout_ms: state.heartbeat_timeout_ms(),
        };
        state.workers().reserve(
            state.registry(),
            district,
            excluded,
            session_id,
            now_ms(),
            &settings,
        )
    }

    /// As [`Relay::place`], for a new session whose id names the worker chosen:
    /// `<worker_id>:<uuid>` from `random` (`hydra_core::session_id`), or an `s-` id when the
    /// worker's id cannot be carried in one.
    pub fn place_new(
        &self,
        state: &AppState,
        district: Option<&str>,
        excluded: &[String],
        random: [u8; 16],
    ) -> Result<SlotReservation, hydra_core::placement::PlacementError> {
        let settings = PlacementSettings {
            heartbeat_timeout_ms: state.heartbeat_timeout_ms(),
        };
        state.workers().reserve_named(
            state.registry(),
            district,
            excluded,
            |worker_id| {
                hydra_core::session_id::owned_session_id(worker_id, random)
                    .unwrap_or_else(|| format!("s-{}", hex::encode(&random[..8])))
            },
            now_ms(),
            &settings,
        )
    }
}

/// The view of a stored session.
pub fn view(record: &SessionRecord) -> SessionView {
    SessionView {
        session_id: record.id.clone(),
        worker_id: record.worker_id.clone(),
        body_ip: record.body_ip.clone(),
        body_id: record.body_id.clone(),
        head_id: record.head_id.clone(),
        experience: record.experience.clone(),
        port: record.port,
        stream_url: record.stream_url.clone(),
        status: match record.status {
            SessionStatus::Starting => SessionState::Starting,
            SessionStatus::Running => SessionState::Running,
            SessionStatus::Stopped => SessionState::Stopped,
            SessionStatus::Error => SessionState::Error,
        },
        error: record.error.clone(),
        created_at: hydra_api::rfc3339(record.created_at),
        updated_at: hydra_api::rfc3339(record.updated_at),
    }
}

/// The stored record of session `id`, or 404 naming it.
pub(crate) async fn stored(state: &AppState, id: &str) -> Result<SessionRecord, ApiError> {
    state
        .store()
        .get_session(id)
        .await
        .map_err(crate::error::store_error)?
        .ok_or_else(|| unknown_session(id))
}

pub(crate) fn unknown_session(id: &str) -> ApiError {
    ApiError::not_found(format!("session {id:?} does not exist"))
}
