//! The fleet's types and every decision Hydra makes about them, as plain functions over plain data.
//!
//! Architecture invariant: no I/O, no async, no clock, no randomness of its own. Time comes in as
//! unix milliseconds and random numbers come in as arguments, so every decision is a table test.

pub mod backoff;
pub mod capture;
pub mod drain;
pub mod explain;
pub mod failover;
pub mod health;
pub mod journal;
pub mod learning;
pub mod liveness;
pub mod mastership;
pub mod node;
pub mod peer;
pub mod placement;
pub mod probe;
pub mod rate_limit;
pub mod selection;
pub mod session;
pub mod session_id;
pub mod text;
pub mod trust;
pub mod webrtc_ports;
pub mod what_if;

pub use node::{CostTier, Node, NodeStatus, Role, Roles, Transport};
pub use selection::{
    Candidate, Head, LatencySample, Policy, Selection, SelectionSettings, select_bodies,
    strict_venue,
};
