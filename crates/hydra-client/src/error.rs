//! The one error type of the SDK: what a caller can match on, with the server's own message.

use hydra_api::{ErrorBody, ErrorCode};

/// Every way a call through [`crate::Client`] can fail.
///
/// 4xx answers are never retried; `Unreachable`, `NoMaster` and `Server` are what remains after
/// the retry policy gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The client was configured with something unusable (no replica, a bad URL).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// No replica answered at the transport level (refused, timed out, reset).
    #[error("no replica answered (tried {}): {last_error}", replicas.join(", "))]
    Unreachable {
        /// Base URLs tried, in the order tried.
        replicas: Vec<String>,
        /// The last transport error, with its causes.
        last_error: String,
    },
    /// Replicas answered but none is the master and none knows where the master is.
    #[error("no replica is the master (asked {})", replicas.join(", "))]
    NoMaster {
        /// Base URLs that answered `is_master: false` without a `master_url`.
        replicas: Vec<String>,
    },
    /// A non-idempotent write failed after it may have reached the server; it was not retried,
    /// so the caller must check (for an enrolment: list the nodes) before trying again.
    #[error("the request to {url} may or may not have been applied (not retried): {detail}")]
    Indeterminate {
        /// The URL of the request.
        url: String,
        /// The transport error, with its causes.
        detail: String,
    },
    /// 401: no token or a wrong one.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 403: the token is valid but not for this resource.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404: the named resource does not exist; the server's message names it.
    #[error("not found: {0}")]
    NotFound(String),
    /// Another 4xx: the server rejected the request; its message names the field at fault.
    #[error("rejected by the server ({status} {code}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The server's stable error code (`invalid_request`, `conflict`, ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// A 5xx answer (after retries for idempotent requests).
    #[error("server error from {url} ({status} {code}): {message}")]
    Server {
        /// The URL of the request.
        url: String,
        /// HTTP status.
        status: u16,
        /// The server's error code, or `unknown` when the body was not an error body.
        code: String,
        /// The server's message.
        message: String,
    },
    /// A 2xx answer whose body is not what the API promises.
    #[error("cannot decode the answer of {url}: {detail}")]
    Decode {
        /// The URL of the request.
        url: String,
        /// What serde said.
        detail: String,
    },
}

impl ClientError {
    /// Builds the error for a non-2xx answer from its status and body.
    pub(crate) fn from_answer(url: &str, status: u16, body: &[u8]) -> ClientError {
        let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(error_body) => (error_body.error.as_str().to_owned(), error_body.message),
            Err(_) => ("unknown".to_owned(), snippet(body)),
        };
        match status {
            401 => ClientError::Unauthorized(message),
            403 => ClientError::Forbidden(message),
            404 => ClientError::NotFound(message),
            400..=499 => ClientError::Rejected {
                status,
                code,
                message,
            },
            _ => ClientError::Server {
                url: url.to_owned(),
                status,
                code,
                message,
            },
        }
    }

    /// The HTTP status of an answer that was not a success; `None` when none came.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Unauthorized(_) => Some(401),
            ClientError::Forbidden(_) => Some(403),
            ClientError::NotFound(_) => Some(404),
            ClientError::Rejected { status, .. } | ClientError::Server { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The error body a refusing answer carried, when it carried one with a known code: what a
    /// caller passes on as its own refusal (the server relays a worker's).
    pub fn error_body(&self) -> Option<ErrorBody> {
        let (code, message) = match self {
            ClientError::Unauthorized(message) => (ErrorCode::Unauthorized, message),
            ClientError::Forbidden(message) => (ErrorCode::Forbidden, message),
            ClientError::NotFound(message) => (ErrorCode::NotFound, message),
            ClientError::Rejected { code, message, .. }
            | ClientError::Server { code, message, .. } => (ErrorCode::from_wire(code)?, message),
            _ => return None,
        };
        Some(ErrorBody {
            error: code,
            message: message.clone(),
        })
    }

    /// Whether trying again later might succeed (a transport failure, no master, a 5xx or 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::NoMaster { .. } => true,
            ClientError::Server { .. } => true,
            ClientError::Rejected { status, .. } => *status == 429,
            _ => false,
        }
    }
}

/// The first 200 characters of a non-JSON body, for a message a person can read.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut snippet: String = trimmed.chars().take(200).collect();
    if trimmed.chars().count() > 200 {
        snippet.push_str("...");
    }
    snippet
}

/// A reqwest error with its chain of causes, without repeating itself.
pub(crate) fn describe_transport(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    if error.is_timeout() {
        parts.push("timed out".to_owned());
    }
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = source {
        let text = current.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_statuses_to_variants_with_the_server_message() {
        let body = br#"{"error":"invalid_request","message":"field `venue` is empty"}"#;
        assert_eq!(
            ClientError::from_answer("http://a/x", 400, body),
            ClientError::Rejected {
                status: 400,
                code: "invalid_request".into(),
                message: "field `venue` is empty".into()
            }
        );
        let body = br#"{"error":"not_found","message":"no node `b9`"}"#;
        assert_eq!(
            ClientError::from_answer("http://a/x", 404, body),
            ClientError::NotFound("no node `b9`".into())
        );
        let body = br#"{"error":"unauthorized","message":"missing bearer token"}"#;
        assert_eq!(
            ClientError::from_answer("http://a/x", 401, body),
            ClientError::Unauthorized("missing bearer token".into())
        );
        assert_eq!(
            ClientError::from_answer("http://a/x", 502, b"<html>bad gateway</html>"),
            ClientError::Server {
                url: "http://a/x".into(),
                status: 502,
                code: "unknown".into(),
                message: "<html>bad gateway</html>".into()
            }
        );
        assert_eq!(
            ClientError::from_answer("http://a/x", 500, b""),
            ClientError::Server {
                url: "http://a/x".into(),
                status: 500,
                code: "unknown".into(),
                message: "(empty body)".into()
            }
        );
    }

    #[test]
    fn only_transport_master_and_server_failures_are_transient() {
        assert!(
            ClientError::Unreachable {
                replicas: vec![],
                last_error: String::new()
            }
            .is_transient()
        );
        assert!(ClientError::NoMaster { replicas: vec![] }.is_transient());
        assert!(!ClientError::NotFound("x".into()).is_transient());
        let rejected = |status| ClientError::Rejected {
            status,
            code: "x".into(),
            message: String::new(),
        };
        assert!(rejected(429).is_transient(), "429 asks to come back later");
        assert!(!rejected(400).is_transient());
        assert!(!ClientError::Unauthorized("x".into()).is_transient());
        assert!(
            !ClientError::Indeterminate {
                url: String::new(),
                detail: String::new()
            }
            .is_transient()
        );
    }
}
