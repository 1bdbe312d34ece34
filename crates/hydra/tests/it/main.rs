//! End-to-end tests of the `hydra` binary: real processes, real sockets, real databases.

mod agent;
mod cli;
mod durability;
mod enrolment;
mod fleet;
mod lab;
mod server_api;
mod serving;
mod support;
