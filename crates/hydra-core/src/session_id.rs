//! Session ids that carry their node (issue 11): `<node_id>:<uuid>`, made and parsed back here
//! and nowhere else, so any worker can tell which node owns a session and forward a request
//! about it one hop. Ids from before the mesh (`s-<hex>`) keep working: their owner is looked
//! up as before.

use std::fmt;

/// Longest node id a session id may carry.
pub const MAX_NODE_ID_LEN: usize = 128;

/// A session id, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionId<'a> {
    /// `<node_id>:<uuid>`: the owner is in the id.
    Owned {
        /// The node that runs the session.
        node_id: &'a str,
        /// The session's UUID (lowercase, hyphenated).
        uuid: &'a str,
    },
    /// `s-<hex>`, an id from before the mesh; its owner is found elsewhere.
    Legacy(&'a str),
}

impl<'a> SessionId<'a> {
    /// The node that owns the session, when the id says.
    pub fn owner(&self) -> Option<&'a str> {
        match self {
            SessionId::Owned { node_id, .. } => Some(node_id),
            SessionId::Legacy(_) => None,
        }
    }
}

/// Why a text is not a session id; `Display` is the message a 400 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIdError {
    /// Neither shape.
    Malformed,
    /// The node part is empty, too long, or has a character node ids never have.
    BadNodeId,
    /// The part after `:` is not a lowercase hyphenated UUID.
    BadUuid,
}

impl fmt::Display for SessionIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionIdError::Malformed => "session id must be <node_id>:<uuid> or s-<id>",
            SessionIdError::BadNodeId => "session id's node must be 1 to 128 of A-Z a-z 0-9 . _ -",
            SessionIdError::BadUuid => "session id's uuid must be 8-4-4-4-12 lowercase hex digits",
        })
    }
}

impl std::error::Error for SessionIdError {}

fn is_node_id(text: &str) -> bool {
    (1..=MAX_NODE_ID_LEN).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
}

fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_digit() || (b'a'..=b'f').contains(byte),
        })
}

/// Parses a session id: `<node_id>:<uuid>`, or a legacy `s-` id (1 to 64 of
/// A-Z a-z 0-9 _ - after the prefix).
pub fn parse_session_id(text: &str) -> Result<SessionId<'_>, SessionIdError> {
    if let Some((node_id, uuid)) = text.split_once(':') {
        if !is_node_id(node_id) {
            return Err(SessionIdError::BadNodeId);
        }
        if !is_uuid(uuid) {
            return Err(SessionIdError::BadUuid);
        }
        return Ok(SessionId::Owned { node_id, uuid });
    }
    match text.strip_prefix("s-") {
        Some(rest)
            if (1..=64).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-')) =>
        {
            Ok(SessionId::Legacy(text))
        }
        _ => Err(SessionIdError::Malformed),
    }
}

/// A new session id owned by `node_id`, from 16 random bytes passed in (made a version 4,
/// variant 1 UUID). `None` when `node_id` could not be parsed back.
pub fn owned_session_id(node_id: &str, mut random: [u8; 16]) -> Option<String> {
    if !is_node_id(node_id) {
        return None;
    }
    random[6] = (random[6] & 0x0f) | 0x40;
    random[8] = (random[8] & 0x3f) | 0x80;
    let hex: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    Some(format!(
        "{node_id}:{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use expect_test::expect;
    use proptest::prelude::*;

    use super::*;

    fn check(text: &str) -> String {
        match parse_session_id(text) {
            Ok(SessionId::Owned { node_id, uuid }) => format!("owned by {node_id}, uuid {uuid}"),
            Ok(SessionId::Legacy(id)) => format!("legacy {id}"),
            Err(error) => format!("error: {error}"),
        }
    }

    #[test]
    fn the_two_shapes_parse_and_everything_else_is_refused() {
        let cases = [
            "node-1a2b3c4d:0f8fad5b-d9cb-469f-a165-70867728950e",
            "w1.venue_a:0f8fad5b-d9cb-469f-a165-70867728950e",
            "s-0123456789abcdef",
            "s-",
            "",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            ":0f8fad5b-d9cb-469f-a165-70867728950e",
            "w1:0F8FAD5B-D9CB-469F-A165-70867728950E",
            "w1:0f8fad5b-d9cb-469f-a165-70867728950",
            "w1:0f8fad5b-d9cb-469f-a165-70867728950e:x",
            "w 1:0f8fad5b-d9cb-469f-a165-70867728950e",
            "s-../../etc",
        ];
        let answers: Vec<String> = cases
            .iter()
            .map(|case| format!("{case:?} -> {}", check(case)))
            .collect();
        expect![[r#"
            "node-1a2b3c4d:0f8fad5b-d9cb-469f-a165-70867728950e" -> owned by node-1a2b3c4d, uuid 0f8fad5b-d9cb-469f-a165-70867728950e
            "w1.venue_a:0f8fad5b-d9cb-469f-a165-70867728950e" -> owned by w1.venue_a, uuid 0f8fad5b-d9cb-469f-a165-70867728950e
            "s-0123456789abcdef" -> legacy s-0123456789abcdef
            "s-" -> error: session id must be <node_id>:<uuid> or s-<id>
            "" -> error: session id must be <node_id>:<uuid> or s-<id>
            "0f8fad5b-d9cb-469f-a165-70867728950e" -> error: session id must be <node_id>:<uuid> or s-<id>
            ":0f8fad5b-d9cb-469f-a165-70867728950e" -> error: session id's node must be 1 to 128 of A-Z a-z 0-9 . _ -
            "w1:0F8FAD5B-D9CB-469F-A165-70867728950E" -> error: session id's uuid must be 8-4-4-4-12 lowercase hex digits
            "w1:0f8fad5b-d9cb-469f-a165-70867728950" -> error: session id's uuid must be 8-4-4-4-12 lowercase hex digits
            "w1:0f8fad5b-d9cb-469f-a165-70867728950e:x" -> error: session id's uuid must be 8-4-4-4-12 lowercase hex digits
            "w 1:0f8fad5b-d9cb-469f-a165-70867728950e" -> error: session id's node must be 1 to 128 of A-Z a-z 0-9 . _ -
            "s-../../etc" -> error: session id must be <node_id>:<uuid> or s-<id>"#]].assert_eq(&answers.join("\n"));
    }

    #[test]
    fn a_made_id_names_its_node() {
        let id = owned_session_id("node-1a2b3c4d", [0xab; 16]).expect("a valid node id");
        expect!["node-1a2b3c4d:abababab-abab-4bab-abab-abababababab"].assert_eq(&id);
        assert_eq!(
            parse_session_id(&id).unwrap().owner(),
            Some("node-1a2b3c4d")
        );
        assert_eq!(owned_session_id("bad:node", [0; 16]), None);
        assert_eq!(parse_session_id("s-abc").unwrap().owner(), None);
    }

    proptest! {
        #[test]
        fn a_made_id_parses_back_to_its_node_and_uuid(
            node_id in "[A-Za-z0-9._-]{1,128}",
            random in any::<[u8; 16]>(),
        ) {
            let id = owned_session_id(&node_id, random).expect("a valid node id");
            match parse_session_id(&id) {
                Ok(SessionId::Owned { node_id: parsed, uuid }) => {
                    prop_assert_eq!(parsed, node_id.as_str());
                    prop_assert_eq!(uuid.as_bytes()[14], b'4');
                }
                other => prop_assert!(false, "{id} parsed as {other:?}"),
            }
        }

        #[test]
        fn any_text_parses_without_panicking_and_an_owned_id_round_trips(text in ".{0,80}") {
            if let Ok(SessionId::Owned { node_id, uuid }) = parse_session_id(&text) {
                prop_assert_eq!(format!("{node_id}:{uuid}"), text);
            }
        }
    }
}
