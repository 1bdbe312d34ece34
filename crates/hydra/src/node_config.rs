//! `hydra nodes config show|set`: a node's config bundle (the keys the control plane overrides
//! in the node's local YAML), through the SDK.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hydra_api::{ConfigBundle, IceServer, NodeConfig};

use crate::client_args::ClientArgs;
use crate::output::{key_values, or_dash, print, print_json};

/// Subcommands of `hydra nodes config`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show a node's bundle and its version (0: none set, the node runs on its local YAML).
    Show(ShowArgs),
    /// Change a node's bundle: the keys given are set, `--unset` ones removed, the rest kept
    /// (or the whole bundle replaced with `--file`). Agents pick it up at their next poll.
    Set(SetArgs),
}

/// Options of `hydra nodes config show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The node's id.
    #[arg(value_name = "ID")]
    id: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// A bundle key that `--unset` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BundleKey {
    /// `sessions.max`.
    #[value(name = "sessions.max")]
    SessionsMax,
    /// `sessions.return_url`.
    #[value(name = "sessions.return_url")]
    ReturnUrl,
    /// `sessions.report_url`.
    #[value(name = "sessions.report_url")]
    ReportUrl,
    /// `sessions.rating_url`.
    #[value(name = "sessions.rating_url")]
    RatingUrl,
    /// `ice_servers`.
    #[value(name = "ice_servers")]
    IceServers,
}

/// Options of `hydra nodes config set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The node's id.
    #[arg(value_name = "ID")]
    id: String,
    /// Sessions the worker may run at most (a lower value stops new starts only).
    #[arg(long, value_name = "N")]
    sessions_max: Option<u32>,
    /// Where "return" links go (a path or an http(s) URL).
    #[arg(long, value_name = "URL")]
    return_url: Option<String>,
    /// Where "Report a problem" goes (`mailto:`, a path or an http(s) URL).
    #[arg(long, value_name = "URL")]
    report_url: Option<String>,
    /// Where ratings are forwarded (an http(s) URL).
    #[arg(long, value_name = "URL")]
    rating_url: Option<String>,
    /// ICE servers as a JSON list, e.g. `[{"urls":"stun:stun.example.org"}]`.
    #[arg(long, value_name = "JSON")]
    ice_servers: Option<String>,
    /// Remove a key from the bundle (the node's local value applies again); repeat for several.
    #[arg(long, value_name = "KEY")]
    unset: Vec<BundleKey>,
    /// Replace the whole bundle with this JSON file (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["sessions_max", "return_url", "report_url", "rating_url", "ice_servers", "unset"])]
    file: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Show(args) => show(args).await,
        Command::Set(args) => set(args).await,
    }
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let config = client
        .node_config(&args.id, None)
        .await
        .map_err(|error| {
            args.client.explain(
                error,
                format!("cannot show the config of node {:?}", args.id),
            )
        })?
        .context("the server answered 304 to a request without If-None-Match")?;
    output(&config, args.client.json)
}

async fn set(args: SetArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let bundle = match &args.file {
        Some(path) => read_bundle(path)?,
        None => {
            // Read, change, write: the keys not named on the command line are kept.
            let current = client
                .node_config(&args.id, None)
                .await
                .map_err(|error| {
                    args.client.explain(
                        error,
                        format!("cannot read the config of node {:?}", args.id),
                    )
                })?
                .context("the server answered 304 to a request without If-None-Match")?;
            edited(current.bundle, &args)?
        }
    };
    let config = client
        .set_node_config(&args.id, &bundle)
        .await
        .map_err(|error| {
            args.client.explain(
                error,
                format!("cannot set the config of node {:?}", args.id),
            )
        })?;
    if !args.client.json {
        print(&format!(
            "node {} config is now version {}\n",
            config.node_id, config.version
        ));
    }
    output(&config, args.client.json)
}

fn read_bundle(path: &PathBuf) -> anyhow::Result<ConfigBundle> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the bundle from stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --file {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("--file {}", path.display()))
}

/// `bundle` with the command line's keys set and `--unset` keys removed.
fn edited(mut bundle: ConfigBundle, args: &SetArgs) -> anyhow::Result<ConfigBundle> {
    for key in &args.unset {
        match key {
            BundleKey::SessionsMax => bundle.sessions.max = None,
            BundleKey::ReturnUrl => bundle.sessions.return_url = None,
            BundleKey::ReportUrl => bundle.sessions.report_url = None,
            BundleKey::RatingUrl => bundle.sessions.rating_url = None,
            BundleKey::IceServers => bundle.ice_servers = None,
        }
    }
    if let Some(max) = args.sessions_max {
        bundle.sessions.max = Some(max);
    }
    for (value, slot) in [
        (&args.return_url, &mut bundle.sessions.return_url),
        (&args.report_url, &mut bundle.sessions.report_url),
        (&args.rating_url, &mut bundle.sessions.rating_url),
    ] {
        if let Some(value) = value {
            *slot = Some(value.clone());
        }
    }
    if let Some(json) = &args.ice_servers {
        let servers: Vec<IceServer> = serde_json::from_str(json).context("--ice-servers")?;
        bundle.ice_servers = Some(servers);
    }
    Ok(bundle)
}

fn output(config: &NodeConfig, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(config)?;
    } else {
        print(&details(config));
    }
    Ok(ExitCode::SUCCESS)
}

/// The bundle's keys, one a line; `-` for a key not set (the node's local value applies).
/// Credentials are not printed (`--json` shows them).
fn details(config: &NodeConfig) -> String {
    let sessions = &config.bundle.sessions;
    let ice = match &config.bundle.ice_servers {
        None => "-".to_owned(),
        Some(servers) if servers.is_empty() => "none".to_owned(),
        Some(servers) => servers
            .iter()
            .map(|server| {
                let credential = if server.credential.is_some() {
                    " (credential set)"
                } else {
                    ""
                };
                format!("{}{credential}", server.urls.as_slice().join(" "))
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    key_values(&[
        ("node", config.node_id.clone()),
        ("version", config.version.to_string()),
        ("updated_at", or_dash(config.updated_at.as_deref())),
        ("sessions.max", or_dash(sessions.max)),
        (
            "sessions.return_url",
            or_dash(sessions.return_url.as_deref()),
        ),
        (
            "sessions.report_url",
            or_dash(sessions.report_url.as_deref()),
        ),
        (
            "sessions.rating_url",
            or_dash(sessions.rating_url.as_deref()),
        ),
        ("ice_servers", ice),
    ])
}

#[cfg(test)]
mod tests {
    use hydra_api::{BundleSessions, IceUrls};

    use super::*;

    #[test]
    fn shows_every_key_and_hides_credentials() {
        let bundle = ConfigBundle {
            sessions: BundleSessions {
                max: Some(4),
                return_url: Some("/done".into()),
                ..BundleSessions::default()
            },
            ice_servers: Some(vec![IceServer {
                urls: IceUrls::Many(vec![
                    "turn:t.example.org".into(),
                    "turns:t.example.org".into(),
                ]),
                username: Some("u".into()),
                credential: Some("s3cret".into()),
            }]),
        };
        let config = NodeConfig::new("w-1".into(), 2, Some(0), bundle);
        expect_test::expect![[r#"
            node:                 w-1
            version:              2
            updated_at:           1970-01-01T00:00:00.000Z
            sessions.max:         4
            sessions.return_url:  /done
            sessions.report_url:  -
            sessions.rating_url:  -
            ice_servers:          turn:t.example.org turns:t.example.org (credential set)
        "#]]
        .assert_eq(&details(&config));
    }
}
