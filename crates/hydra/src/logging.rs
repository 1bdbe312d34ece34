//! The one place that sets up the tracing subscriber: `RUST_LOG` filters, default `info`,
//! written to standard error so that standard output stays for command results.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once, first thing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
