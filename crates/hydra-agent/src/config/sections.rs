//! The sections of the agent's configuration, each with its defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::worker::default_command;

/// `cluster:` (the peer mesh), shared with the server's configuration.
pub use hydra_mesh::ClusterSection;

/// `node:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Id to enrol with; the server makes one when absent.
    pub id: Option<String>,
    /// Human name.
    pub name: Option<String>,
    /// Roles: any of body, worker, head.
    pub roles: Vec<String>,
    /// District.
    pub district: String,
    /// Venue.
    pub venue: String,
    /// Owner.
    pub owner: String,
    /// LAN address.
    pub lan_ip: Option<IpAddr>,
    /// WireGuard address.
    pub wg_ip: Option<IpAddr>,
}

/// `server:` (the agent's HTTP listener, as in the field's worker config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on (`":47990"`: every interface, as the field writes it).
    #[serde(deserialize_with = "crate::config_values::listen_addr")]
    pub listen: SocketAddr,
    /// URL the control plane (and browsers) reach the agent at; `http://<listen>` by default.
    pub public_url: Option<String>,
    /// The name browsers reach this node at: stream URLs use it (`https://` with TLS) unless
    /// `public_url` or `sessions.stream_base_url` say otherwise.
    pub domain: Option<String>,
    /// PEM certificate chain: with `tls_key`, the agent serves HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Seconds a request head may take to arrive.
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub header_read_timeout: f64,
    /// Seconds a keep-alive connection may wait between requests.
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub idle_timeout: f64,
    /// Connections open at once (WebSockets included); past it, new ones wait.
    pub max_connections: usize,
    /// Seconds open connections get to finish at shutdown before they are dropped.
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub shutdown_timeout: f64,
}

/// `controller:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSection {
    /// Base URL of every replica (one URL or a list).
    #[serde(deserialize_with = "crate::config_values::one_or_many")]
    pub url: Vec<String>,
    /// The admin token, used once to enrol (then the stored node token is used); prefer
    /// `enrolment_token`, so the admin token never sits on a node.
    pub token: Option<String>,
    /// A one-time enrolment token (`hydra nodes token create`), used instead of `token` to
    /// enrol; it can do nothing else and is spent by the enrolment.
    pub enrolment_token: Option<String>,
}

/// `heartbeat:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatSection {
    /// Seconds between heartbeats.
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub interval: f64,
    /// Each wait is drawn from `interval * (1 ± jitter)`.
    pub jitter: f64,
}

/// `bundle:` (the config bundle the control plane keeps for this node).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleSection {
    /// Seconds between polls of `GET /api/v1/nodes/{id}/config` (each wait jittered by 10 %).
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub poll_interval: f64,
}

impl Default for BundleSection {
    fn default() -> Self {
        BundleSection {
            poll_interval: 30.0,
        }
    }
}

/// `health:` (the health checker: `check-master` on every replica).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// Seconds between rounds (the field's 60 s; down to 1 s).
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub interval: f64,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            interval: hydra_core::health::DEFAULT_INTERVAL_MS as f64 / 1_000.0,
        }
    }
}

/// `journal:` (the write journal in the state dir).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    /// Most writes kept; beyond it the oldest heartbeats and superseded reports are dropped.
    pub max_entries: usize,
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            max_entries: crate::journal::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// `sessions:` (the worker role).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsSection {
    /// Sessions at most.
    pub max: u32,
    /// First port of the range.
    pub port_range_start: u16,
    /// Where "return" links go.
    pub return_url: String,
    /// Where "Report a problem" goes (`mailto:` or a URL).
    pub report_url: String,
    /// Where ratings are forwarded, if anywhere.
    pub rating_url: Option<String>,
    /// Directory of the sessions' data dirs; `<state_dir>/sessions` by default.
    pub root: Option<PathBuf>,
    /// Command template of the session process.
    pub command: Vec<String>,
    /// Address the session processes listen on.
    pub bind: IpAddr,
    /// The body's streaming port checked before a start.
    pub body_port: u16,
    /// Seconds to wait for a new session process to answer.
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub ready_timeout: f64,
    /// Seconds between liveness, data-dir and cleanup checks.
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub check_interval: f64,
    /// Seconds after which `error`/`stopped` sessions are removed.
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub idle_timeout: f64,
    /// Base of stream URLs; the agent's public URL by default (the server's URL when colocated).
    pub stream_base_url: Option<String>,
    /// Seconds a viewer capability minted into a stream URL stays valid (12 h).
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub viewer_ttl: f64,
    /// First port of the sessions' WebRTC UDP ranges (the field's 40000).
    pub webrtc_port_start: u16,
    /// WebRTC UDP ports per session (the field's 20): slot `n` gets
    /// `webrtc_port_start + 20 n` to `+ 20 n + 19` (`{webrtc_port_start}`, `{webrtc_port_end}`).
    pub webrtc_ports_per_session: u16,
}

/// `mic:` (the browser microphone: a receive-only WebRTC peer per session, its RTP forwarded
/// to the body).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicSection {
    /// The body's UDP port the raw RTP goes to (the field's 47995).
    pub body_port: u16,
    /// Addresses the peer offers browsers as host candidates (a socket on each, inside the
    /// session's WebRTC range); empty: `node.lan_ip` and `node.wg_ip`, else 127.0.0.1.
    pub candidate_ips: Vec<IpAddr>,
    /// Seconds a new peer may take to connect before it is dropped.
    pub connect_timeout: f64,
}

impl Default for MicSection {
    fn default() -> Self {
        MicSection {
            body_port: 47995,
            candidate_ips: Vec::new(),
            connect_timeout: 30.0,
        }
    }
}

/// `turn:` (coturn beside the worker, in its `use-auth-secret` mode).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnSection {
    /// coturn's `static-auth-secret`: with it, every `turn:`/`turns:` entry of `ice_servers`
    /// without its own credentials gets per-session ones.
    pub secret: Option<String>,
    /// coturn's realm (`hydra agent turn-config`).
    pub realm: String,
    /// Seconds minted credentials stay valid (12 h, as the viewer capability).
    #[serde(deserialize_with = "crate::config_values::seconds")]
    pub credential_ttl: f64,
    /// Pages use TURN only (`iceTransportPolicy: 'relay'`).
    pub force_relay: bool,
    /// coturn's listening port (`hydra agent turn-config`).
    pub listening_port: u16,
    /// coturn's relay port range (`hydra agent turn-config`).
    pub relay_port_min: u16,
    /// See `relay_port_min`.
    pub relay_port_max: u16,
}

impl Default for TurnSection {
    fn default() -> Self {
        TurnSection {
            secret: None,
            realm: "hydra".into(),
            credential_ttl: 43_200.0,
            force_relay: false,
            listening_port: 3478,
            relay_port_min: 49152,
            relay_port_max: 65535,
        }
    }
}

impl std::fmt::Debug for TurnSection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TurnSection")
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .field("realm", &self.realm)
            .field("credential_ttl", &self.credential_ttl)
            .field("force_relay", &self.force_relay)
            .finish_non_exhaustive()
    }
}

/// `sunshine:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SunshineSection {
    /// User.
    pub username: String,
    /// Password.
    pub password: String,
    /// Scheme of the bodies' Sunshine API on `sessions.body_port` (`https`, Sunshine's own
    /// self-signed certificate, which the worker does not check; `http` for a stand-in).
    pub api_scheme: String,
}

impl Default for SunshineSection {
    fn default() -> Self {
        SunshineSection {
            username: String::new(),
            password: String::new(),
            api_scheme: "https".into(),
        }
    }
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: None,
            name: None,
            roles: vec!["worker".into()],
            district: "default".into(),
            venue: "default".into(),
            owner: "default".into(),
            lan_ip: None,
            wg_ip: None,
        }
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            public_url: None,
            domain: None,
            tls_cert: None,
            tls_key: None,
            header_read_timeout: 10.0,
            idle_timeout: 60.0,
            max_connections: 1024,
            shutdown_timeout: 10.0,
        }
    }
}

impl Default for ControllerSection {
    fn default() -> Self {
        ControllerSection {
            url: vec!["http://127.0.0.1:7070".into()],
            token: None,
            enrolment_token: None,
        }
    }
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        HeartbeatSection {
            interval: 30.0,
            jitter: 0.1,
        }
    }
}

impl Default for SessionsSection {
    fn default() -> Self {
        SessionsSection {
            max: 15,
            port_range_start: 8080,
            return_url: "/".into(),
            report_url: "mailto:".into(),
            rating_url: None,
            root: None,
            command: default_command(),
            bind: IpAddr::from([127, 0, 0, 1]),
            body_port: 47990,
            ready_timeout: 30.0,
            check_interval: 30.0,
            idle_timeout: 300.0,
            stream_base_url: None,
            viewer_ttl: hydra_proxy::capability::DEFAULT_TTL_SECS as f64,
            webrtc_port_start: hydra_core::webrtc_ports::DEFAULT_START,
            webrtc_ports_per_session: hydra_core::webrtc_ports::DEFAULT_WIDTH,
        }
    }
}

/// `body:` (the body role's launch and stop, and what a worker needs to reach a body's agent).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodySection {
    /// On a body: argv run by `POST /api/v1/launch` (never a shell); placeholders
    /// `{exe_path}`, `{experience}`, `{session_id}`.
    pub launch_command: Vec<String>,
    /// On a body: argv run by `POST /api/v1/stop` after the launched process group is ended
    /// (empty: ending the group is all); same placeholders.
    pub stop_command: Vec<String>,
    /// The token workers present to bodies' launch and stop: accepted on a body, sent by a
    /// worker (one fleet secret; the agent's `api_token` is accepted too).
    pub worker_token: Option<String>,
    /// On a worker: the port of the bodies' agents (7071).
    pub agent_port: u16,
    /// Seconds between SIGTERM and SIGKILL when a launched experience is ended, and the
    /// longest `stop_command` may run.
    pub stop_grace: f64,
}

impl Default for BodySection {
    fn default() -> Self {
        BodySection {
            launch_command: Vec::new(),
            stop_command: Vec::new(),
            worker_token: None,
            agent_port: 7071,
            stop_grace: 5.0,
        }
    }
}

impl std::fmt::Debug for BodySection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BodySection")
            .field("launch_command", &self.launch_command)
            .field("stop_command", &self.stop_command)
            .field("worker_token", &self.worker_token.as_ref().map(|_| "(set)"))
            .field("agent_port", &self.agent_port)
            .finish_non_exhaustive()
    }
}

/// `report:` (session records sent at the end of every session; the field's `nps:` is read as
/// an alias).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    /// Where each session's record is POSTed; none: no records are sent.
    pub url: Option<String>,
    /// Bearer token for `url`; never logged.
    pub token: Option<String>,
    /// Records kept on disk at most while the endpoint does not take them (oldest dropped).
    pub max_entries: usize,
    /// Seconds of the first retry's backoff ceiling (doubling, full jitter).
    pub retry_base: f64,
    /// Seconds of the longest backoff ceiling.
    pub retry_max: f64,
    /// `project` of the overlay's "Report a problem" link.
    pub project: String,
    /// `category` of the overlay's "Report a problem" link.
    pub category: String,
}

impl Default for ReportSection {
    fn default() -> Self {
        ReportSection {
            url: None,
            token: None,
            max_entries: 10_000,
            retry_base: 1.0,
            retry_max: 300.0,
            project: "hydra".into(),
            category: "stream".into(),
        }
    }
}

impl std::fmt::Debug for ReportSection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReportSection")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}
