//! The text rule of the wire (`hydra_core::text`) applied to whole JSON bodies and query or path
//! parameters, so every text field is checked by one mechanism instead of one check per field.
//!
//! Free-text fields are the ones named in [`FREE_TEXT_FIELDS`] (wherever they appear): they may
//! hold `\n` and `\t`; every other string, object key and parameter may hold no control
//! character at all.

use std::fmt;

use hydra_core::text::{TextKind, first_refused};
use serde_json::Value;

/// Fields whose strings are human or log text: a rating `comment`, a session `error` (often a
/// process's log tail).
pub const FREE_TEXT_FIELDS: &[&str] = &["comment", "error"];

/// A string that breaks the text rule: where it is and the first character at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlCharacter {
    /// Path of the field, e.g. `sessions[0].error` or `agent_url`.
    pub path: String,
    /// The first refused character.
    pub character: char,
}

impl fmt::Display for ControlCharacter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} contains a control character (U+{:04X})",
            self.path,
            u32::from(self.character)
        )
    }
}

/// Whether a JSON text may hold a control character in a string: only through an escape
/// (`\u0000`, `\n`, ...) or a raw C1 character (UTF-8 `0xC2 0x80..0x9F`); raw C0 characters are
/// not valid JSON inside strings. Lets a clean body skip the walk.
pub fn may_hold_control(json: &[u8]) -> bool {
    json.iter().any(|&byte| byte == b'\\' || byte == 0xC2)
}

/// Checks every string and key of a JSON text (which must parse; a text that does not parse is
/// left to the caller's parser to refuse).
pub fn check_json_text(json: &[u8]) -> Result<(), ControlCharacter> {
    if !may_hold_control(json) {
        return Ok(());
    }
    match serde_json::from_slice::<Value>(json) {
        Ok(value) => check_json(&value),
        Err(_) => Ok(()),
    }
}

/// Checks every string and key of `value`, naming the path of the first that breaks the rule.
pub fn check_json(value: &Value) -> Result<(), ControlCharacter> {
    walk(value, &mut String::new(), TextKind::Word)
}

/// Checks one query or path parameter (never free text).
pub fn check_parameter(name: &str, value: &str) -> Result<(), ControlCharacter> {
    for text in [name, value] {
        if let Some(character) = first_refused(text, TextKind::Word) {
            return Err(ControlCharacter {
                path: name.chars().filter(|c| !c.is_control()).collect(),
                character,
            });
        }
    }
    Ok(())
}

fn walk(value: &Value, path: &mut String, kind: TextKind) -> Result<(), ControlCharacter> {
    match value {
        Value::String(text) => match first_refused(text, kind) {
            Some(character) => Err(ControlCharacter {
                path: if path.is_empty() {
                    "body".to_owned()
                } else {
                    path.clone()
                },
                character,
            }),
            None => Ok(()),
        },
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                walk(item, path, kind)?;
                path.truncate(length);
            }
            Ok(())
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                let length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                if let Some(character) = first_refused(key, TextKind::Word) {
                    path.extend(key.chars().filter(|c| !c.is_control()));
                    return Err(ControlCharacter {
                        path: path.clone(),
                        character,
                    });
                }
                path.push_str(key);
                let field_kind = if FREE_TEXT_FIELDS.contains(&key.as_str()) {
                    TextKind::FreeText
                } else {
                    TextKind::Word
                };
                walk(item, path, field_kind)?;
                path.truncate(length);
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn verdict(value: Value) -> String {
        match check_json(&value) {
            Ok(()) => "ok".to_owned(),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn the_first_bad_string_is_named_by_its_path() {
        let cases = [
            json!({"agent_url": "http://x\u{0}"}),
            json!({"agent_url": "http://x", "sessions": [{"error": "one\ntwo\tthree"}]}),
            json!({"sessions": [{"error": "ok"}, {"error": "bell\u{7}"}]}),
            json!({"sessions": [{"session_id": "s-1\n"}]}),
            json!({"comment": "line\nline"}),
            json!({"name": "a\tb"}),
            json!({"nested": {"error": {"deeper": "x\n"}}}),
            json!({"k\u{0}ey": 1}),
            json!("top\u{1b}"),
            json!({"stars": 5, "ok": true, "none": null, "list": ["a", "b\u{85}"]}),
        ];
        let out: Vec<String> = cases.into_iter().map(verdict).collect();
        assert_eq!(
            out,
            [
                "agent_url contains a control character (U+0000)",
                "ok",
                "sessions[1].error contains a control character (U+0007)",
                "sessions[0].session_id contains a control character (U+000A)",
                "ok",
                "name contains a control character (U+0009)",
                "nested.error.deeper contains a control character (U+000A)",
                "key contains a control character (U+0000)",
                "body contains a control character (U+001B)",
                "list[1] contains a control character (U+0085)",
            ]
        );
    }

    #[test]
    fn clean_texts_skip_the_walk_and_raw_c1_is_caught() {
        assert!(!may_hold_control(
            br#"{"agent_url":"http://10.0.0.1:7071"}"#
        ));
        assert!(may_hold_control("{\"a\":\"\u{85}\"}".as_bytes()));
        assert_eq!(
            check_json_text("{\"a\":\"\u{85}\"}".as_bytes())
                .unwrap_err()
                .path,
            "a"
        );
        assert_eq!(
            check_json_text(br#"{"a":"x\n"#),
            Ok(()),
            "unparsable: left to the parser"
        );
        assert_eq!(
            check_parameter("head_id", "h\r\n").unwrap_err().to_string(),
            "head_id contains a control character (U+000D)"
        );
    }
}
