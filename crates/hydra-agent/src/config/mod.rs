//! The agent's configuration: built-in defaults, then the YAML file (serde-saphyr), then
//! `HYDRA_<SECTION>__<KEY>` environment variables, then flags (figment layers them and says which
//! source set a bad value). Names follow the field's config (`server.listen`, `controller.url`,
//! `controller.token`, `sessions.max`, `sessions.port_range_start`, `sessions.return_url`,
//! `sunshine.username/password`, `ice_servers`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::worker::{WorkerSettings, process::check_template};

mod sections;

pub use sections::*;

/// Top-level sections; only `HYDRA_<SECTION>__...` variables are read.
const SECTIONS: &[&str] = &[
    "node",
    "server",
    "controller",
    "heartbeat",
    "bundle",
    "health",
    "journal",
    "sessions",
    "sunshine",
    "ice_servers",
    "turn",
    "state_dir",
    "wireguard_optional",
    "api_token",
    "cluster",
    "report",
    "mic",
    "body",
];

/// Everything `hydra agent` runs with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Who this node is.
    pub node: NodeSection,
    /// The agent's own HTTP listener.
    pub server: ServerSection,
    /// The control plane.
    pub controller: ControllerSection,
    /// Heartbeat schedule.
    pub heartbeat: HeartbeatSection,
    /// The config bundle poller.
    pub bundle: BundleSection,
    /// The control plane health checker.
    pub health: HealthSection,
    /// The write journal (writes deferred while no master answers).
    pub journal: JournalSection,
    /// The worker role.
    pub sessions: SessionsSection,
    /// Default Sunshine credentials.
    pub sunshine: SunshineSection,
    /// ICE servers handed to session processes (`HYDRA_ICE_SERVERS`, JSON).
    pub ice_servers: Vec<serde_json::Value>,
    /// TURN credentials minted per session for the `turn:` entries of `ice_servers`.
    pub turn: TurnSection,
    /// Where the node token is kept.
    pub state_dir: PathBuf,
    /// Report `ok` without a WireGuard interface.
    pub wireguard_optional: bool,
    /// An operator's bearer token for the agent's session API.
    pub api_token: Option<String>,
    /// The peer mesh (issue 11).
    pub cluster: ClusterSection,
    /// The body role's launch and stop (and the bodies' agent port, for a worker).
    pub body: BodySection,
    /// Session records (`report.url`, `report.token`).
    pub report: ReportSection,
    /// The browser microphone relay.
    pub mic: MicSection,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node: NodeSection::default(),
            server: ServerSection::default(),
            controller: ControllerSection::default(),
            heartbeat: HeartbeatSection::default(),
            bundle: BundleSection::default(),
            health: HealthSection::default(),
            journal: JournalSection::default(),
            sessions: SessionsSection::default(),
            sunshine: SunshineSection::default(),
            ice_servers: Vec::new(),
            turn: TurnSection::default(),
            state_dir: PathBuf::from("./hydra-agent"),
            wireguard_optional: false,
            api_token: None,
            cluster: ClusterSection::default(),
            body: BodySection::default(),
            report: ReportSection::default(),
            mic: MicSection::default(),
        }
    }
}

/// A configuration that cannot be used; the message names the key, file or variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl AgentConfig {
    /// Layers defaults, the YAML file at `file`, `HYDRA_*` variables and `flags` (a JSON object
    /// of the keys set on the command line, nested like the file), then validates.
    pub fn load(file: Option<&Path>, flags: serde_json::Value) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig = crate::layering::layered(
            &AgentConfig::default(),
            file,
            crate::config_words::Daemon::Agent,
            crate::layering::EnvKeys::Sectioned(SECTIONS),
            &flags,
        )
        .map_err(ConfigError)?;
        config.validate()?;
        Ok(config)
    }

    /// The mesh's keys; the message names the key.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        self.cluster.validate().map_err(ConfigError)
    }

    /// The ICE servers and TURN credential settings, for the worker and the session pages.
    pub fn ice(&self) -> crate::turn::IceConfig {
        crate::turn::IceConfig {
            servers: self.ice_servers.clone(),
            turn_secret: self.turn.secret.clone(),
            credential_ttl: Duration::from_secs_f64(self.turn.credential_ttl),
            force_relay: self.turn.force_relay,
        }
    }

    /// The `turn:` section's own rules, and how it fits `ice_servers`.
    fn validate_turn(&self) -> Result<(), ConfigError> {
        let fail = |message: &str| Err(ConfigError(message.to_owned()));
        let turn = &self.turn;
        let names_turn = self.ice_servers.iter().any(|server| {
            let turn_url = |url: &serde_json::Value| {
                url.as_str()
                    .is_some_and(|url| url.starts_with("turn:") || url.starts_with("turns:"))
            };
            match &server["urls"] {
                serde_json::Value::Array(urls) => urls.iter().any(turn_url),
                url => turn_url(url),
            }
        });
        if let Some(secret) = &turn.secret {
            if secret.chars().count() < 16 || secret.chars().any(char::is_control) {
                return fail(
                    "turn.secret must be at least 16 characters, without control characters",
                );
            }
            if !names_turn {
                return fail(
                    "turn.secret is set but ice_servers names no turn: or turns: URL to use it with",
                );
            }
        }
        if turn.force_relay && !names_turn {
            return fail("turn.force_relay needs a turn: or turns: URL in ice_servers");
        }
        if !(turn.credential_ttl >= 60.0 && turn.credential_ttl <= 604_800.0) {
            return fail("turn.credential_ttl must be between 60 and 604800 seconds");
        }
        if turn.realm.is_empty()
            || turn
                .realm
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return fail(
                "turn.realm must be a non-empty word without spaces or control characters",
            );
        }
        if turn.relay_port_min < 1024 || turn.relay_port_min > turn.relay_port_max {
            return fail(
                "turn.relay_port_min must be at least 1024 and at most turn.relay_port_max",
            );
        }
        Ok(())
    }

    /// Checks what types alone do not; the message names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_turn()?;
        self.validate_controller_and_node()?;
        self.validate_server()?;
        let fail = |message: String| Err(ConfigError(message));
        if !(self.bundle.poll_interval >= 1.0 && self.bundle.poll_interval <= 3_600.0) {
            return fail("bundle.poll_interval must be between 1 and 3600 seconds".into());
        }
        self.validate_cluster()?;
        self.validate_body_and_report()?;
        let health_ms = (self.health.interval * 1_000.0).round();
        if !(health_ms.is_finite() && health_ms <= 3_600_000.0) {
            return fail("health.interval must be at most 3600 seconds".into());
        }
        hydra_core::health::health_interval_ms(Some(health_ms.max(0.0) as u64))
            .map_err(|error| ConfigError(format!("health.interval {error}")))?;
        if self.runs_worker() {
            self.validate_worker()?;
        }
        Ok(())
    }

    /// The servers to talk to, the node's roles and its heartbeat.
    fn validate_controller_and_node(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if self.controller.url.is_empty() {
            return fail("controller.url must name at least one server".into());
        }
        for url in &self.controller.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return fail(format!(
                    "controller.url {url:?} must start with http:// or https://"
                ));
            }
        }
        if self.node.roles.is_empty() {
            return fail("node.roles must name at least one of body, worker, head".into());
        }
        for role in &self.node.roles {
            if role.parse::<hydra_core::Role>().is_err() {
                return fail(format!(
                    "node.roles: unknown role {role:?} (body, worker, head)"
                ));
            }
        }
        if !(self.heartbeat.interval >= 0.05 && self.heartbeat.interval <= 3_600.0) {
            return fail("heartbeat.interval must be between 0.05 and 3600 seconds".into());
        }
        if !(0.0..=0.5).contains(&self.heartbeat.jitter) {
            return fail("heartbeat.jitter must be between 0 and 0.5".into());
        }
        Ok(())
    }

    /// The agent's own HTTP server: timeouts, TLS files, connection cap.
    fn validate_server(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        for (key, value) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.shutdown_timeout", self.server.shutdown_timeout),
        ] {
            if !(value > 0.0 && value <= 86_400.0) {
                return fail(format!("{key} must be between 0 and 86400 seconds"));
            }
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return fail(
                "server.tls_cert and server.tls_key go together: set both or neither".into(),
            );
        }
        if self.server.max_connections == 0 {
            return fail("server.max_connections must be at least 1".into());
        }
        Ok(())
    }

    /// What a worker needs: its session slots, ports, command template, mic and timeouts.
    fn validate_worker(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if self.sessions.max == 0 || self.sessions.max > 1_000 {
            return fail("sessions.max must be between 1 and 1000".into());
        }
        if u32::from(self.sessions.port_range_start) + self.sessions.max > 65_536 {
            return fail("sessions.port_range_start + sessions.max must stay below 65536".into());
        }
        check_template(&self.sessions.command).map_err(ConfigError)?;
        if !hydra_core::webrtc_ports::fits(
            self.sessions.webrtc_port_start,
            self.sessions.webrtc_ports_per_session,
            self.sessions.max,
        ) {
            return fail(
                "sessions.webrtc_port_start + sessions.webrtc_ports_per_session * sessions.max \
                 must stay below 65536 (and sessions.webrtc_ports_per_session above 0)"
                    .into(),
            );
        }
        if self.mic.body_port == 0 {
            return fail("mic.body_port must be a port (1 to 65535)".into());
        }
        if let Some(ip) = self.mic.candidate_ips.iter().find(|ip| ip.is_unspecified()) {
            return fail(format!(
                "mic.candidate_ips: {ip} is not an address a browser can reach"
            ));
        }
        if !(self.mic.connect_timeout > 0.0 && self.mic.connect_timeout <= 600.0) {
            return fail("mic.connect_timeout must be between 0 and 600 seconds".into());
        }
        for (key, value) in [
            ("sessions.ready_timeout", self.sessions.ready_timeout),
            ("sessions.check_interval", self.sessions.check_interval),
            ("sessions.idle_timeout", self.sessions.idle_timeout),
            ("sessions.viewer_ttl", self.sessions.viewer_ttl),
        ] {
            if !(value > 0.0 && value <= 86_400.0) {
                return fail(format!("{key} must be between 0 and 86400 seconds"));
            }
        }
        Ok(())
    }

    /// The session-record settings (`report:`; the field's `nps:` is moved onto it when the file
    /// is read, `crate::config_words`).
    pub fn report_settings(&self) -> &ReportSection {
        &self.report
    }

    /// The `body:` and `report:` keys; the message names the key.
    fn validate_body_and_report(&self) -> Result<(), ConfigError> {
        use crate::body::PLACEHOLDERS;
        use crate::worker::process::check_template_for;
        let fail = |message: String| Err(ConfigError(message));
        if !self.body.launch_command.is_empty() {
            check_template_for(
                "body.launch_command",
                &self.body.launch_command,
                PLACEHOLDERS,
            )
            .map_err(ConfigError)?;
        }
        if !self.body.stop_command.is_empty() {
            check_template_for("body.stop_command", &self.body.stop_command, PLACEHOLDERS)
                .map_err(ConfigError)?;
        }
        if !(self.body.stop_grace > 0.0 && self.body.stop_grace <= 600.0) {
            return fail("body.stop_grace must be between 0 and 600 seconds".into());
        }
        if let Some(token) = &self.body.worker_token
            && (token.chars().count() < 16 || token.chars().any(char::is_control))
        {
            return fail(
                "body.worker_token must be at least 16 characters, without control characters"
                    .into(),
            );
        }
        if !matches!(self.sunshine.api_scheme.as_str(), "http" | "https") {
            return fail("sunshine.api_scheme must be http or https".into());
        }
        let section = &self.report;
        if let Some(url) = &section.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return fail(format!(
                "report.url {url:?} must start with http:// or https://"
            ));
        }
        if section.max_entries == 0 {
            return fail("report.max_entries must be at least 1".into());
        }
        if !(section.retry_base > 0.0
            && section.retry_base <= section.retry_max
            && section.retry_max <= 86_400.0)
        {
            return fail(
                "report.retry_base must be above 0 and at most report.retry_max (at most 86400 seconds)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether the node has the worker role.
    pub fn runs_worker(&self) -> bool {
        self.node.roles.iter().any(|role| role == "worker")
    }

    /// The URL the control plane reaches the agent at (`server.domain`'s when set).
    pub fn public_url(&self) -> String {
        let tls = self.server.tls_cert.is_some();
        self.server
            .public_url
            .clone()
            .unwrap_or_else(|| match &self.server.domain {
                Some(domain) => {
                    crate::config_values::domain_url(domain, tls, self.server.listen.port())
                }
                None if tls => format!("https://{}", self.server.listen),
                None => format!("http://{}", self.server.listen),
            })
            .trim_end_matches('/')
            .to_owned()
    }

    /// The limits of the agent's HTTP listener.
    pub fn serve_settings(&self) -> hydra_proxy::serve::ServeSettings {
        hydra_proxy::serve::ServeSettings {
            header_read_timeout: Duration::from_secs_f64(self.server.header_read_timeout),
            idle_timeout: Duration::from_secs_f64(self.server.idle_timeout),
            max_connections: self.server.max_connections,
            shutdown_timeout: Duration::from_secs_f64(self.server.shutdown_timeout),
        }
    }

    /// The sessions root.
    pub fn sessions_root(&self) -> PathBuf {
        self.sessions
            .root
            .clone()
            .unwrap_or_else(|| self.state_dir.join("sessions"))
    }

    /// The worker role's settings.
    pub fn worker_settings(&self) -> WorkerSettings {
        let seconds = |value: f64| Duration::from_secs_f64(value);
        let mut settings = WorkerSettings::new(self.sessions_root());
        settings.max_sessions = self.sessions.max;
        settings.port_range_start = self.sessions.port_range_start;
        settings.command = self.sessions.command.clone();
        settings.session_bind = self.sessions.bind;
        settings.body_port = self.sessions.body_port;
        settings.ready_timeout = seconds(self.sessions.ready_timeout);
        settings.check_interval = seconds(self.sessions.check_interval);
        settings.idle_timeout = seconds(self.sessions.idle_timeout);
        settings.stream_base_url = self
            .sessions
            .stream_base_url
            .clone()
            .unwrap_or_else(|| self.public_url());
        settings.sunshine_username = self.sunshine.username.clone();
        settings.sunshine_password = self.sunshine.password.clone();
        settings.ice = self.ice();
        settings.webrtc_port_start = self.sessions.webrtc_port_start;
        settings.webrtc_ports_per_session = self.sessions.webrtc_ports_per_session;
        settings.mic = crate::mic::MicSettings {
            body_port: self.mic.body_port,
            candidate_ips: self.mic_candidate_ips(),
            connect_timeout: seconds(self.mic.connect_timeout),
        };
        settings
    }

    /// Where the microphone peer listens: `mic.candidate_ips`, else the node's `lan_ip` and
    /// `wg_ip`, else loopback.
    pub fn mic_candidate_ips(&self) -> Vec<std::net::IpAddr> {
        if !self.mic.candidate_ips.is_empty() {
            return self.mic.candidate_ips.clone();
        }
        let enrolled: Vec<std::net::IpAddr> = self
            .node
            .lan_ip
            .into_iter()
            .chain(self.node.wg_ip)
            .collect();
        if enrolled.is_empty() {
            vec![std::net::IpAddr::from([127, 0, 0, 1])]
        } else {
            enrolled
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_yaml(yaml: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, yaml).unwrap();
        AgentConfig::load(Some(&path), serde_json::json!({}))
    }

    #[test]
    fn the_turn_section_is_checked_against_ice_servers() {
        let base = "controller: {url: [\"http://127.0.0.1:1\"]}\n";
        let turn_url = "ice_servers: [{urls: [\"turn:turn.example:3478\"]}]\n";
        let stun_url = "ice_servers: [{urls: \"stun:stun.example:3478\"}]\n";
        let cases = [
            (
                format!("{base}{turn_url}turn: {{secret: 0123456789abcdef}}\n"),
                None,
            ),
            (
                format!("{base}{stun_url}turn: {{secret: 0123456789abcdef}}\n"),
                Some("turn.secret is set but ice_servers names no turn: or turns: URL"),
            ),
            (
                format!("{base}{turn_url}turn: {{secret: short}}\n"),
                Some("turn.secret must be at least 16 characters"),
            ),
            (
                format!("{base}{stun_url}turn: {{force_relay: true}}\n"),
                Some("turn.force_relay needs a turn: or turns: URL"),
            ),
            (
                format!("{base}{turn_url}turn: {{credential_ttl: 5}}\n"),
                Some("turn.credential_ttl must be between 60 and 604800 seconds"),
            ),
            (
                format!("{base}{turn_url}turn: {{relay_port_min: 60000, relay_port_max: 50000}}\n"),
                Some("turn.relay_port_min must be at least 1024"),
            ),
        ];
        for (yaml, expected) in cases {
            match (load_yaml(&yaml), expected) {
                (Ok(_), None) => {}
                (Err(error), Some(message)) => {
                    assert!(error.0.contains(message), "{yaml}: {}", error.0)
                }
                (outcome, expected) => panic!("{yaml}: {outcome:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn defaults_are_the_field_defaults() {
        let config = AgentConfig::load(None, serde_json::json!({})).unwrap();
        assert_eq!(config.sessions.max, 15);
        assert_eq!(config.sessions.port_range_start, 8080);
        assert_eq!(config.sessions.body_port, 47990);
        assert_eq!(config.heartbeat.interval, 30.0);
        assert_eq!(config.sessions.idle_timeout, 300.0);
        assert_eq!(config.bundle.poll_interval, 30.0);
        assert_eq!(config.health.interval, 60.0);
        assert_eq!(config.sessions.webrtc_port_start, 40_000);
        assert_eq!(config.sessions.webrtc_ports_per_session, 20);
        assert_eq!(config.mic.body_port, 47995);
        assert_eq!(
            config.mic_candidate_ips(),
            [std::net::IpAddr::from([127, 0, 0, 1])]
        );
        assert_eq!(
            config.sessions.command[0],
            "/opt/moonlight-web-stream/web-server"
        );
    }

    #[test]
    fn the_file_then_flags_set_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(
            &path,
            "sessions:\n  max: 3\n  port_range_start: 9000\ncontroller:\n  url: [http://10.0.0.1:7070]\n",
        )
        .unwrap();
        let config =
            AgentConfig::load(Some(&path), serde_json::json!({ "sessions": { "max": 5 } }))
                .unwrap();
        assert_eq!(config.sessions.max, 5);
        assert_eq!(config.sessions.port_range_start, 9000);
        assert_eq!(config.controller.url, ["http://10.0.0.1:7070"]);
    }

    #[test]
    fn the_cluster_keys_default_and_are_checked() {
        let config = AgentConfig::load(None, serde_json::json!({})).unwrap();
        assert!(!config.cluster.enabled);
        assert_eq!(config.cluster.bind_port, 7946);
        assert_eq!(config.cluster.discovery_mode, "list");
        let set = load_yaml(
            "cluster:\n  enabled: true\n  key_file: /etc/hydra/cluster.key\n  join_peers: [10.0.0.2, '10.0.0.3:7950']\n  advertise_addr: 10.0.0.1\n",
        )
        .unwrap();
        assert_eq!(set.cluster.join_peers, ["10.0.0.2", "10.0.0.3:7950"]);
        assert_eq!(
            set.cluster.advertise_addr,
            Some("10.0.0.1".parse().unwrap())
        );
        // `server`: the keys and peers come in the config bundle, so no key file is needed.
        let from_server =
            load_yaml("cluster:\n  enabled: true\n  discovery_mode: server\n").unwrap();
        assert_eq!(from_server.cluster.key_file, None);
        let errors: Vec<String> = [
            "cluster:\n  enabled: true\n",
            "cluster:\n  enabled: true\n  key_file: k\n  discovery_mode: gossip\n",
            "cluster:\n  enabled: true\n  key_file: k\n  discovery_mode: dns\n",
        ]
        .iter()
        .map(|yaml| load_yaml(yaml).unwrap_err().0)
        .collect();
        expect_test::expect![[r#"
            [
                "cluster.key_file is required when cluster.enabled (datagrams are sealed), unless cluster.discovery_mode is server (the keys come in the config bundle)",
                "cluster.discovery_mode must be list, dns or server",
                "cluster.dns_service_name is required with discovery_mode dns",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }

    #[test]
    fn the_body_and_report_keys_are_checked_and_nps_is_an_alias_of_report() {
        let nps = load_yaml("nps:\n  url: https://nps.example/records\n  token: t\n").unwrap();
        assert_eq!(
            nps.report_settings().url.as_deref(),
            Some("https://nps.example/records")
        );
        assert_eq!(nps.report_settings().token.as_deref(), Some("t"));
        let both = load_yaml(
            "nps: {url: 'https://nps.example/a'}\nreport: {url: 'https://reports.example/b'}\n",
        )
        .unwrap_err();
        assert!(
            both.0
                .contains("both nps.url (the field's name) and report.url are set"),
            "{both}"
        );
        let errors: Vec<String> = [
            "body:\n  launch_command: [/bin/launch, '{exe}']\n",
            "body:\n  stop_command: ['']\n",
            "body:\n  worker_token: short\n",
            "report:\n  url: ftp://x\n",
            "nps:\n  retry_base: 0\n",
            "sunshine:\n  api_scheme: ftp\n",
        ]
        .iter()
        .map(|yaml| load_yaml(yaml).unwrap_err().0)
        .collect();
        expect_test::expect![[r#"
            [
                "body.launch_command: unknown placeholder {exe} in \"{exe}\" (known: {exe_path}, {experience}, {session_id})",
                "body.stop_command must name a program",
                "body.worker_token must be at least 16 characters, without control characters",
                "report.url \"ftp://x\" must start with http:// or https://",
                "report.retry_base must be above 0 and at most report.retry_max (at most 86400 seconds)",
                "sunshine.api_scheme must be http or https",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }

    #[test]
    fn bad_values_name_their_key() {
        let unknown = load_yaml("sessions:\n  maximum: 3\n").unwrap_err();
        assert!(unknown.0.contains("maximum"), "{unknown}");
        let wrong_type = load_yaml("sessions:\n  max: lots\n").unwrap_err();
        assert!(wrong_type.0.contains("sessions.max"), "{wrong_type}");
        let zero = load_yaml("sessions:\n  max: 0\n").unwrap_err();
        assert_eq!(zero.0, "sessions.max must be between 1 and 1000");
        let template = load_yaml("sessions:\n  command: [/bin/x, '{nope}']\n").unwrap_err();
        assert!(
            template.0.contains("unknown placeholder {nope}"),
            "{template}"
        );
        let role = load_yaml("node:\n  roles: [gpu]\n").unwrap_err();
        assert!(role.0.contains("node.roles"), "{role}");
        let url = load_yaml("controller:\n  url: [ftp://x]\n").unwrap_err();
        assert!(url.0.contains("controller.url"), "{url}");
        let health = load_yaml("health:\n  interval: 0.5\n").unwrap_err();
        assert_eq!(
            health.0,
            "health.interval must be at least 1000 ms (1 s), got 500 ms"
        );
        assert!(load_yaml("health:\n  interval: 1\n").is_ok());
        let poll = load_yaml("bundle:\n  poll_interval: 0\n").unwrap_err();
        assert!(poll.0.contains("bundle.poll_interval"), "{poll}");
        let webrtc = load_yaml("sessions:\n  max: 15\n  webrtc_port_start: 65300\n").unwrap_err();
        assert!(webrtc.0.contains("sessions.webrtc_port_start"), "{webrtc}");
        assert!(load_yaml("sessions:\n  max: 15\n  webrtc_port_start: 65235\n").is_ok());
        let mic = load_yaml("mic:\n  candidate_ips: [0.0.0.0]\n").unwrap_err();
        assert!(mic.0.contains("mic.candidate_ips"), "{mic}");
        let enrolled = load_yaml("node:\n  lan_ip: 10.0.0.5\n  wg_ip: 10.8.0.5\n").unwrap();
        assert_eq!(
            enrolled.mic_candidate_ips(),
            [
                "10.0.0.5".parse::<std::net::IpAddr>().unwrap(),
                "10.8.0.5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn the_field_s_worker_file_loads_as_it_is() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/field/worker.yaml"
        ));
        let config = AgentConfig::load(Some(path), serde_json::json!({})).unwrap();
        let loaded = format!(
            "listen {}\npublic_url {}\ncontroller.url {:?}\napi_token {:?}\nreport {:?} token set {}\nsessions {} from {} return {}\nroles {:?}",
            config.server.listen,
            config.public_url(),
            config.controller.url,
            config.api_token,
            config.report.url,
            config.report.token.is_some(),
            config.sessions.max,
            config.sessions.port_range_start,
            config.sessions.return_url,
            config.node.roles,
        );
        expect_test::expect![[r#"
            listen 0.0.0.0:8090
            public_url http://w1.relay.example.org:8090
            controller.url ["https://relay.example.org"]
            api_token Some("worker-admin-token-0123")
            report Some("https://nps.example.org/api/records") token set true
            sessions 15 from 8080 return https://example.org/play
            roles ["worker"]"#]]
        .assert_eq(&loaded);
    }

    #[test]
    fn durations_take_units_and_plain_seconds_everywhere() {
        let config = load_yaml(
            "heartbeat: {interval: 30s}\nhealth: {interval: 1m}\nsessions: {idle_timeout: 5m, ready_timeout: 30}\nserver: {shutdown_timeout: 500ms}\nturn: {credential_ttl: 12h}\n",
        )
        .unwrap();
        assert_eq!(
            (
                config.heartbeat.interval,
                config.health.interval,
                config.sessions.idle_timeout,
                config.sessions.ready_timeout,
                config.server.shutdown_timeout,
                config.turn.credential_ttl,
            ),
            (30.0, 60.0, 300.0, 30.0, 0.5, 43_200.0)
        );
        let bad = load_yaml("heartbeat:\n  interval: soon\n").unwrap_err();
        assert!(
            bad.0.contains("heartbeat.interval") && bad.0.contains("not a duration"),
            "{bad}"
        );
    }

    #[test]
    fn unknown_keys_name_the_file_the_line_and_hydra_s_name() {
        let cases = [
            "mode: worker\nsessions:\n  max: 3\n  port_range_end: 8095\n",
            "controller:\n  url: http://127.0.0.1:1\nheartbeat_interval: 30\n",
            "server:\n  listen: \":8090\"\n  port: 8090\n",
            "nps:\n  url: https://nps.example\n  colour: relay\n",
            "sessions:\n  maximum: 3\n",
            "tls_cert: /etc/cert.pem\n",
            "server: {tls_cert: /etc/cert.pem}\n",
        ];
        let errors: Vec<String> = cases
            .iter()
            .map(|yaml| {
                let error = load_yaml(yaml).unwrap_err().0;
                // The temp dir's name differs per run.
                let Some((before, after)) = error.split_once("config file ") else {
                    return error;
                };
                let after = after
                    .split_once("agent.yaml")
                    .map_or(after, |(_, rest)| rest);
                format!("{before}config file <dir>/agent.yaml{after}")
            })
            .collect();
        expect_test::expect![[r#"
            [
                "unknown key \"sessions.port_range_end\" in config file <dir>/agent.yaml line 4 (Hydra calls it sessions.max (ports run from sessions.port_range_start to start + max))",
                "unknown key \"heartbeat_interval\" in config file <dir>/agent.yaml line 3 (Hydra calls it heartbeat.interval)",
                "unknown key \"server.port\" in config file <dir>/agent.yaml line 3 (Hydra calls it server.listen)",
                "unknown key \"nps.colour\" in config file <dir>/agent.yaml line 3",
                "unknown key \"sessions.maximum\" in config file <dir>/agent.yaml line 2",
                "unknown key \"tls_cert\" in config file <dir>/agent.yaml line 1",
                "server.tls_cert and server.tls_key go together: set both or neither",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }
}
