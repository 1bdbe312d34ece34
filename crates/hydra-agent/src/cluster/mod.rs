//! The peer mesh (issue 11): SWIM membership with foca over sealed UDP datagrams, each member
//! gossiping its coarse state (roles, API address, pending work and capacity, district/venue).
//!
//! `seal` is the transport's crypto, `member` who a member is and what it publishes, `mesh` the
//! sans-IO membership around foca, `driver` the same on a UDP socket.

pub mod driver;
pub mod member;
pub mod mesh;
pub mod seal;
pub mod start;

#[cfg(test)]
mod sim;
