//! Why a session could not start, in the field's own words where it has them (`relay.md`).

use hydra_api::ErrorCode;

/// A session that did not start; nothing of it is left behind (port, data dir, process).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The request itself is wrong; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A session with this id exists on this worker.
    #[error("session {0} already exists")]
    Duplicate(String),
    /// The worker runs `sessions.max` sessions.
    #[error("max sessions reached")]
    MaxSessions,
    /// Every port of the range is taken.
    #[error("no ports available")]
    NoPorts,
    /// The program of the command template is missing.
    #[error("moonlight-web-stream not installed")]
    NotInstalled,
    /// The body's streaming port did not accept a connection.
    #[error("body {ip} unreachable on port {port}")]
    BodyUnreachable {
        /// The body's address.
        ip: String,
        /// The streaming port tried.
        port: u16,
    },
    /// The session process did not answer on its port in time.
    #[error("pairing with body {ip} timed out after {seconds} s")]
    PairingTimeout {
        /// The body's address.
        ip: String,
        /// The readiness wait.
        seconds: u64,
    },
    /// The session process exited before it answered.
    #[error("session process exited before it was ready ({status}): {log_tail}")]
    ExitedEarly {
        /// Its exit status.
        status: String,
        /// The end of its `web-server.log`.
        log_tail: String,
    },
    /// The data dir or the process could not be created.
    #[error("cannot start the session process: {0}")]
    Spawn(String),
    /// The worker is shutting down.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// The session was ended (`DELETE`, quit) before it was ready.
    #[error("the session was ended while it started")]
    EndedWhileStarting,
}

impl StartError {
    /// The API error code this failure is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            StartError::Invalid(_) => ErrorCode::InvalidRequest,
            StartError::Duplicate(_) | StartError::EndedWhileStarting => ErrorCode::Conflict,
            StartError::MaxSessions | StartError::NoPorts | StartError::ShuttingDown => {
                ErrorCode::Unavailable
            }
            StartError::NotInstalled | StartError::Spawn(_) => ErrorCode::Internal,
            StartError::BodyUnreachable { .. }
            | StartError::PairingTimeout { .. }
            | StartError::ExitedEarly { .. } => ErrorCode::BadGateway,
        }
    }
}
