//! The one place where failures become HTTP answers: `{"error": CODE, "message": TEXT}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hydra_api::{ErrorBody, ErrorCode};
use hydra_store::StoreError;

/// A failed request: a stable code and a message naming the field or resource at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Stable code; decides the status.
    pub code: ErrorCode,
    /// Human explanation.
    pub message: String,
}

impl ApiError {
    /// A failure with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed or a field is invalid.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    /// 404: the named resource does not exist.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// 401: no usable bearer token.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    /// 403: the token is valid but not for this resource.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Forbidden, message)
    }
}

/// Marks a response that failed on the storage engine, so the server's health can see storage
/// failures that its read-only probe cannot (a full disk still answers reads).
#[derive(Debug, Clone, Copy)]
pub struct StorageFailed;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let storage_failed = self.code == ErrorCode::StorageUnavailable;
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.code,
                message: self.message,
            }),
        )
            .into_response();
        if storage_failed {
            response.extensions_mut().insert(StorageFailed);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::from_store(&error)
    }
}

impl From<crate::group_commit::CommitError> for ApiError {
    fn from(error: crate::group_commit::CommitError) -> ApiError {
        use crate::group_commit::CommitError;
        match error {
            CommitError::Store(store) => ApiError::from_store(&store),
            CommitError::ShuttingDown => {
                ApiError::new(ErrorCode::Unavailable, "the server is shutting down")
            }
            CommitError::ShortAnswer { .. } => {
                tracing::error!(%error, "[store] group commit answered short");
                ApiError::new(ErrorCode::Internal, error.to_string())
            }
        }
    }
}

impl ApiError {
    /// The answer for a store failure (logged here, once per request).
    fn from_store(error: &StoreError) -> ApiError {
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
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match rejection {
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than the limit",
                )
            }
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::invalid("request body must be JSON with content-type: application/json")
            }
            JsonRejection::JsonDataError(error) => {
                ApiError::invalid(format!("invalid request body: {}", error.body_text_cause()))
            }
            JsonRejection::JsonSyntaxError(error) => {
                ApiError::invalid(format!("malformed JSON: {}", error.body_text_cause()))
            }
            other => {
                let status = other.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        ErrorCode::PayloadTooLarge,
                        "request body is larger than the limit",
                    )
                } else {
                    ApiError::invalid(other.body_text())
                }
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::invalid(format!("invalid query string: {}", rejection.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::invalid(format!("invalid path: {}", rejection.body_text()))
    }
}

/// The innermost cause of an extractor error, without axum's "Failed to deserialize" prefix.
trait BodyTextCause {
    fn body_text_cause(&self) -> String;
}

impl<T: std::error::Error> BodyTextCause for T {
    fn body_text_cause(&self) -> String {
        let mut cause: &dyn std::error::Error = self;
        while let Some(source) = cause.source() {
            cause = source;
        }
        cause.to_string()
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
