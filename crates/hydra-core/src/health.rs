//! The agent's health checker as a sans-IO state machine: healthy, degraded, recovering.
//!
//! The agent asks every replica's `check-master` once per round and hands the answers in with the
//! time ([`HealthChecker::round`]); the machine says what to do (follow a new master, refresh the
//! replica list, resync after an outage) and what to log. When no master answers it enters
//! degraded mode with one WARN; when a master is back it asks for a resync (replay the deferred
//! writes, poll the config bundle) and reports recovery with one INFO once the caller says the
//! resync is done ([`HealthChecker::caught_up`]). WARN and INFO strictly alternate, so a master
//! that flaps while the agent resyncs logs nothing twice.

use std::fmt;

/// The health check's period when the configuration names none (the field's timer).
pub const DEFAULT_INTERVAL_MS: u64 = 60_000;
/// The shortest period the configuration may ask for: one round of `check-master` a second.
pub const MIN_INTERVAL_MS: u64 = 1_000;
/// The replica list is read again every this many rounds even when nothing failed, so an agent
/// learns a replica added after it started before the replicas it knows are gone (5 minutes at
/// the field's 60 s timer).
pub const REFRESH_EVERY_ROUNDS: u64 = 5;

/// Checks a configured health-check period: `None` is the default (60 s); below 1 s is refused
/// with a message naming the bound (the caller names the key).
pub fn health_interval_ms(configured_ms: Option<u64>) -> Result<u64, String> {
    match configured_ms {
        None => Ok(DEFAULT_INTERVAL_MS),
        Some(ms) if ms < MIN_INTERVAL_MS => Err(format!(
            "must be at least {MIN_INTERVAL_MS} ms (1 s), got {ms} ms"
        )),
        Some(ms) => Ok(ms),
    }
}

/// What one replica said to `check-master` this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaAnswer {
    /// It did not answer (connection failed, timed out, or answered with a server error).
    Silent,
    /// It answered.
    Answered {
        /// Whether it holds the master lease.
        is_master: bool,
        /// The master it names, when it knows one (normalised base URL).
        master_url: Option<String>,
    },
}

/// One replica's answer in a round, by base URL (normalised, as the SDK keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaCheck {
    /// The replica asked.
    pub base_url: String,
    /// What it said.
    pub answer: ReplicaAnswer,
}

/// Where the checker stands; `since_ms` is when the agent lost its master (kept through
/// recovering, so `hydra status` can say "degraded since").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// A master answers and nothing is owed to it.
    Healthy,
    /// No master answered the last round: the agent runs on its kept config and defers writes.
    Degraded {
        /// When the agent entered degraded mode (unix ms).
        since_ms: i64,
    },
    /// A master is back; deferred writes are being replayed and the bundle polled.
    Recovering {
        /// When the agent entered degraded mode (unix ms).
        since_ms: i64,
    },
}

/// What the machine asks the caller to do, or to log, after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Point the SDK's cached master at `url` (writes go there from now on).
    FollowMaster {
        /// The master before, if one was followed.
        from: Option<String>,
        /// The new master.
        to: String,
    },
    /// Fetch `GET /api/v1/replicas` from `from` (a replica that answered) and use its list.
    RefreshReplicas {
        /// Where to read the list: the master when there is one, else the first that answered.
        from: String,
    },
    /// A master is back after an outage: replay the deferred writes and poll the bundle, then
    /// call [`HealthChecker::caught_up`].
    Resync,
    /// Log the WARN: no master reachable, degraded mode.
    EnteredDegraded {
        /// The config version in use (0: the local YAML, no bundle yet).
        config_version: u64,
    },
    /// Log the INFO: recovered, after `degraded_for_ms`.
    Recovered {
        /// How long the agent ran without a master.
        degraded_for_ms: i64,
    },
}

impl fmt::Display for Output {
    /// The log line operators grep for (the agent adds structured fields beside it).
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::FollowMaster { from: None, to } => {
                write!(formatter, "[health] following master {to}")
            }
            Output::FollowMaster {
                from: Some(from),
                to,
            } => write!(formatter, "[health] master changed from {from} to {to}"),
            Output::RefreshReplicas { from } => {
                write!(
                    formatter,
                    "[health] refreshing the replica list from {from}"
                )
            }
            Output::Resync => write!(formatter, "[health] master back; resyncing"),
            Output::EnteredDegraded { config_version } => write!(
                formatter,
                "[health] no master reachable; degraded mode, running on config version {config_version}"
            ),
            Output::Recovered { degraded_for_ms } => write!(
                formatter,
                "[health] master reachable again; recovered after {} s in degraded mode",
                (*degraded_for_ms).max(0) / 1_000
            ),
        }
    }
}

/// The health checker's state: where it stands and which master it follows.
#[derive(Debug, Clone)]
pub struct HealthChecker {
    state: HealthState,
    master: Option<String>,
    /// Read the replica list at least this often (ms), failure or not; `None`: only on failure.
    refresh_every_ms: Option<i64>,
    /// When the last [`Output::RefreshReplicas`] was asked for.
    last_refresh_ms: Option<i64>,
}

impl Default for HealthChecker {
    fn default() -> HealthChecker {
        HealthChecker::new(None)
    }
}

impl HealthChecker {
    /// A checker that starts healthy, following `master` if the SDK already found one (an agent
    /// that starts while the control plane is away learns it in the first round).
    pub fn new(master: Option<String>) -> HealthChecker {
        HealthChecker {
            state: HealthState::Healthy,
            master,
            refresh_every_ms: None,
            last_refresh_ms: None,
        }
    }

    /// The same checker, also asking for the replica list in its first round and then at least
    /// every `every_ms` (the agent passes [`REFRESH_EVERY_ROUNDS`] intervals), not only when a
    /// replica failed: a replica added later is learned while the known ones still answer.
    pub fn with_refresh_every(self, every_ms: u64) -> HealthChecker {
        HealthChecker {
            refresh_every_ms: Some(i64::try_from(every_ms).unwrap_or(i64::MAX)),
            ..self
        }
    }

    /// Where the checker stands now.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// The master it follows (the last one found; kept while degraded, for `hydra status`).
    pub fn master(&self) -> Option<&str> {
        self.master.as_deref()
    }

    /// One round of `check-master` answers at `now_ms`, with the config version in use; returns
    /// the actions and log lines in the order to carry them out.
    pub fn round(
        &mut self,
        checks: &[ReplicaCheck],
        now_ms: i64,
        config_version: u64,
    ) -> Vec<Output> {
        let mut outputs = Vec::new();
        let master = self.master_of(checks);
        match master {
            None => {
                if self.state == HealthState::Healthy {
                    self.state = HealthState::Degraded { since_ms: now_ms };
                    outputs.push(Output::EnteredDegraded { config_version });
                } else if let HealthState::Recovering { since_ms } = self.state {
                    // Lost again before the resync finished: no second WARN, since the INFO
                    // for the first outage was never logged.
                    self.state = HealthState::Degraded { since_ms };
                }
            }
            Some(found) => {
                if self.master.as_deref() != Some(found.as_str()) {
                    outputs.push(Output::FollowMaster {
                        from: self.master.take(),
                        to: found.clone(),
                    });
                    self.master = Some(found);
                }
                if let HealthState::Degraded { since_ms } = self.state {
                    self.state = HealthState::Recovering { since_ms };
                    outputs.push(Output::Resync);
                }
            }
        }
        // A replica that failed may be gone for good, or the master may have moved: read the
        // current list from one that answers (the field's "refresh the replica list on failure").
        let failure = checks
            .iter()
            .any(|check| check.answer == ReplicaAnswer::Silent)
            || outputs
                .iter()
                .any(|output| matches!(output, Output::FollowMaster { from: Some(_), .. }));
        // And now and then without a failure, to learn replicas added since.
        let due = self.refresh_every_ms.is_some_and(|every_ms| {
            self.last_refresh_ms
                .is_none_or(|last_ms| now_ms.saturating_sub(last_ms) >= every_ms)
        });
        if (failure || due)
            && let Some(from) = self.refresh_source(checks)
        {
            self.last_refresh_ms = Some(now_ms);
            outputs.push(Output::RefreshReplicas { from });
        }
        outputs
    }

    /// The caller finished the resync [`Output::Resync`] asked for: recovered, with one INFO.
    /// Outside recovering it changes nothing (a resync that outlived a new outage).
    pub fn caught_up(&mut self, now_ms: i64) -> Vec<Output> {
        match self.state {
            HealthState::Recovering { since_ms } => {
                self.state = HealthState::Healthy;
                vec![Output::Recovered {
                    degraded_for_ms: now_ms.saturating_sub(since_ms),
                }]
            }
            HealthState::Healthy | HealthState::Degraded { .. } => Vec::new(),
        }
    }

    /// The master this round names: the followed master if it still claims the lease (two
    /// claimants during a lease hand-over must not flip the agent back and forth), else the
    /// first replica that claims it, else a master another replica points to, unless that one
    /// was silent this round (writes would fail there too), as the SDK's discovery does.
    fn master_of(&self, checks: &[ReplicaCheck]) -> Option<String> {
        let claims = |check: &&ReplicaCheck| {
            matches!(
                check.answer,
                ReplicaAnswer::Answered {
                    is_master: true,
                    ..
                }
            )
        };
        if let Some(current) = &self.master
            && checks
                .iter()
                .filter(claims)
                .any(|check| &check.base_url == current)
        {
            return Some(current.clone());
        }
        if let Some(claimant) = checks.iter().find(claims) {
            return Some(claimant.base_url.clone());
        }
        let silent: Vec<&str> = checks
            .iter()
            .filter(|check| check.answer == ReplicaAnswer::Silent)
            .map(|check| check.base_url.as_str())
            .collect();
        checks
            .iter()
            .filter_map(|check| match &check.answer {
                ReplicaAnswer::Answered {
                    master_url: Some(url),
                    ..
                } => Some(url),
                _ => None,
            })
            .find(|url| !silent.contains(&url.as_str()))
            .cloned()
    }

    /// Where to read the replica list: the master when it answered, else the first that did.
    fn refresh_source(&self, checks: &[ReplicaCheck]) -> Option<String> {
        let answered = |check: &&ReplicaCheck| check.answer != ReplicaAnswer::Silent;
        checks
            .iter()
            .filter(answered)
            .find(|check| Some(check.base_url.as_str()) == self.master.as_deref())
            .or_else(|| checks.iter().find(answered))
            .map(|check| check.base_url.clone())
    }
}

#[cfg(test)]
mod tests;
