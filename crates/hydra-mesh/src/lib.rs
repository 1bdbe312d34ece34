//! The peer mesh (issue 11): SWIM membership with foca over sealed UDP datagrams, each member
//! gossiping its coarse state (roles, API address, pending work and capacity, district/venue).
//! Run by the agent and by the server (a member that runs no work).
//!
//! `seal` is the transport's crypto, `member` who a member is and what it publishes, `mesh` the
//! sans-IO membership around foca, `driver` the same on a UDP socket, `config` the `cluster:`
//! section both daemons read, `start` the socket and keys from that section, then the driver.

pub mod config;
pub mod driver;
pub mod member;
pub mod mesh;
pub mod seal;
pub mod start;

pub use config::ClusterSection;
pub use driver::ClusterHandle;

#[cfg(test)]
mod sim;
