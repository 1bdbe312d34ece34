//! The mastership duty: takes, renews and gives up the master lease (PostgreSQL replicas), and
//! moves this replica's view of the master with it.

use std::time::{Duration, Instant};

use hydra_core::mastership::{Decision, LeaseCall, LeaseView, Mastership, Observation, Role};
use hydra_store::MasterBeacon;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;
use crate::replica::MasterView;
use crate::state::AppState;

/// The mastership task of a replica on PostgreSQL: its beacon, its state machine and a
/// monotonic clock base.
pub struct MastershipTask {
    state: AppState,
    beacon: MasterBeacon,
    machine: Mastership,
    started: Instant,
    /// Whether the last try for the lease was forced (the beacon came free under its term).
    forced: bool,
}

/// Makes the replica follow the lease when its store is PostgreSQL: arms the write fence
/// (every write needs the lease's term from now on) and turns the replica into a follower
/// until its first round takes the lease. `None` on SQLite (a single replica, always master).
pub fn start_mastership(state: &AppState) -> Option<MastershipTask> {
    let beacon = state.store().beacon()?;
    let replica = state.replica();
    state.store().arm_fence(replica.id());
    state.store().set_fence_term(None);
    replica.set(MasterView::follower_without_master());
    Some(MastershipTask {
        machine: Mastership::new(replica.timing()),
        state: state.clone(),
        beacon,
        started: Instant::now(),
        forced: false,
    })
}

/// Bound of one lease or replica-row call that has no earlier deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

impl MastershipTask {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn observe(&mut self, observation: Observation) {
        let decision = self.machine.observe(self.now(), observation);
        self.apply(decision).await;
    }

    /// One round: as master, renew the lease and check the beacon; as follower, read the
    /// lease, wait (bounded) for the beacon and take the lease when the machine says so.
    /// Answers how long to pause before the next round.
    pub async fn round(&mut self) -> Duration {
        self.observe(Observation::Tick).await;
        self.heartbeat_replica().await;
        match self.machine.next_call() {
            LeaseCall::Renew { term, deadline } => self.master_round(term, deadline).await,
            _ => self.follower_round().await,
        }
    }

    /// This replica's row (`hydra replicas`), bounded; a failure is only logged.
    async fn heartbeat_replica(&self) {
        let replica = self.state.replica();
        if let Ok(Err(error)) = tokio::time::timeout(
            CALL_TIMEOUT,
            self.state
                .store()
                .heartbeat_replica(replica.id(), replica.advertise_url()),
        )
        .await
        {
            tracing::debug!(%error, "[controller] replica heartbeat failed");
        }
    }

    /// The lease's time to live and the renewal period, as the store and the pause take them.
    fn lease_timing(&self) -> (i64, Duration) {
        let timing = self.state.replica().timing();
        (
            i64::try_from(timing.ttl_ms).unwrap_or(i64::MAX),
            Duration::from_millis(timing.renew_ms),
        )
    }

    /// As master: renews the lease within its deadline, then checks the beacon is still held.
    async fn master_round(&mut self, term: i64, deadline: u64) -> Duration {
        let store = self.state.store().clone();
        let replica_id = self.state.replica().id().to_owned();
        let (ttl_ms, renew) = self.lease_timing();
        let sent_at = self.now();
        let budget = Duration::from_millis(deadline.saturating_sub(sent_at).max(1));
        let observation = match tokio::time::timeout(
            budget,
            store.renew_lease(&replica_id, term, ttl_ms),
        )
        .await
        {
            Ok(Ok(renewed)) => Observation::Renewed { sent_at, renewed },
            Ok(Err(error)) => {
                tracing::warn!(%error, term, "[controller] lease renewal failed");
                Observation::LeaseFailed
            }
            Err(_) => Observation::LeaseFailed,
        };
        self.observe(observation).await;
        if matches!(self.machine.role(), Role::Master { .. }) {
            let held = self.beacon.lock(Duration::ZERO).await.unwrap_or(false);
            self.observe(Observation::Beacon { held }).await;
        }
        let until_deadline = match self.machine.next_call() {
            LeaseCall::Renew { deadline, .. } => {
                Duration::from_millis(deadline.saturating_sub(self.now()))
            }
            _ => Duration::ZERO,
        };
        renew.min(until_deadline.max(Duration::from_millis(50)))
    }

    /// As follower: reads the lease, waits (bounded) for the beacon, and takes the lease or
    /// gives the beacon back as the machine says.
    async fn follower_round(&mut self) -> Duration {
        let replica_id = self.state.replica().id().to_owned();
        let (_, renew) = self.lease_timing();
        self.read_lease(&replica_id).await;
        let held = match self.beacon.lock(renew).await {
            Ok(held) => held,
            Err(error) => {
                tracing::debug!(%error, "[controller] beacon connection failed");
                false
            }
        };
        if self.beacon.found_busy() {
            // The lock was busy right after the lease was read: its holder was that term's
            // master. Said before the wait's outcome, so a lock got in the same wait (that
            // session ended) forces a takeover now; without it, a standby whose last timed-out
            // wait fell under the previous term waited for the lease's expiry instead (the
            // second takeover in a row took 4-6 s, issue 10).
            self.observe(Observation::Beacon { held: false }).await;
        }
        self.observe(Observation::Beacon { held }).await;
        if held {
            // Time passed while waiting for the lock: read the lease again before deciding.
            self.read_lease(&replica_id).await;
        }
        match self.machine.next_call() {
            LeaseCall::Acquire { force } => {
                if self.acquire(&replica_id, force).await {
                    return renew;
                }
            }
            LeaseCall::Wait if self.beacon.is_held() => {
                self.beacon.unlock().await;
                self.observe(Observation::BeaconGivenBack).await;
            }
            LeaseCall::Wait | LeaseCall::Renew { .. } => {}
        }
        // The beacon wait paced the round when it could run; after a failure, pause.
        if held || self.beacon.is_held() {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(200)
        }
    }

    /// Tries to take the lease (by force when the beacon says its master is gone); `true` when
    /// this replica is the master now.
    async fn acquire(&mut self, replica_id: &str, force: bool) -> bool {
        self.forced = force;
        let (ttl_ms, _) = self.lease_timing();
        let sent_at = self.now();
        let term = tokio::time::timeout(
            CALL_TIMEOUT,
            self.state.store().acquire_lease(replica_id, ttl_ms, force),
        )
        .await;
        match term {
            Ok(Ok(term)) => self.observe(Observation::Acquired { sent_at, term }).await,
            Ok(Err(error)) => {
                tracing::warn!(%error, "[controller] taking the lease failed");
                self.observe(Observation::LeaseFailed).await;
            }
            Err(_) => self.observe(Observation::LeaseFailed).await,
        }
        matches!(self.machine.role(), Role::Master { .. })
    }

    /// Reads the lease row into the machine and into what `check-master` answers.
    async fn read_lease(&mut self, replica_id: &str) {
        let lease = match tokio::time::timeout(CALL_TIMEOUT, self.state.store().lease()).await {
            Ok(Ok(lease)) => lease,
            _ => return,
        };
        let view = lease.as_ref().map(|lease| LeaseView {
            term: lease.term,
            held_by_me: lease.holder == replica_id,
            expired: lease.remaining_ms <= 0,
        });
        self.observe(Observation::LeaseSeen(view)).await;
        if matches!(self.machine.role(), Role::Follower) {
            let live = lease.filter(|lease| lease.remaining_ms > 0 && lease.holder != replica_id);
            self.state.replica().set(MasterView {
                is_master: false,
                replicated: true,
                term: live.as_ref().map(|lease| lease.term),
                master_id: live.as_ref().map(|lease| lease.holder.clone()),
                master_url: live.and_then(|lease| lease.holder_url),
            });
        }
    }

    async fn apply(&mut self, decision: Decision) {
        let state = self.state.clone();
        let replica = state.replica();
        match decision {
            Decision::Stay => {}
            Decision::BecomeMaster { term } => {
                // The view may be stale (another master wrote since it was loaded): reload it
                // before taking writes, so checks and duties see what the store has.
                match Registry::load(self.state.store()).await {
                    Ok(loaded) => {
                        *self
                            .state
                            .registry()
                            .write()
                            .expect("registry lock poisoned") = loaded
                    }
                    Err(error) => {
                        tracing::warn!(%error, "[controller] reloading the registry view on takeover failed; serving the view as it was")
                    }
                }
                self.state.store().set_fence_term(Some(term));
                replica.set(MasterView {
                    is_master: true,
                    replicated: true,
                    term: Some(term),
                    master_id: Some(replica.id().to_owned()),
                    master_url: Some(replica.advertise_url().to_owned()),
                });
                metrics::counter!("hydra_replica_takeovers_total").increment(1);
                // `takeover`: `beacon` when the previous holder's session ended (at once),
                // `lease` when the lease had expired or was never taken.
                let takeover = if self.forced { "beacon" } else { "lease" };
                tracing::info!(replica_id = %replica.id(), term, beacon = self.beacon.is_held(), takeover = %takeover, "[controller] this replica is now the master");
            }
            Decision::StepDown { term, reason } => {
                // First: no write of this term may commit any more.
                self.state.store().set_fence_term(None);
                replica.set(MasterView::follower_without_master());
                metrics::counter!("hydra_replica_step_downs_total", "reason" => reason.as_str())
                    .increment(1);
                tracing::warn!(replica_id = %replica.id(), term, reason = reason.as_str(), "[controller] this replica stepped down: no longer the master");
                self.beacon.unlock().await;
                self.observe_given_back();
                if reason != hydra_core::mastership::StepDownReason::Deposed {
                    let _ = tokio::time::timeout(
                        CALL_TIMEOUT,
                        state.store().release_lease(replica.id(), term),
                    )
                    .await;
                }
            }
        }
    }

    /// Records that the beacon was given back (no decision can follow from it).
    fn observe_given_back(&mut self) {
        let now = self.now();
        let _ = self.machine.observe(now, Observation::BeaconGivenBack);
    }

    /// Gives mastership up at shutdown: writes stop, the lease expires now so another replica
    /// takes it at once instead of waiting for the TTL.
    async fn resign(mut self) {
        if let Role::Master { term } = self.machine.role() {
            self.state.store().set_fence_term(None);
            let replica = self.state.replica();
            let _ = tokio::time::timeout(
                CALL_TIMEOUT,
                self.state.store().release_lease(replica.id(), term),
            )
            .await;
            tracing::info!(replica_id = %replica.id(), term, "[controller] released the master lease at shutdown");
        }
        self.beacon.unlock().await;
    }
}

/// Runs `task` until `shutdown`, then resigns.
pub async fn run_mastership(mut task: MastershipTask, shutdown: CancellationToken) {
    loop {
        let pause = tokio::select! {
            _ = shutdown.cancelled() => break,
            pause = task.round() => pause,
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    task.resign().await;
}
