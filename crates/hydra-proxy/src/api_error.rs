//! The one HTTP error of both daemons: `{"error": CODE, "message": TEXT}` with the code's status
//! (`hydra_api::ErrorCode`). The server and the agent answer every refusal with an [`ApiError`],
//! and axum's own rejections (bad JSON, query or path) are turned into one here, so a client gets
//! the same body, code and wording from either.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hydra_api::ErrorCode;

use crate::proxy::error_answer;

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

    /// 503: the service cannot do it now; retrying later may work.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unavailable, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// Marks a response that failed on the storage engine, so the server's health can see storage
/// failures that its read-only probe cannot (a full disk still answers reads).
#[derive(Debug, Clone, Copy)]
pub struct StorageFailed;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let storage_failed = self.code == ErrorCode::StorageUnavailable;
        let mut response = error_answer(status, self.code.as_str(), &self.message);
        if storage_failed {
            response.extensions_mut().insert(StorageFailed);
        }
        response
    }
}

/// The answer for a body larger than the limit, whichever layer noticed it.
fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        "request body is larger than the limit",
    )
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match rejection {
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                too_large()
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
                if other.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
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
