//! The head's failover loop, as the field runs it: discover a route, launch the streaming
//! client on it, forget the route when the launch fails (so a failed body does not stick), back
//! off with full jitter between failed attempts, give up after a bound of failures in a row.
//!
//! Sans-IO: [`FailoverLoop::next_step`] says what to do next; the caller does it (asks the
//! server and probes, sleeps, launches the client) and reports what happened. Randomness comes
//! in as an argument, so the loop's whole course is a table test.

use crate::backoff::full_jitter_delay_ms;

/// Bounds of the failover loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverSettings {
    /// Failed discoveries or launches in a row before the loop gives up (at least 1).
    pub max_attempts: u32,
    /// First backoff ceiling in ms; it doubles per failure.
    pub backoff_base_ms: u64,
    /// Largest backoff in ms.
    pub backoff_max_ms: u64,
    /// Stop after this many streams have run; `None` runs until stopped.
    pub streams: Option<u32>,
}

impl Default for FailoverSettings {
    /// The field's loop: 5 attempts, 1 s doubling to 60 s, no stream limit.
    fn default() -> FailoverSettings {
        FailoverSettings {
            max_attempts: 5,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            streams: None,
        }
    }
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask for the eligible bodies and probe them; then report [`FailoverLoop::discovery_failed`]
    /// or launch the client on the route found and report how it ended.
    Discover,
    /// Wait `delay_ms` before attempt number `attempt` (counted from 1).
    Backoff {
        /// How long to wait.
        delay_ms: u64,
        /// The attempt that follows the wait.
        attempt: u32,
    },
    /// No replica answered the last discovery: probe the eligible list kept from the last answer
    /// (the same probes, LAN then WireGuard), then launch on the route found or report
    /// [`FailoverLoop::discovery_failed`]. The next discovery asks the control plane again.
    WalkKept,
    /// The wanted number of streams ran: stop, successfully.
    Done,
    /// Too many failures in a row: stop with an error.
    GiveUp {
        /// Failures in a row.
        failures: u32,
        /// Why the last one failed.
        last_failure: String,
    },
}

/// The loop's state: failures in a row, streams run, whether the pending backoff was taken.
#[derive(Debug, Clone)]
pub struct FailoverLoop {
    settings: FailoverSettings,
    failures: u32,
    streams_run: u32,
    last_failure: String,
    backed_off: bool,
    /// The control plane did not answer and a kept list exists: walk it next.
    walk_kept: bool,
}

impl FailoverLoop {
    /// A loop that has not run yet.
    pub fn new(settings: FailoverSettings) -> FailoverLoop {
        FailoverLoop {
            settings,
            failures: 0,
            streams_run: 0,
            last_failure: String::new(),
            backed_off: false,
            walk_kept: false,
        }
    }

    /// What to do now. `random_unit` (in `[0, 1)`) picks the jittered backoff.
    pub fn next_step(&mut self, random_unit: f64) -> Step {
        if self
            .settings
            .streams
            .is_some_and(|limit| self.streams_run >= limit)
        {
            return Step::Done;
        }
        if self.failures >= self.settings.max_attempts.max(1) {
            return Step::GiveUp {
                failures: self.failures,
                last_failure: self.last_failure.clone(),
            };
        }
        if self.walk_kept {
            self.walk_kept = false;
            return Step::WalkKept;
        }
        if self.failures > 0 && !self.backed_off {
            self.backed_off = true;
            return Step::Backoff {
                delay_ms: full_jitter_delay_ms(
                    self.failures - 1,
                    self.settings.backoff_base_ms,
                    self.settings.backoff_max_ms,
                    random_unit,
                ),
                attempt: self.failures + 1,
            };
        }
        self.backed_off = false;
        Step::Discover
    }

    /// Discovery found no reachable body (or the server did not answer).
    pub fn discovery_failed(&mut self, reason: impl Into<String>) {
        self.fail(reason.into());
    }

    /// No replica answered the discovery. With a kept eligible list the head walks it at once
    /// (not a failure: the control plane being away is not the bodies' fault); without one it
    /// counts as a failed discovery.
    pub fn control_plane_unreachable(&mut self, reason: impl Into<String>, has_kept_list: bool) {
        if has_kept_list {
            self.walk_kept = true;
        } else {
            self.fail(reason.into());
        }
    }

    /// The client failed to launch on the route: the route is forgotten; the next attempt
    /// discovers again.
    pub fn launch_failed(&mut self, reason: impl Into<String>) {
        self.fail(reason.into());
    }

    /// A stream ran past its launch window and ended: failures are forgiven, and the next stream
    /// discovers again (which is how a head returns to the best body once it is back).
    pub fn stream_ended(&mut self) {
        self.failures = 0;
        self.streams_run += 1;
        self.last_failure.clear();
    }

    /// Streams that ran so far.
    pub fn streams_run(&self) -> u32 {
        self.streams_run
    }

    fn fail(&mut self, reason: String) {
        self.failures += 1;
        self.last_failure = reason;
        self.backed_off = false;
    }
}

/// How a streaming client's exit counts for the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamExit {
    /// It exited with a pairing-failure code, whenever that happened.
    PairingFailed,
    /// It exited within the launch window: it never streamed.
    ExitedInLaunchWindow,
    /// It streamed past the launch window, then ended.
    Ended,
}

impl StreamExit {
    /// Whether the route must be forgotten (the launch failed).
    pub fn launch_failed(&self) -> bool {
        !matches!(self, StreamExit::Ended)
    }
}

/// Classifies an exit: a pairing-failure code always means the launch failed; otherwise an exit
/// within `launch_window_ms` of the launch does.
pub fn classify_exit(
    ran_for_ms: u64,
    exit_code: Option<i32>,
    launch_window_ms: u64,
    pairing_exit_codes: &[i32],
) -> StreamExit {
    if exit_code.is_some_and(|code| pairing_exit_codes.contains(&code)) {
        StreamExit::PairingFailed
    } else if ran_for_ms < launch_window_ms {
        StreamExit::ExitedInLaunchWindow
    } else {
        StreamExit::Ended
    }
}

#[cfg(test)]
mod tests;
