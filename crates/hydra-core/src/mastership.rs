//! Whether this control-plane replica acts as master: a sans-IO state machine fed with the
//! outcomes of its lease calls and of its beacon (the advisory lock), with time passed in.
//!
//! The lease row in the database is the authority; this machine only decides when the replica
//! *believes* it is master. It steps down on its own once two thirds of the TTL passed since
//! the last renewal that succeeded was *sent* (the database computed the expiry at or after
//! that moment, so the lease is still ours for at least a third of the TTL), which leaves a
//! margin for a paused process or a slow clock before another replica may take the lease.

/// How long a lease lasts and how often its holder renews it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Lease length, by the database clock.
    pub ttl_ms: u64,
    /// Renewal period of the holder.
    pub renew_ms: u64,
}

impl LeaseTiming {
    /// The defaults of `hydra server`: a 6 s lease renewed every 2 s.
    pub const DEFAULT: LeaseTiming = LeaseTiming {
        ttl_ms: 6_000,
        renew_ms: 2_000,
    };

    /// A timing whose holder renews at least once before it would step down; the error names
    /// what is wrong.
    pub fn new(ttl_ms: u64, renew_ms: u64) -> Result<LeaseTiming, String> {
        let timing = LeaseTiming { ttl_ms, renew_ms };
        if renew_ms == 0 {
            return Err("the lease renewal period must be above 0".to_owned());
        }
        if renew_ms >= timing.step_down_after_ms() {
            return Err(format!(
                "the lease renewal period ({renew_ms} ms) must be shorter than two thirds of the lease TTL ({ttl_ms} ms)"
            ));
        }
        Ok(timing)
    }

    /// How long a master goes without a successful renewal before it steps down by itself.
    pub fn step_down_after_ms(&self) -> u64 {
        self.ttl_ms.saturating_mul(2) / 3
    }
}

/// What the replica is, as far as it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not master: forwards writes, runs no singleton duty, tries for the lease.
    Follower,
    /// Master for `term`: takes writes and runs the singleton duties.
    Master {
        /// The lease term every write is fenced with.
        term: i64,
    },
}

/// An outcome of the replica's I/O, fed to [`Mastership::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// A try for the lease sent at `sent_at` answered: `Some(term)` taken, `None` held by
    /// another replica.
    Acquired {
        /// When the call was sent.
        sent_at: u64,
        /// The new term, when taken.
        term: Option<i64>,
    },
    /// A renewal sent at `sent_at` answered: `false` means another replica holds the lease.
    Renewed {
        /// When the call was sent.
        sent_at: u64,
        /// Whether the lease row still held our term.
        renewed: bool,
    },
    /// A lease call failed or timed out (the database did not answer).
    LeaseFailed,
    /// The lease row as just read (`None`: no replica ever took it).
    LeaseSeen(Option<LeaseView>),
    /// The beacon's state after a call: whether this replica holds the advisory lock.
    Beacon {
        /// Whether the lock is held.
        held: bool,
    },
    /// This replica gave the beacon back by itself (a follower that may not use it): unlike a
    /// busy beacon, this says nothing about the holder of the lease.
    BeaconGivenBack,
    /// Time passed.
    Tick,
}

/// The lease row as a follower sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    /// Its term.
    pub term: i64,
    /// Whether it names this replica's id (a previous run of this replica held it).
    pub held_by_me: bool,
    /// Whether it expired, by the database clock.
    pub expired: bool,
}

/// What the replica must do after an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changes.
    Stay,
    /// Start acting as master for `term` (fence writes with it, start the singleton duties).
    BecomeMaster {
        /// The new term.
        term: i64,
    },
    /// Stop acting as master now (refuse writes, stop the duties, release the lease).
    StepDown {
        /// The term given up.
        term: i64,
        /// Why.
        reason: StepDownReason,
    },
}

/// Why a master stepped down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDownReason {
    /// Another replica holds the lease (a renewal found another term).
    Deposed,
    /// Two thirds of the TTL passed without a successful renewal.
    RenewalOverdue,
    /// The beacon's connection (and with it the advisory lock) was lost: another replica may
    /// take the lease at once.
    BeaconLost,
}

impl StepDownReason {
    /// The reason as logs and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepDownReason::Deposed => "deposed",
            StepDownReason::RenewalOverdue => "renewal_overdue",
            StepDownReason::BeaconLost => "beacon_lost",
        }
    }
}

/// The next lease call the replica should make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCall {
    /// Nothing: another replica holds a lease that has not expired. A follower holding the
    /// beacon then gives it back, so the master (which may have taken the lease by expiry,
    /// without the lock) can take it.
    Wait,
    /// Try to take the lease: it expired or was never taken, or `force`: this replica got the
    /// beacon that was busy under the current term (or the lease names this replica), so the
    /// holder's database session ended.
    Acquire {
        /// Take it even though it has not expired.
        force: bool,
    },
    /// Renew the lease of `term`, and answer by `deadline` (past it the master steps down).
    Renew {
        /// The term held.
        term: i64,
        /// When the master steps down if no renewal succeeded by then.
        deadline: u64,
    },
}

/// The mastership state of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mastership {
    timing: LeaseTiming,
    role: Role,
    /// When the last successful acquisition or renewal was sent.
    renewed_sent_at: u64,
    beacon_held: bool,
    /// The lease as last seen.
    lease: Option<LeaseView>,
    /// The term of the lease seen while another session held the beacon: getting the beacon
    /// later under the same term means that term's holder is gone.
    busy_term: Option<i64>,
}

impl Mastership {
    /// A follower that does not hold the beacon.
    pub fn new(timing: LeaseTiming) -> Mastership {
        Mastership {
            timing,
            role: Role::Follower,
            renewed_sent_at: 0,
            beacon_held: false,
            lease: None,
            busy_term: None,
        }
    }

    /// What the replica is now.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether it holds the beacon.
    pub fn beacon_held(&self) -> bool {
        self.beacon_held
    }

    /// The lease call to make next.
    pub fn next_call(&self) -> LeaseCall {
        match self.role {
            Role::Follower => match self.lease {
                None => LeaseCall::Acquire { force: false },
                Some(lease) if lease.expired => LeaseCall::Acquire { force: false },
                Some(lease)
                    if self.beacon_held
                        && (lease.held_by_me || self.busy_term == Some(lease.term)) =>
                {
                    LeaseCall::Acquire { force: true }
                }
                Some(_) => LeaseCall::Wait,
            },
            Role::Master { term } => LeaseCall::Renew {
                term,
                deadline: self.step_down_at(),
            },
        }
    }

    /// When a master steps down if no renewal succeeds before.
    fn step_down_at(&self) -> u64 {
        self.renewed_sent_at
            .saturating_add(self.timing.step_down_after_ms())
    }

    /// Applies `observation` at `now` (ms on a monotonic clock) and says what to do.
    pub fn observe(&mut self, now: u64, observation: Observation) -> Decision {
        let decision = match (self.role, observation) {
            (
                Role::Follower,
                Observation::Acquired {
                    sent_at,
                    term: Some(term),
                },
            ) => {
                self.role = Role::Master { term };
                self.renewed_sent_at = sent_at;
                Decision::BecomeMaster { term }
            }
            (Role::Master { term }, Observation::Renewed { renewed: false, .. }) => {
                self.step_down(term, StepDownReason::Deposed)
            }
            (Role::Master { .. }, Observation::Renewed { sent_at, .. }) => {
                self.renewed_sent_at = self.renewed_sent_at.max(sent_at);
                Decision::Stay
            }
            (Role::Master { term }, Observation::Beacon { held: false }) if self.beacon_held => {
                self.beacon_held = false;
                self.step_down(term, StepDownReason::BeaconLost)
            }
            (_, Observation::Beacon { held }) => {
                self.beacon_held = held;
                if !held {
                    self.busy_term = self.lease.map(|lease| lease.term);
                }
                Decision::Stay
            }
            (_, Observation::BeaconGivenBack) => {
                self.beacon_held = false;
                Decision::Stay
            }
            (_, Observation::LeaseSeen(lease)) => {
                self.lease = lease;
                Decision::Stay
            }
            _ => Decision::Stay,
        };
        if decision != Decision::Stay {
            return decision;
        }
        match self.role {
            Role::Master { term } if now >= self.step_down_at() => {
                self.step_down(term, StepDownReason::RenewalOverdue)
            }
            _ => Decision::Stay,
        }
    }

    fn step_down(&mut self, term: i64, reason: StepDownReason) -> Decision {
        self.role = Role::Follower;
        Decision::StepDown { term, reason }
    }
}

#[cfg(test)]
mod tests;
