//! The peer mesh (issue 11): SWIM membership with foca over sealed UDP datagrams, each member
//! gossiping its coarse state (roles, API address, pending work and capacity, district/venue).
//!
//! `seal` is the transport's crypto; the rest is added slice by slice.

pub mod member;
pub mod mesh;
pub mod seal;

#[cfg(test)]
mod sim;
