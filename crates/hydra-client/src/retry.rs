//! Retries: exponential backoff from 1 s doubling to 60 s with full jitter, bounded by a number of
//! attempts and optionally a deadline.
//!
//! A small loop over `hydra_core::backoff::full_jitter_delay_ms` rather than backon: backon's
//! `with_jitter` adds a random `[0, delay)` on top of the delay (so the wait lies in
//! `[delay, 2 * delay)` and can exceed the maximum), which is not full jitter (`[0, delay]`), and the
//! caller here has to decide per failure whether a retry is safe (a write that may have reached
//! the server is not retried), which a plain loop says more directly.

use std::future::Future;
use std::time::Duration;

use hydra_core::backoff::full_jitter_delay_ms;
use tokio::time::Instant;

use crate::ClientError;

/// How often and how long a call is tried. The default: 4 attempts, waits drawn from
/// `[0, 1 s]`, `[0, 2 s]`, `[0, 4 s]`, no deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 0 counts as 1.
    pub max_attempts: u32,
    /// No retry starts when its wait would end later than this after the first attempt; the
    /// timeout of each attempt is also cut to what remains of it.
    pub deadline: Option<Duration>,
    /// Ceiling of the first wait; it doubles on every retry.
    pub base_delay: Duration,
    /// Largest ceiling of a wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            deadline: None,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn once() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The default schedule with `max_attempts` attempts.
    pub fn attempts(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// As many attempts as fit in `deadline` (at most 1,000), on the default schedule.
    pub fn until(deadline: Duration) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1_000,
            deadline: Some(deadline),
            ..RetryPolicy::default()
        }
    }

    /// The same policy with another deadline.
    pub fn with_deadline(self, deadline: Duration) -> RetryPolicy {
        RetryPolicy {
            deadline: Some(deadline),
            ..self
        }
    }

    /// The same policy with other delay bounds (tests use milliseconds).
    pub fn with_delays(self, base_delay: Duration, max_delay: Duration) -> RetryPolicy {
        RetryPolicy {
            base_delay,
            max_delay,
            ..self
        }
    }

    /// The wait before retry number `retry` (0 for the first retry), for a random `unit` in
    /// `[0, 1)`: uniform in `[0, min(max_delay, base_delay * 2^retry)]`.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let millis = full_jitter_delay_ms(
            retry,
            duration_millis(self.base_delay),
            duration_millis(self.max_delay),
            unit,
        );
        Duration::from_millis(millis)
    }
}

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One attempt's failure, with whether it is safe and useful to try again.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: ClientError,
    pub(crate) retryable: bool,
}

impl Failure {
    pub(crate) fn retryable(error: ClientError) -> Failure {
        Failure {
            error,
            retryable: true,
        }
    }

    pub(crate) fn fatal(error: ClientError) -> Failure {
        Failure {
            error,
            retryable: false,
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the policy runs out; passes each
/// attempt the time left before the deadline. `unit` draws the jitter in `[0, 1)`.
pub(crate) async fn with_retries<T, Attempt, Fut>(
    policy: &RetryPolicy,
    mut unit: impl FnMut() -> f64,
    mut attempt: Attempt,
) -> Result<T, ClientError>
where
    Attempt: FnMut(Option<Duration>) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let started = Instant::now();
    let max_attempts = policy.max_attempts.max(1);
    let mut number: u32 = 0;
    loop {
        let remaining = policy
            .deadline
            .map(|deadline| deadline.saturating_sub(started.elapsed()));
        let failure = match attempt(remaining).await {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        number += 1;
        if !failure.retryable || number >= max_attempts {
            return Err(failure.error);
        }
        let wait = policy.delay(number - 1, unit());
        if let Some(deadline) = policy.deadline
            && started.elapsed() + wait >= deadline
        {
            return Err(failure.error);
        }
        tracing::debug!(
            attempt = number,
            wait_ms = duration_millis(wait),
            error = %failure.error,
            "[client] request failed, retrying"
        );
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn unreachable() -> ClientError {
        ClientError::Unreachable {
            replicas: vec!["http://127.0.0.1:1".into()],
            last_error: "connection refused".into(),
        }
    }

    #[test]
    fn waits_double_from_one_second_to_a_minute_with_full_jitter() {
        let policy = RetryPolicy::default();
        let ceilings: Vec<u64> = (0..8)
            .map(|retry| policy.delay(retry, 1.0).as_secs())
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(policy.delay(3, 0.0), Duration::ZERO);
        assert_eq!(policy.delay(3, 0.25), Duration::from_secs(2));
        assert_eq!(policy.delay(40, 0.5), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_max_attempts_having_waited_the_drawn_delays() {
        let calls = Cell::new(0u32);
        let started = Instant::now();
        let outcome: Result<(), _> = with_retries(
            &RetryPolicy::attempts(4),
            || 1.0,
            |_| {
                calls.set(calls.get() + 1);
                async { Err(Failure::retryable(unreachable())) }
            },
        )
        .await;
        assert_eq!(outcome, Err(unreachable()));
        assert_eq!(calls.get(), 4);
        assert_eq!(started.elapsed(), Duration::from_secs(1 + 2 + 4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_stops_before_a_wait_that_would_pass_it() {
        let calls = Cell::new(0u32);
        let remaining_seen = std::cell::RefCell::new(Vec::new());
        let started = Instant::now();
        let outcome: Result<(), _> = with_retries(
            &RetryPolicy::until(Duration::from_secs(10)),
            || 1.0,
            |remaining| {
                calls.set(calls.get() + 1);
                remaining_seen.borrow_mut().push(remaining);
                async { Err(Failure::retryable(unreachable())) }
            },
        )
        .await;
        assert!(outcome.is_err());
        // waits 1 + 2 + 4 = 7 s; the next (8 s) would end at 15 s, past the 10 s deadline
        assert_eq!(calls.get(), 4);
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        assert_eq!(
            *remaining_seen.borrow(),
            [10, 9, 7, 3].map(|secs| Some(Duration::from_secs(secs)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_failure_is_not_retried() {
        let calls = Cell::new(0u32);
        let started = Instant::now();
        let outcome: Result<(), _> = with_retries(
            &RetryPolicy::attempts(10),
            || 1.0,
            |_| {
                calls.set(calls.get() + 1);
                async { Err(Failure::fatal(ClientError::NotFound("no node `x`".into()))) }
            },
        )
        .await;
        assert_eq!(outcome, Err(ClientError::NotFound("no node `x`".into())));
        assert_eq!(calls.get(), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn succeeds_on_a_later_attempt() {
        let calls = Cell::new(0u32);
        let outcome = with_retries(
            &RetryPolicy::attempts(5),
            || 0.5,
            |_| {
                calls.set(calls.get() + 1);
                let number = calls.get();
                async move {
                    if number < 3 {
                        Err(Failure::retryable(unreachable()))
                    } else {
                        Ok(number)
                    }
                }
            },
        )
        .await;
        assert_eq!(outcome, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_attempts_still_tries_once() {
        let calls = Cell::new(0u32);
        let _: Result<(), _> = with_retries(
            &RetryPolicy::attempts(0),
            || 1.0,
            |_| {
                calls.set(calls.get() + 1);
                async { Err(Failure::retryable(unreachable())) }
            },
        )
        .await;
        assert_eq!(calls.get(), 1);
    }
}
