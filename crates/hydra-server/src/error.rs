//! The server's failures as HTTP answers. The error type, its body and the extractors' rejections
//! are both daemons' (`hydra_proxy::api_error`); what is the server's alone is how a store
//! failure is answered ([`store_error`], logged here once per request) and
//! [`run_to_completion`].

use hydra_api::ErrorCode;
use hydra_store::StoreError;

pub use hydra_proxy::api_error::{ApiError, StorageFailed};

/// The answer for a store failure (logged here, once per request); takes the error or a shared
/// `Arc` of it (a group commit answers every waiter with one).
pub fn store_error(error: impl std::borrow::Borrow<StoreError>) -> ApiError {
    let error = error.borrow();
    match error {
        StoreError::Conflict { what } => {
            ApiError::new(ErrorCode::Conflict, format!("{what} already exists"))
        }
        StoreError::NotMaster { term } => {
            tracing::warn!(
                ?term,
                "[controller] a write was refused: this replica is not the master (fenced)"
            );
            ApiError::new(
                ErrorCode::Unavailable,
                "this replica lost the master lease while writing; nothing was written; retry (writes go to the master)",
            )
        }
        StoreError::Corrupt { .. } => {
            tracing::error!(%error, "[store] corrupt value");
            ApiError::new(
                ErrorCode::Internal,
                "a stored value is corrupt; see the server log",
            )
        }
        other => {
            tracing::warn!(error = %other, "[store] request failed on the storage engine");
            ApiError::new(
                ErrorCode::StorageUnavailable,
                "the storage engine is unavailable; retry later",
            )
        }
    }
}

/// Runs `work` to completion in a task of its own and answers its outcome: dropping the returned
/// future (a client that hung up) does not stop it, so changes that must happen together (a
/// store write and the memory that follows it) are never left half-done. `what` names the work
/// in the log and the answer if the task itself fails.
pub async fn run_to_completion<T, F>(what: &'static str, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
{
    tokio::spawn(work).await.map_err(|error| {
        tracing::error!(%error, what, "[controller] a task ended abnormally");
        ApiError::new(
            ErrorCode::Internal,
            format!("{what} ended abnormally; see the server log"),
        )
    })?
}
