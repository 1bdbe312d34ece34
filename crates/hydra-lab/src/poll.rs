//! Waiting for a condition with a deadline, instead of sleeping.

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it answers `Some`, for at most `limit`; the error names
/// `what` and the last reason `check` gave.
pub async fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(error) => anyhow::bail!("{what}: not within {limit:?} ({error:#})"),
                None => anyhow::bail!("{what}: not within {limit:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
