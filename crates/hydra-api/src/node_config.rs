//! Config bundles: the part of a node's config the control plane sets
//! (`GET`/`PUT /api/v1/nodes/{id}/config`). A bundle overrides only the keys it names; the
//! node's local YAML supplies the rest and is the fallback while the control plane is away.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What the control plane sets on a node, named as in the agent's YAML (`sessions.max`,
/// `ice_servers`, ...). Every key is optional: absent keys keep the node's local value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigBundle {
    /// The worker role's settings.
    #[serde(default, skip_serializing_if = "BundleSessions::is_empty")]
    pub sessions: BundleSessions,
    /// ICE servers handed to session processes; replaces the local list as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_servers: Option<Vec<IceServer>>,
}

impl ConfigBundle {
    /// Whether the bundle names no key (the node runs on its local YAML alone).
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.ice_servers.is_none()
    }
}

/// `sessions:` keys a bundle may set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleSessions {
    /// Sessions at most (1 to 1000); lowering it stops new starts only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Where "return" links go: a path (`/...`) or an http(s) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_url: Option<String>,
    /// Where "Report a problem" goes: `mailto:...`, a path or an http(s) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_url: Option<String>,
    /// Where ratings are forwarded: an http(s) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating_url: Option<String>,
}

impl BundleSessions {
    /// Whether no `sessions` key is set.
    pub fn is_empty(&self) -> bool {
        *self == BundleSessions::default()
    }
}

/// One ICE server, as WebRTC's `RTCIceServer` names it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// One URL or several (`stun:`, `turn:` or `turns:`).
    pub urls: IceUrls,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential; a secret: `Debug` does not show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl fmt::Debug for IceServer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `urls` of an ICE server: a string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum IceUrls {
    /// One URL.
    One(String),
    /// Several URLs.
    Many(Vec<String>),
}

impl IceUrls {
    /// Every URL, in order.
    pub fn as_slice(&self) -> &[String] {
        match self {
            IceUrls::One(url) => std::slice::from_ref(url),
            IceUrls::Many(urls) => urls,
        }
    }
}

/// A node's bundle as the control plane keeps it (the answer of `GET` and `PUT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node.
    pub node_id: String,
    /// 0 when no bundle was ever set; then 1, one more per replacement.
    pub version: u64,
    /// The entity tag the server also sends in `ETag`; send it back in `If-None-Match` to get
    /// `304 Not Modified` while nothing changed.
    pub etag: String,
    /// When the bundle was last replaced (RFC 3339), if ever.
    pub updated_at: Option<String>,
    /// The bundle.
    pub bundle: ConfigBundle,
    /// The peer mesh's keys and a few members, from the server's own `cluster:` section and
    /// mesh view (never stored, never set by `PUT`); absent while the server runs no mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshBundle>,
}

/// What the server hands a node about the peer mesh, so an operator sets the key once, on the
/// server (issue 11).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshBundle {
    /// The cluster keys, 64 hex digits each: the first seals, all open (rotation: a new key is
    /// added, then put first, then the old one removed). Secrets: `Debug` does not show them.
    pub keys: Vec<String>,
    /// Members to join (`ip:port`), the server's own mesh address first, for
    /// `cluster.discovery_mode: server`.
    pub peers: Vec<String>,
}

impl fmt::Debug for MeshBundle {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("MeshBundle")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("peers", &self.peers)
            .finish()
    }
}

impl NodeConfig {
    /// The answer for a bundle at `version`, replaced at `updated_at_ms` (`None`: never set).
    pub fn new(
        node_id: String,
        version: u64,
        updated_at_ms: Option<i64>,
        bundle: ConfigBundle,
    ) -> NodeConfig {
        NodeConfig {
            node_id,
            version,
            // The replacement time is in the tag too: a node removed and enrolled again under
            // the same id restarts at version 1, and its old tag must not match the new bundle.
            etag: format!("\"v{version}-{}\"", updated_at_ms.unwrap_or(0)),
            updated_at: updated_at_ms.map(crate::system::rfc3339),
            bundle,
            mesh: None,
        }
    }

    /// The answer with the mesh's keys and peers; the key ids (public) join the entity tag, so
    /// a rotation reaches every node at its next poll while the peers alone never do.
    pub fn with_mesh(mut self, mesh: MeshBundle, key_ids: &[String]) -> NodeConfig {
        let base = self.etag.trim_end_matches('"');
        self.etag = format!("{base}-k{}\"", key_ids.join("."));
        self.mesh = Some(mesh);
        self
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn a_bundle_names_only_what_it_sets_and_hides_credentials() {
        let bundle: ConfigBundle = serde_json::from_str(
            r#"{"sessions":{"max":4},"ice_servers":[{"urls":"stun:stun.example.org"},
                {"urls":["turn:t.example.org"],"username":"u","credential":"s3cret"}]}"#,
        )
        .unwrap();
        expect![[r#"{"sessions":{"max":4},"ice_servers":[{"urls":"stun:stun.example.org"},{"urls":["turn:t.example.org"],"username":"u","credential":"s3cret"}]}"#]]
        .assert_eq(&serde_json::to_string(&bundle).unwrap());
        assert!(!format!("{bundle:?}").contains("s3cret"));
        assert_eq!(
            serde_json::to_string(&ConfigBundle::default()).unwrap(),
            "{}"
        );
        let config = NodeConfig::new("w-1".into(), 3, Some(1_795_392_000_123), bundle.clone());
        let decoded: NodeConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(decoded, config);
        assert_eq!(config.etag, "\"v3-1795392000123\"");
    }

    #[test]
    fn the_mesh_part_hides_its_keys_and_joins_the_tag_by_key_ids_only() {
        let key = "07".repeat(32);
        let config = NodeConfig::new("w-1".into(), 3, Some(5), ConfigBundle::default());
        let plain: NodeConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap())
            .expect("an answer without mesh decodes");
        assert_eq!(plain.mesh, None);
        let with_mesh = config.with_mesh(
            MeshBundle {
                keys: vec![key.clone()],
                peers: vec!["127.0.0.1:7946".into()],
            },
            &["a1b2c3d4".to_owned(), "00ff00ff".to_owned()],
        );
        assert_eq!(with_mesh.etag, "\"v3-5-ka1b2c3d4.00ff00ff\"");
        let shown = format!("{with_mesh:?}");
        assert!(
            !shown.contains(&key) && shown.contains("127.0.0.1:7946"),
            "{shown}"
        );
        let decoded: NodeConfig =
            serde_json::from_str(&serde_json::to_string(&with_mesh).unwrap()).unwrap();
        assert_eq!(decoded, with_mesh);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let error = serde_json::from_str::<ConfigBundle>(r#"{"sessions":{"maximum":4}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("maximum"), "{error}");
    }
}
