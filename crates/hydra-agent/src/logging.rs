//! The one place that sets up the tracing subscriber, for `hydra` (every command) and
//! `hydra-agent`: `RUST_LOG` filters, default `info`, written to standard error so that standard
//! output stays for command results, and copied into the agent's monitor feed
//! ([`crate::monitor::MonitorLayer`]; a no-op while no one reads it).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber; call once, first thing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .with(crate::monitor::MonitorLayer)
        .init();
}
