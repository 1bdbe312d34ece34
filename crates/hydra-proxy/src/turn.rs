//! TURN credentials in coturn's `use-auth-secret` scheme (the "TURN REST API" draft that coturn,
//! and the field's workers, use): the username is `<expiry unix seconds>:<session id>` and the
//! password is base64(HMAC-SHA1(secret, username)). coturn recomputes the password from its
//! `static-auth-secret` and refuses an expired username, so the worker hands each session
//! credentials that expire with it and no TURN user database exists anywhere.
//!
//! The one home for them: the agent uses it for the session process (`HYDRA_ICE_SERVERS`) and for
//! the page script; `hydra agent turn-config` writes the matching coturn settings.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// One session's TURN credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// `<expires_at>:<session id>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub credential: String,
    /// Unix seconds after which coturn refuses them.
    pub expires_at: u64,
}

impl std::fmt::Debug for TurnCredentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TurnCredentials")
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Credentials for `session_id`, valid from `now_secs` for `ttl_secs`.
pub fn credentials(
    secret: &str,
    session_id: &str,
    now_secs: u64,
    ttl_secs: u64,
) -> TurnCredentials {
    let expires_at = now_secs.saturating_add(ttl_secs);
    let username = format!("{expires_at}:{session_id}");
    // SHA-1 is what the scheme (and coturn) defines; as an HMAC it is not broken by SHA-1's
    // collision attacks.
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let credential = STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref());
    TurnCredentials {
        username,
        credential,
        expires_at,
    }
}

/// Whether an ICE server entry (WebRTC's `RTCIceServer`: `urls` a string or a list) names a
/// `turn:` or `turns:` URL.
fn is_turn(server: &Value) -> bool {
    let is_turn_url = |url: &Value| {
        url.as_str()
            .is_some_and(|url| url.starts_with("turn:") || url.starts_with("turns:"))
    };
    match &server["urls"] {
        Value::Array(urls) => urls.iter().any(is_turn_url),
        url => is_turn_url(url),
    }
}

/// `ice_servers` as handed to one session: every TURN entry that carries no `username` of its
/// own gets `credentials`; STUN entries and entries with their own credentials stay as they are.
pub fn with_credentials(ice_servers: &[Value], credentials: &TurnCredentials) -> Vec<Value> {
    ice_servers
        .iter()
        .map(|server| {
            let mut server = server.clone();
            if is_turn(&server)
                && server.get("username").is_none()
                && let Some(entry) = server.as_object_mut()
            {
                entry.insert("username".into(), credentials.username.clone().into());
                entry.insert("credential".into(), credentials.credential.clone().into());
            }
            server
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Vectors computed independently (Python's `hmac` and `base64` modules), so a change of
    /// hash, encoding or username layout fails here before coturn refuses it.
    #[test]
    fn credentials_match_the_scheme_coturn_checks() {
        let given = credentials("s3cret", "s-abc", 1_699_999_400, 600);
        assert_eq!(given.username, "1700000000:s-abc");
        assert_eq!(given.credential, "np8CdRjXi+m0qx+R0SW319xzvoQ=");
        assert_eq!(given.expires_at, 1_700_000_000);
        let other = credentials("north-wind", "w-1:0b9f", 1_893_456_000, 0);
        assert_eq!(other.credential, "eAzUib5qS4JaJPS6uoPraWhii2A=");
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let given = credentials("s3cret", "s-abc", 1_699_999_400, 600);
        assert!(!format!("{given:?}").contains(&given.credential));
    }

    #[test]
    fn only_turn_entries_without_their_own_credentials_get_the_session_s() {
        let given = credentials("s3cret", "s-abc", 1_699_999_400, 600);
        let servers = [
            json!({"urls": "stun:stun.example:3478"}),
            json!({"urls": ["turn:turn.example:3478", "turns:turn.example:5349"]}),
            json!({"urls": "turn:other.example", "username": "u", "credential": "c"}),
            json!({"urls": "turns:one.example:443?transport=tcp"}),
        ];
        let handed = with_credentials(&servers, &given);
        assert_eq!(handed[0], servers[0]);
        assert_eq!(handed[1]["username"], "1700000000:s-abc");
        assert_eq!(handed[1]["credential"], "np8CdRjXi+m0qx+R0SW319xzvoQ=");
        assert_eq!(handed[2], servers[2]);
        assert_eq!(handed[3]["username"], "1700000000:s-abc");
    }
}
