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
