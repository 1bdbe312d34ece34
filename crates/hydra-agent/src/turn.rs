//! The ICE servers a session and its viewers get, with TURN credentials minted per session in
//! coturn's `use-auth-secret` scheme (`hydra_proxy::turn`), and the coturn settings that match
//! them (`hydra agent turn-config`).
//!
//! The session process gets them as `HYDRA_ICE_SERVERS` when it starts; each page load of the
//! session gets fresh ones in the injected script (with `iceTransportPolicy: 'relay'` when
//! `turn.force_relay` is set). The secret never leaves the agent: coturn recomputes the password
//! from the username.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::config::AgentConfig;

/// The ICE servers handed out and, with `turn.secret`, how their TURN credentials are minted.
#[derive(Clone, Default)]
pub struct IceConfig {
    /// `ice_servers` as configured (`RTCIceServer` objects).
    pub servers: Vec<Value>,
    /// coturn's `static-auth-secret` (`turn.secret`); `None` hands `servers` out as they are.
    pub turn_secret: Option<String>,
    /// How long minted credentials stay valid (`turn.credential_ttl`).
    pub credential_ttl: Duration,
    /// Force relay-only media in the page (`turn.force_relay`).
    pub force_relay: bool,
}

impl std::fmt::Debug for IceConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("IceConfig")
            .field("servers", &self.servers.len())
            .field("turn_secret", &self.turn_secret.as_ref().map(|_| "(set)"))
            .field("credential_ttl", &self.credential_ttl)
            .field("force_relay", &self.force_relay)
            .finish()
    }
}

impl IceConfig {
    /// The ICE servers for `session_id` at `now_secs`: with a TURN secret, each TURN entry that
    /// has no credentials of its own gets the session's.
    pub fn for_session(&self, session_id: &str, now_secs: u64) -> Vec<Value> {
        match &self.turn_secret {
            None => self.servers.clone(),
            Some(secret) => {
                let minted = hydra_proxy::turn::credentials(
                    secret,
                    session_id,
                    now_secs,
                    self.credential_ttl.as_secs(),
                );
                hydra_proxy::turn::with_credentials(&self.servers, &minted)
            }
        }
    }

    /// What a session page's script gets: the session's servers with fresh credentials when the
    /// agent mints them (static credentials from the config are not handed to browsers).
    pub fn for_page(&self, session_id: &str, now_secs: u64) -> Vec<Value> {
        if self.turn_secret.is_some() {
            self.for_session(session_id, now_secs)
        } else {
            Vec::new()
        }
    }
}

/// Private, loopback, link-local, shared and reserved ranges coturn must not relay to (it would
/// otherwise let any viewer reach the worker's networks through it).
const DENIED_PEERS: &[&str] = &[
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.0.2.0-192.0.2.255",
    "192.168.0.0-192.168.255.255",
    "198.18.0.0-198.19.255.255",
    "198.51.100.0-198.51.100.255",
    "203.0.113.0-203.0.113.255",
    "224.0.0.0-255.255.255.255",
    "::1",
    "64:ff9b::-64:ff9b::ffff:ffff",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
];

/// A coturn `turnserver.conf` matching `config`'s `turn:` section: the realm, the shared secret
/// (`use-auth-secret`), the listening port, the relay port range, the denied peer ranges with
/// this node's own addresses allowed (its session processes are the media's other end).
pub fn coturn_config(config: &AgentConfig) -> Result<String, String> {
    let turn = &config.turn;
    let secret = turn.secret.as_deref().ok_or_else(|| {
        "turn.secret is not set: set it in the agent's config file (turn.secret) or as \
         HYDRA_TURN__SECRET, then run this again"
            .to_owned()
    })?;
    let node = config.node.id.as_deref().unwrap_or("(unnamed node)");
    let mut out = String::new();
    let mut line = |text: String| {
        let _ = writeln!(out, "{text}");
    };
    line(format!(
        "# coturn settings for hydra agent {node}, written by `hydra agent turn-config`."
    ));
    line("# Install as /etc/turnserver.conf, mode 0600 (it holds the shared secret), and restart coturn.".into());
    line(format!("listening-port={}", turn.listening_port));
    line(format!("min-port={}", turn.relay_port_min));
    line(format!("max-port={}", turn.relay_port_max));
    line(format!("realm={}", turn.realm));
    line("use-auth-secret".into());
    line(format!("static-auth-secret={secret}"));
    line("fingerprint".into());
    line("no-cli".into());
    line("no-multicast-peers".into());
    for range in DENIED_PEERS {
        line(format!("denied-peer-ip={range}"));
    }
    for own in [config.node.lan_ip, config.node.wg_ip]
        .into_iter()
        .flatten()
    {
        line(format!("allowed-peer-ip={own}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ice(secret: Option<&str>) -> IceConfig {
        IceConfig {
            servers: vec![
                json!({"urls": "stun:stun.example:3478"}),
                json!({"urls": ["turn:turn.example:3478"]}),
            ],
            turn_secret: secret.map(str::to_owned),
            credential_ttl: Duration::from_secs(600),
            force_relay: false,
        }
    }

    #[test]
    fn sessions_get_minted_credentials_only_with_a_secret() {
        let minted = ice(Some("0123456789abcdef")).for_session("s-1", 1_000);
        assert_eq!(minted[1]["username"], "1600:s-1");
        assert!(
            minted[1]["credential"]
                .as_str()
                .is_some_and(|c| c.len() == 28)
        );
        assert_eq!(minted[0], json!({"urls": "stun:stun.example:3478"}));
        assert_eq!(ice(None).for_session("s-1", 1_000), ice(None).servers);
    }

    #[test]
    fn pages_get_servers_only_when_credentials_are_minted() {
        assert!(ice(None).for_page("s-1", 1_000).is_empty());
        assert_eq!(
            ice(Some("0123456789abcdef")).for_page("s-1", 1_000).len(),
            2
        );
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        assert!(!format!("{:?}", ice(Some("0123456789abcdef"))).contains("0123456789abcdef"));
    }
}
