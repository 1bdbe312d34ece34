//! The field's config files as they are: their `mode:`, their section layout and their names,
//! moved onto Hydra's keys before layering (`crate::layering`), and the one table of field names
//! Hydra calls otherwise, so an unknown key's error can name the key, the file, the line and
//! Hydra's name for it.

use std::path::Path;

use serde_json::{Map, Value};

/// Which daemon a config file is for: its `mode:` word and its layout differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `hydra server`: flat keys (`listen`, `heartbeat_timeout`); the field's `mode: controller`.
    Server,
    /// `hydra agent`: sections (`server.listen`, `sessions.max`); the field's `mode: worker`.
    Agent,
}

impl Daemon {
    /// The field's `mode:` word for this daemon.
    fn mode(self) -> &'static str {
        match self {
            Daemon::Server => "controller",
            Daemon::Agent => "worker",
        }
    }
}

/// Field keys Hydra reads under another name: moved before loading (field key, Hydra key).
const MOVES: &[(Daemon, &str, &str)] = &[
    (Daemon::Server, "server.listen", "listen"),
    (Daemon::Server, "server.admin_token", "admin_token"),
    (Daemon::Server, "server.domain", "domain"),
    (Daemon::Server, "server.tls_cert", "tls_cert"),
    (Daemon::Server, "server.tls_key", "tls_key"),
    (Daemon::Server, "server.public_url", "public_url"),
    (
        Daemon::Server,
        "workers.heartbeat_timeout",
        "heartbeat_timeout",
    ),
    (Daemon::Agent, "server.admin_token", "api_token"),
    // The field's `nps:` is `report:` key for key.
    (Daemon::Agent, "nps.url", "report.url"),
    (Daemon::Agent, "nps.token", "report.token"),
    (Daemon::Agent, "nps.project", "report.project"),
    (Daemon::Agent, "nps.category", "report.category"),
    (Daemon::Agent, "nps.max_entries", "report.max_entries"),
    (Daemon::Agent, "nps.retry_base", "report.retry_base"),
    (Daemon::Agent, "nps.retry_max", "report.retry_max"),
];

/// Field keys (and likely slips) that Hydra does not read, with what Hydra calls the setting:
/// the hint an unknown key's error gives.
const HYDRA_NAMES: &[(Daemon, &str, &str)] = &[
    (Daemon::Server, "sessions.max", "max_sessions_per_worker"),
    (Daemon::Server, "server.port", "listen"),
    (Daemon::Server, "controller.url", "public_url"),
    (Daemon::Server, "sessions.retention", "session_retention"),
    (
        Daemon::Server,
        "workers.heartbeat_interval",
        "heartbeat.interval in each agent's config",
    ),
    (Daemon::Agent, "heartbeat_interval", "heartbeat.interval"),
    (
        Daemon::Agent,
        "controller.heartbeat_interval",
        "heartbeat.interval",
    ),
    (
        Daemon::Agent,
        "workers.heartbeat_timeout",
        "heartbeat_timeout in the server's config",
    ),
    (Daemon::Agent, "sessions.data_dir", "sessions.root"),
    (Daemon::Agent, "sessions.binary", "sessions.command"),
    (
        Daemon::Agent,
        "sessions.port_range_end",
        "sessions.max (ports run from sessions.port_range_start to start + max)",
    ),
    (Daemon::Agent, "server.port", "server.listen"),
    (Daemon::Agent, "report_url", "report.url"),
];

/// Sections that exist only in the field's layout for `daemon`: what is left in them after the
/// moves is unknown.
fn field_only_sections(daemon: Daemon) -> &'static [&'static str] {
    match daemon {
        Daemon::Server => &["server", "workers", "sessions", "controller"],
        Daemon::Agent => &["nps"],
    }
}

/// A config file's text, for naming lines.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The file.
    pub path: &'a Path,
    /// Its text.
    pub text: &'a str,
}

impl Source<'_> {
    /// "unknown key K in config file F line N (Hydra calls it H)".
    pub fn unknown_key(&self, daemon: Daemon, key: &str) -> String {
        let segments: Vec<&str> = key.split('.').collect();
        let line = line_of(self.text, &segments)
            .map(|line| format!(" line {line}"))
            .unwrap_or_default();
        let hint = HYDRA_NAMES
            .iter()
            .find(|(for_daemon, field, _)| *for_daemon == daemon && *field == key)
            .map(|(_, _, hydra)| format!(" (Hydra calls it {hydra})"))
            .unwrap_or_default();
        format!(
            "unknown key {key:?} in config file {}{line}{hint}",
            self.path.display()
        )
    }
}

/// Moves the field's keys of `value` (a config file, parsed) onto Hydra's and checks `mode:`;
/// a key left in a field-only section is an unknown key, named with its line.
pub fn translate(value: &mut Value, daemon: Daemon, source: Source<'_>) -> Result<(), String> {
    let Value::Object(root) = value else {
        return Ok(());
    };
    if let Some(mode) = root.remove("mode") {
        let word = mode.as_str().unwrap_or_default();
        if word != daemon.mode() {
            let (wanted, other) = match daemon {
                Daemon::Server => ("controller", "hydra agent --config FILE"),
                Daemon::Agent => ("worker", "hydra server --config FILE"),
            };
            return Err(format!(
                "config file {}: mode is {mode} but this daemon runs mode {wanted}; a {word} file \
                 is for `{other}`",
                source.path.display()
            ));
        }
        if daemon == Daemon::Agent {
            let roles = root
                .get("node")
                .and_then(|node| node.get("roles"))
                .and_then(Value::as_array);
            if roles.is_some_and(|roles| !roles.iter().any(|role| role == "worker")) {
                return Err(format!(
                    "config file {}: mode worker but node.roles does not name worker",
                    source.path.display()
                ));
            }
        }
    }
    for (for_daemon, field, hydra) in MOVES {
        if *for_daemon != daemon {
            continue;
        }
        let Some(moved) = take(root, field) else {
            continue;
        };
        if get(root, hydra).is_some() {
            return Err(format!(
                "config file {}: both {field} (the field's name) and {hydra} are set; keep one",
                source.path.display()
            ));
        }
        put(root, hydra, moved);
    }
    for section in field_only_sections(daemon) {
        match root.get(*section) {
            None => {}
            Some(Value::Object(left)) if left.is_empty() => {
                root.remove(*section);
            }
            Some(Value::Object(left)) => {
                let key = format!("{section}.{}", left.keys().next().expect("not empty"));
                return Err(source.unknown_key(daemon, &key));
            }
            Some(_) => return Err(source.unknown_key(daemon, section)),
        }
    }
    Ok(())
}

/// Removes the value at dotted `path`.
fn take(root: &mut Map<String, Value>, path: &str) -> Option<Value> {
    match path.split_once('.') {
        None => root.remove(path),
        Some((section, rest)) => match root.get_mut(section) {
            Some(Value::Object(inner)) => take(inner, rest),
            _ => None,
        },
    }
}

/// The value at dotted `path`.
fn get<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    match path.split_once('.') {
        None => root.get(path),
        Some((section, rest)) => match root.get(section) {
            Some(Value::Object(inner)) => get(inner, rest),
            _ => None,
        },
    }
}

/// Sets dotted `path`, making sections as needed.
fn put(root: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            root.insert(path.to_owned(), value);
        }
        Some((section, rest)) => {
            let inner = root
                .entry(section.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !inner.is_object() {
                *inner = Value::Object(Map::new());
            }
            if let Value::Object(inner) = inner {
                put(inner, rest, value);
            }
        }
    }
}

/// The 1-based line where the key at `segments` is written: each segment found as a key
/// (`name:` at the start of a line, after `- `, `{` or `,`) at or after the previous one's line.
pub fn line_of(text: &str, segments: &[&str]) -> Option<usize> {
    let mut wanted = 0;
    // The column of the last segment found in block style: a child is indented deeper.
    let mut parent_column: Option<usize> = None;
    for (index, line) in text.lines().enumerate() {
        let code = line.split(" #").next().unwrap_or_default();
        let mut from = 0;
        while let Some((column, end, block)) = key_at(&code[from..], segments[wanted]) {
            let column = from + column;
            from += end;
            let nested = match (block, parent_column) {
                (false, _) => true,
                (true, None) => column == 0,
                (true, Some(parent)) => column > parent,
            };
            if !nested {
                continue;
            }
            if block {
                parent_column = Some(column);
            }
            wanted += 1;
            if wanted == segments.len() {
                return Some(index + 1);
            }
        }
    }
    None
}

/// Where `key:` is written as a key in `code`: its column, the offset just past it, and whether
/// it starts its line (block style) rather than following `{` or `,` (flow style).
fn key_at(code: &str, key: &str) -> Option<(usize, usize, bool)> {
    let mut search = 0;
    while let Some(found) = code[search..].find(key) {
        let start = search + found;
        let end = start + key.len();
        let before = code[..start].trim_end_matches(['"', '\'']).trim_end();
        let after = code[end..].trim_start_matches(['"', '\'']);
        let block = before.is_empty() || before.trim_start() == "-";
        let flow = before.ends_with('{') || before.ends_with(',');
        if (block || flow) && after.starts_with(':') {
            let column = code.len() - code.trim_start().len();
            return Some((if block { column } else { start }, end, block));
        }
        search = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(daemon: Daemon, yaml: &str) -> String {
        let mut value: Value = serde_saphyr::from_str(yaml).unwrap();
        let source = Source {
            path: Path::new("field.yaml"),
            text: yaml,
        };
        match translate(&mut value, daemon, source) {
            Ok(()) => value.to_string(),
            Err(error) => format!("error: {error}"),
        }
    }

    #[test]
    fn the_field_s_keys_move_onto_hydra_s() {
        let cases = [
            (
                Daemon::Server,
                "mode: controller\nserver:\n  listen: \":47990\"\n  admin_token: t\n  domain: relay.example\nworkers:\n  heartbeat_timeout: 60s\n",
            ),
            (
                Daemon::Agent,
                "mode: worker\nserver: {listen: \":8443\", admin_token: t}\nnps:\n  url: https://nps.example/r\n  token: nps-token\n",
            ),
            (Daemon::Agent, "mode: controller\n"),
            (Daemon::Server, "mode: worker\n"),
            (Daemon::Agent, "mode: worker\nnode: {roles: [body]}\n"),
            (
                Daemon::Server,
                "server:\n  listen: \":1\"\nlisten: 127.0.0.1:2\n",
            ),
            (
                Daemon::Server,
                "mode: controller\nserver:\n  listen: \":1\"\n  port: 47990\n",
            ),
            (Daemon::Agent, "nps:\n  url: x\n  colour: p\n"),
            (
                Daemon::Server,
                "workers:\n  heartbeat_timeout: 60\n  heartbeat_interval: 30\n",
            ),
        ];
        let outcomes: Vec<String> = cases
            .iter()
            .map(|(daemon, yaml)| translated(*daemon, yaml))
            .collect();
        expect_test::expect![[r#"
            [
                "{\"admin_token\":\"t\",\"domain\":\"relay.example\",\"heartbeat_timeout\":\"60s\",\"listen\":\":47990\"}",
                "{\"api_token\":\"t\",\"report\":{\"token\":\"nps-token\",\"url\":\"https://nps.example/r\"},\"server\":{\"listen\":\":8443\"}}",
                "error: config file field.yaml: mode is \"controller\" but this daemon runs mode worker; a controller file is for `hydra server --config FILE`",
                "error: config file field.yaml: mode is \"worker\" but this daemon runs mode controller; a worker file is for `hydra agent --config FILE`",
                "error: config file field.yaml: mode worker but node.roles does not name worker",
                "error: config file field.yaml: both server.listen (the field's name) and listen are set; keep one",
                "error: unknown key \"server.port\" in config file field.yaml line 4 (Hydra calls it listen)",
                "error: unknown key \"nps.colour\" in config file field.yaml line 3",
                "error: unknown key \"workers.heartbeat_interval\" in config file field.yaml line 3 (Hydra calls it heartbeat.interval in each agent's config)",
            ]
        "#]]
        .assert_debug_eq(&outcomes);
    }

    #[test]
    fn keys_are_found_on_their_line_in_block_and_flow_style() {
        let text = "# sessions: comment\nnode: {id: a, roles: [worker]}\nsessions:\n  return_url: x\n  max: 3\n  - max: 4\nmax: 1\n";
        let found: Vec<Option<usize>> = [
            &["sessions", "max"][..],
            &["node", "roles"],
            &["max"],
            &["sessions", "nope"],
        ]
        .iter()
        .map(|segments| line_of(text, segments))
        .collect();
        assert_eq!(found, [Some(5), Some(2), Some(7), None]);
    }
}
