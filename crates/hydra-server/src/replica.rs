//! Replicas on one PostgreSQL: this replica's view of the master ([`ReplicaState`]), which the
//! mastership duty (`crate::duties::mastership`: holds or watches the master lease and applies
//! what `hydra_core::mastership` decides) moves, `check-master` and `replicas` answer, and the
//! layer that forwards writes reaching a non-master to the master (`crate::routes::layers`) reads.
//!
//! Architecture invariant: the lease row is the only authority. Stepping down first clears the
//! store's fence term, so no write of the old term commits after the replica stopped believing
//! it is master; a write that slips past a stale belief is refused by the fence in its own
//! transaction.

use std::sync::RwLock;

use hydra_core::mastership::LeaseTiming;

/// Marks a request forwarded by a replica, so it is forwarded at most one hop.
pub const FORWARDED_BY: &str = "x-hydra-forwarded-by";

/// Who is master, as this replica knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterView {
    /// Whether this replica acts as master (takes writes, runs the singleton duties).
    pub is_master: bool,
    /// Whether mastership goes through the lease (PostgreSQL); `false`: a single replica.
    pub replicated: bool,
    /// The lease term this replica holds, or the master's as last read.
    pub term: Option<i64>,
    /// The master's replica id, when known.
    pub master_id: Option<String>,
    /// The master's base URL, when known.
    pub master_url: Option<String>,
}

impl MasterView {
    /// A follower of a lease that knows no live master (at start, or right after stepping
    /// down): writes get 503 until the next read of the lease names one.
    pub(crate) fn follower_without_master() -> MasterView {
        MasterView {
            is_master: false,
            replicated: true,
            term: None,
            master_id: None,
            master_url: None,
        }
    }
}

/// This replica's identity and its view of the master; shared through [`AppState`].
#[derive(Debug)]
pub struct ReplicaState {
    id: String,
    advertise_url: String,
    timing: LeaseTiming,
    view: RwLock<MasterView>,
}

impl ReplicaState {
    /// A single replica, its own master, until [`start_mastership`] makes it follow the lease.
    pub fn new(id: String, advertise_url: String, timing: LeaseTiming) -> ReplicaState {
        let view = MasterView {
            is_master: true,
            replicated: false,
            term: None,
            master_id: Some(id.clone()),
            master_url: Some(advertise_url.clone()),
        };
        ReplicaState {
            id,
            advertise_url,
            timing,
            view: RwLock::new(view),
        }
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The URL other replicas and clients reach this one at.
    pub fn advertise_url(&self) -> &str {
        &self.advertise_url
    }

    /// The lease timing.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// Who is master, as of now.
    pub fn view(&self) -> MasterView {
        self.view
            .read()
            .expect("replica view lock poisoned")
            .clone()
    }

    /// Whether this replica acts as master.
    pub fn is_master(&self) -> bool {
        self.view
            .read()
            .expect("replica view lock poisoned")
            .is_master
    }

    pub(crate) fn set(&self, view: MasterView) {
        metrics::gauge!("hydra_replica_is_master").set(if view.is_master { 1.0 } else { 0.0 });
        if let (true, Some(term)) = (view.is_master, view.term) {
            metrics::gauge!("hydra_replica_term").set(term as f64);
        }
        *self.view.write().expect("replica view lock poisoned") = view;
    }
}
