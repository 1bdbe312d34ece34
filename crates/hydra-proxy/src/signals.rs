//! Stopping the daemons: the first SIGINT or SIGTERM cancels their shutdown token (a graceful
//! stop, bounded by their shutdown deadline); a second one exits the process at once.

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal: 128 + SIGTERM, as a shell reports a process it killed.
const FORCED_EXIT_STATUS: i32 = 128 + 15;

/// Cancels `shutdown` on SIGINT or SIGTERM, logging `stopping` (the daemon's own words for what
/// it does while it stops) once; on a second SIGINT or SIGTERM, exits the process at once
/// without waiting for what is still open.
pub async fn stop_on_signal(shutdown: CancellationToken, stopping: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!(
            "cannot listen for SIGTERM or SIGINT; only Ctrl-C stops this process gracefully"
        );
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("{stopping}");
    shutdown.cancel();
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::warn!("second stop signal: exiting now without waiting for open work");
    std::process::exit(FORCED_EXIT_STATUS);
}
