//! `hydra agent`: the daemon on every node. Enrols (or uses its stored node token), heartbeats
//! through the client SDK, serves a local API (`/api/v1/health`, `/api/v1/status`), and runs the
//! roles' duties; on a worker: one session process per relay session behind a reverse proxy.
//!
//! Architecture invariant: talks to the control plane only through `hydra-client`; every child
//! process runs in its own process group and is ended with it.

pub mod body;
pub mod bundle;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod config_values;
pub mod config_words;
pub mod daemon;
pub mod enrol;
pub mod forward;
pub mod head;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod journal;
pub mod layering;
pub mod local_api;
pub mod logging;
pub mod mic;
pub mod monitor;
pub mod reports;
pub mod ride_out;
pub mod standin;
pub mod sunshine;
pub mod turn;
pub mod worker;
