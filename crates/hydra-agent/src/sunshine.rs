//! The worker's calls to a session's body: on a start with `exe_path`, register the app with the
//! body's Sunshine (its HTTP API, `POST /api/apps` on `sessions.body_port` with the session's
//! Sunshine credentials) and ask the body's agent to launch it (`POST /api/v1/launch`); on
//! `DELETE` and quit, ask the body to stop it (`POST /api/v1/stop`). Every call is bounded and
//! non-fatal: a failure is logged with `[pairing]`, the session goes on.
//!
//! A stop waits for the session's start calls first, so a body never launches after the stop
//! of the same session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;

use crate::body::{LaunchRequest, StopRequest};

/// The bound of each call to Sunshine or to a body's agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How a worker reaches its bodies.
#[derive(Clone)]
pub struct BodyLinkSettings {
    /// `sunshine.api_scheme` (`https`: Sunshine's self-signed certificate is not checked).
    pub sunshine_scheme: String,
    /// The bodies' Sunshine port (`sessions.body_port`, 47990).
    pub sunshine_port: u16,
    /// The bodies' agent port (`body.agent_port`, 7071).
    pub agent_port: u16,
    /// The token sent to bodies (`body.worker_token`).
    pub worker_token: Option<String>,
}

impl std::fmt::Debug for BodyLinkSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BodyLinkSettings")
            .field("sunshine_scheme", &self.sunshine_scheme)
            .field("sunshine_port", &self.sunshine_port)
            .field("agent_port", &self.agent_port)
            .finish_non_exhaustive()
    }
}

/// What a session started with, as far as its body goes.
#[derive(Clone)]
pub struct BodyStart {
    /// Session id.
    pub session_id: String,
    /// The body's address.
    pub body_ip: String,
    /// The experience's executable on the body.
    pub exe_path: String,
    /// The experience's name.
    pub experience: Option<String>,
    /// Sunshine user of the session.
    pub sunshine_user: String,
    /// Sunshine password of the session (never logged).
    pub sunshine_pass: String,
}

struct Started {
    body_ip: String,
    experience: Option<String>,
    /// The start's calls, awaited before the stop.
    calls: JoinHandle<()>,
}

/// The worker's link to its sessions' bodies; share it in an `Arc`.
pub struct BodyLink {
    settings: BodyLinkSettings,
    http: reqwest::Client,
    started: Mutex<HashMap<String, Started>>,
}

impl std::fmt::Debug for BodyLink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BodyLink")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl BodyLink {
    /// A link with no session.
    pub fn new(settings: BodyLinkSettings) -> Arc<BodyLink> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CALL_TIMEOUT)
            // Sunshine serves its API with a self-signed certificate of its own making.
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap_or_default();
        Arc::new(BodyLink {
            settings,
            http,
            started: Mutex::new(HashMap::new()),
        })
    }

    /// After a session started with an `exe_path`: registers the app with Sunshine and asks the
    /// body to launch it, in a task of its own (the start's answer does not wait for them).
    pub fn session_started(self: &Arc<Self>, start: BodyStart) {
        let link = Arc::clone(self);
        let session_id = start.session_id.clone();
        let body_ip = start.body_ip.clone();
        let experience = start.experience.clone();
        let calls = tokio::spawn(async move {
            link.register_app(&start).await;
            link.launch(&start).await;
        });
        self.started.lock().expect("body link poisoned").insert(
            session_id,
            Started {
                body_ip,
                experience,
                calls,
            },
        );
    }

    /// After `DELETE` or quit: once the start's calls are done, asks the body to stop the
    /// session's experience. Nothing for a session started without `exe_path`.
    pub async fn session_stopped(&self, session_id: &str) {
        let started = self
            .started
            .lock()
            .expect("body link poisoned")
            .remove(session_id);
        let Some(started) = started else {
            return;
        };
        // Bounded: two calls of at most CALL_TIMEOUT each.
        let _ = started.calls.await;
        let url = format!(
            "http://{}:{}/api/v1/stop",
            started.body_ip, self.settings.agent_port
        );
        let request = StopRequest {
            session_id: Some(session_id.to_owned()),
            experience: started.experience.clone(),
        };
        match self.body_call(&url, &request).await {
            Ok(()) => tracing::info!(
                %session_id,
                body_ip = %started.body_ip,
                experience = started.experience.as_deref().unwrap_or(""),
                "[pairing] body stopped the experience"
            ),
            Err(reason) => tracing::warn!(
                %session_id,
                body_ip = %started.body_ip,
                %reason,
                "[pairing] cannot stop the experience on the body"
            ),
        }
    }

    /// `POST /api/apps` on the body's Sunshine with the session's credentials.
    async fn register_app(&self, start: &BodyStart) {
        let url = format!(
            "{}://{}:{}/api/apps",
            self.settings.sunshine_scheme, start.body_ip, self.settings.sunshine_port
        );
        let name = app_name(start);
        // Sunshine's app entry; `index: -1` adds a new one.
        let app = json!({
            "name": name,
            "output": "",
            "cmd": start.exe_path,
            "index": -1,
            "exclude-global-prep-cmd": false,
            "elevated": false,
            "auto-detach": true,
            "wait-all": true,
            "exit-timeout": 5,
            "prep-cmd": [],
            "detached": [],
            "image-path": "",
        });
        let answer = self
            .http
            .post(&url)
            .basic_auth(&start.sunshine_user, Some(&start.sunshine_pass))
            .json(&app)
            .send()
            .await;
        let session_id = &start.session_id;
        match answer {
            Ok(answer) if answer.status().is_success() => tracing::info!(
                %session_id,
                body_ip = %start.body_ip,
                app = %name,
                "[pairing] app registered with Sunshine"
            ),
            Ok(answer) if answer.status().is_client_error() => {
                let reason = format!("Sunshine answered {}", answer.status());
                tracing::warn!(
                    %session_id,
                    body_ip = %start.body_ip,
                    "[pairing] pair failed: {reason} (crypto handshake rejected by Sunshine)"
                );
            }
            Ok(answer) => tracing::warn!(
                %session_id,
                body_ip = %start.body_ip,
                status = answer.status().as_u16(),
                "[pairing] cannot register the app with Sunshine"
            ),
            Err(error) => tracing::warn!(
                %session_id,
                body_ip = %start.body_ip,
                error = %without_url(&error),
                "[pairing] cannot reach Sunshine to register the app"
            ),
        }
    }

    /// `POST /api/v1/launch` on the body's agent.
    async fn launch(&self, start: &BodyStart) {
        let url = format!(
            "http://{}:{}/api/v1/launch",
            start.body_ip, self.settings.agent_port
        );
        let request = LaunchRequest {
            exe_path: start.exe_path.clone(),
            experience: start.experience.clone(),
            session_id: Some(start.session_id.clone()),
        };
        let session_id = &start.session_id;
        match self.body_call(&url, &request).await {
            Ok(()) => tracing::info!(
                %session_id,
                body_ip = %start.body_ip,
                experience = start.experience.as_deref().unwrap_or(""),
                "[pairing] body launched the experience"
            ),
            Err(reason) => tracing::warn!(
                %session_id,
                body_ip = %start.body_ip,
                %reason,
                "[pairing] the body did not launch the experience"
            ),
        }
    }

    /// One call to a body's agent with the worker token; the failure as words.
    async fn body_call(&self, url: &str, body: &impl serde::Serialize) -> Result<(), String> {
        let mut request = self.http.post(url).json(body);
        if let Some(token) = &self.settings.worker_token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => {
                let status = answer.status();
                let text = answer.text().await.unwrap_or_default();
                Err(format!(
                    "{status}: {}",
                    text.chars().take(300).collect::<String>()
                ))
            }
            Err(error) => Err(without_url(&error)),
        }
    }
}

/// The app's name in Sunshine: the experience, else the executable's file name.
fn app_name(start: &BodyStart) -> String {
    start.experience.clone().unwrap_or_else(|| {
        start
            .exe_path
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(&start.exe_path)
            .to_owned()
    })
}

/// A transport error's words without its URL (which is fine) and without credentials (which
/// reqwest never puts there; basic auth travels in a header).
pub(crate) fn without_url(error: &reqwest::Error) -> String {
    let mut words = error.to_string();
    if let Some(url) = error.url() {
        words = words.replace(url.as_str(), "<url>");
    }
    words
}
