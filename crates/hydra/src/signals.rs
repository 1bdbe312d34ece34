//! Graceful stop of the daemons: SIGINT or SIGTERM cancels their shutdown token.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on SIGINT or SIGTERM, logging `stopping` (the daemon's own words for what
/// it does while it stops) once.
pub async fn stop_on_signal(shutdown: CancellationToken, stopping: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        tracing::warn!("cannot listen for SIGTERM; only Ctrl-C stops this process gracefully");
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("{stopping}");
    shutdown.cancel();
}
