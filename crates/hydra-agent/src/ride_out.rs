//! What the agent knows while it rides out the loss of the control plane, shared by the tasks
//! that learn it (the health checker, the heartbeat loop, the bundle poller) and the local
//! status route that shows it: the health state, each replica's last answer, the last poll, the
//! config in use and where it came from, and the write journal.

use std::sync::{Arc, Mutex, OnceLock};

use hydra_core::health::HealthState;

use crate::journal::Journal;

/// Where the config the agent runs on came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConfigSource {
    /// The local YAML alone (no bundle yet).
    #[default]
    LocalYaml,
    /// The bundle kept on disk, from before this start.
    KeptCopy,
    /// A bundle polled from the control plane since this start.
    Server,
}

impl ConfigSource {
    /// The word `hydra status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::LocalYaml => "local_yaml",
            ConfigSource::KeptCopy => "kept_copy",
            ConfigSource::Server => "server",
        }
    }
}

/// One replica as the last health round saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSeen {
    /// Its base URL.
    pub url: String,
    /// Whether it answered `check-master`.
    pub healthy: bool,
    /// Whether it said it is the master.
    pub is_master: bool,
    /// The lease term it named (replicas on PostgreSQL; none for a single replica).
    pub term: Option<u64>,
}

/// A snapshot of what the agent knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RideOutView {
    /// The health checker's state (healthy until its first round says otherwise).
    pub health: HealthState,
    /// Each replica's answer in the last round.
    pub replicas: Vec<ReplicaSeen>,
    /// When the bundle poller last had an answer (unix ms).
    pub last_poll_ms: Option<i64>,
    /// The config bundle's version in use (0: none).
    pub config_version: u64,
    /// Where it came from.
    pub config_source: ConfigSource,
}

impl Default for RideOutView {
    fn default() -> RideOutView {
        RideOutView {
            health: HealthState::Healthy,
            replicas: Vec::new(),
            last_poll_ms: None,
            config_version: 0,
            config_source: ConfigSource::LocalYaml,
        }
    }
}

/// The shared state: a view behind the narrowest lock, and the journal once it is open.
#[derive(Debug, Default)]
pub struct RideOut {
    view: Mutex<RideOutView>,
    journal: OnceLock<Arc<Journal>>,
}

impl RideOut {
    /// A copy of what is known now.
    pub fn view(&self) -> RideOutView {
        self.view.lock().expect("ride-out lock poisoned").clone()
    }

    /// Changes what is known.
    pub fn update(&self, change: impl FnOnce(&mut RideOutView)) {
        change(&mut self.view.lock().expect("ride-out lock poisoned"));
    }

    /// Whether no master answered the last health round: writes then go to the journal.
    pub fn degraded(&self) -> bool {
        matches!(self.view().health, HealthState::Degraded { .. })
    }

    /// The write journal, once the daemon opened it.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.get()
    }

    /// Sets the journal (once; later calls are ignored).
    pub fn set_journal(&self, journal: Arc<Journal>) {
        let _ = self.journal.set(journal);
    }
}
