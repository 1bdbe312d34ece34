//! The agent's health checker as a sans-IO state machine: healthy, degraded, recovering.
//!
//! The agent asks every replica's `check-master` once per round and hands the answers in with the
//! time ([`HealthChecker::round`]); the machine says what to do (follow a new master, refresh the
//! replica list, resync after an outage) and what to log. When no master answers it enters
//! degraded mode with one WARN; when a master is back it asks for a resync (replay the deferred
//! writes, poll the config bundle) and reports recovery with one INFO once the caller says the
//! resync is done ([`HealthChecker::caught_up`]). WARN and INFO strictly alternate, so a master
//! that flaps while the agent resyncs logs nothing twice.
//!
//! An agent follows only its own control plane: every replica names its cluster (the store's
//! id, shared by every replica of one database) and the checker learns it from the first master
//! it finds; a replica that names another cluster (a foreign `hydra server` that took a dead
//! replica's address) counts as silent, with one WARN, and is never followed ([`membership`]).

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
        /// The cluster it belongs to (`None`: a server from before cluster ids).
        cluster_id: Option<String>,
    },
}

/// Whether an answer comes from the agent's own control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// It does, or nothing says otherwise (no cluster learned yet, or a replica that names none).
    Member,
    /// It names another cluster than the one the agent learned: it is not asked, followed or
    /// written to.
    Foreign,
}

/// The rule: a replica is foreign only when both the agent's cluster and the replica's are
/// known and differ. Before the agent learned its cluster every answer counts (the first
/// contact teaches it); a server too old to name one is taken at its word, as before.
pub fn membership(known: Option<&str>, named: Option<&str>) -> Membership {
    match (known, named) {
        (Some(known), Some(named)) if known != named => Membership::Foreign,
        _ => Membership::Member,
    }
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
    /// The first master found names this cluster: keep it (on disk, and in the SDK, so its own
    /// master discovery skips other clusters too); from now on other clusters are foreign.
    LearnedCluster {
        /// The cluster id.
        cluster_id: String,
    },
    /// Log the WARN (once while it stays so): the replica at `url` belongs to another cluster
    /// and is ignored.
    ForeignReplica {
        /// The replica's base URL.
        url: String,
        /// The cluster it named.
        cluster_id: String,
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
            Output::LearnedCluster { cluster_id } => write!(
                formatter,
                "[health] this agent's control plane is cluster {cluster_id}; replicas of another cluster are ignored"
            ),
            Output::ForeignReplica { url, cluster_id } => write!(
                formatter,
                "[health] replica {url} belongs to another cluster (id {cluster_id}); ignored"
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
    /// The cluster this agent belongs to, once learned (or kept from an earlier run).
    cluster: Option<String>,
    /// Replicas warned about as foreign and not seen as members since (one WARN each).
    warned_foreign: Vec<String>,
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
            cluster: None,
            warned_foreign: Vec::new(),
        }
    }

    /// The same checker, knowing its cluster already (kept on disk by an earlier run), so a
    /// foreign replica is ignored from the first round on.
    pub fn with_cluster(self, cluster: Option<String>) -> HealthChecker {
        HealthChecker { cluster, ..self }
    }

    /// The cluster learned (or given), if any.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// Whether `check` answered as a replica of this agent's control plane (not silent, not
    /// foreign): what `hydra status` shows as healthy.
    pub fn answered_as_member(&self, check: &ReplicaCheck) -> bool {
        match &check.answer {
            ReplicaAnswer::Silent => false,
            ReplicaAnswer::Answered { cluster_id, .. } => {
                membership(self.cluster(), cluster_id.as_deref()) == Membership::Member
            }
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
        let mut outputs = self.foreign_warnings(checks);
        // A foreign replica is as good as silent: its claims and pointers are not believed.
        let checks: Vec<ReplicaCheck> = checks
            .iter()
            .map(|check| {
                if self.answered_as_member(check) || check.answer == ReplicaAnswer::Silent {
                    check.clone()
                } else {
                    ReplicaCheck {
                        base_url: check.base_url.clone(),
                        answer: ReplicaAnswer::Silent,
                    }
                }
            })
            .collect();
        let checks = checks.as_slice();
        let master = self.master_of(checks);
        if self.cluster.is_none()
            && let Some(found) = &master
            && let Some(cluster_id) = cluster_of(checks, found)
        {
            self.cluster = Some(cluster_id.clone());
            outputs.push(Output::LearnedCluster { cluster_id });
        }
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

    /// One WARN per replica that turned foreign; a replica seen as a member again may warn again
    /// later.
    fn foreign_warnings(&mut self, checks: &[ReplicaCheck]) -> Vec<Output> {
        let mut outputs = Vec::new();
        for check in checks {
            let ReplicaAnswer::Answered {
                cluster_id: Some(cluster_id),
                ..
            } = &check.answer
            else {
                continue;
            };
            let warned = self.warned_foreign.contains(&check.base_url);
            match membership(self.cluster(), Some(cluster_id)) {
                Membership::Foreign if !warned => {
                    self.warned_foreign.push(check.base_url.clone());
                    outputs.push(Output::ForeignReplica {
                        url: check.base_url.clone(),
                        cluster_id: cluster_id.clone(),
                    });
                }
                Membership::Member if warned => {
                    self.warned_foreign.retain(|url| url != &check.base_url);
                }
                Membership::Foreign | Membership::Member => {}
            }
        }
        outputs
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

/// The cluster the master at `master_url` belongs to: its own answer's, else that of a replica
/// pointing to it (replicas of one store point only to their own master).
fn cluster_of(checks: &[ReplicaCheck], master_url: &str) -> Option<String> {
    let named = |check: &ReplicaCheck| match &check.answer {
        ReplicaAnswer::Answered { cluster_id, .. } => cluster_id.clone(),
        ReplicaAnswer::Silent => None,
    };
    checks
        .iter()
        .find(|check| check.base_url == master_url)
        .and_then(named)
        .or_else(|| {
            checks
                .iter()
                .filter(|check| {
                    matches!(&check.answer, ReplicaAnswer::Answered { master_url: Some(url), .. } if url == master_url)
                })
                .find_map(named)
        })
}

#[cfg(test)]
mod tests;
