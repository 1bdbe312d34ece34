//! End-to-end tests of the `hydra` binary: real processes, real sockets, real databases.

mod agent;
mod cli;
mod config_sources;
mod durability;
mod durability_in_flight;
mod enrolment;
mod fleet;
mod head_ride_out;
mod lab;
mod metrics;
mod node_config;
mod sdk_failover;
mod server_api;
mod serving;
mod session_history;
mod status;
mod storage_full;
mod storage_outage;
mod support;
mod trust;
mod write_ids;
