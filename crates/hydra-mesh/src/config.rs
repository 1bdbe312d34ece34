//! The `cluster:` section, the same keys in the agent's and the server's configuration, and its
//! checks (each message names the key).

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::driver::Discovery;

/// `cluster:` (the peer mesh: SWIM gossip over sealed UDP).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Whether this node joins the mesh.
    pub enabled: bool,
    /// The member's name in the mesh; the node id (`node.id`), else the host name, when empty.
    pub node_id: Option<String>,
    /// UDP port of the mesh (7946; 0 picks a free one, for tests).
    pub bind_port: u16,
    /// Address the others reach this node at; detected when empty (the address the route to
    /// the first peer leaves from, else `node.lan_ip`, else 127.0.0.1). The socket binds to it.
    pub advertise_addr: Option<IpAddr>,
    /// How peers are found: `list` (`join_peers`), `dns` (`dns_service_name`) or `server`
    /// (the members the control plane names in this node's config bundle; agents only).
    pub discovery_mode: String,
    /// Peers to join, `host:port` or `ip` (port `bind_port`), for `list`.
    pub join_peers: Vec<String>,
    /// A name whose every A/AAAA record is a peer, for `dns`.
    pub dns_service_name: Option<String>,
    /// The cluster key file (0600): one key per line, 64 hex digits, the sealing key first;
    /// re-read when it changes. Optional on an agent: the config bundle brings the server's keys
    /// (and they win over the file).
    pub key_file: Option<PathBuf>,
    /// An optional tag published with this node's state.
    pub tag: Option<String>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            enabled: false,
            node_id: None,
            bind_port: 7946,
            advertise_addr: None,
            discovery_mode: "list".into(),
            join_peers: Vec::new(),
            dns_service_name: None,
            key_file: None,
            tag: None,
        }
    }
}

impl ClusterSection {
    /// Checks the keys when the mesh is on; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        match self.discovery_mode.as_str() {
            "list" => {}
            "dns"
                if self
                    .dns_service_name
                    .as_deref()
                    .is_some_and(|name| !name.is_empty()) => {}
            "dns" => {
                return Err("cluster.dns_service_name is required with discovery_mode dns".into());
            }
            // The keys come with the peers, in the config bundle.
            "server" => return Ok(()),
            _ => return Err("cluster.discovery_mode must be list, dns or server".into()),
        }
        if self.key_file.is_none() {
            return Err(
                "cluster.key_file is required when cluster.enabled (datagrams are sealed), \
                 unless cluster.discovery_mode is server (the keys come in the config bundle)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The checks of a server replica: it is where the keys come from, so it needs
    /// `cluster.key_file`, and it discovers by `list` or `dns` (it hands out `server`).
    pub fn validate_for_server(&self) -> Result<(), String> {
        self.validate()?;
        if !self.enabled {
            return Ok(());
        }
        if self.discovery_mode == "server" {
            return Err(
                "cluster.discovery_mode server is for agents; a server uses list or dns".into(),
            );
        }
        if self.key_file.is_none() {
            return Err(
                "cluster.key_file is required on a server (it hands the keys to the nodes)".into(),
            );
        }
        Ok(())
    }

    /// Where peers come from, by `discovery_mode`.
    pub fn discovery(&self) -> Discovery {
        match self.discovery_mode.as_str() {
            "dns" => Discovery::Dns(self.dns_service_name.clone().unwrap_or_default()),
            "server" => Discovery::Server,
            _ => Discovery::List(self.join_peers.clone()),
        }
    }
}
