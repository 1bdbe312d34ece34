//! The Hydra client SDK: every replica of the control plane behind one handle.
//!
//! A [`Client`] knows every replica's base URL. It finds the master through
//! `GET /api/v1/check-master` and caches it; writes go to the master, reads to whichever replica
//! answers; a transport failure of the cached master clears the cache. Calls are retried with
//! exponential backoff (1 s doubling to 60 s, full jitter) within a [`RetryPolicy`]; only
//! idempotent calls are retried once they may have reached the server. Failures are one
//! [`ClientError`] enum to match on.
//!
//! API boundary: depends on `hydra-api` (wire types) and `hydra-core` only.

mod agent;
mod api;
mod call;
mod captures;
mod client;
pub mod discovery;
mod error;
mod relay;
mod replicas;
mod retry;

pub use agent::AgentClient;
pub use captures::LineStream;
pub use client::{Client, ClientConfig};
pub use error::ClientError;
/// The eligible-bodies question and the connect times a head reports, one wire type shared with
/// the server (`hydra-api`).
pub use hydra_api::{EligibleQuery, Measurement};
pub use replicas::{ReplicaChange, ReplicaStatus};
pub use retry::RetryPolicy;
