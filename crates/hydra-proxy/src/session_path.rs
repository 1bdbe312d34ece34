//! The browser's `/session/{id}/...` paths: the session id checked before any lookup, and the
//! rest of the path and the query taken from the request URI as they came (never the decoded
//! `Path` wildcard formatted back, which turned `..%2F` into `../` and `%2541` into `%41`).

use axum::http::Uri;
use hydra_core::session_id::{SessionId, parse_session_id};

/// Why a session id in a path is refused (both answer 400 naming the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSessionId {
    /// It holds a control character (CR, LF, NUL, ...).
    ControlCharacter,
    /// It is not of the accepted form.
    Malformed,
}

impl BadSessionId {
    /// The message of the 400 answer.
    pub fn message(self) -> &'static str {
        match self {
            BadSessionId::ControlCharacter => {
                "session id in the path must not contain control characters"
            }
            BadSessionId::Malformed => {
                "session id in the path must be <node_id>:<uuid> or 1 to 64 of letters, digits, '-' and '_'"
            }
        }
    }
}

/// Session ids an agent runs (they become a directory name and a URL segment): `<node_id>:<uuid>`
/// as `hydra_core::session_id` parses it, or, from before the mesh, 1 to 64 of `[A-Za-z0-9_-]`.
pub fn check_session_id(id: &str) -> Result<(), BadSessionId> {
    if id.chars().any(char::is_control) {
        return Err(BadSessionId::ControlCharacter);
    }
    if id.contains(':') {
        return match parse_session_id(id) {
            Ok(SessionId::Owned { .. }) => Ok(()),
            _ => Err(BadSessionId::Malformed),
        };
    }
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(BadSessionId::Malformed)
    }
}

/// Whether `id` is of a form the server makes: `<node_id>:<uuid>`, or (before the mesh) `s-` and
/// 16 lowercase hex digits.
pub fn is_server_session_id(id: &str) -> bool {
    if matches!(parse_session_id(id), Ok(SessionId::Owned { .. })) {
        return true;
    }
    id.strip_prefix("s-").is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

/// The raw path after `/session/{id}` (from its `/` on; `/` when there is none), exactly as the
/// request URI has it.
pub fn raw_rest(uri: &Uri) -> &str {
    let path = uri.path();
    let after_prefix = path.strip_prefix("/session/").unwrap_or(path);
    match after_prefix.find('/') {
        Some(slash) => &after_prefix[slash..],
        None => "/",
    }
}

/// Where `/session/{id}` (no slash) redirects, for the agent and the server's colocated route
/// alike: `/session/{id}/` with the query kept as it came, since it may carry the viewer
/// capability.
pub fn slash_location(id: &str, uri: &Uri) -> String {
    match uri.query() {
        Some(query) => format!("/session/{id}/?{query}"),
        None => format!("/session/{id}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        assert_eq!(check_session_id("s-0123456789abcdef"), Ok(()));
        assert_eq!(check_session_id("page_1"), Ok(()));
        assert_eq!(
            check_session_id("a\r\nb"),
            Err(BadSessionId::ControlCharacter)
        );
        assert_eq!(check_session_id("\0"), Err(BadSessionId::ControlCharacter));
        assert_eq!(check_session_id(""), Err(BadSessionId::Malformed));
        assert_eq!(check_session_id("a.b"), Err(BadSessionId::Malformed));
        assert_eq!(check_session_id("é"), Err(BadSessionId::Malformed));
        assert_eq!(
            check_session_id(&"a".repeat(65)),
            Err(BadSessionId::Malformed)
        );
        assert!(is_server_session_id("s-0123456789abcdef"));
        assert!(!is_server_session_id("s-0123456789ABCDEF"));
        assert!(!is_server_session_id("s-0123456789abcde"));
        assert!(!is_server_session_id("page"));
    }

    #[test]
    fn ids_that_carry_their_node_are_accepted_in_both_checks() {
        let owned = "w-1.venue_a:0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(check_session_id(owned), Ok(()));
        assert!(is_server_session_id(owned));
        for bad in [
            "w-1:0F8FAD5B-D9CB-469F-A165-70867728950E",
            "w 1:0f8fad5b-d9cb-469f-a165-70867728950e",
            ":0f8fad5b-d9cb-469f-a165-70867728950e",
            "w-1:0f8fad5b-d9cb-469f-a165-70867728950e/..",
            "w-1:x",
        ] {
            assert_eq!(check_session_id(bad), Err(BadSessionId::Malformed), "{bad}");
            assert!(!is_server_session_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_slash_redirect_keeps_the_query_with_the_capability() {
        let cases = [
            ("/session/s-1", "/session/s-1/"),
            (
                "/session/s-1?hydra_viewer=v1.abc&x=%2F",
                "/session/s-1/?hydra_viewer=v1.abc&x=%2F",
            ),
            ("/session/s-1?", "/session/s-1/?"),
        ];
        for (path, location) in cases {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(slash_location("s-1", &uri), location, "{path}");
        }
    }

    #[test]
    fn the_rest_of_the_path_is_kept_as_it_came() {
        let cases = [
            ("/session/s-1/", "/"),
            ("/session/s-1", "/"),
            ("/session/s-1/..%2F..%2Fapi%2Fv1", "/..%2F..%2Fapi%2Fv1"),
            (
                "/session/s-1/a/%2541/%C3%A9/%2e%2e/",
                "/a/%2541/%C3%A9/%2e%2e/",
            ),
            ("/session/%73-1/x?y=%2F", "/x"),
        ];
        for (path, rest) in cases {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(raw_rest(&uri), rest, "{path}");
        }
    }
}
