//! The body role's launch and stop: `POST /api/v1/launch` (`exe_path`, `experience`) runs
//! `body.launch_command` and `POST /api/v1/stop` ends it and runs `body.stop_command`, each an
//! argv (never a shell) in its own process group with the session processes' handling
//! (`worker::process`: the guard that ends the group with the agent, SIGTERM then SIGKILL).
//!
//! Who may call: a worker with the fleet's `body.worker_token`, or an operator with the agent's
//! `api_token`. A worker's node token cannot be checked here without asking the control plane,
//! and a body must launch while no replica answers (degraded mode), so the check stays local.
//!
//! One experience at a time (a body has one display and one Sunshine): a launch while another
//! runs replaces it (the old group is ended and `stop_command` run first), because the newest
//! session is the one a head is watching and the old session's stop may have been lost with its
//! worker. A stop naming a `session_id` other than the running launch's is refused (409), so
//! a late stop of a replaced session never ends its successor.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hydra_api::ErrorCode;
use hydra_proxy::api_error::ApiError;
use hydra_proxy::extract::parse_json;
use serde::{Deserialize, Serialize};

use crate::http::AgentState;
use crate::worker::process::{SessionProcess, expand_pairs};

/// Placeholders `body.launch_command` and `body.stop_command` may use.
pub const PLACEHOLDERS: &[&str] = &["{exe_path}", "{experience}", "{session_id}"];

/// The launched experience's output, in the body's run dir.
pub const LAUNCH_LOG: &str = "launch.log";

/// Longest `exe_path`, `experience` or `session_id` taken.
const MAX_FIELD: usize = 1_024;

/// `POST /api/v1/launch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// The experience's executable on the body.
    pub exe_path: String,
    /// The experience's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experience: Option<String>,
    /// The relay session it is launched for (a worker sends it; its stop names it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// `POST /api/v1/stop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Stop only if the running experience was launched for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The experience the caller believes runs (logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experience: Option<String>,
}

/// How the body role runs launches.
#[derive(Clone)]
pub struct BodySettings {
    /// `body.launch_command` (empty: launches are refused with 503).
    pub launch_command: Vec<String>,
    /// `body.stop_command` (empty: ending the launched group is all).
    pub stop_command: Vec<String>,
    /// Where the launched processes run and log (`<state_dir>/body`).
    pub run_dir: PathBuf,
    /// Between SIGTERM and SIGKILL; also the bound of `stop_command`.
    pub stop_grace: Duration,
    /// Digests of the accepted tokens (`body.worker_token`, `api_token`).
    pub accepted_digests: Vec<String>,
}

impl BodySettings {
    /// Settings from the agent's config: the run dir under `state_dir`, the accepted tokens.
    pub fn from_config(config: &crate::config::AgentConfig) -> BodySettings {
        let accepted_digests = [
            config.body.worker_token.as_deref(),
            config.api_token.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter(|token| !token.is_empty())
        .map(hydra_proxy::token::digest_hex)
        .collect();
        BodySettings {
            launch_command: config.body.launch_command.clone(),
            stop_command: config.body.stop_command.clone(),
            run_dir: config.state_dir.join("body"),
            stop_grace: Duration::from_secs_f64(config.body.stop_grace),
            accepted_digests,
        }
    }
}

struct Launched {
    request: LaunchRequest,
    process: SessionProcess,
}

/// The body role of one agent; share it in an `Arc`.
pub struct BodyRole {
    settings: BodySettings,
    /// Held across the ending of a process group (bounded by `stop_grace` twice), so launches
    /// and stops apply one at a time and in order.
    current: tokio::sync::Mutex<Option<Launched>>,
}

impl std::fmt::Debug for BodyRole {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BodyRole")
            .field("launch_command", &self.settings.launch_command)
            .finish_non_exhaustive()
    }
}

/// What a launch or stop did, as the body answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyAnswer {
    /// `launched`, `stopped` or `idle` (a stop with nothing launched).
    pub status: String,
    /// The experience concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experience: Option<String>,
    /// The session it was launched for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Process (and group) id of the launched process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The session whose experience a launch replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

/// Why a launch or stop was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub ErrorCode, pub String);

impl BodyRole {
    /// A body role with nothing launched.
    pub fn new(settings: BodySettings) -> Arc<BodyRole> {
        Arc::new(BodyRole {
            settings,
            current: tokio::sync::Mutex::new(None),
        })
    }

    /// Whether `headers` carry a token this body accepts.
    fn authorised(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Refused(
                    ErrorCode::Unauthorized,
                    "missing Authorization: Bearer <token> header".into(),
                )
            })?;
        if hydra_proxy::token::matches_any(token, &self.settings.accepted_digests) {
            Ok(())
        } else {
            Err(Refused(ErrorCode::Unauthorized, "unknown token".into()))
        }
    }

    /// Launches `request`'s experience, replacing (ending) one that runs.
    pub async fn launch(&self, request: LaunchRequest) -> Result<BodyAnswer, Refused> {
        check_field("exe_path", Some(&request.exe_path), true)?;
        check_field("experience", request.experience.as_ref(), false)?;
        check_field("session_id", request.session_id.as_ref(), false)?;
        if self.settings.launch_command.is_empty() {
            return Err(Refused(
                ErrorCode::Unavailable,
                "body.launch_command is not configured on this body".into(),
            ));
        }
        let mut current = self.current.lock().await;
        let replaced = match current.take() {
            Some(previous) => {
                tracing::info!(
                    experience = previous.request.experience.as_deref().unwrap_or(""),
                    session_id = previous.request.session_id.as_deref().unwrap_or(""),
                    "[body] a new launch replaces the running experience"
                );
                let replaced = previous.request.session_id.clone();
                self.end(previous).await;
                replaced
            }
            None => None,
        };
        std::fs::create_dir_all(&self.settings.run_dir).map_err(|error| {
            Refused(
                ErrorCode::Internal,
                format!("cannot create {}: {error}", self.settings.run_dir.display()),
            )
        })?;
        let argv = expand_pairs(&self.settings.launch_command, &pairs(&request));
        let process = SessionProcess::spawn_logged(
            &argv,
            &self.settings.run_dir,
            LAUNCH_LOG,
            &environment(&request),
        )
        .map_err(|error| {
            tracing::warn!(%error, program = %argv[0], "[body] cannot launch the experience");
            Refused(
                ErrorCode::Internal,
                format!("cannot run body.launch_command {:?}: {error}", argv[0]),
            )
        })?;
        let pid = process.pid();
        tracing::info!(
            pid,
            exe_path = %request.exe_path,
            experience = request.experience.as_deref().unwrap_or(""),
            session_id = request.session_id.as_deref().unwrap_or(""),
            "[body] experience launched"
        );
        let answer = BodyAnswer {
            status: "launched".into(),
            experience: request.experience.clone(),
            session_id: request.session_id.clone(),
            pid: Some(pid),
            replaced,
        };
        *current = Some(Launched { request, process });
        Ok(answer)
    }

    /// Ends the launched experience (its whole group, then `stop_command`); `idle` when nothing
    /// was launched. Refused (409) when `request` names another session than the launch's.
    pub async fn stop(&self, request: StopRequest) -> Result<BodyAnswer, Refused> {
        check_field("session_id", request.session_id.as_ref(), false)?;
        check_field("experience", request.experience.as_ref(), false)?;
        let mut current = self.current.lock().await;
        let Some(launched) = current.take() else {
            return Ok(BodyAnswer {
                status: "idle".into(),
                experience: None,
                session_id: None,
                pid: None,
                replaced: None,
            });
        };
        if let Some(asked) = &request.session_id
            && launched.request.session_id.as_ref() != Some(asked)
        {
            let running = launched
                .request
                .session_id
                .clone()
                .unwrap_or_else(|| "no session".into());
            *current = Some(launched);
            return Err(Refused(
                ErrorCode::Conflict,
                format!(
                    "session_id {asked} does not match the running experience, launched for {running}"
                ),
            ));
        }
        let answer = BodyAnswer {
            status: "stopped".into(),
            experience: launched.request.experience.clone(),
            session_id: launched.request.session_id.clone(),
            pid: Some(launched.process.pid()),
            replaced: None,
        };
        self.end(launched).await;
        Ok(answer)
    }

    /// The running launch's request, if any.
    pub async fn running(&self) -> Option<LaunchRequest> {
        self.current
            .lock()
            .await
            .as_ref()
            .map(|launched| launched.request.clone())
    }

    /// Ends the launched group and runs `stop_command` (bounded by `stop_grace`, then ended).
    async fn end(&self, launched: Launched) {
        let Launched { request, process } = launched;
        process.end(self.settings.stop_grace).await;
        if self.settings.stop_command.is_empty() {
            tracing::info!(
                experience = request.experience.as_deref().unwrap_or(""),
                "[body] experience stopped"
            );
            return;
        }
        let argv = expand_pairs(&self.settings.stop_command, &pairs(&request));
        match SessionProcess::spawn_logged(
            &argv,
            &self.settings.run_dir,
            LAUNCH_LOG,
            &environment(&request),
        ) {
            Ok(mut stopper) => {
                let deadline = tokio::time::Instant::now() + self.settings.stop_grace;
                let status = loop {
                    if let Some(status) = stopper.exited() {
                        break Some(status);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                match status {
                    Some(status) => tracing::info!(
                        experience = request.experience.as_deref().unwrap_or(""),
                        %status,
                        "[body] experience stopped; body.stop_command ran"
                    ),
                    None => tracing::warn!(
                        "[body] body.stop_command did not finish within body.stop_grace; ended"
                    ),
                }
                stopper.end(self.settings.stop_grace).await;
            }
            Err(error) => {
                tracing::warn!(%error, program = %argv[0], "[body] cannot run body.stop_command")
            }
        }
    }

    /// Ends what runs (agent shutdown).
    pub async fn shutdown(&self) {
        let launched = self.current.lock().await.take();
        if let Some(launched) = launched {
            self.end(launched).await;
        }
    }
}

/// A present field must be non-empty and at most [`MAX_FIELD`] characters; the error names it.
fn check_field(name: &str, value: Option<&String>, required: bool) -> Result<(), Refused> {
    match value {
        None if required => Err(Refused(
            ErrorCode::InvalidRequest,
            format!("{name} is required"),
        )),
        None => Ok(()),
        Some(value) if value.trim().is_empty() => Err(Refused(
            ErrorCode::InvalidRequest,
            format!("{name} must not be empty"),
        )),
        Some(value) if value.chars().count() > MAX_FIELD => Err(Refused(
            ErrorCode::InvalidRequest,
            format!("{name} is longer than {MAX_FIELD} characters"),
        )),
        Some(_) => Ok(()),
    }
}

fn pairs(request: &LaunchRequest) -> [(&'static str, &str); 3] {
    [
        ("{exe_path}", request.exe_path.as_str()),
        ("{experience}", request.experience.as_deref().unwrap_or("")),
        ("{session_id}", request.session_id.as_deref().unwrap_or("")),
    ]
}

fn environment(request: &LaunchRequest) -> HashMap<&'static str, String> {
    let mut env = HashMap::new();
    env.insert("HYDRA_EXE_PATH", request.exe_path.clone());
    if let Some(experience) = &request.experience {
        env.insert("HYDRA_EXPERIENCE", experience.clone());
    }
    if let Some(session_id) = &request.session_id {
        env.insert("HYDRA_SESSION_ID", session_id.clone());
    }
    env
}

fn refusal(refused: Refused) -> Response {
    ApiError::new(refused.0, &refused.1).into_response()
}

/// `POST /api/v1/launch`.
pub(crate) async fn launch_route(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(role) = state.body() else {
        return ApiError::new(ErrorCode::NotFound, "this agent has no body role").into_response();
    };
    if let Err(refused) = role.authorised(&headers) {
        return refusal(refused);
    }
    let request: LaunchRequest = match parse_json(&body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    match role.launch(request).await {
        Ok(answer) => (StatusCode::CREATED, axum::Json(answer)).into_response(),
        Err(refused) => refusal(refused),
    }
}

/// `POST /api/v1/stop` (an empty body stops whatever runs).
pub(crate) async fn stop_route(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(role) = state.body() else {
        return ApiError::new(ErrorCode::NotFound, "this agent has no body role").into_response();
    };
    if let Err(refused) = role.authorised(&headers) {
        return refusal(refused);
    }
    let request: StopRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StopRequest::default()
    } else {
        match parse_json(&body) {
            Ok(request) => request,
            Err(refused) => return refused.into_response(),
        }
    };
    match role.stop(request).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(refused) => refusal(refused),
    }
}
