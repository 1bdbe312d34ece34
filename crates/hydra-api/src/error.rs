//! The error body every endpoint answers with on failure.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable machine-readable error codes; the HTTP status follows from the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field is invalid (400).
    InvalidRequest,
    /// No or a wrong bearer token (401).
    Unauthorized,
    /// The token is valid but not for this resource (403).
    Forbidden,
    /// The named resource does not exist (404).
    NotFound,
    /// The resource exists already (409).
    Conflict,
    /// The request body is larger than the limit (413).
    PayloadTooLarge,
    /// No worker, port or capacity to place the work (503).
    Unavailable,
    /// The storage engine failed (503).
    StorageUnavailable,
    /// A bug (500).
    Internal,
    /// A downstream node answered with a failure (502).
    BadGateway,
}

impl ErrorCode {
    /// The wire word for the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::BadGateway => "bad_gateway",
        }
    }

    /// The code for its wire word; `None` for a word this build does not know.
    pub fn from_wire(word: &str) -> Option<ErrorCode> {
        serde_json::from_value(serde_json::Value::String(word.to_owned())).ok()
    }

    /// The HTTP status the server answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unavailable | ErrorCode::StorageUnavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::BadGateway => 502,
        }
    }
}

/// `{"error": CODE, "message": TEXT}`: what every failed request answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code to match on.
    pub error: ErrorCode,
    /// Human explanation; names the field or resource at fault.
    pub message: String,
}
