//! Layered configuration shared by the daemons: built-in defaults, then a YAML file
//! (`--config`, parsed by serde-saphyr), then `HYDRA_*` environment variables, then flags.
//! figment records which source set each value, so errors name the file or variable at fault.

use std::path::Path;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest config file accepted.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Merges `defaults`, the YAML file at `file` (if any), the `HYDRA_<KEY>` variables for `env_keys`
/// and `flags` (only the fields set), in that order of precedence, into a `T`.
pub fn layered<T, F>(
    defaults: &T,
    file: Option<&Path>,
    env_keys: &[&str],
    flags: &F,
) -> anyhow::Result<T>
where
    T: Serialize + DeserializeOwned,
    F: Serialize,
{
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        let yaml = read_yaml(path)?;
        figment = figment.merge(Serialized::globals(yaml).profile(figment::Profile::Default));
    }
    figment = figment
        .merge(Env::prefixed("HYDRA_").only(env_keys))
        .merge(Serialized::defaults(flags));
    figment
        .extract()
        .map_err(|error| anyhow::anyhow!("{}", describe(error)))
}

fn read_yaml(path: &Path) -> anyhow::Result<serde_json::Value> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    anyhow::ensure!(
        metadata.len() <= MAX_CONFIG_BYTES,
        "config file {} is larger than 1 MiB",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let value: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|error| anyhow::anyhow!("config file {}: {error}", path.display()))?;
    match value {
        serde_json::Value::Object(_) => Ok(value),
        serde_json::Value::Null => Ok(serde_json::Value::Object(Default::default())),
        _ => anyhow::bail!(
            "config file {}: expected a mapping of settings at the top level",
            path.display()
        ),
    }
}

/// One line per figment error, naming the key and where its value came from.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|error| {
            let source = error
                .metadata
                .as_ref()
                .map(|metadata| metadata.name.to_string())
                .unwrap_or_default();
            let key = error.path.join(".");
            let origin = if source.is_empty() {
                String::new()
            } else {
                format!(" (from {source})")
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

    use super::layered;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        listen: String,
        heartbeat_timeout: u64,
        data_dir: String,
    }

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        listen: Option<String>,
    }

    fn defaults() -> Example {
        Example {
            listen: "127.0.0.1:7070".into(),
            heartbeat_timeout: 60,
            data_dir: "./hydra-data".into(),
        }
    }

    const KEYS: &[&str] = &["listen", "heartbeat_timeout", "data_dir"];

    /// figment's `Jail` gives each closure its own environment and working directory.
    fn jail(test: impl FnOnce(&mut figment::Jail) -> Result<(), figment::Error>) {
        figment::Jail::expect_with(test);
    }

    #[test]
    fn flags_beat_environment_beat_file_beat_defaults() {
        jail(|jail| {
            let path = std::path::Path::new("hydra.yaml");
            jail.create_file(
                path,
                "listen: 0.0.0.0:9000\nheartbeat_timeout: 30\ndata_dir: /var/lib/hydra\n",
            )?;
            assert_eq!(
                layered(&defaults(), None, KEYS, &Flags::default()).unwrap(),
                defaults()
            );
            let from_file = layered(&defaults(), Some(path), KEYS, &Flags::default()).unwrap();
            assert_eq!(
                from_file,
                Example {
                    listen: "0.0.0.0:9000".into(),
                    heartbeat_timeout: 30,
                    data_dir: "/var/lib/hydra".into()
                }
            );
            jail.set_env("HYDRA_HEARTBEAT_TIMEOUT", "5");
            jail.set_env("HYDRA_TOKEN", "a client variable the server must not read");
            let with_env = layered(&defaults(), Some(path), KEYS, &Flags::default()).unwrap();
            assert_eq!(
                (with_env.listen.as_str(), with_env.heartbeat_timeout),
                ("0.0.0.0:9000", 5)
            );
            let flags = Flags {
                listen: Some("127.0.0.1:1".into()),
            };
            let with_flag = layered(&defaults(), Some(path), KEYS, &flags).unwrap();
            assert_eq!(
                (with_flag.listen.as_str(), with_flag.heartbeat_timeout),
                ("127.0.0.1:1", 5)
            );
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key_and_the_file_or_variable() {
        jail(|jail| {
            jail.set_env("HYDRA_HEARTBEAT_TIMEOUT", "soon");
            let error = layered(&defaults(), None, KEYS, &Flags::default())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("heartbeat_timeout") && error.contains("HYDRA_"),
                "{error}"
            );
            Ok(())
        });
        jail(|jail| {
            jail.create_file("unknown.yaml", "listen: 0.0.0.0:9000\ncolour: red\n")?;
            let error = layered(
                &defaults(),
                Some("unknown.yaml".as_ref()),
                KEYS,
                &Flags::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(error.contains("colour"), "{error}");
            jail.create_file("broken.yaml", "listen: [unclosed\n")?;
            let error = layered(
                &defaults(),
                Some("broken.yaml".as_ref()),
                KEYS,
                &Flags::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(error.contains("broken.yaml"), "{error}");
            jail.create_file("list.yaml", "- a\n- b\n")?;
            let error = layered(
                &defaults(),
                Some("list.yaml".as_ref()),
                KEYS,
                &Flags::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(error.contains("mapping"), "{error}");
            let error = layered(
                &defaults(),
                Some("/nonexistent/hydra.yaml".as_ref()),
                KEYS,
                &Flags::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(error.contains("/nonexistent/hydra.yaml"), "{error}");
            Ok(())
        });
    }
}
