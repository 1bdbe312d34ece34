//! The server's layered configuration: built-in defaults, then a YAML file (`--config`), then
//! `HYDRA_<KEY>` environment variables, then flags, through the one layering of
//! `hydra_agent::layering` (errors name the file or variable at fault).

use std::path::Path;

use hydra_agent::layering::EnvKeys;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Merges `defaults`, the YAML file at `file` (if any), the `HYDRA_<KEY>` variables for `env_keys`
/// and `flags` (only the fields set), in that order of precedence, into a `T`; the layering is
/// the agent's (`hydra_agent::layering`), with flat variable names.
pub fn layered<T, F>(
    defaults: &T,
    file: Option<&Path>,
    env_keys: &'static [&'static str],
    flags: &F,
) -> anyhow::Result<T>
where
    T: Serialize + DeserializeOwned,
    F: Serialize,
{
    hydra_agent::layering::layered(
        defaults,
        file,
        hydra_agent::config_words::Daemon::Server,
        EnvKeys::Flat(env_keys),
        flags,
    )
    .map_err(anyhow::Error::msg)
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
