//! Layered configuration, one way for every daemon: built-in defaults, then the YAML file, then
//! `HYDRA_*` environment variables, then flags, each winning over the one before. figment
//! records which source set each value, so an error names the key and the file or the exact
//! variable at fault. The server (`hydra server`, flat `HYDRA_<KEY>`) and the agent
//! (`HYDRA_<SECTION>__<KEY>`) both layer through [`layered`].

use std::path::{Path, PathBuf};

use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config_words::{Daemon, Source};

/// Largest config file accepted.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// How `HYDRA_*` variables map to keys.
#[derive(Debug, Clone, Copy)]
pub enum EnvKeys<'a> {
    /// `HYDRA_<KEY>` for exactly these top-level keys (the server).
    Flat(&'a [&'a str]),
    /// `HYDRA_<SECTION>__<KEY>` for these top-level sections (the agent).
    Sectioned(&'a [&'a str]),
}

impl EnvKeys<'_> {
    /// The variable that sets the key at `path`.
    fn variable(&self, path: &[String]) -> String {
        let separator = match self {
            EnvKeys::Flat(_) => "_",
            EnvKeys::Sectioned(_) => "__",
        };
        format!("HYDRA_{}", path.join(separator).to_uppercase())
    }
}

/// A YAML config file as a figment provider, named after its path so errors can say where a
/// value came from.
struct YamlFile {
    path: PathBuf,
    value: serde_json::Value,
}

impl Provider for YamlFile {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("config file {}", self.path.display()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        figment::providers::Serialized::defaults(&self.value).data()
    }
}

/// Merges `defaults`, the YAML file at `file` (if any; the field's words for `daemon` moved
/// onto Hydra's, `crate::config_words`), the `HYDRA_*` variables `env` selects and `flags` (a
/// value whose fields are only the ones given), in that order of precedence, into a `T`. The
/// error is one line per problem, naming the key and its source (an unknown key: its file, line
/// and Hydra's name for it).
pub fn layered<T, F>(
    defaults: &T,
    file: Option<&Path>,
    daemon: Daemon,
    env: EnvKeys<'static>,
    flags: &F,
) -> Result<T, String>
where
    T: Serialize + DeserializeOwned,
    F: Serialize,
{
    use figment::providers::{Env, Serialized};
    // Every layer in the default profile: figment's global profile would beat the environment.
    let mut figment = Figment::from(Serialized::defaults(defaults));
    let mut yaml = None;
    if let Some(path) = file {
        let (text, mut value) = read_yaml_text(path)?;
        let source = Source { path, text: &text };
        crate::config_words::translate(&mut value, daemon, source)?;
        figment = figment.merge(YamlFile {
            path: path.to_owned(),
            value,
        });
        yaml = Some((path.to_owned(), text));
    }
    figment = match env {
        EnvKeys::Flat(keys) => figment.merge(Env::prefixed("HYDRA_").only(keys)),
        EnvKeys::Sectioned(sections) => {
            figment.merge(Env::prefixed("HYDRA_").split("__").filter(|key| {
                let normalised = key.as_str().replace("__", ".");
                let section = normalised.split('.').next().unwrap_or_default();
                sections
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(section))
            }))
        }
    };
    figment
        .merge(Serialized::defaults(flags))
        .extract()
        .map_err(|error| {
            let source = yaml.as_ref().map(|(path, text)| Source { path, text });
            describe(error, env, daemon, source)
        })
}

/// The YAML file at `path` as a mapping (an empty file is an empty mapping); the error names
/// the file.
pub fn read_yaml(path: &Path) -> Result<serde_json::Value, String> {
    read_yaml_text(path).map(|(_, value)| value)
}

/// The YAML file at `path`: its text and its value as [`read_yaml`] gives it.
fn read_yaml_text(path: &Path) -> Result<(String, serde_json::Value), String> {
    let metadata = std::fs::metadata(path)
        .map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
    if metadata.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "config file {} is larger than 1 MiB",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
    let value: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|error| format!("config file {}: {error}", path.display()))?;
    match value {
        serde_json::Value::Object(_) => Ok((text, value)),
        serde_json::Value::Null => Ok((text, serde_json::Value::Object(Default::default()))),
        _ => Err(format!(
            "config file {}: expected a mapping of settings at the top level",
            path.display()
        )),
    }
}

/// One line per figment error, naming the key and the file or the variable its value came from;
/// a key unknown in the file is named with its line and Hydra's name for it.
fn describe(
    error: figment::Error,
    env: EnvKeys<'_>,
    daemon: Daemon,
    file: Option<Source<'_>>,
) -> String {
    error
        .into_iter()
        .map(|error| {
            let from_file = error
                .metadata
                .as_ref()
                .is_some_and(|metadata| metadata.name.starts_with("config file"));
            if let (figment::error::Kind::UnknownField(field, _), Some(source), true) =
                (&error.kind, file, from_file)
            {
                // figment's path ends with the unknown field itself.
                let mut segments: Vec<&str> = error.path.iter().map(String::as_str).collect();
                if segments.last() != Some(&field.as_str()) {
                    segments.push(field);
                }
                let key = segments.join(".");
                return source.unknown_key(daemon, &key);
            }
            let key = error.path.join(".");
            let origin = match error.metadata.as_ref() {
                Some(metadata) if metadata.name.contains("environment") => {
                    format!(" (from {})", env.variable(&error.path))
                }
                Some(metadata) => format!(" (from {})", metadata.name),
                None => String::new(),
            };
            if key.is_empty() {
                format!("configuration: {}{origin}", error.kind)
            } else {
                format!("configuration key {key:?}: {}{origin}", error.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
// figment's `Jail` closures must return its (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Flat {
        listen: String,
        heartbeat_timeout: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sectioned {
        node: Node,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Node {
        id: String,
        venue: String,
        district: String,
    }

    const FLAT: EnvKeys<'static> = EnvKeys::Flat(&["listen", "heartbeat_timeout"]);
    const SECTIONED: EnvKeys<'static> = EnvKeys::Sectioned(&["node"]);

    #[test]
    fn flags_beat_environment_beat_file_beat_defaults_in_sections_too() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.yaml",
                "node: {id: a-file, venue: v-file, district: d-file}\n",
            )?;
            jail.set_env("HYDRA_NODE__ID", "a-env");
            jail.set_env("HYDRA_NODE__VENUE", "v-env");
            let defaults = Sectioned {
                node: Node {
                    id: "a-default".into(),
                    venue: "v-default".into(),
                    district: "d-default".into(),
                },
            };
            let flags = serde_json::json!({"node": {"id": "a-flag"}});
            let config: Sectioned = layered(
                &defaults,
                Some(Path::new("agent.yaml")),
                Daemon::Agent,
                SECTIONED,
                &flags,
            )
            .unwrap();
            assert_eq!(
                config.node,
                Node {
                    id: "a-flag".into(),
                    venue: "v-env".into(),
                    district: "d-file".into(),
                }
            );
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key_and_the_exact_variable_or_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "hydra.yaml",
                "listen: 127.0.0.1:1\nheartbeat_timeout: [1]\n",
            )?;
            let defaults = Flat {
                listen: "x".into(),
                heartbeat_timeout: 60,
            };
            let error = layered(
                &defaults,
                Some(Path::new("hydra.yaml")),
                Daemon::Server,
                FLAT,
                &serde_json::json!({}),
            )
            .unwrap_err();
            assert!(
                error.contains("\"heartbeat_timeout\"") && error.contains("config file hydra.yaml"),
                "{error}"
            );
            jail.create_file("hydra.yaml", "listen: 127.0.0.1:1\n")?;
            jail.set_env("HYDRA_HEARTBEAT_TIMEOUT", "soon");
            let error = layered(
                &defaults,
                Some(Path::new("hydra.yaml")),
                Daemon::Server,
                FLAT,
                &serde_json::json!({}),
            )
            .unwrap_err();
            assert!(error.contains("(from HYDRA_HEARTBEAT_TIMEOUT)"), "{error}");
            Ok(())
        });
    }
}
